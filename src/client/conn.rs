//! One client connection: dialling, the requests in flight, reading and matching
//! replies, writing what is pending. Sans policy: the pool's loop decides where a
//! request goes and when a connection is closed; this says what happened.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Socket, TcpKeepalive, Type};

use super::codec::{Codec, Matching};
use super::reply::Completer;
use super::{Error, Options};

/// Why a connection was closed, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Connecting failed or took longer than the dial timeout.
    Dial,
    /// A read or write error, or bytes that are not a reply.
    Error,
    /// The server closed it.
    Eof,
    /// A request on it timed out.
    Timeout,
    /// Idle past the idle timeout.
    Idle,
    /// Older than the maximum lifetime.
    Lifetime,
    /// Found closed by the check before reuse.
    Check,
    /// The pool was closed.
    Pool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Connecting { until: Instant },
    Ready,
}

/// A request in flight. With `done` taken it is a tombstone: its caller has had a
/// timeout, and the reply, if it ever comes, is read and dropped.
struct Entry<C: Codec> {
    sent: C::Sent,
    done: Option<Completer<C::Reply>>,
    deadline: Option<Instant>,
}

/// What a turn of I/O did, for the pool's counters.
#[derive(Default)]
pub(crate) struct Done {
    pub ok: u64,
    pub bad: u64,
    pub late: u64,
    pub became_ready: bool,
}

pub(crate) struct Conn<C: Codec> {
    pub sock: TcpStream,
    /// Unique in the pool's life (slab keys are reused).
    pub id: u64,
    pub phase: Phase,
    pub created: Instant,
    /// Last request or reply, for the idle timeout and the check before reuse.
    pub last_active: Instant,
    /// Handed out by `acquire`: takes only its holder's requests.
    pub checked_out: bool,
    /// Takes no new shared request; closed once it has none live and is not checked out.
    pub retiring: Option<Cause>,
    /// Requests in flight whose callers still wait (tombstones not counted).
    pub live: usize,
    out: Vec<u8>,
    input: Vec<u8>,
    ordered: VecDeque<Entry<C>>,
    keyed: HashMap<String, Entry<C>>,
    /// Keys in the order sent, with their deadlines: the deadlines' order, since every
    /// request gets the same timeout. Stale entries (answered keys) are skipped.
    key_order: VecDeque<(Instant, String)>,
    want_write: bool,
}

