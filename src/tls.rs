//! TLS around any protocol, with rustls's unbuffered API.
//!
//! rustls's usual `ServerConnection` owns two growable buffers per connection (about
//! 16 KB each once used), kept for the connection's life. The unbuffered API
//! ([`UnbufferedServerConnection`]) owns none: the caller passes the ciphertext in and
//! gives the slices to write into. So a TLS connection keeps the rule plain ones keep
//! (buffers only while bytes are in flight):
//!
//! - ciphertext is read into the shard's TLS scratch buffer and decrypted there; the
//!   plaintext is copied into the shard's ordinary scratch buffer, where the decoder
//!   sees it exactly as it sees a plain read;
//! - only a partial record (a TLS record split over reads) is kept, in a pooled buffer;
//! - answers are appended in plaintext to the connection's output buffer as always,
//!   and encrypted in place before they are written: the front `enc` bytes of the
//!   output are ciphertext, the rest plaintext not yet encrypted. So every check on the
//!   output (backpressure, write timeout, WRITABLE interest) is the same as for plain.
//!
//! Between requests an established connection holds the rustls session state (keys,
//! record-layer sequence numbers) in one box, and nothing else.
//!
//! Certificates are read at start and on `TlsShared::reload` (SIGHUP): a shard looks
//! at a generation number on each accept and takes the new configuration only when it
//! moved. Connections keep the configuration they started with.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tickets::TicketKeys;

use crate::mutant::{self, Mutant};

/// The first byte of a TLS handshake record.
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;
/// The largest TLS record on the wire (16 KB of plaintext plus expansion).
pub(crate) const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// Why a handshake did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The first byte was not a TLS handshake record (plain text on a TLS port).
    NotTls,
    /// rustls refused what the peer sent (bad record, no common cipher or protocol,
    /// an alert from the peer).
    Protocol,
}

/// What every shard shares: the configuration in force and how to reload it.
pub(crate) struct TlsShared {
    cert: PathBuf,
    key: PathBuf,
    alpn: Vec<Vec<u8>>,
    /// With --tls-ticket-keys: session tickets any instance with the file can open.
    tickets: Option<Arc<TicketKeys>>,
    current: Mutex<Arc<ServerConfig>>,
    generation: AtomicU64,
    /// Answered (unencrypted) to a peer whose first byte is not TLS, before closing:
    /// HTTP's 400, as nginx does.
    pub plain_reply: Option<&'static [u8]>,
    /// Reloads that took, and reloads refused (the old pair stays).
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl std::fmt::Debug for TlsShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsShared")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Reads a PEM certificate chain and key and builds a server configuration (TLS 1.2
/// and 1.3, ring's algorithms).
pub(crate) fn load_config(
    cert: &Path,
    key: &Path,
    alpn: &[Vec<u8>],
    tickets: Option<&Arc<TicketKeys>>,
) -> io::Result<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("--tls-cert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(format!("--tls-key {}: {e}", key.display())))?;
    server_config(chain, key, alpn, tickets)
}

/// The cryptography every TLS configuration here uses: rustls's *ring* provider (Rust
/// and assembly, no C toolchain beyond `cc`, the one this server was measured with).
/// rustls 0.23.48 deprecates it because *ring* has no post-quantum key exchange; the
/// alternative, aws-lc-rs, is a large C library, and moving to it (for X25519MLKEM768)
/// is a decision of its own, with its memory and CPU measured. Until then the warning
/// is silenced here, once.
pub fn provider() -> rustls::crypto::CryptoProvider {
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[Vec<u8>],
    tickets: Option<&Arc<TicketKeys>>,
) -> io::Result<ServerConfig> {
    let provider = Arc::new(provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("--tls-cert/--tls-key: {e}")))?;
    cfg.alpn_protocols = alpn.to_vec();
    if let Some(t) = tickets {
        // Stateless tickets, for TLS 1.2 and 1.3 alike; no 0-RTT (rustls's default).
        cfg.ticketer = t.clone();
    }
    Ok(cfg)
}

