//! The reply handle: a one-shot slot that the I/O thread fills and a caller either
//! blocks on (with or without a deadline) or awaits as a [`Future`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Error;

enum State<T> {
    /// Not filled yet; the waker of the task awaiting it, if one is.
    Waiting(Option<Waker>),
    Done(Result<T, Error>),
    Taken,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    filled: Condvar,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock leaves a valid state behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self, r: Result<T, Error>) {
        let waker = {
            let mut st = self.lock();
            match std::mem::replace(&mut *st, State::Done(r)) {
                State::Waiting(w) => w,
                // Filled once only: put the first result back.
                other => {
                    *st = other;
                    return;
                }
            }
        };
        self.filled.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The I/O thread's end. Dropped unfilled (the loop is gone, its channel dropped with the
/// request still in it), it fills the slot with [`Error::PoolClosed`], so no caller
/// waits for ever.
pub(crate) struct Completer<T>(Option<Arc<Slot<T>>>);

impl<T> Completer<T> {
    pub(crate) fn complete(mut self, r: Result<T, Error>) {
        if let Some(s) = self.0.take() {
            s.fill(r);
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.fill(Err(Error::PoolClosed));
        }
    }
}

/// A reply on its way. Block on it with [`wait`](Reply::wait) or
/// [`wait_timeout`](Reply::wait_timeout), or `.await` it: it is a
/// [`Future`] that stores the task's waker and needs no runtime.
///
/// Dropping it does not cancel the request; its reply is dropped when it comes.
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
/// let reply = pool.send(b"later".to_vec());
/// assert_eq!(reply.wait_timeout(std::time::Duration::from_secs(20)).unwrap(), b"later");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Reply<T> {
    slot: Arc<Slot<T>>,
}

/// A connected completer and reply.
pub(crate) fn pair<T>() -> (Completer<T>, Reply<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting(None)),
        filled: Condvar::new(),
    });
    (Completer(Some(slot.clone())), Reply { slot })
}

/// A reply that is already there (a request refused before it was sent).
pub(crate) fn ready<T>(r: Result<T, Error>) -> Reply<T> {
    let (c, reply) = pair();
    c.complete(r);
    reply
}

impl<T> Reply<T> {
    /// Blocks until the reply (or its failure) is there. The pool's response timeout
    /// bounds the wait; with no response timeout it can wait for ever.
    pub fn wait(self) -> Result<T, Error> {
        let mut st = self.slot.lock();
        loop {
            if let Some(r) = take(&mut st) {
                return r;
            }
            st = self.slot.filled.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks at most `d`; [`Error::Timeout`] past it (the request stays in flight, and
    /// its reply is dropped when it comes).
    pub fn wait_timeout(self, d: Duration) -> Result<T, Error> {
        let end = Instant::now() + d;
        let mut st = self.slot.lock();
        loop {
            if let Some(r) = take(&mut st) {
                return r;
            }
            let now = Instant::now();
            if now >= end {
                return Err(Error::Timeout(d));
            }
            st = self
                .slot
                .filled
                .wait_timeout(st, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the reply (or its failure) is there, so `wait` would not block.
    pub fn is_ready(&self) -> bool {
        matches!(&*self.slot.lock(), State::Done(_))
    }
}

fn take<T>(st: &mut State<T>) -> Option<Result<T, Error>> {
    match std::mem::replace(st, State::Taken) {
        State::Done(r) => Some(r),
        State::Taken => Some(Err(Error::Invalid("reply already taken".into()))),
        waiting => {
            *st = waiting;
            None
        }
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.slot.lock();
        if let Some(r) = take(&mut st) {
            return Poll::Ready(r);
        }
        if let State::Waiting(w) = &mut *st
            && !w.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *w = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_completer_fails_the_reply() {
        let (c, r) = pair::<u8>();
        drop(c);
        assert_eq!(r.wait(), Err(Error::PoolClosed));
    }

    #[test]
    fn wait_timeout_gives_up_and_a_fill_from_another_thread_wakes_wait() {
        let (_c, r) = pair::<u8>();
        assert_eq!(
            r.wait_timeout(Duration::from_millis(10)),
            Err(Error::Timeout(Duration::from_millis(10)))
        );
        let (c, r) = pair::<u8>();
        let t = std::thread::spawn(move || c.complete(Ok(7)));
        assert_eq!(r.wait(), Ok(7));
        t.join().unwrap();
    }
}
