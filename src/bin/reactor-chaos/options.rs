//! The command line: every option and its default.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use reactor::config::parse_duration;
use serde::Serialize;

use crate::behaviour::Behaviour;
use crate::stream::ProxyHeader;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
    Echo,
    Http,
    Json,
}

/// Chaos load for reactor (or any echo, HTTP or JSON-lines server): connections that
/// pipeline requests in random fragments and end their exchanges badly (half-close,
/// abort, reset), checking that every answer a peer waits for comes back, intact and in
/// order. Exits 1 if an answer was lost or corrupted or a connection failed.
#[derive(Parser, Debug, Clone)]
#[command(name = "reactor-chaos", version)]
pub(crate) struct Opts {
    /// Server address (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) addr: String,
    #[arg(long, value_enum, default_value_t = Proto::Http)]
    pub(crate) protocol: Proto,
    /// Connections, each a thread running exchanges one after the other.
    #[arg(long, default_value_t = 200)]
    pub(crate) conns: usize,
    /// How long to start new exchanges (`10s`, `500ms`, `2m`; a bare number is
    /// seconds). Those under way then finish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Seed of the scenario (default: from the clock; printed, to replay a run).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// The exchange endings to pick from (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Behaviour::ALL)]
    pub(crate) behaviours: Vec<Behaviour>,
    /// Most requests pipelined in one exchange (each exchange sends 1 to this many).
    #[arg(long, default_value_t = 32)]
    pub(crate) max_pipeline: usize,
    /// Echo: largest payload of a request, in bytes (each is 1 to this many).
    #[arg(long, default_value_t = 2000)]
    pub(crate) max_payload: usize,
    /// An answer (or an EOF after a half-close) not here after this long is lost; a
    /// write or connect stuck this long fails its connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Print a JSON summary line on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run every connection through a fault-injecting proxy in this process, with this
    /// profile: comma-separated `latency=D`, `jitter=D` (never reordering), `rate=N[k|m]`
    /// (bytes/s per direction), `slice=A-B` (bytes per segment), `pause=A-B` (between
    /// segments), `stall=P%:D` (a chunk stops D mid-way), `cut=P%` (a chunk is where the
    /// connection is cut, both ways). E.g.
    /// `latency=20ms,jitter=10ms,rate=64k,slice=1-16,pause=0-5ms,stall=2%:300ms,cut=2%`.
    /// Answers missing on a connection the proxy cut are counted `cut`, not lost.
    #[arg(long, value_name = "SPEC")]
    pub(crate) faults: Option<String>,
    /// Start each connection with a PROXY protocol header, as HAProxy would (the
    /// server needs `--proxy-protocol`).
    #[arg(long, value_enum)]
    pub(crate) proxy_header: Option<ProxyHeader>,
    /// Speak TLS, trusting the server certificates that chain to this PEM file (the
    /// name checked is the --addr IP unless --server-name says otherwise).
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// TLS: the server name to send and check.
    #[arg(long, requires = "tls_ca")]
    pub(crate) server_name: Option<String>,
}
