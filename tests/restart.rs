//! Restarts that lose no connection, under continuous load (clients opening a new
//! connection per request), three restarts in a row each:
//!
//! - the hand-over: the old server passes its listening sockets to the new one over a
//!   Unix socket (`--handover` / `--takeover`), no sysctl needed;
//! - the plain SO_REUSEPORT procedure (start the new server on the same address, then
//!   SIGTERM the old) on a host prepared by `tuning/sysctl.sh apply`, which sets
//!   `net.ipv4.tcp_migrate_req=1`: in a network namespace made for the test.
//!
//! Every attempt must get its answer: a failed connect, a reset or a missing answer
//! each count as a loss.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

struct Load {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

/// `clients` threads, each opening a connection per request to `addr` (inside network
/// namespace `ns` if given) until stopped.
fn start_load(addr: SocketAddr, clients: usize, ns: Option<&str>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let threads = (0..clients)
        .map(|_| {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            let ns = ns.map(|n| format!("/var/run/netns/{n}"));
            std::thread::spawn(move || {
                if let Some(path) = ns {
                    let f = std::fs::File::open(&path).expect("the namespace");
                    // SAFETY: setns on this thread only, with a namespace descriptor.
                    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(r, 0, "setns");
                }
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    if let Err(why) = one_request(addr) {
                        failures.push(why);
                    }
                }
                failures
            })
        })
        .collect();
    Load {
        stop,
        attempts,
        threads,
    }
}

fn one_request(addr: SocketAddr) -> Result<(), String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // A round trip's worth of pause before the request, as a real client over a real
    // network has: the server may accept the connection before its request arrives.
    std::thread::sleep(Duration::from_millis(2));
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .map_err(|e| format!("read: {e} after {} bytes", got.len()))?;
    if got.starts_with(b"HTTP/1.1 200 OK") && got.ends_with(b"Hello, World!") {
        Ok(())
    } else {
        Err(format!("answer: {:?}", String::from_utf8_lossy(&got)))
    }
}

