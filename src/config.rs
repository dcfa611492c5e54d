//! Every setting of the server and its default, in one place: [`Config`], a plain
//! struct with defaults and chainable setters. With the `cli` feature (on by default)
//! it is also the command line of the `reactor` binary (each field's flag, help and
//! default beside it); without it the library has no command-line parser in its
//! build.
//!
//! ```
//! use std::time::Duration;
//!
//! let cfg = reactor::Config::default()
//!     .addr("127.0.0.1:0".parse().unwrap())
//!     .threads(2)
//!     .idle_timeout(Duration::from_secs(300));
//! assert_eq!(cfg.threads, 2);
//! assert_eq!(cfg.high_water, 64 * 1024);
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "cli")]
use clap::{Parser, ValueEnum};

pub use crate::duration::{MAX_DURATION, parse_duration};

pub use crate::proxy::{Cidr, ProxyMode};
use crate::service::Work;

/// `--proxy-from`: trusted networks.
///
/// ```
/// let nets = reactor::config::CidrList::parse("10.0.0.0/8,::1/128").unwrap();
/// assert_eq!(nets.0.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl CidrList {
    /// Networks as CIDRs separated by commas.
    pub fn parse(s: &str) -> Result<CidrList, String> {
        parse_cidrs(s)
    }
}

#[cfg_attr(not(feature = "cli"), allow(dead_code))]
fn parse_cidrs(s: &str) -> Result<CidrList, String> {
    crate::proxy::parse_cidrs(s).map(CidrList)
}

/// Where a server listens: a TCP address, or the path of a Unix socket
/// (`unix:/run/reactor.sock` on the command line).
///
/// ```
/// use reactor::config::ListenAddr;
/// let tcp: ListenAddr = "127.0.0.1:8080".parse().unwrap();
/// assert_eq!(tcp.port(), 8080);
/// let unix: ListenAddr = "unix:/run/reactor.sock".parse().unwrap();
/// assert_eq!(unix.to_string(), "unix:/run/reactor.sock");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// The TCP port (0 for a Unix socket).
    pub fn port(&self) -> u16 {
        match self {
            ListenAddr::Tcp(a) => a.port(),
            ListenAddr::Unix(_) => 0,
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenAddr, String> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a path (unix:/run/reactor.sock)".into()),
            Some(path) => Ok(ListenAddr::Unix(PathBuf::from(path))),
            None => s.parse().map(ListenAddr::Tcp).map_err(|e| {
                format!("`{s}`: {e} (an address is HOST:PORT, or unix:/path/to/socket)")
            }),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> ListenAddr {
        ListenAddr::Tcp(a)
    }
}

/// `--unix-owner USER[:GROUP]`: names or numeric ids.
///
/// ```
/// let o: reactor::config::Owner = "0:0".parse().unwrap();
/// assert_eq!((o.uid, o.gid), (Some(0), Some(0)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl std::str::FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> Result<Owner, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let uid = match user {
            "" => None,
            u => Some(u.parse().or_else(|_| lookup_id(u, false))?),
        };
        let gid = match group {
            None | Some("") => None,
            Some(g) => Some(g.parse().or_else(|_| lookup_id(g, true))?),
        };
        Ok(Owner { uid, gid })
    }
}

/// A user's or group's id by name (at start, before any thread of ours runs).
fn lookup_id(name: &str, group: bool) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("`{name}`: not a name"))?;
    // SAFETY: `c` is a valid C string; the returned record is read at once, before any
    // other call that could overwrite it.
    let id = unsafe {
        if group {
            let g = libc::getgrnam(c.as_ptr());
            (!g.is_null()).then(|| (*g).gr_gid)
        } else {
            let p = libc::getpwnam(c.as_ptr());
            (!p.is_null()).then(|| (*p).pw_uid)
        }
    };
    id.ok_or_else(|| format!("no {} named `{name}`", if group { "group" } else { "user" }))
}

