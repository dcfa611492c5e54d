//! The admin endpoint: `GET /metrics` (the Prometheus text format, written with the
//! prometheus-client crate) and `GET /health` (200 `ok` while serving, 503 `draining`
//! from the first moment of a drain, so a load balancer stops sending before the
//! process exits).
//!
//! It is served by a shard of its own (a second [`Server`](crate::Server) with one
//! thread, speaking [`Admin`]), so a slow or hostile scraper meets the same timeouts and
//! limits as any client and never touches the serving shards' loops. A scrape sums the
//! shards' published counters (plain integers each shard copies out at most every
//! 100 ms) and reads the pool's gauges and `/proc/self`: nothing on the request path.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::{Cx, Decoded, Next, Protocol};
use crate::shared::Shared;
use crate::stats::{Counters, LATENCY_BOUNDS_US};
use crate::workers::Pool;

/// What a scrape reads.
pub(crate) struct Sources {
    pub shared: Arc<Shared>,
    pub pool: Option<Pool>,
    /// The `protocol` label of request counters.
    pub protocol: &'static str,
    /// With --tls-cert: the certificate reloads.
    pub tls: Option<Arc<crate::tls::TlsShared>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

/// The admin protocol: HTTP/1.1 GET of `/metrics` and `/health`.
#[derive(Clone)]
pub(crate) struct Admin {
    registry: Arc<Registry>,
    sources: Arc<Sources>,
}

impl Admin {
    pub fn new(sources: Sources) -> Admin {
        let sources = Arc::new(sources);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(sources.clone()));
        Admin {
            registry: Arc::new(registry),
            sources,
        }
    }

