//! The io_uring backend (`--io uring`, Linux, `--features uring`): the same shards,
//! protocols, timers, limits and drain as the epoll backend, on completions instead of
//! readiness.
//!
//! Where the epoll shard waits for "this socket is readable" and then reads, an io_uring
//! shard keeps operations armed in the kernel and is told when they completed:
//!
//! - one **multishot accept** on the shard's SO_REUSEPORT listener (the listener comes
//!   from the same `listener::bind` as the epoll path) posts a completion per new
//!   connection;
//! - one **multishot receive** per connection posts a completion per arrival of bytes,
//!   into a buffer the kernel picks from the shard's **provided buffer ring**
//!   ([`ring`]), so an idle connection holds no buffer, as in the epoll backend;
//! - the bytes go to the same `Handler::decode` as in the epoll backend, and the buffer
//!   goes back to the ring at once;
//! - answers accumulate per connection during a loop turn and leave as **one send per
//!   connection**, all submitted with the turn's wait in **one `io_uring_enter`**.
//!
//! A loop turn is therefore one system call when nothing else happens (accepting a
//! connection adds its socket options; closing adds `close`). Timers are the same
//! [`TimerWheel`](crate::timer::TimerWheel), the turn's wait timeout its next deadline.
//!
//! What it leaves to epoll (`--io auto` falls back with a log line saying why, `--io
//! uring` refuses to start): the worker pool (pooled handlers, `--work`), TLS, the
//! PROXY protocol, `--max-connections-per-ip`, and the listener hand-over
//! (`--handover`, `--takeover`). See [`unsupported`].
//!
//! Files: [`ring`] (the io_uring, the buffer ring, naming operations), [`conn`] (one
//! connection's state), [`shard`] (the loop).

pub(crate) mod conn;
pub(crate) mod ring;
pub(crate) mod shard;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::Config;
use crate::proxy::ProxyMode;

pub(crate) use shard::Shard;

/// What a uring shard needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub timeouts: conn::Timeouts,
    pub high_water: usize,
    pub delay_ms: u64,
    pub max_conns: usize,
    pub keepalive: Option<Duration>,
    pub drain_ms: u64,
    pub drain_grace_ms: u64,
    pub pool_buffers: usize,
    pub recv_mode: ring::RecvMode,
}

impl Settings {
    /// The epoll shard's settings, less what this backend does not do (refused before
    /// by [`unsupported`]).
    pub fn from_epoll(s: &crate::reactor::Settings, recv_mode: ring::RecvMode) -> Settings {
        Settings {
            timeouts: conn::Timeouts {
                idle: s.timeouts.idle,
                read: s.timeouts.read,
                write: s.timeouts.write,
            },
            high_water: s.high_water,
            delay_ms: s.delay_ms,
            max_conns: s.max_conns,
            keepalive: s.keepalive,
            drain_ms: s.drain_ms,
            drain_grace_ms: s.drain_grace_ms,
            pool_buffers: s.pool_buffers,
            recv_mode,
        }
    }
}

/// What in `cfg` this backend cannot run, if anything (`pooled`: the handler runs on the
/// worker pool).
pub(crate) fn unsupported(cfg: &Config, pooled: bool) -> Option<&'static str> {
    if pooled {
        Some("the worker pool (--work or a pooled handler)")
    } else if cfg.tls_cert.is_some() {
        Some("TLS (--tls-cert)")
    } else if cfg.proxy_protocol != ProxyMode::Off {
        Some("the PROXY protocol (--proxy-protocol)")
    } else if cfg.max_connections_per_ip > 0 {
        Some("--max-connections-per-ip")
    } else if cfg.handover.is_some() || cfg.takeover.is_some() {
        Some("the listener hand-over (--handover, --takeover)")
    } else {
        None
    }
}

/// Whether io_uring works here, with every feature this backend uses, and how receives
/// are capped: tried once per process by building a ring as a shard would (so an old
/// kernel, `kernel.io_uring_disabled` or a seccomp filter shows here, with its error).
pub(crate) fn probe() -> Result<ring::RecvMode, String> {
    static PROBE: OnceLock<Result<ring::RecvMode, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let got = ring::probe().map_err(|e| format!("io_uring is unavailable here: {e}"));
            if let Ok(mode) = got {
                log::debug!("io_uring receives: {mode:?}");
            }
            got
        })
        .clone()
}

/// Wakes a shard blocked in its wait (shutdown): an eventfd the shard keeps a read
/// armed on.
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // Blocking on purpose: io_uring honours O_NONBLOCK on reads, and the read must
        // wait in the kernel. A write blocks only at a counter near 2^64.
        // SAFETY: eventfd(2) with constant flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn wake(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}
