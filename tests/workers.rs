//! The worker pool, over real sockets: slow handlers off the loop, growth and retirement,
//! answers in request order, backpressure, panics, the handler timeout, results for
//! closed connections, and the drain. Handlers that must block in a test wait on a gate
//! the test opens, so no assertion depends on how fast the machine is.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use reactor::http::{App, Request, hello};
use reactor::protocol::json::JsonRequest;
use reactor::protocol::{Cx, Decoded, JsonCodec};
use reactor::service::{Calls, Codec, Failure, Pooled};
use reactor::{Config, Server as InProcess};

/// A gate handlers wait at until the test opens it (or the deadline passes).
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let end = Instant::now() + DEADLINE;
        let mut open = self.open.lock().unwrap();
        while !*open && Instant::now() < end {
            open = self.cv.wait_timeout(open, DEADLINE).unwrap().0;
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

/// One line in, one line out.
#[derive(Clone)]
struct Lines;

impl Codec for Lines {
    type State = ();
    type Request = String;
    type Response = String;
    fn decode(&self, _: &mut (), input: &[u8], out: &mut Calls<String>, cx: &Cx) -> Decoded {
        decode_lines(input, out, cx)
    }
    fn encode(&self, answer: String, out: &mut BytesMut, _: &Cx) {
        out.extend_from_slice(answer.as_bytes());
        out.extend_from_slice(b"\n");
    }
    fn encode_failure(&self, f: Failure, out: &mut BytesMut, _: &Cx) {
        out.extend_from_slice(format!("ERR {f}\n").as_bytes());
    }
}

/// The test service: `wait` blocks at the first gate, `hold` at the second, `panic`
/// panics, anything else is upper-cased at once. Counts calls started and finished.
#[derive(Default)]
struct Behaviour {
    gate: Gate,
    gate2: Gate,
    started: AtomicUsize,
    finished: AtomicUsize,
}

fn lines_service(b: Arc<Behaviour>) -> impl Fn(String) -> String + Send + Sync + 'static {
    move |line: String| {
        b.started.fetch_add(1, Ordering::SeqCst);
        match line.as_str() {
            "wait" => b.gate.wait(),
            "hold" => b.gate2.wait(),
            "panic" => panic!("the test handler panics on purpose"),
            _ => {}
        }
        b.finished.fetch_add(1, Ordering::SeqCst);
        line.to_uppercase()
    }
}

fn config(workers: usize) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        workers,
        ..Config::default()
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("an answer line");
    line
}

/// Nothing has arrived on `s` (checked without blocking).
fn nothing_yet(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    let r = (&*s).read(&mut b);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

#[test]
fn a_slow_handler_does_not_hold_back_other_connections() {
    let b = Arc::new(Behaviour::default());
    let srv =
        InProcess::start_with(&config(2), Pooled::new(Lines, lines_service(b.clone()))).unwrap();
    let mut slow = connect(srv.local_addr());
    send(&mut slow, b"wait\n");
    wait_until("the slow handler to start", || {
        b.started.load(Ordering::SeqCst) == 1
    });
    let fast = connect(srv.local_addr());
    let mut fast_r = BufReader::new(fast.try_clone().unwrap());
    (&fast).write_all(b"hi\n").unwrap();
    assert_eq!(read_line(&mut fast_r), "HI\n");
    // The slow one is still blocked in its handler, and has no answer.
    assert_eq!(b.finished.load(Ordering::SeqCst), 1);
    assert!(nothing_yet(&slow));
    b.gate.open();
    assert_eq!(read_line(&mut BufReader::new(slow)), "WAIT\n");
}

#[test]
fn pipelined_jobs_finishing_out_of_order_are_answered_in_order() {
    let b = Arc::new(Behaviour::default());
    let srv =
        InProcess::start_with(&config(4), Pooled::new(Lines, lines_service(b.clone()))).unwrap();
    let mut c = connect(srv.local_addr());
    send(&mut c, b"wait\na\nb\nc\n");
    // The three after the first finish while the first is blocked...
    wait_until("the later jobs to finish", || {
        b.finished.load(Ordering::SeqCst) == 3
    });
    // ...and are held back: nothing may overtake the first answer.
    assert!(nothing_yet(&c));
    b.gate.open();
    let mut r = BufReader::new(c);
    let got: Vec<String> = (0..4).map(|_| read_line(&mut r)).collect();
    assert_eq!(got, ["WAIT\n", "A\n", "B\n", "C\n"]);
}

#[test]
fn a_panicking_handler_gets_an_error_answer_and_the_connection_goes_on() {
    let b = Arc::new(Behaviour::default());
    let srv =
        InProcess::start_with(&config(1), Pooled::new(Lines, lines_service(b.clone()))).unwrap();
    let c = connect(srv.local_addr());
    (&c).write_all(b"x\npanic\ny\n").unwrap();
    let mut r = BufReader::new(c);
    let got: Vec<String> = (0..3).map(|_| read_line(&mut r)).collect();
    assert_eq!(got, ["X\n", "ERR handler failed\n", "Y\n"]);
    // The worker lived on: the pool still has its one worker, and serves.
    (r.get_ref()).write_all(b"z\n").unwrap();
    assert_eq!(read_line(&mut r), "Z\n");
    wait_until("the panic to be counted", || {
        srv.stats().handler_panics == 1
    });
    assert_eq!(srv.stats().workers, 1);
}

#[test]
fn a_panicking_http_handler_gets_500_and_the_next_request_200() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let service = move |r: Request| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("first call panics");
        }
        hello(r)
    };
    let srv = InProcess::start_with(&config(1), App::new(service).on_pool()).unwrap();
    let c = connect(srv.local_addr());
    (&c).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let first = read_response(&mut r);
    assert_eq!(first.status, 500);
    let second = read_response(&mut r);
    assert_eq!(
        (second.status, &second.body[..]),
        (200, &b"Hello, World!"[..])
    );
}

