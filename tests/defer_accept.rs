//! `--defer-accept`: the listener hands a connection over only once its first bytes
//! have come (TCP_DEFER_ACCEPT), and the server drives it at once, before it is
//! registered with epoll, registering it afterwards only if it is still open. A new
//! connection per request is then answered and closed with no registration at all; one
//! that stays open must still hear of its later requests, and of room for output its
//! first drive could not write.
#![cfg(target_os = "linux")]
mod common;

use std::io::BufReader;
use std::time::{Duration, Instant};

use common::*;

/// A client that connects and says nothing is held by the kernel, not accepted; once
/// it speaks it is answered like any other.
#[test]
fn a_silent_client_is_accepted_when_it_speaks() {
    let srv = in_process("--protocol http --defer-accept");
    let connected = Instant::now();
    let mut silent = connect(srv.local_addr());
    let mut other = connect(srv.local_addr());
    send(&mut other, b"GET / HTTP/1.0\r\n\r\n");
    let (got, closed) = read_to_close(&mut other);
    assert!(closed && got.starts_with(b"HTTP/1.0 200"), "{got:?}");
    let c = wait_stats(&srv, |c| c.closed == 1);
    // The kernel lets a silent connection through after a second or more (its SYN-ACK
    // retransmitted); before that only the client that spoke was accepted.
    if connected.elapsed() < Duration::from_millis(500) {
        assert_eq!(c.accepted, 1, "the silent client was accepted: {c}");
    }
    send(&mut silent, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = read_response(&mut BufReader::new(&silent));
    assert_eq!((r.status, &r.body[..]), (200, &b"Hello, World!"[..]));
    let c = wait_stats(&srv, |c| c.accepted == 2 && c.requests == 2);
    assert_eq!((c.open, c.closed, c.bad_requests), (1, 1, 0), "{c}");
    drop(silent);
    let c = wait_stats(&srv, |c| c.closed == 2);
    assert_eq!((c.open, c.buffers_lent), (0, 0), "{c}");
}

/// Many new connections per request at once, HTTP/1.0 and HTTP/1.1 with `Connection:
/// close`, keep-alive connections whose first request came with the accept, and
/// keep-alive requests followed at once by the client's half-close: every answer
/// whole, the keep-alive ones still heard after their first drive (registered then),
/// the half-closed ones closed after their answer (the end of stream is seen after the
/// registration), and the counters add up.
#[test]
fn churn_and_keep_alive_are_served_with_deferred_accepts() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 300;
    let srv = in_process("--protocol http --defer-accept");
    let addr = srv.local_addr();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let mut c = connect(addr);
                    match i % 4 {
                        0 => {
                            send(&mut c, b"GET / HTTP/1.0\r\n\r\n");
                            let (got, closed) = read_to_close(&mut c);
                            assert!(closed, "thread {t} #{i}: no close");
                            let r = read_response(&mut &got[..]);
                            assert_eq!(r.body, b"Hello, World!", "thread {t} #{i}");
                        }
                        1 => {
                            send(
                                &mut c,
                                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                            );
                            let (got, closed) = read_to_close(&mut c);
                            assert!(closed, "thread {t} #{i}: no close");
                            let r = read_response(&mut &got[..]);
                            assert_eq!(r.body, b"Hello, World!", "thread {t} #{i}");
                        }
                        2 => {
                            // The second request comes after the first drive, so only a
                            // registration after it can make it heard.
                            let mut r = BufReader::new(c.try_clone().unwrap());
                            for _ in 0..2 {
                                send(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
                                let resp = read_response(&mut r);
                                assert_eq!(resp.body, b"Hello, World!", "thread {t} #{i}");
                            }
                        }
                        _ => {
                            send(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
                            c.shutdown(std::net::Shutdown::Write).unwrap();
                            let (got, closed) = read_to_close(&mut c);
                            assert!(closed, "thread {t} #{i}: no close after the half-close");
                            let r = read_response(&mut &got[..]);
                            assert_eq!(r.body, b"Hello, World!", "thread {t} #{i}");
                        }
                    }
                }
            });
        }
    });
    let n = (THREADS * PER_THREAD) as u64;
    let keep_alive = (THREADS * (PER_THREAD / 4)) as u64;
    let c = wait_stats(&srv, |c| c.closed == n);
    assert_eq!(
        (
            c.accepted,
            c.requests,
            c.open,
            c.bad_requests,
            c.io_errors,
            c.buffers_lent
        ),
        (n, n + keep_alive, 0, 0, 0, 0),
        "{c}"
    );
}

