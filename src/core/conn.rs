//! One connection's state: its socket, the buffers it borrows while bytes are in flight,
//! its jobs in flight, its protocol state and its deadlines.
//!
//! Kept small on purpose (24 bytes, 48 with the HTTP state, the socket apart), since 10,000 idle
//! connections are 10,000 of these, one timer entry each, and nothing else: an idle
//! connection holds no buffer and no job state. Everything a connection needs only
//! while busy (buffers, jobs, a TLS session, held answers) is one optional box,
//! [`Busy`]; times are 32-bit [`Stamp`]s.
//!
//! A connection's life is its [`Stage`]: serving, then (after an error answer or
//! `Connection: close`) closing once every owed answer is out, then lingering until the
//! peer closes. Within a stage, a few facts are flags (`WANT_WRITE`, `PEER_EOF`,
//! `DECODE_PENDING`, `IN_REQUEST`), and which deadline applies follows from the
//! connection's contents ([`Phase`]).

use std::net::SocketAddr;

use bytes::BytesMut;

use crate::jobs::Jobs;
use crate::timer::TimerId;
use crate::tls::Tls;

/// WRITABLE interest is registered (output is pending).
pub const WANT_WRITE: u8 = 1;
/// The peer shut its side down (read returned 0).
pub const PEER_EOF: u8 = 2;
/// Buffered input may hold complete requests not yet decoded (a limit stopped the
/// decoder).
pub const DECODE_PENDING: u8 = 4;
/// The protocol's `open` hook accepted the connection: its `close` hook is owed.
pub const OPENED: u8 = 8;
/// A request has started and is not complete: the read timeout applies.
pub const IN_REQUEST: u8 = 16;
/// At least one request was decoded (a drain need not wait for this one's first).
pub const SERVED: u8 = 32;
/// A peer not trusted to send a PROXY header: its first bytes are checked for one.
pub const SPOOF_CHECK: u8 = 64;
/// Reading is paused and the connection waits in the shard's list to be driven on
/// resume (listed once however many events come).
pub const PARKED: u8 = 128;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the PROXY header of a trusted load balancer, under the proxy timeout.
    Proxy,
    /// Reading requests and answering them.
    Serving,
    /// Reads no more; closes (by lingering) once every owed answer is written. Entered
    /// after an error answer or `Connection: close`.
    Closing,
    /// Our side is shut down; reading and discarding until the peer closes (lingering
    /// close, so that an error answer is not destroyed by a reset).
    Lingering,
    /// Reads no more; closes as soon as every owed answer is out, without lingering:
    /// the close ends a complete exchange the peer itself asked to end (one request,
    /// whole, answered without an error, no byte after it, no answer owed before it,
    /// not a drain): a peer that waits for its answer, so no byte of its can arrive to
    /// turn the close into a reset.
    Ending,
}

/// How long a lingering close waits for the peer, in ms.
pub const LINGER_MS: u64 = 2000;

/// Timeouts in ms; `None` disables one.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub idle: Option<u64>,
    pub read: Option<u64>,
    pub write: Option<u64>,
    /// How long a job may run before its request is answered with a failure.
    pub handler: Option<u64>,
    /// How long a trusted peer has for its PROXY header.
    pub proxy: u64,
}

/// Which deadline a connection is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Proxy,
    Linger,
    Held,
    Writing,
    /// Waiting for its jobs, nothing to write.
    Working,
    Reading,
    Idle,
}

/// A time of the shard's clock (ms since its epoch) kept in 32 bits: it names the last
/// 49 days, and since every stamp in a connection is a past time (or a deadline within
/// a timeout, which the configuration keeps under 24 days) it is read back against the
/// present, wrapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    #[inline]
    pub fn at(now: u64) -> Stamp {
        Stamp(now as u32)
    }

    /// The full time of a stamp taken at or before `now` (and at most 49 days ago).
    #[inline]
    pub fn get(self, now: u64) -> u64 {
        now.saturating_sub(u64::from((now as u32).wrapping_sub(self.0)))
    }
}

/// What a connection holds only while it is busy: bytes in flight, jobs, a TLS
/// session, held answers. Boxed and optional, so an idle plain connection pays one
/// pointer for all of it.
#[derive(Default)]
pub struct Busy {
    /// Unconsumed input (a partial request), only while there is some.
    pub input: Option<BytesMut>,
    /// Unsent output, only while there is some.
    pub output: Option<BytesMut>,
    /// Jobs in flight and answers waiting for them, only while there are some.
    pub jobs: Option<Box<Jobs>>,
    /// The TLS session, on a TLS listener.
    pub tls: Option<Box<Tls>>,
    /// Answers are held back until this time (0 = not held; `--delay-ms`).
    pub held_until: u64,
    /// Last write progress while output waits (the write timeout counts from it).
    pub write_since: u64,
    /// The peer's address and the PROXY header's client address, kept until the
    /// protocol's `open` hook (after the header and the TLS handshake) is told them.
    pub peer: Option<Box<(Option<SocketAddr>, Option<SocketAddr>)>>,
}

impl Busy {
    fn is_empty(&self) -> bool {
        self.input.is_none()
            && self.output.is_none()
            && self.jobs.is_none()
            && self.tls.is_none()
            && self.held_until == 0
            && self.peer.is_none()
    }
}

