//! reactor-bench: a load generator that drives thousands of connections from one process
//! with a mio event loop per thread, verifies every response, and reports throughput,
//! latency percentiles (HDR histogram) and, given the server's PID, its memory and CPU.
//!
//! Closed loop by default (each connection keeps `--pipeline` requests in flight);
//! `--rate` switches to an open loop where requests leave at fixed intended times and
//! latency is measured from the intended time, so a stalled server cannot hide its
//! queueing delay (no coordinated omission).

mod checks;
mod load;
mod options;
mod pool;
mod procfs;
mod report;
mod schedule;

use std::collections::BinaryHeap;
use std::io::{self, IsTerminal};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use mio::Poll;
use slab::Slab;

use reactor::tls::{self, Trust};
use rustls::pki_types::ServerName;

use load::{Progress, Shared, Worker, WorkerResult};
use options::{Mode, Opts, Proto};
use procfs::{clock_ticks_per_sec, cpu_ticks, own_cpu_secs, rss_kib};
use report::{Latency, Report, check, failures, print_report};

fn main() {
    let opts = Opts::parse();
    if opts.conns == 0
        || opts.threads == 0
        || opts.pipeline == 0
        || (opts.protocol == Proto::Echo && opts.size == 0)
    {
        eprintln!("reactor-bench: --conns, --threads, --pipeline and --size must be at least 1");
        std::process::exit(2);
    }
    if opts.rate.is_some_and(|r| r <= 0.0) {
        eprintln!("reactor-bench: --rate must be positive");
        std::process::exit(2);
    }
    let _ = reactor::server::raise_nofile_limit();
    if opts.tls && opts.pool.is_some() {
        eprintln!("reactor-bench: --tls is not supported with --pool (use the load loop)");
        std::process::exit(2);
    }
    if opts.tls && opts.ca.is_none() && !opts.insecure {
        eprintln!("reactor-bench: --tls needs --ca FILE or --insecure");
        std::process::exit(2);
    }
    if opts.conn_requests == Some(0) {
        eprintln!("reactor-bench: --conn-requests must be at least 1");
        std::process::exit(2);
    }
    let report = match opts.pool {
        Some(0) => {
            eprintln!("reactor-bench: --pool must be at least 1");
            std::process::exit(2);
        }
        Some(_) if opts.clients == 0 => {
            eprintln!("reactor-bench: --clients must be at least 1");
            std::process::exit(2);
        }
        Some(n) => pool::run(&opts, n),
        None => run(&opts),
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&opts, &report);
    }
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("reactor-bench: failed: {f}");
        }
        std::process::exit(1);
    }
    if !report.check_misses.is_empty() {
        std::process::exit(3);
    }
}

fn tls_setup(opts: &Opts) -> Option<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
    if !opts.tls {
        return None;
    }
    let trust = match &opts.ca {
        Some(ca) => Trust::Ca(ca.clone()),
        None => Trust::Any,
    };
    let alpn = match opts.protocol {
        Proto::Http => vec![b"http/1.1".to_vec()],
        _ => Vec::new(),
    };
    let setup = tls::client_config(&trust, &alpn).and_then(|cfg| {
        let name = tls::server_name(opts.server_name.as_deref(), opts.addr.ip())?;
        let mut cfg = (*cfg).clone();
        if !opts.resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        Ok((std::sync::Arc::new(cfg), name))
    });
    match setup {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("reactor-bench: {e}");
            std::process::exit(2);
        }
    }
}

