//! An HTTP response as a handler gives it.

use std::borrow::Cow;

use bytes::Bytes;

/// A handler's answer: a status, header lines and a body. The framework adds
/// `Server`, `Content-Length`, `Date` and `Connection` (keep-alive is its business),
/// leaves out the body of an answer to `HEAD` and of 1xx, 204 and 304 answers, and
/// ignores `Content-Length`, `Transfer-Encoding`, `Connection` and `Date` given here.
/// A status outside 100-999, or a header name or value that could break the framing
/// (a control character, a name that is not a token), turns the answer into a 500 (and
/// a log line).
///
/// ```
/// use reactor::http::Response;
///
/// let ok = Response::text("hi\n");
/// assert_eq!((ok.status, ok.body.as_ref()), (200, &b"hi\n"[..]));
/// let gone = Response::new(404).header("Content-Type", "text/plain").body("no such key\n");
/// assert_eq!(gone.headers.len(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    pub body: Bytes,
}

impl Response {
    /// An empty answer with this status.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// `200 OK` with a `text/plain` body.
    pub fn text(body: impl Into<Bytes>) -> Response {
        Response::new(200)
            .header("Content-Type", "text/plain")
            .body(body)
    }

    /// Adds a header line.
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = body.into();
        self
    }
}

/// The reason phrase of a status (empty for one not listed, as RFC 9112 allows).
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Whether a header name is a token and its value has no control character but tab:
/// nothing that could end the line or the head early.
pub(crate) fn header_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}
