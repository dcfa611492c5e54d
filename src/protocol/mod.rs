//! Protocols are sans-IO decoders: bytes in, responses appended to an output buffer, no
//! socket inside. The reactor owns every socket, buffer and timer; a protocol only says
//! how many input bytes it consumed, how many requests it answered, and what to do next.
//! That keeps the protocols testable byte by byte and lets users add their own by
//! implementing [`Protocol`].
//!
//! ```
//! use reactor::bytes::BytesMut;
//! use reactor::protocol::{Cx, Decoded, Next, Protocol};
//!
//! /// Answers every line with its length.
//! #[derive(Clone)]
//! struct LineLen;
//!
//! impl Protocol for LineLen {
//!     type State = ();
//!     fn decode(&self, _: &mut (), input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
//!         let mut d = Decoded::default();
//!         while let Some(nl) = input[d.consumed..].iter().position(|&b| b == b'\n') {
//!             if d.at_limit(cx, out) {
//!                 return d;
//!             }
//!             out.extend_from_slice(format!("{nl}\n").as_bytes());
//!             d.consumed += nl + 1;
//!             d.requests += 1;
//!         }
//!         d
//!     }
//! }
//!
//! let clock = reactor::clock::Clock::default();
//! let cx = Cx::new(&clock);
//! let mut out = BytesMut::new();
//! let d = LineLen.decode(&mut (), b"abc\nde\npartial", &mut out, &cx);
//! assert_eq!((d.consumed, d.requests, d.next), (7, 2, Next::NeedMore));
//! assert_eq!(&out[..], b"3\n2\n");
//! ```

use std::cell::Cell;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::clock::Clock;
use crate::connection::{Closed, ConnId, ConnInfo, PushError, Pusher};

pub mod echo;
pub mod json;

pub use echo::Echo;
pub use json::{Json, JsonCodec};

/// What the reactor should do after a call to [`Protocol::decode`].
///
/// ```
/// use reactor::protocol::{Decoded, Next};
/// assert_eq!(Decoded::default().next, Next::NeedMore);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Next {
    /// Everything complete was answered; unconsumed input is the start of a request.
    #[default]
    NeedMore,
    /// Stopped at a limit of [`Cx`]; unconsumed input may hold complete requests. The
    /// reactor calls again once the output has drained (or the delay has passed).
    Yield,
    /// Flush the output, then close the connection. Unconsumed input is dropped.
    Close,
}

/// The result of one [`Protocol::decode`] call.
///
/// ```
/// use reactor::bytes::BytesMut;
/// use reactor::protocol::{Cx, Decoded, Next};
/// let clock = reactor::clock::Clock::default();
/// let mut cx = Cx::new(&clock);
/// cx.max_requests = 1;
/// let mut d = Decoded { requests: 1, ..Decoded::default() };
/// assert!(d.at_limit(&cx, &BytesMut::new()));
/// assert_eq!(d.next, Next::Yield);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used up (answered, discarded, or held in the state).
    pub consumed: usize,
    /// Requests answered (each appended its response to the output).
    pub requests: usize,
    /// Of those, answers that reported an error to the peer.
    pub errors: usize,
    pub next: Next,
}

impl Decoded {
    /// Call before answering another request: `true`, with `next` set to
    /// [`Next::Yield`], when a limit of `cx` forbids it.
    pub fn at_limit(&mut self, cx: &Cx, out: &BytesMut) -> bool {
        let full = cx.full(out, self.requests);
        if full {
            self.next = Next::Yield;
        }
        full
    }
}

