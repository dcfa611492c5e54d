//! One shard: a thread's event loop, its listener, its connections, its buffer pool and
//! its timer wheel. Shards share nothing on the per-request path.
//!
//! Each turn of the loop: wait for readiness (or the next timer), then
//!
//! 1. for each ready connection, [`drive`](Core::drive) it: flush pending output, then
//!    read into the shard's scratch buffer until WouldBlock, decode, and flush again;
//!    only leftovers (a partial request, unsent output) move into pooled buffers owned
//!    by the connection;
//! 2. accept until WouldBlock (bounded per turn);
//! 3. drive the connections that used up their read budget last time;
//! 4. fire due timers: release held answers, close timed-out connections;
//! 5. publish counters, and on shutdown close what is quiet and cut the rest at the
//!    drain deadline.
//!
//! mio is edge-triggered, so every read and write goes on until WouldBlock, or the
//! connection is remembered for later (read budget, backpressure, held answers) and the
//! reactor itself comes back to it: no readiness edge will.
//!
//! Tokens are slab keys and a closed connection's key is freed at once. A stale event for
//! a key that a new connection took in the same batch is harmless: `drive` treats every
//! event as a hint and does only what the socket allows, like any spurious wake-up.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Buf;
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use crate::buffer::BufferPool;
use crate::clock::Clock;
use crate::conn::*;
use crate::listener::configure_accepted;
use crate::protocol::{Cx, Decoded, Next, Protocol};
use crate::server::Shared;
use crate::stats::Counters;
use crate::timer::TimerWheel;

pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Bytes read from one connection per turn before others get theirs.
const READ_BUDGET: usize = 256 * 1024;
/// Connections accepted per turn before the existing ones get theirs.
const ACCEPT_BUDGET: usize = 512;
/// The size of the shard's read buffer.
const SCRATCH: usize = 64 * 1024;
/// How long accepting pauses when file descriptors run out and no spare is left.
const FD_PAUSE_MS: u64 = 100;
/// At most how often counters are copied out for the server, in ms.
const PUBLISH_MS: u64 = 100;
/// Wheel: 10 ms ticks, 4096 slots (a 41 s rotation).
const TICK_MS: u64 = 10;
const SLOTS: usize = 4096;

/// What a shard needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub timeouts: Timeouts,
    pub high_water: usize,
    pub delay_ms: u64,
    pub max_conns: usize,
    pub keepalive: Option<Duration>,
    pub drain_ms: u64,
    pub pool_buffers: usize,
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    Normal,
    Error,
    IdleTimeout,
    ReadTimeout,
    WriteTimeout,
    Cut,
}

pub(crate) struct Shard<P: Protocol> {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn<P::State>>,
    core: Core<P>,
    shared: Arc<Shared>,
    fired: Vec<usize>,
    accept_pending: bool,
    accept_resume_at: Option<u64>,
    fd_warned_at: Option<u64>,
    spare_fd: Option<File>,
    drain_deadline: Option<u64>,
    published: Counters,
    next_publish: u64,
}

/// Everything a connection's I/O needs besides the connection itself, so that a
/// connection borrowed from the slab and the shard's tools can be used together.
struct Core<P: Protocol> {
    proto: P,
    set: Settings,
    pool: BufferPool,
    wheel: TimerWheel<usize>,
    scratch: Box<[u8]>,
    clock: Clock,
    epoch: Instant,
    now: u64,
    stats: Counters,
    requeue: Vec<usize>,
    draining: bool,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

impl<P: Protocol> Shard<P> {
    pub fn new(
        id: usize,
        poll: Poll,
        mut listener: TcpListener,
        proto: P,
        set: Settings,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let pool = BufferPool::new(set.pool_buffers);
        Ok(Shard {
            id,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            core: Core {
                proto,
                set,
                pool,
                wheel: TimerWheel::new(SLOTS, TICK_MS),
                scratch: vec![0u8; SCRATCH].into_boxed_slice(),
                clock: Clock::default(),
                epoch: Instant::now(),
                now: 0,
                stats: Counters::default(),
                requeue: Vec::new(),
                draining: false,
            },
            shared,
            fired: Vec::new(),
            accept_pending: false,
            accept_resume_at: None,
            fd_warned_at: None,
            spare_fd: File::open("/dev/null").ok(),
            drain_deadline: None,
            published: Counters::default(),
            next_publish: 0,
        })
    }

