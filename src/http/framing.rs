//! HTTP/1.0 and 1.1 framing, the wire facts of the server side, once: where a request
//! ends, what is refused and how, and how an answer is written.
//!
//! Keep-alive is the default for 1.1 (`Connection: close` honoured) and opt-in for 1.0
//! (`Connection: keep-alive`). Pipelined requests are answered in order. A request is
//! handed to its handler once its body is complete: a body announced by
//! `Content-Length` is taken from the input when it is all there, or collected across
//! as many reads as it takes (never more than `max_body`). Errors get a status and a
//! close: 400 for a malformed head or `Content-Length`, 431 for a head over the byte or
//! header count limit, 413 for a body over `max_body`. A chunked body is de-chunked
//! chunk by chunk, its trailers read and dropped, and the request handed over once it
//! is complete (its size is not known up front, so `max_body` is checked as it goes);
//! a chunk-size line that is not
//! hex digits (then optional extensions) or whose size overflows a u64 gets 400. A
//! transfer coding other than chunked gets 501, and `Transfer-Encoding` together with
//! `Content-Length`, or in an HTTP/1.0 request, gets 400 (the ambiguities request
//! smuggling lives on). So does an HTTP/1.1 request without a `Host` header, or any
//! request with more than one (RFC 9112 section 3.2).

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::request::{Request, within};
use super::response::{Response, header_ok, reason};
use crate::protocol::{Cx, Decoded, Next};
use crate::service::{Calls, Failure};

/// The most header lines a request may carry, whatever the configuration says.
pub const HEADER_CAP: usize = 256;

/// HTTP's limits.
///
/// ```
/// let l = reactor::http::Limits::default();
/// assert_eq!(l.max_body, 1 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most header lines in a request (at most [`HEADER_CAP`]).
    pub max_headers: usize,
    /// Largest request body, in bytes (collected whole before the handler runs).
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: crate::wire::http::MAX_HEADER_BYTES,
            max_headers: crate::wire::http::MAX_HEADERS,
            max_body: crate::wire::http::MAX_BODY,
        }
    }
}

/// Per-connection HTTP state: where the framing is, and (boxed, only while needed) a
/// request waiting for the rest of its body and the connection's addresses.
///
/// ```
/// use reactor::http::{App, HttpState, hello};
/// use reactor::protocol::Protocol;
/// let app = App::new(hello);
/// assert!(!app.in_request(&HttpState::default()));
/// ```
#[derive(Default, Debug)]
pub struct HttpState {
    /// Body bytes still to come: of a Content-Length body, or of the current chunk.
    body_left: u64,
    chunk: Chunk,
    /// The framing of the answer owed once the body is complete.
    owed: Reply,
    extra: Option<Box<Extra>>,
}

#[derive(Default, Debug)]
struct Extra {
    peer: Option<SocketAddr>,
    client: Option<SocketAddr>,
    pending: Option<Pending>,
}

/// A request whose body is still coming.
#[derive(Debug)]
struct Pending {
    request: Request,
    body: BytesMut,
    /// Chunked body bytes announced so far, against `max_body`.
    chunked_total: u64,
}

impl Extra {
    fn pending(&mut self) -> &mut Pending {
        // Set whenever a body is being read; an empty one stands in otherwise.
        self.pending.get_or_insert_with(|| Pending {
            request: Request::from_parts(Bytes::new(), 0..0, 0..0, 1),
            body: BytesMut::new(),
            chunked_total: 0,
        })
    }
}

impl HttpState {
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Remembers the connection's addresses, for its requests.
    pub(crate) fn set_addrs(&mut self, peer: Option<SocketAddr>, client: Option<SocketAddr>) {
        if peer.is_some() || client.is_some() {
            let e = self.extra();
            e.peer = peer;
            e.client = client;
        }
    }

    pub(crate) fn in_request(&self) -> bool {
        self.body_left > 0 || self.chunk != Chunk::Off
    }

    fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        self.extra
            .as_ref()
            .map_or((None, None), |e| (e.peer, e.client))
    }

    /// The request whose body just completed.
    fn finish(&mut self) -> Request {
        let e = self.extra();
        let p = e.pending.take();
        if e.peer.is_none() && e.client.is_none() {
            self.extra = None;
        }
        match p {
            Some(Pending {
                mut request, body, ..
            }) => {
                request.set_body(body.freeze());
                request
            }
            None => Request::from_parts(Bytes::new(), 0..0, 0..0, 1),
        }
    }
}

