//! Listening on a Unix socket (`--addr unix:/path`): served to `curl --unix-socket`,
//! plain and TLS, and to the real HAProxy through a `unix@` server line with a PROXY
//! v2 header; the socket file's mode set, a stale file taken over, a live server's or
//! a file of another kind refused, and the file removed at exit.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A folder of the test's own for sockets (a Unix socket path is at most 107 bytes,
/// so it is kept short).
fn folder(tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/rx-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(args: &str) -> reactor::Server {
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut all = vec!["reactor", "--threads", "2", "--stats-interval", "0"];
    all.extend(&args);
    let cfg = <reactor::Config as clap::Parser>::try_parse_from(all).expect("valid arguments");
    reactor::Server::start(&cfg).expect("server starts")
}

/// `curl --unix-socket PATH ARGS... URL`: the status line's code and the body.
fn curl(socket: &Path, extra: &[&str], url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.to_string(),
        body.to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn curl_over_a_unix_socket_with_its_mode_and_the_file_removed_at_exit() {
    let dir = folder("plain");
    let sock = dir.join("r.sock");
    let srv = start(&format!("--addr unix:{} --unix-mode 600", sock.display()));
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for _ in 0..4 {
        assert_eq!(
            curl(&sock, &[], "http://localhost/"),
            ("200".into(), "Hello, World!".into())
        );
    }
    let s = wait_stats(&srv, |c| c.requests == 4);
    assert_eq!(s.rejected, 0);
    srv.shutdown();
    srv.join().unwrap();
    assert!(!sock.exists(), "the socket file is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_over_a_unix_socket() {
    let dir = folder("tls");
    let sock = dir.join("t.sock");
    let certs = TestCerts::make("unix-tls");
    let srv = start(&format!("--addr unix:{} {}", sock.display(), certs.args()));
    let ca = certs.ca.display().to_string();
    assert_eq!(
        curl(&sock, &["--cacert", &ca], "https://localhost/"),
        ("200".into(), "Hello, World!".into())
    );
    wait_stats(&srv, |c| c.tls_handshakes >= 1 && c.requests >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stale_socket_is_taken_over_and_a_live_one_or_another_file_refused() {
    let dir = folder("stale");
    let sock = dir.join("s.sock");
    // A crashed server's socket: the file is there, nobody listens. Bound but never
    // listening, so that a child another test thread forks at that moment (holding a
    // copy of the descriptor until its exec) cannot make it look alive.
    let stale = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    stale
        .bind(&socket2::SockAddr::unix(&sock).unwrap())
        .unwrap();
    drop(stale);
    assert!(sock.exists());
    let live = start(&format!("--addr unix:{}", sock.display()));
    assert_eq!(curl(&sock, &[], "http://localhost/").0, "200");
    // A second server on the live socket is refused, and the first serves on.
    let cfg = reactor::Config::default()
        .addr(format!("unix:{}", sock.display()).parse().unwrap())
        .threads(1);
    let err = reactor::Server::start(&cfg).err().expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains("already in use"), "{err}");
    assert_eq!(curl(&sock, &[], "http://localhost/").0, "200");
    live.shutdown();
    live.join().unwrap();
    // A file that is not a socket is never removed.
    let plain = dir.join("notes.txt");
    std::fs::write(&plain, "keep me").unwrap();
    let cfg = cfg.addr(format!("unix:{}", plain.display()).parse().unwrap());
    let err = reactor::Server::start(&cfg).err().expect("refused");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");
    let _ = std::fs::remove_dir_all(&dir);
}

/// HAProxy in `mode` (http or tcp) on a free port of 127.0.0.1, passing every
/// connection to the Unix socket `sock` with a PROXY v2 header; and the port.
fn haproxy_to(dir: &Path, sock: &Path, mode: &str) -> (Killed, u16) {
    assert!(
        have("haproxy"),
        "haproxy is missing (apt-get install haproxy)"
    );
    let port = free_port();
    let cfg = format!(
        "global\n    maxconn 100\n\
         defaults\n    mode {mode}\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n\
         frontend front\n    bind 127.0.0.1:{port}\n    default_backend reactor\n\
         backend reactor\n    server s1 unix@{} send-proxy-v2\n",
        sock.display()
    );
    let cfg_path = dir.join(format!("haproxy-{mode}.cfg"));
    std::fs::write(&cfg_path, cfg).unwrap();
    (haproxy(&cfg_path), port)
}

/// Waits (curl, again and again) until `url` through HAProxy on `port` answers.
fn until_hello(port: u16, extra: &[&str], url: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "Hello, World!" {
            return;
        }
        assert!(Instant::now() < end, "nothing through haproxy on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// HAProxy on the same host reaches reactor over a Unix socket (`server s1
/// unix@PATH send-proxy-v2`): the PROXY header carries the client's address.
#[test]
fn haproxy_reaches_reactor_over_a_unix_socket_with_proxy_v2() {
    let dir = folder("haproxy");
    let sock = dir.join("h.sock");
    let srv = start(&format!(
        "--addr unix:{} --proxy-protocol v2",
        sock.display()
    ));
    let (_ha, port) = haproxy_to(&dir, &sock, "http");
    until_hello(port, &[], &format!("http://127.0.0.1:{port}/"));
    for _ in 0..3 {
        let (status, body) = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/");
        assert_eq!((status, body.as_str()), (200, "Hello, World!"));
    }
    let s = wait_stats(&srv, |c| c.proxy_headers >= 1 && c.requests >= 4);
    assert_eq!(
        s.proxy_missing + s.proxy_malformed + s.proxy_untrusted,
        0,
        "{s}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hand-over passes a Unix listener like a TCP one: the successor serves on the same
/// socket, nothing waiting is lost, and the old server leaves the file in place.
#[test]
fn a_unix_socket_is_handed_over_and_its_file_stays() {
    let dir = folder("handover");
    let sock = dir.join("u.sock");
    let h = dir.join("h.sock");
    let old = Server::start(&format!(
        "--protocol http --threads 2 --addr unix:{} --handover {}",
        sock.display(),
        h.display()
    ));
    assert!(
        old.wait_for_line(|l| l.contains("offering the listeners"))
            .is_some()
    );
    assert_eq!(curl(&sock, &[], "http://localhost/").0, "200");
    let mut old = old;
    let new = Server::start(&format!("--protocol http --takeover {}", h.display()));
    assert!(
        new.wait_for_line(|l| l.contains("took over 2 listeners"))
            .is_some()
    );
    assert!(
        new.wait_for_line(|l| l.contains(&format!("listening on unix:{}", sock.display())))
            .is_some()
    );
    assert_eq!(old.wait_exit().code(), Some(0));
    assert!(
        sock.exists(),
        "the old server left the socket to its successor"
    );
    for _ in 0..3 {
        assert_eq!(curl(&sock, &[], "http://localhost/").0, "200");
    }
    let (status, _) = new.stop();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// TLS through HAProxy to a Unix socket: HAProxy passes the TLS stream through (`mode
/// tcp`) with a PROXY v2 header on each connection to `unix@PATH`; reactor reads the
/// header, then terminates TLS.
#[test]
fn haproxy_passes_tls_to_a_unix_socket_with_proxy_v2() {
    let dir = folder("haproxy-tls");
    let sock = dir.join("t.sock");
    let certs = TestCerts::make("unix-haproxy-tls");
    let srv = start(&format!(
        "--addr unix:{} --proxy-protocol v2 {}",
        sock.display(),
        certs.args()
    ));
    let (_ha, port) = haproxy_to(&dir, &sock, "tcp");
    let ca = certs.ca.display().to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/");
    until_hello(port, &["--cacert", &ca, "--resolve", &resolve], &url);
    let c = wait_stats(&srv, |c| {
        c.requests >= 1 && c.proxy_headers >= 1 && c.tls_handshakes >= 1
    });
    assert_eq!(c.tls_handshake_failures(), 0, "{c}");
    let _ = std::fs::remove_dir_all(&dir);
}
