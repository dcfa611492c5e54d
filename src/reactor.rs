//! One shard: a thread's event loop. It owns a listener ([`Acceptor`]), its connections
//! (a slab whose keys are the mio tokens), and the tools to serve them ([`ConnIo`]:
//! buffer pool, scratch buffer, timer wheel, counters, link to the worker pool). Shards
//! share nothing on the per-request path.
//!
//! Each turn of the loop: wait for readiness (or the next timer), then
//!
//! 1. for each event: a connection is driven (see [`conn_io`](crate::conn_io)); the
//!    listener accepts; the waker means completions from the worker pool (or room in
//!    its queue, or shutdown);
//! 2. accept again if the budget ran out last time (or a pause ended);
//! 3. drive the connections that used up their read budget, or were waiting for room;
//! 4. fire due timers: release held answers, answer jobs past the handler timeout,
//!    close timed-out connections;
//! 5. hand this turn's jobs to the pool in one batch;
//! 6. on shutdown, close what is quiet and cut the rest at the drain deadline; publish
//!    counters.
//!
//! mio is edge-triggered, so every read and write goes on until WouldBlock, or the
//! connection is remembered for later (read budget, backpressure, held answers, jobs in
//! flight) and the shard itself comes back to it: no readiness edge will.
//!
//! Tokens are slab keys and a closed connection's key is freed at once. A stale event for
//! a key that a new connection took in the same batch is harmless: `drive` treats every
//! event as a hint and does only what the socket allows, like any spurious wake-up. Job
//! results, which can arrive long after, carry a generation instead (see
//! [`jobs`](crate::jobs)).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::accept::{Acceptor, Admit, LISTENER};
use crate::conn::*;
use crate::conn_io::{Close, ConnIo, Offload};
use crate::jobs::{Completion, Inbox};
use crate::listener::configure_accepted;
use crate::proxy::{ProxyMode, Refusal};
use crate::service::Handler;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::timer::TimerWheel;
use crate::workers::Pool;

pub(crate) use crate::conn_io::Settings;

pub(crate) const WAKER: Token = Token(usize::MAX);

/// At most how often counters are copied out for the server, in ms.
const PUBLISH_MS: u64 = 100;
/// Wheel: 10 ms ticks, 4096 slots (a 41 s rotation).
const TICK_MS: u64 = 10;
const SLOTS: usize = 4096;
/// At most this many accept turns (each a budget of connections) empty the accept queue
/// before a drain closes the listener.
const MAX_FINAL_ACCEPTS: usize = 64;
/// At most this many connections' room is reserved up front (a few tens of MB of
/// address space, not memory).
const MAX_RESERVED: usize = 1 << 20;

pub(crate) struct Shard<H: Handler> {
    id: usize,
    poll: Poll,
    acceptor: Acceptor,
    conns: Slab<Conn<H::State>>,
    io: ConnIo<H>,
    shared: Arc<Shared>,
    epoch: Instant,
    fired: Vec<u32>,
    done: Vec<Completion<H::Response>>,
    touched: Vec<usize>,
    drain_deadline: Option<u64>,
    /// During a drain: when the connections let off for `--drain-grace` are looked at
    /// again.
    grace_sweep_at: Option<u64>,
    /// The client address of each connection, kept only under --max-connections-per-ip.
    ips: HashMap<usize, IpAddr>,
    published: Counters,
    next_publish: u64,
}

impl<H: Handler> Shard<H> {
    /// `pool` and `waker` together: the shard hands jobs to the pool and is woken with
    /// their results.
    pub fn new(
        id: usize,
        poll: Poll,
        listener: TcpListener,
        handler: Arc<H>,
        set: Settings,
        shared: Arc<Shared>,
        pool: Option<(Pool, Arc<mio::Waker>)>,
    ) -> io::Result<Self> {
        let acceptor = Acceptor::new(id, poll.registry(), listener)?;
        // Room for every connection up front: pages never written cost nothing, and a
        // slab or wheel that never grows never leaves an old copy's pages in the heap.
        let room = set.max_conns.min(MAX_RESERVED);
        let mut wheel = TimerWheel::new(SLOTS, TICK_MS);
        wheel.reserve(room);
        let mut io = ConnIo::new(handler, set, wheel);
        if H::POOLED {
            io.offload = pool.map(|(pool, waker)| Offload::new(pool, Arc::new(Inbox::new(waker))));
        }
        Ok(Shard {
            id,
            poll,
            acceptor,
            conns: Slab::with_capacity(room),
            io,
            shared,
            epoch: Instant::now(),
            fired: Vec::new(),
            done: Vec::new(),
            touched: Vec::new(),
            drain_deadline: None,
            grace_sweep_at: None,
            ips: HashMap::new(),
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
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.io.now = self.epoch.elapsed().as_millis() as u64;
            self.io.clock.refresh();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.on_wake(),
                    // A short read means the socket is drained, unless the peer also
                    // closed: then read on to see the EOF (no further edge will come).
                    Token(key) => self.drive_with(key, ev.is_read_closed() || ev.is_error()),
                }
            }
            if self.acceptor.due(self.io.now) {
                self.accept();
            }
            for key in std::mem::take(&mut self.io.requeue) {
                self.drive(key);
            }
            self.fire_timers();
            if let Some(off) = self.io.offload.as_mut() {
                off.submit();
            }
            self.check_shutdown();
            self.publish(false);
            if self.io.draining && self.conns.is_empty() {
                break;
            }
        }
        self.publish(true);
        Ok(self.stats_now())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.acceptor.pending || !self.io.requeue.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.io.now;
        let mut at = self.io.wheel.next_deadline();
        for t in [
            self.drain_deadline,
            self.acceptor.resume_at,
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
            .io
            .drive(self.poll.registry(), conn, key, read_to_block)
        {
            Ok(()) => self.io.arm(conn, key),
            Err(why) => {
                self.close(key, why);
            }
        }
        if !self.io.proxied.is_empty() {
            self.account_proxied();
        }
    }

