//! The process loop of [`run`] and [`run_with`], for the binary and programs that
//! let the server own the process: signals (drain, cut, TLS reload), the hand-over to a
//! successor, and the periodic stats line.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use log::{info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::Server;
use crate::config::Config;
use crate::handover;
use crate::service::Handler;
use crate::stats::Counters;

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
