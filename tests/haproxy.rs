//! The real HAProxy (Debian's package; `.ci/run` installs it) in front of two reactor
//! instances, with deploy/haproxy.cfg itself (its addresses replaced by the test's):
//! traffic reaches both, reactor sees the client's address from the PROXY v2 header,
//! and draining one instance under continuous load loses no request while HAProxy
//! marks it down through /health. And HAProxy passing TLS through (`mode tcp`,
//! `send-proxy-v2`) to a reactor that terminates it.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn metrics_addr(srv: &Server) -> SocketAddr {
    let line = srv
        .wait_for_line(|l| l.contains("metrics on http://"))
        .unwrap();
    line.split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap()
}

fn requests(metrics: SocketAddr) -> u64 {
    let (_, text) = http_get(metrics, "/metrics");
    text.lines()
        .find(|l| l.starts_with("reactor_requests_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Haproxy {
    /// Killed when the test ends.
    _child: Killed,
    stats: std::path::PathBuf,
}

impl Haproxy {
    /// Each server's status ("UP", "DOWN", ...) from the stats socket.
    fn status(&self, server: &str) -> Option<String> {
        let mut s = UnixStream::connect(&self.stats).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        s.read_to_string(&mut csv).ok()?;
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > 17 && f[0] == "reactor" && f[1] == server)
            .map(|f| f[17].to_string())
    }

    fn wait_status(&self, server: &str, want: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status(server);
            if st.as_deref().is_some_and(|s| s.starts_with(want)) {
                return;
            }
            assert!(Instant::now() < end, "{server} never {want}: {st:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A request through HAProxy from source address `from`, on a connection of its own.
fn through(front: SocketAddr, from: &str) -> Result<(), String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
        .map_err(|e| format!("bind: {e}"))?;
    sock.connect_timeout(&front.into(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    c.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
    if got.starts_with(b"HTTP/1.1 200 OK") && got.ends_with(b"Hello, World!") {
        Ok(())
    } else {
        Err(format!("answer {:?}", String::from_utf8_lossy(&got)))
    }
}

#[test]
fn haproxy_with_send_proxy_v2_in_front_of_two_instances() {
    if !have("haproxy") {
        return;
    }
    let args = |ip: &str| {
        format!(
            "--protocol http --addr {ip}:0 --proxy-protocol v2 --proxy-from 127.0.0.0/8 \
             --metrics-addr {ip}:0 --drain-timeout 20s"
        )
    };
    let r1 = Server::start_logging("reactor=debug", &args("127.0.0.2"));
    let r2 = Server::start_logging("reactor=debug", &args("127.0.0.3"));
    let (m1, m2) = (metrics_addr(&r1), metrics_addr(&r2));
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = std::env::temp_dir().join(format!("reactor-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join("stats.sock");
    let cfg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
        .unwrap()
        .replace("maxconn 50000", "maxconn 2000")
        .replace("127.0.0.1:8080", &front.to_string())
        .replace(
            "127.0.0.1:8081 port 9101",
            &format!("{} port {}", r1.addr, m1.port()),
        )
        .replace(
            "127.0.0.1:8082 port 9102",
            &format!("{} port {}", r2.addr, m2.port()),
        )
        .replace("/run/haproxy-reactor.sock", stats.to_str().unwrap());
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let ha = Haproxy {
        _child: haproxy(&cfg_path),
        stats,
    };
    ha.wait_status("r1", "UP");
    ha.wait_status("r2", "UP");

    // Traffic through HAProxy reaches both, and reactor sees the client's address.
    for _ in 0..20 {
        through(front, "127.0.0.9").unwrap();
    }
    // Counters are published within 100 ms.
    let end = Instant::now() + DEADLINE;
    let (mut n1, mut n2) = (0, 0);
    while n1 + n2 < 20 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        (n1, n2) = (requests(m1), requests(m2));
    }
    assert!(n1 > 0 && n2 > 0 && n1 + n2 == 20, "r1 {n1} r2 {n2}");
    let seen = |s: &Server| s.lines().iter().any(|l| l.contains("client 127.0.0.9:"));
    assert!(
        seen(&r1) && seen(&r2),
        "the PROXY header's client address is logged"
    );

    // Continuous load through HAProxy while r1 drains.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = through(front, "127.0.0.10") {
                        failures.push(e);
                    }
                }
                failures
            })
        })
        .collect();
    let wait_attempts = |n: u64| {
        let target = attempts.load(Ordering::SeqCst) + n;
        let end = Instant::now() + DEADLINE;
        while attempts.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < end, "the load stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_attempts(200);
    // A request in progress on r1 keeps its drain going, so r1 is still alive (and
    // answering /health with 503) when HAProxy takes it out.
    let mut slow = connect(r1.addr);
    let mut header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        ("127.0.0.11:4000".parse::<SocketAddr>().unwrap(), r1.addr),
    )
    .build()
    .unwrap();
    header.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n");
    send(&mut slow, &header);
    assert!(
        r1.wait_for_line(|l| l.contains("client 127.0.0.11:"))
            .is_some(),
        "r1 read the slow request's header"
    );
    let mut r1 = r1;
    r1.signal(libc::SIGTERM);
    ha.wait_status("r1", "DOWN");
    assert!(r1.child.try_wait().unwrap().is_none(), "r1 still drains");
    let r2_before = requests(m2);
    wait_attempts(200);
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<String> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let total = attempts.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let end = Instant::now() + DEADLINE;
    while requests(m2) < r2_before + 150 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(requests(m2) >= r2_before + 150, "r2 took over");
    // The request in progress is still answered, then r1 exits.
    send(&mut slow, b"\r\n");
    assert_eq!(read_response(&mut BufReader::new(slow)).status, 200);
    assert_eq!(r1.wait_exit().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp; no connection
/// is made, so the proxy does not open one to its server).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    tcp_table()
        .iter()
        .any(|r| r.local == want && r.state == TCP_LISTEN)
}

/// The standard deployment of TLS behind a load balancer: HAProxy passes the TLS
/// stream through untouched (`mode tcp`) and opens each connection to reactor with a
/// PROXY v2 header; reactor reads the header, then terminates TLS. Defect: reactor
/// refused `--tls-cert` with `--proxy-protocol` at start.
#[test]
fn haproxy_tls_passthrough_with_send_proxy_v2() {
    if !have("haproxy") || !have("openssl") || !have("curl") {
        return;
    }
    let certs = TestCerts::make("haproxy-tls");
    let srv = in_process(&format!(
        "--protocol http --proxy-protocol v2 --proxy-from 127.0.0.0/8 {}",
        certs.args()
    ));
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("reactor-haproxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!(
        "global\n    maxconn 100\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n\
         frontend tls_in\n    bind 127.0.0.1:{port}\n    default_backend reactor\n\
         backend reactor\n    server s1 {} send-proxy-v2\n",
        srv.local_addr()
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let _ha = haproxy(&cfg_path);
    let end = Instant::now() + DEADLINE;
    while !listening(port) {
        assert!(Instant::now() < end, "haproxy never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "20", "--cacert"])
        .arg(&certs.ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl through haproxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, World!");
    let c = wait_stats(&srv, |c| {
        c.requests >= 1 && c.proxy_headers >= 1 && c.tls_handshakes >= 1
    });
    assert_eq!(c.tls_handshake_failures(), 0, "{c}");
    let _ = std::fs::remove_dir_all(&dir);
}
