//! The pool: callers' handles ([`Pool`], [`PooledConn`]) and the I/O thread that owns
//! every connection and runs one mio loop for all of them.
//!
//! Callers never touch a socket. A request is a command on a channel; the caller wakes
//! the loop through its `mio::Waker` (once per batch: a flag says a wake-up is already
//! on its way) and gets a [`Reply`]. The loop places the request on a connection,
//! writes it, matches the reply, fills the reply's slot; it also runs every deadline
//! (responses, dials, waiting callers) and the pool's upkeep (idle and lifetime
//! closes, `min_idle`).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use slab::Slab;

use super::codec::Codec;
use super::conn::{Cause, Conn, Phase, dial};
use super::reply::{Completer, Reply, pair, ready};
use super::{Error, Options};

const WAKER: Token = Token(usize::MAX);

/// Connections closed, by why.
///
/// ```
/// let c = reactor::client::ClosedBy { eof: 2, idle: 1, ..Default::default() };
/// assert_eq!(c.eof + c.idle, 3);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedBy {
    /// Connecting failed or timed out.
    pub dial: u64,
    /// A read or write error, or bytes that are not a reply.
    pub error: u64,
    /// The server closed it.
    pub eof: u64,
    /// A request on it timed out.
    pub timeout: u64,
    /// Idle past `idle_timeout`.
    pub idle: u64,
    /// Older than `max_lifetime`.
    pub lifetime: u64,
    /// Found closed by the check before reuse.
    pub check: u64,
    /// Closed with the pool.
    pub pool: u64,
}

/// A snapshot of a pool. Gauges first, then counters since the pool was made.
///
/// ```
/// let s = reactor::client::Stats::default();
/// assert_eq!((s.size, s.closed_total()), (0, 0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections open or connecting.
    pub size: usize,
    /// Connected, nothing in flight, not checked out.
    pub idle: usize,
    /// With requests in flight, or checked out.
    pub in_use: usize,
    /// Still connecting.
    pub connecting: usize,
    /// Requests and `acquire` calls waiting for a connection.
    pub waiting: usize,
    /// Requests sent and not answered yet.
    pub in_flight: usize,
    /// Connections made (dials started).
    pub created: u64,
    pub closed: ClosedBy,
    /// Requests answered and checked.
    pub ok: u64,
    /// Requests failed for any reason (timeouts included).
    pub failed: u64,
    /// Requests that got no reply within the response timeout.
    pub timeouts: u64,
    /// Replies that came after their request had timed out (dropped).
    pub late_replies: u64,
}

impl Stats {
    /// Connections closed, for any reason.
    pub fn closed_total(&self) -> u64 {
        let c = &self.closed;
        c.dial + c.error + c.eof + c.timeout + c.idle + c.lifetime + c.check + c.pool
    }
}

struct Job<C: Codec> {
    req: C::Request,
    done: Completer<C::Reply>,
    /// A checked-out connection (slab key, id), or any.
    conn: Option<(usize, u64)>,
    /// When the caller handed it over: the response deadline counts from here.
    at: Instant,
}

enum Cmd<C: Codec> {
    Send(Job<C>),
    Acquire(Completer<(usize, u64)>, Instant),
    Release(usize, u64),
    Stats(Completer<Stats>),
    Close,
}

/// What callers share with the loop.
struct Handle<C: Codec> {
    tx: Sender<Cmd<C>>,
    waker: Waker,
    /// A wake-up is on its way: callers need not send another. (Not behind the
    /// handle's `Arc`: the loop holding that would keep the pool alive for ever.)
    woken: Arc<AtomicBool>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    last_stats: Arc<Mutex<Stats>>,
    addr: SocketAddr,
    opts: Options,
}