/// Parses a size in bytes: "65536", "64KiB", "64MiB", "1GiB" (also "k", "M", "G" and
/// "KB", "MB", "GB", read as powers of 1024).
///
/// ```
/// use reactor::config::parse_bytes;
/// assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
/// assert_eq!(parse_bytes("1g"), Ok(1 << 30));
/// assert_eq!(parse_bytes("4096"), Ok(4096));
/// assert!(parse_bytes("12 apples").is_err());
/// ```
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 64MiB or 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `--unix-mode`: octal permission bits.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("`{s}`: a mode is octal, like 660"))
}

/// The protocol a server speaks.
///
/// ```
/// assert_ne!(reactor::ProtocolKind::Http, reactor::ProtocolKind::Echo);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(ValueEnum))]
pub enum ProtocolKind {
    /// Every byte read is written back.
    Echo,
    /// HTTP/1.1 `Hello, World!` with keep-alive and pipelining.
    Http,
    /// A stream of {"Uid","Val"} JSON messages, one answer line each.
    Json,
}

/// reactor: a TCP server on the operating system's event loop, one loop per thread.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(Parser))]
#[cfg_attr(
    feature = "cli",
    command(name = "reactor", version, about, long_about = None, args_override_self = true)
)]
///
/// ```
/// let cfg = reactor::Config { threads: 2, ..reactor::Config::default() };
/// assert_eq!((cfg.threads, cfg.addr.port()), (2, 8080));
/// ```
pub struct Config {
    /// Address to listen on: HOST:PORT, or unix:/path for a Unix socket.
    #[cfg_attr(feature = "cli", arg(long, default_value = "0.0.0.0:8080"))]
    pub addr: ListenAddr,

    /// With a Unix socket: its permission bits, in octal (default: from the umask).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_mode))]
    pub unix_mode: Option<u32>,

    /// With a Unix socket: its owner and group, `USER[:GROUP]` (names or ids).
    #[cfg_attr(feature = "cli", arg(long))]
    pub unix_owner: Option<Owner>,

    /// Protocol to speak.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = ProtocolKind::Http))]
    pub protocol: ProtocolKind,

    /// Reactor threads, each with its own SO_REUSEPORT listener (0 = one per CPU).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub threads: usize,

    /// Share the address with a server already listening on it (SO_REUSEPORT), as a
    /// restart that starts the new server before stopping the old one does. Without it,
    /// a server refuses to start on an address another one serves.
    #[cfg_attr(feature = "cli", arg(long))]
    pub reuse_port: bool,

    /// Serve the listening sockets a service manager passed (systemd's socket
    /// activation: `LISTEN_PID` and `LISTEN_FDS`) instead of binding `addr`, when
    /// there are any. The `reactor` binary turns it on.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub socket_activation: bool,

    /// Listen backlog (the kernel caps it at net.core.somaxconn).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4096))]
    pub backlog: i32,

    /// Accept a TCP connection only once its first bytes have arrived
    /// (TCP_DEFER_ACCEPT, Linux; nginx's `deferred`, HAProxy's `defer-accept`): the
    /// request and the accept then take one wake-up, and a connection answered and
    /// closed then (a new connection per request) is never registered with epoll. A client that connects and says nothing is accepted only after
    /// about a second or more (when the kernel gives up waiting), so leave it off for a
    /// protocol where the server speaks first.
    #[cfg_attr(feature = "cli", arg(long))]
    pub defer_accept: bool,

    /// TCP keep-alive idle time of accepted sockets, in seconds (0 = off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 60))]
    pub keepalive_secs: u64,

    /// TCP keep-alive: seconds between probes once they start.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub keepalive_interval: u64,

    /// TCP keep-alive: unanswered probes before the peer is given up. With the
    /// defaults (60 s of silence, then 6 probes 10 s apart) a vanished peer is noticed
    /// within 2 minutes, even on a connection with the idle timeout off.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 6))]
    pub keepalive_count: u32,

    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel
    /// gives the peer up (a peer that vanished with an answer pending); by default the
    /// write timeout's (0 = the kernel's own, about 15 minutes of retransmissions).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_duration))]
    pub tcp_user_timeout: Option<Duration>,

