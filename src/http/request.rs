//! An HTTP request as a handler sees it.

use std::net::SocketAddr;
use std::ops::Range;

use bytes::Bytes;

/// A complete HTTP/1.x request: its head as received, and its whole body (de-chunked
/// when it came chunked).
///
/// The head is kept as the client sent it (one copy, made once the head is parsed and
/// checked); the method, target and headers are read from it.
///
/// ```
/// use reactor::http::Request;
///
/// let req = Request::parse(b"GET /kv/a?x=1 HTTP/1.1\r\nHost: h\r\nX-Two: 2\r\n\r\n")
///     .expect("a whole head");
/// assert_eq!(req.method(), "GET");
/// assert_eq!(req.path(), "/kv/a");
/// assert_eq!(req.query(), Some("x=1"));
/// assert_eq!(req.header("x-two"), Some(&b"2"[..]));
/// assert_eq!(req.headers().count(), 2);
/// assert!(req.body().is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct Request {
    head: Bytes,
    method: Range<u32>,
    target: Range<u32>,
    /// Where the header lines start.
    fields: u32,
    minor: u8,
    body: Bytes,
    peer: Option<SocketAddr>,
    client: Option<SocketAddr>,
}

impl Request {
    /// Made by the framing from a copy of a head httparse accepted: `method` and
    /// `target` are where those are in it.
    pub(crate) fn from_parts(
        head: Bytes,
        method: Range<usize>,
        target: Range<usize>,
        minor: u8,
    ) -> Request {
        let fields = head[target.end.min(head.len())..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |i| target.end + i + 1);
        Request {
            head,
            method: method.start as u32..method.end as u32,
            target: target.start as u32..target.end as u32,
            fields: fields as u32,
            minor,
            body: Bytes::new(),
            peer: None,
            client: None,
        }
    }

    pub(crate) fn set_body(&mut self, body: Bytes) {
        self.body = body;
    }

    pub(crate) fn set_addrs(&mut self, peer: Option<SocketAddr>, client: Option<SocketAddr>) {
        self.peer = peer;
        self.client = client;
    }

    /// Parses a whole request head (up to and including its empty line; anything
    /// after it is ignored): for tests of a handler, and for tools. `None` if the bytes
    /// are not a complete, valid head.
    pub fn parse(head: &[u8]) -> Option<Request> {
        let mut headers = [httparse::EMPTY_HEADER; super::framing::HEADER_CAP];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(n) = req.parse(head).ok()? else {
            return None;
        };
        let (method, target, minor) = (req.method?, req.path?, req.version?);
        Some(Request::from_parts(
            Bytes::copy_from_slice(&head[..n]),
            within(head, method),
            within(head, target),
            minor,
        ))
    }

    fn slice(&self, r: &Range<u32>) -> &str {
        std::str::from_utf8(&self.head[r.start as usize..r.end as usize]).unwrap_or_default()
    }

    /// The method, as sent (`GET`, `POST`, ...; methods are case-sensitive).
    pub fn method(&self) -> &str {
        self.slice(&self.method)
    }

    /// The request target as sent: usually a path and an optional query.
    pub fn target(&self) -> &str {
        self.slice(&self.target)
    }

    /// The target's path: up to the first `?`. Not percent-decoded.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The target's query: after the first `?`, if there is one. Not decoded.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn version(&self) -> u8 {
        self.minor
    }

    /// The header lines in the order received: names as sent (compare them without
    /// case), values with surrounding whitespace removed.
    pub fn headers(&self) -> Headers<'_> {
        Headers {
            rest: &self.head[self.fields as usize..],
        }
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The whole body (empty when there was none).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body, taken out.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The address the connection came from (a load balancer's, behind one). `None`
    /// when the application was built without addresses
    /// ([`App::addresses`](super::App::addresses)).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The client's address from a trusted load balancer's PROXY header, if any.
    pub fn proxy_client(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The client's address as best known: the PROXY header's, else the peer's.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client.or(self.peer)
    }
}

/// Where `inner`, a slice of `outer`, lies in it.
pub(crate) fn within(outer: &[u8], inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

/// The header lines of a [`Request`], as `(name, value)`.
///
/// ```
/// let req = reactor::http::Request::parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
/// let all: Vec<(&str, &[u8])> = req.headers().collect();
/// assert_eq!(all, [("Host", &b"a"[..])]);
/// ```
#[derive(Clone, Debug)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // The head was checked by httparse: every line up to the empty one is
        // `name: value`, ended by LF or CRLF.
        loop {
            let end = self.rest.iter().position(|&b| b == b'\n')?;
            let line = &self.rest[..end];
            self.rest = &self.rest[end + 1..];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                self.rest = &[];
                return None;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = std::str::from_utf8(&line[..colon]).unwrap_or_default();
            return Some((name, line[colon + 1..].trim_ascii()));
        }
    }
}
