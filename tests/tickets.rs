//! TLS session tickets shared across instances (`--tls-ticket-keys`), checked with the
//! real `openssl s_client`: a session made with one instance resumes on another that
//! reads the same key file, over TLS 1.2 and 1.3, and on a successor after a
//! hand-over; not on an instance with another key file; and across one key rotation
//! (SIGHUP) but not two.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn folder(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("reactor-tickets-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// A key file of 48 bytes from `openssl rand`, mode 0600.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let out = Command::new("openssl")
        .args(["rand", "-out"])
        .arg(&p)
        .arg("48")
        .status()
        .expect("openssl runs");
    assert!(out.success());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// One HTTPS request with `openssl s_client` at `version` (`-tls1_2`, `-tls1_3`),
/// saving the session to `out` or offering the one in `inp`: "Reused" or "New".
fn s_client(addr: SocketAddr, version: &str, out: Option<&Path>, inp: Option<&Path>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        version,
        "-ign_eof",
    ]);
    if let Some(p) = out {
        cmd.arg("-sess_out").arg(p);
    }
    if let Some(p) = inp {
        cmd.arg("-sess_in").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs");
    // The answer comes after the TLS 1.3 tickets, so s_client has them when it saves.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let done = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&done.stdout).into_owned();
    assert!(text.contains("Hello, World!"), "no answer:\n{text}");
    if text.contains(&format!("Reused, TLSv1.{}", &version[6..])) {
        "Reused".into()
    } else if text.contains("New, TLSv1.") {
        "New".into()
    } else {
        panic!("neither new nor reused:\n{text}")
    }
}

fn start(certs: &TestCerts, keys: &Path) -> reactor::Server {
    in_process(&format!(
        "{} --tls-ticket-keys {}",
        certs.args(),
        keys.display()
    ))
}

#[test]
fn a_session_resumes_on_every_instance_with_the_same_key_file() {
    if !have("openssl") {
        panic!("openssl is missing (apt-get install openssl)");
    }
    let dir = folder("shared");
    let certs = TestCerts::make("tickets");
    let keys = key_file(&dir.0, "ticket.key");
    let other_keys = key_file(&dir.0, "other.key");
    let a = start(&certs, &keys);
    let b = start(&certs, &keys);
    let c = start(&certs, &other_keys);
    for v in ["-tls1_2", "-tls1_3"] {
        let sess = dir.0.join(format!("sess{v}"));
        assert_eq!(s_client(a.local_addr(), v, Some(&sess), None), "New", "{v}");
        assert_eq!(
            s_client(b.local_addr(), v, None, Some(&sess)),
            "Reused",
            "{v} on B"
        );
        assert_eq!(
            s_client(a.local_addr(), v, None, Some(&sess)),
            "Reused",
            "{v} on A"
        );
        assert_eq!(
            s_client(c.local_addr(), v, None, Some(&sess)),
            "New",
            "{v}, other key"
        );
    }
    let s = wait_stats(&b, |s| s.tls_resumed >= 2);
    assert_eq!(s.tls_handshakes, 2, "{s}");
    assert_eq!(wait_stats(&c, |s| s.tls_handshakes >= 2).tls_resumed, 0);
}

#[test]
fn a_rotated_key_still_opens_its_sessions_once() {
    if !have("openssl") {
        panic!("openssl is missing (apt-get install openssl)");
    }
    let dir = folder("rotate");
    let certs = TestCerts::make("tickets-rotate");
    let keys = key_file(&dir.0, "ticket.key");
    let a = start(&certs, &keys);
    let sess = dir.0.join("sess");
    assert_eq!(
        s_client(a.local_addr(), "-tls1_3", Some(&sess), None),
        "New"
    );
    // Rotation (what SIGHUP does): a new key encrypts, the previous one still opens.
    std::fs::copy(key_file(&dir.0, "next.key"), &keys).unwrap();
    a.reload_tls().unwrap();
    assert_eq!(
        s_client(a.local_addr(), "-tls1_3", None, Some(&sess)),
        "Reused"
    );
    std::fs::copy(key_file(&dir.0, "third.key"), &keys).unwrap();
    a.reload_tls().unwrap();
    assert_eq!(
        s_client(a.local_addr(), "-tls1_3", None, Some(&sess)),
        "New"
    );
    // A key file others may read is refused, at start and at a reload.
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(a.reload_tls().is_err());
    let cfg = <reactor::Config as clap::Parser>::try_parse_from(
        format!(
            "reactor --addr 127.0.0.1:0 {} --tls-ticket-keys {}",
            certs.args(),
            keys.display()
        )
        .split_whitespace(),
    )
    .unwrap();
    let err = reactor::Server::start(&cfg).err().expect("refused");
    assert!(err.to_string().contains("0600"), "{err}");
}

/// The successor of a hand-over reads the same key file: sessions made with the old
/// server resume on it.
#[test]
fn a_session_resumes_on_the_successor_after_a_handover() {
    if !have("openssl") {
        panic!("openssl is missing (apt-get install openssl)");
    }
    let dir = folder("handover");
    let certs = TestCerts::make("tickets-handover");
    let keys = key_file(&dir.0, "ticket.key");
    let h = dir.0.join("h.sock");
    let tls = format!("{} --tls-ticket-keys {}", certs.args(), keys.display());
    let mut old = Server::start(&format!("--handover {} {tls}", h.display()));
    assert!(
        old.wait_for_line(|l| l.contains("offering the listeners"))
            .is_some()
    );
    let addr = old.addr;
    let sess = dir.0.join("sess");
    assert_eq!(s_client(addr, "-tls1_2", Some(&sess), None), "New");
    let new = Server::start(&format!("--takeover {} {tls}", h.display()));
    assert!(new.wait_for_line(|l| l.contains("took over")).is_some());
    assert_eq!(old.wait_exit().code(), Some(0));
    assert_eq!(s_client(addr, "-tls1_2", None, Some(&sess)), "Reused");
    let (status, counters) = new.stop();
    assert_eq!(status.code(), Some(0));
    assert_eq!(counters.get("tls_resumed"), Some(&1), "{counters:?}");
}
