//! One connection's I/O: everything the shard does to a connection between a readiness
//! event and the next wait. [`ConnIo`] holds the shard's tools (handler, buffer pool,
//! scratch buffer, timer wheel, counters, the link to the worker pool) apart from the
//! slab, so that a connection borrowed from the slab and the tools can be used together.
//!
//! The order of work on a connection, every time it is driven:
//!
//! 1. flush pending output;
//! 2. read into the shard's scratch buffer until WouldBlock (or a short read, or the
//!    read budget), handing each read to the decoder; stop early under backpressure
//!    (output over the high-water mark), while an answer is held (`--delay-ms`), or
//!    while the connection has its most jobs in flight or the pool's queue is full;
//! 3. flush again; then close, linger, or arm the connection's deadline.
//!
//! Only leftovers (a partial request, unsent output, an answer waiting for the jobs
//! before it) move into pooled buffers owned by the connection.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use log::warn;
use mio::{Interest, Registry, Token};

use crate::buffer::BufferPool;
use crate::clock::Clock;
use crate::conn::*;
use crate::jobs::{Completion, Inbox, Jobs};
use crate::protocol::{Cx, Decoded, Next};
use crate::proxy::{self, Cidr, Parsed, ProxyMode, Refusal};
use crate::service::{Calls, Failure, Handler};
use crate::stats::Counters;
use crate::timer::TimerWheel;
use crate::tls::{HANDSHAKE_RECORD, HandshakeFailure, MAX_RECORD, Tls, TlsShared};
use crate::workers::{Pool, Task};

/// Bytes read from one connection per turn before others get theirs.
const READ_BUDGET: usize = 256 * 1024;
/// The size of the shard's read buffer.
const SCRATCH: usize = 64 * 1024;
/// The starting size of the shard's output scratch (it grows if a decode needs more).
const OUT_SCRATCH: usize = 64 * 1024;

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
    /// Jobs in flight per connection before it is read no more.
    pub max_inflight: usize,
    /// Most connections per client address (0 = no limit).
    pub max_per_ip: usize,
    /// PROXY protocol versions accepted, and from whom.
    pub proxy: ProxyMode,
    pub proxy_from: Arc<Vec<Cidr>>,
    /// On a drain, how long a connection yet to send its first request may still.
    pub drain_grace_ms: u64,
    /// With --tls-cert: every connection speaks TLS.
    pub tls: Option<Arc<TlsShared>>,
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
    /// Refused at its PROXY header.
    Proxy(Refusal),
    /// Its TLS handshake failed.
    Tls(HandshakeFailure),
}

/// The shard's side of the worker pool.
pub(crate) struct Offload<H: Handler> {
    pub pool: Pool,
    pub inbox: Arc<Inbox<H::Response>>,
    /// Jobs decoded this turn, handed to the pool in one batch at the end of it.
    pub tasks: Vec<Task>,
    /// Connections that stopped reading because the pool's queue was full.
    pub room_stalled: Vec<usize>,
    next_generation: u64,
}

impl<H: Handler> Offload<H> {
    pub fn new(pool: Pool, inbox: Arc<Inbox<H::Response>>) -> Self {
        Offload {
            pool,
            inbox,
            tasks: Vec::new(),
            room_stalled: Vec::new(),
            next_generation: 0,
        }
    }

    /// Hands this turn's jobs to the pool.
    pub fn submit(&mut self) {
        if !self.tasks.is_empty() {
            self.pool.submit(self.tasks.drain(..));
        }
    }
}