#[test]
fn a_panicking_json_handler_gets_an_error_line_and_the_stream_goes_on() {
    let service = |m: JsonRequest| {
        if m.val == "panic" {
            panic!("asked to");
        }
        m
    };
    let srv =
        InProcess::start_with(&config(1), Pooled::new(JsonCodec::default(), service)).unwrap();
    let c = connect(srv.local_addr());
    (&c).write_all(b"{\"Uid\":\"1\",\"Val\":\"panic\"}\n{\"Uid\":\"2\",\"Val\":\"ok\"}\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let first: serde_json::Value = serde_json::from_str(&read_line(&mut r)).unwrap();
    assert_eq!(first["error"], "handler failed");
    let second: serde_json::Value = serde_json::from_str(&read_line(&mut r)).unwrap();
    assert_eq!(
        (&second["Uid"], &second["Val"]),
        (&"2".into(), &"server: hello, ok".into())
    );
}

/// HTTP on the pool with a 200 ms handler timeout, whose first request blocks until
/// `b.gate` opens.
fn http_with_a_gated_first_request(b: &Arc<Behaviour>) -> InProcess {
    let gated = b.clone();
    let service = move |r: Request| {
        if gated.started.fetch_add(1, Ordering::SeqCst) == 0 {
            gated.gate.wait();
        }
        hello(r)
    };
    let cfg = Config {
        handler_timeout: Duration::from_millis(200),
        ..config(2)
    };
    InProcess::start_with(&cfg, App::new(service).on_pool()).unwrap()
}

#[test]
fn the_handler_timeout_answers_503_and_drops_the_late_result() {
    let b = Arc::new(Behaviour::default());
    let srv = http_with_a_gated_first_request(&b);
    let c = connect(srv.local_addr());
    let mut r = BufReader::new(c.try_clone().unwrap());
    (&c).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // The handler is still blocked (the gate is shut): the answer is the timeout's.
    assert_eq!(read_response(&mut r).status, 503);
    b.gate.open();
    wait_until("the late result to be dropped", || {
        srv.stats().jobs_dropped == 1
    });
    // The connection goes on, and the late answer never shows up on it.
    (&c).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let next = read_response(&mut r);
    assert_eq!(next.status, 200);
    assert!(nothing_yet(&c));
    assert_eq!(srv.stats().handler_timeouts, 1);
}

/// A request that asked to close (`Connection: close`) and whose handler timed out:
/// the server closes after the 503, so the 503 says `Connection: close`, as the
/// answer it stands for would have (RFC 9112 9.6). It did not: a pipelining client
/// could not tell that its later requests would go unanswered. Found by the
/// simulation (a drain, which closes the same way, then a handler timeout).
#[test]
fn a_timeout_answer_before_a_close_says_connection_close() {
    let b = Arc::new(Behaviour::default());
    let srv = http_with_a_gated_first_request(&b);
    let c = connect(srv.local_addr());
    let mut r = BufReader::new(c.try_clone().unwrap());
    (&c).write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = read_response(&mut r);
    b.gate.open();
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.headers.get("connection").map(String::as_str),
        Some("close"),
        "headers: {:?}",
        answer.headers
    );
    // And the server does close.
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
}

