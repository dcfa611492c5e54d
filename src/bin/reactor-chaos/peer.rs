//! One connection's state machine: connect, write an exchange's requests fragment by
//! fragment, end it the way its behaviour says, read and check the answers, and again
//! until the run's deadline. Blocking sockets, one thread per peer; every wait is
//! bounded by `--timeout`, so a stuck server shows as a loss, not a hang.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::behaviour::Behaviour;
use crate::exchange::Exchange;
use crate::faults::Proxy;
use crate::options::Opts;
use crate::rng::Rng;
use crate::stream::{Dialer, Stream};
use crate::tally::Tally;

/// Failures of each kind a peer describes in full (the rest are only counted).
const DESCRIBED: usize = 3;

enum State {
    /// No connection: open one, or stop if the run is over.
    Closed,
    /// Connected with no exchange under way (after a keep-alive one).
    Idle(Stream),
    /// Writing the requests, one fragment per step.
    Sending(Stream, Exchange),
    /// Every fragment written: end the exchange the way its behaviour says.
    Ending(Stream, Exchange),
    /// Reading the answers (a half-closed exchange: until EOF).
    Reading(Stream, Exchange),
    Done,
}

/// How an exchange ended.
enum Outcome {
    /// As it should (for an abort or a reset, whatever the answers).
    Ok,
    /// The server closed before every answer came.
    Lost(String),
    /// An answer was wrong.
    Corrupt(String),
    /// The connection failed (reset, refused, timed out).
    Error(String),
}

pub(crate) struct Peer<'a> {
    id: usize,
    opts: &'a Opts,
    dialer: &'a Dialer,
    /// The fault proxy the connections go through, which says which it cut.
    proxy: Option<&'a Proxy>,
    deadline: Instant,
    rng: Rng,
    /// The last request number used.
    uid: u64,
    tally: Tally,
    scratch: Vec<u8>,
}

impl<'a> Peer<'a> {
    pub(crate) fn new(
        id: usize,
        opts: &'a Opts,
        seed: u64,
        dialer: &'a Dialer,
        proxy: Option<&'a Proxy>,
        deadline: Instant,
    ) -> Self {
        Peer {
            id,
            opts,
            dialer,
            proxy,
            deadline,
            rng: Rng::new(seed, id as u64),
            // Request numbers unique across connections (the echo payload starts with
            // its number).
            uid: (id as u64) << 40,
            tally: Tally::default(),
            scratch: vec![0; 64 * 1024],
        }
    }

    pub(crate) fn run(mut self) -> Tally {
        let mut state = State::Closed;
        loop {
            state = match state {
                State::Done => return self.tally,
                s => self.step(s),
            };
        }
    }

    fn over(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn step(&mut self, state: State) -> State {
        match state {
            State::Closed if self.over() => State::Done,
            State::Closed => match self.dialer.connect() {
                Ok(s) => {
                    self.tally.connections += 1;
                    self.begin(s)
                }
                Err(e) => {
                    self.tally.errors += 1;
                    self.describe("error", format!("connect: {e}"));
                    // The server is gone or full: do not spin on it.
                    std::thread::sleep(Duration::from_millis(10));
                    State::Closed
                }
            },
            // The run is over: close the kept-alive connection.
            State::Idle(_) if self.over() => State::Done,
            State::Idle(s) => self.begin(s),
            State::Sending(mut s, mut ex) => {
                let Some(bytes) = ex.next_write() else {
                    return State::Ending(s, ex);
                };
                match s.write_all(bytes).and_then(|()| s.flush()) {
                    Ok(()) => {
                        ex.writes += 1;
                        State::Sending(s, ex)
                    }
                    Err(e) => self.settle(&s, &ex, Outcome::Error(format!("write: {e}"))),
                }
            }
            State::Ending(mut s, ex) => match ex.behaviour {
                Behaviour::HalfClose => match s.half_close() {
                    Ok(()) => State::Reading(s, ex),
                    Err(e) => self.settle(&s, &ex, Outcome::Error(format!("shutdown: {e}"))),
                },
                Behaviour::Graceful | Behaviour::KeepAlive | Behaviour::SlowRead => {
                    State::Reading(s, ex)
                }
                Behaviour::Abort => {
                    let next = self.settle(&s, &ex, Outcome::Ok);
                    drop(s);
                    next
                }
                Behaviour::Reset => {
                    let next = self.settle(&s, &ex, Outcome::Ok);
                    s.reset();
                    next
                }
            },
            State::Reading(mut s, mut ex) => {
                let half_closed = ex.behaviour == Behaviour::HalfClose;
                let room = if ex.behaviour == Behaviour::SlowRead {
                    std::thread::sleep(Duration::from_micros(self.rng.range(0, 2000) as u64));
                    self.rng.range(1, 256)
                } else {
                    self.scratch.len()
                };
                let n = match s.read(&mut self.scratch[..room]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => return State::Reading(s, ex),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        let what = if ex.complete() {
                            "no EOF after the last answer of a half-closed exchange".to_string()
                        } else {
                            format!("no answer for {:?}", self.opts.timeout)
                        };
                        return self.settle(&s, &ex, Outcome::Error(what));
                    }
                    Err(e) => return self.settle(&s, &ex, Outcome::Error(format!("read: {e}"))),
                };
                if n == 0 {
                    let outcome = if ex.complete() && ex.partial() == 0 {
                        Outcome::Ok
                    } else {
                        Outcome::Lost(format!(
                            "EOF after {} of {} answers{}",
                            ex.answered,
                            ex.requests.len(),
                            match ex.partial() {
                                0 => String::new(),
                                p => format!(" and {p} bytes of the next"),
                            }
                        ))
                    };
                    return self.settle(&s, &ex, outcome);
                }
                if let Err(e) = ex.take(self.opts.protocol, &self.scratch[..n]) {
                    return self.settle(&s, &ex, Outcome::Corrupt(e));
                }
                if !ex.complete() || half_closed {
                    return State::Reading(s, ex);
                }
                let keep = ex.behaviour == Behaviour::KeepAlive;
                self.settle(&s, &ex, Outcome::Ok);
                if keep { State::Idle(s) } else { State::Closed }
            }
            State::Done => State::Done,
        }
    }