impl<C: Codec> Handle<C> {
    fn cmd(&self, c: Cmd<C>) -> Result<(), Cmd<C>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(c);
        }
        self.tx.send(c).map_err(|e| e.0)?;
        if !self.woken.swap(true, Ordering::AcqRel) {
            // A failed wake-up means the loop is gone; the command's completer is
            // dropped with the channel, which fails the caller.
            let _ = self.waker.wake();
        }
        Ok(())
    }

    fn send(&self, req: C::Request, conn: Option<(usize, u64)>) -> Reply<C::Reply> {
        let (done, reply) = pair();
        let job = Job {
            req,
            done,
            conn,
            at: Instant::now(),
        };
        match self.cmd(Cmd::Send(job)) {
            Ok(()) => reply,
            Err(_) => ready(Err(Error::PoolClosed)),
        }
    }

    fn close(&self) {
        let _ = self.cmd(Cmd::Close);
        self.closed.store(true, Ordering::Release);
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl<C: Codec> Drop for Handle<C> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A pool of connections to one server, all driven by one I/O thread. Cheap to clone
/// (clones share the pool); the pool closes when its last handle (and last checked-out
/// connection) is dropped, or at [`close`](Pool::close).
///
/// ```
/// use reactor::client::{Echo, Options, Pool};
/// let server = reactor::Server::start(
///     &reactor::Config::default()
///         .addr("127.0.0.1:0".parse().unwrap())
///         .protocol(reactor::ProtocolKind::Echo)
///         .threads(1),
/// )?;
/// let pool = Pool::new(server.local_addr(), Echo, Options::default())?;
/// assert_eq!(pool.call(b"hello".to_vec()).unwrap(), b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Pool<C: Codec> {
    h: Arc<Handle<C>>,
}

impl<C: Codec> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool { h: self.h.clone() }
    }
}

impl<C: Codec> Pool<C> {
    /// Starts the pool's I/O thread (and `min_idle` dials). The address is resolved
    /// once, here; connections are made when needed.
    pub fn new(addr: impl ToSocketAddrs, codec: C, opts: Options) -> io::Result<Pool<C>> {
        let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolves to nothing",
            )
        })?;
        if opts.max_size == 0 || opts.max_in_flight == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_size and max_in_flight must be at least 1",
            ));
        }
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (tx, rx) = channel();
        let last_stats = Arc::new(Mutex::new(Stats::default()));
        let h = Arc::new(Handle {
            tx,
            waker,
            woken: Arc::new(AtomicBool::new(false)),
            closed: AtomicBool::new(false),
            thread: Mutex::new(None),
            last_stats: last_stats.clone(),
            addr,
            opts: opts.clone(),
        });
        let mut driver = Driver {
            codec,
            opts,
            addr,
            poll,
            rx,
            conns: Slab::new(),
            waiting: VecDeque::new(),
            acquiring: VecDeque::new(),
            stats: Stats::default(),
            next_id: 0,
            scratch: vec![0; 64 * 1024],
            dirty: Vec::new(),
            last_dial_error: None,
            last_stats,
        };
        let flag = h.woken.clone();
        let woken = move || flag.store(false, Ordering::Release);
        let t = std::thread::Builder::new()
            .name("reactor-client".into())
            .spawn(move || driver.run(woken))?;
        *h.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        Ok(Pool { h })
    }

    /// Hands a request to the pool: it goes on the least busy connection that takes
    /// shared requests (a new one if every one is busy and the pool is not full), with
    /// other requests in flight beside it. Returns at once.
    pub fn send(&self, req: C::Request) -> Reply<C::Reply> {
        self.h.send(req, None)
    }

    /// [`send`](Pool::send) and wait for the reply.
    pub fn call(&self, req: C::Request) -> Result<C::Reply, Error> {
        self.send(req).wait()
    }

    /// Checks out an idle connection for this caller alone (dialling one if the pool
    /// is not full), waiting up to the pool's `wait_timeout`. It goes back to the pool
    /// when the [`PooledConn`] is dropped.
    pub fn acquire(&self) -> Result<PooledConn<C>, Error> {
        let (done, reply) = pair();
        let until = Instant::now() + self.h.opts.wait_timeout;
        if self.h.cmd(Cmd::Acquire(done, until)).is_err() {
            return Err(Error::PoolClosed);
        }
        let (key, id) = reply.wait()?;
        Ok(PooledConn {
            h: self.h.clone(),
            key,
            id,
        })
    }

    /// The pool's state now (after every command handed over before this call).
    pub fn stats(&self) -> Stats {
        let (done, reply) = pair();
        if self.h.cmd(Cmd::Stats(done)).is_ok()
            && let Ok(s) = reply.wait()
        {
            return s;
        }
        *self.h.last_stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the pool: every waiting and in-flight request fails at once with
    /// [`Error::PoolClosed`], every connection is closed, and later calls fail the same
    /// way. Returns once the I/O thread has ended.
    pub fn close(&self) {
        self.h.close();
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.h.addr
    }
}

