//! One connection's state: its socket, the buffers it borrows while bytes are in flight,
//! its jobs in flight, its protocol state and its deadlines.
//!
//! Kept small on purpose (144 bytes, 168 with the HTTP state; the TLS session's box
//! fitted in padding), since 10,000 idle connections are 10,000 of these and nothing
//! else: an idle connection holds no buffer and no job state.
//!
//! A connection's life is its [`Stage`]: serving, then (after an error answer or
//! `Connection: close`) closing once every owed answer is out, then lingering until the
//! peer closes. Within a stage, a few facts are flags (`WANT_WRITE`, `PEER_EOF`,
//! `DECODE_PENDING`, `IN_REQUEST`), and which deadline applies follows from the
//! connection's contents ([`Phase`]).

use bytes::BytesMut;
use mio::net::TcpStream;

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
/// A request has started and is not complete: the read timeout applies.
pub const IN_REQUEST: u8 = 16;
/// At least one request was decoded (a drain need not wait for this one's first).
pub const SERVED: u8 = 32;
/// A peer not trusted to send a PROXY header: its first bytes are checked for one.
pub const SPOOF_CHECK: u8 = 64;

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

pub struct Conn<S> {
    pub sock: TcpStream,
    pub stage: Stage,
    pub flags: u8,
    /// Unconsumed input (a partial request), only while there is some.
    pub input: Option<BytesMut>,
    /// Unsent output, only while there is some.
    pub output: Option<BytesMut>,
    /// Jobs in flight and answers waiting for them, only while there are some.
    pub jobs: Option<Box<Jobs>>,
    /// The TLS session, on a TLS listener (boxed: one pointer in a plain connection).
    pub tls: Option<Box<Tls>>,
    pub state: S,
    /// The wheel entry, scheduled at `timer_at`; it may be earlier than the deadline
    /// (it is re-checked when it fires), never later.
    pub timer: Option<TimerId>,
    pub timer_at: u64,
    /// Times in ms since the reactor's epoch.
    pub last_active: u64,
    pub request_start: u64,
    /// Last write progress (or, lingering, when the linger began).
    pub write_since: u64,
    /// Answers are held back until this time (0 = not held).
    pub held_until: u64,
}

impl<S: Default> Conn<S> {
    pub fn new(sock: TcpStream, now: u64) -> Self {
        Conn {
            sock,
            stage: Stage::Serving,
            flags: 0,
            input: None,
            output: None,
            jobs: None,
            tls: None,
            state: S::default(),
            timer: None,
            timer_at: 0,
            last_active: now,
            request_start: 0,
            write_since: 0,
            held_until: 0,
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

    pub fn out_len(&self) -> usize {
        self.output.as_ref().map_or(0, |b| b.len())
    }

    /// Bytes owed to the peer: unsent output and answers waiting for their turn. The
    /// high-water mark applies to this.
    pub fn backlog(&self) -> usize {
        self.out_len() + self.jobs.as_ref().map_or(0, |j| j.held())
    }

    /// Jobs handed to the pool and not yet answered.
    pub fn jobs_pending(&self) -> usize {
        self.jobs.as_ref().map_or(0, |j| j.pending())
    }

    /// Which deadline applies now.
    pub fn phase(&self) -> Phase {
        if self.stage == Stage::Proxy {
            Phase::Proxy
        } else if self.stage == Stage::Lingering {
            Phase::Linger
        } else if self.held_until != 0 {
            Phase::Held
        } else if self.output.is_some() {
            Phase::Writing
        } else if self.jobs.is_some() {
            Phase::Working
        } else if self.has(IN_REQUEST) {
            Phase::Reading
        } else {
            Phase::Idle
        }
    }

    /// The time at which the connection must be looked at again, if any.
    pub fn deadline(&self, t: &Timeouts) -> Option<u64> {
        let phase = match self.phase() {
            Phase::Proxy => return Some(self.last_active + t.proxy),
            Phase::Linger => return Some(self.write_since + LINGER_MS),
            Phase::Held => Some(self.held_until),
            Phase::Writing => t.write.map(|w| self.write_since + w),
            Phase::Working => None,
            Phase::Reading => t.read.map(|r| self.request_start + r),
            Phase::Idle => t.idle.map(|i| self.last_active + i),
        };
        match (phase, self.jobs_deadline(t)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the oldest job in flight runs out of time, under `--handler-timeout`.
    pub fn jobs_deadline(&self, t: &Timeouts) -> Option<u64> {
        Some(self.jobs.as_ref()?.oldest_pending()? + t.handler?)
    }

    /// Nothing in flight: no request started, nothing to send, nothing held or owed.
    pub fn is_quiet(&self) -> bool {
        self.input.is_none()
            && self.output.is_none()
            && self.jobs.is_none()
            && self.held_until == 0
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
        let http = std::mem::size_of::<Conn<crate::protocol::http::HttpState>>();
        let json = std::mem::size_of::<Conn<crate::protocol::json::JsonState>>();
        eprintln!("Conn: echo {echo} B, http {http} B, json {json} B");
        // The figures today; a field added here shows in every idle connection. Since
        // the last release: +8 for the jobs box and +8 for the TLS box (each a pointer,
        // `None` while unused), +9 for the resumable JSON framer's state (json only).
        assert!(
            echo <= 144 && http <= 168 && json <= 152,
            "{echo} {http} {json}"
        );
    }
}
