//! Shared test helpers: start the real `reactor` binary on port 0, read its log, talk to
//! it over real sockets on 127.0.0.1, stop it with SIGTERM.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous: the machine running the tests may be loaded.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Server {
    /// Starts `reactor` with `args` (split at spaces), on 127.0.0.1:0 and one thread
    /// unless `args` say otherwise, and waits for its "listening on" line.
    pub fn start(args: &str) -> Server {
        Server::start_cmd(Command::new(binary()), args)
    }

    /// Like [`start`], running `sh -c "<prefix> exec reactor ..."` (to set limits).
    pub fn start_with_shell(prefix: &str, args: &str) -> Server {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{prefix} exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_reactor"));
        Server::start_cmd(cmd, args)
    }

    /// Like [`start`], running the binary inside network namespace `ns`
    /// (`ip netns exec`, which becomes the server: same pid, signals reach it).
    pub fn start_in_netns(ns: &str, args: &str) -> Server {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(binary());
        Server::start_cmd(cmd, args)
    }

    /// Like [`start`], with `RUST_LOG` set to `log` (e.g. `reactor=debug`).
    pub fn start_logging(log: &str, args: &str) -> Server {
        Server::start_cmd_logging(Command::new(binary()), args, log)
    }

    pub fn start_cmd(cmd: Command, args: &str) -> Server {
        Server::start_cmd_logging(cmd, args, "info")
    }

    fn start_cmd_logging(mut cmd: Command, args: &str, log: &str) -> Server {
        let args: Vec<&str> = args.split_whitespace().collect();
        let mut all: Vec<&str> = Vec::new();
        if !args.contains(&"--addr") {
            all.extend(["--addr", "127.0.0.1:0"]);
        }
        if !args.contains(&"--threads") {
            all.extend(["--threads", "1"]);
        }
        all.extend(&args);
        let mut child = cmd
            .args(&all)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start reactor");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Default::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[server] {line}");
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        let mut s = Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let line = s
            .wait_for_line(|l| l.contains("listening on "))
            .expect("server printed its address");
        let rest = line.split("listening on ").nth(1).unwrap();
        // A Unix socket's server keeps 0.0.0.0:0.
        if let Ok(addr) = rest
            .split(':')
            .take(2)
            .collect::<Vec<_>>()
            .join(":")
            .parse()
        {
            s.addr = addr;
        }
        s
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits (up to [`DEADLINE`]) for a log line matching `pred`.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_line_after(0, pred)
    }

    /// Like [`wait_for_line`] but looks only at lines from index `from` on.
    pub fn wait_for_line_after(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + DEADLINE;
        let (lock, cv) = &*self.log;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().skip(from).find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            lines = cv.wait_timeout(lines, end - now).unwrap().0;
        }
    }

    pub fn log_len(&self) -> usize {
        self.log.0.lock().unwrap().len()
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits for a periodic `stats` line (needs `--stats-interval`) satisfying `pred`.
    pub fn wait_for_stats(
        &self,
        pred: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> Option<HashMap<String, u64>> {
        self.wait_for_line(|l| l.contains(" stats ") && pred(&counters(l)))
            .map(|l| counters(&l))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM, then waits for exit; returns the status and the final counters.
    pub fn stop(mut self) -> (ExitStatus, HashMap<String, u64>) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        let line = self
            .wait_for_line(|l| l.contains("stopped: "))
            .expect("server logged its final counters");
        (status, counters(&line))
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// utime + stime of the server, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat(5), counted from field 3 here.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The library's configuration for a test server in this process: 127.0.0.1:0, one
/// thread, no periodic stats line (for `reactor::Server::start_with` and a handler of
/// the test's own).
pub fn loopback_config() -> reactor::Config {
    reactor::Config::default()
        .addr("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .stats_interval(Duration::ZERO)
}

/// Starts a server in this process, with the binary's command-line `args` (on
/// 127.0.0.1:0 and one thread unless they say otherwise): for tests that need no signal,
/// no limit of their own and no log line. `local_addr()`, `stats()` and
/// `metrics_addr()` stand in for reading the log.
pub fn in_process(args: &str) -> reactor::Server {
    use clap::Parser;
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut all = vec!["reactor"];
    if !args.contains(&"--addr") {
        all.extend(["--addr", "127.0.0.1:0"]);
    }
    if !args.contains(&"--threads") {
        all.extend(["--threads", "1"]);
    }
    all.extend(&args);
    let cfg = reactor::Config::try_parse_from(all).expect("valid arguments");
    reactor::Server::start(&cfg).expect("server starts")
}

/// Waits (up to [`DEADLINE`]) for the in-process server's counters to satisfy `pred`.
pub fn wait_stats(
    srv: &reactor::Server,
    pred: impl Fn(&reactor::stats::Counters) -> bool,
) -> reactor::stats::Counters {
    let end = Instant::now() + DEADLINE;
    loop {
        let c = srv.stats();
        if pred(&c) {
            return c;
        }
        assert!(Instant::now() < end, "counters never got there: {c}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET path` over a fresh connection with `Connection: close`; returns the status
/// and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = connect(addr);
    send(
        &mut c,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let resp = read_response(&mut std::io::BufReader::new(c));
    (
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    )
}

/// The server binary under test: this build's, or `REACTOR_TEST_BIN` (to run a test
/// against an older build and see it fail).
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("REACTOR_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_reactor").into())
}

/// Parses `key=value` counters out of a log line.
pub fn counters(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Raises this process's open-files soft limit to its hard limit.
pub fn raise_fd_limit() {
    reactor::server::raise_nofile_limit().expect("rlimit");
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the peer closes (or [`DEADLINE`]); returns what came and whether the
/// close was seen (EOF or reset).
pub fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let end = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    (out, false)
}

/// One HTTP response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads one HTTP response (with a Content-Length body) from `r`.
pub fn read_response(r: &mut impl BufRead) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(version.starts_with("HTTP/1."), "status line {line:?}");
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header has a colon");
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .map(|v| v.parse().expect("numeric content-length"))
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    Response {
        status,
        headers,
        body,
    }
}

/// Writes all of `data`.
pub fn send(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write");
}

/// Whether a program is on PATH. Tests that need one fail on CI (CI=true) when it is
/// missing, since .ci/run installs it, and are skipped with a note elsewhere.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is missing on CI"
        );
        eprintln!("skipping: {program} is not installed (bash .ci/run installs it)");
    }
    found
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

/// HAProxy in the foreground with the configuration at `cfg`, quiet; killed on drop.
#[allow(dead_code)]
pub fn haproxy(cfg: &std::path::Path) -> Killed {
    Killed(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy (apt-get install haproxy)"),
    )
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and a leaf certificate for localhost and 127.0.0.1 signed by it (ECDSA
/// P-256), made with the `openssl` command in a directory removed on drop;
/// `cert.pem` holds the chain (leaf, then CA).
pub struct TestCerts {
    pub dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCerts {
    pub fn make(tag: &str) -> TestCerts {
        let dir = std::env::temp_dir().join(format!("reactor-certs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=reactor test CA",
        ]);
        run(&ca);
        let mut leaf = vec!["req"];
        leaf.extend(ec);
        leaf.extend([
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&leaf);
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.pem",
        ]);
        let chain = [
            std::fs::read(dir.join("leaf.pem")).unwrap(),
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ]
        .concat();
        std::fs::write(dir.join("cert.pem"), chain).unwrap();
        TestCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        }
    }

    /// `--tls-cert ... --tls-key ...`.
    pub fn args(&self) -> String {
        format!(
            "--tls-cert {} --tls-key {}",
            self.cert.display(),
            self.key.display()
        )
    }

    /// The trust anchors of a client of this server.
    pub fn roots(&self) -> rustls::RootCertStore {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One IPv4 TCP socket of this host, from /proc/net/tcp.
pub struct TcpRow {
    /// Local address as the kernel writes it (`0100007F:1F90` is 127.0.0.1:8080).
    pub local: String,
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state number ([`TCP_LISTEN`], [`TCP_FIN_WAIT1`], ...).
    pub state: u8,
    /// Bytes in its send queue.
    pub tx_queue: u64,
    /// The socket's inode: 0 once no process holds it (closed, the kernel finishing
    /// the connection alone).
    pub inode: u64,
}

pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_LISTEN: u8 = 0x0A;

/// Every IPv4 TCP socket of this host (empty if /proc/net/tcp cannot be read).
pub fn tcp_table() -> Vec<TcpRow> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let hex_port = |addr: &str| {
        addr.split(':')
            .nth(1)
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            Some(TcpRow {
                local: f[1].to_string(),
                local_port: hex_port(f[1])?,
                remote_port: hex_port(f[2])?,
                state: u8::from_str_radix(f[3], 16).ok()?,
                tx_queue: f[4]
                    .split(':')
                    .next()
                    .and_then(|q| u64::from_str_radix(q, 16).ok())?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// Runs `reactor-chaos --addr ADDR --json ARGS` and returns its JSON summary; fails the
/// test if it reports a loss (exit status not 0) or runs past `deadline` (then it is
/// killed).
pub fn run_chaos(addr: SocketAddr, args: &str, deadline: Duration) -> serde_json::Value {
    let child = Command::new(env!("CARGO_BIN_EXE_reactor-chaos"))
        .args(["--addr", &addr.to_string(), "--json"])
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start reactor-chaos");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("reactor-chaos ran"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid, not yet reaped (the waiting
            // thread has not returned).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("reactor-chaos {args} did not finish in {deadline:?}");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "reactor-chaos {args} failed:\n{stderr}{stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("JSON summary {stdout:?}: {e}"))
}

/// A line protocol's decode for the tests' pooled codecs: each complete line becomes a
/// call to the pool, as far as the connection's limit allows.
pub fn decode_lines(
    input: &[u8],
    out: &mut reactor::service::Calls<'_, String>,
    cx: &reactor::protocol::Cx,
) -> reactor::protocol::Decoded {
    let mut d = reactor::protocol::Decoded::default();
    while let Some(nl) = input[d.consumed..].iter().position(|&b| b == b'\n') {
        if d.at_limit(cx, out.out()) {
            break;
        }
        let line = &input[d.consumed..d.consumed + nl];
        out.call(String::from_utf8_lossy(line).into_owned());
        d.consumed += nl + 1;
        d.requests += 1;
    }
    d
}
