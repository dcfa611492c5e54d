//! The report: figures, why a run failed, the targets check, the printed form.

use serde::Serialize;

use crate::options::{Mode, Opts, Proto};

#[derive(Serialize, Default)]
pub(crate) struct Latency {
    pub(crate) avg_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

/// Pool mode: how the pool was used.
#[derive(Serialize, Default)]
pub(crate) struct PoolReport {
    pub(crate) max_size: usize,
    pub(crate) clients: usize,
    pub(crate) size: usize,
    pub(crate) created: u64,
    pub(crate) closed: u64,
    pub(crate) closed_by_error: u64,
    pub(crate) closed_by_server: u64,
    pub(crate) closed_by_timeout: u64,
    pub(crate) dial_failed: u64,
    pub(crate) timeouts: u64,
    pub(crate) late_replies: u64,
}

#[derive(Serialize, Default)]
pub(crate) struct Report {
    pub(crate) protocol: Option<Proto>,
    pub(crate) mode: Option<Mode>,
    pub(crate) addr: String,
    pub(crate) conns: usize,
    pub(crate) pipeline: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) threads: usize,
    pub(crate) seconds: f64,
    pub(crate) conns_established: u64,
    pub(crate) conns_failed: u64,
    /// TLS handshakes that resumed a session (with --resume).
    pub(crate) tls_resumed: u64,
    pub(crate) conns_closed_by_server: u64,
    pub(crate) requests_ok: u64,
    pub(crate) requests_failed: u64,
    pub(crate) requests_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) latency: Latency,
    pub(crate) server_rss_before_kib: Option<u64>,
    pub(crate) server_rss_peak_kib: Option<u64>,
    pub(crate) server_bytes_per_conn: Option<f64>,
    pub(crate) server_cpu_us_per_request: Option<f64>,
    pub(crate) client_cpu_percent: f64,
    /// The client's own CPU (user + system) per request answered, in microseconds.
    pub(crate) client_cpu_us_per_request: Option<f64>,
    /// Pool mode: the pool's statistics at the end.
    pub(crate) pool: Option<PoolReport>,
    pub(crate) first_error: Option<String>,
    /// Why the run failed (exit 1); empty if it did not.
    pub(crate) failures: Vec<String>,
    pub(crate) check_misses: Vec<String>,
}

/// Why the run failed, if it did: each reason makes the exit status 1.
pub(crate) fn failures(opts: &Opts, r: &Report, panics: Vec<String>) -> Vec<String> {
    let mut why = panics;
    let asked = opts.conns as u64;
    if r.conns_established < asked {
        why.push(format!(
            "only {} of {asked} connections established ({} failed to connect, {} not \
             connected when the run ended)",
            r.conns_established,
            r.conns_failed,
            asked.saturating_sub(r.conns_established + r.conns_failed)
        ));
    }
    if r.conns_failed > 0 {
        why.push(format!("{} connections failed", r.conns_failed));
    }
    if r.conns_closed_by_server > 0 {
        why.push(format!(
            "{} connections closed by the server",
            r.conns_closed_by_server
        ));
    }
    if r.requests_failed > 0 {
        why.push(format!("{} requests failed", r.requests_failed));
    }
    if opts.mode == Mode::Load && r.requests_ok == 0 {
        why.push("no request was answered".into());
    }
    why
}

pub(crate) fn check(r: &Report) -> Vec<String> {
    let mut misses = Vec::new();
    if r.conns_established < 10_000 {
        misses.push(format!(
            "connections: {} established, target 10,000+",
            r.conns_established
        ));
    }
    if r.mode == Some(Mode::Load) {
        if r.requests_per_sec < 100_000.0 {
            misses.push(format!(
                "throughput: {:.0} requests/s, target 100,000+",
                r.requests_per_sec
            ));
        }
        if r.latency.avg_ms >= 1.0 {
            misses.push(format!(
                "latency: {:.3} ms average, target under 1 ms",
                r.latency.avg_ms
            ));
        }
    }
    match r.server_rss_peak_kib {
        Some(kib) if r.conns_established >= 10_000 && kib >= 100 * 1024 => misses.push(format!(
            "memory: server RSS {:.1} MB at {} connections, target under 100 MB",
            kib as f64 / 1024.0,
            r.conns_established
        )),
        None => misses.push("memory: unknown (pass --server-pid)".into()),
        _ => {}
    }
    misses
}

