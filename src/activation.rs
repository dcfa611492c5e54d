//! Socket activation (the sd_listen_fds protocol): a service manager (systemd's
//! `.socket` unit, `systemd-socket-activate`) binds the listening sockets itself and
//! starts the server with them as descriptors 3, 4, ...; `LISTEN_PID` names the process
//! they are for and `LISTEN_FDS` how many there are. The manager keeps the sockets
//! across restarts of the server, so connections that arrive while it restarts wait in
//! the kernel's queue instead of being refused.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{SockRef, Type};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// The descriptors are taken once per process: a second server finds none.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The listening sockets passed to this process, if it was socket-activated: `None`
/// when `LISTEN_PID` is not this process (or unset). Each must be a listening stream
/// socket (TCP or Unix), or the start fails naming it.
pub(crate) fn listen_fds() -> io::Result<Option<Vec<OwnedFd>>> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours {
        return Ok(None);
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| invalid("LISTEN_PID names this process but LISTEN_FDS is not 1 to 1024"))?;
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    let mut fds = Vec::with_capacity(n as usize);
    for fd in FIRST_FD..FIRST_FD + n {
        // SAFETY: the service manager passed descriptors 3..3+LISTEN_FDS to this
        // process for it to own (sd_listen_fds(3)); `TAKEN` makes this the one place
        // that takes them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = SockRef::from(&owned);
        let listening = s.is_listener().unwrap_or(false);
        let stream = s.r#type().is_ok_and(|t| t == Type::STREAM);
        let addr = s.local_addr();
        let family = addr
            .as_ref()
            .is_ok_and(|a| a.is_ipv4() || a.is_ipv6() || a.is_unix());
        if !(listening && stream && family) {
            return Err(invalid(&format!(
                "descriptor {fd} passed by the service manager is not a listening TCP or \
                 Unix stream socket"
            )));
        }
        fds.push(owned);
    }
    Ok(Some(fds))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("socket activation: {msg}"),
    )
}