    /// Runs the loop until shutdown has drained every connection.
    pub fn run(mut self) -> io::Result<Counters> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if interrupted(&e) {
                    continue;
                }
                return Err(e);
            }
            self.core.now = self.core.epoch.elapsed().as_millis() as u64;
            self.core.clock.refresh();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    // A short read means the socket is drained, unless the peer also
                    // closed: then read on to see the EOF (no further edge will come).
                    Token(key) => self.drive_with(key, ev.is_read_closed() || ev.is_error()),
                }
            }
            if self.accept_pending {
                self.accept();
            }
            if let Some(at) = self.accept_resume_at
                && self.core.now >= at
            {
                self.accept_resume_at = None;
                self.accept();
            }
            let requeue = std::mem::take(&mut self.core.requeue);
            for key in requeue {
                self.drive(key);
            }
            self.fire_timers();
            self.check_shutdown();
            self.publish(false);
            if self.core.draining && self.conns.is_empty() {
                break;
            }
        }
        self.publish(true);
        Ok(self.core.stats_now(&self.conns))
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.accept_pending || !self.core.requeue.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.core.now;
        let mut at = self.core.wheel.next_deadline();
        for t in [self.drain_deadline, self.accept_resume_at] {
            at = match (at, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if self.core.stats_now(&self.conns) != self.published {
            let due = self.next_publish.max(now);
            at = Some(at.map_or(due, |a| a.min(due)));
        }
        // The elapsed clock was read before the work of this turn: add a millisecond
        // rather than wake a hair early and spin once.
        at.map(|a| Duration::from_millis(a.saturating_sub(now) + 1))
    }

    /// Drives a connection with no readiness event in hand: read until WouldBlock.
    fn drive(&mut self, key: usize) {
        self.drive_with(key, true);
    }

    /// `read_to_block`: keep reading after a short read, until WouldBlock or EOF.
    fn drive_with(&mut self, key: usize, read_to_block: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match self
            .core
            .drive(self.poll.registry(), conn, key, read_to_block)
        {
            Ok(()) => self.core.arm(conn, key),
            Err(why) => {
                let conn = self.conns.remove(key);
                self.core.close(conn, why);
            }
        }
    }

    fn accept(&mut self) {
        self.accept_pending = false;
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            match listener.accept() {
                Ok((mut sock, _)) => {
                    if self.conns.len() >= self.core.set.max_conns {
                        self.core.stats.rejected += 1;
                        continue;
                    }
                    if let Err(e) = configure_accepted(&sock, self.core.set.keepalive) {
                        debug!("socket options on an accepted connection: {e}");
                    }
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut sock, Token(key), Interest::READABLE)
                    {
                        warn!("shard {}: registering a connection failed: {e}", self.id);
                        continue;
                    }
                    let conn = entry.insert(Conn::new(sock, self.core.now));
                    self.core.stats.accepted += 1;
                    self.core.arm(conn, key);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if out_of_fds(&e) => {
                    self.on_fd_exhaustion();
                    return;
                }
                Err(e)
                    if interrupted(&e)
                        || matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                        ) => {}
                Err(e) => {
                    warn!(
                        "shard {}: accept failed: {e}; pausing accepts briefly",
                        self.id
                    );
                    self.accept_resume_at = Some(self.core.now + FD_PAUSE_MS);
                    return;
                }
            }
        }
        self.accept_pending = true;
    }

    /// EMFILE/ENFILE: the listener stays readable, so retrying at once would spin. Use
    /// the spare descriptor to accept and close what waits in the backlog (the peers
    /// see a close rather than hang), then wait for the next connection; with no spare
    /// left, pause accepting for a moment.
    fn on_fd_exhaustion(&mut self) {
        self.core.stats.accept_fd_errors += 1;
        // Once a minute at most: under a flood this fires per connection.
        if self
            .fd_warned_at
            .is_none_or(|at| self.core.now >= at + 60_000)
        {
            self.fd_warned_at = Some(self.core.now);
            warn!(
                "shard {}: out of file descriptors with {} connections open \
                 ({} failed accepts so far); closing new connections until some close \
                 (raise `ulimit -n`, see tuning/)",
                self.id,
                self.conns.len(),
                self.core.stats.accept_fd_errors
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
            let got = listener.accept();
            self.spare_fd = File::open("/dev/null").ok();
            match got {
                Ok(_) => self.core.stats.rejected += 1,
                Err(e) if would_block(&e) => return,
                Err(_) => break,
            }
        }
        self.accept_resume_at = Some(self.core.now + FD_PAUSE_MS);
    }

    fn fire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.core.wheel.poll(self.core.now, &mut fired);
        for key in fired.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.timer = None;
            let now = self.core.now;
            match conn.deadline(&self.core.set.timeouts) {
                Some(d) if d <= now => {}
                _ => {
                    self.core.arm(conn, key);
                    continue;
                }
            }
            let why = match conn.phase() {
                Phase::Held => {
                    conn.held_until = 0;
                    self.drive(key);
                    continue;
                }
                Phase::Linger => Close::Normal,
                Phase::Writing => Close::WriteTimeout,
                Phase::Reading => Close::ReadTimeout,
                Phase::Idle => Close::IdleTimeout,
            };
            let conn = self.conns.remove(key);
            self.core.close(conn, why);
        }
        self.fired = fired;
    }

    fn check_shutdown(&mut self) {
        if !self.core.draining && self.shared.shutdown.load(Ordering::Acquire) {
            self.core.draining = true;
            if let Some(mut l) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
            self.accept_pending = false;
            self.accept_resume_at = None;
            self.drain_deadline = Some(self.core.now + self.core.set.drain_ms);
            // Drive every connection once more before judging it idle: a request whose
            // bytes arrived with the signal is served, not dropped. `drive` closes what
            // is quiet once draining is set.
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                if self.conns.get(key).is_some_and(|c| c.has(LINGER)) {
                    let conn = self.conns.remove(key);
                    self.core.close(conn, Close::Normal);
                } else {
                    self.drive(key);
                }
            }
            info!(
                "shard {}: draining {} connections with requests in progress",
                self.id,
                self.conns.len()
            );
        }
        let force = self.shared.force.load(Ordering::Acquire);
        if self.core.draining
            && !self.conns.is_empty()
            && (force || self.drain_deadline.is_some_and(|d| self.core.now >= d))
        {
            let n = self.conns.len();
            warn!(
                "shard {}: drain deadline reached, cutting {n} connections",
                self.id
            );
            for conn in self.conns.drain().collect::<Vec<_>>() {
                self.core.close(conn, Close::Cut);
            }
        }
    }

    /// Copies the counters out for the server, when they changed and at most every
    /// `PUBLISH_MS` (or at once with `always`), so that a busy loop takes the lock
    /// ten times a second, not once per turn.
    fn publish(&mut self, always: bool) {
        if !always && self.core.now < self.next_publish {
            return;
        }
        let counters = self.core.stats_now(&self.conns);
        if always || counters != self.published {
            self.published = counters;
            self.next_publish = self.core.now + PUBLISH_MS;
            if let Ok(mut s) = self.shared.stats[self.id].lock() {
                *s = counters;
            }
        }
    }
}