pub(crate) struct ConnIo<H: Handler> {
    pub handler: Arc<H>,
    pub set: Settings,
    pub pool: BufferPool,
    pub wheel: TimerWheel<u32>,
    scratch: Box<[u8]>,
    /// Answers are encoded here and written straight from here; only what the socket
    /// does not take is copied into a pooled buffer of the connection (the mirror of
    /// how input is read). Empty between two decodes.
    out: BytesMut,
    pub clock: Clock,
    /// Milliseconds since the shard started, read once per turn.
    pub now: u64,
    pub stats: Counters,
    /// Connections to drive again this turn (read budget used up, room freed).
    pub requeue: Vec<usize>,
    pub draining: bool,
    pub offload: Option<Offload<H>>,
    /// Client addresses learnt from PROXY headers this turn, for the shard's
    /// per-address accounting.
    pub proxied: Vec<(usize, SocketAddr)>,
    calls: Vec<(usize, H::Request)>,
    segment: Vec<u8>,
    /// With TLS: ciphertext is read here (room for a partial record carried over plus
    /// a full scratch read) and decrypted into `scratch`.
    tls_scratch: Box<[u8]>,
    /// The shard's copy of the TLS configuration, and its generation.
    tls_cfg: Option<(u64, Arc<rustls::ServerConfig>)>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

impl<H: Handler> ConnIo<H> {
    pub fn new(handler: Arc<H>, set: Settings, wheel: TimerWheel<u32>) -> Self {
        let tls = set.tls.is_some();
        let mut io = ConnIo {
            handler,
            pool: BufferPool::new(set.pool_buffers),
            set,
            wheel,
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            out: BytesMut::with_capacity(OUT_SCRATCH),
            clock: Clock::default(),
            now: 0,
            stats: Counters::default(),
            requeue: Vec::new(),
            draining: false,
            offload: None,
            proxied: Vec::new(),
            calls: Vec::new(),
            segment: Vec::new(),
            tls_scratch: Box::new([]),
            tls_cfg: None,
        };
        if tls {
            io.tls_scratch = vec![0u8; SCRATCH].into_boxed_slice();
        }
        io
    }

    /// A new connection's TLS session, on a TLS listener (`None` on a plain one).
    pub fn new_tls(&mut self) -> Option<Result<Box<Tls>, rustls::Error>> {
        let shared = self.set.tls.as_ref()?;
        let cfg = shared.config(&mut self.tls_cfg);
        let tls = Tls::new(cfg).map(Box::new);
        if tls.is_ok() {
            self.stats.tls_open += 1;
        }
        Some(tls)
    }

    /// Does all the work the socket allows now. `Err` means: close it, for this reason.
    pub fn drive(
        &mut self,
        reg: &Registry,
        conn: &mut Conn<H::State>,
        key: usize,
        read_to_block: bool,
    ) -> Result<(), Close> {
        if conn.stage == Stage::Lingering {
            return self.linger(conn, key);
        }
        if conn.stage == Stage::Proxy {
            self.read_proxy_header(conn, key)?;
            // Still waiting; or the client's address must pass the per-address limit
            // first (the shard drives the connection again once it has).
            if conn.stage == Stage::Proxy || self.proxied.last().is_some_and(|p| p.0 == key) {
                return Ok(());
            }
        }
        self.flush(reg, conn, key)?;
        let mut budget = READ_BUDGET;
        loop {
            if conn.held_until() != 0 || conn.stage != Stage::Serving {
                break;
            }
            if conn.backlog() >= self.set.high_water {
                // Backpressure: read no more until the output (and answers waiting for
                // their turn) is below the mark. Try a write first; only if the peer is
                // not taking it do we wait for WRITABLE.
                self.flush(reg, conn, key)?;
                if conn.backlog() >= self.set.high_water {
                    break;
                }
            }
            if H::POOLED && self.no_room_for_jobs(conn, key) {
                break;
            }
            if budget == 0 {
                self.requeue.push(key);
                break;
            }
            if conn.has(DECODE_PENDING) {
                budget = budget.saturating_sub(4096);
                self.feed(conn, key, 0);
                continue;
            }
            if conn.has(PEER_EOF) {
                break;
            }
            // (bytes read from the socket, plaintext bytes in the scratch buffer, whether
            // the read was short)
            let (raw, n, short) = match conn.tls() {
                None => match conn.sock.read(&mut self.scratch) {
                    Ok(n) => (n, n, n < self.scratch.len()),
                    Err(e) if would_block(&e) => break,
                    Err(e) if interrupted(&e) => continue,
                    Err(_) => return Err(Close::Error),
                },
                Some(_) => match self.tls_read(conn)? {
                    Some(got) => got,
                    None => break,
                },
            };
            if raw == 0 {
                conn.set(PEER_EOF, true);
                continue;
            }
            budget = budget.saturating_sub(raw);
            self.stats.bytes_in += raw as u64;
            conn.last_active = Stamp::at(self.now);
            if n > 0 {
                if conn.has(SPOOF_CHECK) {
                    self.check_spoof(conn, n)?;
                }
                self.feed(conn, key, n);
            }
            if conn.tls().is_some() {
                self.tls_in_request(conn, n);
            }
            // Edge-triggered: a read shorter than the buffer emptied the socket, and
            // bytes arriving later raise a new edge. Skipping the read that would only
            // say WouldBlock saves a syscall per request.
            if short && !read_to_block && !conn.has(DECODE_PENDING) {
                break;
            }
        }
        self.flush(reg, conn, key)?;
        if conn.stage == Stage::Closing && conn.output().is_none() && conn.jobs().is_none() {
            // Half-close and read until the peer closes, so that unread request bytes
            // do not turn our close into a reset that destroys the answer in flight.
            if let Some(busy) = conn.busy.as_deref_mut() {
                if let Some(b) = busy.input.take() {
                    self.pool.put(b);
                }
                if let Some(tls) = busy.tls.as_deref_mut() {
                    send_close_notify(tls, &mut conn.sock, &mut self.segment);
                }
            }
            let _ = conn.sock.shutdown(std::net::Shutdown::Write);
            conn.stage = Stage::Lingering;
            conn.since = Stamp::at(self.now);
            return self.linger(conn, key);
        }
        if conn.has(PEER_EOF)
            && conn.output().is_none()
            && conn.jobs().is_none()
            && conn.held_until() == 0
            && !conn.has(DECODE_PENDING)
        {
            return Err(Close::Normal);
        }
        if self.draining && conn.is_quiet() && self.may_close_in_drain(conn) {
            return Err(Close::Normal);
        }
        Ok(())
    }

