//! `json`: a stream of `{"Uid":"...","Val":"..."}` objects, newline-separated or back to
//! back (as Go's `json.Encoder`/`json.Decoder` pair produces and accepts), each answered
//! in order by one line `{"Uid":"...","Val":"server: hello, ...","Ts":"<RFC 3339>"}`.
//!
//! Bad input is answered, not fatal: text that is not JSON gets one `{"error":"..."}`
//! line and the decoder skips to the next newline; a well-formed value that is not such
//! an object gets an error line and the stream goes on after it. A message longer than
//! `max_message` gets an error line and a close, so a peer cannot make the server buffer
//! without bound.
//!
//! A message that arrives in pieces is framed as they come, each byte scanned once (a
//! `Framer` keeps its place between reads), and handed to serde_json once complete:
//! the work is linear in its length however it is cut. The answer does not depend on
//! the cuts either; a number or literal at the top level is complete only once a byte
//! that cannot continue it has arrived (`12` may be the start of `123`).

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use super::{Cx, Decoded, Next, Protocol};
use crate::service::{Calls, Codec, Failure};

/// The JSON-lines protocol and its limit.
///
/// ```
/// use reactor::bytes::BytesMut;
/// use reactor::protocol::{Cx, Json, Protocol};
/// let clock = reactor::clock::Clock::default();
/// let (json, mut out) = (Json::default(), BytesMut::new());
/// let mut st = Default::default();
/// let d = json.decode(&mut st, br#"{"Uid":"1","Val":"a"}"#, &mut out, &Cx::new(&clock));
/// assert_eq!(d.requests, 1);
/// assert!(out.starts_with(br#"{"Uid":"1","Val":"server: hello, a""#));
/// ```
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

/// Per-connection state: where the framer is in a message that has not all arrived, and
/// whether the rest of a line is being skipped after a syntax error. A `Framer` packed
/// into 10 bytes, since every connection, idle ones included, carries one.
///
/// ```
/// use reactor::protocol::{Json, Protocol, json::JsonState};
/// assert!(!Json::default().in_request(&JsonState::default()));
/// ```
#[derive(Default)]
pub struct JsonState([u8; 10]);

impl JsonState {
    fn skipping(&self) -> bool {
        Framer::load(self).skipping
    }
}

impl fmt::Debug for JsonState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Framer::load(self).fmt(f)
    }
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
        st.skipping()
    }
}

/// The `json` protocol with each answer computed on the worker pool (`--work`): a
/// well-formed message goes to the service, and what comes back is answered as inline.
/// Errors in the input are still answered at once, in order. A handler that panics or
/// times out gets `{"error":"handler failed"}` or `{"error":"handler timed out"}`.
///
/// ```
/// use reactor::protocol::json::{JsonCodec, JsonRequest};
/// use reactor::service::Pooled;
/// let slow = |m: JsonRequest| m; // the answer is built from the request on the loop
/// let _pooled = Pooled::new(JsonCodec::default(), slow);
/// ```
#[derive(Clone, Debug, Default)]
pub struct JsonCodec(pub Json);

/// A message of the built-in JSON protocol.
///
/// ```
/// let r = reactor::client::json_request("1", "world");
/// assert_eq!((r.uid.as_str(), r.val.as_str()), ("1", "world"));
/// ```
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
        st.skipping()
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
        let mut f = Framer::load(st);
        let d = self.decode_framed(&mut f, input, out, cx, &mut answer);
        f.store(st);
        d
    }

    fn decode_framed<R>(
        &self,
        f: &mut Framer,
        input: &[u8],
        out: &mut Calls<'_, R>,
        cx: &Cx,
        answer: &mut impl FnMut(&mut Calls<'_, R>, &Cx, Msg),
    ) -> Decoded {
        let mut d = Decoded::default();
        loop {
            if f.skipping {
                match memchr(b'\n', &input[d.consumed..]) {
                    Some(nl) => {
                        d.consumed += nl + 1;
                        f.skipping = false;
                    }
                    None => {
                        d.consumed = input.len();
                        return d;
                    }
                }
            }
            if f.at == 0 {
                while d.consumed < input.len() && input[d.consumed].is_ascii_whitespace() {
                    d.consumed += 1;
                }
            }
            let rest = &input[d.consumed..];
            if rest.is_empty() {
                return d;
            }
            if d.at_limit(cx, out.out()) {
                return d;
            }
            // Judge a message by its first max_message + 1 bytes only: a syntax error
            // past the limit must read as "message too long" however the bytes were
            // split into reads, as it does when they come one by one (found by fuzzing).
            let rest = &rest[..rest.len().min(self.max_message.saturating_add(1))];
            if f.at as usize > rest.len() {
                // Not the input scanned last time (which is always offered again).
                *f = Framer::default();
            }
            let parsed = match next_value(f, rest) {
                Ok(parsed) => parsed,
                Err(Frame::More)
                    if rest.len() <= self.max_message && f.at as usize == rest.len() =>
                {
                    return d;
                }
                Err(_) => {
                    // Incomplete and already over the limit (or nested over a million
                    // levels deep).
                    *f = Framer::default();
                    error_line(out.out(), &"message too long");
                    d.requests += 1;
                    d.errors += 1;
                    d.consumed = input.len();
                    d.next = Next::Close;
                    return d;
                }
            };
            *f = Framer::default();
            match parsed {
                Some(Ok((raw, len))) => {
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
                // Only if the framer and serde_json disagree (see `next_value`).
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
                    f.skipping = true;
                }
                None => return d,
            }
        }
    }
}