impl<P: Protocol> Core<P> {
    fn stats_now(&self, conns: &Slab<Conn<P::State>>) -> Counters {
        Counters {
            open: conns.len() as u64,
            buffers_lent: self.pool.lent() as u64,
            ..self.stats
        }
    }

    /// Does all the work the socket allows now. `Err` means: close it, for this reason.
    fn drive(
        &mut self,
        reg: &Registry,
        conn: &mut Conn<P::State>,
        key: usize,
        read_to_block: bool,
    ) -> Result<(), Close> {
        if conn.has(LINGER) {
            return self.linger(conn);
        }
        self.flush(reg, conn, key)?;
        let mut budget = READ_BUDGET;
        loop {
            if conn.held_until != 0 || conn.has(CLOSE_AFTER_FLUSH) {
                break;
            }
            if conn.out_len() >= self.set.high_water {
                // Backpressure: read no more until the output is below the mark. Try a
                // write first; only if the peer is not taking it do we wait for WRITABLE.
                self.flush(reg, conn, key)?;
                if conn.out_len() >= self.set.high_water {
                    break;
                }
            }
            if budget == 0 {
                self.requeue.push(key);
                break;
            }
            if conn.has(DECODE_PENDING) {
                budget = budget.saturating_sub(4096);
                self.feed(conn, 0);
                continue;
            }
            if conn.has(PEER_EOF) {
                break;
            }
            match conn.sock.read(&mut self.scratch) {
                Ok(0) => conn.set(PEER_EOF, true),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.stats.bytes_in += n as u64;
                    conn.last_active = self.now;
                    self.feed(conn, n);
                    // Edge-triggered: a read shorter than the buffer emptied the socket,
                    // and bytes arriving later raise a new edge. Skipping the read that
                    // would only say WouldBlock saves a syscall per request.
                    if n < self.scratch.len() && !read_to_block && !conn.has(DECODE_PENDING) {
                        break;
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) if interrupted(&e) => {}
                Err(_) => return Err(Close::Error),
            }
        }
        self.flush(reg, conn, key)?;
        if conn.has(CLOSE_AFTER_FLUSH) && conn.output.is_none() {
            // Half-close and read until the peer closes, so that unread request bytes
            // do not turn our close into a reset that destroys the answer in flight.
            if let Some(b) = conn.input.take() {
                self.pool.put(b);
            }
            let _ = conn.sock.shutdown(std::net::Shutdown::Write);
            conn.set(LINGER, true);
            conn.write_since = self.now;
            return self.linger(conn);
        }
        if conn.has(PEER_EOF)
            && conn.output.is_none()
            && conn.held_until == 0
            && !conn.has(DECODE_PENDING)
        {
            return Err(Close::Normal);
        }
        if self.draining && conn.is_quiet() {
            return Err(Close::Normal);
        }
        Ok(())
    }

