//! /metrics and /health: the exposition counts what happened, passes promtool, is
//! scraped by a real Prometheus server, and /health turns 503 the moment a drain starts.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn hello(addr: SocketAddr, n: usize) {
    let c = connect(addr);
    let mut r = BufReader::new(c.try_clone().unwrap());
    for _ in 0..n {
        (&c).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut r).status, 200);
    }
}

#[test]
fn metrics_count_what_happened_and_pass_promtool() {
    let srv = in_process("--protocol http --threads 2 --metrics-addr 127.0.0.1:0");
    let admin = srv.metrics_addr().expect("a metrics address");
    hello(srv.local_addr(), 25);
    let mut bad = connect(srv.local_addr());
    send(&mut bad, b"NONSENSE\r\n\r\n");
    let _ = read_to_close(&mut bad);
    drop(bad);
    wait_stats(&srv, |c| c.requests == 26 && c.closed == 2);
    let (status, text) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, r#"reactor_requests_total{protocol="http"}"#),
        Some(26.0)
    );
    assert_eq!(
        sample(&text, r#"reactor_bad_requests_total{protocol="http"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "reactor_connections_accepted_total"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"reactor_connections_closed_total{reason="normal"}"#
        ),
        Some(2.0)
    );
    // Both shards are listed, with nothing open on either.
    for shard in ["0", "1"] {
        let series = format!("reactor_connections_open{{shard=\"{shard}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(
        sample(&text, "reactor_request_duration_seconds_count"),
        Some(26.0)
    );
    assert!(sample(&text, "reactor_process_resident_memory_bytes").unwrap() > 0.0);
    assert!(sample(&text, "reactor_process_open_fds").unwrap() > 0.0);
    assert!(sample(&text, "reactor_received_bytes_total").unwrap() > 0.0);
    if have("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A scraper that asks for OpenMetrics gets it.
    let mut c = connect(admin);
    send(
        &mut c,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    let resp = read_response(&mut BufReader::new(c));
    assert!(resp.headers["content-type"].starts_with("application/openmetrics-text"));
    assert!(String::from_utf8_lossy(&resp.body).ends_with("# EOF\n"));
}

#[test]
fn the_pool_shows_in_the_metrics() {
    let srv = in_process(
        "--protocol json --work sleep:1ms --workers 2 --workers-max 3 --metrics-addr 127.0.0.1:0",
    );
    let c = connect(srv.local_addr());
    (&c).write_all(b"{\"Uid\":\"1\",\"Val\":\"a\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    wait_stats(&srv, |c| c.jobs == 1);
    let (_, text) = http_get(srv.metrics_addr().unwrap(), "/metrics");
    assert_eq!(sample(&text, "reactor_workers"), Some(2.0));
    assert_eq!(sample(&text, "reactor_jobs_total"), Some(1.0));
    assert_eq!(sample(&text, "reactor_handler_panics_total"), Some(0.0));
}

#[test]
fn bad_admin_requests_get_clear_answers() {
    let srv = in_process("--metrics-addr 127.0.0.1:0");
    let admin = srv.metrics_addr().unwrap();
    assert_eq!(http_get(admin, "/nothing").0, 404);
    let mut c = connect(admin);
    send(
        &mut c,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(read_response(&mut BufReader::new(c)).status, 405);
    let mut c = connect(admin);
    send(&mut c, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert_eq!(read_response(&mut BufReader::new(c)).status, 400);
    // The serving side never saw any of it.
    assert_eq!(srv.stats().accepted, 0);
}

#[test]
fn health_is_ok_while_serving_and_503_from_the_start_of_a_drain() {
    let srv = Server::start("--protocol http --delay-ms 3000 --metrics-addr 127.0.0.1:0");
    let line = srv
        .wait_for_line(|l| l.contains("metrics on http://"))
        .unwrap();
    let admin: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert_eq!(http_get(admin, "/health"), (200, "ok\n".to_string()));
    // A request in progress keeps the drain going for a while.
    let mut busy = connect(srv.addr);
    send(&mut busy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    srv.signal(libc::SIGTERM);
    srv.wait_for_line(|l| l.contains("draining")).unwrap();
    assert_eq!(http_get(admin, "/health"), (503, "draining\n".to_string()));
    assert_eq!(
        read_response(&mut BufReader::new(busy)).status,
        200,
        "the request in progress is still served"
    );
}

#[test]
fn a_real_prometheus_scrapes_reactor() {
    if !have("prometheus") {
        return;
    }
    let srv = in_process("--protocol http --metrics-addr 127.0.0.1:0");
    let target = srv.metrics_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("reactor-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: reactor\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    hello(srv.local_addr(), 40);
    // Prometheus scrapes every second; ask its query API until it has the count.
    let end = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    loop {
        if let Ok(mut c) = std::net::TcpStream::connect(web) {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(
                b"GET /api/v1/query?query=reactor_requests_total HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            );
            let mut body = String::new();
            let _ = std::io::Read::read_to_string(&mut c, &mut body);
            if let Some(json) = body.split("\r\n\r\n").nth(1) {
                last = json.to_string();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
                    let value = &v["data"]["result"][0]["value"][1];
                    if value == "40" {
                        assert_eq!(
                            v["data"]["result"][0]["metric"]["protocol"], "http",
                            "{json}"
                        );
                        break;
                    }
                }
            }
        }
        assert!(
            Instant::now() < end,
            "Prometheus never reported 40 requests; last answer: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
