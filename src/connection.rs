//! Connections as a protocol sees them beyond its requests: who they are
//! ([`ConnId`], [`ConnInfo`]), when they open and close ([`Closed`]), and writing to one
//! from anywhere ([`Pusher`]).
//!
//! A [`Protocol`](crate::protocol::Protocol) (or [`Codec`](crate::service::Codec)) is
//! told when a connection is ready for its bytes (`open`, after the PROXY header and
//! the TLS handshake, when there are any: it may refuse the connection there) and when
//! it is gone (`close`, with the reason), and may keep what it likes in its
//! per-connection state. Any thread may write to any connection through a [`Pusher`]
//! (cheap to clone; [`Server::pusher`](crate::Server::pusher), or
//! [`Cx::pusher`](crate::protocol::Cx::pusher) inside a hook). A push goes behind every
//! answer already placed on the connection and never splits one.
//!
//! **Backpressure.** A push is *refused* (dropped, and counted in
//! [`Counters::pushes_refused`](crate::stats::Counters::pushes_refused)), never buffered
//! without bound, when the connection already owes its peer
//! [`Config::push_limit`](crate::Config::push_limit) bytes (1 MiB by default: room for
//! a reader that is behind for a moment, not for one that stopped reading), or is gone
//! or closing. A shard takes pushes in batches through an inbox of at most 16 push
//! limits; while that is full, [`Pusher::push`] returns [`PushError::Busy`] at once.
//! Nothing a pusher does ever blocks it. So a client that never reads costs the server
//! at most its push limit, whatever is pushed to it.
//!
//! ```
//! use reactor::connection::{ConnId, PushError, Pusher};
//!
//! // A pusher not attached to a server refuses everything.
//! let p = Pusher::detached();
//! let id = ConnId::default();
//! assert_eq!(p.push(id, &b"hello\n"[..]), Err(PushError::Gone));
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A connection's identity, valid for its whole life and never reused for another
/// connection: pushes to a connection that has closed are refused, even when its slot
/// went to a new one.
///
/// ```
/// use reactor::connection::ConnId;
/// let a = ConnId::default();
/// assert_eq!(a, a);
/// assert_eq!(a.shard(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    shard: u32,
    key: u32,
    generation: u32,
}

impl ConnId {
    pub(crate) fn new(shard: usize, key: usize, generation: u32) -> ConnId {
        ConnId {
            shard: shard as u32,
            key: key as u32,
            generation,
        }
    }

    /// The shard (thread) that owns the connection.
    pub fn shard(&self) -> usize {
        self.shard as usize
    }

    pub(crate) fn key(&self) -> usize {
        self.key as usize
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}.{}", self.shard, self.key, self.generation)
    }
}

/// What a protocol learns when a connection opens.
///
/// ```
/// use reactor::bytes::BytesMut;
/// use reactor::connection::ConnInfo;
/// use reactor::protocol::{Cx, Decoded, Protocol};
///
/// /// Greets each client with its address.
/// #[derive(Clone)]
/// struct Greeter;
/// impl Protocol for Greeter {
///     type State = ();
///     fn open(&self, _: &mut (), conn: &ConnInfo, out: &mut BytesMut, _: &Cx) -> bool {
///         let from = conn.client_addr().map(|a| a.to_string()).unwrap_or_default();
///         out.extend_from_slice(format!("hello {from}\n").as_bytes());
///         true
///     }
///     fn decode(&self, _: &mut (), input: &[u8], _: &mut BytesMut, _: &Cx) -> Decoded {
///         Decoded { consumed: input.len(), ..Decoded::default() }
///     }
/// }
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ConnInfo<'a> {
    pub id: ConnId,
    /// The address the connection came from (a load balancer's, behind one); `None`
    /// over a Unix socket.
    pub peer: Option<SocketAddr>,
    /// The client's address from a trusted load balancer's PROXY header, when there
    /// was one with an address.
    pub client: Option<SocketAddr>,
    /// The application protocol agreed by TLS ALPN, under TLS.
    pub alpn: Option<&'a [u8]>,
}

impl ConnInfo<'_> {
    /// The client's address as best known: the PROXY header's, else the peer's.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client.or(self.peer)
    }
}

