//! TLS (--tls-cert/--tls-key) with real peers: curl, openssl s_client and a rustls
//! client, against certificates made here with the `openssl` command.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A CA and a leaf certificate for localhost and 127.0.0.1 signed by it.
type Certs = TestCerts;

/// The project's own client configuration (what reactor-bench and reactor-client use),
/// trusting the test CA, offering `http/1.1` by ALPN or nothing.
fn client_config(ca: &Path, alpn: bool) -> Arc<ClientConfig> {
    let alpn = if alpn {
        vec![b"http/1.1".to_vec()]
    } else {
        Vec::new()
    };
    reactor::tls::client_config(&reactor::tls::Trust::Ca(ca.to_path_buf()), &alpn)
        .expect("a client configuration")
}

/// Connects and completes the handshake.
fn tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = connect(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn get(s: &mut BufReader<Tls>) -> Response {
    s.get_mut().write_all(GET).unwrap();
    s.get_mut().flush().unwrap();
    read_response(s)
}

#[test]
fn curl_keeps_one_https_connection_for_two_urls() {
    if !have("openssl") || !have("curl") {
        return;
    }
    let certs = Certs::make("curl");
    let srv = in_process(&format!("--protocol http {}", certs.args()));
    let port = srv.local_addr().port();
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "--cacert"])
        .arg(&certs.ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args([url("/a"), url("/b")])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, World!Hello, World!"
    );
    let c = wait_stats(&srv, |c| c.requests == 2 && c.open == 0);
    assert_eq!(c.tls_handshakes, 1, "one connection for both URLs: {c}");
    assert_eq!(c.tls_handshake_failures(), 0);
    assert_eq!(c.tls_open, 0);
}

#[test]
fn pipelined_https_requests_are_answered_in_order_with_alpn() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("pipeline");
    let srv = in_process(&format!("--protocol http {}", certs.args()));
    let mut s = tls_connect(srv.local_addr(), &client_config(&certs.ca, true)).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let batch: Vec<u8> = [
        &b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    s.write_all(&batch).unwrap();
    s.flush().unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..3 {
        let resp = read_response(&mut r);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"Hello, World!");
    }
    // The close comes with close_notify: a clean end of stream, not a truncation.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)
        .expect("close_notify before the close");
    assert!(rest.is_empty());
    let c = wait_stats(&srv, |c| c.requests == 3 && c.open == 0);
    assert_eq!(c.tls_handshakes, 1);
}

#[test]
fn openssl_s_client_echoes_over_tls_1_2_and_1_3() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("s_client");
    let srv = in_process(&format!("--protocol echo {}", certs.args()));
    for version in ["-tls1_2", "-tls1_3"] {
        let mut child = Command::new("openssl")
            // -quiet implies -ign_eof; -no_ign_eof makes it leave at the end of stdin.
            .args([
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-verify_return_error",
                version,
            ])
            .arg("-connect")
            .arg(srv.local_addr().to_string())
            .arg("-CAfile")
            .arg(&certs.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello over tls\n").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "hello over tls\n", "{version}");
        drop(stdin);
        let _ = child.wait();
    }
    let c = wait_stats(&srv, |c| c.open == 0);
    assert_eq!(c.tls_handshakes, 2, "{c}");
    assert_eq!(c.tls_handshake_failures(), 0, "{c}");
}

