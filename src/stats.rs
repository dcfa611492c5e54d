//! Counters. Each reactor counts in plain integers it alone writes, and publishes a copy
//! at most once per loop wake-up to a mutex the server reads, so the per-request path
//! has no lock and no shared atomic.

use std::fmt;
use std::ops::AddAssign;

/// Upper bounds of the request latency histogram's buckets, in microseconds (a last
/// bucket takes the rest).
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// What one reactor (or, summed, the server) has counted since start. More counters
/// may come: read the fields, do not build one.
///
/// ```
/// let cfg = reactor::Config::default().addr("127.0.0.1:0".parse().unwrap()).threads(1);
/// let server = reactor::Server::start(&cfg)?;
/// let c: reactor::stats::Counters = server.stats();
/// assert_eq!(c.open, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    pub accepted: u64,
    /// Closed at once because --max-connections (or --max-connections-per-ip) was
    /// reached, or by the spare descriptor when descriptors ran out.
    pub rejected: u64,
    /// Of those, because the client's address had --max-connections-per-ip open.
    pub rejected_per_ip: u64,
    /// Accepts that failed for lack of file descriptors (EMFILE/ENFILE).
    pub accept_fd_errors: u64,
    pub closed: u64,
    pub idle_timeouts: u64,
    pub read_timeouts: u64,
    pub write_timeouts: u64,
    /// Closed because of a socket error (reset by peer and the like).
    pub io_errors: u64,
    /// Requests answered, errors included.
    pub requests: u64,
    /// Answers that reported bad input (HTTP 4xx/5xx, JSON error lines).
    pub bad_requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connections cut by the drain deadline at shutdown.
    pub cut_at_shutdown: u64,
    /// Connections closed because their decoder panicked or reported more input
    /// consumed than it was given (a bug in a protocol; the shard goes on).
    pub decode_panics: u64,
    /// Connections closed because they sent more than `max_input` bytes their
    /// protocol did not consume (one request larger than any it accepts).
    pub input_overflows: u64,
    /// Closes that lingered: our side shut down, then the peer's bytes read and dropped
    /// until its FIN (or 2 s), so that a reset does not destroy answers it has not
    /// read (error answers, pipelining peers, drains, bytes left unread).
    pub lingers: u64,
    /// Connections closed because the peer vanished while idle: TCP keep-alive probes
    /// went unanswered.
    pub keepalive_timeouts: u64,
    /// Connections closed because the peer vanished with data pending: it stayed
    /// unacknowledged past TCP_USER_TIMEOUT.
    pub user_timeouts: u64,
    /// Connections the protocol's `open` hook refused.
    pub refused_by_protocol: u64,
    /// Pushes placed on their connection's output.
    pub pushes: u64,
    /// Pushes refused at their shard: the connection was over its high-water mark,
    /// closing, or gone.
    pub pushes_refused: u64,
    /// Connections open now.
    pub open: u64,
    /// Pool buffers lent out now.
    pub buffers_lent: u64,
    /// Idle buffers kept by the pools now.
    pub buffers_pooled: u64,
    /// Heap bytes the process holds now, with [`memory::Counted`](crate::memory::Counted)
    /// as its allocator (0 otherwise); process-wide.
    pub buffer_memory: u64,
    /// The memory budget (`--max-buffer-memory`), 0 for none.
    pub buffer_memory_limit: u64,
    /// Times a shard stopped reading connections that owe output because the heap
    /// reached the budget.
    pub memory_pauses: u64,
    /// Requests by server-side latency (see [`LATENCY_BOUNDS_US`]), and the sum in us.
    pub latency: [u64; LATENCY_BUCKETS],
    pub latency_sum_us: u64,
    /// PROXY headers read, and connections refused at theirs by reason.
    pub proxy_headers: u64,
    pub proxy_missing: u64,
    pub proxy_malformed: u64,
    pub proxy_oversized: u64,
    pub proxy_untrusted: u64,
    pub proxy_timeouts: u64,
    /// Requests handed to the worker pool.
    pub jobs: u64,
    /// Job results dropped: their connection had closed, or the handler timeout had
    /// already answered.
    pub jobs_dropped: u64,
    /// Requests answered with an error because their handler panicked.
    pub handler_panics: u64,
    /// Requests answered with an error because their handler timed out.
    pub handler_timeouts: u64,
    /// Times a connection was not read because it had its most jobs in flight or the
    /// pool's queue was full.
    pub stalls: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// Of those, handshakes that resumed a session (a ticket or a cached session id).
    pub tls_resumed: u64,
    /// TLS handshakes that did not complete, by reason: plain text on the TLS port,
    /// refused by rustls (bad records, no common parameters, an alert), timed out, or
    /// closed by the peer (or cut by a drain) before the end.
    pub tls_fail_not_tls: u64,
    pub tls_fail_protocol: u64,
    pub tls_fail_timeout: u64,
    pub tls_fail_closed: u64,
    /// TLS connections open now.
    pub tls_open: u64,
    /// Certificate reloads that took, and those refused (server-wide, filled in by the
    /// server).
    pub tls_reloads: u64,
    pub tls_reload_failures: u64,
    /// Worker pool gauges (server-wide, filled in by the server, zero per shard).
    pub workers: u64,
    pub workers_busy: u64,
    pub jobs_queued: u64,
    pub workers_grown: u64,
    pub workers_retired: u64,
}

