//! The preamble layer: a trusted load balancer's PROXY header (v1 or v2) before
//! anything else on the connection, and the refusal of one from a peer not trusted to
//! send it. The header is read from the socket as it is (under TLS too: the load
//! balancer writes it before the client's first TLS record); what follows it is handed
//! to the next layer (the TLS transport's carried-over input, or the decoder's).

use bytes::Buf;

use super::conn::*;
use super::drive::{Close, ConnIo};
use super::socket::{Socket, interrupted, would_block};
use crate::proxy::{self, Parsed, Refusal};
use crate::service::Handler;

impl<H: Handler> ConnIo<H> {
    /// Reads a trusted peer's PROXY header. Bytes after it stay in the input buffer
    /// for the decoder.
    pub(super) fn read_proxy_header<K: Socket>(
        &mut self,
        sock: &mut K,
        conn: &mut Conn<H::State>,
        key: usize,
    ) -> Result<(), Close> {
        loop {
            let busy = conn.busy.get_or_insert_with(Box::default);
            let buf = busy.input.get_or_insert_with(|| self.pool.get());
            let room = proxy::MAX_HEADER + 1 - buf.len().min(proxy::MAX_HEADER);
            let n = match sock.read(&mut self.scratch[..room]) {
                Ok(0) => return Err(Close::Normal),
                Ok(n) => n,
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) if interrupted(&e) => continue,
                Err(_) => return Err(Close::Error),
            };
            self.stats.bytes_in += n as u64;
            buf.extend_from_slice(&self.scratch[..n]);
            match proxy::parse(self.set.proxy, buf) {
                Parsed::Incomplete => continue,
                Parsed::Refused(why) => return Err(Close::Proxy(why)),
                Parsed::Done { len, client } => {
                    buf.advance(len);
                    self.stats.proxy_headers += 1;
                    if let Some(client) = client {
                        log::debug!("connection {key}: client {client} (PROXY header)");
                        if let Some(p) = busy.peer.as_deref_mut() {
                            p.1 = Some(client);
                        }
                        if self.set.max_per_ip > 0 {
                            self.proxied.push((key, client));
                        }
                    }
                    let mut rest = !buf.is_empty();
                    if !rest && let Some(b) = busy.input.take() {
                        self.pool.put(b);
                    }
                    if let Some(tls) = busy.tls.as_deref_mut()
                        && let Some(b) = busy.input.take_if(|b| !b.is_empty())
                    {
                        // What follows the header is the client's first TLS records:
                        // the transport's input, not the decoder's.
                        tls.held = Some(b);
                        tls.unread = true;
                        rest = false;
                    }
                    conn.stage = Stage::Serving;
                    conn.set(DECODE_PENDING, rest);
                    conn.last_active = Stamp::at(self.now);
                    return Ok(());
                }
            }
        }
    }

    /// A peer not in `--proxy-from` that opens with a PROXY header is trying to pass
    /// for someone else: refuse it. Decided on the first bytes that settle it.
    pub(super) fn check_spoof(&mut self, conn: &mut Conn<H::State>, n: usize) -> Result<(), Close> {
        let mut first = [0u8; 12];
        let held = conn.input().map_or(&[][..], |b| &b[..]);
        let k = held.len().min(first.len());
        first[..k].copy_from_slice(&held[..k]);
        let m = (first.len() - k).min(n);
        first[k..k + m].copy_from_slice(&self.scratch[..m]);
        let seen = &first[..k + m];
        if !proxy::looks_like_header(seen) {
            conn.set(SPOOF_CHECK, false);
            return Ok(());
        }
        // "PROXY " or the whole v2 signature settles it; a shorter prefix waits.
        if seen.len() >= 6 && (seen.starts_with(b"PROXY ") || seen.len() == first.len()) {
            return Err(Close::Proxy(Refusal::Untrusted));
        }
        Ok(())
    }
}