#[test]
fn garbage_and_abandoned_handshakes_are_closed_and_counted() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("garbage");
    let srv = in_process(&format!(
        "--protocol echo --read-timeout 300ms {}",
        certs.args()
    ));
    let addr = srv.local_addr();
    // Plain text on a TLS port (echo: closed at once).
    let mut plain = connect(addr);
    send(&mut plain, b"hello\n");
    let (got, closed) = read_to_close(&mut plain);
    assert!(closed && got.is_empty(), "{got:?}");
    // A handshake record with garbage inside: rustls refuses it (an alert, a close).
    let mut garbage = connect(addr);
    send(
        &mut garbage,
        &[0x16, 0x03, 0x01, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8],
    );
    let (_, closed) = read_to_close(&mut garbage);
    assert!(closed);
    // Stops mid-handshake: the read timeout runs from the first byte.
    let mut stalled = connect(addr);
    send(&mut stalled, &[0x16, 0x03, 0x01, 0x02]);
    let (_, closed) = read_to_close(&mut stalled);
    assert!(closed);
    // Goes away mid-handshake.
    let mut gone = connect(addr);
    send(&mut gone, &[0x16, 0x03]);
    drop(gone);
    let c = wait_stats(&srv, |c| c.open == 0 && c.tls_handshake_failures() == 4);
    assert_eq!(
        (
            c.tls_fail_not_tls,
            c.tls_fail_protocol,
            c.tls_fail_timeout,
            c.tls_fail_closed
        ),
        (1, 1, 1, 1),
        "{c}"
    );
    assert_eq!((c.tls_handshakes, c.tls_open, c.buffers_lent), (0, 0, 0));
}

#[test]
fn plain_http_on_the_tls_port_gets_400_then_close() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("plain");
    let srv = in_process(&format!("--protocol http {}", certs.args()));
    let mut s = connect(srv.local_addr());
    send(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (got, closed) = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(closed);
    let c = wait_stats(&srv, |c| c.open == 0);
    assert_eq!((c.tls_fail_not_tls, c.tls_open), (1, 0), "{c}");
}

