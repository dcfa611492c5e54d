//! Defects put back on purpose, to prove that the simulation catches them. Compiled in
//! only with the `sim-mutants` feature (never in a normal build, where every check
//! below is a constant `false`); `REACTOR_SIM_MUTANT=NAME` picks one:
//!
//! - `eof`: answers still owed are dropped when the peer half-closes;
//! - `tls-alert`: a TLS message rustls sends of its own (an alert, a handshake
//!   message) is appended behind plaintext waiting to be encrypted, which then goes
//!   out unencrypted;
//! - `wakeup`: a connection that finds no room in the worker pool's queue asks to be
//!   woken without looking for room again, and misses a place freed in between;
//! - `cork`: every answer written straight to the socket is held back for a FIN
//!   (MSG_MORE), on connections that stay open too, where no FIN comes to push it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mutant {
    Eof,
    TlsAlert,
    Wakeup,
    Cork,
}

/// Whether `m` is the mutant this process runs with.
#[cfg(feature = "sim-mutants")]
pub(crate) fn on(m: Mutant) -> bool {
    use std::sync::OnceLock;
    static PICKED: OnceLock<Option<Mutant>> = OnceLock::new();
    let picked = PICKED.get_or_init(
        || match std::env::var("REACTOR_SIM_MUTANT").ok().as_deref() {
            Some("eof") => Some(Mutant::Eof),
            Some("tls-alert") => Some(Mutant::TlsAlert),
            Some("wakeup") => Some(Mutant::Wakeup),
            Some("cork") => Some(Mutant::Cork),
            _ => None,
        },
    );
    *picked == Some(m)
}

#[cfg(not(feature = "sim-mutants"))]
#[inline(always)]
pub(crate) fn on(_: Mutant) -> bool {
    false
}
