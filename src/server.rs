//! The server: bind one listener per shard, start the shards, turn SIGINT/SIGTERM into a
//! graceful drain, and join.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{Config, ProtocolKind};
use crate::conn::Timeouts;
use crate::listener::{bind, raise_nofile_limit};
use crate::protocol::{Echo, Http, Json, Protocol};
use crate::reactor::{Settings, Shard, StatsCell, WAKER};
use crate::stats::Counters;

/// Descriptors kept back from --max-connections for listeners, logs and the like.
const FD_RESERVE: u64 = 32;

/// State the server and its shards share: shutdown flags and published counters.
pub(crate) struct Shared {
    pub shutdown: AtomicBool,
    pub force: AtomicBool,
    pub stats: Vec<StatsCell>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    wakers: Vec<Waker>,
    threads: Vec<JoinHandle<io::Result<Counters>>>,
}

fn ms(d: Duration) -> Option<u64> {
    (!d.is_zero()).then_some(d.as_millis() as u64)
}

impl Server {
    /// Binds and starts the shards of `cfg`'s protocol. Returns once every listener is
    /// bound, so the address can be connected to at once.
    pub fn start(cfg: &Config) -> io::Result<Server> {
        match cfg.protocol {
            ProtocolKind::Echo => Server::start_with(cfg, Echo),
            ProtocolKind::Http => Server::start_with(
                cfg,
                Http {
                    max_header_bytes: cfg.max_header_bytes,
                    max_headers: cfg.max_headers.min(crate::protocol::http::HEADER_CAP),
                    max_body: cfg.max_body,
                },
            ),
            ProtocolKind::Json => Server::start_with(
                cfg,
                Json {
                    max_message: cfg.max_message,
                },
            ),
        }
    }

    /// Starts a server speaking a protocol of the caller's own.
    pub fn start_with<P: Protocol>(cfg: &Config, proto: P) -> io::Result<Server> {
        let threads = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
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
            },
            high_water: cfg.high_water.max(1),
            delay_ms: cfg.delay_ms,
            max_conns: max_conns.div_ceil(threads),
            keepalive: (cfg.keepalive_secs > 0).then(|| Duration::from_secs(cfg.keepalive_secs)),
            drain_ms: cfg.drain_timeout.as_millis() as u64,
            pool_buffers: cfg.pool_buffers,
        };
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            force: AtomicBool::new(false),
            stats: (0..threads)
                .map(|_| Mutex::new(Counters::default()))
                .collect(),
        });
        // Bind every listener before starting any thread; with port 0 the first bind
        // picks the port and the others share it through SO_REUSEPORT.
        let mut addr = cfg.addr;
        let mut parts = Vec::with_capacity(threads);
        for _ in 0..threads {
            let listener = bind(addr, cfg.backlog)?;
            addr = listener.local_addr()?;
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            parts.push((poll, listener, waker));
        }
        info!(
            "reactor listening on {addr}: protocol={:?} threads={threads} \
             max_connections={max_conns} idle_timeout={:?} read_timeout={:?} \
             write_timeout={:?} high_water={} delay_ms={} open_files={soft} (hard {hard})",
            cfg.protocol,
            cfg.idle_timeout,
            cfg.read_timeout,
            cfg.write_timeout,
            set.high_water,
            cfg.delay_ms,
        );
        let mut wakers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for (id, (poll, listener, waker)) in parts.into_iter().enumerate() {
            let shard = Shard::new(
                id,
                poll,
                listener,
                proto.clone(),
                set.clone(),
                shared.clone(),
            )?;
            wakers.push(waker);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("reactor-{id}"))
                    .spawn(move || shard.run())?,
            );
        }
        Ok(Server {
            addr,
            shared,
            wakers,
            threads: handles,
        })
    }

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters of all shards, as last published (within about 100 ms).
    pub fn stats(&self) -> Counters {
        let mut sum = Counters::default();
        for cell in &self.shared.stats {
            if let Ok(c) = cell.lock() {
                sum += *c;
            }
        }
        sum
    }

    /// Starts a graceful shutdown: stop accepting, close idle connections, let busy ones
    /// finish until the drain timeout. Call again to cut them at once.
    pub fn shutdown(&self) {
        if self.shared.shutdown.swap(true, Ordering::AcqRel) {
            self.shared.force.store(true, Ordering::Release);
        }
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Whether every shard has finished.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for every shard and returns the summed counters.
    pub fn join(self) -> io::Result<Counters> {
        let mut sum = Counters::default();
        for t in self.threads {
            let c = t
                .join()
                .map_err(|_| io::Error::other("a reactor thread panicked"))??;
            sum += c;
        }
        Ok(sum)
    }
}

/// Runs a server until SIGINT or SIGTERM, then drains it. A second signal cuts the
/// connections still open.
pub fn run(cfg: &Config) -> io::Result<Counters> {
    // Signals are caught before any thread starts, so an early SIGTERM is a drain, not
    // a kill.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut signals, Token(0), Interest::READABLE)?;
    let server = Server::start(cfg)?;
    let mut events = Events::with_capacity(8);
    let tick = if cfg.stats_interval.is_zero() {
        Duration::from_millis(200)
    } else {
        cfg.stats_interval.min(Duration::from_millis(200))
    };
    let mut last_line = std::time::Instant::now();
    while !server.is_finished() {
        if let Err(e) = poll.poll(&mut events, Some(tick))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        for sig in signals.pending() {
            info!("signal {sig}: shutting down (again to cut connections at once)");
            server.shutdown();
        }
        if !cfg.stats_interval.is_zero() && last_line.elapsed() >= cfg.stats_interval {
            last_line = std::time::Instant::now();
            info!("stats {}", server.stats());
        }
    }
    let total = server.join()?;
    info!("stopped: {total}");
    Ok(total)
}
