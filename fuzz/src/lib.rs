//! The driver the fuzz targets share.
//!
//! The first [`PLAN_BYTES`] bytes of the fuzzer's input are a [`Plan`]: the reactor's
//! limits ([`Cx::out_limit`], [`Cx::max_requests`]), the protocol's own limits, and
//! where the reads split the rest. The rest is fed to a decoder the way the reactor
//! feeds it: each read appended to the bytes left unconsumed by the previous call; on
//! [`Next::Yield`] the output is flushed (cleared) and the decoder called again with
//! what is left; on [`Next::Close`] the connection is done. After every call the
//! decoder's contract is checked (see [`feed`]).
//!
//! Each input is run three ways, and the three must agree byte for byte:
//!
//! 1. in one read with no limits (what the decoder answers to everything at once);
//! 2. split and limited as the plan says, through the inline [`Protocol`];
//! 3. split and limited the same way, through the pooled form ([`Handler`]), each
//!    call run by its service at once and its answer encoded and put where the call
//!    stood in the output.
//!
//! HTTP runs through the request API ([`reactor::http::App`]) with a handler that
//! answers with what it was handed (method, target, headers, body), so the three runs
//! agree only if every request reaches its handler whole and the same however split.
//!
//! Splitting and yielding only change when answers are written, never what is
//! written, so the concatenated outputs must be the same.

use bytes::BytesMut;
use reactor::clock::Clock;
use reactor::http::{App, Limits as Http, Request, Response};
use reactor::protocol::{Cx, Decoded, Json, JsonCodec, Next, Protocol};
use reactor::service::{Calls, Handler, Pooled};

/// Bytes at the start of an input that make its [`Plan`].
pub const PLAN_BYTES: usize = 8;

/// How one input is fed.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// [`Cx::out_limit`]: byte 0 times 4, or unlimited for 0.
    pub out_limit: usize,
    /// [`Cx::max_requests`]: byte 1 mod 4 (1 to 3), or unlimited for 0.
    pub max_requests: usize,
    /// Byte 2, for the target: the protocol's limits (and the request head of `chunked`).
    pub variant: u8,
    /// Byte 3: the largest read, in bytes; 0 delivers everything in one read.
    pub max_read: usize,
    /// Bytes 4 to 7: the seed of the read sizes.
    pub seed: u32,
}

impl Plan {
    /// Splits an input into its plan and the bytes to feed.
    pub fn split(data: &[u8]) -> Option<(Plan, &[u8])> {
        let (h, rest) = data.split_first_chunk::<PLAN_BYTES>()?;
        let plan = Plan {
            out_limit: match h[0] {
                0 => usize::MAX,
                n => usize::from(n) * 4,
            },
            max_requests: match h[1] % 4 {
                0 => usize::MAX,
                n => usize::from(n),
            },
            variant: h[2],
            max_read: usize::from(h[3]),
            seed: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        };
        Some((plan, rest))
    }

    /// The sizes of the reads that deliver `len` bytes.
    pub fn reads(&self, len: usize) -> Vec<usize> {
        if self.max_read == 0 {
            return vec![len];
        }
        let mut x = u64::from(self.seed);
        let mut left = len;
        let mut reads = Vec::new();
        while left > 0 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (1 + (x >> 33) as usize % self.max_read).min(left);
            reads.push(n);
            left -= n;
        }
        reads
    }

    /// The reactor's context this plan asks for.
    pub fn cx<'a>(&self, clock: &'a Clock) -> Cx<'a> {
        let mut cx = Cx::new(clock);
        cx.out_limit = self.out_limit;
        cx.max_requests = self.max_requests;
        cx
    }
}

/// What a connection got, all reads fed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Everything written, flushes included, in order.
    pub output: Vec<u8>,
    pub requests: usize,
    pub errors: usize,
    pub closed: bool,
    /// The bytes offered to the call that closed (not compared).
    pub pending_at_close: usize,
}