/// A HEAD request whose handler timed out: its 503 has no body (an answer to HEAD
/// never has one), so the next answer on the connection is read as an answer. It had
/// one ("Service Unavailable"), which the client took for the start of the next
/// answer.
#[test]
fn a_timeout_answer_to_head_has_no_body() {
    let b = Arc::new(Behaviour::default());
    let srv = http_with_a_gated_first_request(&b);
    let mut c = connect(srv.local_addr());
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    (&c).write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // The head of the 503 (no body may follow it).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "the 503's head: {head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 503 "), "{head:?}");
    b.gate.open();
    (&c).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200 "),
        "the next answer begins with its status line: {status:?}"
    );
}

#[test]
fn a_result_for_a_closed_connection_is_dropped_and_never_reaches_the_one_that_took_its_slot() {
    let b = Arc::new(Behaviour::default());
    let srv =
        InProcess::start_with(&config(2), Pooled::new(Lines, lines_service(b.clone()))).unwrap();
    let mut gone = connect(srv.local_addr());
    send(&mut gone, b"wait\n");
    wait_until("the first job to start", || {
        b.started.load(Ordering::SeqCst) == 1
    });
    // An abortive close (a reset), which the server sees at once; after a plain close
    // it could not tell a peer gone from one that only shut its sending side and still
    // waits for the answer.
    socket2::SockRef::from(&gone)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(gone);
    wait_until("the close to be seen", || srv.stats().closed == 1);
    // One shard, one connection before: the slab gives the new connection the same key.
    let next = connect(srv.local_addr());
    (&next).write_all(b"hold\n").unwrap();
    wait_until("the second job to start", || {
        b.started.load(Ordering::SeqCst) == 2
    });
    // The old job finishes while the new connection has a job of its own in flight.
    b.gate.open();
    wait_until("the old result to be dropped", || {
        srv.stats().jobs_dropped == 1
    });
    b.gate2.open();
    let mut r = BufReader::new(next.try_clone().unwrap());
    assert_eq!(read_line(&mut r), "HOLD\n");
    // And nothing else: "WAIT" went nowhere.
    (&next).write_all(b"last\n").unwrap();
    assert_eq!(read_line(&mut r), "LAST\n");
    assert!(nothing_yet(&next));
}

#[test]
fn a_peer_that_shuts_its_sending_side_still_gets_its_answers() {
    let b = Arc::new(Behaviour::default());
    let srv =
        InProcess::start_with(&config(1), Pooled::new(Lines, lines_service(b.clone()))).unwrap();
    let mut c = connect(srv.local_addr());
    send(
        &mut c,
        b"wait
last
",
    );
    c.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("the job to start", || b.started.load(Ordering::SeqCst) == 1);
    b.gate.open();
    let (got, closed) = read_to_close(&mut c);
    assert_eq!((&got[..], closed), (&b"WAIT\nLAST\n"[..], true));
}

#[test]
fn a_pooled_service_without_workers_is_refused_with_a_clear_error() {
    let err = InProcess::start_with(&config(0), Pooled::new(Lines, |s: String| s))
        .err()
        .expect("refused");
    // In the library's words first, the command line's second.
    let msg = err.to_string();
    assert!(
        msg.contains("Config::workers") && msg.contains("--workers"),
        "{msg}"
    );
}