/// serde_json's reading of the value at the start of some input, with its length.
type Parsed<'a> = Option<serde_json::Result<(&'a RawValue, usize)>>;

fn parse(slice: &[u8]) -> Parsed<'_> {
    let mut stream = serde_json::Deserializer::from_slice(slice).into_iter::<&RawValue>();
    let parsed = stream
        .next()
        .map(|r| r.map(|raw| (raw, stream.byte_offset())));
    scanned(match &parsed {
        Some(Ok((_, len))) => *len,
        _ => slice.len(),
    });
    parsed
}

/// serde_json's verdict on the value at the start of `rest`, once the framer has found
/// where it ends or where it goes wrong; `Err` with [`Frame::More`] until then (`f`
/// keeps its place), or with [`Frame::TooDeep`].
fn next_value<'a>(f: &mut Framer, rest: &'a [u8]) -> Result<Parsed<'a>, Frame> {
    let mut first = None;
    if f.at == 0 {
        // Most values arrive whole: serde_json frames them without the framer, unless
        // its verdict could change with more input. It reads a number or a literal at
        // the end of the input as complete, and an error may be one in a number cut
        // short (`1.`) or one the framer sees later (see `Framer`): the framer decides.
        let parsed = parse(rest);
        match &parsed {
            Some(Ok((_, len))) if *len < rest.len() || matches!(rest[0], b'{' | b'[' | b'"') => {
                #[cfg(test)]
                check_framer_agrees(rest, *len);
                return Ok(parsed);
            }
            Some(Err(e)) if !e.is_eof() => first = Some(parsed),
            _ => {}
        }
    }
    match f.scan(rest) {
        Frame::Done(end) => {
            let parsed = parse(&rest[..end]);
            if matches!(&parsed, Some(Err(e)) if e.is_eof()) {
                disagree(rest);
                return Ok(parse(rest));
            }
            Ok(parsed)
        }
        Frame::Bad => {
            let parsed = first.unwrap_or_else(|| parse(rest));
            if !matches!(&parsed, Some(Err(e)) if !e.is_eof()) {
                disagree(rest);
            }
            Ok(parsed)
        }
        more => Err(more),
    }
}

/// The framer and serde_json disagree about a value: a bug in the framer. The tests
/// fail on it; the server goes by serde_json's reading of the whole input, as it did
/// before the framer (which is quadratic for a value that comes in pieces).
fn disagree(rest: &[u8]) {
    if cfg!(test) {
        panic!(
            "the framer and serde_json disagree on {:?}",
            String::from_utf8_lossy(rest)
        );
    }
}

#[cfg(test)]
fn check_framer_agrees(rest: &[u8], len: usize) {
    let before = SCANNED.with(|s| s.get());
    let frame = Framer::default().scan(rest);
    SCANNED.with(|s| s.set(before));
    // A number or literal at the top level comes with the byte after it.
    let want = len + usize::from(!matches!(rest[0], b'{' | b'[' | b'"'));
    assert_eq!(
        frame,
        Frame::Done(want),
        "serde_json read {len} bytes of {:?}",
        String::from_utf8_lossy(rest)
    );
}

/// Nesting levels whose kind (array or object) the framer keeps.
const KEPT_LEVELS: u32 = 16;
/// The deepest nesting the framer follows (20 bits); a message nested deeper (so over a
/// megabyte long) is refused as too long.
const MAX_DEPTH: u32 = (1 << 20) - 1;

/// The bytes after `n`, `t` and `f` in `null`, `true` and `false`.
const LITERALS: &[u8; 10] = b"ullruealse";

/// The role of a string, in `Framer::aux` (bits 2 and 3).
const ROLE: u8 = 0b1100;
const ROLE_VALUE: u8 = 0;
const ROLE_KEY: u8 = 0b0100;
/// After a comma in a level whose kind is not known: a key or a value.
const ROLE_EITHER: u8 = 0b1000;

