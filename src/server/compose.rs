//! Composition: a configuration and a handler made into running shards (listeners
//! bound, the worker pool, TLS, push inboxes, each shard's core and driver, their
//! threads).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use mio::{Poll, Waker};

use super::Server;
use crate::config::ListenAddr;
use crate::config::{Config, ProtocolKind};
use crate::connection::{PushBox, Pusher};
use crate::core::{Settings, Shard, Timeouts};
use crate::driver::epoll::{Driver, WAKER};
use crate::handover;
use crate::listener::{Listener, UnixOptions, bind, bind_unix, claim, raise_nofile_limit};
use crate::service::Handler;
use crate::shared::Shared;
use crate::tls::TlsShared;
use crate::workers::{Pool, PoolConfig};

/// Descriptors kept back from --max-connections for listeners, logs and the like.
const FD_RESERVE: u64 = 32;
/// A shard's push inbox holds at most this many times the push limit.
const PUSH_INBOX_LIMITS: usize = 16;

/// The answer to plain HTTP on a TLS port (nginx answers 400 too).
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Content-Length: 49\r\nConnection: close\r\n\r\nThe plain HTTP request was sent to an HTTPS port\n";

fn ms(d: Duration) -> Option<u64> {
    (!d.is_zero()).then_some(d.as_millis() as u64)
}

pub(super) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// `protocol`: the protocol's name in the log.
pub(super) fn compose<H: Handler>(
    cfg: &Config,
    handler: H,
    name: &str,
    protocol: &str,
) -> io::Result<Server> {
    let mut takeover = match &cfg.takeover {
        Some(path) if name != "admin" => Some(handover::take(path)?),
        _ => None,
    };
    let activated = match name {
        "admin" => None,
        _ if takeover.is_none() && cfg.socket_activation => crate::activation::listen_fds()?,
        _ => None,
    };
    let threads = match (&takeover, &activated, cfg.threads) {
        // One shard per listener handed over, whatever --threads says.
        (Some((fds, _)), _, _) => fds.len(),
        // Several sockets passed: a shard each.
        (None, Some(fds), _) if fds.len() > 1 => fds.len(),
        (None, _, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (None, _, n) => n,
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
    if cfg.max_buffer_memory > 0 && crate::memory::in_use().is_none() {
        return Err(invalid(
            "Config::max_buffer_memory (--max-buffer-memory) needs reactor::memory::Counted \
             as the program's global allocator (see the memory module)"
                .into(),
        ));
    }
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
                cfg.tls_ticket_keys.as_deref(),
            )?))
        }
        (None, None) if cfg.tls_ticket_keys.is_some() => {
            return Err(invalid(
                "Config::tls_ticket_keys (--tls-ticket-keys) needs TLS (--tls-cert)".into(),
            ));
        }
        (None, None) => None,
        _ => {
            return Err(invalid(
                "Config::tls_cert and Config::tls_key (--tls-cert, --tls-key) go together".into(),
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
        memory_limit: usize::try_from(cfg.max_buffer_memory).unwrap_or(usize::MAX),
        delay_ms: cfg.delay_ms,
        max_conns: max_conns.div_ceil(threads),
        dead_peer: crate::listener::DeadPeer {
            keepalive: (cfg.keepalive_secs > 0).then(|| {
                (
                    Duration::from_secs(cfg.keepalive_secs),
                    Duration::from_secs(cfg.keepalive_interval.max(1)),
                    cfg.keepalive_count.max(1),
                )
            }),
            user_timeout: match cfg.tcp_user_timeout {
                Some(t) => (!t.is_zero()).then_some(t),
                None => (!cfg.write_timeout.is_zero()).then_some(cfg.write_timeout),
            },
        },
        drain_ms: cfg.drain_timeout.as_millis() as u64,
        pool_buffers: cfg.pool_buffers,
        max_inflight: cfg.max_inflight.max(1),
        max_per_ip: cfg.max_connections_per_ip,
        proxy: cfg.proxy_protocol,
        proxy_from: Arc::new(cfg.proxy_from.0.clone()),
        drain_grace_ms: cfg.drain_grace.as_millis() as u64,
        tls: tls.clone(),
    };
    let shared = Arc::new(Shared::new(threads, cfg.max_buffer_memory));
    // Bind every listener before starting any thread; with port 0 the first bind
    // picks the port and the others share it through SO_REUSEPORT.
    // With --takeover, the listeners come from the server being replaced instead.
    let mut listeners = Vec::with_capacity(threads);
    let mut unix_file = None;
    if let Some(taken) = takeover.as_mut() {
        for fd in std::mem::take(&mut taken.0) {
            listeners.push(Listener::from_fd(fd)?);
        }
    } else if let Some(fds) = activated {
        // One socket passed: a descriptor of it per shard, as for a Unix socket.
        let copies = if fds.len() == 1 { threads } else { 1 };
        for fd in fds {
            for _ in 1..copies {
                listeners.push(Listener::from_fd(fd.try_clone()?)?);
            }
            listeners.push(Listener::from_fd(fd)?);
        }
        info!(
            "socket activation: serving {} inherited listener(s)",
            listeners.len() / copies
        );
    } else {
        match &cfg.addr {
            ListenAddr::Tcp(addr) => {
                let mut addr = if cfg.reuse_port { *addr } else { claim(*addr)? };
                for _ in 0..threads {
                    let listener = bind(addr, cfg.backlog)?;
                    addr = listener.local_addr()?;
                    listeners.push(Listener::Tcp(listener));
                }
            }
            ListenAddr::Unix(path) => {
                let opts = UnixOptions {
                    mode: cfg.unix_mode,
                    owner: cfg.unix_owner.map(|o| (o.uid, o.gid)),
                };
                let l = bind_unix(path, cfg.backlog, &opts)?;
                unix_file = Some(UnixFile::of(path)?);
                // One socket, a descriptor of it per shard: each shard's epoll waits on
                // it, and the first to accept takes the connection.
                for _ in 1..threads {
                    listeners.push(Listener::Unix(mio::net::UnixListener::from_std(
                        l.try_clone()?,
                    )));
                }
                listeners.push(Listener::Unix(mio::net::UnixListener::from_std(l)));
            }
        }
    }
    // Accepted sockets inherit these from their listener (on Linux; see
    // `configure_listener`), handed over or inherited ones included.
    for l in &listeners {
        if let Listener::Tcp(t) = l {
            crate::listener::configure_listener(t, set.dead_peer)?;
            if cfg.defer_accept {
                crate::listener::defer_accept(t)?;
            }
        }
    }
    let listen = listeners[0].listen_addr()?;
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
        "{what} {listen}: protocol={protocol} threads={threads} \
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
    let addr = match &listen {
        ListenAddr::Tcp(a) => *a,
        ListenAddr::Unix(_) => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let mut server = Server {
        addr,
        listen,
        unix_file,
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
        let shard = Driver::new(id, poll, listener, core, set.dead_peer)?;
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

/// The file of a Unix socket this server made, to remove when it stops (unless the
/// socket went to a successor, or the file is not ours any more).
pub(super) struct UnixFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl UnixFile {
    fn of(path: &std::path::Path) -> io::Result<UnixFile> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(UnixFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    pub(super) fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == (self.dev, self.ino)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
