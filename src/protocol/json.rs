//! `json`: a stream of `{"Uid":"...","Val":"..."}` objects, newline-separated or back to
//! back (as Go's `json.Encoder`/`json.Decoder` pair produces and accepts), each answered
//! in order by one line `{"Uid":"...","Val":"server: hello, ...","Ts":"<RFC 3339>"}`.
//!
//! Bad input is answered, not fatal: text that is not JSON gets one `{"error":"..."}`
//! line and the decoder skips to the next newline; a well-formed value that is not such
//! an object gets an error line and the stream goes on after it. A message longer than
//! `max_message` gets an error line and a close, so a peer cannot make the server buffer
//! without bound.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use super::{Cx, Decoded, Next, Protocol};
use crate::service::{Calls, Codec, Failure};

/// The JSON-lines protocol and its limit.
#[derive(Clone, Debug)]
pub struct Json {
    /// Largest message, in bytes.
    pub max_message: usize,
}

impl Default for Json {
    fn default() -> Self {
        Json {
            max_message: crate::wire::json::MAX_MESSAGE,
        }
    }
}

/// Per-connection state: whether the rest of the current line is being skipped after a
/// syntax error.
#[derive(Default, Debug)]
pub struct JsonState {
    skipping: bool,
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(rename = "Uid", borrow)]
    uid: Cow<'a, str>,
    #[serde(rename = "Val", borrow)]
    val: Cow<'a, str>,
}

#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "Uid")]
    uid: &'a str,
    #[serde(rename = "Val")]
    val: Hello<'a>,
    #[serde(rename = "Ts")]
    ts: &'a str,
}

/// Serializes as the string `server: hello, <val>` without building it first.
struct Hello<'a>(&'a str);

impl Serialize for Hello<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{}{}",
            crate::wire::json::REPLY_PREFIX,
            self.0
        ))
    }
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    #[serde(serialize_with = "display")]
    error: &'a dyn fmt::Display,
}

fn display<S: Serializer>(v: &&dyn fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn error_line(out: &mut BytesMut, msg: &dyn fmt::Display) {
    // Writing into a BytesMut cannot fail; serde_json escapes the message.
    let _ = serde_json::to_writer(out.writer(), &ErrorLine { error: msg });
    out.put_u8(b'\n');
}

impl Protocol for Json {
    type State = JsonState;

    fn decode(&self, st: &mut JsonState, input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut none = Vec::new();
        let mut out = Calls::<Infallible>::new(out, &mut none);
        self.decode_with(st, input, &mut out, cx, |out, cx, m| {
            reply(out.out(), cx, &m.uid, &m.val)
        })
    }

    fn in_request(&self, st: &JsonState) -> bool {
        st.skipping
    }
}

/// The `json` protocol with each answer computed on the worker pool (`--work`): a
/// well-formed message goes to the service, and what comes back is answered as inline.
/// Errors in the input are still answered at once, in order. A handler that panics or
/// times out gets `{"error":"handler failed"}` or `{"error":"handler timed out"}`.
#[derive(Clone, Debug, Default)]
pub struct JsonCodec(pub Json);

/// A message of the built-in JSON protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonRequest {
    pub uid: String,
    pub val: String,
}

impl Codec for JsonCodec {
    type State = JsonState;
    type Request = JsonRequest;
    type Response = JsonRequest;

    fn decode(
        &self,
        st: &mut JsonState,
        input: &[u8],
        out: &mut Calls<'_, JsonRequest>,
        cx: &Cx,
    ) -> Decoded {
        self.0.decode_with(st, input, out, cx, |out, _, m| {
            out.call(JsonRequest {
                uid: m.uid.into_owned(),
                val: m.val.into_owned(),
            })
        })
    }

    fn encode(&self, r: JsonRequest, out: &mut BytesMut, cx: &Cx) {
        reply(out, cx, &r.uid, &r.val)
    }

    fn encode_failure(&self, f: Failure, out: &mut BytesMut, _: &Cx) {
        error_line(out, &f)
    }

    fn in_request(&self, st: &JsonState) -> bool {
        st.skipping
    }
}

fn reply(out: &mut BytesMut, cx: &Cx, uid: &str, val: &str) {
    let reply = Reply {
        uid,
        val: Hello(val),
        ts: cx.clock.rfc3339(),
    };
    // Writing into a BytesMut cannot fail.
    let _ = serde_json::to_writer(out.writer(), &reply);
    out.put_u8(b'\n');
}

