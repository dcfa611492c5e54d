//! Per-protocol requests and reply checks, on the shared codec (`reactor::wire`).

use std::sync::atomic::Ordering;

use reactor::wire;

use crate::load::{Client, Inflight, OK, Worker, now_ns};
use crate::options::{Opts, Proto};

impl Worker {
    pub(crate) fn push_request(opts: &Opts, c: &mut Client, t: u64) {
        let seq = c.sent;
        c.sent += 1;
        match opts.protocol {
            Proto::Echo => wire::echo::payload(seq, opts.size, &mut c.wbuf),
            Proto::Http => wire::http::encode_get("/", "bench", &mut c.wbuf),
            Proto::Json => wire::json::encode(&seq.to_string(), &format!("v{seq}"), &mut c.wbuf),
        }
        c.inflight.push_back(Inflight { seq, t });
    }

    /// Parses every complete response in the client's read buffer.
    pub(crate) fn parse(&mut self, key: usize) -> Result<(), String> {
        let now = now_ns(&self.shared);
        let measuring = self.shared.measuring.load(Ordering::Relaxed);
        let c = &mut self.clients[key];
        let mut pos = 0;
        loop {
            let buf = &c.rbuf[pos..];
            let (len, seq_hint): (usize, Option<u64>) = match self.opts.protocol {
                Proto::Echo => {
                    let size = self.opts.size;
                    if buf.len() < size {
                        break;
                    }
                    let Some(front) = c.inflight.front() else {
                        return Err("echo bytes with no request in flight".into());
                    };
                    self.expect.clear();
                    wire::echo::payload(front.seq, size, &mut self.expect);
                    if wire::echo::frame(&buf[..size], &self.expect).is_err() {
                        return Err(format!("echo payload {} corrupted", front.seq));
                    }
                    (size, None)
                }
                Proto::Http => {
                    let Some(f) = wire::http::frame(buf)? else {
                        break;
                    };
                    wire::http::check(f.status, &buf[f.body], self.opts.http_body.as_bytes())?;
                    (f.len, None)
                }
                Proto::Json => {
                    let Some((len, v)) = wire::json::frame(buf, wire::json::MAX_MESSAGE)? else {
                        break;
                    };
                    let uid = v
                        .uid
                        .as_deref()
                        .and_then(|u| u.parse::<u64>().ok())
                        .ok_or_else(|| format!("JSON answer without our Uid: {v:?}"))?;
                    wire::json::check(&format!("v{uid}"), &v)?;
                    (len, Some(uid))
                }
            };
            // Match the answer to its request: by position, or by Uid as the seed's
            // client does.
            let req = match seq_hint {
                None => c.inflight.pop_front(),
                Some(uid) => c
                    .inflight
                    .iter()
                    .position(|r| r.seq == uid)
                    .and_then(|i| c.inflight.remove(i)),
            }
            .ok_or("an answer with no matching request")?;
            pos += len;
            c.answered += 1;
            self.local[OK] += 1;
            if measuring {
                self.ok_measured += 1;
                self.bytes_measured += len as u64;
                let us = now.saturating_sub(req.t) / 1000;
                let _ = self.hist.record(us.max(1));
            }
        }
        c.rbuf.drain(..pos);
        Ok(())
    }
}
