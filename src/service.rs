//! Handlers that may block, and the one trait the loop drives.
//!
//! A [`Protocol`] answers every request inline, on the loop: right for work that never
//! blocks (the built-in protocols, a key-value store in memory). Work that may block (a
//! database query, a file read, a long computation) is split in two:
//!
//! - a [`Codec`], sans-IO and on the loop: it decodes requests from bytes and hands each
//!   one to the pool with [`Calls::call`], and it encodes the answers;
//! - a [`Service`], whose [`call`](Service::call) runs on a worker thread and may take
//!   as long as it needs. A closure `Fn(Request) -> Response` is a service.
//!
//! [`Pooled`] joins the two, and [`Server::start_with`](crate::Server::start_with) runs
//! it like any protocol:
//!
//! ```no_run
//! use reactor::bytes::BytesMut;
//! use reactor::protocol::{Cx, Decoded};
//! use reactor::service::{Calls, Codec, Failure, Pooled};
//!
//! /// A line in, a line out; the answer is computed on the pool.
//! #[derive(Clone)]
//! struct Lines;
//!
//! impl Codec for Lines {
//!     type State = ();
//!     type Request = String;
//!     type Response = String;
//!     fn decode(&self, _: &mut (), input: &[u8], out: &mut Calls<String>, cx: &Cx) -> Decoded {
//!         let mut d = Decoded::default();
//!         while let Some(nl) = input[d.consumed..].iter().position(|&b| b == b'\n') {
//!             if d.at_limit(cx, out.out()) {
//!                 break;
//!             }
//!             let line = &input[d.consumed..d.consumed + nl];
//!             out.call(String::from_utf8_lossy(line).into_owned());
//!             d.consumed += nl + 1;
//!             d.requests += 1;
//!         }
//!         d
//!     }
//!     fn encode(&self, answer: String, out: &mut BytesMut, _: &Cx) {
//!         out.extend_from_slice(answer.as_bytes());
//!         out.extend_from_slice(b"\n");
//!     }
//!     fn encode_failure(&self, f: Failure, out: &mut BytesMut, _: &Cx) {
//!         out.extend_from_slice(format!("ERR {f}\n").as_bytes());
//!     }
//! }
//!
//! let slow_upper = |line: String| {
//!     std::thread::sleep(std::time::Duration::from_millis(50)); // blocks a worker, not the loop
//!     line.to_uppercase()
//! };
//! let mut cfg = reactor::Config::default();
//! cfg.workers = 4;
//! let server = reactor::Server::start_with(&cfg, Pooled::new(Lines, slow_upper))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The loop itself sees both kinds through [`Handler`], which every [`Protocol`] and
//! every [`Pooled`] implement; with a plain protocol, nothing of the pool is compiled into
//! its loop ([`Handler::POOLED`] is `false`).

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::connection::{Closed, ConnId, ConnInfo};
use crate::protocol::{Cx, Decoded, Protocol};

/// Why a request got no answer from its service.
///
/// ```
/// use reactor::service::Failure;
/// assert_eq!(Failure::TimedOut.to_string(), "handler timed out");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The service panicked while handling it.
    Panicked,
    /// The answer was not ready within `--handler-timeout`.
    TimedOut,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Panicked => "handler failed",
            Failure::TimedOut => "handler timed out",
        })
    }
}

/// Where a [`Codec`] puts its output: answers it gives at once (errors, interim
/// responses) go to [`out`](Calls::out); requests for the service go to
/// [`call`](Calls::call). The reactor sends everything in the order it was given,
/// whatever order the service finishes in.
///
/// ```
/// use reactor::bytes::BytesMut;
/// use reactor::service::Calls;
/// let (mut out, mut calls) = (BytesMut::new(), Vec::new());
/// let mut c = Calls::new(&mut out, &mut calls);
/// c.out().extend_from_slice(b"at once\n");
/// c.call("to the pool");
/// assert_eq!(c.calls(), &[(8, "to the pool")]);
/// ```
pub struct Calls<'a, R> {
    out: &'a mut BytesMut,
    calls: &'a mut Vec<(usize, R)>,
}

impl<'a, R> Calls<'a, R> {
    /// Output to `out`, calls collected in `calls` with the output offset they stand at.
    pub fn new(out: &'a mut BytesMut, calls: &'a mut Vec<(usize, R)>) -> Self {
        Calls { out, calls }
    }