    /// Hands `n` new bytes from the scratch buffer (or, with `n == 0`, what is already
    /// buffered) to the protocol.
    fn feed(&mut self, conn: &mut Conn<P::State>, n: usize) {
        let cx = Cx {
            clock: &self.clock,
            out_limit: self.set.high_water,
            max_requests: if self.set.delay_ms > 0 { 1 } else { usize::MAX },
        };
        let was_in_request = conn.has(IN_REQUEST);
        let out = conn.output.get_or_insert_with(|| self.pool.get());
        let d: Decoded = match conn.input.as_mut() {
            Some(input) => {
                input.extend_from_slice(&self.scratch[..n]);
                let d = self.proto.decode(&mut conn.state, input, out, &cx);
                input.advance(d.consumed);
                d
            }
            None => {
                let d = self
                    .proto
                    .decode(&mut conn.state, &self.scratch[..n], out, &cx);
                if d.consumed < n && d.next != Next::Close {
                    let mut b = self.pool.get();
                    b.extend_from_slice(&self.scratch[d.consumed..n]);
                    conn.input = Some(b);
                }
                d
            }
        };
        if out.is_empty()
            && let Some(b) = conn.output.take()
        {
            self.pool.put(b);
        }
        if (conn.input.as_ref().is_some_and(|b| b.is_empty()) || d.next == Next::Close)
            && let Some(b) = conn.input.take()
        {
            self.pool.put(b);
        }
        self.stats.requests += d.requests as u64;
        self.stats.bad_requests += d.errors as u64;
        conn.set(
            DECODE_PENDING,
            d.next == Next::Yield && conn.input.is_some(),
        );
        if d.next == Next::Close {
            conn.set(CLOSE_AFTER_FLUSH, true);
        }
        if d.requests > 0 {
            conn.last_active = self.now;
            if self.set.delay_ms > 0 {
                conn.held_until = self.now + self.set.delay_ms;
            }
        }
        let in_request = conn.input.is_some() || self.proto.in_request(&conn.state);
        if !in_request {
            conn.set(IN_REQUEST, false);
        } else if d.requests > 0 || !was_in_request {
            conn.request_start = self.now;
            conn.set(IN_REQUEST, true);
        }
    }