/// What a decoder may use and must respect.
///
/// ```
/// let clock = reactor::clock::Clock::default();
/// let cx = reactor::protocol::Cx::new(&clock);
/// assert!(cx.pusher().is_none() && !cx.draining);
/// ```
pub struct Cx<'a> {
    /// Cached wall-clock strings.
    pub clock: &'a Clock,
    /// Stop (with [`Next::Yield`]) before answering another request once the output
    /// holds this many bytes: the reactor's backpressure.
    pub out_limit: usize,
    /// Answer at most this many requests in this call (1 when answers are delayed).
    pub max_requests: usize,
    /// The server is draining: a protocol with keep-alive should answer this request
    /// with a close (HTTP `Connection: close`) and return [`Next::Close`]. For a
    /// failure answer ([`Codec::encode_failure`](crate::service::Codec::encode_failure)):
    /// the connection closes after it, and the answer should say so.
    pub draining: bool,
    pub(crate) conn: ConnId,
    pub(crate) pusher: Option<&'a Pusher>,
    /// A timer the protocol asked for during this call, in ms from now.
    pub(crate) timer: Cell<Option<u64>>,
}

impl<'a> Cx<'a> {
    /// A context with no limits, for no connection in particular (tests, fuzzing).
    pub fn new(clock: &'a Clock) -> Self {
        Cx {
            clock,
            out_limit: usize::MAX,
            max_requests: usize::MAX,
            draining: false,
            conn: ConnId::default(),
            pusher: None,
            timer: Cell::new(None),
        }
    }

    /// The connection this call is for.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The server's [`Pusher`], to write to other connections (or to keep, for another
    /// thread); `None` outside a server.
    pub fn pusher(&self) -> Option<&Pusher> {
        self.pusher
    }

    /// Pushes `bytes` to connection `to` (see [`Pusher::push`]).
    pub fn push(&self, to: ConnId, bytes: impl Into<Bytes>) -> Result<(), PushError> {
        self.pusher.ok_or(PushError::Gone)?.push(to, bytes)
    }

    /// Asks for a call to [`Protocol::timer`] on this connection `after` from now (at
    /// the timer wheel's 10 ms resolution), replacing one asked for earlier in the same
    /// call. A timer fires once: a heartbeat sets the next one from `timer`. A timer
    /// set earlier still fires; a protocol that changed its mind ignores it (its state
    /// says so).
    pub fn set_timer(&self, after: Duration) {
        self.timer
            .set(Some(after.as_millis().min(u128::from(u32::MAX)) as u64));
    }

    /// Whether the limits forbid answering another request now.
    pub fn full(&self, out: &BytesMut, answered: usize) -> bool {
        answered >= self.max_requests || out.len() >= self.out_limit
    }
}

