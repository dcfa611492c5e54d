//! The connection core: one shard's connections and their whole life, with no system
//! call inside. A driver (`src/driver/`) owns the sockets and the wait for events; it
//! tells the core what happened (a connection opened, a socket is ready, the worker pool
//! woke the shard, a drain began, the time) and hands it the sockets through
//! [`Sockets`], and the core does the rest: reads, decodes, answers, writes, timeouts,
//! backpressure, the drain, and the counting of all of it, once.
//!
//! A connection passes through layers, each in a file of its own:
//!
//! - `preamble`: a trusted load balancer's PROXY header, first;
//! - `transport`: plain, or TLS (ciphertext in, plaintext to the decoder; answers
//!   encrypted before the socket sees them);
//! - `dispatch`: the decoder's requests answered inline, or handed to the worker pool
//!   and put back in order;
//! - `drive`: the order of work on one connection (flush, read, decode, flush, then
//!   close, linger or re-arm) and the close with its reason.
//!
//! This file is the shard's policy: admitting connections (limits, per-address counts,
//! PROXY trust), timers, completions, the drain, and publishing the counters.
//!
//! Because nothing here touches a socket, the same code runs under the epoll driver and
//! under the simulation (`sim`, tests only), which drives it with a seeded in-memory
//! network and checks its invariants after every step.
//!
//! Tokens are slab keys and a closed connection's key is freed at once. A stale event for
//! a key that a new connection took in the same batch is harmless: `drive` treats every
//! event as a hint and does only what the socket allows, like any spurious wake-up. Job
//! results, which can arrive long after, carry a generation instead (see
//! [`jobs`](crate::jobs)).

mod conn;
mod dispatch;
mod drive;
mod preamble;
pub mod socket;
mod transport;

#[cfg(test)]
mod sim;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use log::{info, warn};
use slab::Slab;

pub(crate) use conn::Timeouts;
use conn::*;
use dispatch::Offload;
pub(crate) use drive::{Close, Pushed, Settings};
use drive::{ConnIo, gen_of};
use socket::NoSocket;
pub use socket::{Peer, Socket, Sockets};

use crate::connection::{Push, PushBox, Pusher};
use crate::jobs::{Completion, Inbox};
use crate::proxy::{ProxyMode, Refusal};
use crate::service::Handler;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::timer::TimerWheel;
use crate::workers::Pool;

/// Buffer memory freed that makes a shard ask the allocator to give memory back.
const TRIM_AFTER_BYTES: usize = 4 << 20;
/// At most how often a shard asks, in ms.
const TRIM_EVERY_MS: u64 = 1000;
/// Idle buffers a shard's pool keeps however quiet it is (1 MiB of 4 KB buffers).
const POOL_FLOOR: usize = 256;
/// At most how often counters are copied out for the server, in ms.
const PUBLISH_MS: u64 = 100;
/// While the memory budget is spent: how often connections parked with their output
/// sent are looked at again (their peer may have read it all since; nothing else
/// wakes them, as they wait for no event).
const BUDGET_RETRY_MS: u64 = 100;
/// Wheel: 10 ms ticks, 4096 slots (a 41 s rotation).
const TICK_MS: u64 = 10;
const SLOTS: usize = 4096;
/// At most this many connections' room is reserved up front (a few tens of MB of
/// address space, not memory).
const MAX_RESERVED: usize = 1 << 20;

