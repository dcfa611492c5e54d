//! HTTP/1.1 services: a [`Handler`] receives each [`Request`] whole (its body collected
//! and de-chunked) and returns a [`Response`]; the framework does the rest: framing,
//! pipelining in order, keep-alive, `HEAD`, `Expect: 100-continue`, every 4xx and the
//! close that follows it, `Content-Length` and `Date`.
//!
//! An [`App`] runs its handler on the loop: right for work that never blocks. One
//! whose work may block (a file read, a database call) runs it on the worker pool with
//! [`App::on_pool`], and the loop goes on serving other connections meanwhile; a
//! handler that panics there gets its client a `500`, one that runs past
//! [`Config::handler_timeout`](crate::Config::handler_timeout) a `503`.
//!
//! ```no_run
//! use reactor::http::{App, Request, Response};
//!
//! fn hello(_: Request) -> Response {
//!     Response::text("Hello, World!")
//! }
//!
//! let server = reactor::Server::start_with(&reactor::Config::default(), App::new(hello))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A small service, routed with a `match`:
//!
//! ```
//! use reactor::http::{Request, Response};
//!
//! fn route(req: Request) -> Response {
//!     match (req.method(), req.path()) {
//!         ("GET", "/") => Response::text("home\n"),
//!         ("POST", "/echo") => Response::new(200).body(req.into_body()),
//!         (_, "/" | "/echo") => Response::new(405),
//!         _ => Response::new(404),
//!     }
//! }
//!
//! let req = Request::parse(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
//! assert_eq!(route(req).status, 404);
//! ```

mod framing;
mod request;
mod response;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::BytesMut;

use crate::connection::ConnInfo;
use crate::protocol::{Cx, Decoded, Protocol};
use crate::service::{Calls, Codec, Failure, Pooled, Service};
pub(crate) use framing::Reply;
pub use framing::{HEADER_CAP, HttpState, Limits};
pub use request::{Headers, Request};
pub use response::Response;

/// What answers HTTP requests: any `Fn(Request) -> Response` that can be shared
/// between threads is one.
///
/// ```
/// use reactor::http::{Handler, Request, Response};
///
/// struct Version(&'static str);
/// impl Handler for Version {
///     fn handle(&self, _: Request) -> Response {
///         Response::text(self.0)
///     }
/// }
/// let req = Request::parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
/// assert_eq!(Version("1.0").handle(req).body, "1.0");
/// ```
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Response;
}

impl<F> Handler for F
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: Request) -> Response {
        self(request)
    }
}

/// An HTTP service: a [`Handler`] and the [`Limits`] its requests are held to. A
/// [`Protocol`] (the handler runs on the loop); [`on_pool`](App::on_pool) runs it on the
/// worker pool instead.
///
/// ```
/// use reactor::http::{App, Limits, Response};
/// let app = App::new(|_| Response::text("hi"))
///     .limits(Limits { max_body: 4096, ..Limits::default() })
///     .addresses(false);
/// # let _ = app;
/// ```
pub struct App<H> {
    limits: Limits,
    handler: Arc<H>,
    addresses: bool,
}

impl<H> Clone for App<H> {
    fn clone(&self) -> Self {
        App {
            limits: self.limits.clone(),
            handler: self.handler.clone(),
            addresses: self.addresses,
        }
    }
}

impl<H: Handler> App<H> {
    /// The handler, under the default limits, with the peer's address in every
    /// request.
    pub fn new(handler: H) -> App<H> {
        App {
            limits: Limits::default(),
            handler: Arc::new(handler),
            addresses: true,
        }
    }

    /// Other limits.
    pub fn limits(mut self, limits: Limits) -> App<H> {
        self.limits = limits;
        self
    }

    /// Whether requests carry the connection's addresses ([`Request::peer`],
    /// [`Request::proxy_client`]). Keeping them costs each open connection a small
    /// allocation; without them an idle connection holds none.
    pub fn addresses(mut self, on: bool) -> App<H> {
        self.addresses = on;
        self
    }

    /// The same service with the handler run on the worker pool (the server needs
    /// [`Config::workers`](crate::Config::workers) above 0).
    pub fn on_pool(self) -> Pooled<Framing, Worker<H>> {
        Pooled::new(
            Framing {
                limits: self.limits,
                addresses: self.addresses,
            },
            Worker(self.handler),
        )
    }

