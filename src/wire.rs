//! The wire facts of the built-in protocols, written once: the constants both ends agree
//! on (the HTTP hello body, the JSON reply prefix, the limits' defaults) and the
//! client side of each protocol (encode a request, frame one reply out of a byte
//! buffer, check it). The server's protocols ([`crate::protocol`]), the client
//! ([`crate::client`]), `reactor-bench` and the tests all use these, so a change to the
//! wire is made in one place.
//!
//! Every function here is sans-IO: bytes in, a result out, no socket. A framing
//! function returns `Ok(None)` while the buffer holds only part of a reply, `Ok(Some(..))`
//! with the number of bytes the reply took, and `Err` when the bytes cannot be a reply
//! (the stream is lost and the connection should be closed).

/// `echo`: every byte is written back.
pub mod echo {
    /// Whether `got` starts with the echo of `sent`: `Ok(None)` while too few bytes
    /// have come, `Ok(Some(len))` when they match, `Err` when a byte differs.
    pub fn frame(got: &[u8], sent: &[u8]) -> Result<Option<usize>, String> {
        let n = got.len().min(sent.len());
        if got[..n] != sent[..n] {
            return Err("echo bytes differ from what was sent".into());
        }
        Ok((n == sent.len()).then_some(n))
    }

    /// Appends the `seq`-th payload of `size` bytes: the sequence number (little
    /// endian, up to 8 bytes) then letters, so a corrupted or reordered echo shows.
    pub fn payload(seq: u64, size: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&seq.to_le_bytes()[..size.min(8)]);
        out.extend(
            (start + size.min(8)..start + size)
                .map(|i| b'a' + ((seq as usize + i - start) % 26) as u8),
        );
    }
}

/// `http`: HTTP/1.1 answered `200 OK` with [`HELLO_BODY`](http::HELLO_BODY).
pub mod http {
    use std::ops::Range;

    /// The body of every `200 OK` the server sends.
    pub const HELLO_BODY: &[u8] = b"Hello, World!";
    /// Default largest request head, in bytes (431 past it).
    pub const MAX_HEADER_BYTES: usize = 8192;
    /// Default most header lines in a request (431 past it).
    pub const MAX_HEADERS: usize = 100;
    /// Default largest request body, in bytes (413 past it).
    pub const MAX_BODY: u64 = 1 << 20;
    /// Most header lines a reply may carry for the client to parse it.
    pub const REPLY_HEADERS: usize = 64;

    /// Appends `GET <path> HTTP/1.1` with a `Host` header.
    pub fn encode_get(path: &str, host: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }

    /// One framed reply.
    #[derive(Clone, Debug, PartialEq, Eq)]
    ///
    /// ```
    /// let f = reactor::wire::http::frame(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    ///     .unwrap()
    ///     .unwrap();
    /// assert_eq!(f.status, 204);
    /// ```
    pub struct Framed {
        /// Bytes the reply took, head and body.
        pub len: usize,
        pub status: u16,
        /// Where the body is in the buffer.
        pub body: Range<usize>,
        /// Whether the server said it closes the connection after this reply.
        pub close: bool,
    }

    /// Frames one reply (with a `Content-Length` body) at the start of `buf`. A `1xx`
    /// interim reply is framed like any other (it has no body).
    pub fn frame(buf: &[u8]) -> Result<Option<Framed>, String> {
        let mut headers = [httparse::EMPTY_HEADER; REPLY_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("bad HTTP response: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let mut close = false;
        let mut len = None;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_none() {
                    return Err("HTTP response with a bad Content-Length".into());
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            }
        }
        let len = match len {
            Some(n) => n,
            None if (100..200).contains(&status) => 0,
            None => return Err("HTTP response without a valid Content-Length".into()),
        };
        // A peer controls the length: it must not wrap around.
        let end = head
            .checked_add(len)
            .ok_or("HTTP response with a Content-Length past any buffer")?;
        if buf.len() < end {
            return Ok(None);
        }
        Ok(Some(Framed {
            len: end,
            status,
            body: head..end,
            close,
        }))
    }

    /// Checks a reply against what reactor's `http` protocol answers: `200` and, unless
    /// `body` is empty, that body.
    pub fn check(status: u16, got: &[u8], body: &[u8]) -> Result<(), String> {
        if status != 200 {
            return Err(format!("HTTP status {status}"));
        }
        if !body.is_empty() && got != body {
            return Err(format!("HTTP body {:?}", String::from_utf8_lossy(got)));
        }
        Ok(())
    }
}

/// `json`: a stream of `{"Uid":"...","Val":"..."}` objects, each answered by one line
/// `{"Uid":"...","Val":"server: hello, ...","Ts":"..."}`.
pub mod json {
    use serde::{Deserialize, Serialize};