    /// Close a connection with no request in progress after this long ("60", "60s",
    /// "500ms"; 0 = never).
    #[cfg_attr(feature = "cli", arg(long, default_value = "60s", value_parser = parse_duration))]
    pub idle_timeout: Duration,

    /// Close a connection whose request is not complete this long after its first byte;
    /// later bytes do not extend it (0 = never).
    #[cfg_attr(feature = "cli", arg(long, default_value = "30s", value_parser = parse_duration))]
    pub read_timeout: Duration,

    /// Close a connection whose pending output makes no progress for this long
    /// (0 = never).
    #[cfg_attr(feature = "cli", arg(long, default_value = "30s", value_parser = parse_duration))]
    pub write_timeout: Duration,

    /// Most concurrent connections, over all threads; past it new connections are
    /// accepted and closed at once, and counted as rejected. 0 = the open-files limit
    /// less a reserve of 32 descriptors.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub max_connections: usize,

    /// Stop reading from a connection while its unsent output is above this many bytes.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 64 * 1024))]
    pub high_water: usize,

    /// A push (bytes written to a connection from a hook or another thread) to a
    /// connection that owes this many bytes already is refused and counted
    /// (`pushes_refused`): what a client that reads slowly or not at all can cost.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1024 * 1024))]
    pub push_limit: usize,

    /// Most bytes a connection may have sent that its protocol has not consumed yet (a
    /// request still incomplete): past it, the connection is answered what was
    /// complete, then closed, and counted (`input_overflows`). It bounds every
    /// protocol's memory, the built-in ones and yours.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1024 * 1024))]
    pub max_input: usize,

    /// The most heap memory the process may hold (its connections' buffers, partial
    /// requests, HTTP bodies being collected, answers and pushes waiting to be sent,
    /// and its own tables): "64MiB", "1GiB", "500000" (bytes; KiB, MiB, GiB accepted;
    /// 0 = no budget). Past it, a connection that holds or owes anything is not read
    /// until the heap is back under 7/8 of the budget; one that holds nothing and
    /// whose peer has taken every byte is still read, 4 KB at a time. The budget
    /// drops nothing. Needs the counting allocator, `reactor::memory::Counted`, as the
    /// program's global allocator (the `reactor` binary has it).
    #[cfg_attr(feature = "cli", arg(long, default_value = "0", value_parser = parse_bytes))]
    pub max_buffer_memory: u64,

    /// Hold every answer back this many milliseconds (on the timer wheel, never by
    /// sleeping); each connection's next request is read once its answer is out.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub delay_ms: u64,

    /// HTTP: largest request head in bytes (431 past it).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::wire::http::MAX_HEADER_BYTES))]
    pub max_header_bytes: usize,

    /// HTTP: most header lines in a request (431 past it; at most 256).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::wire::http::MAX_HEADERS))]
    pub max_headers: usize,

    /// HTTP: largest request body in bytes (413 past it).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::wire::http::MAX_BODY))]
    pub max_body: u64,

    /// JSON: largest message in bytes (an error line and a close past it).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::wire::json::MAX_MESSAGE))]
    pub max_message: usize,

    /// On SIGINT/SIGTERM, wait this long for requests in progress before cutting them.
    #[cfg_attr(feature = "cli", arg(long, default_value = "10s", value_parser = parse_duration))]
    pub drain_timeout: Duration,

    /// Idle 4 KB buffers each thread keeps for reuse; more are freed.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1024))]
    pub pool_buffers: usize,

    /// Log a line of counters and rates every this often (0 = only at exit).
    #[cfg_attr(feature = "cli", arg(long, default_value = "10s", value_parser = parse_duration))]
    pub stats_interval: Duration,

    /// Serve GET /metrics (Prometheus) and GET /health on this address (off unless
    /// given), from a loop of its own.
    #[cfg_attr(feature = "cli", arg(long))]
    pub metrics_addr: Option<SocketAddr>,