/// The shard's side of a driver: what the driver tells the core, and asks of it. The
/// driver is generic over this trait, so it names no handler, protocol or counter.
pub(crate) trait Core {
    /// The time, in ms since the shard started, read once per turn.
    fn tick(&mut self, now: u64);
    /// A connection was accepted from `peer`, its socket known to the driver as
    /// `handle`: its key if the core takes it (the socket is then the core's to close,
    /// through [`Sockets::close`]), `None` if it is refused (the driver closes it).
    fn open(&mut self, peer: Peer, handle: u32) -> Option<usize>;
    /// The driver cannot keep a connection (its registration failed): close it now,
    /// through [`Sockets::close`].
    fn fail<S: Sockets>(&mut self, sockets: &mut S, key: usize);
    /// The loop fails: every connection is closed (cut) now.
    fn abandon<S: Sockets>(&mut self, sockets: &mut S);
    /// A connection's socket is ready (or may be). `read_to_block`: keep reading after
    /// a short read (the event also reported the peer's close or an error).
    fn ready<S: Sockets>(&mut self, sockets: &mut S, key: usize, read_to_block: bool);
    /// The shard's waker fired: jobs completed, or room freed in the pool's queue.
    fn wake<S: Sockets>(&mut self, sockets: &mut S);
    /// The end of a turn: connections to drive again, due timers, the turn's jobs
    /// handed to the pool, the drain's sweeps, the counters published.
    fn end_turn<S: Sockets>(&mut self, sockets: &mut S);
    /// When the core must be given a turn again (ms, shard time), if ever.
    fn next_wake(&self) -> Option<u64>;
    /// The core has connections to drive again at once (a read budget ran out, room
    /// freed): the driver must not wait for events.
    fn queued(&self) -> bool;
    /// Connections open.
    fn open_count(&self) -> usize;
    /// Shutdown was asked for and the drain has not begun: the driver takes what waits
    /// in its accept queue (unless the listeners were handed over), closes the listener
    /// and calls [`drain`](Core::drain).
    fn drain_wanted(&self) -> bool;
    /// The listeners went to a successor: the accept queue is its, not ours.
    fn handed_over(&self) -> bool;
    /// The drain begins: quiet connections are closed, busy ones finish.
    fn drain<S: Sockets>(&mut self, sockets: &mut S);
    /// Drained: every connection is gone.
    fn finished(&self) -> bool;
    /// Connections the driver closed before the core saw them (out of descriptors),
    /// and failed accepts for lack of descriptors, both as totals.
    fn driver_counts(&mut self, rejected: u64, fd_errors: u64);
    /// The loop ends: the final counters are published.
    fn finish(&mut self);
    /// Stop reading the connections of the shard that hold or owe anything (a
    /// process-wide memory budget is spent): only a connection that holds nothing and
    /// whose peer has taken every byte is read, in small pieces (a PROXY header too);
    /// answers already decoded still go out, jobs still complete, timers fire, except
    /// a read timeout (its bytes may wait unread), which waits for the resume, and an
    /// idle timeout, judged after a read; a lingering connection is not read but its
    /// deadline still closes it. Until [`resume_reading`](Core::resume_reading).
    /// A drain resumes reading: requests in flight must be served.
    #[cfg_attr(not(test), allow(dead_code))] // the memory budget's; the simulation's now
    fn pause_reading(&mut self);
    /// Read again: every connection that had something to read while paused is
    /// driven now.
    #[cfg_attr(not(test), allow(dead_code))]
    fn resume_reading<S: Sockets>(&mut self, sockets: &mut S);
    /// Bytes for a connection that did not come from its own input, sent after every
    /// answer already placed. The simulation's door; the server's pushes come through
    /// the shard's inbox (`wake`), to the same placing.
    #[cfg_attr(not(test), allow(dead_code))]
    fn push<S: Sockets>(&mut self, sockets: &mut S, key: usize, bytes: &[u8]) -> Pushed;
}

pub(crate) struct Shard<H: Handler> {
    id: usize,
    conns: Slab<Conn<H::State>>,
    io: ConnIo<H>,
    shared: Arc<Shared>,
    fired: Vec<u32>,
    done: Vec<Completion<H::Response>>,
    touched: Vec<usize>,
    drain_deadline: Option<u64>,
    /// During a drain: when the connections let off for `--drain-grace` are looked at
    /// again.
    grace_sweep_at: Option<u64>,
    /// The client address of each connection, kept only under --max-connections-per-ip.
    ips: HashMap<usize, IpAddr>,
    /// The driver's own closes (out of descriptors) and failed accepts, as totals.
    driver_rejected: u64,
    fd_errors: u64,
    published: Counters,
    next_publish: u64,
    /// Pushes from any thread to this shard's connections.
    inbox: Option<Arc<PushBox>>,
    pushes: Vec<Push>,
    pfired: Vec<(u32, u32)>,
    /// Memory freed since the allocator was last asked to give it back, and when it
    /// may be asked next.
    freed: usize,
    trim_at: Option<u64>,
    last_trim: u64,
    /// While the memory budget is spent: when parked connections are looked at again.
    budget_retry_at: Option<u64>,
    /// When the pool's idle buffers are next cut down to what is in use.
    pool_check_at: Option<u64>,
    /// Tests only: every close and its reason, for the simulation to judge.
    #[cfg(test)]
    closes: Vec<(usize, Close)>,
}

