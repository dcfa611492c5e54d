//! What the core asks of a driver: a byte stream per connection, non-blocking.
//!
//! The core never makes a system call. It pulls bytes from a [`Socket`] and pushes bytes
//! into it, and says when it wants to hear that the socket can take more output; the
//! driver makes the system calls (epoll: `recv`, `send`, `shutdown`, `epoll_ctl`) or
//! anything else that behaves like a non-blocking stream (the simulation's in-memory
//! network, with its random splits, partial writes, half-closes and resets).
//!
//! Why a pull interface and not lists of events and actions: the core reads until the
//! socket would block, under a budget, and writes answers straight from its scratch
//! buffer. Handing it a socket keeps that to one `read` and one `write` per request with
//! no copy in between; a list of "send these bytes" actions would copy every answer once
//! more, or hold a borrow of the scratch buffer across the driver. The events the driver
//! does hand over (ready, timer due, jobs completed, drain) are methods of
//! [`Shard`](super::Shard).

use std::io;
use std::net::SocketAddr;

/// Who is at the other end of a new connection, as the driver learnt it at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer.
    Ip(SocketAddr),
    /// A Unix-socket peer: no address (per-address limits do not apply; a PROXY header
    /// may still name the client).
    Unix,
}

/// One connection's stream, as a driver provides it.
pub trait Socket {
    /// Non-blocking read: `Ok(0)` is the peer's end of stream, `WouldBlock` means no
    /// bytes now (the driver will report the connection ready when there are).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Non-blocking write: takes what it can, `WouldBlock` when it takes nothing now.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// A write after which the connection closes (or half-closes) at once: the driver
    /// may hold the bytes back for the FIN to go in the same segment (MSG_MORE).
    fn write_last(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }
    /// Our side is done writing (a FIN after the bytes already taken).
    fn shutdown_write(&mut self);
    /// Whether the core wants to hear when the socket can take more output. Called
    /// only when the wish changes.
    fn want_write(&mut self, on: bool) -> io::Result<()>;
    /// Bytes written that the peer has not acknowledged (the kernel's send queue), as
    /// far as the driver knows.
    fn unsent(&self) -> usize {
        0
    }
    /// Whether the connection is known to be over (reset by the peer, or given up by
    /// the kernel): reading it costs nothing and tells its fate. Asked only while a
    /// memory budget keeps the connection from being read.
    fn dead(&self) -> bool {
        false
    }
}

/// The driver's sockets. Each connection carries a 32-bit handle of the driver's (a
/// descriptor, an index: the core never looks inside), kept in what would otherwise be
/// padding of the connection, so the driver needs no table of its own.
pub trait Sockets {
    /// A socket lent to the core for one piece of work.
    type Sock<'a>: Socket
    where
        Self: 'a;
    /// The socket of a connection the core holds. A key the driver does not know
    /// (it never should) gives `None`, and the core closes the connection.
    fn get(&mut self, key: usize, handle: u32) -> Option<Self::Sock<'_>>;
    /// The core is done with the connection: close its socket.
    fn close(&mut self, key: usize, handle: u32);
}

pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(crate) fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// No socket: for closing a connection the driver never handed over (refused at its
/// accept by the protocol).
pub(crate) struct NoSocket;

impl Socket for NoSocket {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::NotConnected.into())
    }
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::NotConnected.into())
    }
    fn shutdown_write(&mut self) {}
    fn want_write(&mut self, _: bool) -> io::Result<()> {
        Ok(())
    }
}