impl TlsShared {
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        alpn: Vec<Vec<u8>>,
        plain_reply: Option<&'static [u8]>,
        ticket_keys: Option<&Path>,
    ) -> io::Result<TlsShared> {
        let tickets = ticket_keys
            .map(|p| TicketKeys::open(p).map(Arc::new))
            .transpose()?;
        let cfg = load_config(&cert, &key, &alpn, tickets.as_ref())?;
        let mut shared = TlsShared::with(cert, key, alpn, cfg, plain_reply);
        shared.tickets = tickets;
        Ok(shared)
    }

    fn with(
        cert: PathBuf,
        key: PathBuf,
        alpn: Vec<Vec<u8>>,
        cfg: ServerConfig,
        plain_reply: Option<&'static [u8]>,
    ) -> TlsShared {
        TlsShared {
            cert,
            key,
            alpn,
            tickets: None,
            current: Mutex::new(Arc::new(cfg)),
            generation: AtomicU64::new(1),
            plain_reply,
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// A configuration from PEM held in memory (the simulation's), never reloaded.
    #[cfg(test)]
    pub(crate) fn from_pem(
        cert: &[u8],
        key: &[u8],
        alpn: Vec<Vec<u8>>,
        plain_reply: Option<&'static [u8]>,
    ) -> io::Result<TlsShared> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid(e.to_string()))?;
        let cfg = server_config(chain, key, &alpn, None)?;
        Ok(TlsShared::with(
            PathBuf::new(),
            PathBuf::new(),
            alpn,
            cfg,
            plain_reply,
        ))
    }

    /// Reads the certificate and key files again, and the ticket key file (its key
    /// encrypts from now on, the one before still decrypts). On success new
    /// handshakes use them; on failure what is in force stays and the error is
    /// returned (and counted).
    pub fn reload(&self) -> io::Result<()> {
        if let Some(t) = &self.tickets {
            match t.reload() {
                Ok(true) => log::info!("TLS ticket key rotated; the previous one still decrypts"),
                Ok(false) => {}
                Err(e) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        match load_config(&self.cert, &self.key, &self.alpn, self.tickets.as_ref()) {
            Ok(cfg) => {
                let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
                *cur = Arc::new(cfg);
                self.generation.fetch_add(1, Ordering::Release);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The configuration for a new connection. `cache` is the shard's copy: the lock
    /// is taken only when a reload moved the generation.
    pub fn config(&self, cache: &mut Option<(u64, Arc<ServerConfig>)>) -> Arc<ServerConfig> {
        let generation = self.generation.load(Ordering::Acquire);
        match cache {
            Some((g, cfg)) if *g == generation => cfg.clone(),
            _ => {
                let cfg = self
                    .current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                *cache = Some((generation, cfg.clone()));
                cfg
            }
        }
    }
}

/// One connection's TLS state. Boxed in the connection: an idle one holds this and
/// nothing else.
pub(crate) struct Tls {
    pub conn: UnbufferedServerConnection,
    /// A partial record carried over to the next read (pooled), only while there is one.
    pub held: Option<BytesMut>,
    /// The front `enc` bytes of the connection's output are ciphertext.
    pub enc: usize,
    /// No byte read yet: the first decides whether this is TLS at all.
    pub fresh: bool,
    /// `held` came in behind a PROXY header and rustls has not seen it yet.
    pub unread: bool,
    pub handshaking: bool,
    pub close_sent: bool,
    /// After an error from [`Tls::process`]: the input bytes it had used up.
    pub err_consumed: usize,
}

/// What [`Tls::process`] did.
#[derive(Debug, Default)]
pub(crate) struct Processed {
    /// Input bytes used up (complete records); the rest is a partial record.
    pub consumed: usize,
    /// Plaintext bytes written to the plaintext buffer.
    pub plain: usize,
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

impl Tls {
    pub fn new(cfg: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        Ok(Tls {
            conn: UnbufferedServerConnection::new(cfg)?,
            held: None,
            enc: 0,
            fresh: true,
            unread: false,
            handshaking: true,
            close_sent: false,
            err_consumed: 0,
        })
    }

    /// Runs rustls over `incoming` (ciphertext; may be empty): handshake messages to
    /// send and encrypted answers go to the end of `out`, plaintext received to
    /// `plain`. Plaintext at `out[self.enc..]` is encrypted first when the session
    /// allows (so records leave in the order their sequence numbers say), and
    /// close_notify after it when `close` is set. `tmp` is scratch space.
    pub fn process(
        &mut self,
        incoming: &mut [u8],
        out: &mut BytesMut,
        plain: &mut [u8],
        tmp: &mut Vec<u8>,
        close: bool,
    ) -> Result<Processed, rustls::Error> {
        let mut done = Processed::default();
        // Every state below either makes progress (input used, plaintext or output
        // produced) or ends the loop; a run of states that make none also ends it, as
        // a guard. No bound on the number of records: a pipelining client may pack
        // thousands of small ones into one read, and records left undecrypted here
        // would be decrypted later where no plaintext is expected.
        let mut idle = 0;
        let mut seen = (0, 0, out.len());
        while idle < 64 {
            let status = self
                .conn
                .process_tls_records(&mut incoming[done.consumed..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(s) => s,
                Err(e) => {
                    done.consumed += discard;
                    self.err_consumed = done.consumed;
                    return Err(e);
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        let room = plain.len() - done.plain;
                        if rec.payload.len() > room {
                            // Cannot happen: plaintext is never longer than the
                            // ciphertext it came from, and both buffers are the same size.
                            return Err(rustls::Error::General("plaintext overflow".into()));
                        }
                        plain[done.plain..done.plain + rec.payload.len()]
                            .copy_from_slice(rec.payload);
                        done.plain += rec.payload.len();
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    // A message of rustls's own (an alert, a handshake message) goes
                    // after the ciphertext and before any plaintext still waiting to
                    // be encrypted: appended behind that plaintext, it would carry it
                    // onto the wire unencrypted when `enc` moves past it.
                    let waiting = out.len() - self.enc;
                    if waiting > 0 && !mutant::on(Mutant::TlsAlert) {
                        tmp.clear();
                        tmp.extend_from_slice(&out[self.enc..]);
                        out.truncate(self.enc);
                    }
                    let at = out.len();
                    out.resize(at + 4096, 0);
                    let n = match e.encode(&mut out[at..]) {
                        Ok(n) => n,
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            out.resize(at + required_size, 0);
                            e.encode(&mut out[at..]).unwrap_or(0)
                        }
                        Err(EncodeError::AlreadyEncoded) => 0,
                    };
                    out.truncate(at + n);
                    // Handshake bytes are ciphertext already.
                    self.enc = out.len();
                    if waiting > 0 && !mutant::on(Mutant::TlsAlert) {
                        out.extend_from_slice(tmp);
                    }
                }
                ConnectionState::TransmitTlsData(t) => {
                    // What was encoded is in `out`, written in order by the caller.
                    t.done();
                }
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::PeerClosed => done.peer_closed = true,
                ConnectionState::Closed => stop = true,
                ConnectionState::WriteTraffic(mut w) => {
                    if out.len() > self.enc {
                        tmp.clear();
                        tmp.extend_from_slice(&out[self.enc..]);
                        out.truncate(self.enc);
                        let at = out.len();
                        // Records carry at most 16 KB, each with a few dozen bytes of
                        // header and tag.
                        out.resize(at + tmp.len() + (tmp.len() / 16384 + 1) * 64, 0);
                        let n = match w.encrypt(tmp, &mut out[at..]) {
                            Ok(n) => n,
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => {
                                out.resize(at + required_size, 0);
                                w.encrypt(tmp, &mut out[at..])
                                    .map_err(|e| rustls::Error::General(e.to_string()))?
                            }
                            Err(e) => return Err(rustls::Error::General(e.to_string())),
                        };
                        out.truncate(at + n);
                        self.enc = out.len();
                    }
                    if close && !self.close_sent {
                        let at = out.len();
                        out.resize(at + 128, 0);
                        let n = w.queue_close_notify(&mut out[at..]).unwrap_or(0);
                        out.truncate(at + n);
                        self.enc = out.len();
                        self.close_sent = true;
                    }
                    stop = true;
                }
                // Early data is not enabled; anything else new is not ours to handle.
                _ => stop = true,
            }
            done.consumed += discard;
            if stop {
                break;
            }
            let now = (done.consumed, done.plain, out.len());
            if now == seen {
                idle += 1;
            } else {
                idle = 0;
                seen = now;
            }
        }
        Ok(done)
    }

    /// [`Tls::process`] with no new input, to encrypt answers (and close_notify with
    /// `close`). rustls may still track a handshake message split over records in the
    /// held partial input, so that (and nothing else) is what it is given: the
    /// unbuffered API requires the bytes it has not discarded to be passed again.
    pub fn encrypt_pending(
        &mut self,
        out: &mut BytesMut,
        tmp: &mut Vec<u8>,
        close: bool,
    ) -> Result<(), rustls::Error> {
        let mut held = self.held.take();
        let buf: &mut [u8] = match held.as_mut() {
            Some(b) => &mut b[..],
            None => &mut [],
        };
        let r = self.process(buf, out, &mut [], tmp, close);
        if let (Ok(done), Some(b)) = (&r, held.as_mut()) {
            bytes::Buf::advance(b, done.consumed);
        }
        self.held = held;
        r.map(|_| ())
    }

    /// After an error: the alert rustls queued for the peer, if any, to write
    /// best-effort before closing. `incoming` is the input given to the failed
    /// [`Tls::process`] from `err_consumed` on.
    pub fn pending_alert(&mut self, incoming: &mut [u8], out: &mut Vec<u8>) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(incoming);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let mut buf = [0u8; 256];
                    if let Ok(n) = e.encode(&mut buf) {
                        out.extend_from_slice(&buf[..n]);
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the state every idle TLS connection carries on the heap.
    #[test]
    fn session_state_size() {
        let n = std::mem::size_of::<Tls>();
        eprintln!("Tls: {n} B");
        assert!(n < 2048, "{n}");
    }
}

/// Which server certificates a TLS client (reactor-bench, reactor-client) accepts.
///
/// ```
/// use reactor::tls::{Trust, client_config};
/// let cfg = client_config(&Trust::Any, &[b"http/1.1".to_vec()]).unwrap();
/// assert_eq!(cfg.alpn_protocols, [b"http/1.1".to_vec()]);
/// ```
#[derive(Clone, Debug)]
pub enum Trust {
    /// Those that chain to a certificate in this PEM file (`--ca FILE`).
    Ca(PathBuf),
    /// Any certificate (`--insecure`, for a self-signed one): the handshake's
    /// signatures are still checked, the certificate's chain and name are not.
    Any,
}

/// A client configuration (TLS 1.2 and 1.3, ring's algorithms) for the project's own
/// tools.
pub fn client_config(trust: &Trust, alpn: &[Vec<u8>]) -> io::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(format!("TLS versions: {e}")))?;
    let mut cfg = match trust {
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(format!("--ca {}: {e}", path.display())))?
            {
                let c = c.map_err(|e| invalid(format!("--ca {}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| invalid(format!("--ca {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!(
                    "--ca {}: no certificate in it",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(cfg))
}

/// The simulation's TLS 1.2 client: one ChaCha20-Poly1305 suite, any certificate, and
/// its keys extractable (to renegotiate on rustls's record layer, which rustls itself
/// never does).
#[cfg(test)]
pub(crate) fn renegotiating_client_config() -> Arc<rustls::ClientConfig> {
    let mut provider = provider();
    provider.cipher_suites =
        vec![rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256];
    let provider = Arc::new(provider);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.enable_secret_extraction = true;
    Arc::new(cfg)
}

/// The server name to present and check: `name` if given, else the address's IP.
pub fn server_name(
    name: Option<&str>,
    ip: std::net::IpAddr,
) -> io::Result<rustls_pki_types::ServerName<'static>> {
    match name {
        Some(n) => rustls_pki_types::ServerName::try_from(n.to_string())
            .map_err(|e| invalid(format!("server name {n:?}: {e}"))),
        None => Ok(rustls_pki_types::ServerName::IpAddress(ip.into())),
    }
}

/// `--insecure`: accepts any certificate, checks the handshake's signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