    /// The output buffer, for answers given at once.
    pub fn out(&mut self) -> &mut BytesMut {
        self.out
    }

    /// Hands a request to the service. Its answer goes out after everything written
    /// or called before it, and before everything after.
    pub fn call(&mut self, request: R) {
        self.calls.push((self.out.len(), request));
    }

    /// Requests handed over so far.
    pub fn calls(&self) -> &[(usize, R)] {
        self.calls
    }
}

/// The wire side of a service: sans-IO, run on the loop. See the module documentation.
///
/// ```
/// // See the module's example: a line codec whose answers come from the pool.
/// fn is_codec<C: reactor::service::Codec>() {}
/// is_codec::<reactor::protocol::json::JsonCodec>();
/// ```
pub trait Codec: Clone + Send + 'static {
    /// Per-connection state kept between calls; every connection carries one.
    type State: Default + Send;
    /// A decoded request, handed to a worker.
    type Request: Send + 'static;
    /// The service's answer, encoded on the loop.
    type Response: Send + 'static;

    /// Decodes requests from `input`, handing each to [`Calls::call`] (or answering
    /// it at once in [`Calls::out`]) and counting it in [`Decoded::requests`]. The same
    /// contract as [`Protocol::decode`]: call [`Decoded::at_limit`] before each request
    /// (the reactor uses its limit to bound the jobs in flight per connection).
    fn decode(
        &self,
        state: &mut Self::State,
        input: &[u8],
        out: &mut Calls<'_, Self::Request>,
        cx: &Cx,
    ) -> Decoded;

    /// Appends the answer to a request.
    fn encode(&self, response: Self::Response, out: &mut BytesMut, cx: &Cx);

    /// Appends the answer to a request whose service panicked or timed out (HTTP 500
    /// or 503, an error line). The connection goes on after it.
    fn encode_failure(&self, failure: Failure, out: &mut BytesMut, cx: &Cx);

    /// Whether the state holds a request in progress (see [`Protocol::in_request`]).
    fn in_request(&self, _state: &Self::State) -> bool {
        false
    }

    /// The connection opened (see [`Protocol::open`]).
    fn open(
        &self,
        _state: &mut Self::State,
        _conn: &ConnInfo,
        _out: &mut BytesMut,
        _cx: &Cx,
    ) -> bool {
        true
    }

    /// The connection closed (see [`Protocol::close`]).
    fn close(&self, _state: &mut Self::State, _conn: ConnId, _why: Closed) {}

    /// A timer is due (see [`Protocol::timer`]).
    fn timer(&self, _state: &mut Self::State, _out: &mut BytesMut, _cx: &Cx) {}
}

/// Work that may block: run on a worker thread, once per request.
///
/// ```
/// use reactor::service::Service;
/// let double = |n: u32| n * 2;
/// assert_eq!(double.call(21), 42);
/// ```
pub trait Service<Req>: Send + Sync + 'static {
    type Response: Send + 'static;
    fn call(&self, request: Req) -> Self::Response;
}

impl<Req, Res, F> Service<Req> for F
where
    F: Fn(Req) -> Res + Send + Sync + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    fn call(&self, request: Req) -> Res {
        self(request)
    }
}

/// A [`Codec`] on the loop and a [`Service`] on the worker pool, run together by
/// [`Server::start_with`](crate::Server::start_with).
///
/// ```
/// use reactor::protocol::json::{JsonCodec, JsonRequest};
/// use reactor::service::Pooled;
/// let cfg = reactor::Config::default().addr("127.0.0.1:0".parse().unwrap()).workers(2);
/// let slow = |m: JsonRequest| { std::thread::sleep(std::time::Duration::from_millis(1)); m };
/// let server = reactor::Server::start_with(&cfg, Pooled::new(JsonCodec::default(), slow))?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Pooled<C, S> {
    codec: C,
    service: Arc<S>,
}

impl<C: Clone, S> Clone for Pooled<C, S> {
    fn clone(&self) -> Self {
        Pooled {
            codec: self.codec.clone(),
            service: self.service.clone(),
        }
    }
}

