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

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::conn::*;
use super::dispatch::Offload;
use super::socket::{Socket, interrupted, would_block};
use super::transport::send_close_notify;
use crate::buffer::BufferPool;
use crate::clock::Clock;
use crate::connection::{Closed, ConnId, ConnInfo, Pusher};
use crate::mutant::{self, Mutant};
use crate::protocol::{Cx, Decoded, Next};
use crate::proxy::{Cidr, ProxyMode, Refusal};
use crate::service::{Calls, Handler};
use crate::stats::Counters;
use crate::timer::TimerWheel;
use crate::tls::{HandshakeFailure, TlsShared};

/// Bytes read from one connection per turn before others get theirs.
const READ_BUDGET: usize = 256 * 1024;
/// The size of the shard's read buffer.
const SCRATCH: usize = 64 * 1024;
/// An answer at most this large, written whole in the drive that read its request, may
/// end its connection with a plain close (see the close in `drive`).
const QUICK_CLOSE_MAX: u64 = 16 * 1024;
/// While the memory budget is spent, the most one read takes from a connection.
const PAUSED_READ: usize = 4096;
/// The starting size of the shard's output scratch (it grows if a decode needs more).
const OUT_SCRATCH: usize = 64 * 1024;

/// What one read gave.
pub(super) struct Read {
    /// Bytes read from the socket.
    pub raw: usize,
    /// Plaintext bytes in the scratch buffer, for the decoder.
    pub plain: usize,
    /// The read did not fill what it was given: the socket is likely empty.
    pub short: bool,
    /// The peer's end of stream.
    pub eof: bool,
}

/// What a shard needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub timeouts: Timeouts,
    pub high_water: usize,
    /// A push to a connection owing this much is refused.
    pub push_limit: usize,
    /// Most input a connection may hold unconsumed by its protocol.
    pub max_input: usize,
    /// The memory budget in heap bytes (0 = none): past it, reading pauses for
    /// connections that owe their peer output.
    pub memory_limit: usize,
    pub delay_ms: u64,
    pub max_conns: usize,
    pub dead_peer: crate::listener::DeadPeer,
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
    /// Its decoder (or a hook) panicked or broke its contract.
    Decoder,
    /// The protocol's `open` hook refused it.
    Refused,
    /// The kernel gave the peer up (ETIMEDOUT): keep-alive probes unanswered, or data
    /// unacknowledged past TCP_USER_TIMEOUT. Counted as `keepalive` or `user_timeout`
    /// by whether output was pending.
    PeerGone,
}

/// The close a failed socket call means: a dead peer (the kernel's keep-alive or user
/// timeout gave up on it), or another socket error.
pub(super) fn io_close(e: &std::io::Error) -> Close {
    if e.kind() == std::io::ErrorKind::TimedOut {
        Close::PeerGone
    } else {
        Close::Error
    }
}

impl Close {
    /// The reason as the protocol's `close` hook is told it.
    fn public(self) -> Closed {
        match self {
            Close::Normal | Close::Refused => Closed::Normal,
            Close::Error | Close::Proxy(_) | Close::Tls(_) => Closed::Error,
            Close::PeerGone => Closed::PeerGone,
            Close::IdleTimeout => Closed::IdleTimeout,
            Close::ReadTimeout => Closed::ReadTimeout,
            Close::WriteTimeout => Closed::WriteTimeout,
            Close::Cut => Closed::Cut,
            Close::Decoder => Closed::Panicked,
        }
    }
}

/// What became of bytes pushed to a connection ([`Core::push`](super::Core::push)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Placed behind every answer already placed; they go out in that order.
    Queued,
    /// The connection's output is at its high-water mark: try again later.
    Full,
    /// Not now or never: no such connection, or it is not serving (its PROXY header
    /// or TLS handshake still to come, or it is closing).
    Refused,
}