impl Outcome {
    fn same(&self, other: &Outcome) -> bool {
        (&self.output, self.requests, self.errors, self.closed)
            == (&other.output, other.requests, other.errors, other.closed)
    }
}

/// Feeds `input` in reads of the sizes in `reads`, the way the reactor does, calling
/// `decode` (a [`Protocol::decode`] or [`codec_decode`]) and checking after each call:
///
/// - it consumed no more than it was given, and at least a byte per request answered;
/// - errors <= requests <= `cx.max_requests`;
/// - it removed nothing from the output;
/// - [`Next::Yield`] only at a limit of `cx`, and only after progress unless the output
///   was full already (so the reactor, which flushes and calls again, cannot spin).
///
/// The output is flushed only on [`Next::Yield`] (a slow peer): between reads it keeps
/// growing, so reads can meet an output that is already over the limit.
pub fn feed<S>(
    input: &[u8],
    reads: &[usize],
    cx: &Cx,
    state: &mut S,
    mut decode: impl FnMut(&mut S, &[u8], &mut BytesMut, &Cx) -> Decoded,
) -> Outcome {
    let mut o = Outcome::default();
    let mut out = BytesMut::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut at = 0;
    'reads: for &n in reads {
        pending.extend_from_slice(&input[at..at + n]);
        at += n;
        loop {
            let before = out.len();
            let d = decode(state, &pending, &mut out, cx);
            assert!(
                d.consumed <= pending.len(),
                "consumed {} of {} bytes: {d:?}",
                d.consumed,
                pending.len()
            );
            assert!(d.errors <= d.requests, "more errors than requests: {d:?}");
            assert!(
                d.requests <= cx.max_requests,
                "{} requests answered with max_requests {}: {d:?}",
                d.requests,
                cx.max_requests
            );
            assert!(
                d.consumed >= d.requests,
                "requests answered without consuming their bytes: {d:?}"
            );
            assert!(
                out.len() >= before,
                "output shrank: {before} -> {}",
                out.len()
            );
            o.requests += d.requests;
            o.errors += d.errors;
            pending.drain(..d.consumed);
            match d.next {
                Next::Close => {
                    o.closed = true;
                    o.pending_at_close = pending.len() + d.consumed;
                    break 'reads;
                }
                Next::Yield => {
                    assert!(
                        cx.full(&out, d.requests),
                        "yielded below the limits (out {} of {}, {} of {} requests): {d:?}",
                        out.len(),
                        cx.out_limit,
                        d.requests,
                        cx.max_requests
                    );
                    // With the output already full before the call, the reactor waits
                    // for it to drain; otherwise the call must have got somewhere.
                    assert!(
                        d.consumed > 0 || before >= cx.out_limit,
                        "yielded without progress (output {before} bytes before the call, \
                         limit {}): {d:?}",
                        cx.out_limit
                    );
                    // The reactor flushes, then decodes what is left.
                    o.output.extend_from_slice(&out);
                    out.clear();
                }
                Next::NeedMore => break,
            }
        }
    }
    o.output.extend_from_slice(&out);
    o
}

/// A pooled handler's decode as the reactor drives it, for [`feed`]: the calls are
/// collected with [`Calls`], checked (each stands at an output offset between the
/// output's length before the call and after it, in order; calls + immediate answers
/// (errors) = requests), and run by the handler's service at once, each answer put
/// where its call stood.
pub fn codec_decode<C: Handler>(
    codec: &C,
) -> impl FnMut(&mut C::State, &[u8], &mut BytesMut, &Cx) -> Decoded + '_ {
    move |state, input, out, cx| {
        let start = out.len();
        let mut calls = Vec::new();
        let d = codec.decode(state, input, &mut Calls::new(out, &mut calls), cx);
        let mut last = start;
        for &(at, _) in &calls {
            assert!(
                last <= at && at <= out.len(),
                "a call stands at offset {at}: outside {last}..={} (output was {start} bytes \
                 before the call): {d:?}",
                out.len()
            );
            last = at;
        }
        assert_eq!(
            calls.len() + d.errors,
            d.requests,
            "calls ({}) + immediate answers ({}) != requests: {d:?}",
            calls.len(),
            d.errors
        );
        let segment = out.split_off(start);
        let mut done = 0;
        for (at, request) in calls {
            out.extend_from_slice(&segment[done..at - start]);
            done = at - start;
            codec.encode(codec.call(request), out, cx);
        }
        out.extend_from_slice(&segment[done..]);
        d
    }
}

