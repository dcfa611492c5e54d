//! The server: [`Server`], a running server and what can be asked of it (its address,
//! counters, a pusher, a drain, a TLS reload), and [`run`], which also owns the process
//! (signals, the hand-over, the stats line).
//!
//! - `compose`: a configuration and a handler made into shards on threads;
//! - `process`: the loop of [`run`] and [`run_with`], for the binary and programs that
//!   give the server their signals.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use mio::Waker;

use crate::config::{Config, ListenAddr, ProtocolKind};
use crate::connection::Pusher;
use crate::handover;
use crate::http::{App, Limits, Request, hello};
use crate::metrics::{Admin, Sources};
use crate::protocol::json::JsonCodec;
use crate::protocol::{Echo, Json};
use crate::service::{Handler, Pooled};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::tls::TlsShared;
use crate::workers::Pool;
use compose::invalid;

/// How long a stopped server waits for jobs still running on its workers.
const POOL_STOP_WAIT: Duration = Duration::from_secs(1);

/// A running server.
///
/// ```
/// let cfg = reactor::Config::default().addr("127.0.0.1:0".parse().unwrap()).threads(1);
/// let server = reactor::Server::start(&cfg)?;
/// let (status, _) = {
///     use std::io::{Read, Write};
///     let mut c = std::net::TcpStream::connect(server.local_addr())?;
///     c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?;
///     let mut got = String::new();
///     c.read_to_string(&mut got)?;
///     (got[9..12].to_string(), got)
/// };
/// assert_eq!(status, "200");
/// server.shutdown();
/// let totals = server.join()?;
/// assert_eq!(totals.requests, 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    addr: SocketAddr,
    listen: ListenAddr,
    /// The Unix socket's file this server made, removed when it stops.
    unix_file: Option<compose::UnixFile>,
    shared: Arc<Shared>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    pool: Option<Pool>,
    /// The /metrics and /health endpoint, a server of its own.
    admin: Option<Box<Server>>,
    /// Copies of the listening sockets, for a successor (--handover); emptied when the
    /// drain starts, since a copy keeps a listening socket (and its queue) alive.
    listener_fds: Mutex<Vec<OwnedFd>>,
    /// With --takeover: the old server, waiting for word that we serve.
    takeover: Option<std::os::unix::net::UnixStream>,
    /// With --tls-cert: the certificate in force, for reloads.
    tls: Option<Arc<TlsShared>>,
    pusher: Pusher,
}

impl Server {
    /// Binds and starts the shards of `cfg`'s protocol. Returns once every listener is
    /// bound, so the address can be connected to at once. With `cfg.work`, the json and
    /// http answers run on the worker pool.
    pub fn start(cfg: &Config) -> io::Result<Server> {
        let limits = Limits {
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers.min(crate::http::HEADER_CAP),
            max_body: cfg.max_body,
        };
        // The built-in server keeps no addresses: its idle connections hold nothing.
        let http = App::new(hello).limits(limits.clone()).addresses(false);
        let json = Json {
            max_message: cfg.max_message,
        };
        match (cfg.protocol, cfg.work) {
            (ProtocolKind::Echo, None) => Server::start_labeled(cfg, Echo, Some("echo")),
            (ProtocolKind::Http, None) => Server::start_labeled(cfg, http, Some("http")),
            (ProtocolKind::Json, None) => Server::start_labeled(cfg, json, Some("json")),
            (ProtocolKind::Http, Some(work)) => {
                let slow_hello = move |r: Request| {
                    work.run();
                    hello(r)
                };
                let app = App::new(slow_hello).limits(limits).addresses(false);
                Server::start_labeled(cfg, app.on_pool(), Some("http"))
            }
            (ProtocolKind::Json, Some(work)) => {
                Server::start_labeled(cfg, Pooled::new(JsonCodec(json), work), Some("json"))
            }
            (ProtocolKind::Echo, Some(_)) => Err(invalid(
                "--work applies to the json and http protocols, not echo".into(),
            )),
        }
    }

    /// Starts a server speaking a protocol of the caller's own: a
    /// [`Protocol`](crate::protocol::Protocol) answered on the loop, or a
    /// [`Pooled`] codec and service whose calls run on the worker pool (which then
    /// needs `cfg.workers > 0`).
    pub fn start_with<H: Handler>(cfg: &Config, handler: H) -> io::Result<Server> {
        Server::start_labeled(cfg, handler, None)
    }

