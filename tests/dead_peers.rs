//! Peers that vanish without a word (a cable pulled, a NAT entry dropped): no FIN, no
//! RST ever comes. Two network namespaces joined by a veth pair; reactor in one with
//! the idle timeout off and a write timeout far longer than the test, so neither can be
//! what closes a connection; clients in the other hold idle connections and
//! connections with an answer pending; then the clients' end of the link goes down.
//! Keep-alive must close the idle ones and TCP_USER_TIMEOUT the ones with data
//! unacknowledged, each within its bound and under its own counted reason, while the
//! server goes on serving others.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Two namespaces and a veth pair between them; removed on drop.
struct Pair {
    server: String,
    client: String,
    client_link: String,
}

impl Pair {
    fn new() -> Option<Pair> {
        let root = unsafe { libc::geteuid() } == 0;
        if !have("ip") || !root {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root, with ip");
            eprintln!("skipping: network namespaces need root and ip (iproute2)");
            return None;
        }
        let id = std::process::id() % 100_000;
        let p = Pair {
            server: format!("rx-dps-{id}"),
            client: format!("rx-dpc-{id}"),
            client_link: format!("rxc{id}"),
        };
        let server_link = format!("rxs{id}");
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {}", args.join(" "));
        };
        ip(&["netns", "add", &p.server]);
        ip(&["netns", "add", &p.client]);
        ip(&[
            "link",
            "add",
            &server_link,
            "type",
            "veth",
            "peer",
            "name",
            &p.client_link,
        ]);
        ip(&["link", "set", &server_link, "netns", &p.server]);
        ip(&["link", "set", &p.client_link, "netns", &p.client]);
        ip(&[
            "-n",
            &p.server,
            "addr",
            "add",
            "10.231.0.1/24",
            "dev",
            &server_link,
        ]);
        ip(&[
            "-n",
            &p.client,
            "addr",
            "add",
            "10.231.0.2/24",
            "dev",
            &p.client_link,
        ]);
        for (ns, link) in [(&p.server, &server_link), (&p.client, &p.client_link)] {
            ip(&["-n", ns, "link", "set", link, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(p)
    }

    /// Runs `f` on a thread that entered namespace `ns`: its sockets live there.
    fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace");
            // SAFETY: setns on this thread only, with a namespace descriptor.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn vanished_peers_are_closed_by_keepalive_and_the_user_timeout() {
    let Some(pair) = Pair::new() else {
        return;
    };
    let addr: SocketAddr = "10.231.0.1:7000".parse().unwrap();
    // Keep-alive after 2 s of silence, then 2 probes 1 s apart; data may stay
    // unacknowledged 4 s. The idle timeout is off and the write timeout 10 minutes.
    let srv = Server::start_in_netns(
        &pair.server,
        &format!(
            "--protocol echo --addr {addr} --threads 1 --idle-timeout 0 --write-timeout 600s \
             --keepalive-secs 2 --keepalive-interval 1 --keepalive-count 2 \
             --tcp-user-timeout 4s --stats-interval 1s"
        ),
    );
    const IDLE: usize = 5;
    const STUCK: usize = 3;
    // In the clients' namespace: idle connections (one echo each, then silence), and
    // connections that send far more than they read back, so the server holds output
    // the client's full window will not take.
    let held: Vec<TcpStream> = Pair::inside(&pair.client, move || {
        let mut held = Vec::new();
        for _ in 0..IDLE {
            let mut c = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            c.write_all(b"hi").unwrap();
            let mut b = [0u8; 2];
            c.read_exact(&mut b).unwrap();
            held.push(c);
        }
        for _ in 0..STUCK {
            let c = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
            c.set_nonblocking(true).unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let end = Instant::now() + DEADLINE;
            // Until the server stops reading (its output is over the mark) and the
            // buffers between are full.
            let mut blocked = 0;
            while blocked < 50 {
                assert!(Instant::now() < end, "the stuck client never filled up");
                match (&c).write(&chunk) {
                    Ok(_) => blocked = 0,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        blocked += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            held.push(c);
        }
        held
    });
    let opened = srv
        .wait_for_stats(|c| c["open"] == (IDLE + STUCK) as u64)
        .expect("every connection open");
    assert_eq!(opened["keepalive_timeouts"] + opened["user_timeouts"], 0);
    // The clients' end of the link goes down: nothing comes back, not even a RST.
    let down = Instant::now();
    let ok = Command::new("ip")
        .args(["-n", &pair.client, "link", "set", &pair.client_link, "down"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let closed = srv
        .wait_for_stats(|c| {
            c["keepalive_timeouts"] == IDLE as u64 && c["user_timeouts"] == STUCK as u64
        })
        .expect("every vanished peer closed under its own reason");
    let took = down.elapsed();
    eprintln!("closed {IDLE} idle and {STUCK} stuck vanished peers in {took:?}: {closed:?}");
    assert_eq!(closed["open"], 0);
    assert_eq!(
        closed["idle_timeouts"] + closed["write_timeouts"] + closed["io_errors"],
        0
    );
    // The bounds: 2 s + 2 probes x 1 s for the idle ones, 4 s for the stuck ones (a
    // stats line a second), with room for a loaded machine.
    assert!(took < Duration::from_secs(15), "{took:?}");
    // The server goes on serving.
    let echoed = Pair::inside(&pair.server, move || {
        let mut c = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(b"still here").unwrap();
        let mut b = [0u8; 10];
        c.read_exact(&mut b).unwrap();
        b
    });
    assert_eq!(&echoed, b"still here");
    drop(held);
    let (status, _) = srv.stop();
    assert_eq!(status.code(), Some(0));
}
