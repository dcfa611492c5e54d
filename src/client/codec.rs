//! The client side of a protocol, as the connection drives it: encode a request,
//! frame one reply out of the bytes read, check it against its request. The built-in
//! protocols' codecs ([`Echo`], [`Http`], [`Json`]) are thin layers over
//! [`crate::wire`]; implement [`Codec`] to give your own protocol a pooled client.

use super::Error;
use crate::protocol::json::JsonRequest;
use crate::wire;

/// How replies are matched to requests on one connection.
///
/// ```
/// use reactor::client::{Codec, Echo, Json, Matching};
/// assert_eq!(Echo.matching(), Matching::Order);
/// assert_eq!(Json::default().matching(), Matching::Key);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matching {
    /// In the order the requests were sent (pipelining): echo, HTTP/1.1.
    Order,
    /// By a key each request carries and its reply repeats, in any order: JSON `Uid`.
    Key,
}

/// One reply framed out of the bytes read.
///
/// ```
/// use reactor::client::{Codec, Echo};
/// let f = Echo.frame(b"hi!", Some(&b"hi".to_vec())).unwrap().unwrap();
/// assert_eq!((f.len, f.reply), (2, b"hi".to_vec()));
/// ```
#[derive(Debug)]
pub struct Frame<R> {
    /// Bytes it took.
    pub len: usize,
    /// Its key, with [`Matching::Key`].
    pub key: Option<String>,
    pub reply: R,
}

/// The client side of a protocol. One value serves every connection of a pool, from
/// the pool's I/O thread.
///
/// ```
/// use reactor::client::{Codec, Echo};
/// let mut out = Vec::new();
/// let (key, sent) = Echo.encode(b"ping".to_vec(), &mut out).unwrap();
/// assert_eq!((key, &out[..]), (None, &b"ping"[..]));
/// assert!(Echo.frame(b"pi", Some(&sent)).unwrap().is_none(), "incomplete");
/// ```
pub trait Codec: Send + 'static {
    type Request: Send + 'static;
    type Reply: Send + 'static;
    /// What the connection keeps of a request in flight, to frame and check its reply.
    type Sent: Send + 'static;

    /// How replies are matched to requests.
    fn matching(&self) -> Matching;

    /// Appends the request's bytes to `out`. Returns its key (required with
    /// [`Matching::Key`]) and what to keep to check its reply. An `Err` refuses the
    /// request; whatever was appended is dropped.
    fn encode(
        &self,
        req: Self::Request,
        out: &mut Vec<u8>,
    ) -> Result<(Option<String>, Self::Sent), Error>;

    /// Frames one reply at the start of `buf`: `Ok(None)` while it is incomplete, `Err`
    /// when the bytes cannot be a reply (the connection is then closed and its requests
    /// failed). With [`Matching::Order`], `next` is what was kept of the request the
    /// reply answers.
    fn frame(
        &self,
        buf: &[u8],
        next: Option<&Self::Sent>,
    ) -> Result<Option<Frame<Self::Reply>>, String>;

    /// Checks a reply against its request; an `Err` fails that request only
    /// ([`Error::BadReply`]).
    fn check(&self, _sent: Self::Sent, reply: Self::Reply) -> Result<Self::Reply, String> {
        Ok(reply)
    }
}

/// `echo`: a request is bytes, its reply the same bytes.
///
/// ```
/// use reactor::client::{Codec, Echo};
/// let mut out = Vec::new();
/// Echo.encode(b"abc".to_vec(), &mut out).unwrap();
/// assert_eq!(out, b"abc");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Codec for Echo {
    type Request = Vec<u8>;
    type Reply = Vec<u8>;
    type Sent = Vec<u8>;

    fn matching(&self) -> Matching {
        Matching::Order
    }

    fn encode(&self, req: Vec<u8>, out: &mut Vec<u8>) -> Result<(Option<String>, Vec<u8>), Error> {
        if req.is_empty() {
            return Err(Error::Invalid(
                "an empty echo has no reply to wait for".into(),
            ));
        }
        out.extend_from_slice(&req);
        Ok((None, req))
    }

    fn frame(&self, buf: &[u8], next: Option<&Vec<u8>>) -> Result<Option<Frame<Vec<u8>>>, String> {
        let Some(sent) = next else {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("echo bytes with no request in flight".into())
            };
        };
        Ok(wire::echo::frame(buf, sent)?.map(|len| Frame {
            len,
            key: None,
            reply: buf[..len].to_vec(),
        }))
    }
}