/// A first drive that cannot write its whole answer (larger than the kernel takes at
/// once) leaves output waiting: the connection must be registered for room to write,
/// or the answer stops for good, since the client sends nothing more that could wake
/// the server.
#[test]
fn output_left_by_the_first_drive_is_written_when_room_comes() {
    use reactor::http::{App, Response};
    const BODY: usize = 16 << 20;
    let cfg = loopback_config().defer_accept(true);
    let app = App::new(|_| Response::new(200).body(vec![b'x'; BODY]));
    let srv = reactor::Server::start_with(&cfg, app).unwrap();
    let mut c = connect(srv.local_addr());
    let mut r = BufReader::new(c.try_clone().unwrap());
    for _ in 0..2 {
        send(&mut c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let resp = read_response(&mut r);
        assert_eq!(resp.body.len(), BODY);
        assert!(resp.body.iter().all(|&b| b == b'x'));
    }
    drop((c, r));
    let c = wait_stats(&srv, |c| c.closed == 1);
    assert_eq!((c.accepted, c.requests, c.buffers_lent), (1, 2, 0), "{c}");
}

/// A connection waiting in the accept queue when a drain begins is taken by the drain
/// and served as the drain says: its answer tells the client the connection closes
/// (it is not driven before the drain begins, where its keep-alive answer would be
/// followed at once by a close the client was not told of).
#[test]
fn a_connection_taken_by_the_drain_is_told_the_connection_closes() {
    use reactor::http::{App, Response};
    use std::sync::{Arc, Condvar, Mutex};
    // (handler entered, handler released)
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let g = gate.clone();
    let app = App::new(move |req: reactor::http::Request| {
        if req.path() == "/block" {
            let (lock, cv) = &*g;
            let mut st = lock.lock().unwrap();
            st.0 = true;
            cv.notify_all();
            while !st.1 {
                st = cv.wait(st).unwrap();
            }
        }
        Response::new(200).body("ok")
    });
    let cfg = loopback_config().defer_accept(true);
    let srv = reactor::Server::start_with(&cfg, app).unwrap();
    // The loop blocks in A's handler.
    let mut a = connect(srv.local_addr());
    send(&mut a, b"GET /block HTTP/1.1\r\nHost: a\r\n\r\n");
    {
        let (lock, cv) = &*gate;
        let mut st = lock.lock().unwrap();
        while !st.0 {
            st = cv.wait_timeout(st, DEADLINE).unwrap().0;
        }
    }
    // B's keep-alive request is in the accept queue (its bytes came, so the kernel
    // queued it) when the drain is asked for.
    let mut b = connect(srv.local_addr());
    send(&mut b, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    srv.shutdown();
    {
        let (lock, cv) = &*gate;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    let ra = read_response(&mut BufReader::new(&a));
    assert_eq!(ra.status, 200);
    let rb = read_response(&mut BufReader::new(&b));
    assert_eq!((rb.status, &rb.body[..]), (200, &b"ok"[..]));
    assert_eq!(
        rb.headers.get("connection").map(String::as_str),
        Some("close"),
        "the drain's answer says the connection closes: {:?}",
        rb.headers
    );
    let c = srv.join().unwrap();
    assert_eq!((c.accepted, c.closed, c.requests), (2, 2, 2), "{c}");
}