    /// Expect a PROXY protocol header (HAProxy's, version 1 text or 2 binary) at the
    /// start of each connection from a peer in --proxy-from; its client address is
    /// what per-address limits and logs use.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = ProxyMode::Off, help_heading = "Behind a load balancer"))]
    pub proxy_protocol: ProxyMode,

    /// Peers allowed (and required) to send a PROXY header, as CIDR networks separated
    /// by commas. A header from any other peer closes its connection.
    #[cfg_attr(feature = "cli", arg(long, default_value = "127.0.0.0/8,::1/128", value_parser = parse_cidrs, help_heading = "Behind a load balancer"))]
    pub proxy_from: CidrList,

    /// How long a trusted peer has to send its whole PROXY header.
    #[cfg_attr(feature = "cli", arg(long, default_value = "3s", value_parser = parse_duration, help_heading = "Behind a load balancer"))]
    pub proxy_timeout: Duration,

    /// Offer this server's listening sockets to a successor on a Unix socket at this
    /// path (mode 0600): a new server started with --takeover PATH takes them, and this
    /// one drains. Nothing waiting in an accept queue is lost.
    #[cfg_attr(feature = "cli", arg(long, help_heading = "Behind a load balancer"))]
    pub handover: Option<PathBuf>,

    /// Start by taking the listening sockets of the server offering them at this path
    /// (its --handover), instead of binding --addr. One thread per listener taken.
    #[cfg_attr(feature = "cli", arg(long, help_heading = "Behind a load balancer"))]
    pub takeover: Option<PathBuf>,

    /// On a drain, how long a connection that has not sent its first request yet may
    /// still send it (one accepted just before the drain is not idle).
    #[cfg_attr(feature = "cli", arg(long, default_value = "1s", value_parser = parse_duration, help_heading = "Behind a load balancer"))]
    pub drain_grace: Duration,

    /// Most connections from one client address at once; past it new connections from
    /// that address are closed at once and counted as rejected (0 = no limit).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub max_connections_per_ip: usize,

    /// Speak TLS (1.2 and 1.3, with rustls) on every connection, with this PEM
    /// certificate chain (the server's certificate first). Needs --tls-key. SIGHUP
    /// reads both files again.
    #[cfg_attr(feature = "cli", arg(long, requires = "tls_key", help_heading = "TLS"))]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[cfg_attr(
        feature = "cli",
        arg(long, requires = "tls_cert", help_heading = "TLS")
    )]
    pub tls_key: Option<PathBuf>,

    /// Encrypt TLS session tickets with the key in this file (48 random bytes, mode
    /// 0600: `openssl rand 48 > ticket.key`), so that a session resumes on every
    /// instance that reads the same file, and across restarts. SIGHUP reads it again:
    /// its new key encrypts, the previous one still decrypts.
    #[cfg_attr(
        feature = "cli",
        arg(long, requires = "tls_cert", help_heading = "TLS")
    )]
    pub tls_ticket_keys: Option<PathBuf>,

    /// Worker threads for handlers that may block, started up front (0 = no pool: every
    /// answer is computed on the loop).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = 0, help_heading = "Worker pool")
    )]
    pub workers: usize,

    /// Most worker threads: the pool grows past --workers while jobs wait and every
    /// worker is busy (0 = the same as --workers, a fixed pool).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = 0, help_heading = "Worker pool")
    )]
    pub workers_max: usize,

    /// A worker beyond --workers that is idle this long exits.
    #[cfg_attr(feature = "cli", arg(long, default_value = "10s", value_parser = parse_duration, help_heading = "Worker pool"))]
    pub worker_idle: Duration,

    /// Most jobs waiting for a worker; past it, connections are not read until room
    /// frees (backpressure, not loss).
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = 1024, help_heading = "Worker pool")
    )]
    pub queue: usize,

    /// Most jobs in flight per connection; past it the connection is not read until
    /// one completes.
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value_t = 16, help_heading = "Worker pool")
    )]
    pub max_inflight: usize,

    /// Answer a request whose handler has not finished after this long with HTTP 503 or
    /// a JSON error line, and drop the late result (0 = wait for ever).
    #[cfg_attr(feature = "cli", arg(long, default_value = "0", value_parser = parse_duration, help_heading = "Worker pool"))]
    pub handler_timeout: Duration,

    /// Stack size of a worker thread, in bytes.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 256 * 1024, help_heading = "Worker pool"))]
    pub worker_stack: usize,

    /// Run each json or http answer on the worker pool after this work: `sleep:D` (a
    /// blocking sleep, the seeds' slow handler) or `spin:D` (D of CPU), e.g. sleep:10ms,
    /// spin:100us. Needs --workers.
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_work, help_heading = "Worker pool"))]
    pub work: Option<Work>,
}

