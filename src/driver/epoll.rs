//! The epoll driver (mio: epoll on Linux, kqueue on BSD and macOS): one shard's loop.
//!
//! Each turn: wait for readiness (or the core's next deadline), then for each event a
//! connection is handed to the core as ready, the listener accepts, the waker tells the
//! core that jobs completed; then accepts left over from the budget, the core's end of
//! turn (connections to drive again, timers, jobs handed to the pool, the drain's
//! sweeps, counters), and the drain when shutdown is asked for.
//!
//! mio is edge-triggered: the core reads and writes until WouldBlock, or remembers the
//! connection and comes back to it itself (read budget, backpressure, held answers, jobs
//! in flight); no readiness edge will. WRITABLE interest is registered only while
//! output is pending ([`Socket::want_write`]).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::accept::{Acceptor, LISTENER};
use crate::core::{Core, Socket, Sockets};
use crate::listener::{Accepted, DeadPeer, Listener, configure_accepted};

pub(crate) const WAKER: Token = Token(usize::MAX);

/// TCP states (linux/tcp_states.h) the driver asks about.
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// A TCP socket's state, `None` for a socket that is not TCP (a Unix socket).
fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: an all-zero tcp_info is a valid value of the plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large;
    // the descriptor is the connection's, open while lent.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info.tcpi_state)
}

/// At most this many accept turns (each a budget of connections) empty the accept queue
/// before a drain closes the listener.
const MAX_FINAL_ACCEPTS: usize = 64;

pub(crate) struct Driver<C: Core> {
    poll: Poll,
    acceptor: Acceptor,
    table: Table,
    core: C,
    dead_peer: DeadPeer,
    epoch: Instant,
    now: u64,
}

/// The sockets lent to the core. A connection's handle is its socket's descriptor: the
/// core holds it (in its connection, where it costs no byte) from `open` to
/// `Sockets::close`, and the socket is rebuilt around it for each use. So there is no
/// table of sockets beside the core's slab.
struct Table {
    reg: Registry,
    /// The connection in its first drive, not registered yet.
    fresh: Cell<Fresh>,
}

/// A new connection's first drive, before its registration.
#[derive(Clone, Copy)]
enum Fresh {
    None,
    /// Driven, still open; `write`: the core asked to hear of room for output.
    Open {
        key: usize,
        write: bool,
    },
}

/// A connection's socket lent to the core, with what it needs to change its interest.
pub(crate) struct MioSock<'a> {
    /// Not dropped here: the descriptor stays open, owned by the connection.
    stream: ManuallyDrop<TcpStream>,
    reg: &'a Registry,
    fresh: &'a Cell<Fresh>,
    key: usize,
}

impl Socket for MioSock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn write_last(&mut self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(&*self.stream)
            .send_with_flags(buf, libc::MSG_MORE | libc::MSG_NOSIGNAL)
    }

    fn unsent(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int, the send queue's length, into
        // `n`; the descriptor is the connection's, open while lent.
        let r = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if r != 0 || n <= 0 {
            return 0;
        }
        // After a reset (or the kernel giving the peer up) the queue still reports what
        // was never acknowledged, though nothing is owed any more: the socket must be
        // read to learn its fate.
        if tcp_state(self.stream.as_raw_fd())
            .is_some_and(|st| !matches!(st, TCP_ESTABLISHED | TCP_CLOSE_WAIT))
        {
            return 0;
        }
        n as usize
    }

    fn dead(&self) -> bool {
        tcp_state(self.stream.as_raw_fd()) == Some(TCP_CLOSE)
    }

    fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn want_write(&mut self, on: bool) -> io::Result<()> {
        if let Fresh::Open { key, .. } = self.fresh.get()
            && key == self.key
        {
            // Not registered yet: registered with this interest after its first drive.
            self.fresh.set(Fresh::Open { key, write: on });
            return Ok(());
        }
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.reg
            .reregister(&mut *self.stream, Token(self.key), interest)
    }
}

impl Sockets for Table {
    type Sock<'a> = MioSock<'a>;

    fn get(&mut self, key: usize, handle: u32) -> Option<MioSock<'_>> {
        // SAFETY: `handle` is the descriptor of a socket accepted by `Driver::accept`,
        // whose ownership passed to the core's connection; the core hands it back only
        // while that connection exists, and `close` below is its one release. The
        // `ManuallyDrop` keeps this temporary wrapper from closing it.
        let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(handle as RawFd) });
        Some(MioSock {
            stream,
            reg: &self.reg,
            fresh: &self.fresh,
            key,
        })
    }

    fn close(&mut self, key: usize, handle: u32) {
        if let Fresh::Open { key: k, .. } = self.fresh.get()
            && k == key
        {
            self.fresh.set(Fresh::None);
        }
        // SAFETY: as in `get`; the core calls this once, when it lets the connection
        // go, and never uses the handle again. Dropping the socket closes it, which also
        // removes it from epoll.
        drop(unsafe { TcpStream::from_raw_fd(handle as RawFd) });
    }
}