/// Where a chunked body is.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// No chunked body in progress.
    #[default]
    Off,
    /// Expecting a chunk-size line.
    Size,
    /// Reading chunk data (`body_left` bytes).
    Data,
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Discarding trailer lines until the empty one.
    Trailer,
}

/// How an answer is framed: what the request said about the connection.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Reply {
    keep_alive: bool,
    v10: bool,
    head: bool,
}

enum Head {
    Ok {
        reply: Reply,
        body: u64,
        chunked: bool,
        expect: bool,
    },
    Error(&'static [u8]),
}

impl Limits {
    fn parse_head(&self, req: &httparse::Request) -> Head {
        let v10 = req.version == Some(0);
        let mut keep_alive = !v10;
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut expect = false;
        let mut hosts = 0;
        if req.headers.len() > self.max_headers {
            return Head::Error(H431);
        }
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let Some(n) = parse_length(h.value) else {
                    return Head::Error(H400);
                };
                if length.is_some_and(|l| l != n) {
                    return Head::Error(H400);
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only chunked as the final coding says where the body ends.
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && v10 {
                        keep_alive = true;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if h.name.eq_ignore_ascii_case("expect") {
                if !h.value.eq_ignore_ascii_case(b"100-continue") {
                    return Head::Error(H417);
                }
                expect = true;
            }
        }
        // RFC 9112 section 3.2: an HTTP/1.1 request needs a Host, and no request may
        // carry two.
        if hosts > 1 || (hosts == 0 && !v10) {
            return Head::Error(H400);
        }
        match (chunked, length) {
            // Section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
            (Some(_), _) if v10 => return Head::Error(H400),
            (Some(_), Some(_)) => return Head::Error(H400),
            (Some(false), None) => return Head::Error(H501),
            _ => {}
        }
        let body = length.unwrap_or(0);
        if body > self.max_body {
            return Head::Error(H413);
        }
        Head::Ok {
            reply: Reply {
                keep_alive,
                v10,
                head: req.method == Some("HEAD"),
            },
            body,
            chunked: chunked.is_some(),
            expect,
        }
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

const H400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Request\n";
const H413: &[u8] = b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\nContent Too Large\n";
const H417: &[u8] = b"HTTP/1.1 417 Expectation Failed\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nExpectation Failed\n";
const H431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\nRequest Header Fields Too Large\n";
// Failure answers have no body: the request they stand for may have been a HEAD,
// whose answer must not have one, and the codec no longer holds it.
const H500: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
const H503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
const H500_CLOSE: &[u8] =
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const H503_CLOSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const H501: &[u8] = b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nNot Implemented\n";

/// One step through a chunked body.
enum Step {
    /// Needs more input.
    More,
    /// Consumed this many bytes; go on.
    Ate(usize),
    /// Consumed this many bytes and the body is complete.
    Done(usize),
    Error(&'static [u8]),
}

/// Longest chunk-size line (with extensions) accepted.
const CHUNK_LINE_MAX: usize = 1024;

/// Parses a chunk-size line (RFC 9112 section 7.1): at least one hex digit, then
/// optional whitespace and `;` extensions (ignored), then CRLF. Returns the line's
/// length and the size, `None` while the line is incomplete, `Err` if it is malformed
/// or the size does not fit a u64.
///
/// Not httparse's `parse_chunk_size`, which reads a line with no digits at all (`\r\n`,
/// `;ext\r\n`) as size 0, the last chunk, and so ends a body where the peer did not.
fn parse_chunk_size(line: &[u8]) -> Result<Option<(usize, u64)>, ()> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return if line.is_empty() { Ok(None) } else { Err(()) };
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(())?;
        size = size.checked_mul(16).ok_or(())? | u64::from(d);
    }
    let mut i = digits;
    while let Some(b' ' | b'\t') = line.get(i) {
        i += 1;
    }
    if line.get(i) == Some(&b';') {
        // Extensions: anything up to the CR.
        i += line[i..]
            .iter()
            .position(|&b| b == b'\r')
            .unwrap_or(line.len() - i);
    }
    match line.get(i..i + 2) {
        Some(b"\r\n") => Ok(Some((i + 2, size))),
        None if line.len() - i < 2 && line[i..].iter().all(|&b| b == b'\r') => Ok(None),
        _ => Err(()),
    }
}

impl Limits {
    fn chunked(&self, st: &mut HttpState, rest: &[u8]) -> Step {
        match st.chunk {
            Chunk::Off | Chunk::Data => Step::More,
            Chunk::Size => match parse_chunk_size(rest) {
                // A whole line is held to the same limit as a partial one, or the
                // answer would depend on how the line was split into reads.
                Ok(Some((n, _))) if n > CHUNK_LINE_MAX => Step::Error(H400),
                Ok(Some((n, size))) => {
                    let total = &mut st.extra().pending().chunked_total;
                    *total = total.saturating_add(size);
                    if *total > self.max_body {
                        return Step::Error(H413);
                    }
                    if size == 0 {
                        st.chunk = Chunk::Trailer;
                    } else {
                        st.chunk = Chunk::Data;
                        st.body_left = size;
                    }
                    Step::Ate(n)
                }
                Ok(None) if rest.len() <= CHUNK_LINE_MAX => Step::More,
                _ => Step::Error(H400),
            },
            Chunk::DataEnd => match rest {
                [b'\r', b'\n', ..] => {
                    st.chunk = Chunk::Size;
                    Step::Ate(2)
                }
                [] | [b'\r'] => Step::More,
                _ => Step::Error(H400),
            },
            Chunk::Trailer => match rest.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    st.chunk = Chunk::Off;
                    Step::Done(2)
                }
                Some(line) if line + 2 > self.max_header_bytes => Step::Error(H431),
                Some(line) => Step::Ate(line + 2),
                None if rest.len() > self.max_header_bytes => Step::Error(H431),
                None => Step::More,
            },
        }
    }
}

/// Writes `r` as the answer to a request framed by `reply`: the status line,
/// `Server`, the handler's headers, `Content-Length`, `Date`, `Connection`, the body.
pub(crate) fn write_response(out: &mut BytesMut, cx: &Cx, reply: Reply, r: &Response) {
    let valid = (100..=999).contains(&r.status) && r.headers.iter().all(|(n, v)| header_ok(n, v));
    if !valid {
        log::warn!(
            "an HTTP handler answered status {} with headers {:?}: not a valid answer; \
             sent 500 instead",
            r.status,
            r.headers
        );
        out.extend_from_slice(if reply.keep_alive { H500 } else { H500_CLOSE });
        return;
    }
    let Reply {
        keep_alive,
        v10,
        head,
    } = reply;
    out.extend_from_slice(if v10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    let mut code = [0u8; 3];
    for (i, d) in code.iter_mut().enumerate() {
        *d = b'0' + (r.status / 10u16.pow(2 - i as u32) % 10) as u8;
    }
    out.extend_from_slice(&code);
    out.extend_from_slice(b" ");
    out.extend_from_slice(reason(r.status).as_bytes());
    out.extend_from_slice(b"\r\nServer: reactor\r\n");
    for (name, value) in &r.headers {
        if ["content-length", "transfer-encoding", "connection", "date"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // No body, and no length, for 1xx and 204; 304 describes a body it does not send.
    let bodiless = r.status < 200 || r.status == 204 || r.status == 304;
    if !(r.status < 200 || r.status == 204) {
        out.extend_from_slice(b"Content-Length: ");
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = r.body.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&buf[i..]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(cx.clock.http_date());
    out.extend_from_slice(match (keep_alive, v10) {
        (true, false) => b"\r\n\r\n".as_slice(),
        (true, true) => b"\r\nConnection: keep-alive\r\n\r\n",
        (false, _) => b"\r\nConnection: close\r\n\r\n",
    });
    if !head && !bodiless {
        out.extend_from_slice(&r.body);
    }
}

/// The answer to a request whose handler failed (panicked, or timed out on the pool).
pub(crate) fn write_failure(out: &mut BytesMut, f: Failure, closing: bool) {
    out.extend_from_slice(match (f, closing) {
        (Failure::Panicked, false) => H500,
        (Failure::TimedOut, false) => H503,
        (Failure::Panicked, true) => H500_CLOSE,
        (Failure::TimedOut, true) => H503_CLOSE,
    });
}

/// Hands a complete request to `answer` and counts it: `true` when the connection
/// closes after its answer.
fn deliver<R>(
    answer: &mut impl FnMut(&mut Calls<'_, R>, &Cx, Reply, Request),
    out: &mut Calls<'_, R>,
    cx: &Cx,
    d: &mut Decoded,
    reply: Reply,
    request: Request,
) -> bool {
    answer(out, cx, reply, request);
    d.requests += 1;
    if reply.keep_alive {
        return false;
    }
    d.next = Next::Close;
    true
}

impl Reply {
    /// Whether the connection closes after this answer.
    pub(crate) fn closes(&self) -> bool {
        !self.keep_alive
    }
}

impl Limits {
    /// The decoder: every complete request, with its body, goes to `answer` (which
    /// answers it at once, or hands it to the pool), in order.
    pub(crate) fn decode_with<R>(
        &self,
        st: &mut HttpState,
        input: &[u8],
        out: &mut Calls<'_, R>,
        cx: &Cx,
        mut answer: impl FnMut(&mut Calls<'_, R>, &Cx, Reply, Request),
    ) -> Decoded {
        let mut d = Decoded::default();
        loop {
            if st.body_left > 0 {
                let take = st.body_left.min((input.len() - d.consumed) as u64) as usize;
                st.extra()
                    .pending()
                    .body
                    .extend_from_slice(&input[d.consumed..d.consumed + take]);
                d.consumed += take;
                st.body_left -= take as u64;
                if st.body_left > 0 {
                    return d;
                }
                if st.chunk == Chunk::Data {
                    st.chunk = Chunk::DataEnd;
                } else {
                    // A Content-Length body, complete.
                    let reply = st.owed;
                    if deliver(&mut answer, out, cx, &mut d, reply, st.finish()) {
                        return d;
                    }
                    continue;
                }
            }
            let rest = &input[d.consumed..];
            let error = if st.chunk != Chunk::Off {
                match self.chunked(st, rest) {
                    Step::More => return d,
                    Step::Ate(n) => {
                        d.consumed += n;
                        continue;
                    }
                    Step::Done(n) => {
                        d.consumed += n;
                        let reply = st.owed;
                        if deliver(&mut answer, out, cx, &mut d, reply, st.finish()) {
                            return d;
                        }
                        continue;
                    }
                    Step::Error(e) => e,
                }
            } else {
                if rest.is_empty() || d.at_limit(cx, out.out()) {
                    return d;
                }
                let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; HEADER_CAP];
                let mut req = httparse::Request::new(&mut []);
                // Judge the head by its first max_header_bytes + 1 bytes only, whatever
                // else has arrived: then the answer (400 or 431) does not depend on how
                // the peer's bytes were split into reads (found by fuzzing).
                let head = &rest[..rest.len().min(self.max_header_bytes + 1)];
                match req.parse_with_uninit_headers(head, &mut headers) {
                    Ok(httparse::Status::Partial) => {
                        if head.len() > self.max_header_bytes {
                            H431
                        } else {
                            return d;
                        }
                    }
                    Ok(httparse::Status::Complete(n)) if n > self.max_header_bytes => H431,
                    Ok(httparse::Status::Complete(n)) => match self.parse_head(&req) {
                        Head::Ok {
                            mut reply,
                            body,
                            chunked,
                            expect,
                        } => {
                            if cx.draining {
                                // Tell a keep-alive client to go elsewhere next time.
                                reply.keep_alive = false;
                            }
                            let (method, target) = (
                                within(head, req.method.unwrap_or_default()),
                                within(head, req.path.unwrap_or_default()),
                            );
                            let minor = req.version.unwrap_or(1);
                            let whole = body as usize <= rest.len() - n && !chunked;
                            let len = if whole { n + body as usize } else { n };
                            // One copy of the head (and of a body already here).
                            let copy = Bytes::copy_from_slice(&rest[..len]);
                            let mut request =
                                Request::from_parts(copy.slice(..n), method, target, minor);
                            let (peer, client) = st.addrs();
                            request.set_addrs(peer, client);
                            d.consumed += len;
                            if expect && (body > 0 || chunked) && !reply.v10 {
                                out.out()
                                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            }
                            if whole {
                                request.set_body(copy.slice(n..));
                                if deliver(&mut answer, out, cx, &mut d, reply, request) {
                                    return d;
                                }
                                continue;
                            }
                            // The body is still coming: collected in the state.
                            st.owed = reply;
                            st.extra().pending = Some(Pending {
                                request,
                                body: BytesMut::with_capacity(
                                    (body as usize).min(crate::buffer::BUF_SIZE),
                                ),
                                chunked_total: 0,
                            });
                            if chunked {
                                st.chunk = Chunk::Size;
                            } else {
                                st.body_left = body;
                            }
                            continue;
                        }
                        Head::Error(e) => e,
                    },
                    Err(httparse::Error::TooManyHeaders) => H431,
                    Err(_) => H400,
                }
            };
            out.out().extend_from_slice(error);
            st.chunk = Chunk::Off;
            st.body_left = 0;
            if let Some(e) = st.extra.as_deref_mut() {
                e.pending = None;
            }
            d.requests += 1;
            d.errors += 1;
            d.consumed = input.len();
            d.next = Next::Close;
            return d;
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::http::{App, Framing, hello};
    use crate::protocol::Protocol;
    use crate::service::Codec;

    type Http = Limits;

    /// The built-in hello service under limits `p`.
    fn app(p: &Limits) -> App<fn(Request) -> Response> {
        App::new(hello as fn(Request) -> Response)
            .limits(p.clone())
            .addresses(false)
    }

    /// Feeds `input` in pieces of `step` bytes the way the reactor does (unconsumed bytes
    /// are offered again with the next piece) and returns the output and the last `Next`.
    fn run(p: &Http, input: &[u8], step: usize) -> (Vec<u8>, Next, usize) {
        let clock = Clock::default();
        let cx = Cx::new(&clock);
        let mut st = HttpState::default();
        let mut out = BytesMut::new();
        let mut pending = Vec::new();
        let mut next = Next::NeedMore;
        let mut requests = 0;
        for chunk in input.chunks(step.max(1)) {
            pending.extend_from_slice(chunk);
            let d = app(p).decode(&mut st, &pending, &mut out, &cx);
            pending.drain(..d.consumed);
            requests += d.requests;
            next = d.next;
            if next == Next::Close {
                break;
            }
        }
        (out.to_vec(), next, requests)
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn pipelined_requests_split_at_every_byte_give_the_same_answers() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n\
GET /y HTTP/1.1\r\nHost: b\r\n\r\n";
        let (whole, next, n) = run(&Http::default(), input, input.len());
        assert_eq!((next, n), (Next::NeedMore, 4));
        assert_eq!(count(&whole, b"HTTP/1.1 200 OK"), 4);
        for step in 1..input.len() {
            let (out, next, n) = run(&Http::default(), input, step);
            assert_eq!((next, n), (Next::NeedMore, 4), "step {step}");
            assert_eq!(out, whole, "step {step}");
        }
    }

    #[test]
    fn http10_closes_unless_keep_alive_is_asked() {
        let (out, next, _) = run(&Http::default(), b"GET / HTTP/1.0\r\n\r\n", 100);
        assert_eq!(next, Next::Close);
        assert!(out.starts_with(b"HTTP/1.0 200 OK"));
        assert_eq!(count(&out, b"Connection: close"), 1);
        let (out, next, _) = run(
            &Http::default(),
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            100,
        );
        assert_eq!(next, Next::NeedMore);
        assert_eq!(count(&out, b"Connection: keep-alive"), 1);
    }

    #[test]
    fn connection_close_is_honoured_and_head_has_no_body() {
        let (out, next, _) = run(
            &Http::default(),
            b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            100,
        );
        assert_eq!(next, Next::Close);
        assert!(out.ends_with(b"\r\n\r\n"));
        assert_eq!(count(&out, b"Content-Length: 13"), 1);
    }

    #[test]
    fn errors_get_their_status_and_close() {
        let p = Http {
            max_header_bytes: 200,
            max_headers: 3,
            max_body: 10,
        };
        let cases: &[(&[u8], &[u8])] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", b"HTTP/1.1 400 "),
            (b"\x16\x03\x01garbage\r\n\r\n", b"HTTP/1.1 400 "),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
                b"HTTP/1.1 400 ",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"HTTP/1.1 400 ",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
                b"HTTP/1.1 413 ",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n",
                b"HTTP/1.1 431 ",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                b"HTTP/1.1 501 ",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                b"HTTP/1.1 400 ",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"HTTP/1.1 400 ",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
                b"HTTP/1.1 400 ",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\n",
                b"HTTP/1.1 413 ",
            ),
        ];
        for (input, status) in cases {
            let (out, next, _) = run(&p, input, input.len());
            assert!(
                out.starts_with(status),
                "{:?} -> {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&out)
            );
            assert_eq!(next, Next::Close);
        }
        let long = [b"GET /".as_slice(), &[b'a'; 300]].concat();
        let (out, next, _) = run(&p, &long, 7);
        assert!(out.starts_with(b"HTTP/1.1 431 "));
        assert_eq!(next, Next::Close);
    }

    /// Runs `input` whole and split at every byte, through the inline protocol and the
    /// pooled codec, and checks that every run gives `want` (a status line prefix) and
    /// closes, and that the codec hands nothing to the pool.
    fn assert_rejected(p: &Http, input: &[u8], want: &[u8]) {
        let show = || String::from_utf8_lossy(input).into_owned();
        for step in 1..=input.len() {
            let (out, next, _) = run(p, input, step);
            assert!(
                out.starts_with(want),
                "{:?} (step {step}) -> {:?}",
                show(),
                String::from_utf8_lossy(&out)
            );
            assert_eq!(count(&out, b"HTTP/1.1 "), 1, "{:?}", show());
            assert_eq!(next, Next::Close, "{:?} (step {step})", show());
        }
        let clock = Clock::default();
        let cx = Cx::new(&clock);
        let mut out = BytesMut::new();
        let mut calls = Vec::new();
        let codec = Framing {
            limits: p.clone(),
            addresses: false,
        };
        let d = codec.decode(
            &mut HttpState::default(),
            input,
            &mut Calls::new(&mut out, &mut calls),
            &cx,
        );
        assert!(out.starts_with(want), "codec: {:?}", show());
        assert!(calls.is_empty(), "codec: {:?}", show());
        assert_eq!((d.next, d.errors), (Next::Close, 1), "codec: {:?}", show());
    }

    #[test]
    fn http11_needs_exactly_one_host_and_any_request_at_most_one() {
        let p = Http::default();
        for input in [
            b"GET / HTTP/1.1\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nHOST: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            assert_rejected(&p, input, b"HTTP/1.1 400 ");
        }
        // One Host, any case; HTTP/1.0 needs none.
        for input in [
            b"GET / HTTP/1.1\r\nhOsT: a\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        ] {
            let (out, next, n) = run(&p, input, input.len());
            assert_eq!(
                (next, n),
                (Next::NeedMore, 1),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(count(&out, b" 200 OK\r\n"), 1);
        }
    }

    #[test]
    fn transfer_encoding_in_http10_is_faulty_framing() {
        let p = Http::default();
        for input in [
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".as_slice(),
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            assert_rejected(&p, input, b"HTTP/1.1 400 ");
        }
    }

    #[test]
    fn a_chunk_size_line_needs_hex_digits_and_a_size_that_fits() {
        let p = Http::default();
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            b";ext\r\n\r\n".as_slice(),
            b"\r\n\r\n",
            b"\r\n",
            b"xyz\r\n",
            b" \r\n\r\n",
            b" 0\r\n\r\n",
            b"\t;a=b\r\n\r\n",
            b"5\r\nhello\r\n;ext\r\n\r\n",
            b"5\r\nhello\r\n\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\rhello\r\n0\r\n\r\n",
            // 2^64: one past u64, with and without leading zeros.
            b"10000000000000000\r\n",
            b"0010000000000000000\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert_rejected(&p, &[head.as_slice(), body].concat(), b"HTTP/1.1 400 ");
        }
        // Sizes with extensions, whitespace before them, upper-case hex and leading
        // zeros are fine.
        let p = Http {
            max_body: u64::MAX,
            ..Http::default()
        };
        for body in [
            b"5;ext\r\nhello\r\n0\r\n\r\n".as_slice(),
            b"5 ;a=b;c=\"d\"\r\nhello\r\n0;x\r\n\r\n",
            b"5\t\r\nhello\r\n00\r\n\r\n",
            b"0000000000000000005\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
        ] {
            let input = [head.as_slice(), body].concat();
            for step in 1..=input.len() {
                let (out, next, n) = run(&p, &input, step);
                assert_eq!(
                    (next, n, count(&out, b" 200 OK\r\n")),
                    (Next::NeedMore, 1, 1),
                    "{:?} (step {step})",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // The largest size is accepted (and then limited by max_body).
        let input = [head.as_slice(), b"ffffffffffffffff\r\n"].concat();
        let (out, next, _) = run(&Http::default(), &input, input.len());
        assert!(out.starts_with(b"HTTP/1.1 413 "));
        assert_eq!(next, Next::Close);
        let (out, next, n) = run(&p, &input, input.len());
        assert_eq!((out.len(), next, n), (0, Next::NeedMore, 0));
    }

    #[test]
    fn error_responses_have_correct_content_length() {
        for r in [H400, H413, H417, H431, H500, H501, H503] {
            let text = std::str::from_utf8(r).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.split("\r\n")
                    .any(|h| h == format!("Content-Length: {}", body.len())),
                "{head}"
            );
        }
    }

    #[test]
    fn a_large_body_is_discarded_across_reads() {
        let mut input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'z', 100_000));
        input.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let p = Http {
            max_body: 1 << 20,
            ..Http::default()
        };
        let (out, next, n) = run(&p, &input, 4096);
        assert_eq!((next, n), (Next::NeedMore, 2));
        assert_eq!(count(&out, b"200 OK"), 2);
    }

    #[test]
    fn yields_at_the_output_limit_and_resumes() {
        let clock = Clock::default();
        let mut cx = Cx::new(&clock);
        cx.max_requests = 1;
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut st = HttpState::default();
        let mut out = BytesMut::new();
        let d = app(&Http::default()).decode(&mut st, input, &mut out, &cx);
        assert_eq!((d.requests, d.next), (1, Next::Yield));
        let d2 = app(&Http::default()).decode(&mut st, &input[d.consumed..], &mut out, &cx);
        assert_eq!(
            (d2.requests, d2.next, d.consumed + d2.consumed),
            (1, Next::NeedMore, input.len())
        );
    }

    // Regressions found by fuzzing (fuzz/regressions.md): the answer must not depend
    // on how the peer's bytes were split into reads.
    #[test]
    fn fuzz_r2_an_oversized_head_gets_one_status_however_split() {
        let p = Http {
            max_header_bytes: 64,
            ..Http::default()
        };
        let input = [&[b'z'; 65][..], b"\xff"].concat();
        let (whole, next, _) = run(&p, &input, input.len());
        assert_eq!(next, Next::Close);
        for step in 1..input.len() {
            let (out, next, _) = run(&p, &input, step);
            assert_eq!(
                (String::from_utf8_lossy(&out), next),
                (String::from_utf8_lossy(&whole), Next::Close),
                "step {step}"
            );
        }
    }

    #[test]
    fn fuzz_r3_a_long_chunk_size_line_is_refused_however_split() {
        let mut input =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        input.extend(std::iter::repeat_n(b'e', 1100));
        input.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        for step in [input.len(), 1, 7, 512] {
            let (out, next, _) = run(&Http::default(), &input, step);
            assert!(
                out.starts_with(b"HTTP/1.1 400 ") && next == Next::Close,
                "step {step}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn fuzz_r4_a_long_trailer_line_is_refused_however_split() {
        let p = Http {
            max_header_bytes: 64,
            ..Http::default()
        };
        let mut input =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX: "
                .to_vec();
        input.extend(std::iter::repeat_n(b't', 80));
        input.extend_from_slice(b"\r\n\r\n");
        for step in [input.len(), 1, 7, 64] {
            let (out, next, _) = run(&p, &input, step);
            assert!(
                out.starts_with(b"HTTP/1.1 431 ") && next == Next::Close,
                "step {step}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