impl<H: Handler> Shard<H> {
    /// `pool` and `waker` together: the shard hands jobs to the pool and is woken with
    /// their results.
    pub fn new(
        id: usize,
        handler: Arc<H>,
        set: Settings,
        shared: Arc<Shared>,
        pool: Option<(Pool, Arc<mio::Waker>)>,
        push: Option<(Pusher, Arc<PushBox>)>,
    ) -> Self {
        // Room for every connection up front: pages never written cost nothing, and a
        // slab or wheel that never grows never leaves an old copy's pages in the heap.
        // Not with a memory budget, which counts what is reserved, touched or not.
        let room = if set.memory_limit > 0 {
            0
        } else {
            set.max_conns.min(MAX_RESERVED)
        };
        let mut wheel = TimerWheel::new(SLOTS, TICK_MS);
        wheel.reserve(room);
        let mut io = ConnIo::new(handler, set, wheel);
        if H::POOLED {
            io.offload = pool.map(|(pool, waker)| Offload::new(pool, Arc::new(Inbox::new(waker))));
        }
        io.shard = id;
        io.gens.reserve(room);
        let inbox = push.map(|(pusher, inbox)| {
            io.pusher = Some(pusher);
            inbox
        });
        Shard {
            id,
            conns: Slab::with_capacity(room),
            io,
            shared,
            fired: Vec::new(),
            done: Vec::new(),
            touched: Vec::new(),
            drain_deadline: None,
            grace_sweep_at: None,
            ips: HashMap::new(),
            driver_rejected: 0,
            fd_errors: 0,
            published: Counters::default(),
            next_publish: 0,
            inbox,
            pushes: Vec::new(),
            pfired: Vec::new(),
            freed: 0,
            trim_at: None,
            last_trim: 0,
            budget_retry_at: None,
            pool_check_at: None,
            #[cfg(test)]
            closes: Vec::new(),
        }
    }

    /// Drives a connection with no readiness event in hand: read until WouldBlock.
    fn drive<S: Sockets>(&mut self, sockets: &mut S, key: usize) {
        self.drive_with(sockets, key, true);
    }

    fn drive_with<S: Sockets>(&mut self, sockets: &mut S, key: usize, read_to_block: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let done = match sockets.get(key, conn.handle) {
            Some(mut sock) => self.io.drive(&mut sock, conn, key, read_to_block),
            None => Err(Close::Error),
        };
        match done {
            Ok(()) => self.io.arm(conn, key),
            Err(why) => self.close(sockets, key, why),
        }
        if !self.io.proxied.is_empty() {
            self.account_proxied(sockets);
        }
    }