impl Json {
    /// The decoder, with what to do for each well-formed message left to `answer`:
    /// reply at once (inline) or hand it to the pool.
    fn decode_with<R>(
        &self,
        st: &mut JsonState,
        input: &[u8],
        out: &mut Calls<'_, R>,
        cx: &Cx,
        mut answer: impl FnMut(&mut Calls<'_, R>, &Cx, Msg),
    ) -> Decoded {
        let mut d = Decoded::default();
        loop {
            if st.skipping {
                match memchr(b'\n', &input[d.consumed..]) {
                    Some(nl) => {
                        d.consumed += nl + 1;
                        st.skipping = false;
                    }
                    None => {
                        d.consumed = input.len();
                        return d;
                    }
                }
            }
            while d.consumed < input.len() && input[d.consumed].is_ascii_whitespace() {
                d.consumed += 1;
            }
            let rest = &input[d.consumed..];
            if rest.is_empty() {
                return d;
            }
            if d.at_limit(cx, out.out()) {
                return d;
            }
            let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<&RawValue>();
            match stream.next() {
                Some(Ok(raw)) => {
                    let len = stream.byte_offset();
                    d.requests += 1;
                    if len > self.max_message {
                        error_line(out.out(), &"message too long");
                        d.errors += 1;
                        d.consumed = input.len();
                        d.next = Next::Close;
                        return d;
                    }
                    match serde_json::from_str::<Msg>(raw.get()) {
                        Ok(m) => answer(out, cx, m),
                        Err(e) => {
                            error_line(out.out(), &format_args!("bad message: {e}"));
                            d.errors += 1;
                        }
                    }
                    d.consumed += len;
                }
                Some(Err(e)) if e.is_eof() => {
                    if rest.len() > self.max_message {
                        error_line(out.out(), &"message too long");
                        d.requests += 1;
                        d.errors += 1;
                        d.consumed = input.len();
                        d.next = Next::Close;
                    }
                    return d;
                }
                Some(Err(e)) => {
                    error_line(out.out(), &format_args!("invalid JSON: {e}"));
                    d.requests += 1;
                    d.errors += 1;
                    st.skipping = true;
                }
                None => return d,
            }
        }
    }
}

fn memchr(b: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use serde_json::Value;

    fn run(p: &Json, input: &[u8], step: usize) -> (Vec<Value>, Next) {
        let clock = Clock::default();
        let cx = Cx::new(&clock);
        let mut st = JsonState::default();
        let mut out = BytesMut::new();
        let mut pending = Vec::new();
        let mut next = Next::NeedMore;
        for chunk in input.chunks(step.max(1)) {
            pending.extend_from_slice(chunk);
            let d = p.decode(&mut st, &pending, &mut out, &cx);
            pending.drain(..d.consumed);
            next = d.next;
            if next == Next::Close {
                break;
            }
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, next)
    }

    #[test]
    fn back_to_back_and_newline_separated_messages_split_at_every_byte() {
        let input = br#"{"Uid":"1","Val":"a"}{"Uid":"2","Val":"b\n\u00e9"}
{"Val":"c","Uid":"3","Extra":[1,2]}
"#;
        for step in 1..=input.len() {
            let (lines, next) = run(&Json::default(), input, step);
            assert_eq!(next, Next::NeedMore);
            let uids: Vec<_> = lines.iter().map(|v| v["Uid"].as_str().unwrap()).collect();
            assert_eq!(uids, ["1", "2", "3"], "step {step}");
            assert_eq!(lines[1]["Val"], "server: hello, b\né");
            let ts = lines[0]["Ts"].as_str().unwrap();
            assert_eq!((ts.len(), &ts[10..11], &ts[19..]), (20, "T", "Z"));
        }
    }

    #[test]
    fn invalid_json_gets_an_error_and_the_stream_goes_on() {
        let input = b"this is not json\n{\"Uid\":\"9\",\"Val\":\"x\"}\n[1,2]\n{\"Uid\":\"10\",\"Val\":\"y\"}\n";
        let (lines, next) = run(&Json::default(), input, input.len());
        assert_eq!(next, Next::NeedMore);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0]["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid JSON")
        );
        assert_eq!(lines[1]["Uid"], "9");
        assert!(
            lines[2]["error"]
                .as_str()
                .unwrap()
                .starts_with("bad message")
        );
        assert_eq!(lines[3]["Uid"], "10");
    }

    #[test]
    fn a_message_over_the_limit_gets_an_error_and_a_close() {
        let p = Json { max_message: 100 };
        let big = format!("{{\"Uid\":\"1\",\"Val\":\"{}\"}}\n", "v".repeat(200));
        for step in [7, big.len()] {
            let (lines, next) = run(&p, big.as_bytes(), step);
            assert_eq!(next, Next::Close);
            assert_eq!(lines.len(), 1);
            assert_eq!(lines[0]["error"], "message too long");
        }
    }
}