/// Counts the threads of `pid` whose name starts with `prefix`.
fn threads_named(pid: i32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

fn json_line(uid: usize) -> String {
    format!("{{\"Uid\":\"{uid}\",\"Val\":\"v{uid}\"}}\n")
}

fn read_json_uids(c: TcpStream, n: usize) -> Vec<String> {
    let mut r = BufReader::new(c);
    (0..n)
        .map(|_| {
            let v: serde_json::Value = serde_json::from_str(&read_line(&mut r)).unwrap();
            v["Uid"]
                .as_str()
                .expect("an answer, not an error")
                .to_string()
        })
        .collect()
}

#[test]
fn the_pool_grows_to_workers_max_under_load_and_shrinks_back_after_idling() {
    // 12 jobs of 1 s on at most 4 workers: the pool stays at 4 for about 3 s.
    let srv = Server::start(
        "--protocol json --work sleep:1s --workers 1 --workers-max 4 --worker-idle 300ms",
    );
    wait_until("the first worker", || {
        threads_named(srv.pid(), "reactor-worker") == 1
    });
    let conns: Vec<TcpStream> = (0..4).map(|_| connect(srv.addr)).collect();
    for (i, mut c) in conns.iter().enumerate() {
        let batch: String = (0..3).map(|j| json_line(i * 3 + j)).collect();
        c.write_all(batch.as_bytes()).unwrap();
    }
    wait_until("4 worker threads", || {
        threads_named(srv.pid(), "reactor-worker") == 4
    });
    for (i, c) in conns.into_iter().enumerate() {
        let want: Vec<String> = (0..3).map(|j| (i * 3 + j).to_string()).collect();
        assert_eq!(read_json_uids(c, 3), want);
    }
    wait_until("the pool to shrink back to 1", || {
        threads_named(srv.pid(), "reactor-worker") == 1
    });
    let (status, stats) = srv.stop();
    assert_eq!(status.code(), Some(0));
    assert_eq!((stats["workers_grown"], stats["workers_retired"]), (3, 3));
}

#[test]
fn without_workers_no_pool_thread_runs() {
    let srv = Server::start("--protocol json");
    let c = connect(srv.addr);
    (&c).write_all(json_line(1).as_bytes()).unwrap();
    assert_eq!(read_json_uids(c, 1), ["1"]);
    assert_eq!(threads_named(srv.pid(), "reactor-worker"), 0);
}

#[test]
fn a_full_queue_stalls_reading_and_every_request_is_still_answered() {
    let srv =
        Server::start("--protocol json --work sleep:2ms --workers 1 --queue 2 --max-inflight 4");
    let per_conn = [200, 50, 50, 50];
    let conns: Vec<TcpStream> = per_conn.iter().map(|_| connect(srv.addr)).collect();
    for (k, (c, n)) in conns.iter().zip(per_conn).enumerate() {
        let batch: String = (0..n).map(|i| json_line(k * 1000 + i)).collect();
        (&*c).write_all(batch.as_bytes()).unwrap();
    }
    for (k, (c, n)) in conns.into_iter().zip(per_conn).enumerate() {
        let want: Vec<String> = (0..n).map(|i| (k * 1000 + i).to_string()).collect();
        assert_eq!(read_json_uids(c, n), want);
    }
    let (status, stats) = srv.stop();
    assert_eq!(status.code(), Some(0));
    assert_eq!((stats["requests"], stats["jobs"]), (350, 350));
    assert!(stats["stalls"] > 0, "{stats:?}");
    assert_eq!(stats["jobs_dropped"], 0);
}

#[test]
fn a_full_queue_shared_by_two_shards_loses_no_connection() {
    // Two shards race for one place in the queue: a shard that loses the race must
    // still be woken when room frees, or its stalled connections are never read again.
    let srv = Server::start(
        "--protocol json --threads 2 --work spin:20us --workers 1 --queue 1 --max-inflight 4",
    );
    let conns: Vec<TcpStream> = (0..8).map(|_| connect(srv.addr)).collect();
    for (k, c) in conns.iter().enumerate() {
        let batch: String = (0..200).map(|i| json_line(k * 1000 + i)).collect();
        (&*c).write_all(batch.as_bytes()).unwrap();
    }
    for (k, c) in conns.into_iter().enumerate() {
        let want: Vec<String> = (0..200).map(|i| (k * 1000 + i).to_string()).collect();
        assert_eq!(read_json_uids(c, 200), want, "connection {k}");
    }
}

#[test]
fn error_answers_behind_a_slow_job_are_bounded_by_the_high_water_mark() {
    // One slow job, then a stream of garbage lines: each gets an error line that must
    // wait behind the job. Those waiting answers count against the high-water mark, so
    // the server stops reading instead of holding an answer per line in memory.
    let srv = Server::start("--protocol json --work sleep:30s --workers 1 --high-water 65536");
    let c = connect(srv.addr);
    (&c).write_all(json_line(1).as_bytes()).unwrap();
    let before = srv.rss_kib();
    c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let garbage = b"x\n".repeat(64 * 1024);
    let mut sent = 0usize;
    while sent < 8 << 20 {
        match (&c).write(&garbage) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let grown = srv.rss_kib().saturating_sub(before);
    // Without the bound, 8 MB of garbage lines held about 1 GB of waiting answers.
    assert!(
        grown < 32 * 1024,
        "server memory grew {grown} KiB while {sent} bytes of garbage were sent"
    );
    assert!(
        sent < 8 << 20,
        "the server never stopped reading ({sent} bytes taken)"
    );
}

/// Hands every line to the pool without ever looking at its limit (else [`Lines`]).
#[derive(Clone)]
struct Greedy;

impl Codec for Greedy {
    type State = ();
    type Request = String;
    type Response = String;
    fn decode(&self, _: &mut (), input: &[u8], out: &mut Calls<String>, _: &Cx) -> Decoded {
        let mut d = Decoded::default();
        while let Some(nl) = input[d.consumed..].iter().position(|&b| b == b'\n') {
            out.call(String::from_utf8_lossy(&input[d.consumed..d.consumed + nl]).into());
            d.consumed += nl + 1;
            d.requests += 1;
        }
        d
    }
    fn encode(&self, answer: String, out: &mut BytesMut, cx: &Cx) {
        Lines.encode(answer, out, cx)
    }
    fn encode_failure(&self, f: Failure, out: &mut BytesMut, cx: &Cx) {
        Lines.encode_failure(f, out, cx)
    }
}

#[test]
fn a_codec_that_ignores_its_limit_cannot_break_the_queue_count() {
    let cfg = Config {
        queue: 2,
        max_inflight: 2,
        ..config(1)
    };
    let srv = InProcess::start_with(&cfg, Pooled::new(Greedy, |s: String| s)).unwrap();
    let c = connect(srv.local_addr());
    let lines: String = (0..50).map(|i| format!("{i}\n")).collect();
    (&c).write_all(lines.as_bytes()).unwrap();
    let mut r = BufReader::new(c);
    for i in 0..50 {
        assert_eq!(read_line(&mut r), format!("{i}\n"));
    }
    wait_until("the queue to be empty again", || {
        srv.stats().jobs_queued == 0
    });
    // And the pool still takes work.
    let c2 = connect(srv.local_addr());
    (&c2).write_all(b"again\n").unwrap();
    assert_eq!(read_line(&mut BufReader::new(c2)), "again\n");
}

#[test]
fn a_json_handler_timeout_answers_an_error_line() {
    let srv = Server::start("--protocol json --work sleep:3s --workers 1 --handler-timeout 200ms");
    let c = connect(srv.addr);
    (&c).write_all(json_line(7).as_bytes()).unwrap();
    let mut r = BufReader::new(c);
    let v: serde_json::Value = serde_json::from_str(&read_line(&mut r)).unwrap();
    assert_eq!(v["error"], "handler timed out");
}

#[test]
fn sigterm_with_jobs_queued_and_running_answers_them_all_then_exits_0() {
    let mut srv = Server::start(
        "--protocol json --work sleep:200ms --workers 2 --queue 64 --drain-timeout 30s \
         --stats-interval 100ms",
    );
    let conns: Vec<TcpStream> = (0..5).map(|_| connect(srv.addr)).collect();
    for (k, mut c) in conns.iter().enumerate() {
        let batch: String = (0..4).map(|i| json_line(k * 10 + i)).collect();
        c.write_all(batch.as_bytes()).unwrap();
    }
    // 20 jobs of 200 ms on 2 workers: about 2 s of work, most of it still queued when
    // the signal comes (once every request is read: a connection still in the accept
    // queue when the listener closes is reset, which is not what this test is about).
    srv.wait_for_stats(|c| c.get("jobs") == Some(&20))
        .expect("every request handed to the pool");
    srv.signal(libc::SIGTERM);
    for (k, c) in conns.into_iter().enumerate() {
        let want: Vec<String> = (0..4).map(|i| (k * 10 + i).to_string()).collect();
        assert_eq!(read_json_uids(c, 4), want);
    }
    assert_eq!(srv.wait_exit().code(), Some(0));
    let line = srv
        .wait_for_line(|l| l.contains("draining"))
        .expect("a drain line");
    let jobs: usize = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the drain line counts jobs");
    assert!(jobs > 0, "{line}");
    let stats = counters(&srv.wait_for_line(|l| l.contains("stopped: ")).unwrap());
    assert_eq!((stats["jobs"], stats["cut_at_shutdown"]), (20, 0));
}

#[test]
fn work_flags_are_checked() {
    for args in [
        "--protocol json --work sleep:10ms",
        "--protocol echo --work sleep:10ms --workers 2",
        "--protocol json --work nap:1s --workers 2",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .args(args.split_whitespace())
            .args(["--addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--workers") || err.contains("echo") || err.contains("sleep or spin"),
            "{args}: {err}"
        );
    }
}
