//! The simulation's clients: each writes requests of a built-in protocol (through the
//! project's `wire` module, as every client of reactor does), plain or through a real
//! rustls client, and checks every answer it gets: the right one, in order, once.
//!
//! A TLS 1.2 client may also renegotiate mid-pipeline. rustls will not, so that client
//! takes its session's keys out of rustls after the handshake
//! (`dangerous_extract_secrets`) and carries on with rustls's own record encryption, which
//! lets it send an encrypted ClientHello, as openssl's `R` command does.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{
    ClientConfig, ClientConnection, ConnectionTrafficSecrets, ContentType, ProtocolVersion,
};

use super::rng::Rng;
use crate::wire;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proto {
    Echo,
    Http,
    Json,
}

/// What the answer to one request must be.
enum Want {
    Echo(Vec<u8>),
    Http,
    /// A JSON answer carrying this `Val`, or (`fails`) an error line.
    Json {
        val: String,
        fails: bool,
    },
}

struct Request {
    want: Want,
    /// The request is whole on the wire once this many of the client's bytes are.
    end: usize,
}

enum Transport {
    Plain,
    Rustls(Box<ClientConnection>),
    /// TLS 1.2 after the handshake, on rustls's record layer with the session's keys.
    Raw(Box<Raw>),
}

struct Raw {
    enc: Box<dyn MessageEncrypter>,
    dec: Box<dyn MessageDecrypter>,
    tx_seq: u64,
    rx_seq: u64,
    /// Ciphertext received, not yet a whole record.
    pending: Vec<u8>,
    renegotiated: bool,
}

pub(super) struct Client {
    pub id: usize,
    pub key: usize,
    pub proto: Proto,
    transport: Transport,
    /// Every byte the client has put on the wire (header, ciphertext or plaintext).
    wire: Vec<u8>,
    /// How many of them the network has taken.
    pub pushed: usize,
    requests: VecDeque<Request>,
    pub sent: u64,
    pub answered: u64,
    /// Plaintext received and not yet framed.
    inbuf: Vec<u8>,
    seq: u64,
    pub fin: bool,
    pub reset: bool,
    /// An answer said the server closes after it (HTTP `Connection: close`): what
    /// follows it may go unanswered.
    pub told_close: bool,
    /// The server closed the connection.
    pub gone: bool,
    /// Failure answers (handler timeout) are allowed for pooled requests.
    pub lenient: bool,
    /// The client asked for a renegotiation (TLS 1.2).
    pub renegotiate: bool,
    /// A JSON request asks its service to panic when its value starts with this.
    panics: bool,
    /// Bytes of the server's current TLS record not received yet (and of its header):
    /// the keys can leave rustls only between records.
    rx_record_left: usize,
    rx_head: Vec<u8>,
    /// Pushes the server took for this client ([`push_frame`](Client::push_frame)),
    /// and how many came, whole and in order.
    pub pushes_sent: u64,
    pub pushes_got: u64,
}

/// A TLS 1.2 ClientHello, as a handshake message (for the renegotiation).
fn client_hello(cfg: &Arc<ClientConfig>) -> Vec<u8> {
    let name = rustls_pki_types::ServerName::try_from("sim.reactor").expect("a name");
    let mut c = ClientConnection::new(cfg.clone(), name).expect("a client");
    let mut out = Vec::new();
    c.write_tls(&mut out).expect("a ClientHello");
    // One plaintext handshake record: the message is what follows its header.
    out.split_off(5)
}

