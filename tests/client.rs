//! reactor::client over real sockets: against reactor itself (in process, port 0) and
//! against small std servers that misbehave on purpose (answer out of order, never,
//! or close mid-flight). No assertion depends on timing beyond lower bounds that a
//! deadline guarantees; waits for a state poll the statistics up to a generous deadline.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::*;
use reactor::client::{self, Echo, Error, Http, Json, Options, Pool, Stats};

fn opts() -> Options {
    Options {
        response_timeout: Some(DEADLINE),
        wait_timeout: DEADLINE,
        dial_timeout: DEADLINE,
        ..Options::default()
    }
}

/// Polls the pool's statistics until `pred` holds (up to [`DEADLINE`]).
fn wait_for<C: client::Codec>(pool: &Pool<C>, pred: impl Fn(&Stats) -> bool) -> Stats {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = pool.stats();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < end, "statistics never got there: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sixteen_threads_make_ten_thousand_calls_over_four_connections() {
    let srv = in_process("--protocol json");
    let pool = Pool::new(
        srv.local_addr(),
        Json::default(),
        Options {
            max_size: 4,
            ..opts()
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..625 {
                    let uid = format!("{t}-{i}");
                    let r = pool
                        .call(client::json_request(&uid, format!("v{uid}")))
                        .unwrap_or_else(|e| panic!("call {uid}: {e}"));
                    assert_eq!(r.uid.as_deref(), Some(uid.as_str()));
                    assert_eq!(r.val, Some(format!("server: hello, v{uid}")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!(
        (s.ok, s.failed, s.timeouts, s.in_flight),
        (10_000, 0, 0, 0),
        "{s:?}"
    );
    assert!(s.size <= 4 && s.created <= 4 && s.size >= 1, "{s:?}");
    assert_eq!(s.closed_total(), 0, "{s:?}");
    let c = wait_stats(&srv, |c| c.requests >= 10_000);
    assert_eq!(c.requests, 10_000);
}

/// A JSON server that reads `batch` requests, then answers them in reverse order.
fn reversing_server(batch: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut lines = BufReader::new(s).lines();
                loop {
                    let mut got = Vec::new();
                    for _ in 0..batch {
                        match lines.next() {
                            Some(Ok(l)) => got.push(l),
                            _ => return,
                        }
                    }
                    for l in got.iter().rev() {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        let reply = serde_json::json!({
                            "Uid": v["Uid"],
                            "Val": format!("server: hello, {}", v["Val"].as_str().unwrap()),
                            "Ts": "t",
                        });
                        if writeln!(w, "{reply}").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn replies_out_of_order_are_matched_by_uid_and_a_uid_in_flight_is_refused() {
    let addr = reversing_server(8);
    let pool = Pool::new(addr, Json::default(), opts()).unwrap();
    let conn = pool.acquire().unwrap();
    let mut replies: Vec<_> = (0..7)
        .map(|i| {
            (
                i.to_string(),
                conn.send(client::json_request(i.to_string(), format!("v{i}"))),
            )
        })
        .collect();
    replies.push((
        "dup".into(),
        conn.send(client::json_request("dup", "first")),
    ));
    // Not sent: the server still waits for its 8th line, so "dup" is in flight.
    let again = conn.call(client::json_request("dup", "second"));
    assert_eq!(again, Err(Error::KeyInFlight("dup".into())));
    for (uid, r) in replies {
        let r = r.wait().unwrap();
        assert_eq!(r.uid.as_deref(), Some(uid.as_str()));
        let want = if uid == "dup" {
            "first".into()
        } else {
            format!("v{uid}")
        };
        assert_eq!(r.val, Some(format!("server: hello, {want}")));
    }
    let s = pool.stats();
    assert_eq!((s.ok, s.failed, s.size, s.in_use), (8, 1, 1, 1), "{s:?}");
    drop(conn);
    let s = pool.stats();
    assert_eq!((s.idle, s.in_use), (1, 0), "{s:?}");
}

/// A server that accepts, reads and never answers; counts its connections.
fn silent_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            });
        }
    });
    (addr, accepted)
}

#[test]
fn a_server_that_never_answers_times_each_call_out_and_the_connection_is_replaced() {
    let (addr, accepted) = silent_server();
    let timeout = Duration::from_millis(300);
    let pool = Pool::new(
        addr,
        Json::default(),
        Options {
            max_size: 1,
            response_timeout: Some(timeout),
            ..opts()
        },
    )
    .unwrap();
    for round in 1..=2u64 {
        let t0 = Instant::now();
        let r = pool.call(client::json_request("1", "x"));
        assert_eq!(r, Err(Error::Timeout(timeout)), "round {round}");
        assert!(t0.elapsed() >= timeout, "failed before its deadline");
        let s = pool.stats();
        assert_eq!(
            (s.timeouts, s.failed, s.created, s.closed.timeout, s.size),
            (round, round, round, round, 0),
            "{s:?}"
        );
    }
    // Each timed-out connection was closed and a new one dialled for the next call.
    let end = Instant::now() + DEADLINE;
    while accepted.load(Ordering::SeqCst) < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_late_reply_after_the_deadline_is_dropped_not_given_to_the_next_caller() {
    // Echo answers by order. The server holds its first answer until the client has
    // timed it out and sent a second request, then answers both: the late first reply
    // must be dropped, and the second request get its own bytes, not those.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (go, went) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut buf = [0u8; 1024];
        let mut first = true;
        while let Ok(got) = std::io::Read::read(&mut s, &mut buf) {
            if got == 0 {
                return;
            }
            if std::mem::take(&mut first) && went.recv().is_err() {
                return;
            }
            if s.write_all(&buf[..got]).is_err() {
                return;
            }
        }
    });
    let timeout = Duration::from_secs(1);
    let pool = Pool::new(
        addr,
        Echo,
        Options {
            max_size: 1,
            response_timeout: Some(timeout),
            ..opts()
        },
    )
    .unwrap();
    let conn = pool.acquire().unwrap();
    assert_eq!(conn.call(b"late".to_vec()), Err(Error::Timeout(timeout)));
    // Still checked out, the retired connection takes its holder's requests.
    let next = conn.send(b"next".to_vec());
    go.send(()).unwrap();
    assert_eq!(next.wait(), Ok(b"next".to_vec()));
    let s = pool.stats();
    assert_eq!((s.late_replies, s.ok, s.timeouts), (1, 1, 1), "{s:?}");
    // Returned, it closes: it timed out once.
    drop(conn);
    let s = wait_for(&pool, |s| s.size == 0);
    assert_eq!(s.closed.timeout, 1, "{s:?}");
}

/// A server that reads `n` JSON lines on its first connection, then closes it and
/// stops listening.
fn closing_server(n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        drop(l);
        let mut lines = BufReader::new(s).lines();
        for _ in 0..n {
            if !matches!(lines.next(), Some(Ok(_))) {
                break;
            }
        }
    });
    addr
}