    fn close(&mut self, key: usize, why: Close) {
        let conn = self.conns.remove(key);
        self.io.close(conn, why);
        if let Some(ip) = self.ips.remove(&key) {
            release_ip(&self.shared, ip);
        }
    }

    fn accept(&mut self) {
        let (conns, io, reg) = (&mut self.conns, &mut self.io, self.poll.registry());
        let (ips, shared) = (&mut self.ips, &self.shared);
        let shard = self.id;
        let open = conns.len();
        self.acceptor.accept(io.now, open, |mut sock, peer| {
            if conns.len() >= io.set.max_conns {
                return Admit::Reject;
            }
            // A trusted load balancer speaks for its clients: the address that counts
            // comes with its PROXY header.
            let proxied = io.set.proxy != ProxyMode::Off
                && io.set.proxy_from.iter().any(|n| n.contains(peer.ip()));
            let mut ip = None;
            if io.set.max_per_ip > 0 && !proxied {
                if !take_ip(shared, peer.ip(), io.set.max_per_ip) {
                    io.stats.rejected_per_ip += 1;
                    return Admit::Reject;
                }
                ip = Some(peer.ip());
            }
            if let Err(e) = configure_accepted(&sock, io.set.keepalive) {
                debug!("socket options on an accepted connection: {e}");
            }
            let entry = conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = reg.register(&mut sock, Token(key), Interest::READABLE) {
                warn!("shard {shard}: registering a connection failed: {e}");
                if let Some(ip) = ip {
                    release_ip(shared, ip);
                }
                return Admit::Keep;
            }
            let tls = match io.new_tls() {
                None => None,
                Some(Ok(tls)) => Some(tls),
                Some(Err(e)) => {
                    warn!("shard {shard}: a TLS session could not be made: {e}");
                    if let Some(ip) = ip {
                        release_ip(shared, ip);
                    }
                    return Admit::Reject;
                }
            };
            let conn = entry.insert(Conn::new(sock, io.now));
            if tls.is_some() {
                conn.busy().tls = tls;
            }
            if proxied {
                conn.stage = Stage::Proxy;
            } else if io.set.proxy != ProxyMode::Off {
                conn.set(SPOOF_CHECK, true);
            }
            io.stats.accepted += 1;
            if let Some(ip) = ip {
                ips.insert(key, ip);
            }
            io.arm(conn, key);
            Admit::Keep
        });
    }

    /// Client addresses learnt from PROXY headers: count them against the per-address
    /// limit now, as if the client had connected itself.
    fn account_proxied(&mut self) {
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
                self.close(key, Close::Normal);
            }
        }
    }

    /// The waker: completions from the worker pool, room in its queue, or shutdown
    /// (checked every turn anyway).
    fn on_wake(&mut self) {
        let Some(off) = self.io.offload.as_mut() else {
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
        // One flush per connection per batch, however many of its answers came back.
        self.touched.sort_unstable();
        self.touched.dedup();
        for key in std::mem::take(&mut self.touched) {
            self.drive(key);
        }
    }

    fn fire_timers(&mut self) {
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
                self.drive(key);
                continue;
            }
            let why = match conn.phase() {
                Phase::Proxy => Close::Proxy(Refusal::Timeout),
                Phase::Held => {
                    conn.busy().held_until = 0;
                    self.drive(key);
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
            self.close(key, why);
        }
        self.fired = fired;
    }

    fn check_shutdown(&mut self) {
        if !self.io.draining && self.shared.shutdown.load(Ordering::Acquire) {
            self.io.draining = true;
            // Connections waiting in the accept queue were let in by the kernel, and a
            // load balancer may already have sent them a request: closing the listener
            // would reset them. Take them first; they get the drain grace like any
            // connection that has not spoken yet.
            for _ in 0..MAX_FINAL_ACCEPTS {
                self.accept();
                if !self.acceptor.pending {
                    break;
                }
            }
            self.acceptor.close(self.poll.registry());
            self.drain_deadline = Some(self.io.now + self.io.set.drain_ms);
            // Drive every connection once more before judging it idle: a request whose
            // bytes arrived with the signal is served, not dropped. `drive` closes what
            // is quiet once draining is set.
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                if self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.stage == Stage::Lingering)
                {
                    self.close(key, Close::Normal);
                } else {
                    self.drive(key);
                }
            }
            self.grace_sweep_at = Some(self.io.now + self.io.set.drain_grace_ms);
            let jobs: usize = self.conns.iter().map(|(_, c)| c.jobs_pending()).sum();
            info!(
                "shard {}: draining {} connections with requests in progress \
                 ({jobs} jobs queued or running)",
                self.id,
                self.conns.len()
            );
        }
        if let Some(at) = self.grace_sweep_at
            && self.io.now >= at
        {
            // The grace is over for connections that never sent a request.
            self.grace_sweep_at = None;
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.drive(key);
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
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.close(key, Close::Cut);
            }
        }
    }

    fn stats_now(&self) -> Counters {
        Counters {
            open: self.conns.len() as u64,
            buffers_lent: self.io.pool.lent() as u64,
            buffers_pooled: self.io.pool.idle() as u64,
            rejected: self.acceptor.rejected,
            accept_fd_errors: self.acceptor.fd_errors,
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