    fn close<S: Sockets>(&mut self, sockets: &mut S, key: usize, why: Close) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        let handle = conn.handle;
        self.io
            .close(sockets.get(key, handle).as_mut(), conn, key, why);
        #[cfg(test)]
        self.closes.push((key, why));
        sockets.close(key, handle);
        if let Some(ip) = self.ips.remove(&key) {
            release_ip(&self.shared, ip);
        }
    }

    /// Client addresses learnt from PROXY headers: count them against the per-address
    /// limit now, as if the client had connected itself.
    fn account_proxied<S: Sockets>(&mut self, sockets: &mut S) {
        for (key, client) in std::mem::take(&mut self.io.proxied) {
            if !self.conns.contains(key) {
                continue;
            }
            if take_ip(&self.shared, client.ip(), self.io.set.max_per_ip) {
                self.ips.insert(key, client.ip());
                // Serve what came with the header.
                self.io.requeue.push(key);
            } else {
                self.io.stats.rejected_per_ip += 1;
                self.io.stats.rejected += 1;
                self.close(sockets, key, Close::Normal);
            }
        }
    }

    fn fire_timers<S: Sockets>(&mut self, sockets: &mut S) {
        let mut fired = std::mem::take(&mut self.fired);
        self.io.wheel.poll(self.io.now, &mut fired);
        for key in fired.drain(..) {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.timer = None;
            let now = self.io.now;
            let timeouts = self.io.set.timeouts;
            match conn.deadline(&timeouts, now) {
                Some(d) if d <= now => {}
                _ => {
                    self.io.arm(conn, key);
                    continue;
                }
            }
            if conn.jobs_deadline(&timeouts).is_some_and(|d| d <= now) {
                self.io.expire_jobs(conn);
                self.drive(sockets, key);
                continue;
            }
            if self.io.paused && conn.phase() == Phase::Reading {
                // A request in progress, whose next bytes may be waiting unread while
                // the budget keeps it from being read: judged when reading resumes.
                self.io.park(conn, key);
                continue;
            }
            if self.io.paused && conn.phase() == Phase::Idle && !conn.has(PARKED) {
                // An idle connection is read even while paused, unless its peer has
                // not taken its last answer: a drive reads what may have come (or
                // parks it), and the deadline is judged after that.
                self.drive(sockets, key);
                match self.conns.get_mut(key) {
                    Some(conn) if !conn.has(PARKED) => match conn.deadline(&timeouts, now) {
                        Some(d) if d <= now && conn.phase() == Phase::Idle => {}
                        _ => {
                            self.io.arm(conn, key);
                            continue;
                        }
                    },
                    _ => continue,
                }
            } else if self.io.paused && conn.phase() == Phase::Idle {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let why = match conn.phase() {
                Phase::Proxy => Close::Proxy(Refusal::Timeout),
                Phase::Held => {
                    conn.busy().held_until = 0;
                    self.drive(sockets, key);
                    continue;
                }
                Phase::Linger => Close::Normal,
                Phase::Writing => Close::WriteTimeout,
                Phase::Reading => Close::ReadTimeout,
                Phase::Idle => Close::IdleTimeout,
                // No deadline of its own; reached only through the handler timeout.
                Phase::Working => {
                    self.io.arm(conn, key);
                    continue;
                }
            };
            self.close(sockets, key, why);
        }
        self.fired = fired;
    }

    /// The drain's sweeps after it began: connections whose grace ran out, and the cut
    /// at the deadline (or at a second signal).
    fn check_drain<S: Sockets>(&mut self, sockets: &mut S) {
        if let Some(at) = self.grace_sweep_at
            && self.io.now >= at
        {
            // The grace is over for connections that never sent a request.
            self.grace_sweep_at = None;
            for key in self.keys() {
                self.drive(sockets, key);
            }
        }
        let force = self.shared.force.load(Ordering::Acquire);
        if self.io.draining
            && !self.conns.is_empty()
            && (force || self.drain_deadline.is_some_and(|d| self.io.now >= d))
        {
            let n = self.conns.len();
            let jobs: usize = self.conns.iter().map(|(_, c)| c.jobs_pending()).sum();
            warn!(
                "shard {}: drain deadline reached, cutting {n} connections \
                 ({jobs} jobs still queued or running)",
                self.id
            );
            for key in self.keys() {
                self.close(sockets, key, Close::Cut);
            }
        }
    }

    /// Places a push for connection `key` if it is still the one of `generation`.
    fn place(&mut self, key: usize, generation: u32, bytes: &[u8]) -> Pushed {
        match self.conns.get_mut(key) {
            Some(conn) if gen_of(&self.io.gens, key) == generation => {
                self.io.place_push(conn, bytes)
            }
            _ => Pushed::Refused,
        }
    }

    /// One drive per connection per batch, however many of its answers (or pushes)
    /// came in it.
    fn flush_touched<S: Sockets>(&mut self, sockets: &mut S) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for key in std::mem::take(&mut self.touched) {
            self.drive(sockets, key);
        }
    }

    /// The protocol's own timers that are due.
    fn fire_protocol_timers<S: Sockets>(&mut self, sockets: &mut S) {
        if self.io.ptimers.is_empty() {
            return;
        }
        let mut fired = std::mem::take(&mut self.pfired);
        self.io.ptimers.poll(self.io.now, &mut fired);
        for (key, generation) in fired.drain(..) {
            let key = key as usize;
            if gen_of(&self.io.gens, key) != generation {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !conn.has(OPENED) || conn.stage != Stage::Serving {
                continue;
            }
            match self.io.run_ptimer(conn, key) {
                Ok(()) => self.drive(sockets, key),
                Err(why) => self.close(sockets, key, why),
            }
        }
        self.pfired = fired;
    }

    /// After a burst, gives its memory back: once a second the pool frees the idle
    /// buffers it holds beyond as many as are lent now (at least `POOL_FLOOR`), and
    /// once a lot of buffer memory was freed the allocator is asked to return it to the
    /// system (glibc keeps freed memory otherwise: a crowd of slow readers would pin
    /// its peak RSS for ever). At most once a second per shard, a second after the
    /// freeing began, so a busy shard that frees and allocates all the time does not
    /// pay for a trim per turn.
    fn give_back(&mut self) {
        if self.pool_check_at.is_some_and(|at| self.io.now >= at) {
            self.pool_check_at = None;
            let keep = self.io.pool.lent().max(POOL_FLOOR);
            self.io.pool.shrink_idle(keep);
        }
        if self.pool_check_at.is_none() && self.io.pool.idle() > self.io.pool.lent().max(POOL_FLOOR)
        {
            self.pool_check_at = Some(self.io.now + TRIM_EVERY_MS);
        }
        self.freed += self.io.pool.take_freed();
        if self.freed >= TRIM_AFTER_BYTES && self.trim_at.is_none() {
            self.trim_at = Some(self.io.now.max(self.last_trim + TRIM_EVERY_MS));
        }
        if self.trim_at.is_some_and(|at| self.io.now >= at) {
            self.trim_at = None;
            self.freed = 0;
            self.last_trim = self.io.now;
            crate::shared::trim_allocator();
        }
    }

    /// While reading is paused for the memory budget: resumes it once the heap is back
    /// under seven eighths of the budget (a margin, so that a resume does not pause
    /// again at the next read), and meanwhile drives again, every `BUDGET_RETRY_MS`,
    /// the parked connections that owe no output any more: those whose peer has read.
    fn relieve<S: Sockets>(&mut self, sockets: &mut S) {
        let limit = self.io.set.memory_limit;
        if !self.io.paused || limit == 0 {
            self.budget_retry_at = None;
            return;
        }
        if !crate::memory::at_least(limit - limit / 8) {
            self.budget_retry_at = None;
            self.resume_reading(sockets);
            return;
        }
        let now = self.io.now;
        match self.budget_retry_at {
            None => self.budget_retry_at = Some(now + BUDGET_RETRY_MS),
            Some(at) if now >= at => {
                self.budget_retry_at = Some(now + BUDGET_RETRY_MS);
                let parked = std::mem::take(&mut self.io.parked);
                for key in parked {
                    match self.conns.get_mut(key) {
                        // A key closed and reused since it was parked: not parked.
                        Some(conn) if !conn.has(PARKED) => {}
                        Some(conn) if conn.output().is_none() && conn.jobs().is_none() => {
                            conn.set(PARKED, false);
                            self.drive(sockets, key);
                        }
                        Some(_) => self.io.parked.push(key),
                        None => {}
                    }
                }
            }
            Some(_) => {}
        }
    }

    fn keys(&self) -> Vec<usize> {
        self.conns.iter().map(|(k, _)| k).collect()
    }

    pub fn stats_now(&self) -> Counters {
        Counters {
            open: self.conns.len() as u64,
            buffers_lent: self.io.pool.lent() as u64,
            buffers_pooled: self.io.pool.idle() as u64,
            rejected: self.io.stats.rejected + self.driver_rejected,
            accept_fd_errors: self.fd_errors,
            ..self.io.stats
        }
    }

    /// Copies the counters out for the server, when they changed and at most every
    /// `PUBLISH_MS` (or at once with `always`), so that a busy loop takes the lock
    /// ten times a second, not once per turn.
    fn publish(&mut self, always: bool) {
        if !always && self.io.now < self.next_publish {
            return;
        }
        let counters = self.stats_now();
        if always || counters != self.published {
            self.published = counters;
            self.next_publish = self.io.now + PUBLISH_MS;
            if let Ok(mut s) = self.shared.stats[self.id].lock() {
                *s = counters;
            }
        }
    }
}

