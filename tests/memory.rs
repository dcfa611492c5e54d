//! Memory a burst took is given back: a crowd of clients that pipeline and never read
//! makes the server hold each one's output up to the high-water mark (hundreds of MB
//! in all); once the crowd has gone, the server's RSS must come back to within 8 MiB
//! of where it started, within 10 s.

mod common;

use std::io::{Read, Write};
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

/// Bytes each connection of the budgeted crowd sends: its echo cannot all fit in the
/// kernel's buffers (the client's are small), so without a budget the server would hold
/// up to the high-water mark (64 KB) for each.
const SENT_EACH: usize = 256 * 1024;

/// The byte at `offset` of connection `i`'s stream: a corrupted, lost or misplaced
/// echo shows as a mismatch.
fn pattern(i: usize, offset: usize) -> u8 {
    (offset.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8
}

#[test]
fn a_memory_budget_bounds_a_crowd_of_non_readers_and_serves_everyone() {
    raise_fd_limit();
    const BUDGET_MIB: u64 = 16;
    const CONNS: usize = 5000;
    let srv = Server::start(&format!(
        "--protocol echo --threads 2 --stats-interval 1s --max-buffer-memory {BUDGET_MIB}MiB"
    ));
    let start = srv.rss_kib();
    // A crowd that pipelines and does not read: each writes what the kernel takes (up
    // to SENT_EACH), the server echoes it, the echoes pile up in the server.
    let mut crowd = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.set_send_buffer_size(16 * 1024).unwrap();
        s.connect(&srv.addr.into()).unwrap();
        s.set_nonblocking(true).unwrap();
        crowd.push((TcpStream::from(s), 0usize));
    }
    let end = Instant::now() + DEADLINE * 3;
    let mut chunk = vec![0u8; 16 * 1024];
    for (i, (c, sent)) in crowd.iter_mut().enumerate() {
        let mut blocked = 0;
        while *sent < SENT_EACH && blocked < 3 {
            assert!(Instant::now() < end, "the crowd never filled up");
            let n = chunk.len().min(SENT_EACH - *sent);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(i, *sent + k);
            }
            match (&*c).write(&chunk[..n]) {
                Ok(w) => {
                    *sent += w;
                    blocked = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    blocked += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let total: usize = crowd.iter().map(|c| c.1).sum();
    let stats = srv
        .wait_for_stats(|c| c.get("memory_pauses").is_some_and(|&p| p > 0))
        .expect("the budget was reached: reading paused");
    let peak = srv.rss_kib();
    eprintln!(
        "RSS: {start} KiB at start, {peak} KiB with {CONNS} non-readers ({} MiB sent to the \
         server); heap {} B of a {} B budget",
        total >> 20,
        stats["buffer_memory"],
        stats.get("buffer_memory_limit").copied().unwrap_or(0)
    );
    // The budget bounds the heap; RSS adds the program, thread stacks and what the
    // allocator keeps: a fixed 8 MiB more.
    assert!(
        peak <= start + (BUDGET_MIB + 8) * 1024,
        "RSS {peak} KiB with the crowd: over the {BUDGET_MIB} MiB budget (start {start} KiB)"
    );

    // Meanwhile a client that reads its answers is served, on new connections (one
    // per shard at least) and many exchanges.
    for n in 0..4 {
        let mut c = connect(srv.addr);
        for k in 0..50 {
            let msg = format!("well-behaved {n} {k}\n");
            c.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back)
                .expect("a reading client is answered under the budget");
            assert_eq!(back, msg.as_bytes());
        }
    }

    // The crowd reads at last: every byte comes back, in order.
    for (i, (c, sent)) in crowd.iter_mut().enumerate() {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < *sent {
            let n = c
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("connection {i}: {got} of {sent} bytes back: {e}"));
            assert!(n > 0, "connection {i} closed after {got} of {sent} bytes");
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(
                    b,
                    pattern(i, got + k),
                    "connection {i}: byte {} corrupt",
                    got + k
                );
            }
            got += n;
        }
    }
    drop(crowd);
    srv.wait_for_stats(|c| c["open"] == 0 && c["buffers_lent"] == 0)
        .expect("every connection closed");
    let closed = Instant::now();
    loop {
        let now = srv.rss_kib();
        if now <= start + 8 * 1024 {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "RSS still {now} KiB 10 s after the crowd left (start {start} KiB)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, last) = srv.stop();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        last["bytes_out"], last["bytes_in"],
        "every byte read was echoed"
    );
}