impl<C, S> Pooled<C, S>
where
    C: Codec,
    S: Service<C::Request, Response = C::Response>,
{
    pub fn new(codec: C, service: S) -> Self {
        Pooled {
            codec,
            service: Arc::new(service),
        }
    }
}

/// What the loop drives: implemented for every [`Protocol`] (all answers inline) and
/// every [`Pooled`] codec and service. Implement [`Protocol`] or [`Codec`] rather than
/// this.
///
/// ```
/// use reactor::service::Handler;
/// assert!(!<reactor::protocol::Echo as Handler>::POOLED);
/// ```
pub trait Handler: sealed::Sealed + Clone + Send + Sync + 'static {
    type State: Default + Send;
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// Whether [`decode`](Handler::decode) may hand requests to the pool. `false`
    /// compiles the pool's path out of the loop.
    const POOLED: bool;
    fn decode(
        &self,
        state: &mut Self::State,
        input: &[u8],
        out: &mut Calls<'_, Self::Request>,
        cx: &Cx,
    ) -> Decoded;
    fn in_request(&self, state: &Self::State) -> bool;
    fn open(&self, state: &mut Self::State, conn: &ConnInfo, out: &mut BytesMut, cx: &Cx) -> bool;
    fn close(&self, state: &mut Self::State, conn: ConnId, why: Closed);
    fn timer(&self, state: &mut Self::State, out: &mut BytesMut, cx: &Cx);
    /// Runs on a worker.
    fn call(&self, request: Self::Request) -> Self::Response;
    fn encode(&self, response: Self::Response, out: &mut BytesMut, cx: &Cx);
    fn encode_failure(&self, failure: Failure, out: &mut BytesMut, cx: &Cx);
    /// The protocol's name, for the log: its type's, without the module path (a
    /// [`Pooled`] handler is named after its codec).
    fn name() -> &'static str {
        short_type_name(std::any::type_name::<Self>())
    }
}

/// [`Handler`] is implemented here only, for every [`Protocol`] and every [`Pooled`]:
/// what the loop expects of it may change without breaking a user's code.
mod sealed {
    pub trait Sealed {}
    impl<P: super::Protocol + Sync> Sealed for P {}
    impl<C, S> Sealed for super::Pooled<C, S> {}
}

/// `a::b::Name<c::D>` -> `Name`.
fn short_type_name(full: &'static str) -> &'static str {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

impl<P: Protocol + Sync> Handler for P {
    type State = P::State;
    type Request = Infallible;
    type Response = Infallible;
    const POOLED: bool = false;

    #[inline]
    fn decode(
        &self,
        state: &mut P::State,
        input: &[u8],
        out: &mut Calls<'_, Infallible>,
        cx: &Cx,
    ) -> Decoded {
        Protocol::decode(self, state, input, out.out(), cx)
    }

    #[inline]
    fn in_request(&self, state: &P::State) -> bool {
        Protocol::in_request(self, state)
    }

    #[inline]
    fn open(&self, state: &mut P::State, conn: &ConnInfo, out: &mut BytesMut, cx: &Cx) -> bool {
        Protocol::open(self, state, conn, out, cx)
    }

    #[inline]
    fn close(&self, state: &mut P::State, conn: ConnId, why: Closed) {
        Protocol::close(self, state, conn, why)
    }

    fn timer(&self, state: &mut P::State, out: &mut BytesMut, cx: &Cx) {
        Protocol::timer(self, state, out, cx)
    }

    fn call(&self, request: Infallible) -> Infallible {
        match request {}
    }

    fn encode(&self, response: Infallible, _: &mut BytesMut, _: &Cx) {
        match response {}
    }

    fn encode_failure(&self, _: Failure, _: &mut BytesMut, _: &Cx) {}
}

impl<C, S> Handler for Pooled<C, S>
where
    C: Codec + Sync,
    S: Service<C::Request, Response = C::Response>,
{
    type State = C::State;
    type Request = C::Request;
    type Response = C::Response;
    const POOLED: bool = true;

    fn name() -> &'static str {
        short_type_name(std::any::type_name::<C>())
    }

    fn decode(
        &self,
        state: &mut C::State,
        input: &[u8],
        out: &mut Calls<'_, C::Request>,
        cx: &Cx,
    ) -> Decoded {
        self.codec.decode(state, input, out, cx)
    }

    fn in_request(&self, state: &C::State) -> bool {
        self.codec.in_request(state)
    }

    fn open(&self, state: &mut C::State, conn: &ConnInfo, out: &mut BytesMut, cx: &Cx) -> bool {
        self.codec.open(state, conn, out, cx)
    }

    fn close(&self, state: &mut C::State, conn: ConnId, why: Closed) {
        self.codec.close(state, conn, why)
    }

    fn timer(&self, state: &mut C::State, out: &mut BytesMut, cx: &Cx) {
        self.codec.timer(state, out, cx)
    }

    fn call(&self, request: C::Request) -> C::Response {
        self.service.call(request)
    }

    fn encode(&self, response: C::Response, out: &mut BytesMut, cx: &Cx) {
        self.codec.encode(response, out, cx)
    }

    fn encode_failure(&self, failure: Failure, out: &mut BytesMut, cx: &Cx) {
        self.codec.encode_failure(failure, out, cx)
    }
}

/// The seeds' slow handler, for the built-in protocols (`--work`): each request costs
/// this much on a worker, then is answered as usual.
///
/// ```
/// use reactor::service::Work;
/// let w: Work = "sleep:10ms".parse().unwrap();
/// assert_eq!(w, Work::Sleep(std::time::Duration::from_millis(10)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// A blocking `thread::sleep` (the seeds' `time.Sleep`): waiting, not computing.
    Sleep(Duration),
    /// This much CPU, busy-waiting.
    Spin(Duration),
}