/// A resumable JSON framer: it finds where the value at the start of its input ends, or
/// the byte where serde_json would find it malformed, reading each byte once however the
/// value is split across reads. It follows the grammar of serde_json's `ignore_value`
/// (which reads a `RawValue`): the value it delimits goes to serde_json, whose verdict
/// and error message are the ones answered. Where the two part ways on purpose, the
/// framer waits for more input: a number or literal at the end of the input may go on,
/// and a number cut short (`1.`, `-`, `1e`) is not an error yet.
///
/// Its state between reads packs into [`JsonState`]: the offset reached, the nesting
/// depth, the lexical state, and the kinds of the outer [`KEPT_LEVELS`] levels (a bit
/// each). Deeper than that, only the current level's kind is known, and only until a
/// value nested in it closes; then the next token tells it again (a key and a colon: an
/// object; a comma or `]` after a string, or a value after a comma that is not a
/// string: an array), and meanwhile a closing bracket of either kind is taken. So a
/// mismatched bracket that deep is answered only once the framer finds an error after
/// it or the value's end, when serde_json reads the whole value (or the message is
/// refused as too long first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Framer {
    /// Bytes of the current value scanned: where the next scan starts.
    at: u32,
    /// Arrays and objects open.
    depth: u32,
    /// Bit `i` set: level `i + 1` is an object (for the outer `KEPT_LEVELS` levels).
    kinds: u16,
    /// The current level's kind when it is deeper than `KEPT_LEVELS`: 0 not known, 1 an
    /// array, 2 an object.
    deep_kind: u8,
    lex: Lex,
    /// In a literal, the index in `LITERALS` of the byte expected; in a string, its role
    /// (`ROLE`) and in a `\u` escape, the bytes of it seen (bits 0 and 1).
    aux: u8,
    /// The rest of a line is being skipped after a syntax error.
    skipping: bool,
}

/// Where the framer is in a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
enum Lex {
    /// Expecting a value.
    #[default]
    Value,
    /// After `[`: a value or `]`.
    ArrayStart,
    /// After `{`: a key or `}`.
    ObjectStart,
    /// After a comma in an object: a key.
    Key,
    /// After a key: a colon.
    Colon,
    /// After a value in an array or object: a comma or the closing bracket.
    After,
    /// After a comma in a level whose kind is not known: a key or a value.
    KeyOrValue,
    /// After a string that is a key or a value: a colon, a comma or `]` tells which.
    AfterKeyOrValue,
    /// In a string.
    Str,
    /// After a backslash in a string.
    Escape,
    /// In a `\u` escape.
    Unicode,
    /// In a `\u` escape with a byte that is not a hex digit: an error at its fourth
    /// byte, where serde_json checks them.
    BadUnicode,
    /// In `null`, `true` or `false`.
    Literal,
    /// A literal at the top level: complete with the next byte.
    TopEnd,
    /// In a number: after `-`, after a leading `0`, in the integer part, after the
    /// point, in the fraction, after the `e`, after the exponent's sign, in the exponent.
    Minus,
    Zero,
    Int,
    Point,
    Fraction,
    E,
    ExpSign,
    Exponent,
}

impl Lex {
    /// Every state, in the order of their values.
    const ALL: [Lex; 22] = [
        Lex::Value,
        Lex::ArrayStart,
        Lex::ObjectStart,
        Lex::Key,
        Lex::Colon,
        Lex::After,
        Lex::KeyOrValue,
        Lex::AfterKeyOrValue,
        Lex::Str,
        Lex::Escape,
        Lex::Unicode,
        Lex::BadUnicode,
        Lex::Literal,
        Lex::TopEnd,
        Lex::Minus,
        Lex::Zero,
        Lex::Int,
        Lex::Point,
        Lex::Fraction,
        Lex::E,
        Lex::ExpSign,
        Lex::Exponent,
    ];
}

/// The result of a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// The value goes on past the input.
    More,
    /// The value is the first this many bytes (with, for a number or literal at the top
    /// level, the byte after it, which serde_json checks).
    Done(usize),
    /// A syntax error at the last byte scanned.
    Bad,
    /// Nested deeper than `MAX_DEPTH`.
    TooDeep,
}

impl Framer {
    /// Unpacks the state: 32 bits of `at`, 20 of `depth`, 16 of `kinds`, 2 of
    /// `deep_kind`, 5 of `lex`, 4 of `aux` and 1 of `skipping`, from bit 0 up.
    fn load(st: &JsonState) -> Framer {
        let mut b = [0u8; 16];
        b[..10].copy_from_slice(&st.0);
        let v = u128::from_le_bytes(b);
        let bits = |from: u32, n: u32| ((v >> from) & ((1 << n) - 1)) as u32;
        Framer {
            at: bits(0, 32),
            depth: bits(32, 20),
            kinds: bits(52, 16) as u16,
            deep_kind: bits(68, 2) as u8,
            lex: Lex::ALL
                .get(bits(70, 5) as usize)
                .copied()
                .unwrap_or_default(),
            aux: bits(75, 4) as u8,
            skipping: bits(79, 1) == 1,
        }
    }

