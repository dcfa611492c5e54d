//! reactor-chaos: a soak tool that checks that the server loses nothing while its peers
//! behave badly. Each of `--conns` connections (a thread each) runs exchanges until
//! `--duration` is over: K pipelined requests (1 to 32) written in random fragments,
//! then a random ending (half-close, graceful close, keep-alive, slow read, abort,
//! reset; see `behaviour.rs`). Every answer a peer waits for must come back, right and
//! in order, checked with the project's wire module. A seeded generator draws
//! everything, so a run's scenario can be replayed with its `--seed`.
//!
//! The connections can start with a PROXY header (`--proxy-header`), speak TLS
//! (`--tls-ca`), and go through a fault-injecting proxy (`--faults`, see `faults.rs`):
//! answers missing on a connection the proxy cut are counted `cut`, not lost.
//!
//! Exits 1 when an answer was lost or corrupted or a connection failed, 2 on bad
//! arguments.

mod behaviour;
mod codec;
mod exchange;
mod faults;
mod options;
mod peer;
mod rng;
mod stream;
mod tally;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::Serialize;

use faults::{Faults, Proxy, ProxyStats};
use options::{Opts, Proto};
use peer::Peer;
use reactor::tls::{self, Trust};
use stream::Dialer;
use tally::Tally;

/// Failures listed in the summary (the rest are counted).
const LISTED: usize = 15;

/// The JSON summary line.
#[derive(Serialize)]
struct Summary<'a> {
    #[serde(flatten)]
    tally: &'a Tally,
    protocol: Proto,
    conns: usize,
    seed: u64,
    seconds: f64,
    ok: bool,
    /// What the fault proxy did (`--faults`).
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<ProxySummary>,
}

/// The fault proxy's counts, for the JSON line.
#[derive(Serialize)]
struct ProxySummary {
    faults: String,
    connections: u64,
    upstream_failures: u64,
    cuts: u64,
    stalls: u64,
    bytes_up: u64,
    bytes_down: u64,
}

impl ProxySummary {
    fn new(faults: &str, s: ProxyStats) -> Self {
        ProxySummary {
            faults: faults.to_string(),
            connections: s.connections,
            upstream_failures: s.upstream_failures,
            cuts: s.cuts,
            stalls: s.stalls,
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
        }
    }
}

fn main() {
    let opts = Opts::parse();
    if opts.conns == 0 || opts.max_pipeline == 0 || opts.max_payload == 0 {
        fail_usage("--conns, --max-pipeline and --max-payload must be at least 1");
    }
    if opts.behaviours.is_empty() {
        fail_usage("--behaviours needs at least one");
    }
    if opts.timeout.is_zero() {
        fail_usage("--timeout must not be 0");
    }
    let addr = match resolve(&opts.addr) {
        Ok(a) => a,
        Err(e) => fail_usage(&format!("--addr {}: {e}", opts.addr)),
    };
    let seed = opts.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let _ = reactor::server::raise_nofile_limit();
    let proxy = opts.faults.as_deref().map(|spec| {
        let faults = Faults::parse(spec).unwrap_or_else(|e| fail_usage(&format!("--faults: {e}")));
        Proxy::start(addr, faults, seed)
            .unwrap_or_else(|e| fail_usage(&format!("--faults: starting the proxy: {e}")))
    });
    let tls = opts.tls_ca.as_ref().map(|ca| {
        let alpn = match opts.protocol {
            Proto::Http => vec![b"http/1.1".to_vec()],
            _ => Vec::new(),
        };
        tls::client_config(&Trust::Ca(ca.clone()), &alpn)
            .and_then(|cfg| {
                Ok((
                    cfg,
                    tls::server_name(opts.server_name.as_deref(), addr.ip())?,
                ))
            })
            .unwrap_or_else(|e| fail_usage(&format!("--tls-ca: {e}")))
    });
    let dialer = Dialer {
        addr: proxy.as_ref().map_or(addr, Proxy::addr),
        timeout: opts.timeout,
        header: opts.proxy_header,
        tls,
    };

    let start = Instant::now();
    let deadline = start + opts.duration;
    let total = std::thread::scope(|scope| {
        let peers: Vec<_> = (0..opts.conns)
            .map(|id| {
                let peer = Peer::new(id, &opts, seed, &dialer, proxy.as_ref(), deadline);
                std::thread::Builder::new()
                    .name(format!("peer {id}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || peer.run())
                    .expect("spawn a peer thread")
            })
            .collect();
        let mut total = Tally::default();
        for (id, p) in peers.into_iter().enumerate() {
            match p.join() {
                Ok(t) => total += t,
                Err(_) => {
                    total.errors += 1;
                    total
                        .failures
                        .push(format!("connection {id}: its thread panicked"));
                }
            }
        }
        total
    });
    let seconds = start.elapsed().as_secs_f64();
    let why = total.verdict();
    let proxied = proxy
        .as_ref()
        .zip(opts.faults.as_deref())
        .map(|(p, spec)| ProxySummary::new(spec, p.stats()));
    drop(proxy);
    print_summary(&opts, addr, seed, seconds, &total, &why, proxied.as_ref());
    if opts.json {
        let line = Summary {
            tally: &total,
            protocol: opts.protocol,
            conns: opts.conns,
            seed,
            seconds,
            ok: why.is_empty(),
            proxy: proxied,
        };
        println!("{}", serde_json::to_string(&line).unwrap_or_default());
    }
    if !why.is_empty() {
        std::process::exit(1);
    }
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))
}

fn fail_usage(why: &str) -> ! {
    eprintln!("reactor-chaos: {why}");
    std::process::exit(2);
}

fn print_summary(
    opts: &Opts,
    addr: SocketAddr,
    seed: u64,
    seconds: f64,
    t: &Tally,
    why: &[String],
    proxy: Option<&ProxySummary>,
) {
    let proto = format!("{:?}", opts.protocol).to_lowercase();
    eprintln!(
        "reactor-chaos: {proto} at {addr}, {} connections, {seconds:.1} s, seed {seed}",
        opts.conns
    );
    eprintln!(
        "  exchanges {} on {} connections: half-close {}, graceful {}, keep-alive {}, \
         slow-read {}, aborted {}, reset {}",
        t.exchanges,
        t.connections,
        t.half_closes,
        t.graceful,
        t.keep_alives,
        t.slow_reads,
        t.aborted,
        t.resets
    );
    eprintln!(
        "  requests {}: answers checked {} ({} bytes), lost {}, corrupt {}, unchecked {} \
         (aborted or reset); connection errors {}",
        t.requests, t.answers, t.answer_bytes, t.lost, t.corrupt, t.unchecked, t.errors
    );
    if let Some(p) = proxy {
        eprintln!(
            "  through faults {}: {} connections ({} upstream failures), {} cut ({} \
             exchanges, {} requests unanswered), {} stalls, {} bytes up, {} down",
            p.faults,
            p.connections,
            p.upstream_failures,
            p.cuts,
            t.cut_exchanges,
            t.cut,
            p.stalls,
            p.bytes_up,
            p.bytes_down
        );
    }
    for f in t.failures.iter().take(LISTED) {
        eprintln!("  failed: {f}");
    }
    if t.failures.len() > LISTED {
        eprintln!("  ... and {} more described", t.failures.len() - LISTED);
    }
    if why.is_empty() {
        eprintln!("reactor-chaos: OK, nothing lost");
    } else {
        eprintln!("reactor-chaos: FAILED: {}", why.join(", "));
    }
}
