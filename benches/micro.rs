//! Micro-benchmarks of the pieces on the per-request path: the timer wheel, the buffer
//! pool and each protocol's decoder. `cargo bench --bench micro`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use reactor::buffer::BufferPool;
use reactor::clock::Clock;
use reactor::http::{App, hello};
use reactor::protocol::{Cx, Echo, Json, Protocol};
use reactor::timer::TimerWheel;

fn timer(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer");
    for n in [10_000u64, 100_000] {
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("schedule", n), &n, |b, &n| {
            b.iter_batched(
                || TimerWheel::<u64>::new(4096, 10),
                |mut w| {
                    for i in 0..n {
                        w.schedule(i * 7 % 60_000, i);
                    }
                    w
                },
                criterion::BatchSize::LargeInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("schedule+cancel", n), &n, |b, &n| {
            let mut w = TimerWheel::<u64>::new(4096, 10);
            let mut ids = Vec::with_capacity(n as usize);
            b.iter(|| {
                for i in 0..n {
                    ids.push(w.schedule(i * 7 % 60_000, i));
                }
                for id in ids.drain(..) {
                    black_box(w.cancel(id));
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("tick-through-60s", n), &n, |b, &n| {
            // n timers spread over 60 s, polled every 10 ms until all have fired.
            b.iter_batched(
                || {
                    let mut w = TimerWheel::<u64>::new(4096, 10);
                    for i in 0..n {
                        w.schedule(i * 60_000 / n, i);
                    }
                    w
                },
                |mut w| {
                    let mut fired = Vec::new();
                    let mut t = 0;
                    while !w.is_empty() {
                        t += 10;
                        w.poll(t, &mut fired);
                        fired.clear();
                    }
                    w
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn buffer(c: &mut Criterion) {
    let mut g = c.benchmark_group("buffer");
    g.bench_function("pool get+put", |b| {
        let mut pool = BufferPool::new(1024);
        b.iter(|| {
            let mut buf = pool.get();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            pool.put(black_box(buf));
        })
    });
    g.bench_function("BytesMut::with_capacity(4096) (no pool)", |b| {
        b.iter(|| {
            let mut buf = BytesMut::with_capacity(4096);
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            black_box(buf);
        })
    });
    g.finish();
}

fn decode_all<P: Protocol>(p: &P, input: &[u8], cx: &Cx, out: &mut BytesMut) -> usize {
    let mut st = P::State::default();
    out.clear();
    let d = p.decode(&mut st, input, out, cx);
    d.requests
}

fn decoders(c: &mut Criterion) {
    let clock = Clock::default();
    let cx = Cx::new(&clock);
    let mut g = c.benchmark_group("decode");
    let mut out = BytesMut::with_capacity(1 << 20);

    let http_one =
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
    let http_batch: Vec<u8> = http_one.repeat(100);
    g.throughput(Throughput::Elements(100));
    g.bench_function("http 100 pipelined requests", |b| {
        b.iter(|| {
            decode_all(
                &App::new(hello).addresses(false),
                black_box(&http_batch),
                &cx,
                &mut out,
            )
        })
    });

    let json_batch: Vec<u8> = (0..100)
        .flat_map(|i| format!("{{\"Uid\":\"{i}\",\"Val\":\"value {i}\"}}\n").into_bytes())
        .collect();
    g.bench_function("json 100 messages", |b| {
        b.iter(|| decode_all(&Json::default(), black_box(&json_batch), &cx, &mut out))
    });

    let echo = vec![b'e'; 6400];
    g.bench_function("echo 6400 bytes", |b| {
        b.iter(|| decode_all(&Echo, black_box(&echo), &cx, &mut out))
    });
    g.finish();
}

/// What the latency histogram costs per request: one bucket search and two adds.
fn latency(c: &mut Criterion) {
    let mut counters = reactor::stats::Counters::default();
    let mut ms = 0u64;
    c.bench_function("latency histogram: record one request", |b| {
        b.iter(|| {
            ms = (ms + 7) % 3000;
            counters.record_latency(std::hint::black_box(ms), 1);
        })
    });
    std::hint::black_box(counters);
}

criterion_group!(benches, timer, buffer, decoders, latency);
criterion_main!(benches);