impl Client {
    pub fn new(
        id: usize,
        key: usize,
        proto: Proto,
        tls: Option<&Arc<ClientConfig>>,
        proxy_header: Option<Vec<u8>>,
        lenient: bool,
        panics: bool,
    ) -> Client {
        let transport = match tls {
            None => Transport::Plain,
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from("sim.reactor").expect("a name");
                Transport::Rustls(Box::new(
                    ClientConnection::new(cfg.clone(), name).expect("a TLS client"),
                ))
            }
        };
        let mut c = Client {
            id,
            key,
            proto,
            transport,
            wire: proxy_header.unwrap_or_default(),
            pushed: 0,
            requests: VecDeque::new(),
            sent: 0,
            answered: 0,
            inbuf: Vec::new(),
            seq: 0,
            fin: false,
            reset: false,
            told_close: false,
            gone: false,
            lenient,
            renegotiate: false,
            panics,
            rx_record_left: 0,
            rx_head: Vec::new(),
            pushes_sent: 0,
            pushes_got: 0,
        };
        c.pump_tls();
        c
    }

    /// Whether requests can be written (a TLS client waits for its handshake).
    pub fn ready(&self) -> bool {
        match &self.transport {
            Transport::Rustls(c) => !c.is_handshaking(),
            _ => true,
        }
    }

    /// Bytes on the wire not yet taken by the network.
    pub fn unpushed(&self) -> usize {
        self.wire.len() - self.pushed
    }

    /// The next `n` bytes for the network.
    pub fn take_wire(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.unpushed());
        let at = self.pushed;
        self.pushed += n;
        &self.wire[at..at + n]
    }

    /// Requests whole on the wire and not answered.
    pub fn owed(&self) -> usize {
        self.requests
            .iter()
            .filter(|r| r.end <= self.pushed)
            .count()
    }

    /// The next push for this client: a line no answer of the HTTP or JSON protocol
    /// begins with (0x01), numbered, so that a lost, repeated, reordered or split
    /// push shows.
    pub fn push_frame(&self) -> Vec<u8> {
        format!("\u{1}push {}\n", self.pushes_sent).into_bytes()
    }

    /// Pushes the server took and the client has not received.
    pub fn pushes_owed(&self) -> u64 {
        self.pushes_sent - self.pushes_got
    }

    /// Writes `n` requests, pipelined.
    pub fn send_requests(&mut self, rng: &mut Rng, n: usize) {
        let mut plain = Vec::new();
        let mut wants = Vec::new();
        for _ in 0..n {
            self.seq += 1;
            let start = plain.len();
            let want = match self.proto {
                Proto::Echo => {
                    let max = if rng.chance(10) { 20_000 } else { 300 };
                    let size = 1 + rng.below(max);
                    wire::echo::payload(self.seq, size, &mut plain);
                    Want::Echo(plain[start..].to_vec())
                }
                Proto::Http => {
                    if rng.chance(40) {
                        // The server answers it, says so, and closes: what follows it
                        // goes unanswered.
                        plain.extend_from_slice(
                            b"GET / HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n",
                        );
                    } else {
                        wire::http::encode_get("/", "sim", &mut plain);
                    }
                    Want::Http
                }
                Proto::Json => {
                    let fails = self.panics && rng.chance(10);
                    let val = if fails {
                        format!("panic{}", self.seq)
                    } else {
                        format!("v{}", self.seq)
                    };
                    wire::json::encode(&self.seq.to_string(), &val, &mut plain);
                    Want::Json { val, fails }
                }
            };
            wants.push((want, plain.len()));
        }
        // Each request's end on the wire: plaintext maps one to one; through TLS, a
        // request is whole once the record holding its last byte is.
        let mut done = 0;
        for (want, end) in wants {
            self.encode(&plain[done..end]);
            done = end;
            self.requests.push_back(Request {
                want,
                end: self.wire.len(),
            });
            self.sent += 1;
        }
    }

    fn encode(&mut self, plain: &[u8]) {
        match &mut self.transport {
            Transport::Plain => self.wire.extend_from_slice(plain),
            Transport::Rustls(c) => {
                c.writer().write_all(plain).expect("rustls takes plaintext");
                while c.wants_write() {
                    c.write_tls(&mut self.wire).expect("rustls writes");
                }
            }
            Transport::Raw(r) => {
                for chunk in plain.chunks(16384) {
                    let rec = r
                        .enc
                        .encrypt(
                            OutboundPlainMessage {
                                typ: ContentType::ApplicationData,
                                version: ProtocolVersion::TLSv1_2,
                                payload: OutboundChunks::Single(chunk),
                            },
                            r.tx_seq,
                        )
                        .expect("encrypt");
                    r.tx_seq += 1;
                    self.wire.extend_from_slice(&rec.encode());
                }
            }
        }
    }

    /// TLS 1.2: takes the session's keys out of rustls (once the handshake is done and
    /// nothing is buffered), then sends an encrypted ClientHello: the server must
    /// refuse it with a warning alert and go on.
    pub fn start_renegotiation(&mut self, cfg: &Arc<ClientConfig>) -> bool {
        let Transport::Rustls(c) = &self.transport else {
            return false;
        };
        if c.is_handshaking()
            || c.protocol_version() != Some(ProtocolVersion::TLSv1_2)
            || c.wants_write()
            || self.rx_record_left > 0
            || !self.rx_head.is_empty()
        {
            return false;
        }
        let Transport::Rustls(c) = std::mem::replace(&mut self.transport, Transport::Plain) else {
            return false;
        };
        let secrets = c.dangerous_extract_secrets().expect("secret extraction");
        let suite =
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
        let rustls::SupportedCipherSuite::Tls12(suite) = suite else {
            panic!("a TLS 1.2 suite");
        };
        let alg = suite.aead_alg;
        let keys = |s: ConnectionTrafficSecrets| match s {
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => panic!("the renegotiating client has only ChaCha20-Poly1305"),
        };
        let (tx_key, tx_iv) = keys(secrets.tx.1);
        let (rx_key, rx_iv) = keys(secrets.rx.1);
        let mut raw = Raw {
            enc: alg.encrypter(tx_key, tx_iv.as_ref(), &[]),
            dec: alg.decrypter(rx_key, rx_iv.as_ref()),
            tx_seq: secrets.tx.0,
            rx_seq: secrets.rx.0,
            pending: Vec::new(),
            renegotiated: true,
        };
        let hello = client_hello(cfg);
        let rec = raw
            .enc
            .encrypt(
                OutboundPlainMessage {
                    typ: ContentType::Handshake,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(&hello),
                },
                raw.tx_seq,
            )
            .expect("encrypt");
        raw.tx_seq += 1;
        self.wire.extend_from_slice(&rec.encode());
        self.transport = Transport::Raw(Box::new(raw));
        self.renegotiate = true;
        true
    }

    /// A graceful TLS close: close_notify before the FIN.
    pub fn close_notify(&mut self) {
        if let Transport::Rustls(c) = &mut self.transport {
            c.send_close_notify();
        }
        self.pump_tls();
    }

    fn pump_tls(&mut self) {
        if let Transport::Rustls(c) = &mut self.transport {
            while c.wants_write() {
                c.write_tls(&mut self.wire).expect("rustls writes");
            }
        }
    }

    /// Bytes from the server: decrypted if need be, then framed and checked against the
    /// requests in order. `Err` is a broken invariant.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        match &mut self.transport {
            Transport::Plain => self.inbuf.extend_from_slice(bytes),
            Transport::Rustls(c) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    if self.rx_record_left > 0 {
                        let n = self.rx_record_left.min(rest.len());
                        self.rx_record_left -= n;
                        rest = &rest[n..];
                        continue;
                    }
                    let n = (5 - self.rx_head.len()).min(rest.len());
                    self.rx_head.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if self.rx_head.len() == 5 {
                        let h = std::mem::take(&mut self.rx_head);
                        self.rx_record_left = usize::from(u16::from_be_bytes([h[3], h[4]]));
                    }
                }
                let mut at = bytes;
                while !at.is_empty() {
                    c.read_tls(&mut at).map_err(|e| format!("read_tls: {e}"))?;
                    let st = c
                        .process_new_packets()
                        .map_err(|e| format!("the TLS client refused the server's bytes: {e}"))?;
                    if st.plaintext_bytes_to_read() > 0 {
                        let mut buf = vec![0; st.plaintext_bytes_to_read()];
                        c.reader().read_exact(&mut buf).map_err(|e| e.to_string())?;
                        self.inbuf.extend_from_slice(&buf);
                    }
                }
                self.pump_tls();
            }
            Transport::Raw(r) => {
                r.pending.extend_from_slice(bytes);
                loop {
                    if r.pending.len() < 5 {
                        break;
                    }
                    let len = usize::from(u16::from_be_bytes([r.pending[3], r.pending[4]]));
                    if r.pending.len() < 5 + len {
                        break;
                    }
                    let mut rec: Vec<u8> = r.pending.drain(..5 + len).collect();
                    let typ = ContentType::from(rec[0]);
                    let msg =
                        InboundOpaqueMessage::new(typ, ProtocolVersion::TLSv1_2, &mut rec[5..]);
                    let plain = r
                        .dec
                        .decrypt(msg, r.rx_seq)
                        .map_err(|e| format!("a server record does not decrypt: {e}"))?;
                    r.rx_seq += 1;
                    match plain.typ {
                        ContentType::ApplicationData => self.inbuf.extend_from_slice(plain.payload),
                        // The refusal of the renegotiation: warning, no_renegotiation.
                        ContentType::Alert if plain.payload == [1, 100] && r.renegotiated => {}
                        // The server's close_notify.
                        ContentType::Alert if plain.payload == [1, 0] => {}
                        other => {
                            return Err(format!(
                                "unexpected TLS record {other:?} {:?}",
                                plain.payload
                            ));
                        }
                    }
                }
            }
        }
        self.frame()
    }

    fn frame(&mut self) -> Result<(), String> {
        let who = format!("client {} (key {})", self.id, self.key);
        loop {
            if self.inbuf.is_empty() {
                return Ok(());
            }
            if self.proto != Proto::Echo && self.inbuf[0] == 1 {
                // A push, between two answers.
                let Some(nl) = self.inbuf.iter().position(|&b| b == b'\n') else {
                    return Ok(());
                };
                let want = format!("\u{1}push {}\n", self.pushes_got);
                if self.inbuf[..=nl] != *want.as_bytes() {
                    return Err(format!(
                        "{who}: push {} expected, got {:?}",
                        self.pushes_got,
                        String::from_utf8_lossy(&self.inbuf[..=nl])
                    ));
                }
                self.inbuf.drain(..=nl);
                self.pushes_got += 1;
                continue;
            }
            let Some(front) = self.requests.front() else {
                return Err(format!(
                    "{who}: an answer to no request: {:?}",
                    String::from_utf8_lossy(&self.inbuf[..self.inbuf.len().min(60)])
                ));
            };
            let used = match (&front.want, self.proto) {
                (Want::Echo(sent), _) => match wire::echo::frame(&self.inbuf, sent) {
                    Ok(Some(n)) => n,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(format!("{who}: {e}")),
                },
                (Want::Http, _) => match wire::http::frame(&self.inbuf) {
                    Ok(Some(f)) => {
                        let body = &self.inbuf[f.body.clone()];
                        let failed = f.status == 503 && self.lenient;
                        if !failed {
                            wire::http::check(f.status, body, wire::http::HELLO_BODY)
                                .map_err(|e| format!("{who}: {e}"))?;
                        }
                        if f.close {
                            self.told_close = true;
                        }
                        f.len
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(format!("{who}: {e}")),
                },
                (Want::Json { val, fails }, _) => {
                    match wire::json::frame(&self.inbuf, wire::json::MAX_MESSAGE) {
                        Ok(Some((n, reply))) => {
                            match (&reply.error, *fails || self.lenient) {
                                (Some(_), true) => {}
                                (Some(e), false) => {
                                    return Err(format!("{who}: an error answer: {e}"));
                                }
                                (None, _) if *fails => {
                                    return Err(format!(
                                        "{who}: a request whose handler panicked got {reply:?}"
                                    ));
                                }
                                (None, _) => wire::json::check(val, &reply)
                                    .map_err(|e| format!("{who}: {e}"))?,
                            }
                            n
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(format!("{who}: {e}")),
                    }
                }
            };
            self.inbuf.drain(..used);
            self.requests.pop_front();
            self.answered += 1;
        }
    }
}