    fn store(&self, st: &mut JsonState) {
        debug_assert!(self.depth <= MAX_DEPTH && self.deep_kind < 4 && self.aux < 16);
        let v = u128::from(self.at)
            | (u128::from(self.depth) << 32)
            | (u128::from(self.kinds) << 52)
            | (u128::from(self.deep_kind) << 68)
            | (u128::from(self.lex as u8) << 70)
            | (u128::from(self.aux) << 75)
            | (u128::from(self.skipping) << 79);
        st.0.copy_from_slice(&v.to_le_bytes()[..10]);
    }

    /// Scans `rest`, which starts with the current value, from where the last scan
    /// stopped.
    fn scan(&mut self, rest: &[u8]) -> Frame {
        let start = self.at as usize;
        let mut i = start;
        let frame = loop {
            let Some(&b) = rest.get(i) else {
                break Frame::More;
            };
            // serde_json's whitespace (not form feed).
            let ws = matches!(b, b' ' | b'\n' | b'\t' | b'\r');
            match self.lex {
                Lex::Value => match b {
                    _ if ws => {}
                    b'"' => self.string(ROLE_VALUE),
                    b'n' => self.literal(0),
                    b't' => self.literal(3),
                    b'f' => self.literal(6),
                    b'-' => self.lex = Lex::Minus,
                    b'0' => self.lex = Lex::Zero,
                    b'1'..=b'9' => self.lex = Lex::Int,
                    b'[' | b'{' if self.depth == MAX_DEPTH => break Frame::TooDeep,
                    b'[' | b'{' => self.push(b == b'{'),
                    _ => break Frame::Bad,
                },
                Lex::ArrayStart => match b {
                    _ if ws => {}
                    b']' => {
                        if self.pop() {
                            break Frame::Done(i + 1);
                        }
                    }
                    _ => {
                        self.lex = Lex::Value;
                        continue;
                    }
                },
                Lex::ObjectStart | Lex::Key => match b {
                    _ if ws => {}
                    b'}' if self.lex == Lex::ObjectStart => {
                        if self.pop() {
                            break Frame::Done(i + 1);
                        }
                    }
                    b'"' => self.string(ROLE_KEY),
                    _ => break Frame::Bad,
                },
                Lex::Colon => match b {
                    _ if ws => {}
                    b':' => self.lex = Lex::Value,
                    _ => break Frame::Bad,
                },
                Lex::After => {
                    let object = self.kind();
                    match b {
                        _ if ws => {}
                        b',' => {
                            self.lex = match object {
                                Some(true) => Lex::Key,
                                Some(false) => Lex::Value,
                                None => Lex::KeyOrValue,
                            }
                        }
                        b']' if object != Some(true) => {
                            if self.pop() {
                                break Frame::Done(i + 1);
                            }
                        }
                        b'}' if object != Some(false) => {
                            if self.pop() {
                                break Frame::Done(i + 1);
                            }
                        }
                        _ => break Frame::Bad,
                    }
                }
                Lex::KeyOrValue => match b {
                    _ if ws => {}
                    b'"' => self.string(ROLE_EITHER),
                    _ => {
                        // Only an array has a value here.
                        self.learn(false);
                        self.lex = Lex::Value;
                        continue;
                    }
                },
                Lex::AfterKeyOrValue => match b {
                    _ if ws => {}
                    b':' => {
                        self.learn(true);
                        self.lex = Lex::Value;
                    }
                    b',' | b']' => {
                        self.learn(false);
                        self.lex = Lex::After;
                        continue;
                    }
                    // `}` too: a key needs a colon, and an array ends with `]`.
                    _ => break Frame::Bad,
                },
                Lex::Str => match b {
                    b'"' => match self.aux & ROLE {
                        ROLE_KEY => self.lex = Lex::Colon,
                        ROLE_EITHER => self.lex = Lex::AfterKeyOrValue,
                        _ if self.depth == 0 => break Frame::Done(i + 1),
                        _ => self.lex = Lex::After,
                    },
                    b'\\' => self.lex = Lex::Escape,
                    ..0x20 => break Frame::Bad,
                    _ => {
                        // Most of a message: skip the plain bytes in one go.
                        i += 1;
                        while i < rest.len() && !matches!(rest[i], b'"' | b'\\' | ..0x20) {
                            i += 1;
                        }
                        continue;
                    }
                },
                Lex::Escape => match b {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.lex = Lex::Str,
                    b'u' => {
                        self.lex = Lex::Unicode;
                        self.aux &= ROLE;
                    }
                    _ => break Frame::Bad,
                },
                Lex::Unicode | Lex::BadUnicode => {
                    if !b.is_ascii_hexdigit() {
                        self.lex = Lex::BadUnicode;
                    }
                    if self.aux & 3 < 3 {
                        self.aux += 1;
                    } else if self.lex == Lex::BadUnicode {
                        break Frame::Bad;
                    } else {
                        self.lex = Lex::Str;
                        self.aux &= ROLE;
                    }
                }
                Lex::Literal => {
                    if b != LITERALS[usize::from(self.aux)] {
                        break Frame::Bad;
                    }
                    self.aux += 1;
                    if matches!(self.aux, 3 | 6 | 10) {
                        self.lex = if self.depth == 0 {
                            Lex::TopEnd
                        } else {
                            Lex::After
                        };
                    }
                }
                Lex::TopEnd => break Frame::Done(i + 1),
                Lex::Minus => match b {
                    b'0' => self.lex = Lex::Zero,
                    b'1'..=b'9' => self.lex = Lex::Int,
                    _ => break Frame::Bad,
                },
                Lex::Point => match b {
                    b'0'..=b'9' => self.lex = Lex::Fraction,
                    _ => break Frame::Bad,
                },
                Lex::E => match b {
                    b'+' | b'-' => self.lex = Lex::ExpSign,
                    b'0'..=b'9' => self.lex = Lex::Exponent,
                    _ => break Frame::Bad,
                },
                Lex::ExpSign => match b {
                    b'0'..=b'9' => self.lex = Lex::Exponent,
                    _ => break Frame::Bad,
                },
                Lex::Zero | Lex::Int | Lex::Fraction | Lex::Exponent => match (self.lex, b) {
                    (Lex::Zero, b'0'..=b'9') => break Frame::Bad,
                    (_, b'0'..=b'9') => {}
                    (Lex::Zero | Lex::Int, b'.') => self.lex = Lex::Point,
                    (Lex::Zero | Lex::Int | Lex::Fraction, b'e' | b'E') => self.lex = Lex::E,
                    // The number ended before this byte: at the top level, serde_json
                    // checks the byte; inside an array or object, it is the next token.
                    _ if self.depth == 0 => break Frame::Done(i + 1),
                    _ => {
                        self.lex = Lex::After;
                        continue;
                    }
                },
            }
            i += 1;
        };
        let end = match frame {
            Frame::More => rest.len(),
            Frame::Done(end) => end,
            Frame::Bad | Frame::TooDeep => i + 1,
        };
        scanned(end - start);
        self.at = u32::try_from(end).unwrap_or(u32::MAX);
        frame
    }

