//! Memory a burst took is given back: a crowd of clients that pipeline and never read
//! makes the server hold each one's output up to the high-water mark (hundreds of MB
//! in all); once the crowd has gone, the server's RSS must come back to within 8 MiB
//! of where it started, within 10 s.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The tests here each hold thousands of connections and move hundreds of MB: one at a
/// time, so that on a loaded machine none waits on the others' load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn memory_taken_by_a_crowd_of_non_readers_is_given_back() {
    let _one = one_at_a_time();
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
    let end = Instant::now() + DEADLINE * 3;
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
    let _one = one_at_a_time();
    raise_fd_limit();
    const BUDGET_MIB: u64 = 16;
    const CONNS: usize = 5000;
    let srv = Server::start(&format!(
        "--protocol echo --threads 2 --stats-interval 1s --max-buffer-memory {BUDGET_MIB}MiB \
         --write-timeout 0 --idle-timeout 0"
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

/// While the budget is spent (a crowd of HTTP clients behind PROXY headers that
/// pipeline and never read), the server still takes in a new connection and its PROXY
/// header and answers it, closes a connection it answered with an error once its linger
/// is over, and closes connections whose peers reset with answers unacknowledged: none
/// of them may wait for a resume that a crowd that never reads will not allow.
#[test]
fn a_spent_budget_still_serves_new_peers_and_closes_errors_and_resets() {
    let _one = one_at_a_time();
    raise_fd_limit();
    const CONNS: usize = 300;
    let srv = Server::start(
        "--protocol http --threads 1 --stats-interval 200ms --max-buffer-memory 2MiB \
         --proxy-protocol v1 --write-timeout 0 --idle-timeout 0",
    );
    let header = |port: u16| format!("PROXY TCP4 10.1.2.3 127.0.0.1 {port} 80\r\n");
    let mut gets = String::new();
    while gets.len() < 256 * 1024 {
        gets.push_str("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    let fill = |c: &TcpStream, first: &[u8]| {
        let mut sent = 0;
        let mut blocked = 0;
        let data = [first, gets.as_bytes()].concat();
        let end = Instant::now() + DEADLINE;
        while sent < data.len() && blocked < 3 && Instant::now() < end {
            match (&*c).write(&data[sent..]) {
                Ok(n) => {
                    sent += n;
                    blocked = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    blocked += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let mut crowd = Vec::new();
    for i in 0..CONNS {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&srv.addr.into()).unwrap();
        s.set_nonblocking(true).unwrap();
        let c = TcpStream::from(s);
        fill(&c, header(10_000 + i as u16).as_bytes());
        crowd.push(c);
    }
    srv.wait_for_stats(|c| c.get("memory_pauses").is_some_and(|&p| p > 0))
        .expect("the budget was reached: reading paused");
    let base = srv
        .wait_for_stats(|c| c["open"] == CONNS as u64)
        .expect("the crowd is held, none closed")["closed"];

    // A new peer: its PROXY header is read and its request answered.
    let mut c = connect(srv.addr);
    send(
        &mut c,
        format!(
            "{}GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            header(9000)
        )
        .as_bytes(),
    );
    let resp = read_response(&mut std::io::BufReader::new(&mut c));
    assert_eq!(
        resp.status, 200,
        "a new peer is served while the budget is spent"
    );

    // Peers answered with an error (their connections linger) that read the answer to
    // its end and close: their connections are closed, not held for a resume.
    for i in 0..5 {
        let mut e = connect(srv.addr);
        send(
            &mut e,
            format!("{}BAD\r\n\r\n", header(9100 + i)).as_bytes(),
        );
        let (answer, closed) = read_to_close(&mut e);
        assert!(closed && answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    }
    // Peers that pipeline, stop reading, then reset with answers unacknowledged.
    for i in 0..5 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&srv.addr.into()).unwrap();
        s.set_nonblocking(true).unwrap();
        let r = TcpStream::from(s);
        fill(&r, header(9200 + i).as_bytes());
        socket2::SockRef::from(&r)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(r);
    }
    let after = srv
        .wait_for_stats(|c| c["open"] == CONNS as u64 && c["closed"] >= base + 11)
        .expect("the new peer, the error answers and the resets are all closed");
    assert!(after["memory_pauses"] >= 1);
    drop(crowd);
    let (status, _) = srv.stop();
    assert_eq!(status.code(), Some(0));
}