    /// What the server puts before the request's `Val` in its reply.
    pub const REPLY_PREFIX: &str = "server: hello, ";
    /// Default largest message, in bytes.
    pub const MAX_MESSAGE: usize = 64 * 1024;

    #[derive(Serialize)]
    struct Request<'a> {
        #[serde(rename = "Uid")]
        uid: &'a str,
        #[serde(rename = "Val")]
        val: &'a str,
    }

    /// Appends the request `{"Uid":uid,"Val":val}` and a newline (escaped as JSON needs).
    pub fn encode(uid: &str, val: &str, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &Request { uid, val });
        out.push(b'\n');
    }

    /// One reply line: an answer, or an error line (`{"error":"..."}`), which carries no
    /// `Uid`.
    #[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
    ///
    /// ```
    /// let line = br#"{"Uid":"1","Val":"server: hello, a","Ts":"x"}"#.to_vec();
    /// let (_, r) = reactor::wire::json::frame(&[&line[..], b"\n"].concat(), 1024).unwrap().unwrap();
    /// assert_eq!(r.uid.as_deref(), Some("1"));
    /// ```
    pub struct Reply {
        #[serde(rename = "Uid")]
        pub uid: Option<String>,
        #[serde(rename = "Val")]
        pub val: Option<String>,
        #[serde(rename = "Ts")]
        pub ts: Option<String>,
        pub error: Option<String>,
    }

    /// Frames one reply line at the start of `buf`; `max` bounds a line still without
    /// its newline.
    pub fn frame(buf: &[u8], max: usize) -> Result<Option<(usize, Reply)>, String> {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > max {
                return Err(format!("JSON reply longer than {max} bytes"));
            }
            return Ok(None);
        };
        let reply: Reply =
            serde_json::from_slice(&buf[..nl]).map_err(|e| format!("bad JSON answer: {e}"))?;
        Ok(Some((nl + 1, reply)))
    }

    /// The `Val` the server answers to a request whose `Val` is `val`.
    pub fn hello(val: &str) -> String {
        format!("{REPLY_PREFIX}{val}")
    }

    /// Checks an answer's `Val` against the request's.
    pub fn check(sent_val: &str, reply: &Reply) -> Result<(), String> {
        if let Some(e) = &reply.error {
            return Err(format!("server error: {e}"));
        }
        match reply.val.as_deref() {
            Some(v) if v.strip_prefix(REPLY_PREFIX) == Some(sent_val) => Ok(()),
            Some(v) => Err(format!("JSON answer with a wrong Val: {v:?}")),
            None => Err("JSON answer without a Val".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_reply_is_framed_at_every_split_and_checked() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!HTTP/1.1";
        for cut in 0..r.len() - 8 {
            assert_eq!(http::frame(&r[..cut]), Ok(None), "cut {cut}");
        }
        let f = http::frame(r).unwrap().unwrap();
        assert_eq!((f.len, f.status, f.close), (r.len() - 8, 200, false));
        assert_eq!(
            http::check(200, &r[f.body.clone()], http::HELLO_BODY),
            Ok(())
        );
        assert!(http::check(200, b"nope", http::HELLO_BODY).is_err());
        assert!(http::check(404, http::HELLO_BODY, http::HELLO_BODY).is_err());
    }

    #[test]
    fn http_content_length_from_a_peer_cannot_wrap() {
        let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nx", usize::MAX);
        assert!(http::frame(r.as_bytes()).is_err());
        assert!(http::frame(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(http::frame(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn json_request_round_trips_and_reply_is_checked() {
        let mut out = Vec::new();
        json::encode("1", "a\"b\n", &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["Uid"].as_str(), v["Val"].as_str()),
            (Some("1"), Some("a\"b\n"))
        );
        let line = br#"{"Uid":"1","Val":"server: hello, x","Ts":"t"}
rest"#;
        assert_eq!(json::frame(&line[..10], 100), Ok(None));
        let (n, r) = json::frame(line, 100).unwrap().unwrap();
        assert_eq!((n, r.uid.as_deref()), (line.len() - 4, Some("1")));
        assert_eq!(json::check("x", &r), Ok(()));
        assert!(json::check("y", &r).is_err());
        let (_, e) = json::frame(b"{\"error\":\"bad\"}\n", 100).unwrap().unwrap();
        assert!(json::check("x", &e).unwrap_err().contains("bad"));
        assert!(json::frame(b"not json\n", 100).is_err());
        assert!(json::frame(&[b' '; 101], 100).is_err());
    }

    #[test]
    fn echo_frames_only_its_own_bytes() {
        let mut p = Vec::new();
        echo::payload(7, 20, &mut p);
        assert_eq!(p.len(), 20);
        assert_eq!(echo::frame(&p[..5], &p), Ok(None));
        assert_eq!(echo::frame(&p, &p), Ok(Some(20)));
        let mut bad = p.clone();
        bad[3] ^= 1;
        assert!(echo::frame(&bad, &p).is_err());
    }
}