/// A connection checked out of a pool: requests sent through it go on this connection
/// only, still many in flight at once. Back to the pool on drop.
///
/// ```
/// use reactor::client::{Echo, Options, Pool};
/// let server = reactor::Server::start(
///     &reactor::Config::default()
///         .addr("127.0.0.1:0".parse().unwrap())
///         .protocol(reactor::ProtocolKind::Echo)
///         .threads(1),
/// )?;
/// let pool = Pool::new(server.local_addr(), Echo, Options::default())?;
/// let conn = pool.acquire().unwrap();
/// let (a, b) = (conn.send(b"a".to_vec()), conn.send(b"b".to_vec()));
/// assert_eq!((a.wait().unwrap(), b.wait().unwrap()), (b"a".to_vec(), b"b".to_vec()));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct PooledConn<C: Codec> {
    h: Arc<Handle<C>>,
    key: usize,
    id: u64,
}

impl<C: Codec> PooledConn<C> {
    /// Sends a request on this connection; returns at once.
    pub fn send(&self, req: C::Request) -> Reply<C::Reply> {
        self.h.send(req, Some((self.key, self.id)))
    }

    /// [`send`](PooledConn::send) and wait for the reply.
    pub fn call(&self, req: C::Request) -> Result<C::Reply, Error> {
        self.send(req).wait()
    }

    /// This connection's number, unique in the pool's life.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<C: Codec> Drop for PooledConn<C> {
    fn drop(&mut self) {
        let _ = self.h.cmd(Cmd::Release(self.key, self.id));
    }
}

/// The I/O thread's state.
struct Driver<C: Codec> {
    codec: C,
    opts: Options,
    addr: SocketAddr,
    poll: Poll,
    rx: Receiver<Cmd<C>>,
    conns: Slab<Conn<C>>,
    /// Requests no connection could take yet, oldest first.
    waiting: VecDeque<Job<C>>,
    /// `acquire` calls waiting, oldest first, with their deadlines.
    acquiring: VecDeque<(Completer<(usize, u64)>, Instant)>,
    stats: Stats,
    next_id: u64,
    scratch: Vec<u8>,
    /// Connections with output to flush after this batch of commands.
    dirty: Vec<usize>,
    /// Why the last dial failed at once, for requests that then have no connection.
    last_dial_error: Option<String>,
    last_stats: Arc<Mutex<Stats>>,
}

