//! Connection hooks and pushes, over real sockets: a protocol is told when a
//! connection opens (with the peer's address, or the PROXY header's client; after the
//! TLS handshake) and closes (with the reason), may refuse one, may set timers, and any
//! thread may push to any connection, with pushes refused (and counted) past the
//! push limit rather than buffered.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reactor::bytes::BytesMut;
use reactor::connection::{Closed, ConnId, ConnInfo};
use reactor::protocol::{Cx, Decoded, Protocol};

#[derive(Default)]
struct Book {
    open: HashMap<ConnId, Option<SocketAddr>>,
    closed: Vec<(ConnId, Closed)>,
}

/// Greets each connection with the address it came from, answers `id` with its id,
/// `tick MS` with a timer that writes `tick` when due, and echoes anything else.
#[derive(Clone, Default)]
struct Room {
    book: Arc<Mutex<Book>>,
    refuse: Arc<AtomicBool>,
}

impl Room {
    fn open_ids(&self) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self.book.lock().unwrap().open.keys().copied().collect();
        v.sort();
        v
    }

    fn wait_open(&self, n: usize) -> Vec<ConnId> {
        let end = Instant::now() + DEADLINE;
        loop {
            let ids = self.open_ids();
            if ids.len() == n {
                return ids;
            }
            assert!(
                Instant::now() < end,
                "{} connections open, not {n}",
                ids.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_closed(&self, id: ConnId) -> Closed {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(&(_, why)) = self.book.lock().unwrap().closed.iter().find(|c| c.0 == id) {
                return why;
            }
            assert!(Instant::now() < end, "{id} was never closed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Protocol for Room {
    type State = ();

    fn open(&self, _: &mut (), conn: &ConnInfo, out: &mut BytesMut, cx: &Cx) -> bool {
        assert_eq!(conn.id, cx.conn());
        if self.refuse.load(Ordering::SeqCst) {
            return false;
        }
        let from = conn.client_addr();
        self.book.lock().unwrap().open.insert(conn.id, from);
        out.extend_from_slice(
            format!("hello {}\n", from.map_or("?".into(), |a| a.to_string())).as_bytes(),
        );
        true
    }

    fn close(&self, _: &mut (), conn: ConnId, why: Closed) {
        let mut b = self.book.lock().unwrap();
        b.open.remove(&conn);
        b.closed.push((conn, why));
    }

    fn timer(&self, _: &mut (), out: &mut BytesMut, _: &Cx) {
        out.extend_from_slice(b"tick\n");
    }

    fn decode(&self, _: &mut (), input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut d = Decoded::default();
        while let Some(nl) = input[d.consumed..].iter().position(|&b| b == b'\n') {
            if d.at_limit(cx, out) {
                break;
            }
            let line = &input[d.consumed..d.consumed + nl];
            if line == b"id" {
                out.extend_from_slice(format!("{}\n", cx.conn()).as_bytes());
            } else if let Some(ms) = line.strip_prefix(b"tick ") {
                let ms: u64 = std::str::from_utf8(ms).unwrap().parse().unwrap();
                cx.set_timer(Duration::from_millis(ms));
                out.extend_from_slice(b"set\n");
            } else {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\n");
            }
            d.consumed += nl + 1;
            d.requests += 1;
        }
        d
    }
}

fn config(extra: &str) -> reactor::Config {
    use clap::Parser;
    let mut args = vec!["reactor", "--addr", "127.0.0.1:0", "--threads", "1"];
    args.extend(extra.split_whitespace());
    reactor::Config::try_parse_from(args).unwrap()
}

fn line(r: &mut impl BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).expect("a line");
    s
}

fn client(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let c = connect(addr);
    let r = BufReader::new(c.try_clone().unwrap());
    (c, r)
}

#[test]
fn open_and_close_hooks_see_the_peer_and_the_reason() {
    let room = Room::default();
    let srv = reactor::Server::start_with(&config(""), room.clone()).unwrap();
    let (mut c, mut r) = client(srv.local_addr());
    assert_eq!(line(&mut r), format!("hello {}\n", c.local_addr().unwrap()));
    let id = room.wait_open(1)[0];
    send(&mut c, b"id\n");
    assert_eq!(line(&mut r), format!("{id}\n"));
    drop((c, r));
    assert_eq!(room.wait_closed(id), Closed::Normal);
    assert!(room.open_ids().is_empty());

    // An idle one is closed by the idle timeout, and told so.
    let srv2 = reactor::Server::start_with(&config("--idle-timeout 200ms"), room.clone()).unwrap();
    let (_c, mut r) = client(srv2.local_addr());
    line(&mut r);
    let id = room.wait_open(1)[0];
    room.book.lock().unwrap().closed.clear();
    assert_eq!(room.wait_closed(id), Closed::IdleTimeout);
    drop(srv);
}

#[test]
fn a_push_from_another_thread_reaches_its_connection_after_the_answers() {
    let room = Room::default();
    let srv = reactor::Server::start_with(&config("--threads 2"), room.clone()).unwrap();
    let mut clients: Vec<_> = (0..4).map(|_| client(srv.local_addr())).collect();
    for (_, r) in clients.iter_mut() {
        line(r);
    }
    let ids = room.wait_open(4);
    let pusher = srv.pusher();
    let t = std::thread::spawn(move || {
        for id in ids {
            pusher.push(id, format!("to {id}\n")).unwrap();
        }
    });
    t.join().unwrap();
    for (c, r) in clients.iter_mut() {
        send(c, b"id\n");
        let id = line(r);
        // The push came first or after the answer, whole either way.
        let other = line(r);
        let (id, pushed) = if id.starts_with("to ") {
            (other, id)
        } else {
            (id, other)
        };
        assert_eq!(pushed, format!("to {}", id));
    }
    let s = wait_stats(&srv, |c| c.pushes == 4);
    assert_eq!(s.pushes_refused, 0);
}

#[test]
fn a_push_to_a_closed_connection_is_refused_even_when_its_slot_is_reused() {
    let room = Room::default();
    let srv = reactor::Server::start_with(&config(""), room.clone()).unwrap();
    let (c, mut r) = client(srv.local_addr());
    line(&mut r);
    let old = room.wait_open(1)[0];
    drop((c, r));
    room.wait_closed(old);
    let (mut c2, mut r2) = client(srv.local_addr());
    line(&mut r2);
    let new = room.wait_open(1)[0];
    assert_ne!(old, new);
    srv.pusher().push(old, &b"not for you\n"[..]).unwrap();
    wait_stats(&srv, |c| c.pushes_refused == 1);
    srv.pusher().push(new, &b"for you\n"[..]).unwrap();
    assert_eq!(line(&mut r2), "for you\n");
    send(&mut c2, b"ok\n");
    assert_eq!(line(&mut r2), "ok\n");
}

/// A peer that never reads: pushes pile up to the push limit and are then refused and
/// counted, never buffered without bound; a reading peer on the same shard still gets
/// every push.
#[test]
fn pushes_past_the_push_limit_are_refused_not_buffered() {
    let room = Room::default();
    let srv = reactor::Server::start_with(&config("--push-limit 16384"), room.clone()).unwrap();
    let (stuck, mut rs) = client(srv.local_addr());
    line(&mut rs);
    let (_ok, mut ro) = client(srv.local_addr());
    line(&mut ro);
    let ids = room.wait_open(2);
    let stuck_id = *room
        .book
        .lock()
        .unwrap()
        .open
        .iter()
        .find(|(_, a)| **a == Some(stuck.local_addr().unwrap()))
        .unwrap()
        .0;
    let ok_id = *ids.iter().find(|i| **i != stuck_id).unwrap();
    let chunk = vec![b'x'; 8191];
    let pusher = srv.pusher();
    let end = Instant::now() + DEADLINE;
    let (mut sent, mut taken, mut busy) = (0u64, 0u64, 0);
    // Far more than the kernel's socket buffers and the push limit together.
    while sent < 32 << 20 {
        assert!(
            Instant::now() < end,
            "the inbox never took 32 MiB: {}",
            srv.stats()
        );
        let mut m = chunk.clone();
        m.push(b'\n');
        match pusher.push(stuck_id, m) {
            Ok(()) => {
                sent += 8192;
                taken += 1;
            }
            Err(reactor::connection::PushError::Busy) => {
                busy += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let s = wait_stats(&srv, |c| c.pushes + c.pushes_refused == taken);
    eprintln!("pushed {sent} bytes, inbox full {busy} times: {s}");
    assert!(s.pushes_refused > 0, "{s}");
    // What the server holds for the stuck peer is bounded by the mark (plus one push),
    // not by what was pushed: a few pooled buffers at most.
    assert!(s.pushes * 8192 < 8 << 20, "{s}");
    assert!(s.buffers_lent <= 2, "{s}");
    // The other connection is served as ever.
    pusher.push(ok_id, &b"still here\n"[..]).unwrap();
    assert_eq!(line(&mut ro), "still here\n");
    drop(stuck);
}

#[test]
fn the_open_hook_may_refuse_a_connection() {
    let room = Room::default();
    room.refuse.store(true, Ordering::SeqCst);
    let srv = reactor::Server::start_with(&config(""), room.clone()).unwrap();
    let mut c = connect(srv.local_addr());
    let (got, _) = read_to_close(&mut c);
    assert!(got.is_empty());
    let s = wait_stats(&srv, |c| c.refused_by_protocol == 1);
    assert_eq!(s.open, 0);
    assert!(
        room.book.lock().unwrap().closed.is_empty(),
        "close is not called for a refused connection"
    );
}

#[test]
fn a_protocol_timer_fires_on_its_connection() {
    let room = Room::default();
    let srv = reactor::Server::start_with(&config(""), room.clone()).unwrap();
    let (mut c, mut r) = client(srv.local_addr());
    line(&mut r);
    send(&mut c, b"tick 50\n");
    assert_eq!(line(&mut r), "set\n");
    assert_eq!(line(&mut r), "tick\n");
    send(&mut c, b"after\n");
    assert_eq!(line(&mut r), "after\n");
}

#[test]
fn behind_a_proxy_header_open_sees_the_client() {
    let room = Room::default();
    let srv = reactor::Server::start_with(&config("--proxy-protocol v1"), room.clone()).unwrap();
    let (mut c, mut r) = client(srv.local_addr());
    send(&mut c, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n");
    assert_eq!(line(&mut r), "hello 192.0.2.7:5555\n");
    send(&mut c, b"id\n");
    let id = room.wait_open(1)[0];
    assert_eq!(line(&mut r), format!("{id}\n"));
}

#[test]
fn under_tls_open_comes_after_the_handshake() {
    let certs = TestCerts::make("hooks");
    let room = Room::default();
    let srv = reactor::Server::start_with(&config(&certs.args()), room.clone()).unwrap();
    let cfg = reactor::tls::client_config(&reactor::tls::Trust::Any, &[]).unwrap();
    let tcp = connect(srv.local_addr());
    let local = tcp.local_addr().unwrap();
    let conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, format!("hello {local}\n").as_bytes());
    tls.write_all(b"ping\n").unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let n = tls.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"ping\n");
}

/// The same hooks on the worker pool's path: a `Codec` is told of the open (and
/// greets) and the close, its lines are answered by a worker, and a push from another
/// thread reaches the connection.
#[derive(Clone, Default)]
struct PooledRoom {
    book: Arc<Mutex<Book>>,
}

impl reactor::service::Codec for PooledRoom {
    type State = ();
    type Request = String;
    type Response = String;

    fn open(&self, _: &mut (), conn: &ConnInfo, out: &mut BytesMut, _: &Cx) -> bool {
        self.book.lock().unwrap().open.insert(conn.id, conn.peer);
        out.extend_from_slice(b"pooled hello\n");
        true
    }

    fn close(&self, _: &mut (), conn: ConnId, why: Closed) {
        let mut b = self.book.lock().unwrap();
        b.open.remove(&conn);
        b.closed.push((conn, why));
    }

    fn decode(
        &self,
        _: &mut (),
        input: &[u8],
        out: &mut reactor::service::Calls<'_, String>,
        cx: &Cx,
    ) -> Decoded {
        decode_lines(input, out, cx)
    }

    fn encode(&self, answer: String, out: &mut BytesMut, _: &Cx) {
        out.extend_from_slice(answer.as_bytes());
        out.extend_from_slice(b"\n");
    }

    fn encode_failure(&self, _: reactor::service::Failure, out: &mut BytesMut, _: &Cx) {
        out.extend_from_slice(b"failed\n");
    }
}

#[test]
fn hooks_and_pushes_on_the_worker_pools_path() {
    let codec = PooledRoom::default();
    let room = Room {
        book: codec.book.clone(),
        ..Room::default()
    };
    let pooled = reactor::service::Pooled::new(codec, |s: String| s.to_uppercase());
    let srv = reactor::Server::start_with(&config("--workers 2"), pooled).unwrap();
    let (mut c, mut r) = client(srv.local_addr());
    assert_eq!(line(&mut r), "pooled hello\n");
    let id = room.wait_open(1)[0];
    assert_eq!(
        room.book.lock().unwrap().open[&id],
        Some(c.local_addr().unwrap())
    );
    send(&mut c, b"shout\n");
    assert_eq!(line(&mut r), "SHOUT\n");
    let pusher = srv.pusher();
    std::thread::spawn(move || pusher.push(id, &b"pushed\n"[..]).unwrap())
        .join()
        .unwrap();
    assert_eq!(line(&mut r), "pushed\n");
    drop((c, r));
    assert_eq!(room.wait_closed(id), Closed::Normal);
}
