//! Deterministic simulation of the connection core (FoundationDB's and TigerBeetle's
//! way): a seeded scheduler drives one real shard ([`Shard`] with the real decoders,
//! the real reorder queue and worker-pool dispatch, real rustls on both sides of a TLS
//! connection) through an in-memory network, and checks invariants after every step.
//!
//! Each seed picks a scenario (protocol; plain, TLS, or TLS 1.2 clients that
//! renegotiate; PROXY v1/v2 or none; inline or pooled answers; the high-water mark, the
//! answer delay, the handler timeout) and then a schedule: connections opened, requests
//! pipelined and written in pieces of every size, reads of any size with the window
//! reopening little by little, half-closes and close_notify, resets at any point,
//! spurious wake-ups, time moving by a millisecond or by seconds, jobs taken and
//! completed in any order or panicking, another shard filling and emptying the pool's
//! queue at the pool's own synchronisation points, a drain at any moment.
//!
//! The invariants, after every step:
//! - the core used no closed socket and wrote nothing after its shutdown;
//! - on a TLS connection, every byte handed to the socket is part of a TLS record, and
//!   the client decrypts all of it;
//! - every answer is the answer to the next request, once, in order;
//! - a connection the core closes for no counted reason (a normal close: the peer's
//!   end, a drain, a linger) owes no answer to any request it received whole; a
//!   half-closed peer gets every answer;
//! - the output waiting on a connection stays under the high-water mark plus one
//!   decode step;
//! - counters add up: accepted = open + closed; no buffer is lent with no connection;
//!
//! and at the end of the schedule, once the clients have sent and read everything and
//! every job has run, no connection owes an answer (nothing is stuck), and the drain
//! then ends with every connection closed.
//!
//! `cargo test --release simulation` runs it. A failure prints its seed;
//! `REACTOR_SIM_SEED=N` replays exactly that one, `REACTOR_SIM_SEEDS=N` runs N seeds.

mod client;
mod net;
mod rng;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use super::conn::Timeouts;
use super::{Close, Core, Pushed, Settings, Shard};
use crate::connection::{Closed, ConnId, ConnInfo};
use crate::http::{App, hello};
use crate::protocol::json::{JsonCodec, JsonRequest};
use crate::protocol::{Cx, Decoded, Protocol};
use crate::protocol::{Echo, Json};
use crate::proxy::{ProxyMode, Refusal};
use crate::service::{Handler, Pooled};
use crate::shared::Shared;
use crate::tls::{TlsShared, Trust};
use crate::workers::{Point, Pool, Task};
use bytes::BytesMut;
use client::{Client, Proto};
use net::{Net, Pipe};
use rng::Rng;

// Ed25519: its signatures, like X25519's keys, have one size, so a handshake's
// messages are the same length whatever the randomness, and a seed replays exactly.
const CERT: &[u8] = include_bytes!("cert.pem");
const KEY: &[u8] = include_bytes!("key.pem");
/// Seeds run by default: enough to catch each defect put back (see `mutant`), few
/// enough to keep the suite quick.
const DEFAULT_SEEDS: u64 = 1000;
/// Random steps per seed.
const STEPS: usize = 400;

#[derive(Clone, Copy, Debug)]
enum Tls {
    Off,
    On,
    /// TLS 1.2 clients that renegotiate mid-pipeline.
    Renegotiating,
}

#[derive(Clone, Debug)]
struct Scenario {
    proto: Proto,
    tls: Tls,
    proxy: ProxyMode,
    pooled: bool,
    high_water: usize,
    delay_ms: u64,
    handler_timeout: Option<u64>,
    queue: usize,
}

impl Scenario {
    fn pick(rng: &mut Rng) -> Scenario {
        let proto = *rng.pick(&[Proto::Echo, Proto::Http, Proto::Json]);
        let tls = match rng.below(4) {
            0 => Tls::On,
            1 => Tls::Renegotiating,
            _ => Tls::Off,
        };
        Scenario {
            proto,
            tls,
            proxy: *rng.pick(&[ProxyMode::Off, ProxyMode::Off, ProxyMode::V1, ProxyMode::V2]),
            pooled: proto != Proto::Echo && rng.chance(2),
            high_water: *rng.pick(&[512, 4096, 65536]),
            delay_ms: if rng.chance(6) { 20 } else { 0 },
            handler_timeout: rng.chance(4).then_some(3000),
            queue: 1 + rng.below(6),
        }
    }
}