impl<C: Codec> Driver<C> {
    fn run(&mut self, clear_woken: impl Fn()) {
        let mut events = Events::with_capacity(256);
        self.upkeep(Instant::now());
        loop {
            let timeout = self
                .next_wake()
                .map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::error!("client pool for {}: poll failed: {e}", self.addr);
                break;
            }
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    clear_woken();
                } else {
                    self.on_event(ev.token().0, now);
                }
            }
            if !self.commands(now) {
                break;
            }
            self.upkeep(Instant::now());
        }
        self.shut_down();
    }

    /// Handles every queued command; `false` on Close.
    fn commands(&mut self, now: Instant) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Send(job)) => self.place(job, now),
                Ok(Cmd::Acquire(done, until)) => self.acquiring.push_back((done, until)),
                Ok(Cmd::Release(key, id)) => {
                    if let Some(c) = self.conns.get_mut(key).filter(|c| c.id == id) {
                        c.checked_out = false;
                        c.last_active = now;
                    }
                }
                Ok(Cmd::Stats(done)) => {
                    self.flush_dirty();
                    done.complete(Ok(self.snapshot()));
                }
                Ok(Cmd::Close) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => break,
            }
        }
        self.flush_dirty();
        true
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if let Err(why) = c.flush(self.poll.registry(), key) {
                self.close(key, Cause::Error, &Error::Closed(why));
            }
        }
        self.dirty = dirty;
    }

    fn on_event(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        match c.on_ready(
            &self.codec,
            &mut self.scratch,
            self.poll.registry(),
            key,
            now,
        ) {
            Ok(d) => {
                self.stats.ok += d.ok;
                self.stats.failed += d.bad;
                self.stats.late_replies += d.late;
            }
            Err((Cause::Dial, why)) => self.close(
                key,
                Cause::Dial,
                &Error::Connect(format!("{}: {why}", self.addr)),
            ),
            Err((cause, why)) => self.close(key, cause, &Error::Closed(why)),
        }
    }

    /// Puts a request on a connection, or in the waiting line.
    fn place(&mut self, job: Job<C>, now: Instant) {
        if let Some((key, id)) = job.conn {
            if self.conns.get(key).is_some_and(|c| c.id == id) {
                self.push(key, job, now);
            } else {
                self.stats.failed += 1;
                job.done.complete(Err(Error::Closed(
                    "the checked-out connection was closed".into(),
                )));
            }
            return;
        }
        match self.pick(now) {
            Some(key) => self.push(key, job, now),
            None if self.conns.is_empty() => {
                let why = self.last_dial_error.clone().unwrap_or_default();
                self.stats.failed += 1;
                job.done.complete(Err(Error::Connect(why)));
            }
            None => self.waiting.push_back(job),
        }
    }

    fn push(&mut self, key: usize, job: Job<C>, now: Instant) {
        let deadline = self.opts.response_timeout.map(|t| job.at + t);
        let c = &mut self.conns[key];
        match c.push(&self.codec, job.req, job.done, deadline, now) {
            Ok(()) => {
                if c.phase == Phase::Ready {
                    self.dirty.push(key);
                }
            }
            Err((done, e)) => {
                self.stats.failed += 1;
                done.complete(Err(e));
            }
        }
    }

    /// The connection a shared request should go on: the least busy of those that
    /// take shared requests; a new one when all are busy and there is room.
    fn pick(&mut self, now: Instant) -> Option<usize> {
        loop {
            let best = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    !c.checked_out && c.retiring.is_none() && c.live < self.opts.max_in_flight
                })
                .min_by_key(|(_, c)| c.live)
                .map(|(k, c)| (k, c.live));
            match best {
                Some((k, 0)) if self.stale(k, now) => {
                    if !self.conns[k].looks_alive() {
                        self.close(k, Cause::Check, &Error::Closed("found closed".into()));
                        continue;
                    }
                    self.conns[k].last_active = now;
                    return Some(k);
                }
                Some((k, 0)) => return Some(k),
                Some((k, _)) if self.conns.len() >= self.opts.max_size => return Some(k),
                _ if self.conns.len() < self.opts.max_size => return self.open(now),
                _ => return None,
            }
        }
    }

    /// Whether a ready connection has been idle long enough to be checked before reuse.
    fn stale(&self, key: usize, now: Instant) -> bool {
        let c = &self.conns[key];
        c.phase == Phase::Ready
            && self
                .opts
                .check_after
                .is_some_and(|d| now.saturating_duration_since(c.last_active) >= d)
    }

    /// Starts a connection. A dial that fails at once is counted and gives `None`.
    fn open(&mut self, now: Instant) -> Option<usize> {
        self.stats.created += 1;
        let sock = match dial(self.addr, &self.opts) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("{}: {e}", self.addr);
                self.stats.closed.dial += 1;
                self.fail_waiting_dial(&why);
                self.last_dial_error = Some(why);
                return None;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut c = Conn::new(sock, id, now, now + self.opts.dial_timeout);
        if let Err(e) = c.register(self.poll.registry(), key) {
            let why = format!("register: {e}");
            self.stats.closed.dial += 1;
            self.fail_waiting_dial(&why);
            self.last_dial_error = Some(why);
            return None;
        }
        entry.insert(c);
        Some(key)
    }

    /// A dial failed before a connection existed: the requests and acquires that wait
    /// for one would wait for nothing when no connection is left.
    fn fail_waiting_dial(&mut self, why: &str) {
        if !self.conns.is_empty() {
            return;
        }
        let err = Error::Connect(why.to_string());
        for job in self.waiting.drain(..) {
            self.stats.failed += 1;
            job.done.complete(Err(err.clone()));
        }
        for (done, _) in self.acquiring.drain(..) {
            done.complete(Err(err.clone()));
        }
    }

    fn close(&mut self, key: usize, cause: Cause, err: &Error) {
        let Some(mut c) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.sock);
        self.stats.failed += c.live as u64;
        c.fail_all(err);
        let b = &mut self.stats.closed;
        *match cause {
            Cause::Dial => &mut b.dial,
            Cause::Error => &mut b.error,
            Cause::Eof => &mut b.eof,
            Cause::Timeout => &mut b.timeout,
            Cause::Idle => &mut b.idle,
            Cause::Lifetime => &mut b.lifetime,
            Cause::Check => &mut b.check,
            Cause::Pool => &mut b.pool,
        } += 1;
        // With no connection left, a failed dial fails those waiting for one, as a
        // refused connection should: clearly and at once.
        if cause == Cause::Dial
            && let Error::Connect(why) = err
        {
            let why = why.clone();
            self.fail_waiting_dial(&why);
        }
    }

    /// Deadlines and the pool's upkeep, once per turn.
    fn upkeep(&mut self, now: Instant) {
        let timeout = self.opts.response_timeout.unwrap_or_default();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &mut self.conns[key];
            if let Phase::Connecting { until } = c.phase
                && until <= now
            {
                let why = format!(
                    "{}: not connected within {:?}",
                    self.addr, self.opts.dial_timeout
                );
                self.close(key, Cause::Dial, &Error::Connect(why));
                continue;
            }
            let n = c.expire(now, timeout);
            if n > 0 {
                self.stats.timeouts += n;
                self.stats.failed += n;
                c.retiring.get_or_insert(Cause::Timeout);
            }
            if c.retiring.is_none()
                && self
                    .opts
                    .max_lifetime
                    .is_some_and(|l| now.saturating_duration_since(c.created) >= l)
            {
                c.retiring = Some(Cause::Lifetime);
            }
            if let Some(cause) = c.retiring
                && c.live == 0
                && !c.checked_out
            {
                let err = Error::Closed("connection retired".into());
                self.close(key, cause, &err);
            }
        }
        self.close_idle(now);
        self.serve_waiting(now);
        self.fill_min_idle(now);
    }

    fn close_idle(&mut self, now: Instant) {
        let Some(limit) = self.opts.idle_timeout else {
            return;
        };
        let mut idle = self.conns.iter().filter(|(_, c)| c.is_idle()).count();
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle() && now.saturating_duration_since(c.last_active) >= limit)
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            if idle <= self.opts.min_idle {
                break;
            }
            idle -= 1;
            self.close(key, Cause::Idle, &Error::Closed("idle".into()));
        }
    }

    /// Gives connections to waiting acquires, then to waiting requests; fails those
    /// whose wait is over; dials for those still waiting.
    fn serve_waiting(&mut self, now: Instant) {
        let wait = self.opts.wait_timeout;
        while let Some((_, until)) = self.acquiring.front() {
            if *until <= now {
                if let Some((done, _)) = self.acquiring.pop_front() {
                    done.complete(Err(Error::PoolTimeout(wait)));
                }
                continue;
            }
            let Some(key) = self.idle_conn(now) else {
                break;
            };
            if let Some((done, _)) = self.acquiring.pop_front() {
                let c = &mut self.conns[key];
                c.checked_out = true;
                c.last_active = now;
                done.complete(Ok((key, c.id)));
            }
        }
        // Dial for acquires no connection in progress will serve.
        let connecting = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Connecting { .. }) && c.live == 0)
            .count();
        for _ in connecting..self.acquiring.len() {
            if self.conns.len() >= self.opts.max_size || self.open(now).is_none() {
                break;
            }
        }
        while let Some(job) = self.waiting.front() {
            if job.at + wait <= now {
                if let Some(job) = self.waiting.pop_front() {
                    self.stats.failed += 1;
                    job.done.complete(Err(Error::PoolTimeout(wait)));
                }
                continue;
            }
            let Some(key) = self.pick(now) else {
                break;
            };
            if let Some(job) = self.waiting.pop_front() {
                self.push(key, job, now);
            }
        }
        self.flush_dirty();
    }

    /// An idle connection for `acquire`, checked first if it has been idle a while.
    fn idle_conn(&mut self, now: Instant) -> Option<usize> {
        loop {
            let key = self
                .conns
                .iter()
                .filter(|(_, c)| c.is_idle())
                .map(|(k, _)| k)
                .next()?;
            if self.stale(key, now) && !self.conns[key].looks_alive() {
                self.close(key, Cause::Check, &Error::Closed("found closed".into()));
                continue;
            }
            return Some(key);
        }
    }

    fn fill_min_idle(&mut self, now: Instant) {
        let ready_or_coming = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.is_idle() || (matches!(c.phase, Phase::Connecting { .. }) && c.live == 0)
            })
            .count();
        for _ in ready_or_coming..self.opts.min_idle {
            if self.conns.len() >= self.opts.max_size || self.open(now).is_none() {
                break;
            }
        }
    }

    /// When the loop must wake up next, with no event: the earliest deadline.
    fn next_wake(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for (_, c) in self.conns.iter() {
            if let Some(d) = c.next_deadline() {
                at(d);
            }
            if c.is_idle()
                && let Some(l) = self.opts.idle_timeout
            {
                at(c.last_active + l);
            }
            if c.retiring.is_none()
                && let Some(l) = self.opts.max_lifetime
            {
                at(c.created + l);
            }
        }
        if let Some(j) = self.waiting.front() {
            at(j.at + self.opts.wait_timeout);
        }
        if let Some((_, until)) = self.acquiring.front() {
            at(*until);
        }
        // epoll counts whole milliseconds: never wake a hair early and spin.
        t.map(|t| t + Duration::from_millis(1))
    }

    fn snapshot(&self) -> Stats {
        let mut s = self.stats;
        s.size = self.conns.len();
        s.idle = self.conns.iter().filter(|(_, c)| c.is_idle()).count();
        s.connecting = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Connecting { .. }))
            .count();
        s.in_use = self
            .conns
            .iter()
            .filter(|(_, c)| c.live > 0 || c.checked_out)
            .count();
        s.in_flight = self.conns.iter().map(|(_, c)| c.live).sum();
        s.waiting = self.waiting.len() + self.acquiring.len();
        s
    }

    /// Close: fail everything waiting or in flight at once, close every connection.
    fn shut_down(&mut self) {
        let err = Error::PoolClosed;
        for job in self.waiting.drain(..) {
            self.stats.failed += 1;
            job.done.complete(Err(err.clone()));
        }
        for (done, _) in self.acquiring.drain(..) {
            done.complete(Err(err.clone()));
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, Cause::Pool, &err);
        }
        let snap = self.snapshot();
        *self.last_stats.lock().unwrap_or_else(|e| e.into_inner()) = snap;
        // Commands still queued fail as their completers drop with the channel; those
        // asking for statistics get the last ones.
        while let Ok(cmd) = self.rx.try_recv() {
            if let Cmd::Stats(done) = cmd {
                done.complete(Ok(snap));
            }
        }
    }
}
