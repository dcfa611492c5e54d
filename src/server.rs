//! The server: bind one listener per shard, start the shards, turn SIGINT/SIGTERM into a
//! graceful drain, and join.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{Config, ProtocolKind};
use crate::connection::{PushBox, Pusher};
use crate::core::{Settings, Shard, Timeouts};
use crate::driver::epoll::{Driver, WAKER};
use crate::handover;
use crate::http::{App, Limits, Request, hello};
use crate::listener::{bind, raise_nofile_limit};
use crate::metrics::{Admin, Sources};
use crate::protocol::json::JsonCodec;
use crate::protocol::{Echo, Json};
use crate::service::{Handler, Pooled};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::tls::TlsShared;
use crate::workers::{Pool, PoolConfig};

/// Descriptors kept back from --max-connections for listeners, logs and the like.
const FD_RESERVE: u64 = 32;
/// A shard's push inbox holds at most this many times the push limit.
const PUSH_INBOX_LIMITS: usize = 16;
/// How long a stopped server waits for jobs still running on its workers.
const POOL_STOP_WAIT: Duration = Duration::from_secs(1);

/// The answer to plain HTTP on a TLS port (nginx answers 400 too).
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Content-Length: 49\r\nConnection: close\r\n\r\nThe plain HTTP request was sent to an HTTPS port\n";