impl<C: Core> Driver<C> {
    pub fn new(
        id: usize,
        poll: Poll,
        listener: Listener,
        core: C,
        dead_peer: DeadPeer,
    ) -> io::Result<Self> {
        let acceptor = Acceptor::new(id, poll.registry(), listener)?;
        let reg = poll.registry().try_clone()?;
        Ok(Driver {
            poll,
            acceptor,
            table: Table {
                reg,
                fresh: Cell::new(Fresh::None),
            },
            core,
            dead_peer,
            epoch: Instant::now(),
            now: 0,
        })
    }

    /// Runs the loop until shutdown has drained every connection.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.core.abandon(&mut self.table);
                return Err(e);
            }
            self.now = self.epoch.elapsed().as_millis() as u64;
            self.core.tick(self.now);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.core.wake(&mut self.table),
                    // A short read means the socket is drained, unless the peer also
                    // closed: then read on to see the EOF (no further edge will come).
                    Token(key) => {
                        self.core
                            .ready(&mut self.table, key, ev.is_read_closed() || ev.is_error())
                    }
                }
            }
            if self.acceptor.due(self.now) {
                self.accept();
            }
            self.core
                .driver_counts(self.acceptor.rejected, self.acceptor.fd_errors);
            self.core.end_turn(&mut self.table);
            if self.core.drain_wanted() {
                self.drain();
            }
            if self.core.finished() {
                break;
            }
        }
        self.core.finish();
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.acceptor.pending || self.core.queued() {
            return Some(Duration::ZERO);
        }
        let at = match (self.core.next_wake(), self.acceptor.resume_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The elapsed clock was read before the work of this turn: add a millisecond
        // rather than wake a hair early and spin once.
        at.map(|a| Duration::from_millis(a.saturating_sub(self.now) + 1))
    }

    /// Accepts what waits. A listener that defers its accepts (TCP_DEFER_ACCEPT) hands
    /// out connections whose request has come: each is driven at once, before it is
    /// registered, so the request is answered in this turn, and a connection answered
    /// and closed then (a new connection per request) never costs an `epoll_ctl`. One
    /// still open afterwards is registered edge-triggered; registering reports what
    /// arrived since the read, so no edge is lost between the two. Otherwise the
    /// request has seldom come yet: the connection is registered and waits for it.
    /// (A drain's last accepts are registered too: see `drain`.)
    fn accept(&mut self) {
        let deferred = self.acceptor.deferred;
        let (core, table, dead_peer) = (&mut self.core, &mut self.table, self.dead_peer);
        let open = core.open_count();
        self.acceptor.accept(self.now, open, |sock, peer| {
            let fd = match sock {
                Accepted::Tcp(s) => {
                    if let Err(e) = configure_accepted(&s, dead_peer) {
                        debug!("socket options on an accepted connection: {e}");
                    }
                    s.into_raw_fd()
                }
                Accepted::Unix(s) => s.into_raw_fd(),
            };
            let Some(key) = core.open(peer, fd as u32) else {
                // SAFETY: the descriptor was released above and the core refused it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                return;
            };
            // The descriptor is the connection's now (see `Table`).
            let mut interest = Interest::READABLE;
            // Not once a drain is asked for (the drain's last accepts, or a shutdown
            // asked while an earlier connection of this batch was served): such a
            // connection is served as the drain says, its answer telling the client
            // that the connection closes.
            if deferred && !core.drain_wanted() {
                table.fresh.set(Fresh::Open { key, write: false });
                core.ready(table, key, false);
                match table.fresh.replace(Fresh::None) {
                    Fresh::Open { write: true, .. } => interest |= Interest::WRITABLE,
                    Fresh::Open { write: false, .. } => {}
                    // Closed in its first drive: its descriptor is gone.
                    Fresh::None => return,
                }
            }
            if let Err(e) = table.reg.register(&mut SourceFd(&fd), Token(key), interest) {
                warn!("registering a connection failed: {e}");
                core.fail(table, key);
            }
        });
    }

    /// Shutdown: connections waiting in the accept queue were let in by the kernel, and
    /// a load balancer may already have sent them a request: closing the listener would
    /// reset them. Take them first (they get the drain grace like any connection that
    /// has not spoken yet), unless the listener went to a successor, whose queue it now
    /// is. Then close the listener and let the core drain.
    fn drain(&mut self) {
        if !self.core.handed_over() {
            for _ in 0..MAX_FINAL_ACCEPTS {
                self.accept();
                if !self.acceptor.pending {
                    break;
                }
            }
        }
        self.acceptor.close(self.poll.registry());
        self.core
            .driver_counts(self.acceptor.rejected, self.acceptor.fd_errors);
        self.core.drain(&mut self.table);
    }
}
