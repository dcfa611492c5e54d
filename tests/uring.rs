//! The io_uring backend (`--io uring`), against the real binary: the protocols, limits,
//! timeouts, backpressure and drain, and the fallback to epoll when io_uring is refused
//! (a seccomp filter makes `io_uring_setup` fail with EPERM, as Docker's default
//! profile and `kernel.io_uring_disabled` do).
//!
//! The rest of the suite runs on this backend too, under `REACTOR_IO=auto` (see
//! `.ci/run`); these tests pin the backend with the flag, whatever the environment says.
#![cfg(all(target_os = "linux", feature = "uring"))]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn uring(args: &str) -> Server {
    let srv = Server::start(&format!("--io uring {args}"));
    assert!(
        srv.lines()
            .iter()
            .any(|l| l.contains("listening on") && l.contains("io=uring")),
        "the server runs on io_uring"
    );
    srv
}

#[test]
fn echo_round_trips_every_byte_over_many_connections() {
    let srv = uring("--protocol echo");
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let addr = srv.addr;
            std::thread::spawn(move || {
                let c = connect(addr);
                let mut w = c.try_clone().unwrap();
                let data: Vec<u8> = (0..200_000u32).map(|j| (i * 7 + j) as u8).collect();
                let expect = data.clone();
                let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
                let mut got = vec![0u8; expect.len()];
                let mut r = c;
                r.read_exact(&mut got).unwrap();
                writer.join().unwrap();
                assert!(got == expect, "connection {i} got its bytes back in order");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (status, stats) = srv.stop();
    assert!(status.success());
    assert_eq!(stats["accepted"], 40);
    assert_eq!(stats["bytes_in"], 40 * 200_000);
    assert_eq!(stats["bytes_out"], 40 * 200_000);
    assert_eq!(stats["buffers_lent"], 0, "every pooled buffer came back");
}

#[test]
fn http_keep_alive_and_pipelined_requests_are_answered_in_order() {
    let srv = uring("--protocol http");
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for _ in 0..3 {
        send(&mut w, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let resp = read_response(&mut r);
        assert_eq!((resp.status, &resp.body[..]), (200, &b"Hello, World!"[..]));
    }
    let batch = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(50);
    send(&mut w, &batch);
    for _ in 0..50 {
        let resp = read_response(&mut r);
        assert_eq!(resp.status, 200);
    }
    let (status, stats) = srv.stop();
    assert!(status.success());
    assert_eq!(stats["requests"], 53);
}

#[test]
fn json_messages_are_answered_in_order() {
    let srv = uring("--protocol json");
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut batch = String::new();
    for i in 0..100 {
        batch.push_str(&format!("{{\"Uid\":\"u{i}\",\"Val\":\"v{i}\"}}\n"));
    }
    send(&mut w, batch.as_bytes());
    for i in 0..100 {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["Uid"], format!("u{i}"));
        assert_eq!(v["Val"], format!("server: hello, v{i}"));
    }
}

#[test]
fn a_bad_request_is_answered_400_and_closed() {
    let srv = uring("--protocol http");
    let mut c = connect(srv.addr);
    send(&mut c, b"NOT HTTP AT ALL\r\n\r\n");
    let (got, closed) = read_to_close(&mut c);
    assert!(closed, "closed after the error answer");
    let resp = read_response(&mut &got[..]);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.headers["connection"], "close");
    let (_, stats) = srv.stop();
    assert_eq!(stats["bad_requests"], 1);
}

#[test]
fn an_idle_connection_is_closed_by_the_idle_timeout() {
    let srv = uring("--protocol http --idle-timeout 300ms");
    let mut c = connect(srv.addr);
    send(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (got, closed) = read_to_close(&mut c);
    assert!(closed, "the idle connection was closed");
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    let (_, stats) = srv.stop();
    assert_eq!(stats["idle_timeouts"], 1);
}

#[test]
fn a_half_sent_request_is_closed_by_the_read_timeout() {
    let srv = uring("--protocol http --read-timeout 300ms --idle-timeout 60s");
    let mut c = connect(srv.addr);
    send(&mut c, b"GET / HTTP/1.1\r\nHost: exa");
    let (got, closed) = read_to_close(&mut c);
    assert!(closed && got.is_empty());
    let (_, stats) = srv.stop();
    assert_eq!(stats["read_timeouts"], 1);
}

/// A reader slower than the writer: the server stops receiving at the high-water mark
/// and goes on when the reader catches up, and every byte arrives in order.
#[test]
fn a_slow_reader_gets_every_byte_under_backpressure() {
    let srv = uring("--protocol echo --high-water 16384");
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let total = 4 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    let expect = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    // Let the server's output pile up against a reader that does not read yet.
    std::thread::sleep(Duration::from_millis(300));
    let mut r = c;
    let mut got = Vec::with_capacity(total);
    let mut buf = [0u8; 1024];
    while got.len() < total {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    writer.join().unwrap();
    assert!(got == expect, "every byte, in order");
    let (status, stats) = srv.stop();
    assert!(status.success());
    assert_eq!(stats["buffers_lent"], 0);
}

#[test]
fn sigterm_drain_answers_a_request_in_progress_and_exits_0() {
    let mut srv = uring("--protocol http --delay-ms 1000");
    let idle = connect(srv.addr);
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    send(&mut w, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // The answer is held for a second: the drain begins while it is in progress (or
    // before its bytes are read: then the drain's grace for new connections covers it).
    srv.signal(libc::SIGTERM);
    let resp = read_response(&mut r);
    assert_eq!((resp.status, &resp.body[..]), (200, &b"Hello, World!"[..]));
    let (_, closed) = read_to_close(r.get_mut());
    assert!(closed, "closed after the answer");
    let mut idle = idle;
    let (_, idle_closed) = read_to_close(&mut idle);
    assert!(idle_closed, "the idle connection was closed at shutdown");
    assert_eq!(srv.wait_exit().code(), Some(0));
    let stats = counters(&srv.wait_for_line(|l| l.contains("stopped: ")).unwrap());
    assert_eq!(stats["cut_at_shutdown"], 0);
    assert_eq!(stats["requests"], 1);
}

#[test]
fn the_connection_limit_holds() {
    let srv = uring("--protocol echo --max-connections 2");
    let mut a = connect(srv.addr);
    let mut b = connect(srv.addr);
    for c in [&mut a, &mut b] {
        send(c, b"x");
        let mut one = [0u8; 1];
        c.read_exact(&mut one).unwrap();
    }
    let mut third = connect(srv.addr);
    let (_, closed) = read_to_close(&mut third);
    assert!(closed, "the third connection is closed at once");
    let (_, stats) = srv.stop();
    assert_eq!(stats["rejected"], 1);
}

/// Runs the binary to its exit (it must not start serving); returns the status and
/// what it logged.
fn run_to_exit(mut cmd: Command) -> (ExitStatus, String) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start reactor");
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("the server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn io_uring_with_a_configuration_it_does_not_support_fails_clearly() {
    let mut cmd = Command::new(binary());
    cmd.args([
        "--io",
        "uring",
        "--addr",
        "127.0.0.1:0",
        "--max-connections-per-ip",
        "4",
    ]);
    let (status, err) = run_to_exit(cmd);
    assert!(!status.success());
    assert!(
        err.contains("--io uring") && err.contains("does not support --max-connections-per-ip"),
        "{err}"
    );
    // The same configuration under auto is served, on epoll.
    let srv = Server::start("--io auto --protocol echo --max-connections-per-ip 4");
    assert!(
        srv.lines()
            .iter()
            .any(|l| l.contains("using epoll") && l.contains("--max-connections-per-ip"))
    );
    let mut c = connect(srv.addr);
    send(&mut c, b"hi");
    let mut two = [0u8; 2];
    c.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"hi");
}

/// A command whose process cannot use io_uring: `io_uring_setup` fails with EPERM under
/// a seccomp filter installed in the child before it runs the binary.
fn without_io_uring(args: &[&str]) -> Command {
    const AUDIT_ARCH: u32 = if cfg!(target_arch = "x86_64") {
        0xC000_003E
    } else if cfg!(target_arch = "aarch64") {
        0xC000_00B7
    } else {
        0
    };
    // BPF: if arch == ours && nr == io_uring_setup { ERRNO(EPERM) } else { ALLOW }
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let filter = [
        f(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        f(JEQ_K, 0, 3, AUDIT_ARCH),
        f(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        f(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        f(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        f(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let mut cmd = Command::new(binary());
    cmd.args(args);
    // SAFETY: the closure runs in the child between fork and exec and only makes two
    // system calls on memory that was set up before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused_and_uring_fails() {
    let srv = Server::start_cmd(
        without_io_uring(&[]),
        "--io auto --protocol http --addr 127.0.0.1:0",
    );
    let fell_back = srv
        .lines()
        .iter()
        .any(|l| l.contains("using epoll") && l.contains("io_uring is unavailable"));
    assert!(fell_back, "the fallback is logged with its reason");
    assert!(
        srv.lines()
            .iter()
            .any(|l| l.contains("listening on") && l.contains("io=epoll"))
    );
    let (status, body) = http_get(srv.addr, "/");
    assert_eq!((status, body.as_str()), (200, "Hello, World!"));
    let (st, _) = srv.stop();
    assert!(st.success());

    let (status, err) = run_to_exit(without_io_uring(&[
        "--io",
        "uring",
        "--addr",
        "127.0.0.1:0",
    ]));
    assert!(
        !status.success(),
        "--io uring must not start without io_uring"
    );
    assert!(
        err.contains("--io uring: io_uring is unavailable here") && err.contains("os error 1"),
        "{err}"
    );
}