    /// Starts the next exchange on `s`.
    fn begin(&mut self, s: Stream) -> State {
        let ex = Exchange::plan(self.opts, &mut self.rng, &mut self.uid);
        State::Sending(s, ex)
    }

    /// Counts an exchange that has ended on `s`; the connection is dropped unless the
    /// caller keeps it. Called with the connection still open, so that its port is not
    /// yet another connection's when the fault proxy is asked whether it cut it.
    fn settle(&mut self, s: &Stream, ex: &Exchange, outcome: Outcome) -> State {
        let t = &mut self.tally;
        t.exchanges += 1;
        let sent = ex.requests_sent() as u64;
        t.requests += sent;
        match ex.behaviour {
            Behaviour::HalfClose => t.half_closes += 1,
            Behaviour::Graceful => t.graceful += 1,
            Behaviour::SlowRead => t.slow_reads += 1,
            Behaviour::KeepAlive => t.keep_alives += 1,
            Behaviour::Abort => t.aborted += 1,
            Behaviour::Reset => t.resets += 1,
        }
        if ex.behaviour.checked() {
            t.answers += ex.answered as u64;
            t.answer_bytes += ex.answer_bytes;
        } else {
            t.unchecked += sent;
        }
        // Requests sent whose answer did not come (or came wrong).
        let missing = sent.saturating_sub(ex.answered as u64);
        // A connection the proxy cut lost its answers to the proxy, not the server; a
        // wrong answer is wrong all the same (a cut only ends a stream early).
        let cut = self.proxy.is_some_and(|p| p.was_cut(s.local_port()));
        let (kind, why) = match outcome {
            Outcome::Ok => return State::Closed,
            Outcome::Lost(_) | Outcome::Error(_) if cut => {
                t.cut_exchanges += 1;
                if ex.behaviour.checked() {
                    t.cut += missing;
                }
                return State::Closed;
            }
            Outcome::Lost(why) => {
                t.lost += missing;
                ("lost", why)
            }
            Outcome::Corrupt(why) => {
                // The answers from the wrong one on cannot be trusted.
                t.corrupt += missing;
                ("corrupt", why)
            }
            Outcome::Error(why) => {
                t.errors += 1;
                if ex.behaviour.checked() {
                    t.lost += missing;
                }
                ("error", why)
            }
        };
        let what = format!(
            "{} exchange of {} requests in {} writes, {} answered: {why}",
            ex.behaviour.name(),
            ex.requests.len(),
            ex.cuts.len(),
            ex.answered,
        );
        self.describe(kind, what);
        State::Closed
    }

    fn describe(&mut self, kind: &str, what: String) {
        let line = format!("{kind}: connection {}: {what}", self.id);
        self.tally.note(line, DESCRIBED);
    }
}