#[test]
fn a_server_closing_mid_flight_fails_every_pending_call_and_the_pool_recovers() {
    let addr = closing_server(5);
    let pool = Pool::new(
        addr,
        Json::default(),
        Options {
            max_size: 1,
            ..opts()
        },
    )
    .unwrap();
    let replies: Vec<_> = (0..5)
        .map(|i| pool.send(client::json_request(i.to_string(), "x")))
        .collect();
    for r in replies {
        // Closed, not Timeout: they failed when the connection went, not at their
        // (20 s) deadline.
        let e = r.wait().unwrap_err();
        assert!(matches!(e, Error::Closed(_)), "{e}");
    }
    let s = pool.stats();
    assert_eq!(
        (s.failed, s.size, s.closed.eof + s.closed.error),
        (5, 0, 1),
        "{s:?}"
    );
    // Nobody listens now: a call fails at once with a connect error.
    let e = pool.call(client::json_request("a", "x")).unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    // The server is back on the same address: the pool recovers.
    let srv = in_process(&format!("--protocol json --addr {addr}"));
    assert_eq!(srv.local_addr(), addr);
    let r = pool.call(client::json_request("b", "back")).unwrap();
    assert_eq!(r.val.as_deref(), Some("server: hello, back"));
    let s = pool.stats();
    assert_eq!((s.size, s.ok, s.closed.dial), (1, 1, 1), "{s:?}");
}

#[test]
fn acquire_waits_for_a_returned_connection_and_fails_after_wait_timeout() {
    let srv = in_process("--protocol json");
    let pool = Pool::new(
        srv.local_addr(),
        Json::default(),
        Options {
            max_size: 2,
            ..opts()
        },
    )
    .unwrap();
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert_ne!(a.id(), b.id());
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle, s.waiting), (2, 2, 0, 0), "{s:?}");
    // A third waits until one comes back.
    let p = pool.clone();
    let waiter = std::thread::spawn(move || p.acquire().map(|c| c.id()));
    wait_for(&pool, |s| s.waiting == 1);
    let a_id = a.id();
    drop(a);
    assert_eq!(waiter.join().unwrap(), Ok(a_id));
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle, s.waiting), (2, 1, 1, 0), "{s:?}");
    drop(b);

    // A pool of one with a short wait: acquire and call both give up.
    let wait = Duration::from_millis(300);
    let small = Pool::new(
        srv.local_addr(),
        Json::default(),
        Options {
            max_size: 1,
            wait_timeout: wait,
            ..opts()
        },
    )
    .unwrap();
    let held = small.acquire().unwrap();
    let t0 = Instant::now();
    assert_eq!(small.acquire().err(), Some(Error::PoolTimeout(wait)));
    assert!(t0.elapsed() >= wait);
    assert_eq!(
        small.call(client::json_request("1", "x")),
        Err(Error::PoolTimeout(wait))
    );
    let s = small.stats();
    assert_eq!(
        (s.size, s.in_use, s.waiting, s.failed),
        (1, 1, 0, 1),
        "{s:?}"
    );
    assert_eq!(
        held.call(client::json_request("2", "y"))
            .unwrap()
            .uid
            .as_deref(),
        Some("2")
    );
    drop(held);
    assert!(small.call(client::json_request("3", "z")).is_ok());
}