impl Load {
    fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Waits until `n` more attempts were made (the load really runs across a step).
    fn wait_for(&self, n: u64) {
        let target = self.attempts() + n;
        let end = std::time::Instant::now() + DEADLINE;
        while self.attempts() < target {
            assert!(std::time::Instant::now() < end, "the load stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the load and asserts that every attempt got its answer.
    fn finish_without_loss(self, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let failures: Vec<String> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let attempts = self.attempts.load(Ordering::SeqCst);
        eprintln!("{what}: {attempts} attempts, {} failed", failures.len());
        assert!(
            failures.is_empty(),
            "{what}: {} of {attempts} lost: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
}

#[test]
fn three_handovers_under_continuous_load_lose_no_connection() {
    let dir = std::env::temp_dir().join(format!("reactor-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("handover.sock");
    let path = sock.to_str().unwrap();
    let mut old = Server::start(&format!("--protocol http --threads 2 --handover {path}"));
    let addr = old.addr;
    let load = start_load(addr, 8, None);
    load.wait_for(300);
    for round in 0..3 {
        let new = Server::start(&format!(
            "--protocol http --takeover {path} --handover {path}"
        ));
        assert_eq!(new.addr.port(), addr.port(), "round {round}");
        assert!(
            new.wait_for_line(|l| l.contains("took over 2 listeners"))
                .is_some(),
            "round {round}"
        );
        assert_eq!(old.wait_exit().code(), Some(0), "round {round}");
        assert!(
            old.wait_for_line(|l| l.contains("handed the listeners over"))
                .is_some()
        );
        load.wait_for(300);
        old = new;
    }
    load.finish_without_loss("hand-over");
    let (status, _) = old.stop();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network namespace deleted when dropped; `None` where one cannot be made.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        if !have("ip") {
            return None;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("skipping: making a network namespace needs root");
            return None;
        }
        let name = format!("reactor-restart-{}", std::process::id());
        let ok = |args: &[&str]| Command::new("ip").args(args).status().unwrap().success();
        assert!(ok(&["netns", "add", &name]), "ip netns add");
        let ns = Netns(name);
        assert!(ok(&[
            "netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"
        ]));
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn three_reuseport_restarts_with_tcp_migrate_req_lose_no_connection() {
    let Some(ns) = Netns::new() else { return };
    let state = std::env::temp_dir().join(format!("reactor-restart-{}.state", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/sysctl.sh");
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "bash", script, "apply", "--scope", "net", "--state",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let migrate = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "cat",
            "/proc/sys/net/ipv4/tcp_migrate_req",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&migrate.stdout).trim(), "1");
    let args = "--protocol http --threads 2 --addr 127.0.0.1:18080 --reuse-port";
    let mut old = Server::start_in_netns(&ns.0, args);
    let addr: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    let load = start_load(addr, 32, Some(&ns.0));
    load.wait_for(300);
    for round in 0..3 {
        let new = Server::start_in_netns(&ns.0, args);
        load.wait_for(100);
        old.signal(libc::SIGTERM);
        assert_eq!(old.wait_exit().code(), Some(0), "round {round}");
        load.wait_for(300);
        old = new;
    }
    load.finish_without_loss("reuseport");
    let (status, _) = old.stop();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(&state);
}

/// `systemd-socket-activate` (Debian's systemd package) holding 127.0.0.1:`port` and
/// running `script` under `sh` when the first connection comes; the script's
/// `$REACTOR` is the server binary. Its standard error goes to `log`.
fn socket_activate(port: u16, script: &str, log: &std::path::Path) -> Killed {
    // It passes only the environment it is told to (-E).
    let child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}")])
        .arg("-E")
        .arg(format!("REACTOR={}", binary().display()))
        .args(["-E", "RUST_LOG=info", "sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("systemd-socket-activate runs (apt-get install systemd)");
    // Listening, from /proc/net/tcp: no connection is made, which would start the
    // script.
    let want = format!("0100007F:{port:04X}");
    let end = std::time::Instant::now() + DEADLINE;
    while !tcp_table()
        .iter()
        .any(|r| r.local == want && r.state == TCP_LISTEN)
    {
        assert!(std::time::Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Killed(child)
}

/// Waits until `log` has a line containing `what`.
fn wait_log(log: &std::path::Path, what: &str) -> String {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(what)) {
            return l.to_string();
        }
        assert!(
            std::time::Instant::now() < end,
            "never logged {what:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Socket activation: started by `systemd-socket-activate` with the listening socket
/// as descriptor 3, the server serves it (with two shards) instead of binding.
#[test]
fn served_through_systemd_socket_activate() {
    assert!(
        have("systemd-socket-activate"),
        "systemd-socket-activate is missing"
    );
    let dir = std::env::temp_dir().join(format!("reactor-activate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("server.log");
    let port = free_port();
    // exec: the server is the process systemd-socket-activate started (LISTEN_PID).
    let _sa = socket_activate(
        port,
        "exec \"$REACTOR\" --threads 2 --addr 127.0.0.1:1",
        &log,
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..20 {
        one_request(addr).expect("served through the inherited socket");
    }
    let line = wait_log(&log, "socket activation: serving 1 inherited listener");
    assert!(!line.is_empty());
    // It served the inherited socket, not --addr (port 1 could not have been bound).
    wait_log(&log, &format!("listening on 127.0.0.1:{port}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The manager keeps the socket while the server restarts, as systemd does for a
/// service with a `.socket` unit: three restarts (SIGTERM, drain, a new server on the
/// same inherited socket) under continuous load, and no connection fails.
#[test]
fn three_restarts_under_socket_activation_lose_no_connection() {
    assert!(
        have("systemd-socket-activate"),
        "systemd-socket-activate is missing"
    );
    let dir = std::env::temp_dir().join(format!("reactor-reactivate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (log, pid, stop) = (dir.join("server.log"), dir.join("pid"), dir.join("stop"));
    let port = free_port();
    // The shell holds descriptor 3 for good; each server is a child that takes it
    // (LISTEN_PID set to its own pid before the exec), as systemd would start it.
    let script = format!(
        "while [ ! -e {stop} ]; do sh -c 'echo $$ > {pid}; export LISTEN_PID=$$; \
         exec \"$REACTOR\" --threads 2 --drain-grace 1s'; done",
        stop = stop.display(),
        pid = pid.display()
    );
    let _sa = socket_activate(port, &script, &log);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let load = start_load(addr, 8, None);
    load.wait_for(300);
    let server_pid = || -> i32 {
        std::fs::read_to_string(&pid)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .expect("a server pid")
    };
    for round in 0..3 {
        let before = server_pid();
        // SAFETY: a signal to the server the script started.
        unsafe { libc::kill(before, libc::SIGTERM) };
        let end = std::time::Instant::now() + DEADLINE;
        while std::fs::read_to_string(&pid)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            == Some(before)
        {
            assert!(
                std::time::Instant::now() < end,
                "round {round}: no new server"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        load.wait_for(300);
    }
    load.finish_without_loss("socket activation");
    std::fs::write(&stop, "").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(server_pid(), libc::SIGTERM) };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.matches("socket activation: serving 1 inherited listener")
            .count(),
        4,
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