/// Whether a disagreement between one read (first) and a split run (second) is a
/// known bug, tolerated with the feature `tolerate-known` (see `fuzz/regressions.md`).
pub type Known<'a> = &'a dyn Fn(&Outcome, &Outcome) -> bool;

/// Panics with both outputs shown if two runs disagree (and it is not `known`).
fn agree(what: &str, want: &Outcome, got: &Outcome, known: Known) {
    if !want.same(got) && !(cfg!(feature = "tolerate-known") && known(want, got)) {
        panic!(
            "{what} differs from one read without limits:\n  one read: {} requests, {} errors, \
             closed {}, output {:?}\n  {what}: {} requests, {} errors, closed {}, output {:?}",
            want.requests,
            want.errors,
            want.closed,
            String::from_utf8_lossy(&want.output),
            got.requests,
            got.errors,
            got.closed,
            String::from_utf8_lossy(&got.output),
        );
    }
}

/// Runs `input` through `protocol` and `codec` (its pooled form) the three ways (see
/// the crate documentation), the split runs in `reads`, and checks that they agree.
pub fn run<P, C>(
    plan: &Plan,
    protocol: &P,
    codec: &C,
    input: &[u8],
    reads: &[usize],
    known: Known,
) -> Outcome
where
    P: Protocol,
    C: Handler,
{
    // One clock for every run: its strings change only on refresh().
    let clock = Clock::default();
    let unlimited = Cx::new(&clock);
    let cx = plan.cx(&clock);

    let whole = feed(
        input,
        &[input.len()],
        &unlimited,
        &mut P::State::default(),
        |st, i, o, cx| protocol.decode(st, i, o, cx),
    );
    let mut st = P::State::default();
    let split = feed(input, reads, &cx, &mut st, |st, i, o, cx| {
        let d = protocol.decode(st, i, o, cx);
        protocol.in_request(st);
        d
    });
    agree("split and limited", &whole, &split, known);
    let pooled = feed(
        input,
        reads,
        &cx,
        &mut C::State::default(),
        codec_decode(codec),
    );
    agree("pooled, split and limited", &whole, &pooled, known);
    whole
}

/// The HTTP limits a plan's variant picks (its low two bits).
pub fn http_limits(variant: u8) -> Http {
    match variant & 3 {
        0 => Http::default(),
        1 => Http {
            max_body: 64,
            ..Http::default()
        },
        2 => Http {
            max_header_bytes: 64,
            max_headers: 4,
            max_body: 16,
        },
        _ => Http {
            max_header_bytes: 512,
            max_headers: 8,
            max_body: 4096,
        },
    }
}

/// The handler of the `http` target: answers with what it was handed, so that a
/// request that reached it differently (split, pooled) shows in the output.
pub fn mirror(req: Request) -> Response {
    let mut seen = format!("{} {} 1.{}\n", req.method(), req.target(), req.version());
    for (name, value) in req.headers() {
        seen.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value)));
    }
    seen.push_str(&format!("body {}\n", req.body().len()));
    let mut body = seen.into_bytes();
    body.extend_from_slice(req.body());
    Response::new(200)
        .header("X-Method", req.method().to_string())
        .body(body)
}

/// The `http` target: `input` is a byte stream from a client.
pub fn http(plan: &Plan, input: &[u8]) {
    let p = http_limits(plan.variant);
    let known = |whole: &Outcome, split: &Outcome| http_known(&p, whole, split);
    let reads = plan.reads(input.len());
    let app = App::new(mirror).limits(p.clone()).addresses(false);
    run(plan, &app, &app.clone().on_pool(), input, &reads, &known);
}

