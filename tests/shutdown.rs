mod common;

use std::io::BufReader;

use common::*;

#[test]
fn sigterm_during_a_delayed_request_still_delivers_it_before_exit_0() {
    let mut srv = Server::start("--protocol http --delay-ms 1500");
    let idle = connect(srv.addr);
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    send(&mut w, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    srv.signal(libc::SIGTERM);
    let resp = read_response(&mut r);
    assert_eq!((resp.status, &resp.body[..]), (200, &b"Hello, World!"[..]));
    let (rest, closed) = read_to_close(r.get_mut());
    assert!(closed && rest.is_empty(), "closed after the answer");
    let mut idle = idle;
    let (_, idle_closed) = read_to_close(&mut idle);
    assert!(idle_closed, "the idle connection was closed at shutdown");
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(0));
    let stats = counters(&srv.wait_for_line(|l| l.contains("stopped: ")).unwrap());
    assert_eq!(stats["cut_at_shutdown"], 0);
    assert_eq!(stats["requests"], 1);
}

#[test]
fn delayed_answers_do_not_hold_up_other_connections() {
    // --delay-ms is on the timer wheel: while one connection's answers wait, the loop
    // answers the others. Many connections each wait 1 s; all answers arrive, and the
    // server counts them all, which a sleeping loop would have taken 50 s to do.
    let srv = Server::start("--protocol json --delay-ms 1000");
    let conns: Vec<_> = (0..50).map(|_| connect(srv.addr)).collect();
    for (i, mut c) in conns.iter().enumerate() {
        std::io::Write::write_all(
            &mut c,
            format!("{{\"Uid\":\"{i}\",\"Val\":\"x\"}}\n").as_bytes(),
        )
        .unwrap();
    }
    let start = std::time::Instant::now();
    for (i, c) in conns.into_iter().enumerate() {
        let mut r = BufReader::new(c);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["Uid"], i.to_string());
    }
    // Not a timing assertion on the machine's speed: 50 sequential 1 s sleeps cannot
    // fit in 20 s on any machine.
    assert!(start.elapsed() < DEADLINE, "answers were serialized");
}

#[test]
fn drain_timeout_cuts_a_request_that_never_completes() {
    let mut srv = Server::start("--protocol http --drain-timeout 300ms --read-timeout 60s");
    let mut c = connect(srv.addr);
    send(&mut c, b"GET / HTTP/1.1\r\nHost: never-fin");
    // The request is in progress once the server has read it; give the signal after the
    // bytes are in the server's socket (a loopback write is delivered by return), and
    // the server drives every connection once more before judging it idle.
    srv.signal(libc::SIGTERM);
    let (_, closed) = read_to_close(&mut c);
    assert!(closed);
    assert_eq!(srv.wait_exit().code(), Some(0));
    let stats = counters(&srv.wait_for_line(|l| l.contains("stopped: ")).unwrap());
    assert_eq!(stats["cut_at_shutdown"], 1);
    assert!(
        srv.wait_for_line(|l| l.contains("cutting 1 connections"))
            .is_some()
    );
}
