//! Holes an independent review found, each pinned by a test that failed before its fix:
//! a lingering close that read without a budget, the EMFILE spare descriptor lost after
//! its first use, and one client address taking every connection slot.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_peer_that_floods_a_lingering_close_does_not_hold_up_the_shard() {
    // One shard. The flooder gets a 400 and then keeps sending: the server lingers
    // (reads and discards until the peer closes). With a large send buffer on the
    // flooder's side, every read the server makes lets more in, so a linger that reads
    // "until WouldBlock" never returns while the flood goes on.
    let srv = Server::start("--protocol http");
    let other = connect(srv.addr);
    let flooder = connect(srv.addr);
    socket2::SockRef::from(&flooder)
        .set_send_buffer_size(8 << 20)
        .unwrap();
    (&flooder).write_all(b"BAD REQUEST\r\n\r\n").unwrap();
    let mut r = BufReader::new(flooder.try_clone().unwrap());
    assert_eq!(read_response(&mut r).status, 400);
    let flooding = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = {
        let (flooding, sent) = (flooding.clone(), sent.clone());
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 256 * 1024];
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end && flooding.load(Ordering::SeqCst) {
                match (&flooder).write(&chunk) {
                    Ok(n) => {
                        sent.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
            // The flood is over (cut by the server, or given up): record it.
            flooding.store(false, Ordering::SeqCst);
        })
    };
    let end = Instant::now() + DEADLINE;
    while sent.load(Ordering::SeqCst) < 16 << 20 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    (&other)
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut BufReader::new(other.try_clone().unwrap()));
    let still_flooding = flooding.load(Ordering::SeqCst);
    flooding.store(false, Ordering::SeqCst);
    flood.join().unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        still_flooding,
        "the other connection was answered only after the flood ended"
    );
}

fn try_connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(s)
}

#[test]
fn out_of_descriptors_every_connection_past_the_limit_gets_a_prompt_close() {
    // 64 descriptors: the server runs out after a few dozen connections. Every one
    // past that must see a close (EOF or reset), not hang in the backlog: the spare
    // descriptor must be there for each, not only the first.
    let srv = Server::start_with_shell("ulimit -n 64;", "--protocol echo --max-connections 1000");
    let mut held = Vec::new();
    let mut closed = 0;
    let mut hung = 0;
    for _ in 0..100 {
        let Some(mut c) = try_connect(srv.addr) else {
            continue;
        };
        let _ = c.write_all(b"ping");
        let mut buf = [0u8; 4];
        match std::io::Read::read(&mut c, &mut buf) {
            Ok(4) => held.push(c),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                hung += 1
            }
            // EOF, a reset, or a partial echo of a closing connection.
            _ => closed += 1,
        }
    }
    eprintln!("held {} closed {closed} hung {hung}", held.len());
    assert!(
        !held.is_empty() && closed > 0,
        "held {} closed {closed}",
        held.len()
    );
    assert_eq!(
        hung,
        0,
        "{hung} connections hung unanswered (held {}, closed {closed})",
        held.len()
    );
}

#[test]
fn one_address_cannot_take_every_slot() {
    let srv = Server::start(
        "--protocol echo --addr 0.0.0.0:0 --max-connections-per-ip 3 --stats-interval 100ms",
    );
    let port = srv.addr.port();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // 127.0.0.1 gets three; the fourth is closed at once.
    let mine: Vec<TcpStream> = (0..3).map(|_| connect(to)).collect();
    for mut c in &mine {
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut c, &mut b).unwrap();
    }
    let mut fourth = connect(to);
    let (_, closed) = read_to_close(&mut fourth);
    assert!(closed, "the fourth connection from one address is closed");
    // Another address still gets in.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&to.into()).unwrap();
    let mut other: TcpStream = sock.into();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    other.write_all(b"y").unwrap();
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut other, &mut b).unwrap();
    assert_eq!(&b, b"y");
    // A slot freed is a slot again.
    let from = srv.log_len();
    drop(mine);
    let line = srv
        .wait_for_line_after(from, |l| {
            // rejected_per_ip too: a line from before the drop (when the first of the
            // three was the only one open) may still be on its way from the log pipe.
            let c = counters(l);
            l.contains(" stats ")
                && c.get("open") == Some(&1)
                && c.get("rejected_per_ip") == Some(&1)
        })
        .expect("the three closed");
    let stats = counters(&line);
    assert_eq!(stats["rejected_per_ip"], 1);
    let mut again = connect(to);
    again.write_all(b"z").unwrap();
    std::io::Read::read_exact(&mut again, &mut b).unwrap();
    assert_eq!(&b, b"z");
}

#[test]
fn a_server_that_fails_to_start_leaves_nothing_serving() {
    // The metrics address is taken (a listener without SO_REUSEPORT), so the admin
    // endpoint cannot bind after the serving shards have started: those must stop.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = <reactor::Config as clap::Parser>::parse_from([
        "reactor",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--threads",
        "2",
        "--metrics-addr",
        &taken.local_addr().unwrap().to_string(),
    ]);
    let err = reactor::Server::start(&cfg).err().expect("the start fails");
    assert!(err.to_string().contains("--metrics-addr"), "{err}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "a shard of the failed server still accepts on its port"
    );
}

/// A second server started by mistake on an address already served would join it
/// through SO_REUSEPORT and take part of its traffic: it refuses to start, naming the
/// address, unless asked to share (the SO_REUSEPORT restart).
#[test]
fn a_second_server_on_a_served_address_fails_unless_asked_to_share() {
    let cfg = loopback_config().threads(2);
    let first = reactor::Server::start(&cfg).expect("the first server starts");
    let addr = first.local_addr();
    let err = reactor::Server::start(&cfg.clone().addr(addr.into()))
        .err()
        .expect("a second server on the same address is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        err.to_string().contains(&addr.to_string()) && err.to_string().contains("--reuse-port"),
        "{err}"
    );
    // The binary says so and exits non-zero.
    let out = std::process::Command::new(binary())
        .args(["--addr", &addr.to_string(), "--threads", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    // Asked to share, it joins: both serve the address.
    let second = reactor::Server::start(&cfg.clone().addr(addr.into()).reuse_port(true))
        .expect("sharing on purpose");
    assert_eq!(second.local_addr(), addr);
    for _ in 0..8 {
        let (status, body) = http_get(addr, "/");
        assert_eq!((status, body.as_str()), (200, "Hello, World!"));
    }
    // Nothing listens any more: a server starts without the flag.
    first.shutdown();
    first.join().unwrap();
    second.shutdown();
    second.join().unwrap();
    let third = reactor::Server::start(&cfg.clone().addr(addr.into())).expect("a free address");
    third.shutdown();
    third.join().unwrap();
}