    /// Writes pending output until done or WouldBlock, and keeps WRITABLE interest
    /// registered exactly while output is pending.
    fn flush(
        &mut self,
        reg: &Registry,
        conn: &mut Conn<P::State>,
        key: usize,
    ) -> Result<(), Close> {
        if conn.held_until != 0 {
            return Ok(());
        }
        if let Some(out) = conn.output.as_mut() {
            while !out.is_empty() {
                match conn.sock.write(out) {
                    Ok(0) => return Err(Close::Error),
                    Ok(n) => {
                        out.advance(n);
                        self.stats.bytes_out += n as u64;
                        conn.write_since = self.now;
                    }
                    Err(e) if would_block(&e) => break,
                    Err(e) if interrupted(&e) => {}
                    Err(_) => return Err(Close::Error),
                }
            }
            if out.is_empty() {
                if let Some(b) = conn.output.take() {
                    self.pool.put(b);
                }
                conn.last_active = self.now;
            }
        }
        let pending = conn.output.is_some();
        if pending != conn.has(WANT_WRITE) {
            let interest = if pending {
                conn.write_since = self.now;
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            reg.reregister(&mut conn.sock, Token(key), interest)
                .map_err(|_| Close::Error)?;
            conn.set(WANT_WRITE, pending);
        }
        Ok(())
    }

    /// Lingering close: discard whatever the peer still sends until it closes.
    fn linger(&mut self, conn: &mut Conn<P::State>) -> Result<(), Close> {
        loop {
            match conn.sock.read(&mut self.scratch) {
                Ok(0) => return Err(Close::Normal),
                Ok(n) => self.stats.bytes_in += n as u64,
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if interrupted(&e) => {}
                Err(_) => return Err(Close::Normal),
            }
        }
    }

    /// Makes sure the wheel will look at the connection no later than its deadline.
    /// Lazy: an entry that comes due before the deadline is simply re-armed then.
    fn arm(&mut self, conn: &mut Conn<P::State>, key: usize) {
        let Some(deadline) = conn.deadline(&self.set.timeouts) else {
            return;
        };
        if conn.timer.is_some() && conn.timer_at <= deadline {
            return;
        }
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        conn.timer = Some(self.wheel.schedule(deadline, key));
        conn.timer_at = deadline;
    }

    fn close(&mut self, mut conn: Conn<P::State>, why: Close) {
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        if let Some(b) = conn.input.take() {
            self.pool.put(b);
        }
        if let Some(b) = conn.output.take() {
            self.pool.put(b);
        }
        let s = &mut self.stats;
        s.closed += 1;
        match why {
            Close::Normal => {}
            Close::Error => s.io_errors += 1,
            Close::IdleTimeout => s.idle_timeouts += 1,
            Close::ReadTimeout => s.read_timeouts += 1,
            Close::WriteTimeout => s.write_timeouts += 1,
            Close::Cut => s.cut_at_shutdown += 1,
        }
        // Dropping the socket closes it, which also removes it from epoll.
    }
}

/// Publishes a shard's counters for the server to read.
pub(crate) type StatsCell = Mutex<Counters>;