pub(crate) fn print_report(opts: &Opts, r: &Report) {
    let lp = match (r.rate, &r.pool) {
        (_, Some(p)) => format!("pool of {}, {} clients", p.max_size, p.clients),
        (Some(rate), None) => format!("open loop at {rate} req/s"),
        (None, None) => format!("closed loop, pipeline {}", r.pipeline),
    };
    match opts.mode {
        Mode::Load => println!(
            "reactor-bench: {:?} {} | {} conns, {lp}, {} threads, {:.1} s measured",
            opts.protocol, r.addr, r.conns, r.threads, r.seconds
        ),
        Mode::Idle => println!(
            "reactor-bench: idle {} | {} conns held {:.1} s",
            r.addr, r.conns, opts.duration
        ),
    }
    println!(
        "connections: {} established, {} failed{}",
        r.conns_established,
        r.conns_failed,
        if opts.mode == Mode::Idle {
            format!(", {} closed by the server", r.conns_closed_by_server)
        } else if opts.tls {
            format!(", {} TLS handshakes resumed", r.tls_resumed)
        } else {
            String::new()
        }
    );
    if opts.mode == Mode::Load {
        println!(
            "requests:    {} ok, {} failed",
            r.requests_ok, r.requests_failed
        );
        println!(
            "throughput:  {:.0} requests/s, {:.2} MB/s",
            r.requests_per_sec, r.mb_per_sec
        );
        let l = &r.latency;
        println!(
            "latency:     avg {:.3} ms, p50 {:.3}, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ms",
            l.avg_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    }
    if let (Some(b), Some(p)) = (r.server_rss_before_kib, r.server_rss_peak_kib) {
        print!("server:      RSS {b} KiB before, {p} KiB peak");
        if let Some(per) = r.server_bytes_per_conn {
            print!(", {per:.0} B per connection");
        }
        if let Some(cpu) = r.server_cpu_us_per_request {
            print!(", CPU {cpu:.2} us per request");
        }
        println!(" (RSS counts user-space memory only; kernel socket buffers are not in it)");
    }
    print!(
        "client:      CPU {:.0}% (100% = one core)",
        r.client_cpu_percent
    );
    match r.client_cpu_us_per_request {
        Some(us) => println!(", {us:.2} us per request"),
        None => println!(),
    }
    if let Some(p) = &r.pool {
        println!(
            "pool:        {} clients over at most {} connections: {} open, {} created, {} closed \
             ({} by error, {} by the server, {} after a timeout, {} dials failed), \
             {} timeouts, {} late replies",
            p.clients,
            p.max_size,
            p.size,
            p.created,
            p.closed,
            p.closed_by_error,
            p.closed_by_server,
            p.closed_by_timeout,
            p.dial_failed,
            p.timeouts,
            p.late_replies
        );
    }
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
    for f in &r.failures {
        println!("failed:      {f}");
    }
    if opts.check {
        if r.check_misses.is_empty() {
            println!("check:       all targets met");
        }
        for m in &r.check_misses {
            println!("check miss:  {m}");
        }
    }
}

/// Writes the latency distribution of `hist` (microseconds) for plotting: percentiles
/// from 0 to 99.9999, then the maximum.
pub(crate) fn write_distribution(
    path: &std::path::Path,
    hist: &hdrhistogram::Histogram<u64>,
) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("# percentile latency_ms 1/(1-percentile)\n");
    let mut ps: Vec<f64> = (0..90).step_by(10).map(f64::from).collect();
    ps.extend([
        90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.99, 99.995, 99.999, 99.9999,
    ]);
    for p in ps {
        let ms = hist.value_at_quantile(p / 100.0) as f64 / 1000.0;
        let _ = writeln!(out, "{p} {ms:.3} {:.1}", 1.0 / (1.0 - p / 100.0));
    }
    let _ = writeln!(out, "# max {:.3}", hist.max() as f64 / 1000.0);
    std::fs::write(path, out)
}

impl Latency {
    /// The figures of `hist` (microseconds); with `--hdr-out`, also writes its
    /// distribution there.
    pub(crate) fn of(opts: &crate::options::Opts, hist: &hdrhistogram::Histogram<u64>) -> Latency {
        if let Some(path) = &opts.hdr_out
            && let Err(e) = write_distribution(path, hist)
        {
            eprintln!("reactor-bench: --hdr-out {}: {e}", path.display());
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            avg_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }
}
