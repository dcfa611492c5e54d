//! `echo`: every byte read is written back, in order.

use bytes::BytesMut;

use super::{Cx, Decoded, Next, Protocol};

/// Writes back every byte it reads. Each read counts as one request.
///
/// ```
/// use reactor::bytes::BytesMut;
/// use reactor::protocol::{Cx, Echo, Protocol};
/// let clock = reactor::clock::Clock::default();
/// let mut out = BytesMut::new();
/// let d = Echo.decode(&mut (), b"abc", &mut out, &Cx::new(&clock));
/// assert_eq!((d.consumed, &out[..]), (3, &b"abc"[..]));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Protocol for Echo {
    type State = ();

    fn decode(&self, _: &mut (), input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut d = Decoded::default();
        if input.is_empty() || d.at_limit(cx, out) {
            return d;
        }
        let room = cx.out_limit.saturating_sub(out.len());
        let n = input.len().min(room);
        out.extend_from_slice(&input[..n]);
        d.consumed = n;
        d.requests = 1;
        if n < input.len() {
            d.next = Next::Yield;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn echoes_up_to_the_output_limit() {
        let clock = Clock::default();
        let mut cx = Cx::new(&clock);
        cx.out_limit = 4;
        let mut out = BytesMut::new();
        let d = Echo.decode(&mut (), b"abcdef", &mut out, &cx);
        assert_eq!((d.consumed, d.next), (4, Next::Yield));
        assert_eq!(&out[..], b"abcd");
        let d = Echo.decode(&mut (), b"ef", &mut out, &cx);
        assert_eq!((d.consumed, d.next), (0, Next::Yield));
    }
}
