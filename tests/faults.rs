//! The server over a bad network: every protocol, plain, over TLS, behind PROXY
//! headers and on the worker pool, through the fault-injecting proxy of
//! `reactor-chaos --faults` (latency, jitter, a bandwidth limit, tiny segments with
//! pauses, stalls mid-stream, connections cut mid-request). Every request must get its
//! right answer, in order, unless the proxy cut its connection; the server's counters
//! must add up (every connection closed, none for a reason it should not have, no
//! timeout that was not due); and the server must still answer a clean run afterwards.
//!
//! Over TLS and behind PROXY headers the server defers its accepts (`--defer-accept`):
//! a connection is driven first with whatever part of its first bytes came, then
//! registered.
//!
//! The timeouts, through the same proxy in this process: a request stalled past
//! `--read-timeout` is closed and counted, a request dribbled past it is too (later
//! bytes do not extend it), and a slow request that completes within it is answered
//! even when its pauses are longer than `--idle-timeout`.
mod common;
#[allow(dead_code)]
#[path = "../src/bin/reactor-chaos/faults.rs"]
mod faults;
#[path = "../src/bin/reactor-chaos/rng.rs"]
mod rng;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use faults::{Faults, Proxy};
use reactor::wire;
use serde_json::Value;

/// The network of the matrix: a few ms of latency and jitter, 256 KB/s each way,
/// segments of 1 to 64 bytes with pauses up to 1 ms, and per chunk read a 2% chance of
/// a 200 ms stall and a 2% chance of a cut.
const FAULTS: &str =
    "latency=2ms,jitter=3ms,rate=256k,slice=1-64,pause=0-1ms,stall=2%:200ms,cut=2%";
/// Connections of a case, and how long they start new exchanges.
const CONNS: &str = "12";
const SECONDS: &str = "3s";
/// A chaos run may take its duration, then an exchange under way may wait out its
/// 10 s timeout or two.
const CHAOS_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Plain,
    Tls,
    Proxy,
    Pool,
}

/// The 3 protocols of `mode`, run at once; panics with every failure.
fn matrix(mode: Mode) {
    raise_fd_limit();
    let certs = (mode == Mode::Tls && have("openssl")).then(|| TestCerts::make("faults"));
    if mode == Mode::Tls && certs.is_none() {
        return;
    }
    let certs = certs.as_ref();
    let failed: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = ["echo", "http", "json"]
            .into_iter()
            .map(|proto| (proto, scope.spawn(move || case(proto, mode, certs))))
            .collect();
        runs.into_iter()
            .filter_map(|(proto, h)| match h.join() {
                Ok(figures) => {
                    eprintln!("faults [{proto} {mode:?}]: {figures}");
                    None
                }
                Err(panic) => Some(format!("[{proto} {mode:?}]: {}", panic_text(&*panic))),
            })
            .collect()
    });
    assert!(failed.is_empty(), "cases failed:\n{}", failed.join("\n"));
}

#[test]
fn every_protocol_through_faults_plain() {
    matrix(Mode::Plain);
}

#[test]
fn every_protocol_through_faults_over_tls() {
    matrix(Mode::Tls);
}

#[test]
fn every_protocol_through_faults_behind_proxy_headers() {
    matrix(Mode::Proxy);
}