/// `http`: a request is a path, sent as `GET <path> HTTP/1.1`; a reply its status and
/// body (`Content-Length` framed).
///
/// ```
/// use reactor::client::{Codec, Http};
/// let mut out = Vec::new();
/// Http::default().encode("/x".into(), &mut out).unwrap();
/// assert!(out.starts_with(b"GET /x HTTP/1.1\r\n"));
/// ```
#[derive(Clone, Debug)]
pub struct Http {
    /// The `Host` header.
    pub host: String,
    /// A reply must have this body (and status 200); `None`: any 2xx reply is right.
    pub expect_body: Option<Vec<u8>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            host: "reactor".into(),
            expect_body: None,
        }
    }
}

impl Http {
    /// A codec that checks every reply is reactor's `200 OK` `Hello, World!`.
    pub fn hello() -> Self {
        Http {
            expect_body: Some(wire::http::HELLO_BODY.to_vec()),
            ..Http::default()
        }
    }
}

/// An HTTP reply.
///
/// ```
/// use reactor::client::{Codec, Http};
/// let codec = Http::default();
/// let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
/// let f = codec.frame(reply, None).unwrap().unwrap();
/// assert_eq!((f.reply.status, &f.reply.body[..]), (200, &b"hi"[..]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Codec for Http {
    type Request = String;
    type Reply = HttpReply;
    type Sent = ();

    fn matching(&self) -> Matching {
        Matching::Order
    }

    fn encode(&self, path: String, out: &mut Vec<u8>) -> Result<(Option<String>, ()), Error> {
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::Invalid(format!("{path:?} is not an HTTP path")));
        }
        wire::http::encode_get(&path, &self.host, out);
        Ok((None, ()))
    }

    fn frame(&self, buf: &[u8], _: Option<&()>) -> Result<Option<Frame<HttpReply>>, String> {
        Ok(wire::http::frame(buf)?.map(|f| Frame {
            len: f.len,
            key: None,
            reply: HttpReply {
                status: f.status,
                body: buf[f.body].to_vec(),
            },
        }))
    }

    fn check(&self, _: (), r: HttpReply) -> Result<HttpReply, String> {
        match &self.expect_body {
            Some(body) => wire::http::check(r.status, &r.body, body)?,
            None if !(200..300).contains(&r.status) => {
                return Err(format!("HTTP status {}", r.status));
            }
            None => {}
        }
        Ok(r)
    }
}

/// `json`: a request is `{"Uid","Val"}`, matched to its reply by `Uid`; a reply must
/// carry `server: hello, <Val>`.
///
/// ```
/// use reactor::client::{self, Codec, Json};
/// let mut out = Vec::new();
/// let (key, _) = Json::default().encode(client::json_request("7", "a"), &mut out).unwrap();
/// assert_eq!(key.as_deref(), Some("7"));
/// ```
#[derive(Clone, Debug)]
pub struct Json {
    /// Longest reply line accepted.
    pub max_reply: usize,
}

impl Default for Json {
    fn default() -> Self {
        Json {
            max_reply: 2 * wire::json::MAX_MESSAGE + 256,
        }
    }
}

impl Codec for Json {
    type Request = JsonRequest;
    type Reply = wire::json::Reply;
    /// The request's `Val`.
    type Sent = String;

    fn matching(&self) -> Matching {
        Matching::Key
    }

    fn encode(
        &self,
        req: JsonRequest,
        out: &mut Vec<u8>,
    ) -> Result<(Option<String>, String), Error> {
        wire::json::encode(&req.uid, &req.val, out);
        Ok((Some(req.uid), req.val))
    }

    fn frame(
        &self,
        buf: &[u8],
        _: Option<&String>,
    ) -> Result<Option<Frame<wire::json::Reply>>, String> {
        let Some((len, reply)) = wire::json::frame(buf, self.max_reply)? else {
            return Ok(None);
        };
        match (&reply.uid, &reply.error) {
            (Some(uid), _) => Ok(Some(Frame {
                len,
                key: Some(uid.clone()),
                reply,
            })),
            // An error line names no request: which one it answers is lost.
            (None, Some(e)) => Err(format!("server error: {e}")),
            (None, None) => Err("JSON reply without a Uid".into()),
        }
    }

    fn check(&self, val: String, reply: wire::json::Reply) -> Result<wire::json::Reply, String> {
        wire::json::check(&val, &reply)?;
        Ok(reply)
    }
}

/// A JSON request, for [`Json`].
pub fn json_request(uid: impl Into<String>, val: impl Into<String>) -> JsonRequest {
    JsonRequest {
        uid: uid.into(),
        val: val.into(),
    }
}
