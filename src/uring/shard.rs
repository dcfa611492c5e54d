//! One io_uring shard: a thread's loop over completions.
//!
//! Each turn:
//!
//! 1. queue one send per connection with answers waiting (and no send in flight), give
//!    the turn's receive buffers back to the kernel;
//! 2. submit everything queued and wait for completions, the next timer, the drain
//!    deadline or the waker, in one `io_uring_enter`;
//! 3. handle every completion: new connections, bytes received (decoded at once),
//!    sends done, the waker;
//! 4. fire due timers; on shutdown, close what is quiet and cut the rest at the drain
//!    deadline; publish counters.
//!
//! After anything happens to a connection, [`Shard::settle`] decides what it needs
//! next, like the end of `drive` in the epoll backend: decode input a limit held back,
//! linger or close, queue a send, arm or cancel its receive (backpressure: a connection
//! whose unsent output is over `--high-water`, or whose answer is held by `--delay-ms`,
//! has its receive cancelled, and armed again when that passes), arm its deadline.
//!
//! **Nothing the kernel may still touch is freed.** A closed connection's receive and
//! send are cancelled; its socket is closed at once (the kernel keeps the file until the
//! cancelled operations end), but the bytes of a send in flight are kept ("orphans")
//! until its completion comes. Completions carry the connection's generation, so those
//! of a closed connection are recognised even when its slab slot serves a new one. At
//! exit the shard cancels everything and waits (up to a second) for the last
//! completions before the buffers go.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue};
use log::{debug, info, warn};
use mio::net::TcpListener;
use slab::Slab;
use socket2::{SockRef, TcpKeepalive};

use super::conn::*;
use super::ring::{GEN_MASK, Op, Ring, parse_user_data, recv, user_data};
use super::{Settings, Waker};
use crate::buffer::BufferPool;
use crate::clock::Clock;
use crate::protocol::{Cx, Decoded, Next};
use crate::service::{Calls, Handler};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::timer::TimerWheel;

/// At most how often counters are copied out for the server, in ms.
const PUBLISH_MS: u64 = 100;
/// Wheel: 10 ms ticks, 4096 slots (as the epoll shard).
const TICK_MS: u64 = 10;
const SLOTS: usize = 4096;
/// How long accepting pauses when descriptors run out and no spare is left, in ms.
const FD_PAUSE_MS: u64 = 100;
/// At most how often the out-of-descriptors warning is logged, in ms.
const WARN_EVERY_MS: u64 = 60_000;
/// How long the exit waits for the kernel to finish with cancelled operations.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// Decodes of held-back input per connection per settle, before others get a turn.
const DECODE_ROUNDS: usize = 64;

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    Normal,
    Error,
    IdleTimeout,
    ReadTimeout,
    WriteTimeout,
    Cut,
}

pub(crate) struct Shard<H: Handler> {
    id: usize,
    ring: Ring,
    listener: Option<TcpListener>,
    accept_armed: bool,
    /// Accepting is paused until this time (ms), after a failure.
    accept_resume_at: Option<u64>,
    accept_warned_at: Option<u64>,
    spare_fd: Option<std::fs::File>,
    rejected: u64,
    fd_errors: u64,
    conns: Slab<Conn<H::State>>,
    next_generation: u32,
    handler: Arc<H>,
    set: Settings,
    pool: BufferPool,
    wheel: TimerWheel<usize>,
    clock: Clock,
    epoch: Instant,
    /// Milliseconds since `epoch`, read once per turn.
    now: u64,
    stats: Counters,
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    /// Where the waker's eventfd read lands (boxed: the kernel writes to it).
    wake_buf: Box<[u8; 8]>,
    /// Connections with answers to send this turn.
    sends: Vec<usize>,
    /// Bytes of sends in flight whose connection has closed, by `user_data`.
    orphans: Vec<(u64, BytesMut)>,
    /// Operations whose last completion has not come yet.
    inflight: usize,
    /// Receives that found the buffer ring empty (logged at exit, to size the ring).
    ring_dry: u64,
    cqes: Vec<(u64, i32, u32)>,
    calls: Vec<(usize, H::Request)>,
    fired: Vec<usize>,
    draining: bool,
    exiting: bool,
    drain_deadline: Option<u64>,
    grace_sweep_at: Option<u64>,
    published: Counters,
    next_publish: u64,
}