/// The known HTTP bugs (fuzz/regressions.md, 2 to 4): a length limit checked only while
/// a line or head is incomplete, so that a split run closes with 400 or 431 on more
/// pending bytes than the limit, where one read answered otherwise.
fn http_known(p: &Http, whole: &Outcome, split: &Outcome) -> bool {
    let Some(last) = split.output.windows(9).rposition(|w| w == b"HTTP/1.1 ") else {
        return false;
    };
    let (before, error) = split.output.split_at(last);
    split.closed
        && split.pending_at_close > p.max_header_bytes.min(1024)
        && (error.starts_with(b"HTTP/1.1 400 ") || error.starts_with(b"HTTP/1.1 431 "))
        && whole.output.starts_with(before)
}

/// The request heads of the `chunked` target, picked by bits 2 and 3 of the variant.
pub const CHUNKED_HEADS: [&[u8]; 4] = [
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
];

/// The `chunked` target: `body` follows a chunked request head, as the reactor reaches
/// the chunked-body parser; the reads split head and body alike.
pub fn chunked(plan: &Plan, body: &[u8]) {
    let head = CHUNKED_HEADS[usize::from(plan.variant >> 2) & 3];
    let input = [head, body].concat();
    http(plan, &input);
}

/// The JSON limit a plan's variant picks (its low two bits).
pub fn json_limits(variant: u8) -> Json {
    Json {
        max_message: [64 * 1024, 100, 16, 1024][usize::from(variant & 3)],
    }
}

/// The `json` target: `input` is a byte stream from a client. Besides the agreement of
/// the three runs, every output line must be a JSON object.
pub fn json(plan: &Plan, input: &[u8]) {
    let p = json_limits(plan.variant);
    let known = |whole: &Outcome, split: &Outcome| json_known(&p, whole, split);
    let mut reads = plan.reads(input.len());
    if cfg!(feature = "tolerate-known") {
        reads = keep_scalars_whole(&reads, input);
    }
    let identity = Pooled::new(JsonCodec(p.clone()), |m| m);
    let o = run(plan, &p, &identity, input, &reads, &known);
    assert!(
        o.output.is_empty() || o.output.ends_with(b"\n"),
        "output does not end a line: {:?}",
        String::from_utf8_lossy(&o.output)
    );
    for line in o.output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => {}
            other => panic!(
                "output line {:?} is not a JSON object: {other:?}",
                String::from_utf8_lossy(line)
            ),
        }
    }
}

/// The known JSON bug 5 (fuzz/regressions.md): a message over `max_message` that one
/// read reports as invalid JSON (the stream goes on) is "message too long" and a close
/// when split.
fn json_known(p: &Json, whole: &Outcome, split: &Outcome) -> bool {
    const TOO_LONG: &[u8] = b"{\"error\":\"message too long\"}\n";
    split.closed
        && split.pending_at_close > p.max_message
        && split.output.ends_with(TOO_LONG)
        && whole
            .output
            .starts_with(&split.output[..split.output.len() - TOO_LONG.len()])
}

/// Merges reads so that none ends right after a `-`, `+`, `.`, `e` or `E`, nor after
/// another letter or digit with a byte other than a delimiter next: the known JSON bugs
/// 1 (a bare number or literal at the end of a read is answered as complete) and 6 (a
/// number cut after `-`, `.`, `e` or `+` is invalid JSON) of fuzz/regressions.md.
pub fn keep_scalars_whole(reads: &[usize], input: &[u8]) -> Vec<usize> {
    let ends_value = |b: u8| {
        matches!(
            b,
            b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'[' | b']' | b'{' | b'}' | b',' | b':'
        )
    };
    let in_number = |b: u8| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let mut merged = Vec::new();
    let (mut start, mut end) = (0, 0);
    for &n in reads {
        end += n;
        if end < input.len()
            && (in_number(input[end - 1])
                || input[end - 1].is_ascii_alphanumeric() && !ends_value(input[end]))
        {
            continue;
        }
        merged.push(end - start);
        start = end;
    }
    merged
}
