//! The command line: every option and its default.

use std::net::{IpAddr, SocketAddr};

use clap::{Parser, ValueEnum};
use reactor::wire;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
    Echo,
    Http,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Send requests and measure.
    Load,
    /// Open --conns connections, hold them --duration seconds, report server memory.
    Idle,
}

/// Load generator for reactor (and any echo, HTTP or JSON-lines server).
#[derive(Parser, Debug, Clone)]
#[command(name = "reactor-bench", version)]
pub(crate) struct Opts {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) addr: SocketAddr,
    #[arg(long, value_enum, default_value_t = Proto::Http)]
    pub(crate) protocol: Proto,
    #[arg(long, value_enum, default_value_t = Mode::Load)]
    pub(crate) mode: Mode,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub(crate) conns: usize,
    /// Seconds to measure (after the warm-up); in idle mode, seconds to hold.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Requests per connection instead of a duration.
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// Requests in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pub(crate) pipeline: usize,
    /// Echo payload bytes per request.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) warmup: f64,
    /// Open loop: total requests per second, spread evenly over the connections.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Source addresses to spread connections over (past one address's ephemeral
    /// ports), e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    pub(crate) source_ips: Vec<IpAddr>,
    /// New connections per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) connect_rate: f64,
    /// Client threads, each with its own event loop.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Server PID, to report its memory (VmRSS) and CPU per request.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// A request unanswered this many seconds fails and closes its connection.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) timeout: f64,
    /// HTTP: the body every response must carry ("" = do not check).
    #[arg(long, default_value = std::str::from_utf8(wire::http::HELLO_BODY).unwrap_or_default())]
    pub(crate) http_body: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write the latency distribution to this file: one line per percentile,
    /// `percentile latency_ms 1/(1-percentile)` (the last column is the usual x axis
    /// of a percentile plot on a log scale).
    #[arg(long)]
    pub(crate) hdr_out: Option<std::path::PathBuf>,
    /// Compare with the targets (10K+ connections, 100K+ requests/s, under 100 MB at
    /// 10K connections, under 1 ms average latency); exit 3 on a miss.
    #[arg(long)]
    pub(crate) check: bool,
    /// No progress output.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Pool mode (the seed-002 benchmark): --clients threads each make calls through
    /// one reactor::client pool of this many connections (--conns and --pipeline do
    /// not apply; --requests is per client).
    #[arg(long)]
    pub(crate) pool: Option<usize>,
    /// TLS to the server (rustls; ALPN http/1.1 for --protocol http). Needs --ca or
    /// --insecure. Not with --pool.
    #[arg(long)]
    pub(crate) tls: bool,
    /// TLS: accept the server certificates that chain to this PEM file.
    #[arg(long, requires = "tls", conflicts_with = "insecure")]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// TLS: accept any server certificate (a self-signed one); signatures are still
    /// checked.
    #[arg(long, requires = "tls")]
    pub(crate) insecure: bool,
    /// TLS: resume sessions (the client keeps them, tickets or ids, as browsers do):
    /// with --conn-requests 1, a resumed handshake per request. Without it every
    /// handshake is a full one.
    #[arg(long, requires = "tls")]
    pub(crate) resume: bool,
    /// TLS: the server name to send and check (default: the --addr IP).
    #[arg(long, requires = "tls")]
    pub(crate) server_name: Option<String>,
    /// Load mode: close each connection after this many answers and open a new one in
    /// its place until the duration ends (1 = a new connection, and with --tls a new
    /// handshake, per request). Closed with a reset (SO_LINGER 0), so that the client
    /// keeps no TIME_WAIT ports.
    #[arg(long, conflicts_with = "requests")]
    pub(crate) conn_requests: Option<u64>,
    /// Pool mode: client threads sharing the pool.
    #[arg(long, default_value_t = 16)]
    pub(crate) clients: usize,
}