    fn answer(&self, out: &mut BytesMut, cx: &Cx, reply: Reply, request: Request) {
        let handler = &self.handler;
        match catch_unwind(AssertUnwindSafe(|| handler.handle(request))) {
            Ok(r) => framing::write_response(out, cx, reply, &r),
            Err(_) => {
                log::warn!("an HTTP handler panicked; its request gets a 500");
                framing::write_failure(out, Failure::Panicked, reply.closes());
            }
        }
    }
}

fn remember(on: bool, st: &mut HttpState, conn: &ConnInfo) {
    if on {
        st.set_addrs(conn.peer, conn.client);
    }
}

impl<H: Handler> Protocol for App<H> {
    type State = HttpState;

    fn decode(&self, st: &mut HttpState, input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut none = Vec::new();
        let mut out = Calls::<std::convert::Infallible>::new(out, &mut none);
        self.limits
            .decode_with(st, input, &mut out, cx, |out, cx, reply, request| {
                self.answer(out.out(), cx, reply, request)
            })
    }

    fn in_request(&self, st: &HttpState) -> bool {
        st.in_request()
    }

    fn open(&self, st: &mut HttpState, conn: &ConnInfo, _: &mut BytesMut, _: &Cx) -> bool {
        remember(self.addresses, st, conn);
        true
    }
}

/// The loop's side of an [`App`] on the pool: HTTP framing, the handler's requests
/// handed to workers.
///
/// ```
/// use reactor::http::{App, hello};
/// let cfg = reactor::Config::default().addr("127.0.0.1:0".parse().unwrap()).workers(2);
/// let server = reactor::Server::start_with(&cfg, App::new(hello).on_pool())?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Framing {
    limits: Limits,
    addresses: bool,
}

/// A request on its way to a worker, with how its answer is framed.
///
/// ```
/// use reactor::http::{App, Call, Response};
/// use reactor::service::Handler;
/// fn takes(_: &impl Handler<Request = Call>) {}
/// takes(&App::new(|_| Response::new(204)).on_pool());
/// ```
#[derive(Debug)]
pub struct Call(Request, Reply);

/// A handler's answer on its way back to the loop.
///
/// ```
/// use reactor::http::{Answer, App, Response};
/// use reactor::service::Handler;
/// fn gives(_: &impl Handler<Response = Answer>) {}
/// gives(&App::new(|_| Response::new(204)).on_pool());
/// ```
#[derive(Debug)]
pub struct Answer(Response, Reply);

/// The worker pool's side of an [`App`] on the pool: runs the handler.
///
/// ```
/// use reactor::http::{App, Response, Worker};
/// use reactor::service::Pooled;
/// let pooled = App::new(|_| Response::new(204)).on_pool();
/// fn named<H>(_: &Pooled<reactor::http::Framing, Worker<H>>) {}
/// named(&pooled);
/// ```
pub struct Worker<H>(Arc<H>);

impl<H: Handler> Service<Call> for Worker<H> {
    type Response = Answer;
    fn call(&self, Call(request, reply): Call) -> Answer {
        Answer(self.0.handle(request), reply)
    }
}

impl Codec for Framing {
    type State = HttpState;
    type Request = Call;
    type Response = Answer;

    fn decode(
        &self,
        st: &mut HttpState,
        input: &[u8],
        out: &mut Calls<'_, Call>,
        cx: &Cx,
    ) -> Decoded {
        self.limits
            .decode_with(st, input, out, cx, |out, _, reply, request| {
                out.call(Call(request, reply))
            })
    }

    fn encode(&self, Answer(r, reply): Answer, out: &mut BytesMut, cx: &Cx) {
        framing::write_response(out, cx, reply, &r)
    }

    fn encode_failure(&self, f: Failure, out: &mut BytesMut, cx: &Cx) {
        // The connection closes after this answer (the request asked for it, or a
        // drain): say so, as the answer the handler would have given would have.
        framing::write_failure(out, f, cx.draining)
    }

    fn in_request(&self, st: &HttpState) -> bool {
        st.in_request()
    }

    fn open(&self, st: &mut HttpState, conn: &ConnInfo, _: &mut BytesMut, _: &Cx) -> bool {
        remember(self.addresses, st, conn);
        true
    }
}

/// The built-in `http` protocol's handler: `Hello, World!` to every request.
pub fn hello(_: Request) -> Response {
    Response::text(crate::wire::http::HELLO_BODY)
}