    /// `builtin`: the built-in protocol's name (`--protocol`), which labels the
    /// request counters in /metrics and names it in the log; a protocol of the
    /// caller's own is labelled `custom` and logged under its type's name.
    fn start_labeled<H: Handler>(
        cfg: &Config,
        handler: H,
        builtin: Option<&'static str>,
    ) -> io::Result<Server> {
        let protocol = builtin.unwrap_or("custom");
        let mut server =
            compose::compose(cfg, handler, "reactor", builtin.unwrap_or_else(H::name))?;
        if let Some(addr) = cfg.metrics_addr {
            let admin_cfg = Config {
                addr: ListenAddr::Tcp(addr),
                threads: 1,
                max_connections: 64,
                idle_timeout: Duration::from_secs(30),
                read_timeout: Duration::from_secs(5),
                write_timeout: Duration::from_secs(5),
                stats_interval: Duration::ZERO,
                workers: 0,
                work: None,
                metrics_addr: None,
                max_connections_per_ip: 0,
                proxy_protocol: crate::proxy::ProxyMode::Off,
                tls_cert: None,
                tls_key: None,
                ..Config::default()
            };
            let admin = Admin::new(Sources {
                shared: server.shared.clone(),
                pool: server.pool.clone(),
                protocol,
                tls: server.tls.clone(),
            });
            let admin = match compose::compose(&admin_cfg, admin, "admin", "http") {
                Ok(a) => a,
                Err(e) => {
                    // Leave nothing of the server running behind the error.
                    server.shared.force.store(true, Ordering::Release);
                    server.shutdown();
                    let _ = server.join();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("--metrics-addr {addr}: {e}"),
                    ));
                }
            };
            info!(
                "metrics on http://{}/metrics, health on /health",
                admin.addr
            );
            server.admin = Some(Box::new(admin));
        }
        // Fully started: the server we replace may drain now.
        if let Some(stream) = server.takeover.take() {
            handover::confirm(stream)?;
            info!(
                "took over {} listeners from the server at {}",
                server.threads.len(),
                cfg.takeover
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            );
        }
        Ok(server)
    }

    /// The address of the /metrics and /health endpoint, if one was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }
    /// A handle that writes to any of this server's connections from any thread (see
    /// [`connection`](crate::connection)).
    pub fn pusher(&self) -> Pusher {
        self.pusher.clone()
    }

    /// The listening sockets, to hand over to a successor.
    pub fn listener_fds(&self) -> Vec<RawFd> {
        self.listener_fds
            .lock()
            .map(|fds| fds.iter().map(|f| f.as_raw_fd()).collect())
            .unwrap_or_default()
    }

    /// Reads the TLS certificate and key files again (SIGHUP): new handshakes use the
    /// new pair, connections open go on with theirs. A pair that does not load is
    /// refused, logged and counted, and the one in force stays.
    pub fn reload_tls(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return Err(invalid(
                "no TLS configured (Config::tls_cert, --tls-cert)".into(),
            ));
        };
        match tls.reload() {
            Ok(()) => {
                info!("TLS certificate reloaded; new handshakes use it");
                Ok(())
            }
            Err(e) => {
                warn!("TLS certificate reload refused, keeping the one in force: {e}");
                Err(e)
            }
        }
    }

    /// The TCP address the listeners are bound to (0.0.0.0:0 for a Unix socket: see
    /// [`listen_addr`](Server::listen_addr)).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the server listens: its TCP address, or its Unix socket's path.
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.listen
    }

    /// The counters of all shards, as last published (within about 100 ms), and the
    /// worker pool's gauges now.
    pub fn stats(&self) -> Counters {
        let mut sum = self.shared.total();
        self.add_pool_stats(&mut sum);
        if let Some(t) = &self.tls {
            sum.tls_reloads = t.reloads.load(Ordering::Relaxed);
            sum.tls_reload_failures = t.reload_failures.load(Ordering::Relaxed);
        }
        sum
    }

    fn add_pool_stats(&self, c: &mut Counters) {
        if let Some(p) = &self.pool {
            let s = p.stats();
            c.workers = s.workers;
            c.workers_busy = s.busy;
            c.jobs_queued = s.queued;
            c.workers_grown = s.grown;
            c.workers_retired = s.retired;
        }
    }

    /// Starts a graceful shutdown: stop accepting, close idle connections, let busy ones
    /// finish until the drain timeout. Call again to cut them at once.
    pub fn shutdown(&self) {
        if let Ok(mut fds) = self.listener_fds.lock() {
            fds.clear();
        }
        if self.shared.shutdown.swap(true, Ordering::AcqRel) {
            self.shared.force.store(true, Ordering::Release);
        }
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// The listeners went to a successor: drain without taking what waits in their
    /// accept queue (the successor's now).
    fn handed_over(&self) {
        self.shared.handed_over.store(true, Ordering::Release);
        self.shutdown();
    }

    /// Whether every shard has finished.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for every shard, stops the worker pool, and returns the summed counters.
    pub fn join(mut self) -> io::Result<Counters> {
        let mut failed = None;
        for t in std::mem::take(&mut self.threads) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(e),
                Err(_) => failed = Some(io::Error::other("a reactor thread panicked")),
            }
        }
        if let Some(p) = &self.pool {
            p.shutdown(POOL_STOP_WAIT);
        }
        // Each shard published its final counters as its loop ended.
        let sum = self.stats();
        if let Some(f) = self.unix_file.take()
            && !self.shared.handed_over.load(Ordering::Acquire)
        {
            f.remove();
        }
        if let Some(admin) = self.admin.take() {
            admin.shutdown();
            let _ = admin.join();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(sum),
        }
    }
}

/// A server dropped without [`Server::join`] is stopped at once: connections cut, the
/// worker pool told to stop (its threads exit after their current job).
impl Drop for Server {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.shutdown(Duration::ZERO);
        }
        if self.threads.is_empty() {
            return;
        }
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.force.store(true, Ordering::Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }
}

mod compose;
mod process;

pub use crate::listener::raise_nofile_limit;
pub use process::{run, run_with};