/// A running server.
pub struct Server {
    addr: SocketAddr,
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

fn ms(d: Duration) -> Option<u64> {
    (!d.is_zero()).then_some(d.as_millis() as u64)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
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
            Server::start_inner(cfg, handler, "reactor", builtin.unwrap_or_else(H::name))?;
        if let Some(addr) = cfg.metrics_addr {
            let admin_cfg = Config {
                addr,
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
            let admin = match Server::start_inner(&admin_cfg, admin, "admin", "http") {
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

    /// `protocol`: the protocol's name in the log.
    fn start_inner<H: Handler>(
        cfg: &Config,
        handler: H,
        name: &str,
        protocol: &str,
    ) -> io::Result<Server> {
        let mut takeover = match &cfg.takeover {
            Some(path) if name != "admin" => Some(handover::take(path)?),
            _ => None,
        };
        let threads = match (&takeover, cfg.threads) {
            // One shard per listener handed over, whatever --threads says.
            (Some((fds, _)), _) => fds.len(),
            (None, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            (None, n) => n,
        };
        let pool = if H::POOLED {
            if cfg.workers == 0 {
                return Err(invalid(
                    "this handler runs on the worker pool: set Config::workers above 0 \
                     (--workers N on the command line)"
                        .into(),
                ));
            }
            Some(Pool::new(PoolConfig {
                min: cfg.workers,
                max: cfg.workers_max.max(cfg.workers),
                idle: cfg.worker_idle,
                queue: cfg.queue,
                stack: cfg.worker_stack,
            })?)
        } else {
            if cfg.workers > 0 {
                warn!(
                    "workers ({}, --workers) have nothing to run: this protocol answers on \
                     the loop (the built-in json and http run on the pool with Config::work, \
                     --work)",
                    cfg.workers
                );
            }
            None
        };
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                let (alpn, plain_reply) = if cfg.protocol == ProtocolKind::Http {
                    (vec![b"http/1.1".to_vec()], Some(PLAIN_HTTP_ON_TLS))
                } else {
                    (Vec::new(), None)
                };
                Some(Arc::new(TlsShared::new(
                    cert.clone(),
                    key.clone(),
                    alpn,
                    plain_reply,
                )?))
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "Config::tls_cert and Config::tls_key (--tls-cert, --tls-key) go together"
                        .into(),
                ));
            }
        };
        let (soft, hard) = raise_nofile_limit()?;
        let fit = soft.saturating_sub(FD_RESERVE) as usize;
        let max_conns = match cfg.max_connections {
            0 => fit,
            n => {
                if n > fit {
                    warn!(
                        "--max-connections {n} does not fit under the open-files limit \
                         {soft} (hard {hard}); expect accept failures past about {fit} \
                         connections (see tuning/ulimit.sh)"
                    );
                }
                n
            }
        };
        let set = Settings {
            timeouts: Timeouts {
                idle: ms(cfg.idle_timeout),
                read: ms(cfg.read_timeout),
                write: ms(cfg.write_timeout),
                handler: ms(cfg.handler_timeout),
                proxy: cfg.proxy_timeout.as_millis() as u64,
            },
            high_water: cfg.high_water.max(1),
            push_limit: cfg.push_limit.max(1),
            max_input: cfg.max_input.max(1),
            delay_ms: cfg.delay_ms,
            max_conns: max_conns.div_ceil(threads),
            keepalive: (cfg.keepalive_secs > 0).then(|| Duration::from_secs(cfg.keepalive_secs)),
            drain_ms: cfg.drain_timeout.as_millis() as u64,
            pool_buffers: cfg.pool_buffers,
            max_inflight: cfg.max_inflight.max(1),
            max_per_ip: cfg.max_connections_per_ip,
            proxy: cfg.proxy_protocol,
            proxy_from: Arc::new(cfg.proxy_from.0.clone()),
            drain_grace_ms: cfg.drain_grace.as_millis() as u64,
            tls: tls.clone(),
        };
        let shared = Arc::new(Shared::new(threads));
        // Bind every listener before starting any thread; with port 0 the first bind
        // picks the port and the others share it through SO_REUSEPORT.
        // With --takeover, the listeners come from the server being replaced instead.
        let mut listeners = Vec::with_capacity(threads);
        if let Some(taken) = takeover.as_mut() {
            for fd in std::mem::take(&mut taken.0) {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                listeners.push(mio::net::TcpListener::from_std(l));
            }
        } else {
            let mut addr = cfg.addr;
            for _ in 0..threads {
                let listener = bind(addr, cfg.backlog)?;
                addr = listener.local_addr()?;
                listeners.push(listener);
            }
        }
        let addr = listeners[0].local_addr()?;
        // Kept to hand the listeners over to a successor (--handover), and only then:
        // a copy keeps the listening socket open, so it is dropped when the drain starts.
        let listener_fds = if cfg.handover.is_some() {
            listeners
                .iter()
                .map(|l| std::os::fd::BorrowedFd::try_clone_to_owned(&l.as_fd()))
                .collect::<io::Result<Vec<OwnedFd>>>()?
        } else {
            Vec::new()
        };
        let mut parts = Vec::with_capacity(threads);
        let mut inboxes = Vec::with_capacity(threads);
        for listener in listeners.drain(..) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let inbox = Arc::new(PushBox::new(
                set.push_limit.saturating_mul(PUSH_INBOX_LIMITS),
                waker.clone(),
            ));
            inboxes.push(inbox.clone());
            parts.push((poll, listener, waker, inbox));
        }
        let pusher = Pusher::new(inboxes);
        let workers = match &pool {
            Some(p) => {
                let c = p.config();
                format!(
                    " workers={}..{} queue={} max_inflight={} handler_timeout={:?}",
                    c.min, c.max, c.queue, set.max_inflight, cfg.handler_timeout
                )
            }
            None => String::new(),
        };
        let what = if name == "admin" {
            "admin endpoint bound to".to_string()
        } else {
            format!("{name} listening on")
        };
        info!(
            "{what} {addr}: protocol={protocol} threads={threads} \
             max_connections={max_conns} idle_timeout={:?} read_timeout={:?} \
             write_timeout={:?} high_water={} delay_ms={} open_files={soft} (hard {hard}){workers}{}",
            cfg.idle_timeout,
            cfg.read_timeout,
            cfg.write_timeout,
            set.high_water,
            cfg.delay_ms,
            if set.tls.is_some() { " tls=on" } else { "" },
        );
        let handler = Arc::new(handler);
        let mut server = Server {
            addr,
            shared: shared.clone(),
            wakers: Vec::with_capacity(threads),
            threads: Vec::with_capacity(threads),
            pool: pool.clone(),
            admin: None,
            listener_fds: Mutex::new(listener_fds),
            takeover: None,
            tls,
            pusher: pusher.clone(),
        };
        // Everything that can fail is done before the first thread starts: binding,
        // polls, wakers, and each shard's registration.
        let mut shards = Vec::with_capacity(threads);
        for (id, (poll, listener, waker, inbox)) in parts.into_iter().enumerate() {
            let core = Shard::new(
                id,
                handler.clone(),
                set.clone(),
                shared.clone(),
                pool.clone().map(|p| (p, waker.clone())),
                Some((pusher.clone(), inbox)),
            );
            let shard = Driver::new(id, poll, listener, core, set.keepalive)?;
            shards.push((id, shard, waker));
        }
        for (id, shard, waker) in shards {
            let spawned = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || shard.run());
            match spawned {
                Ok(handle) => {
                    server.wakers.push(waker);
                    server.threads.push(handle);
                }
                Err(e) => {
                    // Stop the shards already serving the port: a server that failed to
                    // start must not leave some of itself running.
                    server.shared.force.store(true, Ordering::Release);
                    server.shutdown();
                    let _ = server.join();
                    return Err(e);
                }
            }
        }
        server.takeover = takeover.map(|(_, stream)| stream);
        Ok(server)
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

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters of all shards, as last published (within about 100 ms), and the
    /// worker pool's gauges now.
    pub fn stats(&self) -> Counters {
        let mut sum = Counters::default();
        for cell in &self.shared.stats {
            if let Ok(c) = cell.lock() {
                sum += *c;
            }
        }
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

/// Runs a server of `cfg`'s built-in protocol until SIGINT or SIGTERM, then drains it.
/// A second signal cuts the connections still open; SIGHUP reloads the TLS
/// certificate. This takes over those three signals for the process: a program that
/// keeps them to itself starts the server with [`Server::start`] (or
/// [`Server::start_with`]) instead, and calls [`Server::shutdown`] then
/// [`Server::join`] when it wants the drain.
pub fn run(cfg: &Config) -> io::Result<Counters> {
    serve(cfg, || Server::start(cfg))
}

/// Like [`run`], with a handler of the caller's own (see [`Server::start_with`]).
pub fn run_with<H: Handler>(cfg: &Config, handler: H) -> io::Result<Counters> {
    serve(cfg, || Server::start_with(cfg, handler))
}

/// The hand-over socket's token in the signal loop.
const HANDOVER: Token = Token(1);

fn serve(cfg: &Config, start: impl FnOnce() -> io::Result<Server>) -> io::Result<Counters> {
    // Signals are caught before any thread starts, so an early SIGTERM is a drain, not
    // a kill.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut signals, Token(0), Interest::READABLE)?;
    let server = start()?;
    let mut offered = match &cfg.handover {
        Some(path) => {
            let l = handover::offer(path)?;
            let mut l = mio::net::UnixListener::from_std(l);
            poll.registry()
                .register(&mut l, HANDOVER, Interest::READABLE)?;
            info!(
                "offering the listeners to a successor at {}",
                path.display()
            );
            Some(l)
        }
        None => None,
    };
    let mut events = Events::with_capacity(8);
    let tick = if cfg.stats_interval.is_zero() {
        Duration::from_millis(200)
    } else {
        cfg.stats_interval.min(Duration::from_millis(200))
    };
    let mut last_line = std::time::Instant::now();
    let mut last = Counters::default();
    while !server.is_finished() {
        if let Err(e) = poll.poll(&mut events, Some(tick))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        for sig in signals.pending() {
            if sig == SIGHUP {
                if server.tls.is_some() {
                    info!("signal {sig}: reloading the TLS certificate");
                    let _ = server.reload_tls();
                } else {
                    info!("signal {sig}: nothing to reload (no --tls-cert)");
                }
                continue;
            }
            info!("signal {sig}: shutting down (again to cut connections at once)");
            server.shutdown();
        }
        if events.iter().any(|e| e.token() == HANDOVER)
            && let Some(l) = offered.as_ref()
        {
            while let Ok((peer, _)) = l.accept() {
                // SAFETY: a freshly accepted descriptor that nothing else owns.
                let peer =
                    unsafe { std::os::unix::net::UnixStream::from_raw_fd(peer.into_raw_fd()) };
                match handover::give(peer, &server.listener_fds()) {
                    Ok(true) => {
                        info!("handed the listeners over to a successor; draining");
                        server.handed_over();
                        offered = None;
                        break;
                    }
                    Ok(false) => warn!("a successor took the listeners but did not confirm"),
                    Err(e) => warn!("handing the listeners over failed: {e}"),
                }
            }
        }
        if !cfg.stats_interval.is_zero() && last_line.elapsed() >= cfg.stats_interval {
            let secs = last_line.elapsed().as_secs_f64();
            last_line = std::time::Instant::now();
            let now = server.stats();
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            info!(
                "stats requests/s={:.0} bytes_in/s={:.0} bytes_out/s={:.0} accepted/s={:.0} {now}",
                rate(now.requests, last.requests),
                rate(now.bytes_in, last.bytes_in),
                rate(now.bytes_out, last.bytes_out),
                rate(now.accepted, last.accepted),
            );
            last = now;
        }
    }
    let total = server.join()?;
    info!("stopped: {total}");
    Ok(total)
}