#[test]
fn a_thousand_idle_tls_connections_hold_no_buffer() {
    if !have("openssl") {
        return;
    }
    raise_fd_limit();
    const N: usize = 1000;
    let certs = Certs::make("idle");
    let srv = Server::start(&format!(
        "--protocol http --stats-interval 100ms {}",
        certs.args()
    ));
    let cfg = client_config(&certs.ca, true);
    // Warm the server (pools, the session cache, the allocator) before the baseline.
    let mut warm = BufReader::new(tls_connect(srv.addr, &cfg).unwrap());
    assert_eq!(get(&mut warm).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let before = srv.rss_kib();
    let mut conns: Vec<BufReader<Tls>> = (0..N)
        .map(|_| {
            let mut c = BufReader::new(tls_connect(srv.addr, &cfg).unwrap());
            assert_eq!(get(&mut c).status, 200);
            c
        })
        .collect();
    let stats = srv
        .wait_for_stats(|c| c["open"] == N as u64 + 1 && c["requests"] == N as u64 + 1)
        .expect("stats line with every connection open");
    assert_eq!(
        stats["buffers_lent"], 0,
        "an idle TLS connection holds no buffer"
    );
    assert_eq!(stats["tls_open"], N as u64 + 1);
    let after = srv.rss_kib();
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / N as f64;
    eprintln!(
        "server RSS: {before} KiB with 1 connection, {after} KiB with {} idle TLS \
         connections: {per:.0} bytes per idle TLS connection",
        N + 1
    );
    // All still open and serving.
    for c in conns.iter_mut() {
        assert_eq!(get(c).status, 200);
    }
    let stats = srv
        .wait_for_stats(|c| c["requests"] == 2 * N as u64 + 1 && c["buffers_lent"] == 0)
        .expect("all answered");
    assert_eq!(stats["open"], N as u64 + 1);
}

#[test]
fn sighup_rotates_the_certificate_and_refuses_a_bad_one() {
    if !have("openssl") {
        return;
    }
    let old = Certs::make("rot-old");
    let new = Certs::make("rot-new");
    let live = Certs::make("rot-live");
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let srv = Server::start(&format!("--protocol http {}", live.args()));
    let (old_cfg, new_cfg) = (client_config(&old.ca, true), client_config(&new.ca, true));
    let mut before = BufReader::new(tls_connect(srv.addr, &old_cfg).unwrap());
    assert_eq!(get(&mut before).status, 200);
    assert!(tls_connect(srv.addr, &new_cfg).is_err());

    std::fs::copy(&new.cert, &live.cert).unwrap();
    std::fs::copy(&new.key, &live.key).unwrap();
    let from = srv.log_len();
    srv.signal(libc::SIGHUP);
    srv.wait_for_line_after(from, |l| l.contains("TLS certificate reloaded"))
        .expect("reload logged");
    let mut after = BufReader::new(tls_connect(srv.addr, &new_cfg).unwrap());
    assert_eq!(get(&mut after).status, 200);
    assert!(tls_connect(srv.addr, &old_cfg).is_err(), "old pair retired");
    // The connection made under the old certificate goes on.
    assert_eq!(get(&mut before).status, 200);

    // A bad pair (a key that is not the certificate's) is refused; the good one stays.
    std::fs::copy(&old.key, &live.key).unwrap();
    let from = srv.log_len();
    srv.signal(libc::SIGHUP);
    srv.wait_for_line_after(from, |l| l.contains("reload refused"))
        .expect("refusal logged");
    std::fs::write(&live.cert, "not a certificate").unwrap();
    let from = srv.log_len();
    srv.signal(libc::SIGHUP);
    srv.wait_for_line_after(from, |l| l.contains("reload refused"))
        .expect("refusal logged");
    let mut still = BufReader::new(tls_connect(srv.addr, &new_cfg).unwrap());
    assert_eq!(get(&mut still).status, 200);
    drop((before, after, still));
    let (_, c) = srv.stop();
    assert_eq!(
        (c["tls_reloads"], c["tls_reload_failures"]),
        (1, 2),
        "{c:?}"
    );
}

#[test]
fn reload_tls_in_process_swaps_the_pair() {
    if !have("openssl") {
        return;
    }
    let a = Certs::make("inproc-a");
    let b = Certs::make("inproc-b");
    let live = Certs::make("inproc-live");
    std::fs::copy(&a.cert, &live.cert).unwrap();
    std::fs::copy(&a.key, &live.key).unwrap();
    let srv = in_process(&format!("--protocol echo {}", live.args()));
    let cfg_b = client_config(&b.ca, false);
    assert!(tls_connect(srv.local_addr(), &cfg_b).is_err());
    std::fs::copy(&b.cert, &live.cert).unwrap();
    std::fs::copy(&b.key, &live.key).unwrap();
    srv.reload_tls().expect("reload");
    let mut s = tls_connect(srv.local_addr(), &cfg_b).unwrap();
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    std::fs::write(&live.key, "garbage").unwrap();
    assert!(srv.reload_tls().is_err());
    assert_eq!(
        (srv.stats().tls_reloads, srv.stats().tls_reload_failures),
        (1, 1)
    );
}

#[test]
fn the_worker_pool_answers_in_order_over_tls() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("workers");
    let srv = in_process(&format!(
        "--protocol http --work sleep:10ms --workers 2 {}",
        certs.args()
    ));
    let cfg = client_config(&certs.ca, true);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let cfg = cfg.clone();
            let addr = srv.local_addr();
            std::thread::spawn(move || {
                let mut s = tls_connect(addr, &cfg).unwrap();
                let batch: Vec<u8> = (0..5)
                    .flat_map(|i| format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes())
                    .collect();
                s.write_all(&batch).unwrap();
                s.flush().unwrap();
                let mut r = BufReader::new(s);
                for _ in 0..5 {
                    let resp = read_response(&mut r);
                    assert_eq!(resp.status, 200);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let c = wait_stats(&srv, |c| c.jobs == 15 && c.requests == 15);
    assert_eq!(c.tls_handshakes, 3, "{c}");
}

#[test]
fn a_drain_finishes_requests_and_says_close_notify() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("drain");
    let srv = Server::start(&format!(
        "--protocol http --work sleep:300ms --workers 1 {}",
        certs.args()
    ));
    let cfg = client_config(&certs.ca, true);
    let mut idle = BufReader::new(tls_connect(srv.addr, &cfg).unwrap());
    assert_eq!(get(&mut idle).status, 200);
    let mut busy = tls_connect(srv.addr, &cfg).unwrap();
    busy.write_all(GET).unwrap();
    busy.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    srv.signal(libc::SIGTERM);
    let mut busy = BufReader::new(busy);
    let resp = read_response(&mut busy);
    assert_eq!(resp.status, 200);
    // Both ends come with close_notify: rustls reports a truncation as an error.
    let mut rest = Vec::new();
    busy.read_to_end(&mut rest)
        .expect("close_notify on the busy one");
    idle.read_to_end(&mut rest)
        .expect("close_notify on the idle one");
    assert!(rest.is_empty());
    let (status, c) = srv.stop();
    assert!(status.success());
    assert_eq!(c["cut_at_shutdown"], 0);
    assert_eq!(c["tls_handshakes"], 2);
}

#[test]
fn a_megabyte_echoes_back_over_tls_in_split_records() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("bulk");
    let srv = in_process(&format!("--protocol echo {}", certs.args()));
    let mut s = tls_connect(srv.local_addr(), &client_config(&certs.ca, false)).unwrap();
    let chunk: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; chunk.len()];
    for _ in 0..10 {
        s.write_all(&chunk).unwrap();
        s.flush().unwrap();
        s.read_exact(&mut back).unwrap();
        assert!(back == chunk, "echoed bytes differ");
    }
    drop(s);
    let c = wait_stats(&srv, |c| c.open == 0);
    assert_eq!((c.buffers_lent, c.tls_open, c.io_errors), (0, 0, 0), "{c}");
}

