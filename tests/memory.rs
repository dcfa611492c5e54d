//! Memory a burst took is given back: a crowd of clients that pipeline and never read
//! makes the server hold each one's output up to the high-water mark (hundreds of MB
//! in all); once the crowd has gone, the server's RSS must come back to within 8 MiB
//! of where it started, within 10 s.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn memory_taken_by_a_crowd_of_non_readers_is_given_back() {
    raise_fd_limit();
    let srv = Server::start("--protocol echo --threads 1 --stats-interval 1s");
    let start = srv.rss_kib();
    const CONNS: usize = 2000;
    let chunk = vec![b'x'; 64 * 1024];
    let mut crowd = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let c = TcpStream::connect(srv.addr).unwrap();
        c.set_nonblocking(true).unwrap();
        crowd.push(c);
    }
    // Each writes until nothing more is taken: its echo fills the kernel's buffers and
    // the server's output for it, up to the mark, and the server stops reading it.
    let end = Instant::now() + DEADLINE;
    for c in &crowd {
        let mut blocked = 0;
        while blocked < 3 {
            assert!(Instant::now() < end, "the crowd never filled up");
            match (&*c).write(&chunk) {
                Ok(_) => blocked = 0,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    blocked += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let peak = srv.rss_kib();
    eprintln!("RSS: {start} KiB at start, {peak} KiB with the crowd");
    assert!(
        peak > start + 64 * 1024,
        "the crowd did not take memory ({start} -> {peak} KiB): the test shows nothing"
    );
    drop(crowd);
    srv.wait_for_stats(|c| c["open"] == 0 && c["buffers_lent"] == 0)
        .expect("every connection closed");
    let closed = Instant::now();
    let back = loop {
        let now = srv.rss_kib();
        if now <= start + 8 * 1024 {
            break now;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "RSS still {now} KiB 10 s after the crowd left (start {start} KiB, peak {peak} KiB)"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "RSS back to {back} KiB {:?} after the crowd left",
        closed.elapsed()
    );
    let (status, _) = srv.stop();
    assert_eq!(status.code(), Some(0));
}