pub(crate) struct ConnIo<H: Handler> {
    pub handler: Arc<H>,
    pub set: Settings,
    pub pool: BufferPool,
    pub wheel: TimerWheel<u32>,
    pub(super) scratch: Box<[u8]>,
    /// Answers are encoded here and written straight from here; only what the socket
    /// does not take is copied into a pooled buffer of the connection (the mirror of
    /// how input is read). Empty between two decodes.
    pub(super) out: BytesMut,
    /// This drive wrote a clean end's answer held back for the FIN (`write_last`).
    held: bool,
    pub clock: Clock,
    /// Milliseconds since the shard started, read once per turn.
    pub now: u64,
    pub stats: Counters,
    /// Connections to drive again this turn (read budget used up, room freed).
    pub requeue: Vec<usize>,
    /// The memory budget is spent: only connections that hold nothing and owe their
    /// peer nothing are read (`owes_nothing`), in small pieces; one that would have
    /// read otherwise waits in `parked` until reading resumes.
    pub paused: bool,
    pub parked: Vec<usize>,
    pub draining: bool,
    pub offload: Option<Offload<H>>,
    /// Client addresses learnt from PROXY headers this turn, for the shard's
    /// per-address accounting.
    pub proxied: Vec<(usize, SocketAddr)>,
    pub(super) calls: Vec<(usize, H::Request)>,
    pub(super) segment: Vec<u8>,
    /// With TLS: ciphertext is read here (room for a partial record carried over plus
    /// a full scratch read) and decrypted into `scratch`.
    pub(super) tls_scratch: Box<[u8]>,
    /// The shard's copy of the TLS configuration, and its generation.
    pub(super) tls_cfg: Option<(u64, Arc<rustls::ServerConfig>)>,
    /// The shard's number, for connection ids.
    pub shard: usize,
    /// Each slab key's generation: bumped when its connection closes, so that the id
    /// of a closed connection never names the next one in its slot.
    pub gens: Vec<u32>,
    /// The server's pusher, lent to the protocol through its context.
    pub pusher: Option<Pusher>,
    /// Timers the protocol set (`Cx::set_timer`), by key and generation.
    pub ptimers: TimerWheel<(u32, u32)>,
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
            held: false,
            clock: Clock::default(),
            now: 0,
            stats: Counters::default(),
            requeue: Vec::new(),
            paused: false,
            parked: Vec::new(),
            draining: false,
            offload: None,
            proxied: Vec::new(),
            calls: Vec::new(),
            segment: Vec::new(),
            tls_scratch: Box::new([]),
            tls_cfg: None,
            shard: 0,
            gens: Vec::new(),
            pusher: None,
            ptimers: TimerWheel::new(1024, 10),
        };
        if tls {
            io.tls_scratch = vec![0u8; SCRATCH].into_boxed_slice();
        }
        io
    }

    /// Does all the work the socket allows now. `Err` means: close it, for this reason.
    pub fn drive<K: Socket>(
        &mut self,
        sock: &mut K,
        conn: &mut Conn<H::State>,
        key: usize,
        read_to_block: bool,
    ) -> Result<(), Close> {
        if self.paused && conn.stage == Stage::Lingering {
            // A linger only reads (and drops). Its deadline still closes it.
            self.park(conn, key);
            return Ok(());
        }
        if conn.stage == Stage::Lingering {
            return self.linger(sock, key);
        }
        if conn.stage == Stage::Proxy {
            self.read_proxy_header(sock, conn, key)?;
            // Still waiting; or the client's address must pass the per-address limit
            // first (the shard drives the connection again once it has).
            if conn.stage == Stage::Proxy || self.proxied.last().is_some_and(|p| p.0 == key) {
                return Ok(());
            }
        }
        if awaits_open(conn) {
            self.open_conn(conn, key, None)?;
        }
        self.flush(sock, conn)?;
        let mut budget = READ_BUDGET;
        // Whether the loop read the socket dry (or to its end): only then may a drain
        // judge the connection quiet. One that stopped early (no room in the pool's
        // queue, its read budget used up) may have whole requests still unread.
        let mut read_dry = false;
        // Whether the last read emptied the socket, and whether the connection was
        // already ending before this drive (see the close below).
        let mut last_short = false;
        let ending_before = conn.stage == Stage::Ending;
        let out_before = self.stats.bytes_out;
        self.held = false;
        loop {
            if conn.held_until() != 0 || conn.stage != Stage::Serving {
                break;
            }
            if conn.backlog() >= self.set.high_water {
                // Backpressure: read no more until the output (and answers waiting for
                // their turn) is below the mark. Try a write first; only if the peer is
                // not taking it do we wait for WRITABLE.
                self.flush(sock, conn)?;
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
                self.feed(sock, conn, key, 0)?;
                continue;
            }
            if conn.has(PEER_EOF) {
                read_dry = true;
                break;
            }
            if !self.paused && self.over_budget() {
                self.paused = true;
                self.stats.memory_pauses += 1;
            }
            if self.paused && !owes_nothing(sock, conn) && !sock.dead() {
                // Bytes may wait in the socket: driven again when reading resumes.
                // A connection whose peer has taken every byte is still read: its
                // answers go straight to the socket and hold no memory (see
                // `owes_nothing`).
                self.park(conn, key);
                break;
            }
            // While the budget is spent, small reads: what one read's answers can
            // leave behind if the peer stops taking them is bounded by it.
            let room = if self.paused {
                PAUSED_READ
            } else {
                self.scratch.len()
            };
            let Read {
                raw,
                plain: n,
                short,
                eof,
            } = match conn.tls() {
                None => match sock.read(&mut self.scratch[..room]) {
                    Ok(n) => Read {
                        raw: n,
                        plain: n,
                        short: n < room,
                        eof: n == 0,
                    },
                    Err(e) if would_block(&e) => {
                        read_dry = true;
                        break;
                    }
                    Err(e) if interrupted(&e) => continue,
                    Err(e) => return Err(io_close(&e)),
                },
                Some(_) => match self.tls_read(sock, conn)? {
                    Some(got) => got,
                    None => {
                        read_dry = true;
                        break;
                    }
                },
            };
            if eof {
                conn.set(PEER_EOF, true);
                if mutant::on(Mutant::Eof) && !conn.is_quiet() {
                    return Err(Close::Normal);
                }
                continue;
            }
            last_short = short;
            budget = budget.saturating_sub(raw);
            self.stats.bytes_in += raw as u64;
            conn.last_active = Stamp::at(self.now);
            if n > 0 {
                if conn.has(SPOOF_CHECK) {
                    self.check_spoof(conn, n)?;
                }
                self.feed(sock, conn, key, n)?;
            }
            if conn.tls().is_some() {
                self.tls_in_request(conn, n);
            }
            // Edge-triggered: a read shorter than the buffer emptied the socket, and
            // bytes arriving later raise a new edge. Skipping the read that would only
            // say WouldBlock saves a syscall per request.
            if short && !read_to_block && !conn.has(DECODE_PENDING) {
                read_dry = true;
                break;
            }
        }
        if awaits_open(conn) {
            // Its TLS handshake completed in this drive, with no request yet.
            self.open_conn(conn, key, None)?;
        }
        self.flush(sock, conn)?;
        if matches!(conn.stage, Stage::Closing | Stage::Ending)
            && conn.output().is_none()
            && conn.jobs().is_none()
            && (conn.stage == Stage::Ending || conn.has(PEER_EOF))
        {
            // Nothing unread that a close would turn into a reset: close now (a TLS
            // close_notify first), no shutdown and no lingering read. Sure when the
            // peer has closed, or when a small answer went out in the drive that read
            // its request and emptied the socket. Otherwise the peer may have sent more
            // since (a late CRLF, say) while a large answer is still on its way, which
            // a reset would destroy: close only if the kernel holds nothing unsent and
            // nothing unread waits; else linger like any close.
            let wrote = self.stats.bytes_out - out_before;
            let sure = conn.has(PEER_EOF)
                || (conn.stage == Stage::Ending
                    && !ending_before
                    && last_short
                    && wrote <= QUICK_CLOSE_MAX);
            if sure
                || (conn.stage == Stage::Ending
                    && sock.unsent() == 0
                    && !self.unread(sock, conn)?)
            {
                if self.held && !conn.has(PEER_EOF) {
                    // The answer waits in the kernel for the FIN. A byte arriving
                    // before the close would turn it into a reset, which drops the
                    // send queue and the answer with it: send answer and FIN now.
                    sock.shutdown_write();
                }
                return Err(Close::Normal);
            }
            conn.stage = Stage::Closing;
        }
        if conn.stage == Stage::Closing && conn.output().is_none() && conn.jobs().is_none() {
            // Half-close and read until the peer closes, so that unread request bytes
            // do not turn our close into a reset that destroys the answer in flight.
            if let Some(busy) = conn.busy.as_deref_mut() {
                if let Some(b) = busy.input.take() {
                    self.pool.put(b);
                }
                if let Some(tls) = busy.tls.as_deref_mut() {
                    send_close_notify(tls, sock, &mut self.segment);
                }
            }
            sock.shutdown_write();
            conn.stage = Stage::Lingering;
            self.stats.lingers += 1;
            conn.since = Stamp::at(self.now);
            if self.paused {
                // The linger reads: not while reading is paused.
                self.park(conn, key);
                return Ok(());
            }
            return self.linger(sock, key);
        }
        if conn.has(PEER_EOF)
            && conn.output().is_none()
            && conn.jobs().is_none()
            && conn.held_until() == 0
            && !conn.has(DECODE_PENDING)
        {
            return Err(Close::Normal);
        }
        if self.draining && read_dry && conn.is_quiet() && self.may_close_in_drain(conn) {
            return Err(Close::Normal);
        }
        Ok(())
    }

    /// Whether the heap has reached the memory budget (never without one, or while
    /// draining: a drain reads what is left).
    #[inline]
    pub fn over_budget(&self) -> bool {
        self.set.memory_limit > 0
            && !self.draining
            && crate::memory::at_least(self.set.memory_limit)
    }

    /// Reading is paused: the connection is driven again on resume.
    pub fn park(&mut self, conn: &mut Conn<H::State>, key: usize) {
        if !conn.has(PARKED) {
            conn.set(PARKED, true);
            self.parked.push(key);
        }
    }

    /// Places pushed bytes at the end of the output: after every answer already
    /// placed (answers are placed whole, so a push never splits one), before the
    /// answers of jobs still running. The caller drives the connection to send them.
    pub fn place_push(&mut self, conn: &mut Conn<H::State>, bytes: &[u8]) -> Pushed {
        if conn.stage != Stage::Serving || conn.tls().is_some_and(|t| t.handshaking) {
            return Pushed::Refused;
        }
        if conn.backlog() >= self.set.push_limit {
            return Pushed::Full;
        }
        if !bytes.is_empty() {
            let pool = &mut self.pool;
            conn.busy()
                .output
                .get_or_insert_with(|| pool.get())
                .extend_from_slice(bytes);
        }
        Pushed::Queued
    }

    /// Tells the protocol the connection is ready for its bytes (once): `Err` if it
    /// refuses it or panics. `peer`: the addresses, when the connection opens at once
    /// (else they wait in the busy part, from the accept).
    pub fn open_conn(
        &mut self,
        conn: &mut Conn<H::State>,
        key: usize,
        peer: Option<(Option<SocketAddr>, Option<SocketAddr>)>,
    ) -> Result<(), Close> {
        conn.set(OPENED, true);
        let (peer, client) = match peer {
            Some(p) => p,
            None => conn
                .busy
                .as_deref_mut()
                .and_then(|b| b.peer.take())
                .map_or((None, None), |b| *b),
        };
        let id = ConnId::new(self.shard, key, gen_of(&self.gens, key));
        let alpn = conn
            .busy
            .as_deref()
            .and_then(|b| b.tls.as_deref())
            .and_then(|t| t.conn.alpn_protocol());
        let info = ConnInfo {
            id,
            peer,
            client,
            alpn,
        };
        let mut out = self.pool.get();
        let cx = self.hook_cx(id);
        let handler = &self.handler;
        let state = &mut conn.state;
        let opened = catch_unwind(AssertUnwindSafe(|| {
            handler.open(state, &info, &mut out, &cx)
        }));
        let timer = cx.timer.get();
        match opened {
            Ok(true) => {}
            Ok(false) => {
                conn.set(OPENED, false);
                self.pool.put(out);
                return Err(Close::Refused);
            }
            Err(panic) => {
                conn.set(OPENED, false);
                log::warn!(
                    "connection {key}: the open hook panicked: {}; closing the connection",
                    panic_message(&*panic)
                );
                self.pool.put(out);
                return Err(Close::Decoder);
            }
        }
        if let Some(after) = timer {
            self.set_ptimer(key, after);
        }
        if out.is_empty() {
            self.pool.put(out);
        } else {
            let busy = conn.busy();
            match busy.output.as_mut() {
                Some(o) => {
                    o.extend_from_slice(&out);
                    self.pool.put(out);
                }
                None => busy.output = Some(out),
            }
        }
        Ok(())
    }

    /// The connection is leaving the slab: the protocol's `close` hook, if it was
    /// opened, and a new generation for its key, so that its id names nothing now.
    pub fn retire(&mut self, conn: &mut Conn<H::State>, key: usize, why: Close) {
        if conn.has(OPENED) {
            conn.set(OPENED, false);
            let id = ConnId::new(self.shard, key, gen_of(&self.gens, key));
            let handler = &self.handler;
            let state = &mut conn.state;
            if let Err(panic) =
                catch_unwind(AssertUnwindSafe(|| handler.close(state, id, why.public())))
            {
                log::warn!(
                    "connection {key}: the close hook panicked: {}",
                    panic_message(&*panic)
                );
            }
        }
        if let Some(g) = self.gens.get_mut(key) {
            *g = g.wrapping_add(1);
        }
    }

    /// A context for a hook outside a decode.
    fn hook_cx(&self, id: ConnId) -> Cx<'_> {
        Cx {
            clock: &self.clock,
            out_limit: self.set.high_water,
            max_requests: usize::MAX,
            draining: self.draining,
            conn: id,
            pusher: self.pusher.as_ref(),
            timer: Cell::new(None),
        }
    }

    /// Schedules the protocol's timer for connection `key`, `after` ms from now.
    pub fn set_ptimer(&mut self, key: usize, after: u64) {
        let g = gen_of(&self.gens, key);
        self.ptimers
            .schedule(self.now + after.max(1), (key as u32, g));
    }

    /// A protocol timer is due: the protocol's `timer` hook runs, and what it writes
    /// is placed like a push. `false` if the connection must be closed (the hook
    /// panicked).
    pub fn run_ptimer(&mut self, conn: &mut Conn<H::State>, key: usize) -> Result<(), Close> {
        let id = ConnId::new(self.shard, key, gen_of(&self.gens, key));
        let mut out = self.pool.get();
        let cx = self.hook_cx(id);
        let handler = &self.handler;
        let state = &mut conn.state;
        let ran = catch_unwind(AssertUnwindSafe(|| handler.timer(state, &mut out, &cx)));
        let timer = cx.timer.get();
        if let Err(panic) = ran {
            log::warn!(
                "connection {key}: the timer hook panicked: {}; closing the connection",
                panic_message(&*panic)
            );
            self.pool.put(out);
            return Err(Close::Decoder);
        }
        if let Some(after) = timer {
            self.set_ptimer(key, after);
        }
        if !out.is_empty() {
            match self.place_push(conn, &out) {
                Pushed::Queued => self.stats.pushes += 1,
                _ => self.stats.pushes_refused += 1,
            }
        }
        self.pool.put(out);
        Ok(())
    }

    /// Whether the peer sent bytes not read yet (read, and dropped: the connection is
    /// closing). While reading is paused, assumed so.
    fn unread<K: Socket>(
        &mut self,
        sock: &mut K,
        conn: &mut Conn<H::State>,
    ) -> Result<bool, Close> {
        if self.paused {
            return Ok(true);
        }
        match sock.read(&mut self.scratch) {
            Ok(0) => {
                conn.set(PEER_EOF, true);
                Ok(false)
            }
            Ok(n) => {
                self.stats.bytes_in += n as u64;
                Ok(true)
            }
            Err(e) if would_block(&e) => Ok(false),
            Err(e) if interrupted(&e) => Ok(true),
            Err(e) => Err(io_close(&e)),
        }
    }

    /// A quiet connection that has not sent a request yet may have been accepted just
    /// before the drain, its request on the way: it gets `--drain-grace` from its
    /// accept to send it.
    pub fn may_close_in_drain(&self, conn: &Conn<H::State>) -> bool {
        conn.has(SERVED) || self.now >= conn.last_active.get(self.now) + self.set.drain_grace_ms
    }

    /// Hands `n` new bytes from the scratch buffer (or, with `n == 0`, what is already
    /// buffered) to the decoder, and writes its answers.
    fn feed<K: Socket>(
        &mut self,
        sock: &mut K,
        conn: &mut Conn<H::State>,
        key: usize,
        n: usize,
    ) -> Result<(), Close> {
        if !conn.has(OPENED) {
            self.open_conn(conn, key, None)?;
        }
        let reserved = match self.offload.as_mut() {
            Some(off) if H::POOLED => {
                let want = self.set.max_inflight.saturating_sub(conn.jobs_pending());
                let mut got = off.pool.try_reserve(want);
                if got == 0 {
                    off.pool.wake_on_room(off.inbox.waker());
                    // A place freed between the try and the request to be woken woke
                    // nobody: look again, now that the shard is on the list.
                    if !mutant::on(Mutant::Wakeup) {
                        got = off.pool.try_reserve(want);
                    }
                }
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
                    off.room_stalled.push(key);
                    self.stats.stalls += 1;
                    return Ok(());
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
            conn: ConnId::new(self.shard, key, gen_of(&self.gens, key)),
            pusher: self.pusher.as_ref(),
            timer: Cell::new(None),
        };
        let was_in_request = conn.has(IN_REQUEST);
        // Answers still owed from before this read: a pipelining peer.
        let caught_up = conn.output().is_none() && conn.jobs().is_none();
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
        let (handler, scratch, pool) = (&self.handler, &self.scratch[..n], &mut self.pool);
        // A decoder is the user's code: one that panics, or says it used more than it
        // was given, loses its connection, never the shard.
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            match conn.busy.as_mut().and_then(|b| b.input.as_mut()) {
                Some(input) => {
                    input.extend_from_slice(scratch);
                    let d = handler.decode(&mut conn.state, input, &mut calls, &cx);
                    if d.consumed > input.len() {
                        return None;
                    }
                    input.advance(d.consumed);
                    Some(d)
                }
                None => {
                    let d = handler.decode(&mut conn.state, scratch, &mut calls, &cx);
                    if d.consumed > n {
                        return None;
                    }
                    if d.consumed < n && d.next != Next::Close {
                        let mut b = pool.get();
                        b.extend_from_slice(&scratch[d.consumed..]);
                        conn.busy().input = Some(b);
                    }
                    Some(d)
                }
            }
        }));
        let d: Decoded = match decoded {
            Ok(Some(d)) => d,
            broken => {
                let what = match broken {
                    Err(panic) => format!("panicked: {}", panic_message(&*panic)),
                    _ => "reported more input consumed than it was given".to_string(),
                };
                log::warn!("connection {key}: the decoder {what}; closing the connection");
                self.calls.clear();
                if let Some(off) = self.offload.as_ref() {
                    off.pool.release(reserved);
                }
                out.clear();
                if direct {
                    self.out = out;
                } else {
                    self.pool.put(out);
                }
                return Err(Close::Decoder);
            }
        };
        if let Some(after) = cx.timer.get() {
            self.set_ptimer(key, after);
        }
        // Bytes the decoder left: kept in the input buffer, or (decoded from the
        // scratch buffer, closing) about to be dropped.
        let left = match conn.input() {
            Some(b) => b.len(),
            None => n.saturating_sub(d.consumed),
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
        // A clean end (see `Stage::Ending` below) closes right after this answer.
        let clean = d.next == Next::Close
            && d.errors == 0
            && left == 0
            && !self.draining
            && d.requests == 1
            && caught_up;
        if direct {
            self.out = out;
            if !self.out.is_empty() {
                let last =
                    (clean && self.out.len() as u64 <= QUICK_CLOSE_MAX) || mutant::on(Mutant::Cork);
                self.write_direct(sock, conn, last);
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
            // A clean end (see `Stage::Ending`) closes at once: one request, answered
            // without an error, nothing after it, nothing owed before it. An error
            // answer, a drain, bytes left unread, or a pipelining peer (which may send
            // more before it reads the close) linger, so the answers are not reset away.
            conn.stage = if clean { Stage::Ending } else { Stage::Closing };
        }
        let held = conn.input().map_or(0, |b| b.len());
        if held > self.set.max_input && conn.stage == Stage::Serving {
            // A request larger than any the protocol would take, or a peer that never
            // ends one: what was answered goes out, the rest is dropped, and the
            // connection closes (cleanly, after its answers).
            log::warn!(
                "connection {key}: {held} bytes unconsumed by the protocol, over \
                 max_input {}; closing it",
                self.set.max_input
            );
            if let Some(b) = conn.busy.as_deref_mut().and_then(|b| b.input.take()) {
                self.pool.put(b);
            }
            conn.set(DECODE_PENDING, false);
            conn.stage = Stage::Closing;
            self.stats.input_overflows += 1;
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
        Ok(())
    }

    /// Writes the output scratch to the socket; what it does not take waits in a pooled
    /// buffer of the connection, for `flush` (which also reports a failed socket: a
    /// write error here only leaves the bytes waiting).
    ///
    /// `last`: the connection closes straight after (a clean end), so the answer may
    /// wait for the close's FIN and leave with it in one segment.
    fn write_direct<K: Socket>(&mut self, sock: &mut K, conn: &mut Conn<H::State>, last: bool) {
        let mut done = 0;
        while done < self.out.len() {
            let r = if last {
                sock.write_last(&self.out[done..])
            } else {
                sock.write(&self.out[done..])
            };
            match r {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if interrupted(&e) => {}
                Err(_) => break,
            }
        }
        self.stats.bytes_out += done as u64;
        self.held |= last && done > 0;
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

    /// Writes pending output until done or WouldBlock, and keeps WRITABLE interest
    /// registered exactly while output is pending.
    pub fn flush<K: Socket>(
        &mut self,
        sock: &mut K,
        conn: &mut Conn<H::State>,
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
                    .map_err(|e| {
                        log::debug!("TLS: encrypting answers: {e}");
                        Close::Error
                    })?;
            }
            if let Some(out) = busy.output.as_mut() {
                while !out.is_empty() {
                    let end = busy.tls.as_ref().map_or(out.len(), |t| t.enc);
                    if end == 0 {
                        // Plaintext the session cannot encrypt yet (mid-handshake).
                        break;
                    }
                    match sock.write(&out[..end]) {
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
                        Err(e) => return Err(io_close(&e)),
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
            if pending {
                conn.busy().write_since = self.now;
            }
            sock.want_write(pending).map_err(|_| Close::Error)?;
            conn.set(WANT_WRITE, pending);
        }
        Ok(())
    }

    /// Lingering close: discard whatever the peer still sends until it closes. Bounded
    /// like any read: a peer that keeps sending gets the read budget per turn, and the
    /// linger deadline ends it.
    fn linger<K: Socket>(&mut self, sock: &mut K, key: usize) -> Result<(), Close> {
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                self.requeue.push(key);
                return Ok(());
            }
            match sock.read(&mut self.scratch) {
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

    pub fn close<K: Socket>(
        &mut self,
        sock: Option<&mut K>,
        mut conn: Conn<H::State>,
        key: usize,
        why: Close,
    ) {
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        self.retire(&mut conn, key, why);
        // Output the peer never took (ours, or the kernel's, unacknowledged): a dead
        // peer found by the user timeout, not by keep-alive (which probes only a
        // connection with nothing in flight).
        let pending = why == Close::PeerGone
            && (conn.output().is_some() || sock.as_deref().is_some_and(|s| s.unsent() > 0));
        if let Some(mut tls) = conn.busy.as_mut().and_then(|b| b.tls.take()) {
            self.close_tls(sock, &conn, &mut tls, why);
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
            Close::PeerGone if pending => s.user_timeouts += 1,
            Close::PeerGone => s.keepalive_timeouts += 1,
            Close::IdleTimeout => s.idle_timeouts += 1,
            Close::ReadTimeout => s.read_timeouts += 1,
            Close::WriteTimeout => s.write_timeouts += 1,
            Close::Cut => s.cut_at_shutdown += 1,
            Close::Decoder => s.decode_panics += 1,
            Close::Refused => {
                s.refused_by_protocol += 1;
                s.rejected += 1;
            }
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

/// While the memory budget is spent, whether a connection may still be read: it holds
/// nothing (no partial request, no output, no answer waiting for the worker pool) and
/// the kernel holds nothing of it unacknowledged, so its peer reads as fast as it is
/// answered. What it sends now is read in small pieces (`PAUSED_READ`), and their
/// answers go into an empty socket; a peer that pipelines and does not read stops
/// being read at its first unread answer, and one that sends a request in pieces (a
/// large body, a slow client) waits, as the budget demands. The kernel's queue is
/// asked only while the budget is spent.
pub(super) fn owes_nothing<S, K: Socket>(sock: &K, conn: &Conn<S>) -> bool {
    conn.input().is_none() && conn.output().is_none() && conn.jobs().is_none() && sock.unsent() == 0
}

/// Serving, past its TLS handshake, and the protocol not yet told.
#[inline]
fn awaits_open<S>(conn: &Conn<S>) -> bool {
    !conn.has(OPENED) && conn.stage == Stage::Serving && !conn.tls().is_some_and(|t| t.handshaking)
}

/// The generation of slab key `key` (0 for a key never used).
#[inline]
pub(super) fn gen_of(gens: &[u32], key: usize) -> u32 {
    gens.get(key).copied().unwrap_or(0)
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