    /// A quiet connection that has not sent a request yet may have been accepted just
    /// before the drain, its request on the way: it gets `--drain-grace` from its
    /// accept to send it.
    pub fn may_close_in_drain(&self, conn: &Conn<H::State>) -> bool {
        conn.has(SERVED) || self.now >= conn.last_active.get(self.now) + self.set.drain_grace_ms
    }

    /// Reads a trusted peer's PROXY header. Bytes after it stay in the input buffer
    /// for the decoder.
    fn read_proxy_header(&mut self, conn: &mut Conn<H::State>, key: usize) -> Result<(), Close> {
        loop {
            let busy = conn.busy.get_or_insert_with(Box::default);
            let buf = busy.input.get_or_insert_with(|| self.pool.get());
            let room = proxy::MAX_HEADER + 1 - buf.len().min(proxy::MAX_HEADER);
            let n = match conn.sock.read(&mut self.scratch[..room]) {
                Ok(0) => return Err(Close::Normal),
                Ok(n) => n,
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if interrupted(&e) => continue,
                Err(_) => return Err(Close::Error),
            };
            self.stats.bytes_in += n as u64;
            buf.extend_from_slice(&self.scratch[..n]);
            match proxy::parse(self.set.proxy, buf) {
                Parsed::Incomplete => continue,
                Parsed::Refused(why) => return Err(Close::Proxy(why)),
                Parsed::Done { len, client } => {
                    buf.advance(len);
                    self.stats.proxy_headers += 1;
                    if let Some(client) = client {
                        log::debug!("connection {key}: client {client} (PROXY header)");
                        if self.set.max_per_ip > 0 {
                            self.proxied.push((key, client));
                        }
                    }
                    let rest = !buf.is_empty();
                    if !rest && let Some(b) = busy.input.take() {
                        self.pool.put(b);
                    }
                    conn.stage = Stage::Serving;
                    conn.set(DECODE_PENDING, rest);
                    conn.last_active = Stamp::at(self.now);
                    return Ok(());
                }
            }
        }
    }

    /// A peer not in `--proxy-from` that opens with a PROXY header is trying to pass
    /// for someone else: refuse it. Decided on the first bytes that settle it.
    fn check_spoof(&mut self, conn: &mut Conn<H::State>, n: usize) -> Result<(), Close> {
        let mut first = [0u8; 12];
        let held = conn.input().map_or(&[][..], |b| &b[..]);
        let k = held.len().min(first.len());
        first[..k].copy_from_slice(&held[..k]);
        let m = (first.len() - k).min(n);
        first[k..k + m].copy_from_slice(&self.scratch[..m]);
        let seen = &first[..k + m];
        if !proxy::looks_like_header(seen) {
            conn.set(SPOOF_CHECK, false);
            return Ok(());
        }
        // "PROXY " or the whole v2 signature settles it; a shorter prefix waits.
        if seen.len() >= 6 && (seen.starts_with(b"PROXY ") || seen.len() == first.len()) {
            return Err(Close::Proxy(Refusal::Untrusted));
        }
        Ok(())
    }

