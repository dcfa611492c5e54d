//! The worker pool: threads that run work that may block (a handler that sleeps, reads a
//! file, queries a database, burns CPU), so that the event loops never do.
//!
//! The shapes of the project's seeds, in one pool:
//!
//! - a fixed set of `min` workers started up front, fed by one job queue (seed 001);
//! - growth on demand: when a job waits and every worker is busy, another worker starts,
//!   up to `max`; a worker beyond `min` that stays idle for `idle` exits (seed 003, and
//!   tokio's `spawn_blocking` pool, whose idle threads exit after 10 s);
//! - a bound on the jobs waiting (`queue`, the seeds' semaphore). The bound is taken by
//!   *reservation*: a shard reserves room before it decodes requests
//!   ([`try_reserve`](Pool::try_reserve)), so a decoded request always has a place and
//!   the queue never has to refuse one. A shard that finds no room stops reading from the
//!   connection (backpressure) and asks to be woken when room frees
//!   ([`wake_on_room`](Pool::wake_on_room)).
//!
//! The pool knows nothing of connections or loops: a job is a boxed closure that
//! carries its own way home (the shard's completion queue and waker). A job that panics
//! is caught here as a last resort so that a worker never dies with it; the server's jobs
//! catch their own panics first, to answer the request with an error.
//!
//! Worker threads get small stacks (`stack` bytes, 256 KiB by default): what a thread
//! costs is its stack's touched pages (a few KiB for a handler that does not recurse
//! deeply) plus the kernel's task structures (about 10-20 KiB); the mapping itself is
//! virtual.

use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;
use mio::Waker;

/// One unit of work. It must not unwind out (the pool catches it if it does).
pub type Task = Box<dyn FnOnce() + Send + 'static>;

/// How a pool is sized.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Workers started up front and kept for the pool's life.
    pub min: usize,
    /// Most workers at once (at least `min`).
    pub max: usize,
    /// A worker beyond `min` idle this long exits.
    pub idle: Duration,
    /// Most jobs reserved or waiting (not yet started).
    pub queue: usize,
    /// Stack size of a worker thread, in bytes.
    pub stack: usize,
}

/// A snapshot of the pool's gauges and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker threads alive.
    pub workers: u64,
    /// Of those, running a job now.
    pub busy: u64,
    /// Jobs reserved or waiting, not yet started.
    pub queued: u64,
    /// Workers started beyond `min` since the pool started.
    pub grown: u64,
    /// Workers that exited after idling.
    pub retired: u64,
    /// Jobs run to the end (panicked ones included).
    pub done: u64,
}

/// A pool of worker threads. Cheap to share: clones refer to the same pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: PoolConfig,
    state: Mutex<State>,
    work: Condvar,
    /// Signalled when the last worker exits.
    gone: Condvar,
    /// Reserved plus waiting jobs: the queue bound is checked against this.
    queued: AtomicUsize,
    busy: AtomicUsize,
    grown: AtomicU64,
    retired: AtomicU64,
    done: AtomicU64,
    /// Whether some shard waits for room in the queue (checked without the lock on
    /// every job start, so it must be cheap when nobody waits).
    room_wanted: AtomicBool,
    room_waiters: Mutex<Vec<Arc<Waker>>>,
    /// Tests only: a preemption point, called where a shard meets the others (on every
    /// reservation and every request to be woken), so that the simulation can make
    /// "another shard" or "a worker" act exactly there.
    #[cfg(test)]
    preempt: Mutex<Option<Preempt>>,
}

#[cfg(test)]
type Preempt = Box<dyn FnMut(&Pool, Point) + Send>;

/// Tests only: where a shard meets the others.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    /// At the start of a reservation.
    Reserve,
    /// At the start of a request to be woken when room frees.
    WakeOnRoom,
}

struct State {
    jobs: VecDeque<Task>,
    workers: usize,
    idle: usize,
    /// Idle workers already signalled for a job but not yet awake.
    notified: usize,
    /// Workers whose start is decided but who have not yet reached the queue.
    starting: usize,
    shutdown: bool,
    next_name: usize,
}