/// A connection as the core sees it: no socket (the driver holds that, under the same
/// key), only state.
pub struct Conn<S> {
    pub stage: Stage,
    pub flags: u8,
    /// The wheel entry; it may fire before the deadline (which is re-checked then),
    /// never after.
    pub timer: Option<TimerId>,
    pub last_active: Stamp,
    /// Reading a request: when its first byte came. Lingering: when the linger began.
    pub since: Stamp,
    pub busy: Option<Box<Busy>>,
    /// The driver's handle of the socket (see [`Sockets`](super::Sockets)).
    pub handle: u32,
    pub state: S,
}

impl<S: Default> Conn<S> {
    pub fn new(now: u64, handle: u32) -> Self {
        Conn {
            handle,
            stage: Stage::Serving,
            flags: 0,
            timer: None,
            last_active: Stamp::at(now),
            since: Stamp::default(),
            busy: None,
            state: S::default(),
        }
    }
}

impl<S> Conn<S> {
    #[inline]
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline]
    pub fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// The busy part, made if the connection was idle.
    #[inline]
    pub fn busy(&mut self) -> &mut Busy {
        self.busy.get_or_insert_with(Box::default)
    }

    /// Drops the busy part once it holds nothing: an idle connection keeps no box.
    #[inline]
    pub fn tidy(&mut self) {
        if self.busy.as_ref().is_some_and(|b| b.is_empty()) {
            self.busy = None;
        }
    }

    #[inline]
    pub fn input(&self) -> Option<&BytesMut> {
        self.busy.as_ref()?.input.as_ref()
    }

    #[inline]
    pub fn output(&self) -> Option<&BytesMut> {
        self.busy.as_ref()?.output.as_ref()
    }

    #[inline]
    pub fn jobs(&self) -> Option<&Jobs> {
        self.busy.as_ref()?.jobs.as_deref()
    }

    #[inline]
    pub fn tls(&self) -> Option<&Tls> {
        self.busy.as_ref()?.tls.as_deref()
    }

    #[inline]
    pub fn held_until(&self) -> u64 {
        self.busy.as_ref().map_or(0, |b| b.held_until)
    }

    #[inline]
    pub fn write_since(&self) -> u64 {
        self.busy.as_ref().map_or(0, |b| b.write_since)
    }

    pub fn out_len(&self) -> usize {
        self.output().map_or(0, |b| b.len())
    }

    /// Bytes owed to the peer: unsent output and answers waiting for their turn. The
    /// high-water mark applies to this.
    pub fn backlog(&self) -> usize {
        self.out_len() + self.jobs().map_or(0, |j| j.held())
    }

    /// Jobs handed to the pool and not yet answered.
    pub fn jobs_pending(&self) -> usize {
        self.jobs().map_or(0, |j| j.pending())
    }

    /// Which deadline applies now.
    pub fn phase(&self) -> Phase {
        if self.stage == Stage::Proxy {
            Phase::Proxy
        } else if self.stage == Stage::Lingering {
            Phase::Linger
        } else if self.held_until() != 0 {
            Phase::Held
        } else if self.output().is_some() {
            Phase::Writing
        } else if self.jobs().is_some() {
            Phase::Working
        } else if self.has(IN_REQUEST) {
            Phase::Reading
        } else {
            Phase::Idle
        }
    }

    /// The time at which the connection must be looked at again, if any.
    pub fn deadline(&self, t: &Timeouts, now: u64) -> Option<u64> {
        let phase = match self.phase() {
            Phase::Proxy => return Some(self.last_active.get(now) + t.proxy),
            Phase::Linger => return Some(self.since.get(now) + LINGER_MS),
            Phase::Held => Some(self.held_until()),
            Phase::Writing => t.write.map(|w| self.write_since() + w),
            Phase::Working => None,
            Phase::Reading => t.read.map(|r| self.since.get(now) + r),
            Phase::Idle => t.idle.map(|i| self.last_active.get(now) + i),
        };
        match (phase, self.jobs_deadline(t)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the oldest job in flight runs out of time, under `--handler-timeout`.
    pub fn jobs_deadline(&self, t: &Timeouts) -> Option<u64> {
        Some(self.jobs()?.oldest_pending()? + t.handler?)
    }

    /// Nothing in flight: no request started, nothing to send, nothing held or owed.
    pub fn is_quiet(&self) -> bool {
        self.input().is_none()
            && self.output().is_none()
            && self.jobs().is_none()
            && self.held_until() == 0
            && !self.has(IN_REQUEST | DECODE_PENDING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection, idle ones included, carries one of these: keep it small.
    #[test]
    fn a_connection_stays_small() {
        let echo = std::mem::size_of::<Conn<()>>();
        let http = std::mem::size_of::<Conn<crate::http::HttpState>>();
        let json = std::mem::size_of::<Conn<crate::protocol::json::JsonState>>();
        eprintln!("Conn: echo {echo} B, http {http} B, json {json} B");
        // The figures today; a field added here shows in every idle connection.
        // (Before the busy part was boxed and times became 32-bit stamps: 144, 168,
        // 152.)
        assert!(
            echo <= 32 && http <= 56 && json <= 48,
            "{echo} {http} {json}"
        );
    }

    #[test]
    fn stamps_read_back_across_the_32_bit_wrap() {
        let day = 86_400_000u64;
        for now in [5, day, 50 * day, (1u64 << 32) + 7, 3 * (1u64 << 32) - 1] {
            for ago in [0, 1, 999, day, 24 * day] {
                let t = now.saturating_sub(ago);
                assert_eq!(Stamp::at(t).get(now), t, "now {now} ago {ago}");
            }
        }
    }
}