#[test]
fn idle_connections_close_after_idle_timeout_down_to_min_idle() {
    let srv = in_process("--protocol json");
    let pool = Pool::new(
        srv.local_addr(),
        Json::default(),
        Options {
            max_size: 3,
            min_idle: 1,
            idle_timeout: Some(Duration::from_millis(200)),
            ..opts()
        },
    )
    .unwrap();
    // min_idle dials one up front.
    let s = wait_for(&pool, |s| s.idle == 1);
    assert_eq!((s.size, s.created), (1, 1), "{s:?}");
    let conns: Vec<_> = (0..3).map(|_| pool.acquire().unwrap()).collect();
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle), (3, 3, 0), "{s:?}");
    drop(conns);
    let s = wait_for(&pool, |s| s.closed.idle == 2);
    assert_eq!((s.size, s.idle, s.in_use), (1, 1, 0), "{s:?}");
    assert_eq!(s.closed_total(), 2, "{s:?}");
    // The one kept is usable.
    assert!(pool.call(client::json_request("1", "x")).is_ok());
}

#[test]
fn max_lifetime_replaces_old_connections() {
    let srv = in_process("--protocol json");
    let pool = Pool::new(
        srv.local_addr(),
        Json::default(),
        Options {
            max_size: 1,
            max_lifetime: Some(Duration::from_millis(300)),
            ..opts()
        },
    )
    .unwrap();
    let first = pool.acquire().unwrap();
    let id = first.id();
    // Checked out, it is not closed under its holder; it goes when returned.
    std::thread::sleep(Duration::from_millis(400));
    assert!(first.call(client::json_request("1", "x")).is_ok());
    assert_eq!(pool.stats().closed.lifetime, 0);
    drop(first);
    let s = wait_for(&pool, |s| s.closed.lifetime == 1);
    assert_eq!((s.size, s.created), (0, 1), "{s:?}");
    let second = pool.acquire().unwrap();
    assert_ne!(second.id(), id);
    assert_eq!(pool.stats().created, 2);
}

#[test]
fn close_fails_every_waiting_and_in_flight_request_at_once() {
    let (addr, _) = silent_server();
    let pool = Pool::new(
        addr,
        Json::default(),
        Options {
            max_size: 1,
            ..opts()
        },
    )
    .unwrap();
    let held = pool.acquire().unwrap();
    let in_flight: Vec<_> = (0..5)
        .map(|i| held.send(client::json_request(i.to_string(), "x")))
        .collect();
    // The only connection is checked out: this one waits for a connection.
    let waiting = pool.send(client::json_request("w", "x"));
    wait_for(&pool, |s| s.waiting == 1 && s.in_flight == 5);
    pool.close();
    for r in in_flight {
        assert_eq!(r.wait(), Err(Error::PoolClosed));
    }
    assert_eq!(waiting.wait(), Err(Error::PoolClosed));
    assert_eq!(
        pool.call(client::json_request("after", "x")),
        Err(Error::PoolClosed)
    );
    assert_eq!(
        held.call(client::json_request("held", "x")),
        Err(Error::PoolClosed)
    );
    let s = pool.stats();
    assert_eq!((s.size, s.closed.pool, s.failed), (0, 1, 6), "{s:?}");
}

#[test]
fn echo_and_http_replies_are_matched_by_order_with_many_in_flight() {
    let srv = in_process("--protocol echo");
    let pool = Pool::new(
        srv.local_addr(),
        Echo,
        Options {
            max_size: 1,
            ..opts()
        },
    )
    .unwrap();
    let replies: Vec<_> = (0..200)
        .map(|i| {
            let msg = format!("message {i} ").repeat(i % 7 + 1).into_bytes();
            (msg.clone(), pool.send(msg))
        })
        .collect();
    for (msg, r) in replies {
        assert_eq!(r.wait().unwrap(), msg);
    }
    assert_eq!(pool.stats().created, 1);
    assert!(matches!(pool.call(Vec::new()), Err(Error::Invalid(_))));

    let srv = in_process("--protocol http");
    let pool = Pool::new(
        srv.local_addr(),
        Http::hello(),
        Options {
            max_size: 1,
            ..opts()
        },
    )
    .unwrap();
    let replies: Vec<_> = (0..100).map(|i| pool.send(format!("/{i}"))).collect();
    for r in replies {
        let r = r.wait().unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"Hello, World!"[..]));
    }
    let s = pool.stats();
    assert_eq!((s.ok, s.created), (100, 1), "{s:?}");
}