#[test]
fn every_protocol_through_faults_on_the_worker_pool() {
    matrix(Mode::Pool);
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// One case: a server, chaos through the faults, a clean run, the checks. Returns the
/// figures, to print.
fn case(proto: &str, mode: Mode, certs: Option<&TestCerts>) -> String {
    // The PROXY header's version alternates with the protocol; the server takes either.
    let header = if proto == "http" { "v2" } else { "v1" };
    let (server_mode, chaos_mode) = match mode {
        Mode::Plain => (String::new(), String::new()),
        Mode::Tls => {
            let c = certs.expect("certificates");
            (c.args(), format!("--tls-ca {}", c.ca.display()))
        }
        Mode::Proxy => (
            "--proxy-protocol any --proxy-from 127.0.0.1/32".to_string(),
            format!("--proxy-header {header}"),
        ),
        // Echo answers on the loop (the server refuses --work for it): the pool is
        // started all the same.
        Mode::Pool if proto == "echo" => ("--workers 2".to_string(), String::new()),
        Mode::Pool => ("--workers 2 --work spin:20us".to_string(), String::new()),
    };
    // Over TLS and behind PROXY headers, accepts are deferred until the first bytes
    // come: each new connection is driven before its registration, with whatever part
    // of a handshake or a header the proxy's slicing let through first. Plain and
    // pooled cases keep the default accepts.
    let defer = if matches!(mode, Mode::Tls | Mode::Proxy) {
        "--defer-accept"
    } else {
        ""
    };
    let srv = Server::start(&format!(
        "--protocol {proto} --threads 2 {defer} {server_mode}"
    ));
    let v = run_chaos(
        srv.addr,
        &format!(
            "--protocol {proto} --conns {CONNS} --duration {SECONDS} --max-pipeline 8 \
             --max-payload 300 {chaos_mode} --faults {FAULTS}"
        ),
        CHAOS_DEADLINE,
    );
    let n = |v: &Value, k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} in the summary: {v}"))
    };
    let ctx = format!("[{proto} {mode:?}] seed {}: {v}", n(&v, "seed"));
    assert_eq!(v["ok"], true, "{ctx}");
    assert_eq!(
        (n(&v, "lost"), n(&v, "corrupt"), n(&v, "errors")),
        (0, 0, 0),
        "nothing lost, corrupt, duplicated or out of order: {ctx}"
    );
    assert_eq!(
        n(&v, "requests"),
        n(&v, "answers") + n(&v, "unchecked") + n(&v, "cut"),
        "every request answered, unchecked (abort, reset) or cut by the proxy: {ctx}"
    );
    let p = &v["proxy"];
    assert_eq!(
        n(p, "connections"),
        n(&v, "connections"),
        "every connection went through the proxy: {ctx}"
    );
    assert_eq!(n(p, "upstream_failures"), 0, "{ctx}");
    // The faults happened (a chunk has a 2% chance of each; a case reads hundreds).
    assert!(
        n(p, "cuts") > 0 && n(p, "stalls") > 0,
        "no cut or no stall: {ctx}"
    );

    // Still serving: a clean run, without faults, where every answer must come.
    let clean = run_chaos(
        srv.addr,
        &format!(
            "--protocol {proto} --conns 2 --duration 200ms --max-pipeline 4 \
             --behaviours graceful,keep-alive,half-close {chaos_mode}"
        ),
        CHAOS_DEADLINE,
    );
    let cctx = format!("clean run after {ctx}: {clean}");
    assert_eq!(clean["ok"], true, "{cctx}");
    assert_eq!(n(&clean, "requests"), n(&clean, "answers"), "{cctx}");

    let (status, c) = srv.stop();
    assert!(status.success(), "server exit {status}: {ctx}");
    let cs = format!("server {c:?}; {ctx}");
    // Every connection the proxy opened and the clean run's were accepted, and every
    // accepted one closed.
    assert_eq!(
        c["accepted"],
        n(p, "connections") + n(&clean, "connections"),
        "{cs}"
    );
    assert_eq!(c["accepted"], c["closed"], "{cs}");
    for k in [
        "open",
        "rejected",
        "cut_at_shutdown",
        "buffers_lent",
        "bad_requests",
        "decode_panics",
        "input_overflows",
        // No timeout was due: the stalls are far shorter than every timeout.
        "idle_timeouts",
        "read_timeouts",
        "write_timeouts",
        "keepalive_timeouts",
        "user_timeouts",
    ] {
        assert_eq!(c[k], 0, "{k}: {cs}");
    }
    let answers = n(&v, "answers") + n(&clean, "answers");
    match proto {
        // Echo counts reads, not requests: compare bytes.
        "echo" => assert!(
            c["bytes_out"] >= n(&v, "answer_bytes") + n(&clean, "answer_bytes"),
            "{cs}"
        ),
        _ => {
            // Every answer checked came from the server, which answered no request
            // that was not sent whole.
            assert!(c["requests"] >= answers, "{cs}");
            assert!(
                c["requests"] <= n(&v, "requests") + n(&clean, "requests"),
                "{cs}"
            );
        }
    }
    match mode {
        Mode::Plain => {}
        Mode::Tls => {
            assert!(c["tls_handshakes"] > 0, "{cs}");
            // A cut handshake is a closed one; none was refused as bad records.
            for k in [
                "tls_open",
                "tls_fail_not_tls",
                "tls_fail_protocol",
                "tls_fail_timeout",
            ] {
                assert_eq!(c[k], 0, "{k}: {cs}");
            }
        }
        Mode::Proxy => {
            assert!(c["proxy_headers"] > 0, "{cs}");
            // Headers sliced into segments and delayed are still headers.
            for k in [
                "proxy_missing",
                "proxy_malformed",
                "proxy_oversized",
                "proxy_untrusted",
                "proxy_timeouts",
            ] {
                assert_eq!(c[k], 0, "{k}: {cs}");
            }
        }
        Mode::Pool => {
            if proto != "echo" {
                assert!(c["jobs"] >= answers, "answers ran on the pool: {cs}");
                assert_eq!((c["handler_panics"], c["handler_timeouts"]), (0, 0), "{cs}");
            }
        }
    }
    format!(
        "requests {} answers {} unchecked {} cut {} ({} cut exchanges; proxy: {} connections, \
         {} cuts, {} stalls); server accepted {} requests {}; clean run: {} answers",
        n(&v, "requests"),
        n(&v, "answers"),
        n(&v, "unchecked"),
        n(&v, "cut"),
        n(&v, "cut_exchanges"),
        n(p, "connections"),
        n(p, "cuts"),
        n(p, "stalls"),
        c["accepted"],
        c["requests"],
        n(&clean, "answers"),
    )
}