/// Runs a tool with `args` (split at spaces) plus `extra`; returns the exit code,
/// standard output and standard error.
fn run_tool(bin: &str, args: &str, extra: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .args(args.split_whitespace())
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run the tool");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bench_json(args: &str, extra: &[&std::ffi::OsStr]) -> serde_json::Value {
    let (code, out, err) = run_tool(env!("CARGO_BIN_EXE_reactor-bench"), args, extra);
    assert_eq!(code, Some(0), "reactor-bench {args}: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn reactor_bench_tls_loads_each_protocol_with_a_ca() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("bench");
    let ca = ["--ca".as_ref(), certs.ca.as_os_str()];
    for (proto, pipeline) in [("http", 1), ("echo", 4), ("json", 2)] {
        let srv = in_process(&format!("--protocol {proto} {}", certs.args()));
        let r = bench_json(
            &format!(
                "--addr {} --protocol {proto} --tls --server-name localhost --conns 8 \
                 --threads 2 --pipeline {pipeline} --requests 50 --json --quiet",
                srv.local_addr()
            ),
            &ca,
        );
        assert_eq!(r["requests_ok"], 8 * 50, "{proto}: {r}");
        assert_eq!(r["requests_failed"], 0, "{proto}: {r}");
        let c = wait_stats(&srv, |c| c.tls_handshakes == 8);
        assert_eq!(c.tls_handshake_failures(), 0, "{proto}: {c}");
        if proto != "echo" {
            // (echo counts reads, not messages)
            assert_eq!(c.requests, 8 * 50, "{proto}: {c}");
        }
    }
}

#[test]
fn reactor_bench_tls_new_connection_per_request_and_idle_mode() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("bench-new");
    let srv = in_process(&format!("--protocol http {}", certs.args()));
    let addr = srv.local_addr();
    // --insecure: the name (127.0.0.1) and chain are not checked.
    let r = bench_json(
        &format!(
            "--addr {addr} --tls --insecure --conns 4 --conn-requests 1 --duration 1 --json --quiet"
        ),
        &[],
    );
    let ok = r["requests_ok"].as_u64().unwrap();
    assert!(ok > 4, "{r}");
    // A handshake per request: one connection per answer, plus at most one per slot
    // whose handshake finished as the run ended, before its request was answered.
    let established = r["conns_established"].as_u64().unwrap();
    assert!(
        (ok..=ok + 4).contains(&established),
        "a handshake per request: {r}"
    );
    let c = wait_stats(&srv, |c| c.open == 0 && c.requests >= ok);
    assert!(c.tls_handshakes >= ok, "{c}");
    // Only connections opened just before the end may be dropped mid-handshake.
    assert_eq!((c.tls_fail_protocol, c.tls_fail_not_tls), (0, 0), "{c}");

    // Idle: every handshake completes, every connection stays open.
    let r = bench_json(
        &format!(
            "--addr {addr} --tls --insecure --mode idle --conns 50 --duration 0.5 --json --quiet"
        ),
        &[],
    );
    assert_eq!(r["conns_established"], 50, "{r}");
    assert_eq!(r["conns_closed_by_server"], 0, "{r}");
    let c = wait_stats(&srv, |c| c.open == 0);
    assert!(c.tls_handshakes >= ok + 50, "{c}");
}