impl Work {
    pub fn run(&self) {
        match *self {
            Work::Sleep(d) => std::thread::sleep(d),
            Work::Spin(d) => {
                let start = Instant::now();
                while start.elapsed() < d {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

impl FromStr for Work {
    type Err = String;
    /// `sleep:10ms` or `spin:100us` (units: us, ms, s).
    fn from_str(s: &str) -> Result<Work, String> {
        let (kind, d) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: expected sleep:DURATION or spin:DURATION"))?;
        let d = match d.strip_suffix("us") {
            Some(us) => {
                Duration::from_micros(us.parse().map_err(|_| format!("`{d}` is not a duration"))?)
            }
            None => crate::duration::parse_duration(d)?,
        };
        match kind {
            "sleep" => Ok(Work::Sleep(d)),
            "spin" => Ok(Work::Spin(d)),
            _ => Err(format!("`{kind}`: the work is sleep or spin")),
        }
    }
}

/// Passes the request through after doing the work: the built-in protocols answer as
/// they would inline.
impl<R: Send + 'static> Service<R> for Work {
    type Response = R;
    fn call(&self, request: R) -> R {
        self.run();
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_parses() {
        assert_eq!(
            "sleep:10ms".parse(),
            Ok(Work::Sleep(Duration::from_millis(10)))
        );
        assert_eq!(
            "spin:100us".parse(),
            Ok(Work::Spin(Duration::from_micros(100)))
        );
        assert_eq!("sleep:2".parse(), Ok(Work::Sleep(Duration::from_secs(2))));
        assert!("nap:1s".parse::<Work>().is_err());
        assert!("sleep".parse::<Work>().is_err());
        assert!("spin:fast".parse::<Work>().is_err());
    }

    #[test]
    fn calls_remember_where_they_stand_in_the_output() {
        let mut out = BytesMut::new();
        let mut v = Vec::new();
        let mut c = Calls::new(&mut out, &mut v);
        c.out().extend_from_slice(b"ab");
        c.call(1);
        c.call(2);
        c.out().extend_from_slice(b"c");
        c.call(3);
        assert_eq!(v, [(2, 1), (2, 2), (3, 3)]);
    }

    /// The log names a custom protocol after its own type (it said `protocol=Http`,
    /// the command line's default, whatever the protocol).
    #[test]
    fn a_handler_is_named_after_its_protocol_or_codec() {
        use crate::protocol::Json;
        assert_eq!(<Json as Handler>::name(), "Json");
        let pooled = crate::http::App::new(crate::http::hello).on_pool();
        fn name_of<H: Handler>(_: &H) -> &'static str {
            H::name()
        }
        assert_eq!(name_of(&pooled), "Framing");
    }
}