fn run(opts: &Opts) -> Report {
    let tls = tls_setup(opts);
    let threads = opts.threads.min(opts.conns);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        measuring: AtomicBool::new(opts.warmup <= 0.0),
        stop_sending: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        progress: (0..threads).map(|_| Progress::default()).collect(),
    });
    let rss_before = opts.server_pid.and_then(rss_kib);
    let mut rss_peak = rss_before;
    let interval_ns = opts
        .rate
        .map_or(0, |r| (1e9 * opts.conns as f64 / r) as u64)
        .max(1);
    let mut handles: Vec<Option<std::thread::JoinHandle<WorkerResult>>> = Vec::new();
    for id in 0..threads {
        let share = opts.conns / threads + usize::from(id < opts.conns % threads);
        let worker = Worker {
            id,
            opts: Opts {
                threads,
                ..opts.clone()
            },
            shared: shared.clone(),
            poll: Poll::new().expect("poll"),
            clients: Slab::with_capacity(share),
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            scratch: vec![0; 64 * 1024],
            ok_measured: 0,
            bytes_measured: 0,
            local: [0; 6],
            first_error: None,
            schedule: BinaryHeap::new(),
            next_conn_id: 0,
            interval_ns,
            expect: Vec::new(),
            tls: tls.clone(),
            replace: 0,
        };
        let handle = std::thread::Builder::new()
            .name(format!("worker {id}"))
            .spawn(move || worker.run(share))
            .expect("spawn a worker thread");
        handles.push(Some(handle));
    }
    // Workers' results, joined as each thread ends; a panicked worker leaves no result
    // and fails the run.
    let mut results = Vec::new();
    let mut panics = Vec::new();

    let bar = (!opts.quiet && !opts.json && io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let cpu0 = own_cpu_secs();
    let warmup = Duration::from_secs_f64(opts.warmup.max(0.0));
    let hold = Duration::from_secs_f64(opts.duration.max(0.0));
    let mut measure_start: Option<(Instant, Option<u64>)> = None;
    let mut last_line = Instant::now();
    let mut last_ok = 0;
    let mut all_open_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        for (id, slot) in handles.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|h| h.is_finished())
                && let Some(h) = slot.take()
            {
                match h.join() {
                    Ok(r) => results.push(r),
                    Err(payload) => {
                        let msg = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".into());
                        panics.push(format!("worker thread {id} panicked: {msg}"));
                        // Its connections and counts are lost: the run has failed, so
                        // stop the others now rather than wait for them.
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        let finished = handles.iter().all(|h| h.is_none());
        let est = shared.sum(|p| &p.established);
        let cfail = shared.sum(|p| &p.conn_failed);
        if let Some(pid) = opts.server_pid
            && let Some(r) = rss_kib(pid)
        {
            rss_peak = Some(rss_peak.map_or(r, |p| p.max(r)));
        }
        let elapsed = shared.start.elapsed();
        if measure_start.is_none() && (elapsed >= warmup || opts.mode == Mode::Idle) {
            shared.measuring.store(true, Ordering::Relaxed);
            measure_start = Some((Instant::now(), opts.server_pid.and_then(cpu_ticks)));
        }
        if est + cfail >= opts.conns as u64 && all_open_at.is_none() {
            all_open_at = Some(Instant::now());
        }
        let ok = shared.sum(|p| &p.ok);
        let line = format!(
            "{:5.1}s conns {est}/{} failed {cfail} | requests ok {ok} failed {} | {:.0} req/s",
            elapsed.as_secs_f64(),
            opts.conns,
            shared.sum(|p| &p.failed),
            (ok - last_ok) as f64 / last_line.elapsed().as_secs_f64().max(1e-3),
        );
        if let Some(b) = &bar {
            b.set_message(line);
            last_ok = ok;
            last_line = Instant::now();
        } else if !opts.quiet && !opts.json && last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!("{line}");
            last_ok = ok;
            last_line = Instant::now();
        }
        if finished {
            break;
        }
        match opts.mode {
            Mode::Load => {
                if opts.requests.is_none()
                    && let Some((t, _)) = measure_start
                    && t.elapsed() >= hold
                {
                    shared.stop_sending.store(true, Ordering::Relaxed);
                }
                // Give what is in flight its timeout to come back, then stop.
                if shared.stop_sending.load(Ordering::Relaxed)
                    && measure_start.is_some_and(|(t, _)| {
                        t.elapsed() >= hold + Duration::from_secs_f64(opts.timeout + 1.0)
                    })
                {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
            Mode::Idle => {
                if all_open_at.is_some_and(|t| t.elapsed() >= hold) {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    let (t0, ticks0) = measure_start.unwrap_or((Instant::now(), None));
    let seconds = t0.elapsed().as_secs_f64().max(1e-9);
    let ticks1 = opts.server_pid.and_then(cpu_ticks);
    let client_cpu = own_cpu_secs() - cpu0;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut ok_measured = 0;
    let mut bytes_measured = 0;
    let mut first_error = None;
    let mut closed_by_server = 0;
    for r in results {
        if let Some(wh) = &r.hist {
            let _ = hist.add(wh);
        }
        ok_measured += r.ok_measured;
        bytes_measured += r.bytes_measured;
        first_error = first_error.or(r.first_error);
        closed_by_server += r.closed_by_server;
    }
    let established = shared.sum(|p| &p.established);
    let mut report = Report {
        protocol: Some(opts.protocol),
        mode: Some(opts.mode),
        addr: opts.addr.to_string(),
        conns: opts.conns,
        pipeline: opts.pipeline,
        rate: opts.rate,
        threads,
        seconds,
        conns_established: established,
        conns_failed: shared.sum(|p| &p.conn_failed),
        tls_resumed: shared.sum(|p| &p.resumed),
        conns_closed_by_server: closed_by_server,
        requests_ok: shared.sum(|p| &p.ok),
        requests_failed: shared.sum(|p| &p.failed),
        requests_per_sec: ok_measured as f64 / seconds,
        mb_per_sec: bytes_measured as f64 / seconds / 1e6,
        latency: Latency::of(opts, &hist),
        server_rss_before_kib: rss_before,
        server_rss_peak_kib: rss_peak,
        server_bytes_per_conn: match (rss_before, rss_peak) {
            (Some(b), Some(p)) if established > 0 => {
                Some((p.saturating_sub(b) * 1024) as f64 / established as f64)
            }
            _ => None,
        },
        server_cpu_us_per_request: match (ticks0, ticks1) {
            (Some(a), Some(b)) if ok_measured > 0 && opts.mode == Mode::Load => {
                Some((b - a) as f64 / clock_ticks_per_sec() * 1e6 / ok_measured as f64)
            }
            _ => None,
        },
        client_cpu_percent: client_cpu / seconds * 100.0,
        client_cpu_us_per_request: match shared.sum(|p| &p.ok) {
            0 => None,
            ok => Some(client_cpu * 1e6 / ok as f64),
        },
        pool: None,
        first_error,
        failures: Vec::new(),
        check_misses: Vec::new(),
    };
    if opts.mode == Mode::Idle {
        report.requests_per_sec = 0.0;
    }
    report.failures = failures(opts, &report, panics);
    if opts.check {
        report.check_misses = check(&report);
    }
    report
}