    fn string(&mut self, role: u8) {
        self.lex = Lex::Str;
        self.aux = role;
    }

    fn literal(&mut self, at: u8) {
        self.lex = Lex::Literal;
        self.aux = at;
    }

    fn push(&mut self, object: bool) {
        self.depth += 1;
        if self.depth <= KEPT_LEVELS {
            let bit = 1 << (self.depth - 1);
            self.kinds = if object {
                self.kinds | bit
            } else {
                self.kinds & !bit
            };
        } else {
            self.deep_kind = 1 + u8::from(object);
        }
        self.lex = if object {
            Lex::ObjectStart
        } else {
            Lex::ArrayStart
        };
    }

    /// Closes the current level; `true` when that ends the value.
    fn pop(&mut self) -> bool {
        self.depth -= 1;
        // Deeper than KEPT_LEVELS, the enclosing level's kind was not kept.
        self.deep_kind = 0;
        self.lex = Lex::After;
        self.depth == 0
    }

    /// The current level's kind: `Some(true)` for an object, `None` if not known.
    fn kind(&self) -> Option<bool> {
        if (1..=KEPT_LEVELS).contains(&self.depth) {
            Some((self.kinds >> (self.depth - 1)) & 1 == 1)
        } else {
            match self.deep_kind {
                1 => Some(false),
                2 => Some(true),
                _ => None,
            }
        }
    }