/// Opens a non-blocking socket with the options set and starts connecting.
pub(crate) fn dial(addr: SocketAddr, opts: &Options) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(opts.nodelay)?;
    if let Some(idle) = opts.keepalive {
        s.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    if opts.linger_zero {
        s.set_linger(Some(std::time::Duration::ZERO))?;
    }
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

impl<C: Codec> Conn<C> {
    pub fn new(sock: TcpStream, id: u64, now: Instant, until: Instant) -> Self {
        Conn {
            sock,
            id,
            phase: Phase::Connecting { until },
            created: now,
            last_active: now,
            checked_out: false,
            retiring: None,
            live: 0,
            out: Vec::new(),
            input: Vec::new(),
            ordered: VecDeque::new(),
            keyed: HashMap::new(),
            key_order: VecDeque::new(),
            want_write: true,
        }
    }

    pub fn register(&mut self, reg: &Registry, key: usize) -> io::Result<()> {
        reg.register(
            &mut self.sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Idle: connected, nothing in flight, not handed out, not retiring.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Ready && self.live == 0 && !self.checked_out && self.retiring.is_none()
    }

    /// Queues a request (written on the next flush). On refusal the completer comes
    /// back with the reason.
    pub fn push(
        &mut self,
        codec: &C,
        req: C::Request,
        done: Completer<C::Reply>,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<(), (Completer<C::Reply>, Error)> {
        let mark = self.out.len();
        let (key, sent) = match codec.encode(req, &mut self.out) {
            Ok(k) => k,
            Err(e) => {
                self.out.truncate(mark);
                return Err((done, e));
            }
        };
        let entry = |done| Entry {
            sent,
            done: Some(done),
            deadline,
        };
        match codec.matching() {
            Matching::Order => self.ordered.push_back(entry(done)),
            Matching::Key => {
                let Some(key) = key else {
                    self.out.truncate(mark);
                    return Err((done, Error::Invalid("a keyed request without a key".into())));
                };
                if self.keyed.contains_key(&key) {
                    self.out.truncate(mark);
                    return Err((done, Error::KeyInFlight(key)));
                }
                if let Some(d) = deadline {
                    self.key_order.push_back((d, key.clone()));
                }
                self.keyed.insert(key, entry(done));
            }
        }
        self.live += 1;
        self.last_active = now;
        Ok(())
    }

    /// Handles readiness: finishes connecting, reads until WouldBlock, completes every
    /// reply read, writes what is pending. `Err` means: close it, for this cause.
    pub fn on_ready(
        &mut self,
        codec: &C,
        scratch: &mut [u8],
        reg: &Registry,
        key: usize,
        now: Instant,
    ) -> Result<Done, (Cause, String)> {
        let mut done = Done::default();
        if let Phase::Connecting { .. } = self.phase {
            match self.sock.take_error() {
                Ok(Some(e)) | Err(e) => return Err((Cause::Dial, e.to_string())),
                Ok(None) => {}
            }
            match self.sock.peer_addr() {
                Ok(_) => {
                    self.phase = Phase::Ready;
                    self.last_active = now;
                    done.became_ready = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(done),
                Err(e) => return Err((Cause::Dial, e.to_string())),
            }
        }
        let mut eof = false;
        loop {
            match self.sock.read(scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.input.extend_from_slice(&scratch[..n]),
                Err(e) if would_block(&e) => break,
                Err(e) if interrupted(&e) => {}
                Err(e) => return Err((Cause::Error, format!("read: {e}"))),
            }
        }
        if !self.input.is_empty() {
            self.take_replies(codec, now, &mut done)
                .map_err(|e| (Cause::Error, e))?;
        }
        if eof {
            return Err((Cause::Eof, "the server closed the connection".into()));
        }
        self.flush(reg, key).map_err(|e| (Cause::Error, e))?;
        Ok(done)
    }

    fn take_replies(&mut self, codec: &C, now: Instant, done: &mut Done) -> Result<(), String> {
        let mut pos = 0;
        let result = loop {
            let next = match codec.matching() {
                Matching::Order => self.ordered.front().map(|e| &e.sent),
                Matching::Key => None,
            };
            let frame = match codec.frame(&self.input[pos..], next) {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if frame.len == 0 {
                break Err("the codec framed an empty reply".into());
            }
            pos += frame.len;
            let entry = match codec.matching() {
                Matching::Order => self.ordered.pop_front(),
                Matching::Key => frame.key.as_ref().and_then(|k| self.keyed.remove(k)),
            };
            let Some(entry) = entry else {
                break Err(match frame.key {
                    Some(k) => format!("a reply for Uid {k:?}, which is not in flight"),
                    None => "a reply with no request in flight".into(),
                });
            };
            self.last_active = now;
            let Some(slot) = entry.done else {
                done.late += 1;
                continue;
            };
            self.live -= 1;
            match codec.check(entry.sent, frame.reply) {
                Ok(r) => {
                    done.ok += 1;
                    slot.complete(Ok(r));
                }
                Err(e) => {
                    done.bad += 1;
                    slot.complete(Err(Error::BadReply(e)));
                }
            }
        };
        self.input.drain(..pos);
        // Replies mostly come in order: drop the deadlines of answered keys from the
        // front, so the list stays as short as what is in flight.
        while let Some((d, k)) = self.key_order.front() {
            match self.keyed.get(k) {
                Some(e) if e.deadline == Some(*d) && e.done.is_some() => break,
                _ => {
                    self.key_order.pop_front();
                }
            }
        }
        result
    }

    /// Writes until done or WouldBlock; asks for WRITABLE only while output is left.
    pub fn flush(&mut self, reg: &Registry, key: usize) -> Result<(), String> {
        if self.phase != Phase::Ready {
            return Ok(());
        }
        let mut off = 0;
        while off < self.out.len() {
            match self.sock.write(&self.out[off..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => off += n,
                Err(e) if would_block(&e) => break,
                Err(e) if interrupted(&e) => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        self.out.drain(..off);
        let want = !self.out.is_empty();
        if want != self.want_write {
            self.want_write = want;
            let i = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            reg.reregister(&mut self.sock, Token(key), i)
                .map_err(|e| format!("reregister: {e}"))?;
        }
        Ok(())
    }

    /// Fails every live request whose deadline has passed with [`Error::Timeout`],
    /// leaving a tombstone in its place. Returns how many.
    pub fn expire(&mut self, now: Instant, timeout: std::time::Duration) -> u64 {
        let mut n = 0;
        for e in self.ordered.iter_mut() {
            match e.deadline {
                Some(d) if d <= now => {}
                Some(_) => break,
                None => continue,
            }
            if let Some(slot) = e.done.take() {
                slot.complete(Err(Error::Timeout(timeout)));
                n += 1;
            }
        }
        while let Some((d, _)) = self.key_order.front() {
            if *d > now {
                break;
            }
            let Some((d, key)) = self.key_order.pop_front() else {
                break;
            };
            if let Some(e) = self.keyed.get_mut(&key)
                && e.deadline == Some(d)
                && let Some(slot) = e.done.take()
            {
                slot.complete(Err(Error::Timeout(timeout)));
                n += 1;
            }
        }
        self.live -= n as usize;
        n
    }

    /// The earliest deadline of a live request, or of the dial.
    pub fn next_deadline(&self) -> Option<Instant> {
        let dial = match self.phase {
            Phase::Connecting { until } => Some(until),
            Phase::Ready => None,
        };
        let req = self
            .ordered
            .iter()
            .find(|e| e.done.is_some())
            .and_then(|e| e.deadline)
            .or_else(|| self.key_order.front().map(|(d, _)| *d));
        match (dial, req) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fails every live request with `err` (the connection is going away).
    pub fn fail_all(&mut self, err: &Error) {
        for e in self.ordered.drain(..) {
            if let Some(slot) = e.done {
                slot.complete(Err(err.clone()));
            }
        }
        for (_, e) in self.keyed.drain() {
            if let Some(slot) = e.done {
                slot.complete(Err(err.clone()));
            }
        }
        self.key_order.clear();
        self.live = 0;
    }

    /// The check before reuse of a long-idle connection: a non-blocking peek. An idle
    /// connection has nothing to read; a close (EOF), bytes or an error mean it is
    /// unusable.
    pub fn looks_alive(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.sock.peek(&mut b), Err(e) if would_block(&e))
    }
}
