//! What a call can fail with.

use std::fmt;
use std::time::Duration;

/// Why a request got no reply. Cheap to clone: `close()` and a lost connection fail
/// many requests with the same error.
///
/// ```
/// use reactor::client::Error;
/// assert_eq!(Error::PoolClosed.to_string(), "client pool closed");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No reply within the response timeout (or the caller's `wait_timeout`). The
    /// connection it was sent on is retired: a late reply is read and dropped, never
    /// handed to another request.
    Timeout(Duration),
    /// No connection could be had within the pool's wait timeout (every one was checked
    /// out, or the pool was at its maximum size and none became free).
    PoolTimeout(Duration),
    /// Connecting failed: refused, unreachable, or not done within the dial timeout.
    Connect(String),
    /// The connection was lost with the request in flight: the server closed it, it was
    /// reset, or the server sent bytes that are not a reply.
    Closed(String),
    /// The pool was closed (by `close()` or by dropping its last handle).
    PoolClosed,
    /// A request with this key (a JSON `Uid`) is already in flight on the connection,
    /// so a reply could not tell them apart; the request was not sent.
    KeyInFlight(String),
    /// A reply came but does not check against its request.
    BadReply(String),
    /// The request cannot be sent (an empty echo, say).
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout(d) => write!(f, "no reply within {d:?}"),
            Error::PoolTimeout(d) => write!(f, "no connection available within {d:?}"),
            Error::Connect(why) => write!(f, "connect: {why}"),
            Error::Closed(why) => write!(f, "connection lost: {why}"),
            Error::PoolClosed => f.write_str("client pool closed"),
            Error::KeyInFlight(k) => write!(f, "a request with Uid {k:?} is already in flight"),
            Error::BadReply(why) => write!(f, "bad reply: {why}"),
            Error::Invalid(why) => write!(f, "invalid request: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Whether the request failed for lack of a reply in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_) | Error::PoolTimeout(_))
    }
}