    /// Whether the connection must stop reading for the pool: it has its most jobs in
    /// flight (its completions will drive it again), or the queue is full (the pool
    /// wakes the shard when room frees).
    fn no_room_for_jobs(&mut self, conn: &Conn<H::State>, key: usize) -> bool {
        let Some(off) = self.offload.as_mut() else {
            return false;
        };
        if conn.jobs_pending() >= self.set.max_inflight {
            self.stats.stalls += 1;
            return true;
        }
        if off.pool.has_room() {
            return false;
        }
        off.pool.wake_on_room(off.inbox.waker());
        // Room freed between the look and the request to be woken is not missed.
        if off.pool.has_room() {
            return false;
        }
        off.room_stalled.push(key);
        self.stats.stalls += 1;
        true
    }

    /// Hands `n` new bytes from the scratch buffer (or, with `n == 0`, what is already
    /// buffered) to the decoder, and writes its answers.
    fn feed(&mut self, conn: &mut Conn<H::State>, key: usize, n: usize) {
        let reserved = match self.offload.as_mut() {
            Some(off) if H::POOLED => {
                let want = self.set.max_inflight.saturating_sub(conn.jobs_pending());
                let got = off.pool.try_reserve(want);
                if got == 0 {
                    // No room after all (another shard took the last place): keep the
                    // bytes and wait for room, as if the check before the read had
                    // said so.
                    if n > 0 {
                        conn.busy
                            .get_or_insert_with(Box::default)
                            .input
                            .get_or_insert_with(|| self.pool.get())
                            .extend_from_slice(&self.scratch[..n]);
                    }
                    conn.set(DECODE_PENDING, conn.input().is_some());
                    off.pool.wake_on_room(off.inbox.waker());
                    off.room_stalled.push(key);
                    self.stats.stalls += 1;
                    return;
                }
                got
            }
            _ => usize::MAX,
        };
        let cx = Cx {
            draining: self.draining,
            clock: &self.clock,
            out_limit: self
                .set
                .high_water
                .saturating_sub(conn.jobs().map_or(0, |j| j.held())),
            max_requests: if self.set.delay_ms > 0 { 1 } else { reserved },
        };
        let was_in_request = conn.has(IN_REQUEST);
        // Answers go to the shard's output scratch and straight to the socket, unless
        // output is already waiting (they queue behind it), they are to be held, or
        // TLS must encrypt them first.
        let direct = conn.output().is_none() && conn.tls().is_none() && self.set.delay_ms == 0;
        let mut out = if direct {
            std::mem::take(&mut self.out)
        } else {
            conn.busy
                .as_mut()
                .and_then(|b| b.output.take())
                .unwrap_or_else(|| self.pool.get())
        };
        let out_start = out.len();
        let mut calls = Calls::new(&mut out, &mut self.calls);
        let d: Decoded = match conn.busy.as_mut().and_then(|b| b.input.as_mut()) {
            Some(input) => {
                input.extend_from_slice(&self.scratch[..n]);
                let d = self.handler.decode(&mut conn.state, input, &mut calls, &cx);
                input.advance(d.consumed);
                d
            }
            None => {
                let d = self
                    .handler
                    .decode(&mut conn.state, &self.scratch[..n], &mut calls, &cx);
                if d.consumed < n && d.next != Next::Close {
                    let mut b = self.pool.get();
                    b.extend_from_slice(&self.scratch[d.consumed..n]);
                    conn.busy().input = Some(b);
                }
                d
            }
        };
        let jobs = self.calls.len() as u64;
        if H::POOLED && self.offload.is_some() {
            self.hand_over(conn, key, &mut out, out_start, reserved);
        }
        let inline = (d.requests as u64).saturating_sub(jobs);
        if inline > 0 {
            // The first answer waited since its request's first byte; the others
            // completed in this read.
            let first = if was_in_request {
                self.now.saturating_sub(conn.since.get(self.now))
            } else {
                0
            };
            self.stats.record_latency(first, 1);
            self.stats.record_latency(0, inline - 1);
        }
        if direct {
            self.out = out;
            if !self.out.is_empty() {
                self.write_direct(conn);
            }
        } else if out.is_empty() {
            self.pool.put(out);
        } else {
            conn.busy().output = Some(out);
        }
        if let Some(busy) = conn.busy.as_deref_mut()
            && (busy.input.as_ref().is_some_and(|b| b.is_empty()) || d.next == Next::Close)
            && let Some(b) = busy.input.take()
        {
            self.pool.put(b);
        }
        self.stats.requests += d.requests as u64;
        self.stats.bad_requests += d.errors as u64;
        conn.set(
            DECODE_PENDING,
            d.next == Next::Yield && conn.input().is_some(),
        );
        if d.next == Next::Close {
            conn.stage = Stage::Closing;
        }
        if d.requests > 0 {
            conn.last_active = Stamp::at(self.now);
            conn.set(SERVED, true);
            if self.set.delay_ms > 0 {
                conn.busy().held_until = self.now + self.set.delay_ms;
            }
        }
        let in_request = conn.input().is_some() || self.handler.in_request(&conn.state);
        if !in_request {
            conn.set(IN_REQUEST, false);
        } else if d.requests > 0 || !was_in_request {
            conn.since = Stamp::at(self.now);
            conn.set(IN_REQUEST, true);
        }
    }

