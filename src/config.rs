//! Every setting of the server and its default, in one place.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::proxy::{Cidr, ProxyMode};
use crate::service::Work;

/// `--proxy-from`: trusted networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

fn parse_cidrs(s: &str) -> Result<CidrList, String> {
    crate::proxy::parse_cidrs(s).map(CidrList)
}

/// The protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolKind {
    /// Every byte read is written back.
    Echo,
    /// HTTP/1.1 `Hello, World!` with keep-alive and pipelining.
    Http,
    /// A stream of {"Uid","Val"} JSON messages, one answer line each.
    Json,
}

/// reactor: a TCP server on the operating system's event loop, one loop per thread.
#[derive(Clone, Debug, Parser)]
#[command(name = "reactor", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Protocol to speak.
    #[arg(long, value_enum, default_value_t = ProtocolKind::Http)]
    pub protocol: ProtocolKind,

    /// Reactor threads, each with its own SO_REUSEPORT listener (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    /// Listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096)]
    pub backlog: i32,

    /// TCP keep-alive idle time of accepted sockets, in seconds (0 = off).
    #[arg(long, default_value_t = 60)]
    pub keepalive_secs: u64,

    /// Close a connection with no request in progress after this long ("60", "60s",
    /// "500ms"; 0 = never).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Close a connection whose request is not complete this long after its first byte;
    /// later bytes do not extend it (0 = never).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub read_timeout: Duration,

    /// Close a connection whose pending output makes no progress for this long
    /// (0 = never).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Most concurrent connections, over all threads; past it new connections are
    /// accepted and closed at once, and counted as rejected. 0 = the open-files limit
    /// less a reserve of 32 descriptors.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,

    /// Stop reading from a connection while its unsent output is above this many bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub high_water: usize,

    /// Most bytes a connection may have sent that its protocol has not consumed yet (a
    /// request still incomplete): past it, the connection is answered what was
    /// complete, then closed, and counted (`input_overflows`). It bounds every
    /// protocol's memory, the built-in ones and yours.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_input: usize,

    /// Hold every answer back this many milliseconds (on the timer wheel, never by
    /// sleeping); each connection's next request is read once its answer is out.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,

    /// HTTP: largest request head in bytes (431 past it).
    #[arg(long, default_value_t = crate::wire::http::MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,

    /// HTTP: most header lines in a request (431 past it; at most 256).
    #[arg(long, default_value_t = crate::wire::http::MAX_HEADERS)]
    pub max_headers: usize,

    /// HTTP: largest request body in bytes (413 past it).
    #[arg(long, default_value_t = crate::wire::http::MAX_BODY)]
    pub max_body: u64,

    /// JSON: largest message in bytes (an error line and a close past it).
    #[arg(long, default_value_t = crate::wire::json::MAX_MESSAGE)]
    pub max_message: usize,

    /// On SIGINT/SIGTERM, wait this long for requests in progress before cutting them.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Idle 4 KB buffers each thread keeps for reuse; more are freed.
    #[arg(long, default_value_t = 1024)]
    pub pool_buffers: usize,

    /// Log a line of counters and rates every this often (0 = only at exit).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Serve GET /metrics (Prometheus) and GET /health on this address (off unless
    /// given), from a loop of its own.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,

    /// Expect a PROXY protocol header (HAProxy's, version 1 text or 2 binary) at the
    /// start of each connection from a peer in --proxy-from; its client address is
    /// what per-address limits and logs use.
    #[arg(long, value_enum, default_value_t = ProxyMode::Off, help_heading = "Behind a load balancer")]
    pub proxy_protocol: ProxyMode,

    /// Peers allowed (and required) to send a PROXY header, as CIDR networks separated
    /// by commas. A header from any other peer closes its connection.
    #[arg(long, default_value = "127.0.0.0/8,::1/128", value_parser = parse_cidrs, help_heading = "Behind a load balancer")]
    pub proxy_from: CidrList,

    /// How long a trusted peer has to send its whole PROXY header.
    #[arg(long, default_value = "3s", value_parser = parse_duration, help_heading = "Behind a load balancer")]
    pub proxy_timeout: Duration,

    /// Offer this server's listening sockets to a successor on a Unix socket at this
    /// path (mode 0600): a new server started with --takeover PATH takes them, and this
    /// one drains. Nothing waiting in an accept queue is lost.
    #[arg(long, help_heading = "Behind a load balancer")]
    pub handover: Option<std::path::PathBuf>,

    /// Start by taking the listening sockets of the server offering them at this path
    /// (its --handover), instead of binding --addr. One thread per listener taken.
    #[arg(long, help_heading = "Behind a load balancer")]
    pub takeover: Option<std::path::PathBuf>,

    /// On a drain, how long a connection that has not sent its first request yet may
    /// still send it (one accepted just before the drain is not idle).
    #[arg(long, default_value = "1s", value_parser = parse_duration, help_heading = "Behind a load balancer")]
    pub drain_grace: Duration,

    /// Most connections from one client address at once; past it new connections from
    /// that address are closed at once and counted as rejected (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Speak TLS (1.2 and 1.3, with rustls) on every connection, with this PEM
    /// certificate chain (the server's certificate first). Needs --tls-key. SIGHUP
    /// reads both files again.
    #[arg(long, requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Worker threads for handlers that may block, started up front (0 = no pool: every
    /// answer is computed on the loop).
    #[arg(long, default_value_t = 0, help_heading = "Worker pool")]
    pub workers: usize,

    /// Most worker threads: the pool grows past --workers while jobs wait and every
    /// worker is busy (0 = the same as --workers, a fixed pool).
    #[arg(long, default_value_t = 0, help_heading = "Worker pool")]
    pub workers_max: usize,

    /// A worker beyond --workers that is idle this long exits.
    #[arg(long, default_value = "10s", value_parser = parse_duration, help_heading = "Worker pool")]
    pub worker_idle: Duration,

    /// Most jobs waiting for a worker; past it, connections are not read until room
    /// frees (backpressure, not loss).
    #[arg(long, default_value_t = 1024, help_heading = "Worker pool")]
    pub queue: usize,

    /// Most jobs in flight per connection; past it the connection is not read until
    /// one completes.
    #[arg(long, default_value_t = 16, help_heading = "Worker pool")]
    pub max_inflight: usize,

    /// Answer a request whose handler has not finished after this long with HTTP 503 or
    /// a JSON error line, and drop the late result (0 = wait for ever).
    #[arg(long, default_value = "0", value_parser = parse_duration, help_heading = "Worker pool")]
    pub handler_timeout: Duration,

    /// Stack size of a worker thread, in bytes.
    #[arg(long, default_value_t = 256 * 1024, help_heading = "Worker pool")]
    pub worker_stack: usize,

    /// Run each json or http answer on the worker pool after this work: `sleep:D` (a
    /// blocking sleep, the seeds' slow handler) or `spin:D` (D of CPU), e.g. sleep:10ms,
    /// spin:100us. Needs --workers.
    #[arg(long, value_parser = parse_work, help_heading = "Worker pool")]
    pub work: Option<Work>,
}

fn parse_work(s: &str) -> Result<Work, String> {
    s.parse()
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["reactor"])
    }
}

/// Parses "30" (seconds), "30s", "250ms", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s or 250ms)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is longer than the longest duration, 20 days"
        ));
    }
    Ok(d)
}

/// The longest duration a flag takes: a connection keeps its times as 32-bit
/// millisecond stamps, read back within 49 days (`conn::Stamp`), and a deadline must
/// stay well inside that.
pub const MAX_DURATION: Duration = Duration::from_secs(20 * 86_400);

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

    /// The examples put their own defaults first (`--addr 127.0.0.1:7379`); an option
    /// given again after them wins, as the documentation of every example says.
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