    /// What the current level turned out to be, when it is deeper than KEPT_LEVELS.
    fn learn(&mut self, object: bool) {
        if self.depth > KEPT_LEVELS {
            self.deep_kind = 1 + u8::from(object);
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes looked at by the parsing passes of this thread's decoders.
    static SCANNED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts `n` bytes looked at by a parsing pass (a statistic for the tests).
#[inline]
fn scanned(n: usize) {
    #[cfg(test)]
    SCANNED.with(|s| s.set(s.get() + n));
    let _ = n;
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

    /// Feeds `pieces` one after the other through the pooled codec, the way the reactor
    /// does (unconsumed bytes are offered again with the next piece), and returns a
    /// transcript: the calls handed to the pool and the lines answered at once, in order.
    fn transcript<'a>(p: &Json, pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
        let clock = Clock::default();
        let cx = Cx::new(&clock);
        let codec = JsonCodec(p.clone());
        let mut st = JsonState::default();
        let mut out = BytesMut::new();
        let mut calls = Vec::new();
        let mut pending = Vec::new();
        let mut closed = false;
        for piece in pieces {
            pending.extend_from_slice(piece);
            let d = codec.decode(
                &mut st,
                &pending,
                &mut Calls::new(&mut out, &mut calls),
                &cx,
            );
            pending.drain(..d.consumed);
            if d.next == Next::Close {
                closed = true;
                break;
            }
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let mut lines = Vec::new();
        let mut at = 0;
        for (offset, r) in calls {
            lines.extend(text[at..offset].lines().map(str::to_string));
            lines.push(format!("call {:?} {:?}", r.uid, r.val));
            at = offset;
        }
        lines.extend(text[at..].lines().map(str::to_string));
        if closed {
            lines.push("close".into());
        }
        lines
    }

    /// Every way of cutting `input` in two, and in pieces of every size up to 16, gives
    /// the transcript of the whole input.
    fn assert_split_independent(p: &Json, input: &[u8]) -> Vec<String> {
        let whole = transcript(p, [input]);
        let show = || String::from_utf8_lossy(input).into_owned();
        for cut in 1..input.len() {
            let got = transcript(p, [&input[..cut], &input[cut..]]);
            assert_eq!(got, whole, "cut at {cut} of {:?}", show());
        }
        for step in 1..=16 {
            let got = transcript(p, input.chunks(step));
            assert_eq!(got, whole, "pieces of {step} of {:?}", show());
        }
        whole
    }

    #[test]
    fn framing_does_not_depend_on_how_the_input_is_split() {
        let p = Json::default();
        // Valid values of every kind, back to back, on lines, and with strings full of
        // what looks like structure.
        let valid = br#"{"Uid":"1","Val":"a{b}[c]\"d\\","X":{"n":[1,-2.5e+3,0,0.25E-2,{"d":{"e":[]}}],"t":true,"f":false,"z":null}}
{"Val":"\u00e9\ud83d\ude00 \"}\" \\u0022","Uid":"2"}{"Uid":"3","Val":""}  [1,"two",{"3":[4]}] 12 -0.5e-7 3E2 0 "str\"ing"true false null {}[]
{ "Uid" : "4" , "Val" : "spaced\t" }
"#;
        let t = assert_split_independent(&p, valid);
        let calls: Vec<_> = t.iter().filter(|l| l.starts_with("call")).collect();
        assert_eq!(
            calls,
            [
                r#"call "1" "a{b}[c]\"d\\""#,
                r#"call "2" "é😀 \"}\" \\u0022""#,
                r#"call "3" """#,
                r#"call "4" "spaced\t""#,
            ]
        );
        // The array, 4 numbers, a string, 3 literals, {} (no Uid) and [].
        let bad = t.iter().filter(|l| l.contains("bad message")).count();
        assert_eq!((bad, t.len()), (11, 15), "{t:#?}");

        // Errors: each answered as soon as it is seen, then the rest of its line skipped.
        let invalid = b"this is not json\n{\"Uid\": oops} {\"Uid\":\"x\",\"Val\":\"skipped\"}\n\
{\"Uid\":\"5\" \"x\"\n{\"Uid\":\"6\",\"Val\":\"b\"}\n12x {\"Uid\":\"x\",\"Val\":\"skipped\"}\n1.x\n[1,]\n{\"a\":1,}\n\
[01]\n\"\\uZZZZ\"\n\"tab\tin string\"\n{\"Uid\":\"7\",\"Val\":\"d\"}]\n{\"a\" 1}\nnul\n[1 2]\n\"\\q\"\n\
{\"Uid\":\"8\",\"Val\":\"\\u00e9\"}\n";
        let t = assert_split_independent(&p, invalid);
        let calls: Vec<_> = t.iter().filter(|l| l.starts_with("call")).collect();
        assert_eq!(
            calls,
            [r#"call "6" "b""#, r#"call "7" "d""#, r#"call "8" "é""#]
        );
        let errors = t.iter().filter(|l| l.contains("invalid JSON")).count();
        assert_eq!(errors, 15, "{t:#?}");

        // Nesting deeper than the framer keeps kinds for, valid and not. The mismatched
        // brackets after `[1]` and `{}` (whose enclosing level's kind is forgotten) are
        // found at the next byte that fits neither kind, the next line's `{`: answered
        // later than serde_json alone would, the same way.
        let deep = [
            format!(
                "{{\"Uid\":\"9\",\"Val\":\"v\",\"X\":{}{{\"k\":\"]}}\\\"\",\"l\":[1,{{\"m\":null}}]}}{}}}\n",
                "[".repeat(40),
                ",2]".repeat(40)
            ),
            format!("{}1{}\n", "{\"a\":".repeat(30), "}".repeat(30)),
            format!("{}x]\n{{\"Uid\":\"10\",\"Val\":\"w\"}}\n", "[".repeat(30)),
            format!("{}{{\"a\":[1]]\n{{\"Uid\":\"11\",\"Val\":\"w\"}}\n", "[".repeat(30)),
            format!("{}[1],\"s\"}}\n{{\"Uid\":\"12\",\"Val\":\"w\"}}\n", "[".repeat(30)),
            format!("{}{{\"a\":{{}},2]\n{{\"Uid\":\"13\",\"Val\":\"w\"}}\n", "[".repeat(30)),
        ]
        .concat();
        let t = assert_split_independent(&p, deep.as_bytes());
        let calls: Vec<_> = t.iter().filter(|l| l.starts_with("call")).collect();
        assert_eq!(
            calls,
            [
                r#"call "9" "v""#,
                r#"call "10" "w""#,
                r#"call "11" "w""#,
                r#"call "12" "w""#,
                r#"call "13" "w""#
            ],
            "{t:#?}"
        );
        assert_eq!(t.len(), 10, "{t:#?}");

        // A number, or a literal, at the end of the input may go on: it is complete only
        // once a byte that cannot continue it arrives.
        for input in [
            b"12".as_slice(),
            b"-",
            b"1.",
            b"1.5e",
            b"1e+",
            b"tru",
            b"true",
            b"[1.",
            b"{\"a\":-",
        ] {
            assert_eq!(assert_split_independent(&p, input), Vec::<String>::new());
        }
        let t = assert_split_independent(&p, b"12 1.5e+3\n-0{\"Uid\":\"14\",\"Val\":\"n\"}");
        assert_eq!(t.len(), 4, "{t:#?}");
        assert_eq!(t[3], r#"call "14" "n""#);
    }

    #[test]
    fn a_message_dribbled_in_small_pieces_costs_linear_work() {
        // About 60 KB: a long string, then many small values of every kind.
        let mut msg = format!(
            "{{\"Uid\":\"big\",\"Val\":\"{}\",\"X\":[",
            "v\\\"{}[]".repeat(2500)
        );
        while msg.len() < 60_000 {
            msg.push_str(r#"{"k":"a\"b\u00e9","n":[1,-2.5e+3,true,null,{"d":[]}]},"#);
        }
        msg.push_str("0]}\n");
        let len = msg.len();
        let p = Json::default();
        assert!(len > 60_000 && len < p.max_message);
        const STEP: usize = 64;
        SCANNED.with(|s| s.set(0));
        let t = transcript(&p, msg.as_bytes().chunks(STEP));
        let scanned = SCANNED.with(|s| s.get());
        // Each byte is looked at once by the framer and once by serde when the value is
        // complete; serde also tries the first piece, before the framer takes over.
        assert!(
            scanned <= 2 * len + STEP,
            "{scanned} bytes scanned for a message of {len}"
        );
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(t[0].starts_with(r#"call "big""#), "{t:?}");
    }

    /// A small deterministic generator, so that a failure reproduces.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.next() % from.len()]
        }
    }

    /// A random JSON value of every kind, nested up to `depth` levels.
    fn value(rng: &mut Lcg, depth: usize, out: &mut String) {
        let ws = [" ", "", "", "\t", "\r\n"];
        match rng.next() % if depth == 0 { 4 } else { 6 } {
            0 => out.push_str(rng.pick(&["0", "-1", "12.5e-3", "7E+2", "-0.0", "1e9", "3"])),
            1 => out.push_str(rng.pick(&["true", "false", "null"])),
            2 | 3 => {
                out.push('"');
                for _ in 0..rng.next() % 4 {
                    out.push_str(
                        rng.pick(&["a", "\\\"", "\\\\", "{", "]", "\\u00e9", "é", "\\n", " "]),
                    );
                }
                out.push('"');
            }
            k => {
                let object = k == 4;
                out.push(if object { '{' } else { '[' });
                for i in 0..rng.next() % 4 {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(rng.pick(&ws));
                    if object {
                        out.push_str("\"k\"");
                        out.push_str(rng.pick(&ws));
                        out.push(':');
                    }
                    value(rng, depth - 1, out);
                    out.push_str(rng.pick(&ws));
                }
                out.push(if object { '}' } else { ']' });
            }
        }
    }

    #[test]
    fn the_framer_agrees_with_serde_json_on_mangled_values() {
        let mut rng = Lcg(7);
        let special = b"{}[]\",:\\0123456789.eE+-tfnulrase \n\t\x01\xc3";
        let mut checked = [0usize; 3];
        for round in 0..40_000 {
            // Deep enough, now and then, for levels whose kind is inferred.
            let deep = round % 10 == 0;
            let mut text = String::new();
            if deep {
                text.push_str(&"[{\"k\":".repeat(10));
            }
            value(&mut rng, 4, &mut text);
            if deep {
                text.push_str(&"}]".repeat(10));
            }
            let mut input = text.into_bytes();
            for _ in 0..rng.next() % 4 {
                let i = rng.next() % (input.len() + 1);
                let b = special[rng.next() % special.len()];
                match rng.next() % 3 {
                    0 if i < input.len() => input[i] = b,
                    1 if i < input.len() => {
                        input.remove(i);
                    }
                    _ => input.insert(i, b),
                }
            }
            while input.first().is_some_and(u8::is_ascii_whitespace) {
                input.remove(0);
            }
            if input.is_empty() {
                continue;
            }
            let whole = parse(&input);
            let mut framer = Framer::default();
            let frame = framer.scan(&input);
            let show = String::from_utf8_lossy(&input);
            // Where serde_json's errors are exact enough to compare: not deeper than
            // the kinds the framer keeps, and on one line (columns are per line).
            let exact = !deep && !input.contains(&b'\n');
            match frame {
                Frame::Done(end) => {
                    checked[0] += 1;
                    let part = parse(&input[..end]);
                    match &part {
                        Some(Err(e)) if e.is_eof() => panic!("{show:?}: {e}"),
                        // The framer leaves serde_json to check UTF-8, and what follows
                        // a number or literal at the top level.
                        Some(Err(e)) if exact => {
                            let e = e.to_string();
                            assert!(
                                e.starts_with("trailing characters")
                                    || e.starts_with("invalid unicode code point"),
                                "{show:?}: {e}"
                            );
                        }
                        _ => {}
                    }
                    if let Some(Ok((_, len))) = whole {
                        let scalar = !matches!(input[0], b'{' | b'[' | b'"');
                        assert_eq!(end, len + usize::from(scalar), "{show:?}");
                    }
                }
                Frame::Bad => {
                    checked[1] += 1;
                    match &whole {
                        // At the byte the framer stopped at (columns count from 1, but
                        // some errors point at the byte before).
                        Some(Err(e)) if !e.is_eof() => {
                            let at = framer.at as usize;
                            assert!(
                                !exact || e.column() == at || e.column() + 1 == at,
                                "{show:?}: {e}, framer at {at}"
                            );
                        }
                        _ => panic!("{show:?}"),
                    }
                }
                Frame::More => {
                    checked[2] += 1;
                    // serde_json may stop at the end of the input: it takes a number
                    // or literal there as complete, or one cut short as an error. It
                    // must not have seen an error before the last byte.
                    if let Some(Err(e)) = &whole
                        && !e.is_eof()
                        && exact
                    {
                        assert!(e.column() >= input.len(), "{show:?}: {e}");
                    }
                    if let Some(Ok((_, len))) = &whole {
                        assert_eq!(*len, input.len(), "{show:?}");
                    }
                }
                Frame::TooDeep => unreachable!(),
            }
        }
        assert!(checked.iter().all(|&n| n > 1000), "{checked:?}");
    }

    #[test]
    fn the_state_packs_into_ten_bytes() {
        assert_eq!(std::mem::size_of::<JsonState>(), 10);
        for (i, lex) in Lex::ALL.iter().enumerate() {
            assert_eq!(*lex as usize, i);
        }
        let mut rng = Lcg(3);
        for _ in 0..1000 {
            let f = Framer {
                at: rng.next() as u32 ^ (rng.next() as u32) << 16,
                depth: (rng.next() as u32) & MAX_DEPTH,
                kinds: rng.next() as u16,
                deep_kind: (rng.next() % 3) as u8,
                lex: Lex::ALL[rng.next() % Lex::ALL.len()],
                aux: (rng.next() % 16) as u8,
                skipping: rng.next() % 2 == 1,
            };
            let mut st = JsonState::default();
            f.store(&mut st);
            assert_eq!(Framer::load(&st), f);
        }
        assert_eq!(Framer::load(&JsonState::default()), Framer::default());
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

    // Regressions found by fuzzing (fuzz/regressions.md): the answer must not depend
    // on how the peer's bytes were split into reads.
    #[test]
    fn fuzz_r1_a_bare_scalar_split_across_reads_is_one_message() {
        for input in [&b"12\n"[..], b"truex\n", b"3\x0c\n"] {
            let whole = run(&Json::default(), input, input.len());
            for step in 1..input.len() {
                assert_eq!(
                    run(&Json::default(), input, step),
                    whole,
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn fuzz_r6_a_message_split_inside_a_number_is_answered() {
        for input in [
            &br#"{"Uid":"1","Val":"a","X":-1}"#[..],
            br#"{"Uid":"1","Val":"a","X":1.5}"#,
            br#"{"Uid":"1","Val":"a","X":1e+5}"#,
        ] {
            for step in 1..=input.len() {
                let (lines, next) = run(&Json::default(), input, step);
                assert_eq!(next, Next::NeedMore);
                assert_eq!(lines.len(), 1);
                assert_eq!(
                    lines[0]["Uid"],
                    "1",
                    "{} step {step}: {}",
                    String::from_utf8_lossy(input),
                    lines[0]
                );
            }
        }
    }

    #[test]
    fn fuzz_r5_an_oversized_bad_message_gets_one_answer_however_split() {
        let p = Json { max_message: 16 };
        let input = b"[1,2,3,4,5,6,7,8,9,0 x\n";
        let whole = run(&p, input, input.len());
        for step in 1..input.len() {
            assert_eq!(run(&p, input, step), whole, "step {step}");
        }
    }
}