    /// Writes the output scratch to the socket; what it does not take waits in a pooled
    /// buffer of the connection, for `flush` (which also reports a failed socket: a
    /// write error here only leaves the bytes waiting).
    fn write_direct(&mut self, conn: &mut Conn<H::State>) {
        let mut done = 0;
        while done < self.out.len() {
            match conn.sock.write(&self.out[done..]) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if interrupted(&e) => {}
                Err(_) => break,
            }
        }
        self.stats.bytes_out += done as u64;
        if done < self.out.len() {
            let mut b = self.pool.get();
            b.extend_from_slice(&self.out[done..]);
            let busy = conn.busy();
            busy.output = Some(b);
            busy.write_since = self.now;
        } else {
            conn.last_active = Stamp::at(self.now);
        }
        self.out.clear();
    }

    /// After a decode: turns the requests it handed over into jobs, and keeps every
    /// answer in request order. The decoder wrote its immediate answers to `out` and
    /// noted where each call stands in it; whatever follows a job (or any job still in
    /// flight) must wait for it, so it moves into the connection's reorder queue.
    fn hand_over(
        &mut self,
        conn: &mut Conn<H::State>,
        key: usize,
        out: &mut BytesMut,
        out_start: usize,
        reserved: usize,
    ) {
        let Some(off) = self.offload.as_mut() else {
            return;
        };
        let used = self.calls.len();
        if used > reserved {
            // A codec that handed over more than its limit: count them all.
            off.pool.force_reserve(used - reserved);
        }
        off.pool.release(reserved.saturating_sub(used));
        if used == 0 && conn.jobs().is_none() {
            return;
        }
        self.segment.clear();
        self.segment.extend_from_slice(&out[out_start..]);
        out.truncate(out_start);
        let busy = conn.busy.get_or_insert_with(Box::default);
        let jobs = busy.jobs.get_or_insert_with(|| {
            off.next_generation = off.next_generation.wrapping_add(1);
            Box::new(Jobs::new(off.next_generation))
        });
        let generation = jobs.generation;
        let mut done = 0;
        for (at, request) in self.calls.drain(..) {
            let upto = at - out_start;
            place(&self.segment[done..upto], out, jobs);
            done = upto;
            let seq = jobs.push_pending(self.now);
            let handler = self.handler.clone();
            let inbox = off.inbox.clone();
            off.tasks.push(Box::new(move || {
                let result = catch_unwind(AssertUnwindSafe(|| handler.call(request)));
                let result = result.map_err(|panic| {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("(no message)");
                    warn!("a handler panicked: {msg}; its request gets an error answer");
                });
                inbox.push(Completion {
                    key,
                    generation,
                    seq,
                    result,
                });
            }));
        }
        place(&self.segment[done..], out, jobs);
        if jobs.is_empty() {
            busy.jobs = None;
        }
        self.stats.jobs += used as u64;
    }

    /// A finished job: its answer goes to the output if every answer before it is out,
    /// else into its slot. Returns whether the connection should be driven (flushed).
    pub fn complete(
        &mut self,
        conn: Option<&mut Conn<H::State>>,
        c: Completion<H::Response>,
    ) -> bool {
        let Some(conn) = conn else {
            self.stats.jobs_dropped += 1;
            return false;
        };
        let Some(busy) = conn.busy.as_deref_mut() else {
            self.stats.jobs_dropped += 1;
            return false;
        };
        let Some(jobs) = busy.jobs.as_mut().filter(|j| j.generation == c.generation) else {
            self.stats.jobs_dropped += 1;
            return false;
        };
        let Some(slot) = jobs.take_pending(c.seq) else {
            // Already answered by the handler timeout.
            self.stats.jobs_dropped += 1;
            return false;
        };
        self.stats
            .record_latency(self.now.saturating_sub(slot.since), 1);
        let cx = Cx::new(&self.clock);
        let encode = |out: &mut BytesMut| match c.result {
            Ok(answer) => self.handler.encode(answer, out, &cx),
            Err(()) => {
                self.stats.handler_panics += 1;
                self.handler.encode_failure(Failure::Panicked, out, &cx);
            }
        };
        if jobs.is_front(&slot) {
            let out = busy.output.get_or_insert_with(|| self.pool.get());
            encode(out);
            jobs.pop_front_answered();
            while let Some(b) = jobs.pop_ready() {
                out.extend_from_slice(&b);
                self.pool.put(b);
            }
        } else {
            let mut b = self.pool.get();
            encode(&mut b);
            jobs.fill(slot, b);
        }
        if jobs.is_empty() {
            busy.jobs = None;
        }
        conn.last_active = Stamp::at(self.now);
        true
    }