impl<H: Handler> Core for Shard<H> {
    fn tick(&mut self, now: u64) {
        self.io.now = now;
        self.io.clock.refresh();
    }

    fn open(&mut self, peer: Peer, handle: u32) -> Option<usize> {
        let io = &mut self.io;
        let ip = match peer {
            Peer::Ip(a) => Some(a.ip()),
            Peer::Unix => None,
        };
        if self.conns.len() >= io.set.max_conns {
            io.stats.rejected += 1;
            return None;
        }
        // A trusted load balancer speaks for its clients: the address that counts
        // comes with its PROXY header.
        // A Unix-socket peer is on this host: trusted like loopback.
        let proxied = io.set.proxy != ProxyMode::Off
            && ip.is_none_or(|ip| io.set.proxy_from.iter().any(|n| n.contains(ip)));
        let mut counted = None;
        if let Some(ip) = ip
            && io.set.max_per_ip > 0
            && !proxied
        {
            if !take_ip(&self.shared, ip, io.set.max_per_ip) {
                io.stats.rejected_per_ip += 1;
                io.stats.rejected += 1;
                return None;
            }
            counted = Some(ip);
        }
        let ip = counted;
        let tls = match io.new_tls() {
            None => None,
            Some(Ok(tls)) => Some(tls),
            Some(Err(e)) => {
                warn!("shard {}: a TLS session could not be made: {e}", self.id);
                if let Some(ip) = ip {
                    release_ip(&self.shared, ip);
                }
                io.stats.rejected += 1;
                return None;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let conn = entry.insert(Conn::new(io.now, handle));
        if io.gens.len() <= key {
            io.gens.resize(key + 1, 0);
        }
        let peer = match peer {
            Peer::Ip(a) => Some(a),
            Peer::Unix => None,
        };
        let deferred = tls.is_some() || proxied;
        if tls.is_some() {
            conn.busy().tls = tls;
        }
        if deferred {
            // The protocol is told once the PROXY header and the handshake are done.
            conn.busy().peer = Some(Box::new((peer, None)));
        }
        if proxied {
            conn.stage = Stage::Proxy;
        } else if io.set.proxy != ProxyMode::Off {
            conn.set(SPOOF_CHECK, true);
        }
        io.stats.accepted += 1;
        if let Some(ip) = ip {
            self.ips.insert(key, ip);
        }
        if !deferred {
            match io.open_conn(conn, key, Some((peer, None))) {
                Ok(()) => {
                    if conn.output().is_some() {
                        // A greeting: sent at the end of the turn.
                        io.requeue.push(key);
                    }
                }
                Err(why) => {
                    let conn = self.conns.remove(key);
                    self.io.close::<NoSocket>(None, conn, key, why);
                    if let Some(ip) = self.ips.remove(&key) {
                        release_ip(&self.shared, ip);
                    }
                    return None;
                }
            }
        }
        io.arm(conn, key);
        Some(key)
    }

    fn fail<S: Sockets>(&mut self, sockets: &mut S, key: usize) {
        self.close(sockets, key, Close::Error);
    }

    fn ready<S: Sockets>(&mut self, sockets: &mut S, key: usize, read_to_block: bool) {
        self.drive_with(sockets, key, read_to_block);
    }

    fn wake<S: Sockets>(&mut self, sockets: &mut S) {
        if let Some(inbox) = self.inbox.as_ref() {
            inbox.take(&mut self.pushes);
            let mut pushes = std::mem::take(&mut self.pushes);
            for p in pushes.drain(..) {
                let key = p.to.key();
                let mut placed = self.place(key, p.to.generation(), &p.bytes);
                if placed == Pushed::Full {
                    // Over the mark with what this batch placed so far: write it out,
                    // and refuse only if the peer is not taking it.
                    self.drive(sockets, key);
                    placed = self.place(key, p.to.generation(), &p.bytes);
                }
                if placed == Pushed::Queued {
                    self.io.stats.pushes += 1;
                    self.touched.push(key);
                } else {
                    self.io.stats.pushes_refused += 1;
                }
            }
            self.pushes = pushes;
        }
        let Some(off) = self.io.offload.as_mut() else {
            self.flush_touched(sockets);
            return;
        };
        off.inbox.take(&mut self.done);
        // Always: a connection that still finds no room stalls again and asks to be
        // woken again; one left here would never be read again (no edge will come).
        self.io.requeue.append(&mut off.room_stalled);
        for c in self.done.drain(..) {
            let key = c.key;
            if self.io.complete(self.conns.get_mut(key), c) {
                self.touched.push(key);
            }
        }
        self.flush_touched(sockets);
    }

    fn end_turn<S: Sockets>(&mut self, sockets: &mut S) {
        for key in std::mem::take(&mut self.io.requeue) {
            self.drive(sockets, key);
        }
        self.fire_timers(sockets);
        self.fire_protocol_timers(sockets);
        if let Some(off) = self.io.offload.as_mut() {
            off.submit();
        }
        self.check_drain(sockets);
        self.relieve(sockets);
        self.give_back();
        self.publish(false);
    }

    fn queued(&self) -> bool {
        !self.io.requeue.is_empty()
    }

    fn open_count(&self) -> usize {
        self.conns.len()
    }

    fn next_wake(&self) -> Option<u64> {
        let now = self.io.now;
        let mut at = self.io.wheel.next_deadline();
        for t in [
            self.drain_deadline,
            self.grace_sweep_at,
            self.io.ptimers.next_deadline(),
            self.trim_at,
            self.budget_retry_at,
            self.pool_check_at,
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
        at
    }

    fn drain_wanted(&self) -> bool {
        !self.io.draining && self.shared.shutdown.load(Ordering::Acquire)
    }

    fn handed_over(&self) -> bool {
        self.shared.handed_over.load(Ordering::Acquire)
    }

    fn drain<S: Sockets>(&mut self, sockets: &mut S) {
        self.io.draining = true;
        if self.io.paused {
            self.resume_reading(sockets);
        }
        self.drain_deadline = Some(self.io.now + self.io.set.drain_ms);
        // Drive every connection once more before judging it idle: a request whose
        // bytes arrived with the signal is served, not dropped. `drive` closes what is
        // quiet once draining is set. A lingering close goes on lingering: closing it
        // now would reset the peer and could destroy the answer the linger protects.
        for key in self.keys() {
            self.drive(sockets, key);
        }
        self.grace_sweep_at = Some(self.io.now + self.io.set.drain_grace_ms);
        let jobs: usize = self.conns.iter().map(|(_, c)| c.jobs_pending()).sum();
        info!(
            "shard {}: draining {} connections with requests in progress \
             ({jobs} jobs queued or running)",
            self.id,
            self.conns.len()
        );
        self.check_drain(sockets);
        if let Some(off) = self.io.offload.as_mut() {
            off.submit();
        }
    }

    fn finished(&self) -> bool {
        self.io.draining && self.conns.is_empty()
    }

    fn abandon<S: Sockets>(&mut self, sockets: &mut S) {
        if let Some(inbox) = self.inbox.as_ref() {
            inbox.close();
        }
        for key in self.keys() {
            self.close(sockets, key, Close::Cut);
        }
        self.publish(true);
    }

    fn driver_counts(&mut self, rejected: u64, fd_errors: u64) {
        self.driver_rejected = rejected;
        self.fd_errors = fd_errors;
    }

    fn finish(&mut self) {
        if let Some(inbox) = self.inbox.as_ref() {
            inbox.close();
        }
        self.publish(true);
    }

    fn push<S: Sockets>(&mut self, sockets: &mut S, key: usize, bytes: &[u8]) -> Pushed {
        let Some(conn) = self.conns.get_mut(key) else {
            return Pushed::Refused;
        };
        let placed = self.io.place_push(conn, bytes);
        if placed == Pushed::Queued {
            // A drive, not only a flush: the push may be what a half-closed peer's
            // connection was waiting for before it can close.
            self.drive(sockets, key);
        }
        placed
    }

    fn pause_reading(&mut self) {
        if !self.io.draining {
            self.io.paused = true;
        }
    }

    fn resume_reading<S: Sockets>(&mut self, sockets: &mut S) {
        self.io.paused = false;
        let mut parked = std::mem::take(&mut self.io.parked);
        parked.sort_unstable();
        parked.dedup();
        for key in parked {
            // A key closed since, or reused by a connection that never read, is
            // driven harmlessly: a drive with nothing to read does nothing.
            if let Some(conn) = self.conns.get_mut(key) {
                conn.set(PARKED, false);
            }
            self.drive(sockets, key);
        }
    }
}

/// Counts a connection from `ip` under --max-connections-per-ip; `false` if it has its
/// most already.
fn take_ip(shared: &Shared, ip: IpAddr, max: usize) -> bool {
    let mut per_ip = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= max {
        return false;
    }
    *n += 1;
    true
}

/// A connection from `ip` under --max-connections-per-ip has gone.
fn release_ip(shared: &Shared, ip: IpAddr) {
    let mut per_ip = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}