/// One request of `proto` (http or json) and the check of its answer, on the wire
/// module: `Some(answer's length)` once `got` holds it, right.
fn request(proto: &str, out: &mut Vec<u8>) -> impl Fn(&[u8]) -> Option<usize> + use<> {
    let http = proto == "http";
    if http {
        wire::http::encode_get("/", "faults", out);
    } else {
        wire::json::encode("1", "slow", out);
    }
    move |got: &[u8]| {
        if http {
            let f = wire::http::frame(got).expect("an HTTP answer")?;
            wire::http::check(f.status, &got[f.body], wire::http::HELLO_BODY).expect("hello");
            Some(f.len)
        } else {
            let (len, r) = wire::json::frame(got, wire::json::MAX_MESSAGE).expect("JSON")?;
            wire::json::check("slow", &r).expect("the hello answer");
            Some(len)
        }
    }
}

/// A client of `srv` through a proxy with `faults`.
fn through(srv: &reactor::Server, faults: &str) -> (Proxy, TcpStream) {
    let proxy = Proxy::start(srv.local_addr(), Faults::parse(faults).unwrap(), 1).unwrap();
    let c = connect(proxy.addr());
    (proxy, c)
}

/// A request held mid-way, or dribbled, past `--read-timeout` is closed unanswered
/// and counted as a read timeout (not by the proxy: it cut nothing).
fn read_timeout_cuts(proto: &str, faults: &str) {
    let srv = in_process(&format!("--protocol {proto} --read-timeout 1s"));
    let (proxy, mut c) = through(&srv, faults);
    let mut req = Vec::new();
    let _ = request(proto, &mut req);
    c.write_all(&req).unwrap();
    let (got, closed) = read_to_close(&mut c);
    let ctx = format!(
        "{proto} through {faults}: {:?}; {:?}",
        srv.stats(),
        proxy.stats()
    );
    assert!(closed, "no close: {ctx}");
    // HTTP may say 408 first; JSON says nothing. No answer to the request either way.
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{:?}: {ctx}",
        String::from_utf8_lossy(&got)
    );
    let s = wait_stats(&srv, |s| s.closed == 1);
    assert_eq!(
        (s.read_timeouts, s.idle_timeouts, s.requests, s.open),
        (1, 0, 0, 0),
        "{ctx}"
    );
    assert!(!proxy.was_cut(c.local_addr().unwrap().port()), "{ctx}");
    assert_eq!(proxy.stats().cuts, 0, "{ctx}");
}

#[test]
fn a_request_stalled_past_the_read_timeout_is_closed_and_counted() {
    // Every chunk stops for 5 s after a byte or more: the request's first bytes are in,
    // its last ones come 5 s later, long after the 1 s read timeout.
    for proto in ["http", "json"] {
        read_timeout_cuts(proto, "stall=100%:5s");
    }
}

#[test]
fn a_request_dribbled_past_the_read_timeout_is_closed_and_counted() {
    // A byte every 250 ms: the request keeps moving, and takes several seconds.
    for proto in ["http", "json"] {
        read_timeout_cuts(proto, "slice=1,pause=250ms");
    }
}

#[test]
fn a_slow_request_within_the_read_timeout_is_answered() {
    // The request in 3 pieces 2.5 s apart (JSON: 2), each pause longer than the 2 s
    // idle timeout, all of it well within the 30 s read timeout. (The answer comes
    // back as slowly, so the idle timeout may close the connection once it is
    // written: that is its job.)
    std::thread::scope(|scope| {
        for proto in ["http", "json"] {
            scope.spawn(move || {
                let srv = in_process(&format!(
                    "--protocol {proto} --idle-timeout 2s --read-timeout 30s"
                ));
                let (proxy, mut c) = through(&srv, "slice=12,pause=2500ms");
                let mut req = Vec::new();
                let answered = request(proto, &mut req);
                c.write_all(&req).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while answered(&got).is_none() {
                    let n = c.read(&mut buf).expect("the answer");
                    assert!(
                        n > 0,
                        "{proto}: closed before the answer: {:?}",
                        srv.stats()
                    );
                    got.extend_from_slice(&buf[..n]);
                }
                assert_eq!(answered(&got), Some(got.len()), "one answer, nothing else");
                let s = wait_stats(&srv, |s| s.requests == 1);
                assert_eq!(s.read_timeouts, 0, "{s:?}");
                assert!(proxy.stats().bytes_up == req.len() as u64);
            });
        }
    });
}
