//! A pooled client for reactor's protocols (and yours): many requests in flight per
//! connection, one I/O thread per pool.
//!
//! The server's design turned around: a [`Pool`] owns one thread running one mio loop
//! for all of its connections. Callers hand a request over a channel and wake the loop
//! (once per batch); the loop writes it on a connection, matches the reply and fills
//! the caller's [`Reply`], which a thread blocks on ([`Reply::wait`],
//! [`Reply::wait_timeout`]) and async code `.await`s (it is a [`Future`]
//! storing the task's waker, so no runtime is needed or assumed).
//!
//! - **Matching.** JSON replies are matched by `Uid` and may come in any order; a `Uid`
//!   already in flight on the connection is refused ([`Error::KeyInFlight`]). Echo and
//!   HTTP replies are matched by order (pipelining).
//! - **Deadlines.** Each request has a response deadline counted from the moment it is
//!   handed over. Past it the caller gets [`Error::Timeout`]; the request keeps its place
//!   as a tombstone, so its late reply is read and dropped, never handed to the next
//!   caller, and the connection is retired (no new requests; closed when its other
//!   requests are done) and replaced.
//! - **The pool.** [`Pool::send`]/[`Pool::call`] spread requests over the connections
//!   (the least busy one, a new one while all are busy and the pool is not full),
//!   without checking one out. [`Pool::acquire`] checks an idle connection out for one
//!   caller (back on drop). A connection that errs, reaches EOF or times out is closed
//!   and its requests fail at once; the next request dials a new one. A connection idle
//!   longer than `check_after` is checked before it is handed out (not every one: that
//!   is a system call per request). [`Pool::close`] fails every waiting and in-flight
//!   request at once with [`Error::PoolClosed`].
//! - **Your protocol.** Implement [`Codec`] (encode a request, frame a reply, check it)
//!   and build a `Pool` of it. The built-in [`Echo`], [`Http`] and [`Json`] codecs sit
//!   on [`crate::wire`], the wire facts the server, reactor-bench and the tests share.
//!
//! # Against bb8, deadpool and r2d2
//!
//! | | bb8 | deadpool | r2d2 | `reactor::client` |
//! |---|---|---|---|---|
//! | max size | yes | yes | yes | `max_size` |
//! | min idle | yes | no | yes | `min_idle` |
//! | idle timeout | yes | no (manual `retain`) | yes | `idle_timeout` |
//! | max lifetime | yes | no (manual `retain`) | yes | `max_lifetime` |
//! | wait timeout on checkout | yes | yes | yes | `wait_timeout` |
//! | health check on checkout | every checkout (`test_on_check_out`) | on recycle | every checkout (`test_on_check_out`) | only after `check_after` idle |
//! | statistics | yes | yes (`status`) | yes (`state`) | [`Stats`]: size, idle, in use, waiting, created, closed by cause, timeouts |
//! | blocking use | no (async) | yes (sync flavours) | yes (only) | yes ([`Reply::wait`]) |
//! | async use | yes (tokio) | yes (tokio or async-std) | no | yes, any executor: [`Reply`] is a `Future` |
//! | runtime needed | tokio | tokio or async-std | none, a thread per waiting caller | none, one I/O thread per pool |
//! | many requests in flight per connection | no: one checkout, one user | no | no | yes: shared `send`, replies by `Uid` or in order |
//! | per-request deadline, late reply dropped | no (the user's job) | no | no | `response_timeout` |
//! | the protocol itself | yours (`ManageConnection`) | yours (`Manager`) | yours (`ManageConnection`) | [`Codec`]: built in for echo, http, json |
//!
//! # Example
//!
//! A JSON server in this process, and a pool of two connections with requests in
//! flight on both:
//!
//! ```
//! use reactor::client::{self, Json, Options, Pool};
//!
//! let cfg = reactor::Config::default()
//!     .addr("127.0.0.1:0".parse().unwrap())
//!     .protocol(reactor::ProtocolKind::Json)
//!     .threads(1);
//! let server = reactor::Server::start(&cfg)?;
//!
//! let pool = Pool::new(server.local_addr(), Json::default(), Options {
//!     max_size: 2,
//!     ..Options::default()
//! })?;
//! let replies: Vec<_> = (0..10)
//!     .map(|i| pool.send(client::json_request(i.to_string(), "world")))
//!     .collect();
//! for r in replies {
//!     assert_eq!(r.wait()?.val.as_deref(), Some("server: hello, world"));
//! }
//! assert_eq!(pool.stats().ok, 10);
//! pool.close();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
mod conn;
mod error;
mod options;
mod pool;
mod reply;

pub use codec::{Codec, Echo, Frame, Http, HttpReply, Json, Matching, json_request};
pub use error::Error;
pub use options::Options;
pub use pool::{ClosedBy, Pool, PooledConn, Stats};
pub use reply::Reply;

pub use crate::protocol::json::JsonRequest;
pub use crate::wire::json::Reply as JsonReply;
