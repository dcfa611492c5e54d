mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn idle_connection_is_closed_after_timeout() {
    let srv = Server::start("--protocol http --idle-timeout 300ms");
    let mut c = connect(srv.addr);
    // A completed request, then silence.
    send(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (got, closed) = read_to_close(&mut c);
    assert!(closed, "the idle connection was closed");
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    let (_, stats) = srv.stop();
    assert_eq!(stats["idle_timeouts"], 1);
    assert_eq!(stats["read_timeouts"], 0);
}

#[test]
fn idle_timeout_zero_never_closes() {
    // The other half of the idle test: with the timeout off the connection outlives a
    // read timeout that would have closed it, and is closed only by the shutdown.
    let srv = Server::start("--protocol echo --idle-timeout 0 --read-timeout 100ms");
    let mut c = connect(srv.addr);
    send(&mut c, b"x");
    c.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut b = [0u8; 8];
    assert_eq!(std::io::Read::read(&mut c, &mut b).unwrap(), 1);
    let err = std::io::Read::read(&mut c, &mut b).unwrap_err();
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    let (_, stats) = srv.stop();
    assert_eq!(stats["idle_timeouts"] + stats["read_timeouts"], 0);
}

#[test]
fn half_sent_request_is_closed_by_the_read_timeout() {
    let srv = Server::start("--protocol http --read-timeout 300ms --idle-timeout 60s");
    let mut c = connect(srv.addr);
    send(&mut c, b"GET / HTTP/1.1\r\nHost: exa");
    let (got, closed) = read_to_close(&mut c);
    assert!(closed);
    assert!(got.is_empty());
    let (_, stats) = srv.stop();
    assert_eq!(stats["read_timeouts"], 1);
    assert_eq!(stats["idle_timeouts"], 0);
}

#[test]
fn a_client_dribbling_one_byte_at_a_time_is_still_cut() {
    // Each byte arrives well within the read timeout, but the request as a whole does
    // not: the deadline runs from the first byte and is not pushed back.
    let srv = Server::start("--protocol http --read-timeout 500ms --idle-timeout 60s");
    let mut c = connect(srv.addr);
    let start = Instant::now();
    let mut cut = false;
    for b in b"GET /".iter().chain(std::iter::repeat(&b'a')).take(400) {
        if c.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() > DEADLINE {
            break;
        }
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let r = std::io::Read::read(&mut c, &mut buf);
        c.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the dribbling client was cut");
    let (_, stats) = srv.stop();
    assert_eq!(stats["read_timeouts"], 1);
}

#[test]
fn a_reader_that_stops_reading_is_closed_by_the_write_timeout() {
    let srv = Server::start("--protocol echo --write-timeout 300ms --idle-timeout 60s");
    let c = connect(srv.addr);
    socket2::SockRef::from(&c)
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut w = c.try_clone().unwrap();
    w.set_nonblocking(true).unwrap();
    // Send until the server stops taking bytes; never read.
    let chunk = vec![b'q'; 64 * 1024];
    let end = Instant::now() + DEADLINE;
    let mut closed = false;
    while Instant::now() < end {
        match w.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "writes failed once the server closed");
    let (_, stats) = srv.stop();
    assert_eq!(stats["write_timeouts"], 1);
}