fn errno(res: i32) -> i32 {
    -res
}

impl<H: Handler> Shard<H> {
    /// Everything that can fail before the thread starts: the ring is made here (and
    /// enabled by the thread).
    pub fn new(
        id: usize,
        listener: TcpListener,
        handler: Arc<H>,
        set: Settings,
        shared: Arc<Shared>,
        waker: Arc<Waker>,
    ) -> io::Result<Self> {
        debug_assert!(
            !H::POOLED,
            "the worker pool is refused before a uring shard"
        );
        let ring = Ring::new()?;
        Ok(Shard {
            id,
            ring,
            listener: Some(listener),
            accept_armed: false,
            accept_resume_at: None,
            accept_warned_at: None,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            rejected: 0,
            fd_errors: 0,
            conns: Slab::new(),
            next_generation: 0,
            handler,
            pool: BufferPool::new(set.pool_buffers),
            set,
            wheel: TimerWheel::new(SLOTS, TICK_MS),
            clock: Clock::default(),
            epoch: Instant::now(),
            now: 0,
            stats: Counters::default(),
            shared,
            waker,
            wake_buf: Box::new([0; 8]),
            sends: Vec::new(),
            orphans: Vec::new(),
            inflight: 0,
            ring_dry: 0,
            cqes: Vec::with_capacity(1024),
            calls: Vec::new(),
            fired: Vec::new(),
            draining: false,
            exiting: false,
            drain_deadline: None,
            grace_sweep_at: None,
            published: Counters::default(),
            next_publish: 0,
        })
    }

    /// Runs the loop until shutdown has drained every connection.
    pub fn run(mut self) -> io::Result<Counters> {
        let ended = self.serve();
        let stats = self.stats_now();
        if ended.is_err() || self.inflight > 0 {
            // The kernel may still write into the receive buffers or read orphaned
            // sends: better to leak them than to free them under it.
            warn!(
                "shard {}: {} io_uring operations did not end at exit; leaking their buffers",
                self.id, self.inflight
            );
            std::mem::forget(self);
        }
        ended.map(|()| stats)
    }

    fn serve(&mut self) -> io::Result<()> {
        self.ring.enable()?;
        self.arm_accept()?;
        self.arm_wake()?;
        loop {
            self.submit_sends()?;
            self.ring.bufs.commit();
            let timeout = self.wait_timeout();
            self.wait(timeout)?;
            self.now = self.epoch.elapsed().as_millis() as u64;
            self.clock.refresh();
            self.reap()?;
            if self
                .accept_resume_at
                .is_some_and(|at| self.now >= at && !self.draining)
            {
                self.accept_resume_at = None;
                self.arm_accept()?;
            }
            self.fire_timers()?;
            self.check_shutdown()?;
            self.publish(false);
            if self.draining && self.conns.is_empty() {
                break;
            }
        }
        self.finish()?;
        self.publish(true);
        debug!(
            "shard {}: the receive buffer ring ran dry {} times",
            self.id, self.ring_dry
        );
        Ok(())
    }

