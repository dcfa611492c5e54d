//! The TLS transport layer: ciphertext in, plaintext to the decoder; answers out,
//! encrypted before they reach the socket. Every byte handed to the socket from a TLS
//! connection's output lies before `Tls::enc`, which only ever covers ciphertext (see
//! [`Tls::process`](crate::tls::Tls::process)).

use bytes::BytesMut;

use super::conn::*;
use super::drive::{Close, ConnIo, Read};
use super::socket::{Socket, interrupted, would_block};
use crate::service::Handler;
use crate::tls::{HANDSHAKE_RECORD, HandshakeFailure, MAX_RECORD, Tls};

impl<H: Handler> ConnIo<H> {
    /// A new connection's TLS session, on a TLS listener (`None` on a plain one).
    pub fn new_tls(&mut self) -> Option<Result<Box<Tls>, rustls::Error>> {
        let shared = self.set.tls.as_ref()?;
        let cfg = shared.config(&mut self.tls_cfg);
        let tls = Tls::new(cfg).map(Box::new);
        if tls.is_ok() {
            self.stats.tls_open += 1;
        }
        Some(tls)
    }

    /// One read on a TLS connection: ciphertext from the socket (after any partial
    /// record carried over) into the TLS scratch buffer, run through rustls; plaintext
    /// lands in the scratch buffer for the decoder, handshake messages in the output.
    /// Returns `(bytes read, plaintext bytes, whether the read was short)`, or `None`
    /// on WouldBlock.
    pub(super) fn tls_read<K: Socket>(
        &mut self,
        sock: &mut K,
        conn: &mut Conn<H::State>,
    ) -> Result<Option<Read>, Close> {
        let Some(busy) = conn.busy.as_deref_mut() else {
            return Ok(None);
        };
        let Some(tls) = busy.tls.as_deref_mut() else {
            return Ok(None);
        };
        let ct = &mut self.tls_scratch;
        let mut held = 0;
        if let Some(b) = tls.held.take() {
            held = b.len();
            ct[..held].copy_from_slice(&b);
            self.pool.put(b);
        }
        // Never more ciphertext than the plaintext buffer can take decrypted.
        let room = self.scratch.len().min(ct.len()) - held;
        // Bytes that came behind a PROXY header are processed before any new read.
        let unread = std::mem::take(&mut tls.unread);
        let raw = if unread {
            0
        } else {
            loop {
                match sock.read(&mut ct[held..held + room]) {
                    Ok(n) => break n,
                    Err(e) if interrupted(&e) => {}
                    Err(e) => {
                        if held > 0 {
                            let mut b = self.pool.get();
                            b.extend_from_slice(&ct[..held]);
                            tls.held = Some(b);
                        }
                        return if would_block(&e) {
                            Ok(None)
                        } else {
                            Err(super::drive::io_close(&e))
                        };
                    }
                }
            }
        };
        if raw == 0 && !unread {
            return Ok(Some(Read {
                raw: 0,
                plain: 0,
                short: true,
                eof: true,
            }));
        }
        // A partial record carried over leaves less room than the scratch buffer: the
        // read is short only if it did not fill what it was given.
        let short = !unread && raw < room;
        if tls.fresh {
            tls.fresh = false;
            if ct[0] != HANDSHAKE_RECORD {
                return self.not_tls(conn, raw);
            }
        }
        let out = busy.output.get_or_insert_with(|| self.pool.get());
        let got = tls.process(
            &mut ct[..held + raw],
            out,
            &mut self.scratch,
            &mut self.segment,
            false,
        );
        if out.is_empty()
            && let Some(b) = busy.output.take()
        {
            self.pool.put(b);
        }
        let done = match got {
            Ok(done) => done,
            Err(e) => {
                log::debug!("TLS: {e}");
                // Tell the peer why, best-effort, before the close.
                self.segment.clear();
                let from = tls.err_consumed.min(held + raw);
                tls.pending_alert(&mut ct[from..held + raw], &mut self.segment);
                if !self.segment.is_empty() {
                    let _ = sock.write(&self.segment);
                }
                return Err(if tls.handshaking {
                    Close::Tls(HandshakeFailure::Protocol)
                } else {
                    Close::Error
                });
            }
        };
        let left = held + raw - done.consumed;
        if left > 0 {
            if left > MAX_RECORD {
                // rustls takes any complete record; more than a record left over
                // would be a bug, and must not grow a buffer for ever.
                log::debug!("TLS: {left} bytes left over after a read, more than a record");
                return Err(Close::Error);
            }
            let mut b = self.pool.get();
            b.extend_from_slice(&ct[done.consumed..held + raw]);
            tls.held = Some(b);
        }
        if tls.handshaking && !tls.conn.is_handshaking() {
            tls.handshaking = false;
            self.stats.tls_handshakes += 1;
            if tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                self.stats.tls_resumed += 1;
            }
            log::debug!(
                "TLS handshake: {:?}, ALPN {:?}",
                tls.conn.protocol_version(),
                tls.conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
            );
        }
        if done.peer_closed {
            conn.set(PEER_EOF, true);
        }
        Ok(Some(Read {
            raw,
            plain: done.plain,
            short,
            eof: false,
        }))
    }

    /// The first byte on a TLS port is not a TLS record: plain text. HTTP gets its 400
    /// first (as nginx does), then a close; other protocols are closed at once.
    pub(super) fn not_tls(
        &mut self,
        conn: &mut Conn<H::State>,
        raw: usize,
    ) -> Result<Option<Read>, Close> {
        let Some(reply) = self.set.tls.as_ref().and_then(|t| t.plain_reply) else {
            return Err(Close::Tls(HandshakeFailure::NotTls));
        };
        let busy = conn.busy();
        busy.tls = None;
        self.stats.tls_open = self.stats.tls_open.saturating_sub(1);
        self.stats.tls_fail_not_tls += 1;
        self.stats.bad_requests += 1;
        busy.output
            .get_or_insert_with(|| self.pool.get())
            .extend_from_slice(reply);
        conn.stage = Stage::Closing;
        Ok(Some(Read {
            raw,
            plain: 0,
            short: true,
            eof: false,
        }))
    }

    /// A TLS connection is under the read timeout from its first byte until its
    /// handshake ends, and while a record is half read.
    pub(super) fn tls_in_request(&mut self, conn: &mut Conn<H::State>, plain: usize) {
        let Some(tls) = conn.tls() else {
            return;
        };
        let mid = tls.handshaking || tls.held.is_some();
        if mid {
            if !conn.has(IN_REQUEST) {
                conn.set(IN_REQUEST, true);
                conn.since = Stamp::at(self.now);
            }
        } else if plain == 0 && conn.input().is_none() && !self.handler.in_request(&conn.state) {
            conn.set(IN_REQUEST, false);
        }
    }

    /// Counts a TLS connection's end: a handshake that did not finish, by reason; an
    /// established session closed by us gets close_notify (best-effort) first.
    pub(super) fn close_tls<K: Socket>(
        &mut self,
        sock: Option<&mut K>,
        conn: &Conn<H::State>,
        tls: &mut Tls,
        why: Close,
    ) {
        let s = &mut self.stats;
        s.tls_open = s.tls_open.saturating_sub(1);
        if tls.handshaking {
            match why {
                Close::Tls(HandshakeFailure::NotTls) => s.tls_fail_not_tls += 1,
                Close::Tls(HandshakeFailure::Protocol) => s.tls_fail_protocol += 1,
                Close::ReadTimeout | Close::IdleTimeout | Close::WriteTimeout => {
                    s.tls_fail_timeout += 1
                }
                _ => s.tls_fail_closed += 1,
            }
        } else if why != Close::Error
            && conn.output().is_none()
            && let Some(sock) = sock
        {
            send_close_notify(tls, sock, &mut self.segment);
        }
        if let Some(b) = tls.held.take() {
            self.pool.put(b);
        }
    }
}

/// Writes close_notify (once), best-effort: a few dozen bytes into an empty socket
/// buffer, so one non-blocking write does it.
pub(super) fn send_close_notify<K: Socket>(tls: &mut Tls, sock: &mut K, tmp: &mut Vec<u8>) {
    if tls.close_sent || tls.handshaking {
        return;
    }
    let mut out = BytesMut::new();
    if tls.encrypt_pending(&mut out, tmp, true).is_ok() && !out.is_empty() {
        let _ = sock.write(&out);
    }
}