/// Why a connection closed, as its protocol's `close` hook is told.
///
/// ```
/// use reactor::connection::Closed;
/// assert_eq!(Closed::IdleTimeout.to_string(), "idle timeout");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Closed {
    /// The peer closed, or the protocol asked for the close, or the server drained.
    Normal,
    /// A socket error (a reset, say).
    Error,
    /// The peer vanished: TCP keep-alive probes, or the user timeout on unacknowledged
    /// data, found no one there.
    PeerGone,
    IdleTimeout,
    ReadTimeout,
    WriteTimeout,
    /// Cut at the end of a drain, or because the loop failed.
    Cut,
    /// The protocol's decoder or a hook panicked.
    Panicked,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Closed::Normal => "normal",
            Closed::Error => "socket error",
            Closed::PeerGone => "peer gone",
            Closed::IdleTimeout => "idle timeout",
            Closed::ReadTimeout => "read timeout",
            Closed::WriteTimeout => "write timeout",
            Closed::Cut => "cut",
            Closed::Panicked => "protocol panicked",
        })
    }
}

/// Why [`Pusher::push`] did not take the bytes.
///
/// ```
/// use reactor::connection::PushError;
/// assert_eq!(PushError::Busy.to_string(), "the shard's push inbox is full");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError {
    /// The connection's shard is not running (the server stopped, or the pusher is
    /// detached), or the id names no shard.
    Gone,
    /// The shard's inbox is full: it is not keeping up. Try later, or drop the
    /// message.
    Busy,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PushError::Gone => "the connection's shard is not running",
            PushError::Busy => "the shard's push inbox is full",
        })
    }
}

impl std::error::Error for PushError {}

/// A push on its way to its shard.
pub(crate) struct Push {
    pub to: ConnId,
    pub bytes: Bytes,
}

/// One shard's inbox of pushes, and how to wake it.
pub(crate) struct PushBox {
    items: Mutex<Vec<Push>>,
    /// Bytes queued, against `limit`.
    queued: AtomicUsize,
    /// Set by every push (under the lock), cleared by the shard before it takes: a
    /// wake-up for the worker pool's completions does not take this lock for nothing.
    pending: AtomicBool,
    limit: usize,
    closed: AtomicBool,
    waker: Arc<mio::Waker>,
}

impl PushBox {
    pub fn new(limit: usize, waker: Arc<mio::Waker>) -> PushBox {
        PushBox {
            items: Mutex::new(Vec::new()),
            queued: AtomicUsize::new(0),
            pending: AtomicBool::new(false),
            limit,
            closed: AtomicBool::new(false),
            waker,
        }
    }

    /// Called by the shard: every push waiting, swapped out whole.
    pub fn take(&self, into: &mut Vec<Push>) {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *items, into);
        drop(items);
        let bytes: usize = into.iter().map(|p| p.bytes.len()).sum();
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The shard has stopped: pushes are refused from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.items.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Writes to any connection of a server, from any thread. Cheap to clone.
///
/// See the [module documentation](self) for what a push does under backpressure.
///
/// ```
/// use reactor::connection::Pusher;
/// let cfg = reactor::Config::default().addr("127.0.0.1:0".parse().unwrap()).threads(1);
/// let server = reactor::Server::start(&cfg)?;
/// let pusher: Pusher = server.pusher();
/// std::thread::spawn(move || drop(pusher)).join().unwrap();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Pusher {
    shards: Arc<[Arc<PushBox>]>,
}

impl fmt::Debug for Pusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pusher({} shards)", self.shards.len())
    }
}

impl Pusher {
    pub(crate) fn new(shards: Vec<Arc<PushBox>>) -> Pusher {
        Pusher {
            shards: shards.into(),
        }
    }

    /// A pusher attached to no server: every push is [`PushError::Gone`].
    pub fn detached() -> Pusher {
        Pusher::new(Vec::new())
    }

    /// Sends `bytes` to connection `to`, after every answer it was already given. `Ok`
    /// means the bytes reached the shard's inbox: the shard still refuses them (and
    /// counts them) if the connection is gone or over its push limit by the time it
    /// takes them.
    pub fn push(&self, to: ConnId, bytes: impl Into<Bytes>) -> Result<(), PushError> {
        let Some(shard) = self.shards.get(to.shard()) else {
            return Err(PushError::Gone);
        };
        if shard.closed.load(Ordering::Acquire) {
            return Err(PushError::Gone);
        }
        let bytes = bytes.into();
        let len = bytes.len();
        if shard.queued.fetch_add(len, Ordering::AcqRel) + len > shard.limit {
            shard.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Busy);
        }
        let mut items = shard.items.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = items.is_empty();
        items.push(Push { to, bytes });
        shard.pending.store(true, Ordering::Release);
        drop(items);
        if was_empty {
            // One wake-up per batch: the shard takes everything at once.
            let _ = shard.waker.wake();
        }
        Ok(())
    }
}