    /// The exposition in the OpenMetrics text format (what prometheus-client writes,
    /// and what a Prometheus server asks for).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn draining(&self) -> bool {
        self.sources.shared.shutdown.load(Ordering::Acquire)
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, unit, c.metric_type())?)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: i64,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let shards: Vec<Counters> = self
            .shared
            .stats
            .iter()
            .map(|cell| cell.lock().map(|c| *c).unwrap_or_default())
            .collect();
        let t = self.shared.total();
        {
            let mut m = e.encode_descriptor(
                "reactor_connections_open",
                "Connections open now, per shard.",
                None,
                MetricType::Gauge,
            )?;
            for (i, s) in shards.iter().enumerate() {
                let shard = [("shard", i.to_string())];
                ConstGauge::new(as_i64(s.open)).encode(m.encode_family(&shard)?)?;
            }
        }
        counter(
            &mut e,
            "reactor_connections_accepted",
            "Connections accepted.",
            None,
            t.accepted,
        )?;
        counter(
            &mut e,
            "reactor_connections_rejected",
            "Connections closed at once: over --max-connections or --max-connections-per-ip, or accepted with the spare descriptor when descriptors ran out.",
            None,
            t.rejected,
        )?;
        {
            let mut m = e.encode_descriptor(
                "reactor_connections_closed",
                "Connections closed, by reason.",
                None,
                MetricType::Counter,
            )?;
            let others = t.io_errors
                + t.idle_timeouts
                + t.read_timeouts
                + t.write_timeouts
                + t.keepalive_timeouts
                + t.user_timeouts
                + t.cut_at_shutdown
                + t.decode_panics;
            for (reason, v) in [
                ("normal", t.closed.saturating_sub(others)),
                ("error", t.io_errors),
                ("idle_timeout", t.idle_timeouts),
                ("read_timeout", t.read_timeouts),
                ("write_timeout", t.write_timeouts),
                ("keepalive", t.keepalive_timeouts),
                ("user_timeout", t.user_timeouts),
                ("cut_at_shutdown", t.cut_at_shutdown),
                ("decoder_panic", t.decode_panics),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("reason", reason)])?)?;
            }
        }
        for (name, help, v) in [
            (
                "reactor_requests",
                "Requests answered, errors included.",
                t.requests,
            ),
            (
                "reactor_bad_requests",
                "Answers that reported bad input (HTTP 4xx, JSON error lines).",
                t.bad_requests,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m.encode_family(&[("protocol", self.protocol)])?)?;
        }
        counter(
            &mut e,
            "reactor_received",
            "Bytes read from connections.",
            Some(&Unit::Bytes),
            t.bytes_in,
        )?;
        counter(
            &mut e,
            "reactor_sent",
            "Bytes written to connections.",
            Some(&Unit::Bytes),
            t.bytes_out,
        )?;
        gauge(
            &mut e,
            "reactor_buffers_lent",
            "Pooled 4 KB buffers lent to connections now.",
            None,
            as_i64(t.buffers_lent),
        )?;
        gauge(
            &mut e,
            "reactor_buffers_pooled",
            "Idle 4 KB buffers kept by the shards' pools.",
            None,
            as_i64(t.buffers_pooled),
        )?;
        gauge(
            &mut e,
            "reactor_buffer_memory",
            "Heap memory the process holds now: connections' buffers, bodies, pushes, \
             and the server's own structures (0 without the counting allocator).",
            Some(&Unit::Bytes),
            as_i64(t.buffer_memory),
        )?;
        gauge(
            &mut e,
            "reactor_buffer_memory_limit",
            "The memory budget, --max-buffer-memory (0: none).",
            Some(&Unit::Bytes),
            as_i64(t.buffer_memory_limit),
        )?;
        counter(
            &mut e,
            "reactor_memory_pauses",
            "Times a shard stopped reading connections that owe output: the heap reached \
             the memory budget.",
            None,
            t.memory_pauses,
        )?;
        counter(
            &mut e,
            "reactor_accept_fd_errors",
            "Accepts that failed for lack of file descriptors (EMFILE/ENFILE).",
            None,
            t.accept_fd_errors,
        )?;
        counter(
            &mut e,
            "reactor_input_overflows",
            "Connections closed for holding more unconsumed input than --max-input.",
            None,
            t.input_overflows,
        )?;
        counter(
            &mut e,
            "reactor_lingering_closes",
            "Closes that lingered (shut down, then the peer's bytes read and dropped until \
             its FIN) so that a reset would not destroy answers it had not read.",
            None,
            t.lingers,
        )?;
        counter(
            &mut e,
            "reactor_pushes",
            "Pushes placed on their connection's output.",
            None,
            t.pushes,
        )?;
        counter(
            &mut e,
            "reactor_pushes_refused",
            "Pushes refused: the connection was over --high-water, closing or gone.",
            None,
            t.pushes_refused,
        )?;
        counter(
            &mut e,
            "reactor_refused_by_protocol",
            "Connections the protocol's open hook refused.",
            None,
            t.refused_by_protocol,
        )?;
        counter(
            &mut e,
            "reactor_proxy_headers",
            "PROXY protocol headers read from trusted load balancers.",
            None,
            t.proxy_headers,
        )?;
        {
            let mut m = e.encode_descriptor(
                "reactor_proxy_refused",
                "Connections closed at their PROXY header, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in [
                ("missing", t.proxy_missing),
                ("malformed", t.proxy_malformed),
                ("oversized", t.proxy_oversized),
                ("untrusted", t.proxy_untrusted),
                ("timeout", t.proxy_timeouts),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("reason", reason)])?)?;
            }
        }
        if let Some(tls) = &self.tls {
            gauge(
                &mut e,
                "reactor_tls_connections_open",
                "TLS connections open now (handshaking or established).",
                None,
                as_i64(t.tls_open),
            )?;
            counter(
                &mut e,
                "reactor_tls_handshakes",
                "TLS handshakes completed.",
                None,
                t.tls_handshakes,
            )?;
            counter(
                &mut e,
                "reactor_tls_resumed_handshakes",
                "TLS handshakes that resumed a session (a ticket or a cached session).",
                None,
                t.tls_resumed,
            )?;
            {
                let mut m = e.encode_descriptor(
                    "reactor_tls_handshake_failures",
                    "TLS handshakes that did not complete, by reason.",
                    None,
                    MetricType::Counter,
                )?;
                for (reason, v) in [
                    ("not_tls", t.tls_fail_not_tls),
                    ("protocol", t.tls_fail_protocol),
                    ("timeout", t.tls_fail_timeout),
                    ("closed", t.tls_fail_closed),
                ] {
                    ConstCounter::new(v).encode(m.encode_family(&[("reason", reason)])?)?;
                }
            }
            {
                let mut m = e.encode_descriptor(
                    "reactor_tls_reloads",
                    "Certificate reloads (SIGHUP), by result; a refused one keeps the pair in force.",
                    None,
                    MetricType::Counter,
                )?;
                for (result, v) in [
                    ("ok", tls.reloads.load(Ordering::Relaxed)),
                    ("refused", tls.reload_failures.load(Ordering::Relaxed)),
                ] {
                    ConstCounter::new(v).encode(m.encode_family(&[("result", result)])?)?;
                }
            }
        }
        if let Some(pool) = &self.pool {
            let p = pool.stats();
            gauge(
                &mut e,
                "reactor_workers",
                "Worker threads alive.",
                None,
                as_i64(p.workers),
            )?;
            gauge(
                &mut e,
                "reactor_workers_busy",
                "Worker threads running a job.",
                None,
                as_i64(p.busy),
            )?;
            gauge(
                &mut e,
                "reactor_jobs_queued",
                "Jobs waiting for a worker (or reserved).",
                None,
                as_i64(p.queued),
            )?;
            counter(
                &mut e,
                "reactor_workers_grown",
                "Workers started beyond --workers.",
                None,
                p.grown,
            )?;
            counter(
                &mut e,
                "reactor_workers_retired",
                "Workers that exited after idling.",
                None,
                p.retired,
            )?;
            counter(
                &mut e,
                "reactor_jobs",
                "Requests handed to the worker pool.",
                None,
                t.jobs,
            )?;
            counter(
                &mut e,
                "reactor_jobs_dropped",
                "Job results dropped: connection gone or already answered by the handler timeout.",
                None,
                t.jobs_dropped,
            )?;
            counter(
                &mut e,
                "reactor_handler_panics",
                "Requests answered with an error because their handler panicked.",
                None,
                t.handler_panics,
            )?;
            counter(
                &mut e,
                "reactor_handler_timeouts",
                "Requests answered with an error because their handler timed out.",
                None,
                t.handler_timeouts,
            )?;
            counter(
                &mut e,
                "reactor_stalls",
                "Times a connection was not read for lack of room in the pool.",
                None,
                t.stalls,
            )?;
        }
        let (rss, fds) = process_readings();
        gauge(
            &mut e,
            "reactor_process_resident_memory",
            "Resident memory of the process (VmRSS).",
            Some(&Unit::Bytes),
            as_i64(rss),
        )?;
        gauge(
            &mut e,
            "reactor_process_open_fds",
            "Open file descriptors of the process.",
            None,
            as_i64(fds),
        )?;
        {
            let m = e.encode_descriptor(
                "reactor_request_duration",
                "Server-side request latency: the turn of the loop in which a request's first byte was read, to the turn in which its answer was handed to the socket.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            // The encoder accumulates the buckets itself: give it each bucket's own count.
            let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_US.len() + 1);
            for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
                buckets.push((*bound as f64 / 1e6, t.latency[i]));
            }
            buckets.push((f64::INFINITY, t.latency[LATENCY_BOUNDS_US.len()]));
            let count = t.latency.iter().sum();
            let mut m = m;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                t.latency_sum_us as f64 / 1e6,
                count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// VmRSS in bytes and the number of open descriptors, from /proc/self.
