//! Protocols are sans-IO decoders: bytes in, responses appended to an output buffer, no
//! socket inside. The reactor owns every socket, buffer and timer; a protocol only says
//! how many input bytes it consumed, how many requests it answered, and what to do next.
//! That keeps the protocols testable byte by byte and lets users add their own by
//! implementing [`Protocol`].
//!
//! ```
//! use bytes::BytesMut;
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

use bytes::BytesMut;

use crate::clock::Clock;

pub mod echo;
pub mod http;
pub mod json;

pub use echo::Echo;
pub use http::Http;
pub use json::Json;

/// What the reactor should do after a call to [`Protocol::decode`].
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
pub struct Cx<'a> {
    /// Cached wall-clock strings.
    pub clock: &'a Clock,
    /// Stop (with [`Next::Yield`]) before answering another request once the output
    /// holds this many bytes: the reactor's backpressure.
    pub out_limit: usize,
    /// Answer at most this many requests in this call (1 when answers are delayed).
    pub max_requests: usize,
}

impl<'a> Cx<'a> {
    /// A context with no limits.
    pub fn new(clock: &'a Clock) -> Self {
        Cx {
            clock,
            out_limit: usize::MAX,
            max_requests: usize::MAX,
        }
    }

    /// Whether the limits forbid answering another request now.
    pub fn full(&self, out: &BytesMut, answered: usize) -> bool {
        answered >= self.max_requests || out.len() >= self.out_limit
    }
}

/// A request/response protocol spoken over one connection.
pub trait Protocol: Clone + Send + 'static {
    /// Per-connection state kept between calls. Keep it small: every connection,
    /// idle ones included, carries one.
    type State: Default + Send;

    /// Decodes requests from `input` and appends their responses to `out`.
    ///
    /// `input` starts at the first unconsumed byte. Bytes not consumed are offered
    /// again, followed by new ones, on the next call.
    fn decode(&self, state: &mut Self::State, input: &[u8], out: &mut BytesMut, cx: &Cx)
    -> Decoded;

    /// Whether the state holds a request in progress (a body still being read, say),
    /// which puts the connection under the read timeout rather than the idle one.
    fn in_request(&self, _state: &Self::State) -> bool {
        false
    }
}