    /// Submits what is queued and waits for at least one completion, or `timeout`.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let got = match timeout {
            Some(d) => {
                let ts = Timespec::from(d);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.uring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.uring.submit_and_wait(1),
        };
        match got {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn wait_timeout(&self) -> Option<Duration> {
        let now = self.now;
        let mut at = self.wheel.next_deadline();
        for t in [
            self.drain_deadline,
            self.accept_resume_at,
            self.grace_sweep_at,
        ] {
            at = match (at, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if self.stats_now() != self.published {
            let due = self.next_publish.max(now);
            at = Some(at.map_or(due, |a| a.min(due)));
        }
        // The clock was read before this turn's work: a millisecond more rather than
        // waking a hair early and spinning once.
        at.map(|a| Duration::from_millis(a.saturating_sub(now) + 1))
    }

    /// Handles every completion posted so far.
    fn reap(&mut self) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .uring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(ud, res, flags) in &cqes {
            let (op, generation, key) = parse_user_data(ud);
            let more = cqueue::more(flags);
            match op {
                Some(Op::Accept) => self.on_accept(res, more)?,
                Some(Op::Recv) => self.on_recv(key, generation, res, flags)?,
                Some(Op::Send) => self.on_send(key, generation, ud, res)?,
                Some(Op::Wake) => {
                    self.inflight -= 1;
                    if !self.exiting {
                        self.arm_wake()?;
                    }
                }
                Some(Op::Cancel) | None => {}
            }
        }
        self.cqes = cqes;
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let e = opcode::Read::new(Fd(self.waker.raw()), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(Op::Wake, 0, 0));
        self.ring.push(&e)?;
        self.inflight += 1;
        Ok(())
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let Some(l) = self.listener.as_ref() else {
            return Ok(());
        };
        if self.accept_armed {
            return Ok(());
        }
        let e = opcode::AcceptMulti::new(Fd(l.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, 0, 0));
        self.ring.push(&e)?;
        self.accept_armed = true;
        self.inflight += 1;
        Ok(())
    }

    fn on_accept(&mut self, res: i32, more: bool) -> io::Result<()> {
        if !more {
            self.inflight -= 1;
            self.accept_armed = false;
        }
        if res >= 0 {
            // SAFETY: a new descriptor from accept, owned by nobody else.
            let sock = unsafe { TcpStream::from_raw_fd(res) };
            self.admit(sock)?;
        } else {
            match errno(res) {
                libc::EMFILE | libc::ENFILE => self.on_fd_exhaustion(),
                libc::ECANCELED | libc::ECONNABORTED | libc::EINTR | libc::EAGAIN => {}
                e => {
                    warn!(
                        "shard {}: accept failed: {}; pausing accepts briefly",
                        self.id,
                        io::Error::from_raw_os_error(e)
                    );
                    self.accept_resume_at = Some(self.now + FD_PAUSE_MS);
                }
            }
        }
        if !more && self.accept_resume_at.is_none() && !self.draining && !self.exiting {
            self.arm_accept()?;
        }
        Ok(())
    }

    fn admit(&mut self, sock: TcpStream) -> io::Result<()> {
        if self.exiting {
            return Ok(());
        }
        // While draining, a connection the multishot accept took before its
        // cancellation is served like one accepted just before the drain (it gets the
        // drain's grace): closing it would reset a client whose connection the kernel
        // could no longer move to another listener (tcp_migrate_req).
        if self.conns.len() >= self.set.max_conns {
            self.rejected += 1;
            return Ok(());
        }
        if let Err(e) = configure(&sock, self.set.keepalive) {
            debug!("socket options on an accepted connection: {e}");
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1) & GEN_MASK;
        let key = self.conns.insert(Conn::new(sock, generation, self.now));
        self.stats.accepted += 1;
        self.settle(key)
    }

    /// EMFILE/ENFILE: accept-and-close what waits with the spare descriptor, and pause
    /// accepting briefly (as the epoll backend does).
    fn on_fd_exhaustion(&mut self) {
        self.fd_errors += 1;
        if self
            .accept_warned_at
            .is_none_or(|at| self.now >= at + WARN_EVERY_MS)
        {
            self.accept_warned_at = Some(self.now);
            warn!(
                "shard {}: out of file descriptors with {} connections open \
                 ({} failed accepts so far); closing new connections until some close \
                 (raise `ulimit -n`, see tuning/)",
                self.id,
                self.conns.len(),
                self.fd_errors
            );
        }
        if let Some(l) = self.listener.as_ref() {
            for _ in 0..512 {
                let Some(spare) = self.spare_fd.take() else {
                    break;
                };
                drop(spare);
                let got = l.accept().map(drop);
                self.spare_fd = std::fs::File::open("/dev/null").ok();
                match got {
                    Ok(()) => self.rejected += 1,
                    Err(_) => break,
                }
            }
        }
        self.accept_resume_at = Some(self.now + FD_PAUSE_MS);
    }

    fn on_recv(&mut self, key: usize, generation: u32, res: i32, flags: u32) -> io::Result<()> {
        let more = cqueue::more(flags);
        if !more {
            self.inflight -= 1;
        }
        let bid = cqueue::buffer_select(flags);
        let live = self
            .conns
            .get(key)
            .is_some_and(|c| c.generation == generation);
        if !live {
            // A closed connection's last bytes.
            if let Some(bid) = bid {
                self.ring.bufs.give_back(bid);
            }
            return Ok(());
        }
        if !more {
            self.conns[key].recv = Recv::Idle;
        }
        if res > 0 {
            let Some(bid) = bid else {
                return self.close(key, Close::Error);
            };
            // SAFETY: the buffer is ours until given back, below.
            let data = unsafe { self.ring.bufs.data(bid, res as usize) };
            self.on_data(key, data);
            self.ring.bufs.give_back(bid);
        } else if res == 0 {
            self.conns[key].set(PEER_EOF, true);
        } else {
            match errno(res) {
                // The ring ran dry (armed again by `settle`, after this turn's buffers
                // are back), or our own cancellation.
                libc::ENOBUFS => self.ring_dry += 1,
                libc::ECANCELED => {}
                _ => return self.close(key, Close::Error),
            }
        }
        self.settle(key)
    }

    /// Bytes from the peer: decoded at once if the connection may answer now, else kept
    /// for later (they came after the receive was told to stop).
    fn on_data(&mut self, key: usize, data: &[u8]) {
        self.stats.bytes_in += data.len() as u64;
        let conn = &mut self.conns[key];
        conn.last_active = self.now;
        match conn.stage {
            Stage::Serving => {}
            // No more requests are read: discarded, as the epoll backend's lingering
            // close discards them.
            Stage::Closing | Stage::Lingering => return,
        }
        if self.may_decode(key) {
            self.feed(key, data);
        } else {
            let pool = &mut self.pool;
            let conn = &mut self.conns[key];
            conn.input
                .get_or_insert_with(|| pool.get())
                .extend_from_slice(data);
            conn.set(DECODE_PENDING, true);
            if !conn.has(IN_REQUEST) {
                conn.set(IN_REQUEST, true);
                conn.request_start = self.now;
            }
        }
    }

    fn may_decode(&self, key: usize) -> bool {
        let c = &self.conns[key];
        c.stage == Stage::Serving && c.held_until == 0 && c.backlog() < self.set.high_water
    }

    fn on_send(&mut self, key: usize, generation: u32, ud: u64, res: i32) -> io::Result<()> {
        self.inflight -= 1;
        let live = self
            .conns
            .get(key)
            .is_some_and(|c| c.generation == generation && c.sending.is_some());
        if !live {
            if let Some(i) = self.orphans.iter().position(|(u, _)| *u == ud) {
                let (_, b) = self.orphans.swap_remove(i);
                self.pool.put(b);
            }
            return Ok(());
        }
        let conn = &mut self.conns[key];
        let Some(mut buf) = conn.sending.take() else {
            return Ok(());
        };
        if res <= 0 {
            self.pool.put(buf);
            return self.close(key, Close::Error);
        }
        let n = (res as usize).min(buf.len());
        buf.advance(n);
        self.stats.bytes_out += n as u64;
        conn.write_since = self.now;
        if buf.is_empty() {
            self.pool.put(buf);
            if conn.output.is_none() {
                conn.last_active = self.now;
            }
        } else {
            // A partial send: the rest goes first, with whatever was answered since.
            if let Some(o) = conn.output.take() {
                buf.extend_from_slice(&o);
                self.pool.put(o);
            }
            conn.output = Some(buf);
        }
        self.settle(key)
    }

    /// Hands `data` (new bytes, or nothing to decode what is buffered) to the decoder.
    /// The same bookkeeping as the epoll backend's `feed`.
    fn feed(&mut self, key: usize, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let cx = Cx {
            draining: self.draining,
            clock: &self.clock,
            out_limit: self
                .set
                .high_water
                .saturating_sub(conn.sending.as_ref().map_or(0, |b| b.len())),
            max_requests: if self.set.delay_ms > 0 { 1 } else { usize::MAX },
        };
        let was_in_request = conn.has(IN_REQUEST);
        let pool = &mut self.pool;
        let out = conn.output.get_or_insert_with(|| pool.get());
        let mut calls = Calls::new(out, &mut self.calls);
        let d: Decoded = match conn.input.as_mut() {
            Some(input) => {
                input.extend_from_slice(data);
                let d = self.handler.decode(&mut conn.state, input, &mut calls, &cx);
                input.advance(d.consumed.min(input.len()));
                d
            }
            None => {
                let d = self.handler.decode(&mut conn.state, data, &mut calls, &cx);
                if d.next != Next::Close
                    && let Some(rest) = data.get(d.consumed..)
                    && !rest.is_empty()
                {
                    let mut b = pool.get();
                    b.extend_from_slice(rest);
                    conn.input = Some(b);
                }
                d
            }
        };
        // Inline handlers hand nothing to a pool.
        self.calls.clear();
        if d.requests > 0 {
            let first = if was_in_request {
                self.now.saturating_sub(conn.request_start)
            } else {
                0
            };
            self.stats.record_latency(first, 1);
            self.stats.record_latency(0, d.requests as u64 - 1);
        }
        if conn.output.as_ref().is_some_and(|b| b.is_empty())
            && let Some(b) = conn.output.take()
        {
            pool.put(b);
        }
        if (conn.input.as_ref().is_some_and(|b| b.is_empty()) || d.next == Next::Close)
            && let Some(b) = conn.input.take()
        {
            pool.put(b);
        }
        self.stats.requests += d.requests as u64;
        self.stats.bad_requests += d.errors as u64;
        conn.set(
            DECODE_PENDING,
            d.next == Next::Yield && conn.input.is_some(),
        );
        if d.next == Next::Close {
            conn.stage = Stage::Closing;
        }
        if d.requests > 0 {
            conn.last_active = self.now;
            conn.set(SERVED, true);
            if self.set.delay_ms > 0 {
                conn.held_until = self.now + self.set.delay_ms;
            }
        }
        let in_request = conn.input.is_some() || self.handler.in_request(&conn.state);
        if !in_request {
            conn.set(IN_REQUEST, false);
        } else if d.requests > 0 || !was_in_request {
            conn.request_start = self.now;
            conn.set(IN_REQUEST, true);
        }
    }

    /// Decides what a connection needs next, after anything happened to it: decode
    /// what a limit held back, linger or close, queue its answers, arm or cancel its
    /// receive, arm its deadline.
    fn settle(&mut self, key: usize) -> io::Result<()> {
        if !self.conns.contains(key) {
            return Ok(());
        }
        let mut rounds = 0;
        while self.conns[key].has(DECODE_PENDING) && self.may_decode(key) && rounds < DECODE_ROUNDS
        {
            self.feed(key, &[]);
            rounds += 1;
        }
        let draining = self.draining;
        let grace = self.set.drain_grace_ms;
        let now = self.now;
        let conn = &mut self.conns[key];
        if conn.stage == Stage::Closing && conn.flushed() && conn.held_until == 0 {
            // Half-close and discard until the peer closes, so that unread request
            // bytes do not turn our close into a reset that destroys the answer.
            if let Some(b) = conn.input.take() {
                self.pool.put(b);
            }
            conn.set(DECODE_PENDING | IN_REQUEST, false);
            let _ = conn.sock.shutdown(std::net::Shutdown::Write);
            conn.stage = Stage::Lingering;
            conn.write_since = now;
        }
        if conn.has(PEER_EOF)
            && (conn.stage == Stage::Lingering
                || (conn.flushed() && conn.held_until == 0 && !conn.has(DECODE_PENDING)))
        {
            return self.close(key, Close::Normal);
        }
        if draining && conn.is_quiet() && (conn.has(SERVED) || now >= conn.last_active + grace) {
            return self.close(key, Close::Normal);
        }
        if conn.output.is_some()
            && conn.sending.is_none()
            && conn.held_until == 0
            && !conn.has(SEND_QUEUED)
        {
            conn.set(SEND_QUEUED, true);
            self.sends.push(key);
        }
        // How much more this connection may receive: the room under the high-water
        // mark for its unsent output. Input it holds is not counted: that is a partial
        // request, bounded by the protocol's own limits (and a decoder that stopped
        // at a limit is not read at all). So what a receive brings beyond what the
        // decoder takes is at most the room, and a peer that never reads leaves the
        // shard holding at most the mark plus a buffer. Lingering or closing, what
        // comes is discarded, so any amount.
        let room = match conn.stage {
            Stage::Serving if conn.held_until == 0 && !conn.has(DECODE_PENDING) => {
                self.set.high_water.saturating_sub(conn.backlog())
            }
            Stage::Serving => 0,
            Stage::Closing | Stage::Lingering => super::ring::BUF_LEN * 16,
        };
        let want_read = !conn.has(PEER_EOF) && room > 0;
        let fd = conn.sock.as_raw_fd();
        let recv_ud = user_data(Op::Recv, conn.generation, key);
        match (want_read, conn.recv) {
            (true, Recv::Idle) => {
                conn.recv = Recv::Armed;
                let cap = room.min(u32::MAX as usize) as u32;
                let e = recv(self.set.recv_mode, fd, cap).user_data(recv_ud);
                self.ring.push(&e)?;
                self.inflight += 1;
            }
            (false, Recv::Armed) => {
                conn.recv = Recv::Cancelling;
                self.cancel(recv_ud)?;
            }
            _ => {}
        }
        self.arm_timer(key);
        Ok(())
    }

    fn cancel(&mut self, ud: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(ud)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(user_data(Op::Cancel, 0, 0));
        self.ring.push(&e)
    }

    /// Makes sure the wheel looks at the connection no later than its deadline (lazy,
    /// as in the epoll backend).
    fn arm_timer(&mut self, key: usize) {
        let conn = &mut self.conns[key];
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

    /// Queues this turn's sends: one per connection, of everything it has to say.
    fn submit_sends(&mut self) -> io::Result<()> {
        let mut sends = std::mem::take(&mut self.sends);
        for key in sends.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !conn.has(SEND_QUEUED) {
                continue;
            }
            conn.set(SEND_QUEUED, false);
            if conn.sending.is_some() || conn.held_until != 0 {
                continue;
            }
            let Some(out) = conn.output.take() else {
                continue;
            };
            let len = out.len().min(u32::MAX as usize) as u32;
            let e = opcode::Send::new(Fd(conn.sock.as_raw_fd()), out.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(user_data(Op::Send, conn.generation, key));
            // The bytes stay where they are (owned by `sending`, not touched) until the
            // completion.
            conn.sending = Some(out);
            conn.write_since = self.now;
            self.ring.push(&e)?;
            self.inflight += 1;
        }
        self.sends = sends;
        Ok(())
    }

    fn close(&mut self, key: usize, why: Close) -> io::Result<()> {
        let mut conn = self.conns.remove(key);
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        if conn.recv != Recv::Idle {
            self.cancel(user_data(Op::Recv, conn.generation, key))?;
        }
        if let Some(b) = conn.sending.take() {
            let ud = user_data(Op::Send, conn.generation, key);
            self.cancel(ud)?;
            self.orphans.push((ud, b));
        }
        for b in [conn.input.take(), conn.output.take()]
            .into_iter()
            .flatten()
        {
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
        // Dropping the socket closes the descriptor; the kernel keeps the socket until
        // the cancelled operations have ended.
        Ok(())
    }

    fn fire_timers(&mut self) -> io::Result<()> {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.poll(self.now, &mut fired);
        for key in fired.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.timer = None;
            match conn.deadline(&self.set.timeouts) {
                Some(d) if d <= self.now => {}
                _ => {
                    self.arm_timer(key);
                    continue;
                }
            }
            let why = match conn.phase() {
                Phase::Held => {
                    conn.held_until = 0;
                    self.settle(key)?;
                    continue;
                }
                Phase::Linger => Close::Normal,
                Phase::Writing => Close::WriteTimeout,
                Phase::Reading => Close::ReadTimeout,
                Phase::Idle => Close::IdleTimeout,
            };
            self.close(key, why)?;
        }
        self.fired = fired;
        Ok(())
    }

    fn check_shutdown(&mut self) -> io::Result<()> {
        if !self.draining && self.shared.shutdown.load(Ordering::Acquire) {
            self.draining = true;
            self.close_listener()?;
            self.drain_deadline = Some(self.now + self.set.drain_ms);
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                if self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.stage == Stage::Lingering)
                {
                    self.close(key, Close::Normal)?;
                } else {
                    self.settle(key)?;
                }
            }
            self.grace_sweep_at = Some(self.now + self.set.drain_grace_ms);
            info!(
                "shard {}: draining {} connections with requests in progress",
                self.id,
                self.conns.len()
            );
        }
        if let Some(at) = self.grace_sweep_at
            && self.now >= at
        {
            self.grace_sweep_at = None;
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.settle(key)?;
            }
        }
        let force = self.shared.force.load(Ordering::Acquire);
        if self.draining
            && !self.conns.is_empty()
            && (force || self.drain_deadline.is_some_and(|d| self.now >= d))
        {
            warn!(
                "shard {}: drain deadline reached, cutting {} connections",
                self.id,
                self.conns.len()
            );
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.close(key, Close::Cut)?;
            }
        }
        Ok(())
    }

    /// Stops accepting for good: the multishot accept is cancelled and the listener
    /// closed (the kernel closes it once the accept has ended).
    fn close_listener(&mut self) -> io::Result<()> {
        if self.accept_armed {
            self.cancel(user_data(Op::Accept, 0, 0))?;
        }
        self.listener = None;
        self.accept_resume_at = None;
        Ok(())
    }

    /// At exit: cancels whatever is still armed and waits for the kernel to be done
    /// with every buffer it was given.
    fn finish(&mut self) -> io::Result<()> {
        self.exiting = true;
        self.close_listener()?;
        let e = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(user_data(Op::Cancel, 0, 0));
        self.ring.push(&e)?;
        let end = Instant::now() + EXIT_WAIT;
        while self.inflight > 0 && Instant::now() < end {
            self.ring.bufs.commit();
            self.wait(Some(Duration::from_millis(50)))?;
            self.reap()?;
        }
        Ok(())
    }

    fn stats_now(&self) -> Counters {
        Counters {
            open: self.conns.len() as u64,
            buffers_lent: self.pool.lent() as u64,
            buffers_pooled: self.pool.idle() as u64,
            rejected: self.rejected,
            accept_fd_errors: self.fd_errors,
            ..self.stats
        }
    }

    /// Copies the counters out for the server, when they changed and at most every
    /// `PUBLISH_MS` (or at once with `always`).
    fn publish(&mut self, always: bool) {
        if !always && self.now < self.next_publish {
            return;
        }
        let counters = self.stats_now();
        if always || counters != self.published {
            self.published = counters;
            self.next_publish = self.now + PUBLISH_MS;
            if let Ok(mut s) = self.shared.stats[self.id].lock() {
                *s = counters;
            }
        }
    }
}

/// Options for an accepted socket, as the epoll backend sets them: no Nagle delay, TCP
/// keep-alive probes after `keepalive` of silence.
fn configure(sock: &TcpStream, keepalive: Option<Duration>) -> io::Result<()> {
    sock.set_nodelay(true)?;
    if let Some(idle) = keepalive {
        let ka = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10))
            .with_retries(6);
        SockRef::from(sock).set_tcp_keepalive(&ka)?;
    }
    Ok(())
}
