//! Pool mode (`--pool N --clients C`, the seed-002 benchmark): C threads each make
//! calls through one `reactor::client` pool of N connections, each call waiting for
//! its reply, so up to C requests are in flight over N connections. Replies are
//! checked by the client's codecs (on `reactor::wire`); any failure fails the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reactor::client::{self, Codec, Echo, Http, Json, Options, Pool};
use reactor::wire;

use crate::options::{Mode, Opts, Proto};
use crate::procfs::{clock_ticks_per_sec, cpu_ticks, own_cpu_secs, rss_kib};
use crate::report::{Latency, PoolReport, Report, check};

/// One client thread's tally.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    ok_measured: u64,
    failed: u64,
    first_error: Option<String>,
}

pub(crate) fn run(opts: &Opts, size: usize) -> Report {
    let t = Duration::from_secs_f64(opts.timeout.max(0.001));
    let copts = Options {
        max_size: size,
        response_timeout: Some(t),
        dial_timeout: t,
        wait_timeout: t,
        ..Options::default()
    };
    match opts.protocol {
        Proto::Echo => drive(opts, size, Echo, copts, |c, i| {
            let mut p = Vec::new();
            wire::echo::payload(c << 32 | i, opts.size, &mut p);
            p
        }),
        Proto::Http => {
            let codec = Http {
                host: "bench".into(),
                expect_body: Some(opts.http_body.as_bytes().to_vec()).filter(|b| !b.is_empty()),
            };
            drive(opts, size, codec, copts, |_, _| "/".to_string())
        }
        Proto::Json => drive(opts, size, Json::default(), copts, |c, i| {
            client::json_request(format!("{c}-{i}"), format!("v{c}-{i}"))
        }),
    }
}

fn drive<C: Codec>(
    opts: &Opts,
    size: usize,
    codec: C,
    copts: Options,
    request: impl Fn(u64, u64) -> C::Request + Sync,
) -> Report {
    let pool = match Pool::new(opts.addr, codec, copts) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("client pool: {e}");
            return Report {
                first_error: Some(why.clone()),
                failures: vec![why],
                ..Report::default()
            };
        }
    };
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(opts.warmup.max(0.0));
    let hold = Duration::from_secs_f64(opts.duration.max(0.0));
    let stop = AtomicBool::new(false);
    let rss_before = opts.server_pid.and_then(rss_kib);
    let cpu0 = own_cpu_secs();
    let mut ticks0 = None;
    let mut measured_from = None;
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..opts.clients as u64)
            .map(|c| {
                let (pool, request, stop) = (&pool, &request, &stop);
                s.spawn(move || {
                    let mut t = Tally {
                        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
                        ok: 0,
                        ok_measured: 0,
                        failed: 0,
                        first_error: None,
                    };
                    let mut i = 0u64;
                    while opts.requests.is_none_or(|n| i < n) && !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        match pool.call(request(c, i)) {
                            Ok(_) => {
                                t.ok += 1;
                                if t0.duration_since(start) >= warmup {
                                    t.ok_measured += 1;
                                    let us = t0.elapsed().as_micros() as u64;
                                    let _ = t.hist.record(us.max(1));
                                }
                            }
                            Err(e) => {
                                t.failed += 1;
                                t.first_error.get_or_insert_with(|| e.to_string());
                                // A failed run is over: stop the others too.
                                stop.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                        i += 1;
                    }
                    t
                })
            })
            .collect();
        // The main thread keeps time: the warm-up, then the duration (unless a
        // request count ends the run first).
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if measured_from.is_none() && start.elapsed() >= warmup {
                measured_from = Some(Instant::now());
                ticks0 = opts.server_pid.and_then(cpu_ticks);
            }
            if threads.iter().all(|h| h.is_finished()) {
                break;
            }
            if opts.requests.is_none() && measured_from.is_some_and(|t| t.elapsed() >= hold) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        threads
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Tally {
                    hist: Histogram::new(3).expect("histogram"),
                    ok: 0,
                    ok_measured: 0,
                    failed: 1,
                    first_error: Some("a client thread panicked".into()),
                })
            })
            .collect()
    });
    let seconds = measured_from
        .unwrap_or(start)
        .elapsed()
        .as_secs_f64()
        .max(1e-9);
    let client_cpu = own_cpu_secs() - cpu0;
    let ticks1 = opts.server_pid.and_then(cpu_ticks);
    let stats = pool.stats();
    pool.close();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut ok, mut ok_measured, mut failed) = (0, 0, 0);
    let mut first_error = None;
    for t in tallies {
        let _ = hist.add(&t.hist);
        ok += t.ok;
        ok_measured += t.ok_measured;
        failed += t.failed;
        first_error = first_error.or(t.first_error);
    }
    let c = &stats.closed;
    let mut report = Report {
        protocol: Some(opts.protocol),
        mode: Some(Mode::Load),
        addr: opts.addr.to_string(),
        conns: size,
        pipeline: 1,
        rate: None,
        threads: opts.clients,
        seconds,
        conns_established: stats.created - c.dial,
        conns_failed: c.dial,
        tls_resumed: 0,
        conns_closed_by_server: c.eof,
        requests_ok: ok,
        requests_failed: failed,
        requests_per_sec: ok_measured as f64 / seconds,
        // The codecs hand over replies, not byte counts.
        mb_per_sec: 0.0,
        latency: Latency::of(opts, &hist),
        server_rss_before_kib: rss_before,
        server_rss_peak_kib: opts.server_pid.and_then(rss_kib),
        server_bytes_per_conn: None,
        server_cpu_us_per_request: match (ticks0, ticks1) {
            (Some(a), Some(b)) if ok_measured > 0 => {
                Some((b - a) as f64 / clock_ticks_per_sec() * 1e6 / ok_measured as f64)
            }
            _ => None,
        },
        client_cpu_percent: client_cpu / seconds * 100.0,
        client_cpu_us_per_request: (ok > 0).then(|| client_cpu * 1e6 / ok as f64),
        pool: Some(PoolReport {
            max_size: size,
            clients: opts.clients,
            size: stats.size,
            created: stats.created,
            closed: stats.closed_total(),
            closed_by_error: c.error,
            closed_by_server: c.eof,
            closed_by_timeout: c.timeout,
            dial_failed: c.dial,
            timeouts: stats.timeouts,
            late_replies: stats.late_replies,
        }),
        first_error,
        failures: Vec::new(),
        check_misses: Vec::new(),
    };
    let mut why = Vec::new();
    if report.requests_failed > 0 {
        why.push(format!(
            "{} requests failed: {}",
            report.requests_failed,
            report.first_error.as_deref().unwrap_or("")
        ));
    }
    if stats.timeouts > 0 {
        why.push(format!("{} requests timed out", stats.timeouts));
    }
    if c.dial + c.error + c.eof + c.timeout > 0 {
        why.push(format!(
            "{} connections failed ({} to connect, {} by error, {} closed by the server, {} after a timeout)",
            c.dial + c.error + c.eof + c.timeout,
            c.dial,
            c.error,
            c.eof,
            c.timeout
        ));
    }
    if report.requests_ok == 0 {
        why.push("no request was answered".into());
    }
    report.failures = why;
    if opts.check {
        report.check_misses = check(&report);
    }
    report
}