#[cfg_attr(not(feature = "cli"), allow(dead_code))]
fn parse_work(s: &str) -> Result<Work, String> {
    s.parse()
}

impl Default for Config {
    /// The defaults (the command line's, with no flag given; a test checks that both
    /// agree).
    fn default() -> Self {
        Config {
            addr: ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 8080))),
            unix_mode: None,
            unix_owner: None,
            protocol: ProtocolKind::Http,
            threads: 0,
            reuse_port: false,
            socket_activation: false,
            backlog: 4096,
            defer_accept: false,
            keepalive_secs: 60,
            keepalive_interval: 10,
            keepalive_count: 6,
            tcp_user_timeout: None,
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 0,
            high_water: 64 * 1024,
            push_limit: 1024 * 1024,
            max_input: 1024 * 1024,
            max_buffer_memory: 0,
            delay_ms: 0,
            max_header_bytes: crate::wire::http::MAX_HEADER_BYTES,
            max_headers: crate::wire::http::MAX_HEADERS,
            max_body: crate::wire::http::MAX_BODY,
            max_message: crate::wire::json::MAX_MESSAGE,
            drain_timeout: Duration::from_secs(10),
            pool_buffers: 1024,
            stats_interval: Duration::from_secs(10),
            metrics_addr: None,
            proxy_protocol: ProxyMode::Off,
            proxy_from: CidrList::parse("127.0.0.0/8,::1/128").unwrap_or(CidrList(Vec::new())),
            proxy_timeout: Duration::from_secs(3),
            handover: None,
            takeover: None,
            drain_grace: Duration::from_secs(1),
            max_connections_per_ip: 0,
            tls_cert: None,
            tls_key: None,
            tls_ticket_keys: None,
            workers: 0,
            workers_max: 0,
            worker_idle: Duration::from_secs(10),
            queue: 1024,
            max_inflight: 16,
            handler_timeout: Duration::ZERO,
            worker_stack: 256 * 1024,
            work: None,
        }
    }
}