fn process_readings() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (rss, fds)
}

/// The classic Prometheus text format (0.0.4), for scrapers that do not ask for
/// OpenMetrics (curl, promtool). The two differ only in the metadata lines: OpenMetrics
/// names a counter family without its `_total` suffix and adds `# UNIT` and `# EOF`.
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let name = rest.split(' ').next().unwrap_or_default();
                if counters.contains(&name) {
                    out.push_str(prefix);
                    out.push_str(name);
                    out.push_str("_total");
                    out.push_str(&rest[name.len()..]);
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

const MAX_HEAD: usize = 8192;

fn answer(out: &mut BytesMut, status: &str, content_type: &str, body: &str, close: bool) {
    let _ = write!(
        Writer(out),
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    out.extend_from_slice(body.as_bytes());
}

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl Protocol for Admin {
    type State = ();

    fn decode(&self, _: &mut (), input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut d = Decoded::default();
        loop {
            let rest = &input[d.consumed..];
            if rest.is_empty() || d.at_limit(cx, out) {
                return d;
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(rest) {
                Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
                Ok(httparse::Status::Partial) if rest.len() <= MAX_HEAD => return d,
                _ => {
                    answer(out, "400 Bad Request", "text/plain", "bad request\n", true);
                    d.requests += 1;
                    d.errors += 1;
                    d.consumed = input.len();
                    d.next = Next::Close;
                    return d;
                }
            };
            let has_body = req.headers.iter().any(|h| {
                (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
                    || h.name.eq_ignore_ascii_case("transfer-encoding")
            });
            let close = req.version == Some(0)
                || req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && h.value.trim_ascii().eq_ignore_ascii_case(b"close")
                });
            let openmetrics = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept")
                    && h.value
                        .windows(b"openmetrics".len())
                        .any(|w| w.eq_ignore_ascii_case(b"openmetrics"))
            });
            let path = req.path.unwrap_or("/").split('?').next().unwrap_or("/");
            d.consumed += n;
            d.requests += 1;
            if has_body || !matches!(req.method, Some("GET") | Some("HEAD")) {
                answer(
                    out,
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n",
                    true,
                );
                d.errors += 1;
                d.next = Next::Close;
                return d;
            }
            match path {
                "/metrics" if openmetrics => answer(
                    out,
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    &self.render(),
                    close,
                ),
                "/metrics" => answer(
                    out,
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &to_prometheus_text(&self.render()),
                    close,
                ),
                "/health" if self.draining() => answer(
                    out,
                    "503 Service Unavailable",
                    "text/plain",
                    "draining\n",
                    close,
                ),
                "/health" => answer(out, "200 OK", "text/plain", "ok\n", close),
                _ => {
                    d.errors += 1;
                    answer(
                        out,
                        "404 Not Found",
                        "text/plain",
                        "try /metrics or /health\n",
                        close,
                    )
                }
            }
            if close {
                d.next = Next::Close;
                return d;
            }
        }
    }
}