impl Counters {
    /// Counts `n` requests answered `ms` milliseconds after their first byte.
    #[inline]
    pub fn record_latency(&mut self, ms: u64, n: u64) {
        let us = ms.saturating_mul(1000);
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.latency[i] += n;
        self.latency_sum_us += us * n;
    }
}

impl Counters {
    /// TLS handshakes that did not complete, whatever the reason.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_fail_not_tls
            + self.tls_fail_protocol
            + self.tls_fail_timeout
            + self.tls_fail_closed
    }
}

impl AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.rejected_per_ip += o.rejected_per_ip;
        self.accept_fd_errors += o.accept_fd_errors;
        self.closed += o.closed;
        self.idle_timeouts += o.idle_timeouts;
        self.read_timeouts += o.read_timeouts;
        self.write_timeouts += o.write_timeouts;
        self.io_errors += o.io_errors;
        self.requests += o.requests;
        self.decode_panics += o.decode_panics;
        self.input_overflows += o.input_overflows;
        self.lingers += o.lingers;
        self.refused_by_protocol += o.refused_by_protocol;
        self.keepalive_timeouts += o.keepalive_timeouts;
        self.user_timeouts += o.user_timeouts;
        self.pushes += o.pushes;
        self.pushes_refused += o.pushes_refused;
        self.bad_requests += o.bad_requests;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.cut_at_shutdown += o.cut_at_shutdown;
        self.open += o.open;
        self.buffers_lent += o.buffers_lent;
        self.buffers_pooled += o.buffers_pooled;
        // Process-wide gauges: the same for every shard.
        self.buffer_memory = self.buffer_memory.max(o.buffer_memory);
        self.buffer_memory_limit = self.buffer_memory_limit.max(o.buffer_memory_limit);
        self.memory_pauses += o.memory_pauses;
        for (a, b) in self.latency.iter_mut().zip(o.latency) {
            *a += b;
        }
        self.latency_sum_us += o.latency_sum_us;
        self.proxy_headers += o.proxy_headers;
        self.proxy_missing += o.proxy_missing;
        self.proxy_malformed += o.proxy_malformed;
        self.proxy_oversized += o.proxy_oversized;
        self.proxy_untrusted += o.proxy_untrusted;
        self.proxy_timeouts += o.proxy_timeouts;
        self.jobs += o.jobs;
        self.jobs_dropped += o.jobs_dropped;
        self.handler_panics += o.handler_panics;
        self.handler_timeouts += o.handler_timeouts;
        self.stalls += o.stalls;
        self.tls_handshakes += o.tls_handshakes;
        self.tls_resumed += o.tls_resumed;
        self.tls_fail_not_tls += o.tls_fail_not_tls;
        self.tls_fail_protocol += o.tls_fail_protocol;
        self.tls_fail_timeout += o.tls_fail_timeout;
        self.tls_fail_closed += o.tls_fail_closed;
        self.tls_open += o.tls_open;
        self.tls_reloads += o.tls_reloads;
        self.tls_reload_failures += o.tls_reload_failures;
        self.workers += o.workers;
        self.workers_busy += o.workers_busy;
        self.jobs_queued += o.jobs_queued;
        self.workers_grown += o.workers_grown;
        self.workers_retired += o.workers_retired;
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open={} accepted={} rejected={} closed={} requests={} bad_requests={} \
             idle_timeouts={} read_timeouts={} write_timeouts={} keepalive_timeouts={} \
             user_timeouts={} io_errors={} \
             accept_fd_errors={} bytes_in={} bytes_out={} buffers_lent={} cut_at_shutdown={} \
             rejected_per_ip={} decode_panics={} input_overflows={} lingers={}",
            self.open,
            self.accepted,
            self.rejected,
            self.closed,
            self.requests,
            self.bad_requests,
            self.idle_timeouts,
            self.read_timeouts,
            self.write_timeouts,
            self.keepalive_timeouts,
            self.user_timeouts,
            self.io_errors,
            self.accept_fd_errors,
            self.bytes_in,
            self.bytes_out,
            self.buffers_lent,
            self.cut_at_shutdown,
            self.rejected_per_ip,
            self.decode_panics,
            self.input_overflows,
            self.lingers,
        )?;
        if self.buffer_memory > 0 {
            write!(f, " buffer_memory={}", self.buffer_memory)?;
        }
        if self.buffer_memory_limit > 0 {
            write!(
                f,
                " buffer_memory_limit={} memory_pauses={}",
                self.buffer_memory_limit, self.memory_pauses
            )?;
        }
        if self.pushes + self.pushes_refused + self.refused_by_protocol > 0 {
            write!(
                f,
                " pushes={} pushes_refused={} refused_by_protocol={}",
                self.pushes, self.pushes_refused, self.refused_by_protocol
            )?;
        }
        let refused = self.proxy_missing
            + self.proxy_malformed
            + self.proxy_oversized
            + self.proxy_untrusted
            + self.proxy_timeouts;
        if self.proxy_headers > 0 || refused > 0 {
            write!(
                f,
                " proxy_headers={} proxy_missing={} proxy_malformed={} proxy_oversized={} \
                 proxy_untrusted={} proxy_timeouts={}",
                self.proxy_headers,
                self.proxy_missing,
                self.proxy_malformed,
                self.proxy_oversized,
                self.proxy_untrusted,
                self.proxy_timeouts,
            )?;
        }
        if self.tls_handshakes > 0 || self.tls_handshake_failures() > 0 || self.tls_open > 0 {
            write!(
                f,
                " tls_open={} tls_handshakes={} tls_resumed={} tls_handshake_failures={} tls_fail_not_tls={} \
                 tls_fail_protocol={} tls_fail_timeout={} tls_fail_closed={} tls_reloads={} \
                 tls_reload_failures={}",
                self.tls_open,
                self.tls_handshakes,
                self.tls_resumed,
                self.tls_handshake_failures(),
                self.tls_fail_not_tls,
                self.tls_fail_protocol,
                self.tls_fail_timeout,
                self.tls_fail_closed,
                self.tls_reloads,
                self.tls_reload_failures,
            )?;
        }
        if self.jobs > 0 || self.workers > 0 {
            write!(
                f,
                " jobs={} jobs_dropped={} handler_panics={} handler_timeouts={} stalls={} \
                 workers={} workers_busy={} jobs_queued={} workers_grown={} workers_retired={}",
                self.jobs,
                self.jobs_dropped,
                self.handler_panics,
                self.handler_timeouts,
                self.stalls,
                self.workers,
                self.workers_busy,
                self.jobs_queued,
                self.workers_grown,
                self.workers_retired,
            )?;
        }
        Ok(())
    }
}