/// What one seed did, for the summary.
#[derive(Default, Debug)]
struct Tally {
    steps: usize,
    conns: usize,
    requests: u64,
    answers: u64,
    pauses: u64,
    pushes: u64,
}

/// The pool's "other shard": places it holds, taken and given back at the pool's
/// preemption points.
struct Other {
    held: usize,
    rng: Rng,
}

struct Sim<H: Handler> {
    sc: Scenario,
    rng: Rng,
    shard: Shard<H>,
    shared: Arc<Shared>,
    net: Net,
    clients: HashMap<usize, Client>,
    pool: Option<Pool>,
    other: Option<Arc<Mutex<Other>>>,
    poll: Poll,
    events: Events,
    /// Jobs taken from the queue, not yet run (a worker holds them).
    jobs: Vec<Task>,
    /// The waker fired and the shard has not been woken yet.
    woken: bool,
    now: u64,
    next_id: usize,
    drained: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    tls12: Option<Arc<rustls::ClientConfig>>,
    tally: Tally,
    /// With a protocol wrapped in [`Hooked`]: what its hooks were told.
    hooks: Option<Arc<Mutex<HookLog>>>,
}

/// What a [`Hooked`] protocol's hooks were told.
#[derive(Default)]
struct HookLog {
    open: std::collections::HashSet<ConnId>,
    opened: u64,
    closed: u64,
    violations: Vec<String>,
}

/// A protocol whose open and close hooks are recorded, to check that every connection
/// the protocol was told of opening is told of closing, once, and no other.
#[derive(Clone)]
struct Hooked<P> {
    inner: P,
    log: Arc<Mutex<HookLog>>,
}

impl<P: Protocol + Sync> Protocol for Hooked<P> {
    type State = P::State;

    fn decode(&self, st: &mut P::State, input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if !log.open.contains(&cx.conn()) {
            drop(log);
            self.violation(format!("decode for {}, which is not open", cx.conn()));
        } else {
            drop(log);
        }
        self.inner.decode(st, input, out, cx)
    }

    fn in_request(&self, st: &P::State) -> bool {
        self.inner.in_request(st)
    }

    fn open(&self, st: &mut P::State, conn: &ConnInfo, out: &mut BytesMut, cx: &Cx) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if !log.open.insert(conn.id) {
            log.violations.push(format!("{} opened twice", conn.id));
        }
        log.opened += 1;
        drop(log);
        self.inner.open(st, conn, out, cx)
    }

    fn close(&self, st: &mut P::State, conn: ConnId, why: Closed) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if !log.open.remove(&conn) {
            log.violations
                .push(format!("{conn} closed ({why}) but not open"));
        }
        log.closed += 1;
        drop(log);
        self.inner.close(st, conn, why)
    }
}

impl<P> Hooked<P> {
    fn violation(&self, v: String) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .violations
            .push(v);
    }
}

fn settings(sc: &Scenario) -> Settings {
    let tls = match sc.tls {
        Tls::Off => None,
        _ => {
            let (alpn, reply) = match sc.proto {
                Proto::Http => (vec![b"http/1.1".to_vec()], Some(&b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..])),
                _ => (Vec::new(), None),
            };
            Some(Arc::new(
                TlsShared::from_pem(CERT, KEY, alpn, reply).expect("the simulation's certificate"),
            ))
        }
    };
    Settings {
        timeouts: Timeouts {
            idle: Some(60_000),
            read: Some(30_000),
            write: Some(30_000),
            handler: sc.handler_timeout,
            proxy: 3000,
        },
        high_water: sc.high_water,
        push_limit: sc.high_water,
        max_input: usize::MAX,
        memory_limit: 0,
        delay_ms: sc.delay_ms,
        max_conns: 1000,
        dead_peer: Default::default(),
        drain_ms: 10_000,
        pool_buffers: 64,
        max_inflight: 4,
        max_per_ip: 0,
        proxy: sc.proxy,
        proxy_from: Arc::new(crate::proxy::parse_cidrs("127.0.0.0/8").expect("a CIDR")),
        drain_grace_ms: 1000,
        tls,
    }
}

fn proxy_header(mode: ProxyMode, id: usize) -> Option<Vec<u8>> {
    let port = 1000 + (id % 60000) as u16;
    match mode {
        ProxyMode::Off => None,
        ProxyMode::V1 | ProxyMode::Any => {
            Some(format!("PROXY TCP4 192.0.2.1 198.51.100.1 {port} 443\r\n").into_bytes())
        }
        ProxyMode::V2 => {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 1]);
            h.extend_from_slice(&port.to_be_bytes());
            h.extend_from_slice(&443u16.to_be_bytes());
            Some(h)
        }
    }
}