/// Wakes a parked thread and counts the wake-ups.
struct ThreadWaker {
    thread: std::thread::Thread,
    wakes: AtomicUsize,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// The smallest executor: poll, park until woken, poll again. Returns the output,
/// how many polls were pending, and how many wake-ups came.
fn block_on<F: std::future::Future>(f: F) -> (F::Output, usize, usize) {
    let w = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        wakes: AtomicUsize::new(0),
    });
    let waker = Waker::from(w.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let end = Instant::now() + DEADLINE;
    let mut pending = 0;
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return (out, pending, w.wakes.load(Ordering::SeqCst));
        }
        pending += 1;
        assert!(Instant::now() < end, "the future never completed");
        std::thread::park_timeout(end - Instant::now());
    }
}

#[test]
fn replies_can_be_awaited_under_a_minimal_executor() {
    let srv = in_process("--protocol json");
    let pool = Pool::new(srv.local_addr(), Json::default(), opts()).unwrap();
    let (out, pending, wakes) = block_on(async {
        let a = pool.send(client::json_request("a", "1"));
        let b = pool.send(client::json_request("b", "2"));
        let (b, a) = (b.await?, a.await?);
        let c = pool.send(client::json_request("c", "3")).await?;
        Ok::<_, Error>([a, b, c].map(|r| r.val.unwrap_or_default()))
    });
    assert_eq!(
        out.unwrap(),
        ["server: hello, 1", "server: hello, 2", "server: hello, 3"]
    );
    // Every pending poll was followed by a wake-up from the pool: the future stored
    // the task's waker (park_timeout alone would have waited out the deadline).
    assert!(
        wakes >= pending,
        "{pending} pending polls, {wakes} wake-ups"
    );
}

#[test]
fn a_refused_connection_fails_the_call_clearly() {
    // A port nobody listens on: bind, note it, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pool = Pool::new(addr, Json::default(), opts()).unwrap();
    let e = pool.call(client::json_request("1", "x")).unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    let s = pool.stats();
    assert_eq!((s.created, s.closed.dial, s.size), (1, 1, 0), "{s:?}");
}

// -------------------------------------------------------------------------------------
// The reactor-client binary.

fn reactor_client(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reactor-client"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run reactor-client");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("stdout: {o}\nstderr: {e}");
    (out.status.code(), o, e)
}

#[test]
fn reactor_client_prints_each_reply_on_its_own_line() {
    let srv = in_process("--protocol json");
    let addr = srv.local_addr().to_string();
    let (code, out, _) = reactor_client(&["--addr", &addr, "--protocol", "json", "a", "b c"], "");
    assert_eq!(code, Some(0));
    assert_eq!(out, "server: hello, a\nserver: hello, b c\n");
    let (code, out, _) = reactor_client(&["--addr", &addr, "--protocol", "json"], "x\ny\n");
    assert_eq!(code, Some(0));
    assert_eq!(out, "server: hello, x\nserver: hello, y\n");

    let srv = in_process("--protocol echo");
    let addr = srv.local_addr().to_string();
    let (code, out, _) = reactor_client(&["--addr", &addr, "--protocol", "echo"], "one\ntwo\n");
    assert_eq!(code, Some(0));
    assert_eq!(out, "one\ntwo\n");

    let srv = in_process("--protocol http");
    let addr = srv.local_addr().to_string();
    let (code, out, _) = reactor_client(&["--addr", &addr, "--protocol", "http", "/", "/x"], "");
    assert_eq!(code, Some(0));
    assert_eq!(out, "Hello, World!\nHello, World!\n");
}

#[test]
fn reactor_client_fails_clearly_on_refusal_timeout_and_bad_reply() {
    let nobody = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (code, _, err) = reactor_client(&["--addr", &nobody, "--protocol", "json", "a"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("refused"), "{err}");

    let (silent, _) = silent_server();
    let silent = silent.to_string();
    let (code, _, err) = reactor_client(
        &[
            "--addr",
            &silent,
            "--protocol",
            "json",
            "--timeout",
            "300ms",
            "a",
        ],
        "",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("no reply within"), "{err}");

    // An HTTP server that answers 404.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let mut w: TcpStream = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" {
                    let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
                line.clear();
            }
        }
    });
    let (code, _, err) = reactor_client(&["--addr", &addr, "--protocol", "http", "/"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("bad reply: HTTP status 404"), "{err}");
}