/// A request/response protocol spoken over one connection.
///
/// ```
/// use reactor::bytes::BytesMut;
/// use reactor::protocol::{Cx, Decoded, Protocol};
///
/// /// Swallows everything, answers nothing.
/// #[derive(Clone)]
/// struct Sink;
/// impl Protocol for Sink {
///     type State = ();
///     fn decode(&self, _: &mut (), input: &[u8], _: &mut BytesMut, _: &Cx) -> Decoded {
///         Decoded { consumed: input.len(), ..Decoded::default() }
///     }
/// }
/// let cfg = reactor::Config::default().addr("127.0.0.1:0".parse().unwrap()).threads(1);
/// let server = reactor::Server::start_with(&cfg, Sink)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Protocol: Clone + Send + 'static {
    /// Per-connection state kept between calls. Keep it small: every connection,
    /// idle ones included, carries one.
    type State: Default + Send;

    /// Decodes requests from `input` and appends their responses to `out`.
    ///
    /// `input` starts at the first unconsumed byte. Bytes not consumed are offered
    /// again, followed by new ones, on the next call. The server bounds them: once a
    /// connection holds more than [`Config::max_input`](crate::Config::max_input)
    /// bytes unconsumed (1 MiB by default), it gets the answers already made and is
    /// closed, so a protocol needs no input limit of its own to be safe (it may have a
    /// tighter one, with an answer that says so).
    fn decode(&self, state: &mut Self::State, input: &[u8], out: &mut BytesMut, cx: &Cx)
    -> Decoded;

    /// Whether the state holds a request in progress (a body still being read, say),
    /// which puts the connection under the read timeout rather than the idle one.
    fn in_request(&self, _state: &Self::State) -> bool {
        false
    }

    /// The connection is ready for the protocol's bytes: accepted, past its PROXY
    /// header and its TLS handshake when it has them. `out` is sent first (a greeting);
    /// `false` refuses the connection (it is closed at once, and counted as
    /// rejected; `close` is not called). [`Cx::pusher`], [`Cx::conn`] and
    /// [`Cx::set_timer`] work here as in `decode`.
    fn open(
        &self,
        _state: &mut Self::State,
        _conn: &ConnInfo,
        _out: &mut BytesMut,
        _cx: &Cx,
    ) -> bool {
        true
    }

    /// The connection is gone (after a successful [`open`](Protocol::open)), for this
    /// reason. Nothing can be sent to it any more.
    fn close(&self, _state: &mut Self::State, _conn: ConnId, _why: Closed) {}

    /// A timer set with [`Cx::set_timer`] is due. What it appends to `out` is sent
    /// like a push (after every answer already placed; dropped past the push
    /// limit); it may set the next timer. Not called once the connection is closing.
    fn timer(&self, _state: &mut Self::State, _out: &mut BytesMut, _cx: &Cx) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so that a failure reproduces.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    /// Mutates valid requests (flipped, dropped, duplicated bytes, random splits) and
    /// feeds them the way the reactor does: a decoder must never panic, never consume
    /// more than it was given, and never make progress without consuming or answering.
    fn hammer<P: Protocol>(p: &P, seeds: &[&[u8]]) {
        let clock = Clock::default();
        let mut cx = Cx::new(&clock);
        let mut rng = Lcg(42);
        for round in 0..3000 {
            let mut input: Vec<u8> =
                seeds[round % seeds.len()].repeat(1 + (rng.next() % 3) as usize);
            for _ in 0..rng.next() % 6 {
                let i = (rng.next() as usize) % input.len().max(1);
                match rng.next() % 4 {
                    0 if !input.is_empty() => input[i] = rng.next() as u8,
                    1 if !input.is_empty() => {
                        input.remove(i);
                    }
                    2 => input.insert(i.min(input.len()), rng.next() as u8),
                    _ => {
                        let special = b"\r\n{}\"\\:,0";
                        input.insert(
                            i.min(input.len()),
                            special[(rng.next() as usize) % special.len()],
                        )
                    }
                }
            }
            cx.max_requests = if rng.next().is_multiple_of(4) {
                1
            } else {
                usize::MAX
            };
            cx.out_limit = if rng.next().is_multiple_of(4) {
                64
            } else {
                usize::MAX
            };
            let mut st = P::State::default();
            let mut out = BytesMut::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let take = 1 + (rng.next() as usize) % rest.len();
                pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                loop {
                    let before = out.len();
                    let d = p.decode(&mut st, &pending, &mut out, &cx);
                    assert!(d.consumed <= pending.len());
                    assert!(d.errors <= d.requests);
                    pending.drain(..d.consumed);
                    if d.next == Next::Close {
                        break;
                    }
                    if d.next == Next::Yield {
                        assert!(d.requests > 0 || out.len() >= cx.out_limit || d.consumed > 0);
                        out.clear(); // the reactor flushes before decoding again
                        continue;
                    }
                    assert!(out.len() >= before);
                    break;
                }
            }
        }
    }

    #[test]
    fn http_decoder_survives_mangled_input() {
        hammer(
            &crate::http::App::new(crate::http::hello).limits(crate::http::Limits {
                max_body: 64,
                ..crate::http::Limits::default()
            }),
            &[
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            ],
        );
    }

    #[test]
    fn json_decoder_survives_mangled_input() {
        hammer(
            &Json { max_message: 100 },
            &[
                br#"{"Uid":"1","Val":"a"}"#,
                b"{\"Uid\":\"2\",\"Val\":\"b\\u00e9\"}\n",
                br#"{"Uid":"3","Val":"c","X":[1,{"y":null}]}  "#,
            ],
        );
    }

    #[test]
    fn echo_decoder_survives_mangled_input() {
        hammer(&Echo, &[b"anything at all", b"\0\xff"]);
    }
}
