//! One connection of the io_uring backend: its socket, what it has in flight with the
//! kernel, the buffers it borrows while bytes are in flight, and its deadlines.
//!
//! The same life as an epoll connection ([`Stage`]: serving, closing once every owed
//! answer is out, lingering until the peer closes) and the same deadlines, kept apart
//! from the epoll `Conn` so that either can change without the other. What differs is
//! the output: a send in flight owns its bytes until its completion (the kernel reads
//! them then), so answers decoded meanwhile go to a second buffer, `output`, which
//! becomes the next send. At most one send and one receive are in flight per
//! connection.

use std::net::TcpStream;

use bytes::BytesMut;

use crate::timer::TimerId;

/// The peer shut its side down (a receive returned 0).
pub const PEER_EOF: u8 = 1;
/// Buffered input may hold complete requests not yet decoded (a limit stopped the
/// decoder).
pub const DECODE_PENDING: u8 = 2;
/// A request has started and is not complete: the read timeout applies.
pub const IN_REQUEST: u8 = 4;
/// At least one request was decoded (a drain need not wait for this one's first).
pub const SERVED: u8 = 8;
/// The connection is in the shard's list of sends to submit this turn.
pub const SEND_QUEUED: u8 = 16;

/// How long a lingering close waits for the peer, in ms (as the epoll backend).
pub const LINGER_MS: u64 = 2000;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Serving,
    /// Reads no more requests (what arrives is discarded); closes by lingering once
    /// every owed answer is sent. After an error answer or `Connection: close`.
    Closing,
    /// Our side is shut down; discarding input until the peer closes.
    Lingering,
}

/// The connection's multishot receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// Not armed: its last completion came (or it never was).
    Idle,
    Armed,
    /// A cancellation was asked for; armed until its last completion comes.
    Cancelling,
}

/// Which deadline a connection is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Linger,
    Held,
    Writing,
    Reading,
    Idle,
}

/// Timeouts in ms; `None` disables one.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub idle: Option<u64>,
    pub read: Option<u64>,
    pub write: Option<u64>,
}

pub struct Conn<S> {
    /// Dropping it closes the socket; the shard cancels the operations in flight first.
    pub sock: TcpStream,
    pub generation: u32,
    pub stage: Stage,
    pub recv: Recv,
    pub flags: u8,
    /// Bytes handed to the kernel by the send in flight, only while one is.
    pub sending: Option<BytesMut>,
    /// Answers not yet handed to a send, only while there are some.
    pub output: Option<BytesMut>,
    /// Unconsumed input (a partial request), only while there is some.
    pub input: Option<BytesMut>,
    pub state: S,
    /// The wheel entry, scheduled at `timer_at` (never later than the deadline).
    pub timer: Option<TimerId>,
    pub timer_at: u64,
    /// Times in ms since the shard's epoch.
    pub last_active: u64,
    pub request_start: u64,
    /// Last send progress (or, lingering, when the linger began).
    pub write_since: u64,
    /// Answers are held back until this time (0 = not held), under `--delay-ms`.
    pub held_until: u64,
}

impl<S: Default> Conn<S> {
    pub fn new(sock: TcpStream, generation: u32, now: u64) -> Self {
        Conn {
            sock,
            generation,
            stage: Stage::Serving,
            recv: Recv::Idle,
            flags: 0,
            sending: None,
            output: None,
            input: None,
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

    /// Bytes owed to the peer: in flight and not yet handed over. The high-water mark
    /// applies to this.
    pub fn backlog(&self) -> usize {
        self.sending.as_ref().map_or(0, |b| b.len()) + self.output.as_ref().map_or(0, |b| b.len())
    }

    /// Nothing left to send.
    pub fn flushed(&self) -> bool {
        self.sending.is_none() && self.output.is_none()
    }

    pub fn phase(&self) -> Phase {
        if self.stage == Stage::Lingering {
            Phase::Linger
        } else if self.held_until != 0 {
            Phase::Held
        } else if !self.flushed() {
            Phase::Writing
        } else if self.has(IN_REQUEST) {
            Phase::Reading
        } else {
            Phase::Idle
        }
    }

    /// The time at which the connection must be looked at again, if any.
    pub fn deadline(&self, t: &Timeouts) -> Option<u64> {
        match self.phase() {
            Phase::Linger => Some(self.write_since + LINGER_MS),
            Phase::Held => Some(self.held_until),
            Phase::Writing => t.write.map(|w| self.write_since + w),
            Phase::Reading => t.read.map(|r| self.request_start + r),
            Phase::Idle => t.idle.map(|i| self.last_active + i),
        }
    }

    /// Nothing in flight: no request started, nothing to send or held.
    pub fn is_quiet(&self) -> bool {
        self.input.is_none()
            && self.flushed()
            && self.held_until == 0
            && !self.has(IN_REQUEST | DECODE_PENDING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection, idle ones included, carries one of these.
    #[test]
    fn a_connection_stays_small() {
        let echo = std::mem::size_of::<Conn<()>>();
        let http = std::mem::size_of::<Conn<crate::protocol::http::HttpState>>();
        eprintln!("uring Conn: echo {echo} B, http {http} B");
        assert!(echo <= 160 && http <= 184, "{echo} {http}");
    }
}
