//! Each protocol's requests and the check of their answers, on the project's wire
//! module (`reactor::wire`), so the chaos tool and the server agree on one definition.

use std::ops::Range;

use reactor::wire;

use crate::options::Proto;
use crate::rng::Rng;

/// One request of an exchange, and what its answer must be.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    /// Where its bytes are in the exchange's wire bytes (echo: the expected answer).
    pub(crate) bytes: Range<usize>,
    /// Unique per connection: the echo payload's sequence number, the JSON `Uid`.
    pub(crate) uid: u64,
    /// JSON: the `Val` sent.
    pub(crate) val: String,
}

/// Characters of a JSON `Val`: some need escaping on the wire.
const VAL_CHARS: &[char] = &[
    'a', 'b', 'z', '0', '9', ' ', '"', '\\', '/', '{', '}', 'é', '→',
];

impl Proto {
    /// Appends request `uid` to `out`.
    pub(crate) fn encode(
        self,
        uid: u64,
        rng: &mut Rng,
        max_payload: usize,
        out: &mut Vec<u8>,
    ) -> Request {
        let start = out.len();
        let mut val = String::new();
        match self {
            Proto::Echo => wire::echo::payload(uid, rng.range(1, max_payload.max(1)), out),
            Proto::Http => wire::http::encode_get("/", "chaos", out),
            Proto::Json => {
                val = format!("v{uid}-");
                for _ in 0..rng.range(0, 40) {
                    val.push(VAL_CHARS[rng.range(0, VAL_CHARS.len() - 1)]);
                }
                wire::json::encode(&uid.to_string(), &val, out);
            }
        }
        Request {
            bytes: start..out.len(),
            uid,
            val,
        }
    }

    /// Frames and checks the answer to `req` at the start of `buf` (`wire`: the
    /// exchange's request bytes): `Ok(None)` while it is incomplete, `Ok(Some(len))`
    /// when it is right, `Err` when it is not the answer to `req`.
    pub(crate) fn answer(
        self,
        buf: &[u8],
        req: &Request,
        wire: &[u8],
    ) -> Result<Option<usize>, String> {
        match self {
            Proto::Echo => {
                let sent = &wire[req.bytes.clone()];
                wire::echo::frame(buf, sent).map_err(|e| echo_difference(e, req, buf, sent))
            }
            Proto::Http => {
                let Some(f) = wire::http::frame(buf)? else {
                    return Ok(None);
                };
                wire::http::check(f.status, &buf[f.body], wire::http::HELLO_BODY)?;
                Ok(Some(f.len))
            }
            Proto::Json => {
                let Some((len, reply)) = wire::json::frame(buf, wire::json::MAX_MESSAGE)? else {
                    return Ok(None);
                };
                let want = req.uid.to_string();
                if reply.uid.as_deref() != Some(want.as_str()) {
                    return Err(format!(
                        "JSON answer for Uid {:?} where {want} was next",
                        reply.uid
                    ));
                }
                wire::json::check(&req.val, &reply)?;
                Ok(Some(len))
            }
        }
    }
}

/// Where an echo differs from what was sent, to tell a stray byte from another
/// connection's payload.
fn echo_difference(e: String, req: &Request, got: &[u8], sent: &[u8]) -> String {
    let at = got.iter().zip(sent).position(|(a, b)| a != b).unwrap_or(0);
    let show = |b: &[u8]| String::from_utf8_lossy(&b[at..b.len().min(at + 16)]).into_owned();
    format!(
        "echo of request {} ({} bytes): {e} from byte {at}: got {:?}, sent {:?}",
        req.uid,
        sent.len(),
        show(got),
        show(sent)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_are_matched_by_uid_and_val() {
        let mut rng = Rng::new(1, 1);
        let mut out = Vec::new();
        let req = Proto::Json.encode(5, &mut rng, 0, &mut out);
        let good = format!(
            "{{\"Uid\":\"5\",\"Val\":{},\"Ts\":\"t\"}}\n",
            serde_json::to_string(&wire::json::hello(&req.val)).unwrap()
        );
        let n = good.len();
        assert_eq!(Proto::Json.answer(good.as_bytes(), &req, &out), Ok(Some(n)));
        assert_eq!(
            Proto::Json.answer(&good.as_bytes()[..n - 1], &req, &out),
            Ok(None)
        );
        let other = good.replace("\"5\"", "\"6\"");
        assert!(Proto::Json.answer(other.as_bytes(), &req, &out).is_err());
    }

    #[test]
    fn echo_answers_must_be_the_bytes_sent() {
        let mut rng = Rng::new(1, 2);
        let mut out = Vec::new();
        let req = Proto::Echo.encode(9, &mut rng, 50, &mut out);
        let mut back = out.clone();
        assert_eq!(Proto::Echo.answer(&back, &req, &out), Ok(Some(out.len())));
        *back.last_mut().unwrap() ^= 1;
        assert!(Proto::Echo.answer(&back, &req, &out).is_err());
    }
}