impl Pool {
    /// Starts `cfg.min` workers.
    pub fn new(mut cfg: PoolConfig) -> io::Result<Pool> {
        cfg.max = cfg.max.max(cfg.min).max(1);
        cfg.queue = cfg.queue.max(1);
        let pool = Pool {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(State {
                    jobs: VecDeque::new(),
                    workers: 0,
                    idle: 0,
                    notified: 0,
                    starting: 0,
                    shutdown: false,
                    next_name: 0,
                }),
                work: Condvar::new(),
                gone: Condvar::new(),
                queued: AtomicUsize::new(0),
                busy: AtomicUsize::new(0),
                grown: AtomicU64::new(0),
                retired: AtomicU64::new(0),
                done: AtomicU64::new(0),
                room_wanted: AtomicBool::new(false),
                room_waiters: Mutex::new(Vec::new()),
                #[cfg(test)]
                preempt: Mutex::new(None),
            }),
        };
        for _ in 0..pool.inner.cfg.min {
            let mut st = pool.inner.lock();
            st.workers += 1;
            st.starting += 1;
            let name = st.next_name;
            st.next_name += 1;
            drop(st);
            if let Err(e) = pool.spawn(name) {
                // Stop the workers already started: nobody else holds this pool.
                let mut st = pool.inner.lock();
                st.workers -= 1;
                st.starting -= 1;
                drop(st);
                pool.shutdown(Duration::ZERO);
                return Err(e);
            }
        }
        Ok(pool)
    }

    /// The configuration the pool runs with (`max` and `queue` raised to sane minimums).
    pub fn config(&self) -> &PoolConfig {
        &self.inner.cfg
    }

    /// Reserves room for up to `want` jobs in the queue and returns how many it got
    /// (0 when the queue is full). Every reserved place is later either filled by
    /// [`submit`](Pool::submit) or given back with [`release`](Pool::release).
    pub fn try_reserve(&self, want: usize) -> usize {
        #[cfg(test)]
        self.preempt(Point::Reserve);
        let cap = self.inner.cfg.queue;
        let mut cur = self.inner.queued.load(Ordering::Relaxed);
        loop {
            let n = want.min(cap.saturating_sub(cur));
            if n == 0 {
                return 0;
            }
            match self.inner.queued.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back `n` reserved places that were not used.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.inner.free_places(n);
        }
    }

    /// Takes `n` places whatever the bound: for jobs a decoder handed over beyond its
    /// reservation (a codec that ignored its limit), so that the count stays exact.
    pub fn force_reserve(&self, n: usize) {
        self.inner.queued.fetch_add(n, Ordering::SeqCst);
    }

    /// Whether the queue has room for one more job now.
    pub fn has_room(&self) -> bool {
        // SeqCst, like the flag below: the waiter stores the flag then loads the count,
        // the worker changes the count then takes the flag; weaker orderings would let
        // both miss each other.
        self.inner.queued.load(Ordering::SeqCst) < self.inner.cfg.queue
    }

    /// Asks for `waker` to be woken the next time a place in the queue frees. The
    /// caller checks [`has_room`](Pool::has_room) again after asking, so that a place
    /// freed in between is not missed.
    pub fn wake_on_room(&self, waker: &Arc<Waker>) {
        #[cfg(test)]
        self.preempt(Point::WakeOnRoom);
        let mut w = self
            .inner
            .room_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|x| Arc::ptr_eq(x, waker)) {
            w.push(waker.clone());
        }
        self.inner.room_wanted.store(true, Ordering::SeqCst);
    }

    /// Queues jobs for which places were reserved, and starts workers if every worker
    /// is busy and the pool may grow.
    pub fn submit(&self, tasks: impl IntoIterator<Item = Task>) {
        let mut st = self.inner.lock();
        let before = st.jobs.len();
        st.jobs.extend(tasks);
        let added = st.jobs.len() - before;
        if added == 0 {
            return;
        }
        // Workers that will take a job without growing the pool: the idle ones (those
        // already signalled take jobs still counted in the queue) and the ones still
        // starting. Grow by what waits beyond them.
        let free = st.idle + st.starting;
        let mut spawn = Vec::new();
        if !st.shutdown {
            let want = st.jobs.len().saturating_sub(free);
            let room = self.inner.cfg.max.saturating_sub(st.workers);
            for _ in 0..want.min(room) {
                st.workers += 1;
                st.starting += 1;
                spawn.push(st.next_name);
                st.next_name += 1;
            }
        }
        let wake = added.min(st.idle.saturating_sub(st.notified));
        st.notified += wake;
        drop(st);
        for _ in 0..wake {
            self.inner.work.notify_one();
        }
        for name in spawn {
            self.inner.grown.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.spawn(name) {
                // The jobs still run on the workers there are.
                warn!("worker pool: starting a worker failed: {e}");
                let mut st = self.inner.lock();
                st.workers -= 1;
                st.starting -= 1;
            }
        }
    }

    /// The pool's gauges and counters now.
    pub fn stats(&self) -> PoolStats {
        let workers = self.inner.lock().workers as u64;
        PoolStats {
            workers,
            busy: self.inner.busy.load(Ordering::Relaxed) as u64,
            queued: self.inner.queued.load(Ordering::Relaxed) as u64,
            grown: self.inner.grown.load(Ordering::Relaxed),
            retired: self.inner.retired.load(Ordering::Relaxed),
            done: self.inner.done.load(Ordering::Relaxed),
        }
    }

    /// Stops the pool: jobs not yet started are dropped, workers exit once their
    /// current job ends. Waits up to `wait` for them to go.
    pub fn shutdown(&self, wait: Duration) {
        let mut st = self.inner.lock();
        st.shutdown = true;
        let dropped = st.jobs.len();
        st.jobs.clear();
        self.inner.queued.fetch_sub(dropped, Ordering::SeqCst);
        self.inner.work.notify_all();
        let end = Instant::now() + wait;
        while st.workers > 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            st = self
                .inner
                .gone
                .wait_timeout(st, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn spawn(&self, name: usize) -> io::Result<()> {
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name(format!("reactor-worker-{name}"))
            .stack_size(self.inner.cfg.stack.max(64 * 1024))
            .spawn(move || inner.work_loop())
            .map(drop)
    }
}

/// What the simulation needs: a pool with no thread, whose jobs it takes and runs
/// itself, in the order it picks, and preemption points.
#[cfg(test)]
impl Pool {
    pub(crate) fn manual(queue: usize) -> Pool {
        let pool = Pool::new(PoolConfig {
            min: 0,
            max: 1,
            idle: Duration::from_secs(3600),
            queue,
            stack: 64 * 1024,
        })
        .expect("a pool with no thread");
        // No worker may start: the jobs are the simulation's to run.
        pool.inner.lock().workers = 1;
        pool
    }

    /// Takes every job waiting, as workers would (each frees its place in the queue).
    pub(crate) fn take_jobs(&self) -> Vec<Task> {
        let jobs: Vec<Task> = self.inner.lock().jobs.drain(..).collect();
        for _ in &jobs {
            self.inner.free_places(1);
        }
        jobs
    }

    /// Whether freeing a place will wake whoever asked: someone asked, and the queue is
    /// full (a place freed from a full queue wakes the waiters).
    pub(crate) fn wake_armed(&self) -> bool {
        self.inner.room_wanted.load(Ordering::SeqCst) && !self.has_room()
    }

    pub(crate) fn set_preempt(&self, f: Option<Preempt>) {
        *self.inner.preempt.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    fn preempt(&self, at: Point) {
        // Taken out while it runs: what it does to the pool meets no preemption point.
        let f = self
            .inner
            .preempt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut f) = f {
            f(self, at);
            let mut slot = self.inner.preempt.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(f);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job never runs under this lock, so a poisoned lock only means a panic
        // inside the pool's own short critical sections: the state is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees `n` places; wakes whoever waits for room, but only when the queue was full:
    /// nobody waits otherwise, and a wake-up per freed place would be a herd.
    fn free_places(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::SeqCst);
        if before >= self.cfg.queue {
            self.room_freed();
        }
    }

    fn room_freed(&self) {
        if self.room_wanted.swap(false, Ordering::SeqCst) {
            let waiters =
                std::mem::take(&mut *self.room_waiters.lock().unwrap_or_else(|e| e.into_inner()));
            for w in waiters {
                let _ = w.wake();
            }
        }
    }

    fn work_loop(&self) {
        let mut st = self.lock();
        st.starting -= 1;
        loop {
            let task = loop {
                if let Some(t) = st.jobs.pop_front() {
                    break t;
                }
                if st.shutdown {
                    self.exit(st);
                    return;
                }
                st.idle += 1;
                let since = Instant::now();
                let mut timed_out = false;
                while st.jobs.is_empty() && !st.shutdown {
                    let left = self.cfg.idle.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        timed_out = true;
                        break;
                    }
                    st = self
                        .work
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    st.notified = st.notified.saturating_sub(1);
                }
                st.idle -= 1;
                if timed_out && st.jobs.is_empty() && st.workers > self.cfg.min {
                    self.retired.fetch_add(1, Ordering::Relaxed);
                    self.exit(st);
                    return;
                }
            };
            drop(st);
            self.free_places(1);
            self.busy.fetch_add(1, Ordering::Relaxed);
            if catch_unwind(AssertUnwindSafe(task)).is_err() {
                warn!("worker pool: a job panicked; the worker goes on");
            }
            self.busy.fetch_sub(1, Ordering::Relaxed);
            self.done.fetch_add(1, Ordering::Relaxed);
            st = self.lock();
        }
    }

    fn exit(&self, mut st: MutexGuard<'_, State>) {
        st.workers -= 1;
        if st.workers == 0 {
            self.gone.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn pool(min: usize, max: usize, idle_ms: u64, queue: usize) -> Pool {
        Pool::new(PoolConfig {
            min,
            max,
            idle: Duration::from_millis(idle_ms),
            queue,
            stack: 256 * 1024,
        })
        .unwrap()
    }

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn reservations_bound_the_queue() {
        let p = pool(1, 1, 10_000, 4);
        assert_eq!(p.try_reserve(3), 3);
        assert_eq!(p.try_reserve(3), 1);
        assert_eq!(p.try_reserve(1), 0);
        assert!(!p.has_room());
        p.release(2);
        assert!(p.has_room());
        assert_eq!(p.try_reserve(5), 2);
        p.release(4);
        assert_eq!(p.stats().queued, 0);
    }

    #[test]
    fn grows_when_all_are_busy_and_retires_idle_workers() {
        let p = pool(1, 4, 100, 64);
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate_rx));
        let (done_tx, done_rx) = mpsc::channel();
        assert_eq!(p.try_reserve(6), 6);
        p.submit((0..6).map(|i| {
            let gate = gate.clone();
            let done = done_tx.clone();
            Box::new(move || {
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(20));
                done.send(i).unwrap();
            }) as Task
        }));
        assert!(wait_until(|| p.stats().workers == 4), "{:?}", p.stats());
        assert_eq!(p.stats().grown, 3);
        for _ in 0..6 {
            gate_tx.send(()).unwrap();
        }
        let mut got: Vec<i32> = (0..6)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
        assert!(wait_until(|| p.stats().workers == 1), "{:?}", p.stats());
        assert_eq!(p.stats().retired, 3);
        assert_eq!(p.stats().queued, 0);
    }

    #[test]
    fn a_panicking_job_does_not_kill_its_worker() {
        let p = pool(1, 1, 10_000, 8);
        let (tx, rx) = mpsc::channel();
        p.try_reserve(2);
        p.submit([
            Box::new(|| -> () { panic!("boom") }) as Task,
            Box::new(move || tx.send(7).unwrap()) as Task,
        ]);
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), 7);
        assert_eq!(p.stats().workers, 1);
    }

    #[test]
    fn freeing_room_wakes_whoever_asked() {
        let p = pool(1, 1, 10_000, 1);
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(1)).unwrap());
        assert_eq!(p.try_reserve(1), 1);
        p.wake_on_room(&waker);
        p.release(1);
        let mut events = mio::Events::with_capacity(4);
        let mut poll = poll;
        poll.poll(&mut events, Some(Duration::from_secs(20)))
            .unwrap();
        assert_eq!(events.iter().count(), 1);
    }
}