    /// The handler timeout: jobs in flight longer than it are answered with a failure
    /// now, and their late results will be dropped.
    pub fn expire_jobs(&mut self, conn: &mut Conn<H::State>) {
        let Some(busy) = conn.busy.as_deref_mut() else {
            return;
        };
        let (Some(jobs), Some(limit)) = (busy.jobs.as_mut(), self.set.timeouts.handler) else {
            return;
        };
        let cx = Cx::new(&self.clock);
        let pool = &mut self.pool;
        let handler = &self.handler;
        let (stats, now) = (&mut self.stats, self.now);
        let n = jobs.expire(now.saturating_sub(limit), |since| {
            stats.record_latency(now.saturating_sub(since), 1);
            let mut b = pool.get();
            handler.encode_failure(Failure::TimedOut, &mut b, &cx);
            b
        });
        self.stats.handler_timeouts += n as u64;
        if let Some(b) = jobs.pop_ready() {
            let out = busy.output.get_or_insert_with(|| pool.get());
            out.extend_from_slice(&b);
            pool.put(b);
            while let Some(b) = jobs.pop_ready() {
                out.extend_from_slice(&b);
                pool.put(b);
            }
        }
        if jobs.is_empty() {
            busy.jobs = None;
        }
    }

    /// Writes pending output until done or WouldBlock, and keeps WRITABLE interest
    /// registered exactly while output is pending.
    pub fn flush(
        &mut self,
        reg: &Registry,
        conn: &mut Conn<H::State>,
        key: usize,
    ) -> Result<(), Close> {
        if conn.held_until() != 0 {
            return Ok(());
        }
        if let Some(busy) = conn.busy.as_deref_mut() {
            if let (Some(tls), Some(out)) = (busy.tls.as_deref_mut(), busy.output.as_mut())
                && out.len() > tls.enc
            {
                // Encrypt the answers appended since the last write.
                tls.encrypt_pending(out, &mut self.segment, false)
                    .map_err(|_| Close::Error)?;
            }
            if let Some(out) = busy.output.as_mut() {
                while !out.is_empty() {
                    let end = busy.tls.as_ref().map_or(out.len(), |t| t.enc);
                    if end == 0 {
                        // Plaintext the session cannot encrypt yet (mid-handshake).
                        break;
                    }
                    match conn.sock.write(&out[..end]) {
                        Ok(0) => return Err(Close::Error),
                        Ok(n) => {
                            out.advance(n);
                            if let Some(t) = busy.tls.as_deref_mut() {
                                t.enc -= n;
                            }
                            self.stats.bytes_out += n as u64;
                            busy.write_since = self.now;
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) if interrupted(&e) => {}
                        Err(_) => return Err(Close::Error),
                    }
                }
                if out.is_empty() {
                    if let Some(b) = busy.output.take() {
                        self.pool.put(b);
                    }
                    conn.last_active = Stamp::at(self.now);
                }
            }
        }
        let pending = conn.output().is_some();
        if pending != conn.has(WANT_WRITE) {
            let interest = if pending {
                conn.busy().write_since = self.now;
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

    /// Lingering close: discard whatever the peer still sends until it closes. Bounded
    /// like any read: a peer that keeps sending gets the read budget per turn, and the
    /// linger deadline ends it.
    fn linger(&mut self, conn: &mut Conn<H::State>, key: usize) -> Result<(), Close> {
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                self.requeue.push(key);
                return Ok(());
            }
            match conn.sock.read(&mut self.scratch) {
                Ok(0) => return Err(Close::Normal),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.stats.bytes_in += n as u64;
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if interrupted(&e) => {}
                Err(_) => return Err(Close::Normal),
            }
        }
    }

    /// Makes sure the wheel will look at the connection no later than its deadline.
    /// Lazy: an entry that comes due before the deadline is simply re-armed then.
    pub fn arm(&mut self, conn: &mut Conn<H::State>, key: usize) {
        // Every drive ends here: an idle connection gives back its busy part.
        conn.tidy();
        let Some(deadline) = conn.deadline(&self.set.timeouts, self.now) else {
            return;
        };
        if let Some(t) = conn.timer {
            if self.wheel.fires_by(t, deadline) {
                return;
            }
            self.wheel.cancel(t);
        }
        conn.timer = Some(self.wheel.schedule(deadline, key as u32));
    }

    /// One read on a TLS connection: ciphertext from the socket (after any partial
    /// record carried over) into the TLS scratch buffer, run through rustls; plaintext
    /// lands in the scratch buffer for the decoder, handshake messages in the output.
    /// Returns `(bytes read, plaintext bytes, whether the read was short)`, or `None`
    /// on WouldBlock.
    fn tls_read(
        &mut self,
        conn: &mut Conn<H::State>,
    ) -> Result<Option<(usize, usize, bool)>, Close> {
        let Some(busy) = conn.busy.as_deref_mut() else {
            return Ok(None);
        };
        let Some(tls) = busy.tls.as_deref_mut() else {
            return Ok(None);
        };
        let ct = &mut self.tls_scratch;
        let mut held = 0;
        if let Some(b) = tls.held.take() {
            held = b.len();
            ct[..held].copy_from_slice(&b);
            self.pool.put(b);
        }
        // Never more ciphertext than the plaintext buffer can take decrypted.
        let room = self.scratch.len().min(ct.len()) - held;
        let raw = loop {
            match conn.sock.read(&mut ct[held..held + room]) {
                Ok(n) => break n,
                Err(e) if interrupted(&e) => {}
                Err(e) => {
                    if held > 0 {
                        let mut b = self.pool.get();
                        b.extend_from_slice(&ct[..held]);
                        tls.held = Some(b);
                    }
                    return if would_block(&e) {
                        Ok(None)
                    } else {
                        Err(Close::Error)
                    };
                }
            }
        };
        if raw == 0 {
            return Ok(Some((0, 0, true)));
        }
        // A partial record carried over leaves less room than the scratch buffer: the
        // read is short only if it did not fill what it was given.
        let short = raw < room;
        if tls.fresh {
            tls.fresh = false;
            if ct[0] != HANDSHAKE_RECORD {
                return self.not_tls(conn, raw);
            }
        }
        let out = busy.output.get_or_insert_with(|| self.pool.get());
        let got = tls.process(
            &mut ct[..held + raw],
            out,
            &mut self.scratch,
            &mut self.segment,
            false,
        );
        if out.is_empty()
            && let Some(b) = busy.output.take()
        {
            self.pool.put(b);
        }
        let done = match got {
            Ok(done) => done,
            Err(e) => {
                log::debug!("TLS: {e}");
                // Tell the peer why, best-effort, before the close.
                self.segment.clear();
                let from = tls.err_consumed.min(held + raw);
                tls.pending_alert(&mut ct[from..held + raw], &mut self.segment);
                if !self.segment.is_empty() {
                    let _ = conn.sock.write(&self.segment);
                }
                return Err(if tls.handshaking {
                    Close::Tls(HandshakeFailure::Protocol)
                } else {
                    Close::Error
                });
            }
        };
        let left = held + raw - done.consumed;
        if left > 0 {
            if left > MAX_RECORD {
                // rustls takes any complete record; more than a record left over
                // would be a bug, and must not grow a buffer for ever.
                return Err(Close::Error);
            }
            let mut b = self.pool.get();
            b.extend_from_slice(&ct[done.consumed..held + raw]);
            tls.held = Some(b);
        }
        if tls.handshaking && !tls.conn.is_handshaking() {
            tls.handshaking = false;
            self.stats.tls_handshakes += 1;
            log::debug!(
                "TLS handshake: {:?}, ALPN {:?}",
                tls.conn.protocol_version(),
                tls.conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
            );
        }
        if done.peer_closed {
            conn.set(PEER_EOF, true);
        }
        Ok(Some((raw, done.plain, short)))
    }

    /// The first byte on a TLS port is not a TLS record: plain text. HTTP gets its 400
    /// first (as nginx does), then a close; other protocols are closed at once.
    fn not_tls(
        &mut self,
        conn: &mut Conn<H::State>,
        raw: usize,
    ) -> Result<Option<(usize, usize, bool)>, Close> {
        let Some(reply) = self.set.tls.as_ref().and_then(|t| t.plain_reply) else {
            return Err(Close::Tls(HandshakeFailure::NotTls));
        };
        let busy = conn.busy();
        busy.tls = None;
        self.stats.tls_open = self.stats.tls_open.saturating_sub(1);
        self.stats.tls_fail_not_tls += 1;
        self.stats.bad_requests += 1;
        busy.output
            .get_or_insert_with(|| self.pool.get())
            .extend_from_slice(reply);
        conn.stage = Stage::Closing;
        Ok(Some((raw, 0, true)))
    }

    /// A TLS connection is under the read timeout from its first byte until its
    /// handshake ends, and while a record is half read.
    fn tls_in_request(&mut self, conn: &mut Conn<H::State>, plain: usize) {
        let Some(tls) = conn.tls() else {
            return;
        };
        let mid = tls.handshaking || tls.held.is_some();
        if mid {
            if !conn.has(IN_REQUEST) {
                conn.set(IN_REQUEST, true);
                conn.since = Stamp::at(self.now);
            }
        } else if plain == 0 && conn.input().is_none() && !self.handler.in_request(&conn.state) {
            conn.set(IN_REQUEST, false);
        }
    }

    /// Counts a TLS connection's end: a handshake that did not finish, by reason; an
    /// established session closed by us gets close_notify (best-effort) first.
    fn close_tls(&mut self, conn: &mut Conn<H::State>, tls: &mut Tls, why: Close) {
        let s = &mut self.stats;
        s.tls_open = s.tls_open.saturating_sub(1);
        if tls.handshaking {
            match why {
                Close::Tls(HandshakeFailure::NotTls) => s.tls_fail_not_tls += 1,
                Close::Tls(HandshakeFailure::Protocol) => s.tls_fail_protocol += 1,
                Close::Tls(HandshakeFailure::Timeout)
                | Close::ReadTimeout
                | Close::IdleTimeout
                | Close::WriteTimeout => s.tls_fail_timeout += 1,
                _ => s.tls_fail_closed += 1,
            }
        } else if why != Close::Error && conn.output().is_none() {
            send_close_notify(tls, &mut conn.sock, &mut self.segment);
        }
        if let Some(b) = tls.held.take() {
            self.pool.put(b);
        }
    }

    pub fn close(&mut self, mut conn: Conn<H::State>, why: Close) {
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        if let Some(mut tls) = conn.busy.as_mut().and_then(|b| b.tls.take()) {
            self.close_tls(&mut conn, &mut tls, why);
        }
        if let Some(mut busy) = conn.busy.take() {
            for b in [busy.input.take(), busy.output.take()]
                .into_iter()
                .flatten()
            {
                self.pool.put(b);
            }
            if let Some(jobs) = busy.jobs.take() {
                // Their results will find no connection and be dropped.
                for b in jobs.into_buffers() {
                    self.pool.put(b);
                }
            }
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
            Close::Proxy(why) => match why {
                Refusal::Missing => s.proxy_missing += 1,
                Refusal::Malformed => s.proxy_malformed += 1,
                Refusal::Oversized => s.proxy_oversized += 1,
                Refusal::Untrusted => s.proxy_untrusted += 1,
                Refusal::Timeout => s.proxy_timeouts += 1,
            },
            // Counted by `close_tls`.
            Close::Tls(_) => {}
        }
        // Dropping the socket closes it, which also removes it from epoll.
    }
}

/// Writes close_notify (once), best-effort: a few dozen bytes into an empty socket
/// buffer, so one non-blocking write does it.
fn send_close_notify(tls: &mut Tls, sock: &mut mio::net::TcpStream, tmp: &mut Vec<u8>) {
    if tls.close_sent || tls.handshaking {
        return;
    }
    let mut out = BytesMut::new();
    if tls.encrypt_pending(&mut out, tmp, true).is_ok() && !out.is_empty() {
        let _ = sock.write(&out);
    }
}

/// Puts an immediate answer where it belongs: straight into the output when no answer
/// is owed before it, else behind the owed ones.
fn place(bytes: &[u8], out: &mut BytesMut, jobs: &mut Jobs) {
    if bytes.is_empty() {
        return;
    }
    if jobs.is_empty() {
        out.extend_from_slice(bytes);
    } else {
        // Sized to the answer (an error line, say), not a whole pooled buffer.
        jobs.push_ready(BytesMut::from(bytes));
    }
}