#[test]
fn reactor_bench_tls_refuses_a_wrong_ca_pool_mode_and_no_trust() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("bench-bad");
    let other = Certs::make("bench-other");
    let srv = in_process(&format!("--protocol http {}", certs.args()));
    let addr = srv.local_addr();
    let bin = env!("CARGO_BIN_EXE_reactor-bench");
    let (code, _, err) = run_tool(
        bin,
        &format!("--addr {addr} --tls --server-name localhost --conns 2 --requests 1 --quiet"),
        &["--ca".as_ref(), other.ca.as_os_str()],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("connections failed"), "{err}");
    let (code, _, err) = run_tool(
        bin,
        &format!("--addr {addr} --tls --insecure --pool 2"),
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--pool"), "{err}");
    let (code, _, err) = run_tool(bin, &format!("--addr {addr} --tls --requests 1"), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--ca FILE or --insecure"), "{err}");
}

#[test]
fn reactor_client_tls_prints_replies_in_each_protocol() {
    if !have("openssl") {
        return;
    }
    let certs = Certs::make("client");
    let other = Certs::make("client-other");
    let bin = env!("CARGO_BIN_EXE_reactor-client");
    let ca = ["--ca".as_ref(), certs.ca.as_os_str()];
    let http = in_process(&format!("--protocol http {}", certs.args()));
    let port = http.local_addr().port();
    let (code, out, err) = run_tool(bin, &format!("--addr localhost:{port} --tls / /a"), &ca);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Hello, World!\nHello, World!\n");
    let (code, out, err) = run_tool(
        bin,
        &format!("--addr 127.0.0.1:{port} --tls --insecure /"),
        &[],
    );
    assert_eq!((code, out.as_str()), (Some(0), "Hello, World!\n"), "{err}");
    let (code, _, err) = run_tool(
        bin,
        &format!("--addr localhost:{port} --tls /"),
        &["--ca".as_ref(), other.ca.as_os_str()],
    );
    assert_eq!(code, Some(1), "a certificate from another CA: {err}");
    assert!(err.contains("certificate"), "{err}");

    let echo = in_process(&format!("--protocol echo {}", certs.args()));
    let (code, out, err) = run_tool(
        bin,
        &format!(
            "--addr {} --protocol echo --tls --server-name localhost one two",
            echo.local_addr()
        ),
        &ca,
    );
    assert_eq!((code, out.as_str()), (Some(0), "one\ntwo\n"), "{err}");

    let json = in_process(&format!("--protocol json {}", certs.args()));
    let (code, out, err) = run_tool(
        bin,
        &format!(
            "--addr {} --protocol json --tls --insecure x",
            json.local_addr()
        ),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("{}\n", reactor::wire::json::hello("x")));
    let c = wait_stats(&http, |c| c.open == 0);
    assert_eq!((c.tls_handshakes, c.requests), (2, 3), "{c}");
}

#[test]
fn h2load_h1_over_tls_has_zero_failures() {
    if !have("openssl") || !have("h2load") {
        return;
    }
    let certs = Certs::make("h2load");
    let srv = in_process(&format!("--protocol http {}", certs.args()));
    let out = Command::new("h2load")
        .args(["--h1", "-n", "2000", "-c", "20", "-m", "4", "-t", "1"])
        .arg(format!("https://127.0.0.1:{}/", srv.local_addr().port()))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "h2load: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    let c = wait_stats(&srv, |c| c.open == 0 && c.requests == 2000);
    assert_eq!(c.tls_handshakes, 20, "{c}");
    assert_eq!(c.tls_handshake_failures(), 0, "{c}");
}
