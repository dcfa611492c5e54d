//! Accepting connections, bounded per turn, and surviving the lack of file descriptors.
//!
//! EMFILE/ENFILE leave the listener readable, so a loop that retries at once spins on a
//! core (tokio #3529). The acceptor keeps a spare descriptor: when accept fails for lack
//! of descriptors it closes the spare, accepts one waiting connection into the freed
//! slot and closes it (the peer sees a prompt close instead of hanging in the backlog),
//! reopens the spare, and repeats for what else waits; with no spare left it pauses
//! accepting for a moment.

use std::fs::File;
use std::io;

use log::warn;
use mio::{Interest, Registry, Token};

use crate::core::Peer;
use crate::listener::{Accepted, Listener, defers_accept};

/// The listener's token; connections use their slab keys, which never reach it.
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);

/// Connections accepted per turn before the existing ones get theirs.
const ACCEPT_BUDGET: usize = 512;
/// How long accepting pauses when file descriptors run out and no spare is left.
const FD_PAUSE_MS: u64 = 100;
/// At most how often the out-of-descriptors warning is logged, in ms.
const WARN_EVERY_MS: u64 = 60_000;

pub(crate) struct Acceptor {
    shard: usize,
    listener: Option<Listener>,
    /// The budget ran out with connections still waiting: accept again this turn.
    pub pending: bool,
    /// Accepting is paused until this time (ms).
    pub resume_at: Option<u64>,
    warned_at: Option<u64>,
    spare_fd: Option<File>,
    /// The listener hands out connections only once their first bytes have come
    /// (TCP_DEFER_ACCEPT): each is worth reading at once.
    pub deferred: bool,
    /// Connections closed at once for lack of descriptors (the core counts those it
    /// refuses itself).
    pub rejected: u64,
    /// Accepts that failed for lack of file descriptors (EMFILE/ENFILE).
    pub fd_errors: u64,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

impl Acceptor {
    pub fn new(shard: usize, reg: &Registry, mut listener: Listener) -> io::Result<Self> {
        reg.register(listener.source(), LISTENER, Interest::READABLE)?;
        Ok(Acceptor {
            deferred: defers_accept(&listener),
            shard,
            listener: Some(listener),
            pending: false,
            resume_at: None,
            warned_at: None,
            spare_fd: File::open("/dev/null").ok(),
            rejected: 0,
            fd_errors: 0,
        })
    }

    /// Stops accepting for good (drain): the listener is closed.
    pub fn close(&mut self, reg: &Registry) {
        if let Some(mut l) = self.listener.take() {
            let _ = reg.deregister(l.source());
        }
        self.pending = false;
        self.resume_at = None;
    }

    /// Whether accepting should run this turn without a readiness event.
    pub fn due(&self, now: u64) -> bool {
        self.pending || self.resume_at.is_some_and(|at| now >= at)
    }

    /// Accepts until WouldBlock or the budget; `admit` decides each connection's fate
    /// (and registers and stores the ones it keeps, or drops the socket). `open` is the
    /// shard's connection count, for the warning.
    pub fn accept(&mut self, now: u64, open: usize, mut admit: impl FnMut(Accepted, Peer)) {
        self.pending = false;
        if self.resume_at.is_some_and(|at| now < at) {
            return;
        }
        self.resume_at = None;
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            match listener.accept() {
                Ok((sock, peer)) => admit(sock, peer),
                Err(e) if would_block(&e) => return,
                Err(e) if out_of_fds(&e) => {
                    self.on_fd_exhaustion(now, open);
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    warn!(
                        "shard {}: accept failed: {e}; pausing accepts briefly",
                        self.shard
                    );
                    self.resume_at = Some(now + FD_PAUSE_MS);
                    return;
                }
            }
        }
        self.pending = true;
    }

    /// EMFILE/ENFILE: accept-and-close what waits with the spare descriptor, then wait
    /// for the next connection; with no spare, pause.
    fn on_fd_exhaustion(&mut self, now: u64, open: usize) {
        self.fd_errors += 1;
        // Once a minute at most: under a flood this fires per connection.
        if self.warned_at.is_none_or(|at| now >= at + WARN_EVERY_MS) {
            self.warned_at = Some(now);
            warn!(
                "shard {}: out of file descriptors with {open} connections open \
                 ({} failed accepts so far); closing new connections until some close \
                 (raise `ulimit -n`, see tuning/)",
                self.shard, self.fd_errors
            );
        }
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            let Some(spare) = self.spare_fd.take() else {
                break;
            };
            drop(spare);
            // Close the accepted socket before reopening the spare: it holds the very
            // descriptor the spare just gave up.
            let got = listener.accept().map(drop);
            self.spare_fd = File::open("/dev/null").ok();
            match got {
                Ok(()) => self.rejected += 1,
                Err(e) if would_block(&e) => return,
                Err(_) => break,
            }
        }
        self.resume_at = Some(now + FD_PAUSE_MS);
    }
}