impl<H: Handler> Sim<H> {
    fn new(seed: u64, sc: Scenario, handler: H) -> Sim<H> {
        let shared = Arc::new(Shared::new(1, 0));
        let poll = Poll::new().expect("a poll for the waker");
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("a waker"));
        let (pool, other) = if H::POOLED {
            let pool = Pool::manual(sc.queue);
            let other = Arc::new(Mutex::new(Other {
                held: 0,
                rng: Rng::new(seed.wrapping_mul(31)),
            }));
            let o = other.clone();
            pool.set_preempt(Some(Box::new(move |p: &Pool, at: Point| {
                let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
                // Biased toward the interleavings that matter (FoundationDB's
                // "buggify"): another shard takes every place left just before a
                // reservation, and a worker frees one just before a request to be woken.
                match at {
                    Point::Reserve if o.rng.chance(4) => o.held += p.try_reserve(usize::MAX),
                    Point::WakeOnRoom if o.held > 0 && o.rng.chance(2) => {
                        let held = o.held;
                        let n = 1 + o.rng.below(held);
                        o.held -= n;
                        p.release(n);
                    }
                    _ => {}
                }
            })));
            (Some(pool), Some(other))
        } else {
            (None, None)
        };
        let set = settings(&sc);
        let shard = Shard::new(
            0,
            Arc::new(handler),
            set,
            shared.clone(),
            pool.clone().map(|p| (p, waker)),
            None,
        );
        let (tls, tls12) = match sc.tls {
            Tls::Off => (None, None),
            _ => (
                Some(crate::tls::client_config(&Trust::Any, &[]).expect("a client config")),
                Some(crate::tls::renegotiating_client_config()),
            ),
        };
        Sim {
            sc,
            rng: Rng::new(seed),
            shard,
            shared,
            net: Net::default(),
            clients: HashMap::new(),
            pool,
            other,
            poll,
            events: Events::with_capacity(8),
            jobs: Vec::new(),
            woken: false,
            now: 0,
            next_id: 0,
            drained: false,
            tls,
            tls12,
            tally: Tally::default(),
            hooks: None,
        }
    }

    fn keys(&self) -> Vec<usize> {
        let mut k: Vec<usize> = self.clients.keys().copied().collect();
        k.sort_unstable();
        k
    }

    fn any_client(&mut self) -> Option<usize> {
        let keys = self.keys();
        (!keys.is_empty()).then(|| keys[self.rng.below(keys.len())])
    }

    fn open(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40000 + id as u16);
        // Some peers come over a Unix socket: no address, trusted for PROXY.
        let peer = if self.rng.chance(4) {
            super::Peer::Unix
        } else {
            super::Peer::Ip(peer)
        };
        let Some(key) = self.shard.open(peer, id as u32) else {
            return;
        };
        let tls = match self.sc.tls {
            Tls::Off => None,
            Tls::On => self.tls.as_ref(),
            Tls::Renegotiating => {
                if self.rng.chance(2) {
                    self.tls12.as_ref()
                } else {
                    self.tls.as_ref()
                }
            }
        };
        let cap = *self.rng.pick(&[1, 100, 3000, 70_000, 1 << 20]);
        self.net.put(key, Pipe::new(cap, tls.is_some()));
        let client = Client::new(
            id,
            key,
            self.sc.proto,
            tls,
            proxy_header(self.sc.proxy, id),
            self.sc.handler_timeout.is_some(),
            self.sc.pooled && self.sc.proto == Proto::Json,
        );
        self.clients.insert(key, client);
        self.tally.conns += 1;
        if self.rng.chance(2) {
            // A listener that defers its accepts (TCP_DEFER_ACCEPT) hands the
            // connection over with its first bytes, and the driver drives it at once,
            // before the first readiness edge.
            let c = self.clients.get_mut(&key).expect("a client");
            if c.ready() && self.rng.chance(2) {
                let n = 1 + self.rng.below(3);
                c.send_requests(&mut self.rng, n);
                self.tally.requests += n as u64;
            }
            self.push(key, true);
            self.shard.ready(&mut self.net, key, false);
        }
    }

    /// Hands some of a client's bytes to the network: a new readiness edge.
    fn push(&mut self, key: usize, all: bool) {
        let Some(c) = self.clients.get_mut(&key) else {
            return;
        };
        if c.fin || c.reset || c.unpushed() == 0 {
            return;
        }
        let n = if all {
            c.unpushed()
        } else {
            match self.rng.below(4) {
                0 => 1,
                1 => 1 + self.rng.below(16),
                2 => 1 + self.rng.below(2000),
                _ => c.unpushed(),
            }
        };
        let bytes = c.take_wire(n).to_vec();
        trace(self.now, key, format_args!("push {} bytes", bytes.len()));
        if let Some(p) = self.net.pipe(key) {
            p.to_server.extend(bytes);
        }
        self.shard.ready(&mut self.net, key, false);
    }

    /// A client reads some of what the server sent; if the server waits to write, the
    /// window reopening is a writable edge.
    fn read(&mut self, key: usize, all: bool) -> Result<(), String> {
        let Some(p) = self.net.pipe(key) else {
            return Ok(());
        };
        // Bytes held back for the FIN (MSG_MORE) have not left yet.
        let visible = p.to_client.len() - p.corked;
        let n = if all || self.rng.chance(2) {
            visible
        } else {
            self.rng.below(visible + 1)
        };
        let bytes: Vec<u8> = p.to_client.drain(..n).collect();
        trace(self.now, key, format_args!("read {} bytes", bytes.len()));
        let writable = p.want_write && n > 0;
        if let Some(c) = self.clients.get_mut(&key) {
            let r = c.receive(&bytes);
            trace(
                self.now,
                key,
                format_args!("answered {} of {}", c.answered, c.sent),
            );
            r.map_err(|e| {
                format!(
                    "{e} [client {} key {key}, renegotiated {}, at {} ms]",
                    c.id, c.renegotiate, self.now
                )
            })?;
        }
        if writable {
            self.shard.ready(&mut self.net, key, false);
        }
        Ok(())
    }

    fn half_close(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(&key) else {
            return;
        };
        if c.fin || c.reset {
            return;
        }
        // close_notify once the session is up (in the middle of a handshake it is an
        // abort, which the server rightly counts as a failed handshake).
        if self.sc.tls.is_tls() && c.ready() && self.rng.chance(2) {
            c.close_notify();
        }
        let rest = c.take_wire(usize::MAX).to_vec();
        trace(
            self.now,
            key,
            format_args!("half-close after {} bytes", rest.len()),
        );
        c.fin = true;
        if let Some(p) = self.net.pipe(key) {
            p.to_server.extend(rest);
            p.client_fin = true;
        }
        self.shard.ready(&mut self.net, key, true);
    }

    fn reset(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(&key) else {
            return;
        };
        c.reset = true;
        trace(self.now, key, format_args!("reset"));
        if let Some(p) = self.net.pipe(key) {
            p.reset = true;
        }
        self.shard.ready(&mut self.net, key, true);
    }

    /// Jobs: workers take what waits (freeing places), and finish some of what they
    /// hold, in any order; their completions wake the shard.
    fn run_jobs(&mut self, all: bool) {
        let Some(pool) = self.pool.as_ref() else {
            return;
        };
        self.jobs.extend(pool.take_jobs());
        let mut n = if all {
            self.jobs.len()
        } else {
            self.rng.below(self.jobs.len() + 1)
        };
        while n > 0 && !self.jobs.is_empty() {
            let i = self.rng.below(self.jobs.len());
            let job = self.jobs.swap_remove(i);
            job();
            n -= 1;
        }
    }

    /// Whatever woke the shard's waker (completions, room in the queue).
    fn poll_waker(&mut self) {
        if self.waker_fired() || std::mem::take(&mut self.woken) {
            self.shard.wake(&mut self.net);
        }
    }

    /// Whether the waker fired since the last look (its event is consumed: remember it
    /// in `woken` if it is not acted on at once).
    fn waker_fired(&mut self) -> bool {
        let _ = self.poll.poll(&mut self.events, Some(Duration::ZERO));
        !self.events.is_empty()
    }

    fn other_lets_go(&mut self, all: bool) {
        if let (Some(o), Some(pool)) = (self.other.as_ref(), self.pool.as_ref()) {
            let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
            let n = if all {
                o.held
            } else {
                let held = o.held;
                o.rng.below(held + 1)
            };
            o.held -= n;
            pool.release(n);
        }
    }

    fn resume(&mut self) {
        if self.net.paused {
            self.net.paused = false;
            trace(self.now, 0, format_args!("reading resumed"));
            self.shard.resume_reading(&mut self.net);
        }
    }

    fn drain(&mut self) {
        if self.drained {
            return;
        }
        self.drained = true;
        // The drain resumes reading itself.
        self.net.paused = false;
        self.shared
            .shutdown
            .store(true, std::sync::atomic::Ordering::Release);
        if self.shard.drain_wanted() {
            self.shard.drain(&mut self.net);
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.tally.steps += 1;
        match self.rng.below(100) {
            0..=7 => {
                if !self.drained && self.clients.len() < 6 {
                    self.open();
                }
            }
            8..=37 => {
                if let Some(k) = self.any_client() {
                    self.push(k, false);
                }
            }
            38..=55 => {
                if let Some(k) = self.any_client() {
                    let c = &mut self.clients.get_mut(&k).expect("a client");
                    if c.ready() && !c.fin && !c.reset && !c.told_close && !c.gone {
                        let max = if self.rng.chance(4) { 40 } else { 4 };
                        let n = 1 + self.rng.below(max);
                        c.send_requests(&mut self.rng, n);
                        trace(self.now, k, format_args!("{n} requests"));
                        self.tally.requests += n as u64;
                    }
                }
            }
            56..=75 => {
                if let Some(k) = self.any_client() {
                    self.read(k, false)?;
                }
            }
            76..=77 => {
                // A push: bytes for a client that did not come from its requests (echo
                // has no framing to tell them from an answer).
                if self.sc.proto != Proto::Echo
                    && let Some(k) = self.any_client()
                {
                    let c = self.clients.get_mut(&k).expect("a client");
                    let frame = c.push_frame();
                    let got = self.shard.push(&mut self.net, k, &frame);
                    trace(self.now, k, format_args!("push {}: {got:?}", c.pushes_sent));
                    if got == Pushed::Queued {
                        c.pushes_sent += 1;
                        self.tally.pushes += 1;
                    }
                }
            }
            78..=79 => {
                if let Some(k) = self.any_client() {
                    self.half_close(k);
                }
            }
            80 => {
                if let Some(k) = self.any_client()
                    && self.rng.chance(2)
                {
                    self.reset(k);
                }
            }
            81..=83 => {
                if let Some(k) = self.any_client() {
                    let block = self.rng.chance(2);
                    self.shard.ready(&mut self.net, k, block);
                }
            }
            90 => {
                // A memory budget spent, then given back: stop and resume reading.
                if self.net.paused {
                    self.resume();
                } else if self.rng.chance(2) {
                    self.shard.pause_reading();
                    // A draining shard does not stop reading.
                    self.net.paused = !self.shard.io.draining;
                    self.tally.pauses += u64::from(self.net.paused);
                    trace(
                        self.now,
                        0,
                        format_args!("reading paused {}", self.net.paused),
                    );
                }
            }
            84..=89 => {
                let ms = if self.rng.chance(20) {
                    1 + self.rng.below(5000) as u64
                } else {
                    self.rng.below(30) as u64
                };
                self.now += ms;
            }
            91..=96 => {
                self.run_jobs(false);
                if self.rng.chance(2) {
                    self.other_lets_go(false);
                }
            }
            97 => {
                if self.rng.chance(8) {
                    self.drain();
                }
            }
            _ => {
                if let (Tls::Renegotiating, Some(cfg)) = (self.sc.tls, self.tls12.clone())
                    && let Some(k) = self.any_client()
                {
                    let c = self.clients.get_mut(&k).expect("a client");
                    if !c.renegotiate && !c.fin && !c.reset && !c.told_close && c.ready() {
                        // As openssl's `R` after a long pipeline: more than one read's
                        // worth of requests, then the ClientHello, in one write.
                        let before = c.unpushed();
                        while c.unpushed() < before + 100_000 {
                            c.send_requests(&mut self.rng, 50);
                            self.tally.requests += 50;
                        }
                        let ok = c.start_renegotiation(&cfg);
                        trace(self.now, k, format_args!("renegotiation {ok}"));
                        if ok && self.rng.chance(2) {
                            self.push(k, true);
                        }
                    }
                }
            }
        }
        self.end_turn()
    }

    /// The driver's end of a turn, then the judgement of what closed and the
    /// invariants.
    fn end_turn(&mut self) -> Result<(), String> {
        self.shard.tick(self.now);
        self.poll_waker();
        self.shard.end_turn(&mut self.net);
        if self.shard.drain_wanted() {
            self.shard.drain(&mut self.net);
        }
        if std::env::var_os("REACTOR_SIM_TRACE").is_some() {
            for (k, c) in self.shard.conns.iter() {
                trace(
                    self.now,
                    k,
                    format_args!(
                        "core: stage {:?} flags {:#x} phase {:?} held {} in {:?} out {:?} jobs {} tls {:?}",
                        c.stage,
                        c.flags,
                        c.phase(),
                        c.held_until(),
                        c.input().map(|b| b.len()),
                        c.output().map(|b| b.len()),
                        c.jobs_pending(),
                        c.tls().map(|t| (t.enc, t.held.as_ref().map(|h| h.len())))
                    ),
                );
            }
        }
        self.judge_closes()?;
        self.check()
    }

    fn judge_closes(&mut self) -> Result<(), String> {
        let closes = std::mem::take(&mut self.shard.closes);
        let mut pipes: HashMap<usize, Pipe> = self.net.closed.drain(..).collect();
        for (key, why) in closes {
            trace(self.now, key, format_args!("closed: {why:?}"));
            if self.net.paused && why == Close::ReadTimeout {
                return Err(format!(
                    "key {key} closed for {why:?} while reading is paused: its bytes may be \
                     waiting unread"
                ));
            }
            let Some(mut c) = self.clients.remove(&key) else {
                return Err(format!("closed key {key}, which no client holds"));
            };
            let pipe = pipes
                .remove(&key)
                .ok_or_else(|| format!("key {key} closed without its socket"))?;
            if self.net.paused
                && matches!(why, Close::IdleTimeout | Close::Proxy(Refusal::Timeout))
                && !pipe.to_server.is_empty()
            {
                return Err(format!(
                    "key {key} closed for {why:?} while reading is paused, with {} bytes \
                     unread",
                    pipe.to_server.len()
                ));
            }
            c.gone = true;
            if !c.reset {
                c.receive(&pipe.to_client).map_err(|e| {
                    format!(
                        "{e} [client {} key {key} closed for {why:?}, renegotiated {}, fin {}, \
                         sent {} answered {}, pushed {}]",
                        c.id, c.renegotiate, c.fin, c.sent, c.answered, c.pushed
                    )
                })?;
            }
            self.tally.answers += c.answered;
            judge(&c, why).map_err(|e| {
                format!(
                    "{e} [at {} ms, drained {}, unread by the server {}]\n  counters: {}",
                    self.now,
                    self.drained,
                    pipe.to_server.len(),
                    self.shard.stats_now()
                )
            })?;
        }
        if let Some((k, _)) = pipes.into_iter().next() {
            return Err(format!("socket {k} closed with no close counted"));
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.net.violation.take() {
            return Err(v);
        }
        if let Some(log) = &self.hooks {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = log.violations.first() {
                return Err(format!("hooks: {v}"));
            }
            // Every connection the protocol was told of opening is in the slab, told
            // or not yet told of closing: no close lost, none early.
            let opened = self
                .shard
                .conns
                .iter()
                .filter(|(_, c)| c.has(super::conn::OPENED))
                .count();
            if opened != log.open.len() {
                return Err(format!(
                    "hooks: {} connections open to the protocol, {opened} in the slab",
                    log.open.len()
                ));
            }
        }
        let s = self.shard.stats_now();
        if s.accepted != s.open + s.closed {
            return Err(format!(
                "counters: accepted {} != open {} + closed {}",
                s.accepted, s.open, s.closed
            ));
        }
        if s.open == 0 && s.buffers_lent != 0 {
            return Err(format!(
                "{} buffers lent with no connection open",
                s.buffers_lent
            ));
        }
        // No lost wake-up: a connection that waits for room in the pool's queue has
        // someone to wake it: the queue is full and freeing a place will, or the waker
        // already fired.
        let stalled = self
            .shard
            .io
            .offload
            .as_ref()
            .is_some_and(|o| !o.room_stalled.is_empty());
        if stalled && !self.woken {
            self.woken = self.waker_fired();
        }
        if stalled && !self.woken && !self.pool.as_ref().is_some_and(|p| p.wake_armed()) {
            return Err(
                "connections wait for room in the pool's queue, there is room, and \
                 nothing will wake them: a lost wake-up"
                    .into(),
            );
        }
        // One decode step: a read's worth of answers (a 64 KB read of echo, or of
        // pipelined requests, encrypted), on top of the mark.
        let bound = self.sc.high_water + 2 * 64 * 1024;
        for (key, conn) in self.shard.conns.iter() {
            if conn.backlog() > bound {
                return Err(format!(
                    "connection {key}: {} bytes owed, over the high-water mark {} by more than a decode step",
                    conn.backlog(),
                    self.sc.high_water
                ));
            }
        }
        Ok(())
    }

    /// The end: the clients send and read everything, workers run every job, the other
    /// shard lets go; time moves in small steps (no timeout fires). Then nothing may be
    /// owed: an answer still missing is a connection stuck for good.
    fn quiesce(&mut self) -> Result<(), String> {
        self.resume();
        // The clients now read as fast as anything comes.
        for p in self.net.pipes.iter_mut().flatten() {
            p.cap = p.cap.max(1 << 20);
        }
        // Until nothing moves for a while (a second of the shard's time at least).
        let mut still = 0;
        let mut last = (u64::MAX, u64::MAX);
        while still < 50 {
            for k in self.keys() {
                self.push(k, true);
                self.read(k, true)?;
            }
            self.run_jobs(true);
            self.other_lets_go(true);
            self.now += 20;
            self.end_turn()?;
            let moved = (
                self.net
                    .pipes
                    .iter()
                    .flatten()
                    .map(|p| p.written)
                    .sum::<u64>(),
                self.clients.values().map(|c| c.answered).sum::<u64>(),
            );
            if moved == last {
                still += 1;
            } else {
                still = 0;
                last = moved;
            }
        }
        for (key, c) in &self.clients {
            if !c.reset && !c.gone && c.pushes_owed() > 0 {
                return Err(format!(
                    "client {} (key {key}): {} of {} pushes never came",
                    c.id,
                    c.pushes_owed(),
                    c.pushes_sent
                ));
            }
            if c.reset || c.gone || c.told_close {
                continue;
            }
            if c.owed() > 0 {
                let conn = self.shard.conns.get(*key).map(|c| {
                    format!(
                        "now {} held_until {} timer {} deadline {:?} stage {:?} flags {:#x} phase {:?} input {:?} output {:?} tls {:?} jobs {}",
                        self.now,
                        c.held_until(),
                        c.timer.is_some(),
                        c.deadline(&self.shard.io.set.timeouts, self.now),
                        c.stage,
                        c.flags,
                        c.phase(),
                        c.input().map(|b| b.len()),
                        c.output().map(|b| b.len()),
                        c.tls().map(|t| (t.enc, t.held.as_ref().map(|h| h.len()), t.handshaking)),
                        c.jobs_pending(),
                    )
                });
                let pipe = self.net.pipes.get(*key).and_then(|p| p.as_ref()).map(|p| {
                    format!(
                        "to_server {} to_client {} cap {} want_write {} fin {}",
                        p.to_server.len(),
                        p.to_client.len(),
                        p.cap,
                        p.want_write,
                        p.client_fin
                    )
                });
                return Err(format!(
                    "client {} (key {key}) is owed {} answers that never came (sent {}, \
                     answered {}, pushed {}, unpushed {}, renegotiated {}, fin {}): a \
                     connection stuck\n  core: {conn:?}\n  net: {pipe:?}\n  counters: {}",
                    c.id,
                    c.owed(),
                    c.sent,
                    c.answered,
                    c.pushed,
                    c.unpushed(),
                    c.renegotiate,
                    c.fin,
                    self.shard.stats_now()
                ));
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        self.drain();
        for _ in 0..400 {
            if self.shard.finished() {
                break;
            }
            for k in self.keys() {
                self.push(k, true);
                self.read(k, true)?;
            }
            self.run_jobs(true);
            self.now += 100;
            self.end_turn()?;
            // Clients whose server stopped reading close their side, as browsers do.
            if self.now > 12_000 {
                for k in self.keys() {
                    self.half_close(k);
                }
            }
        }
        if !self.shard.finished() {
            return Err(format!(
                "the drain did not end: {} connections still open",
                self.shard.conns.len()
            ));
        }
        let s = self.shard.stats_now();
        if s.buffers_lent != 0 || s.accepted != s.closed {
            return Err(format!("after the drain: {s}"));
        }
        Ok(())
    }

    fn run(mut self) -> Result<Tally, String> {
        for _ in 0..STEPS {
            self.step()?;
        }
        self.quiesce()?;
        self.finish()?;
        Ok(self.tally)
    }
}

impl Tls {
    fn is_tls(self) -> bool {
        !matches!(self, Tls::Off)
    }
}

/// With `REACTOR_SIM_TRACE` set, every step on a connection is printed.
fn trace(now: u64, key: usize, what: std::fmt::Arguments) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("REACTOR_SIM_TRACE").is_some()) {
        eprintln!("{now:>7} ms  key {key}: {what}");
    }
}

/// Whether a close is allowed, given what the client saw.
fn judge(c: &Client, why: Close) -> Result<(), String> {
    let who = format!("client {} (key {})", c.id, c.key);
    if c.reset {
        return Ok(());
    }
    match why {
        Close::Normal => {
            if c.pushes_owed() > 0 {
                return Err(format!(
                    "{who}: closed normally (fin={}) with {} of {} pushes not delivered",
                    c.fin,
                    c.pushes_owed(),
                    c.pushes_sent
                ));
            }
            if c.owed() > 0 && !c.told_close {
                return Err(format!(
                    "{who}: closed normally (fin={}) owing {} answers to requests it \
                     received whole (sent {}, answered {})",
                    c.fin,
                    c.owed(),
                    c.sent,
                    c.answered
                ));
            }
            Ok(())
        }
        Close::IdleTimeout
        | Close::ReadTimeout
        | Close::WriteTimeout
        | Close::Cut
        | Close::Proxy(Refusal::Timeout) => Ok(()),
        other => Err(format!(
            "{who}: closed for {other:?} though it did nothing wrong"
        )),
    }
}

const ON_PURPOSE: &str = "the simulation's handler panics on purpose";

fn json_service(r: JsonRequest) -> JsonRequest {
    if r.val.starts_with("panic") {
        std::panic::panic_any(ON_PURPOSE);
    }
    r
}

fn run_seed(seed: u64) -> Result<(Scenario, Tally), (Scenario, String)> {
    let mut rng = Rng::new(seed);
    let sc = Scenario::pick(&mut rng);
    let r = match (sc.proto, sc.pooled) {
        (Proto::Echo, _) => {
            let log = Arc::new(Mutex::new(HookLog::default()));
            let hooked = Hooked {
                inner: Echo,
                log: log.clone(),
            };
            let mut sim = Sim::new(seed, sc.clone(), hooked);
            sim.hooks = Some(log);
            sim.run()
        }
        (Proto::Http, false) => Sim::new(seed, sc.clone(), App::new(hello)).run(),
        (Proto::Json, false) => {
            let log = Arc::new(Mutex::new(HookLog::default()));
            let hooked = Hooked {
                inner: Json::default(),
                log: log.clone(),
            };
            let mut sim = Sim::new(seed, sc.clone(), hooked);
            sim.hooks = Some(log);
            sim.run()
        }
        (Proto::Http, true) => Sim::new(seed, sc.clone(), App::new(hello).on_pool()).run(),
        (Proto::Json, true) => Sim::new(
            seed,
            sc.clone(),
            Pooled::new(JsonCodec(Json::default()), json_service),
        )
        .run(),
    };
    match r {
        Ok(t) => Ok((sc, t)),
        Err(e) => Err((sc, e)),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs the seeds asked for (one with `REACTOR_SIM_SEED`, `REACTOR_SIM_SEEDS` of them,
/// or the default), stopping at the first failure with its seed.
#[test]
fn simulation_of_the_connection_core() {
    let _ = env_logger::builder().is_test(true).try_init();
    // The handler's panics on purpose are expected: keep them out of the output.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&ON_PURPOSE) {
            quiet(info);
        }
    }));
    let seeds: Vec<u64> = match env_u64("REACTOR_SIM_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("REACTOR_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    // REACTOR_SIM_ALL=1: run every seed and count the failures (to measure how often a
    // mutant is caught) instead of stopping at the first.
    let all = std::env::var_os("REACTOR_SIM_ALL").is_some();
    let start = Instant::now();
    let mut total = Tally::default();
    let mut failed = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        match run_seed(seed) {
            Ok((_, t)) => {
                total.steps += t.steps;
                total.conns += t.conns;
                total.requests += t.requests;
                total.answers += t.answers;
                total.pauses += t.pauses;
                total.pushes += t.pushes;
            }
            Err((sc, e)) if !all => panic!(
                "simulation failed at seed {seed} (the {}th; replay with \
                 REACTOR_SIM_SEED={seed}): {e}\nscenario: {sc:?}",
                i + 1
            ),
            Err(_) => failed.push(seed),
        }
    }
    if !failed.is_empty() {
        panic!(
            "simulation failed at seed {} and {} more of {} seeds: {:?}",
            failed[0],
            failed.len() - 1,
            seeds.len(),
            &failed[..failed.len().min(20)]
        );
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "simulation: {} seeds in {secs:.1} s ({:.0} seeds/s): {} steps, {} connections, \
         {} requests, {} answers checked, {} pushes, reading paused {} times",
        seeds.len(),
        seeds.len() as f64 / secs,
        total.steps,
        total.conns,
        total.requests,
        total.answers,
        total.pushes,
        total.pauses
    );
}