/// `pub fn NAME(self, value) -> Self` for each field: chainable setters.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Config {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Config::addr`] (`"127.0.0.1:8080".parse()?`, or a `SocketAddr`'s
    /// `.into()`).
    addr: ListenAddr,
    /// Sets [`Config::unix_mode`].
    unix_mode: Option<u32>,
    /// Sets [`Config::unix_owner`].
    unix_owner: Option<Owner>,
    /// Sets [`Config::protocol`].
    protocol: ProtocolKind,
    /// Sets [`Config::threads`].
    threads: usize,
    /// Sets [`Config::reuse_port`].
    reuse_port: bool,
    /// Sets [`Config::socket_activation`].
    socket_activation: bool,
    /// Sets [`Config::backlog`].
    backlog: i32,
    /// Sets [`Config::defer_accept`].
    defer_accept: bool,
    /// Sets [`Config::keepalive_secs`].
    keepalive_secs: u64,
    /// Sets [`Config::keepalive_interval`].
    keepalive_interval: u64,
    /// Sets [`Config::keepalive_count`].
    keepalive_count: u32,
    /// Sets [`Config::tcp_user_timeout`].
    tcp_user_timeout: Option<Duration>,
    /// Sets [`Config::idle_timeout`].
    idle_timeout: Duration,
    /// Sets [`Config::read_timeout`].
    read_timeout: Duration,
    /// Sets [`Config::write_timeout`].
    write_timeout: Duration,
    /// Sets [`Config::max_connections`].
    max_connections: usize,
    /// Sets [`Config::high_water`].
    high_water: usize,
    /// Sets [`Config::push_limit`].
    push_limit: usize,
    /// Sets [`Config::max_input`].
    max_input: usize,
    /// Sets [`Config::max_buffer_memory`].
    max_buffer_memory: u64,
    /// Sets [`Config::delay_ms`].
    delay_ms: u64,
    /// Sets [`Config::max_header_bytes`].
    max_header_bytes: usize,
    /// Sets [`Config::max_headers`].
    max_headers: usize,
    /// Sets [`Config::max_body`].
    max_body: u64,
    /// Sets [`Config::max_message`].
    max_message: usize,
    /// Sets [`Config::drain_timeout`].
    drain_timeout: Duration,
    /// Sets [`Config::pool_buffers`].
    pool_buffers: usize,
    /// Sets [`Config::stats_interval`].
    stats_interval: Duration,
    /// Sets [`Config::metrics_addr`].
    metrics_addr: Option<SocketAddr>,
    /// Sets [`Config::proxy_protocol`].
    proxy_protocol: ProxyMode,
    /// Sets [`Config::proxy_from`].
    proxy_from: CidrList,
    /// Sets [`Config::proxy_timeout`].
    proxy_timeout: Duration,
    /// Sets [`Config::handover`].
    handover: Option<PathBuf>,
    /// Sets [`Config::takeover`].
    takeover: Option<PathBuf>,
    /// Sets [`Config::drain_grace`].
    drain_grace: Duration,
    /// Sets [`Config::max_connections_per_ip`].
    max_connections_per_ip: usize,
    /// Sets [`Config::tls_cert`].
    tls_cert: Option<PathBuf>,
    /// Sets [`Config::tls_key`].
    tls_key: Option<PathBuf>,
    /// Sets [`Config::tls_ticket_keys`].
    tls_ticket_keys: Option<PathBuf>,
    /// Sets [`Config::workers`].
    workers: usize,
    /// Sets [`Config::workers_max`].
    workers_max: usize,
    /// Sets [`Config::worker_idle`].
    worker_idle: Duration,
    /// Sets [`Config::queue`].
    queue: usize,
    /// Sets [`Config::max_inflight`].
    max_inflight: usize,
    /// Sets [`Config::handler_timeout`].
    handler_timeout: Duration,
    /// Sets [`Config::worker_stack`].
    worker_stack: usize,
    /// Sets [`Config::work`].
    work: Option<Work>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
        assert_eq!(parse_duration("28800m"), Ok(MAX_DURATION));
        assert!(parse_duration("28801m").is_err());
        assert!(parse_duration("99999999999999999m").is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.addr.port(), 8080);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.read_timeout, Duration::from_secs(30));
        assert_eq!(c.high_water, 65536);
        assert_eq!((c.workers, c.workers_max, c.max_inflight), (0, 0, 16));
        assert!(c.work.is_none());
    }

    /// The defaults are written twice (the `Default` of the library, the flags' of the
    /// command line): they must agree.
    #[cfg(feature = "cli")]
    #[test]
    fn the_command_lines_defaults_are_the_librarys() {
        assert_eq!(
            format!("{:?}", Config::default()),
            format!("{:?}", Config::parse_from(["reactor"]))
        );
    }

    /// The examples put their own defaults first (`--addr 127.0.0.1:7379`); an option
    /// given again after them wins, as the documentation of every example says.
    #[cfg(feature = "cli")]
    #[test]
    fn an_option_given_twice_takes_the_last_value() {
        let c = Config::try_parse_from([
            "kv",
            "--addr",
            "127.0.0.1:7379",
            "--workers",
            "4",
            "--addr",
            "127.0.0.1:9999",
            "--workers",
            "2",
        ])
        .expect("an option given twice is accepted");
        assert_eq!(c.addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.workers, 2);
    }
}
