//! Counters. Each reactor counts in plain integers it alone writes, and publishes a copy
//! at most once per loop wake-up to a mutex the server reads, so the per-request path
//! has no lock and no shared atomic.

use std::fmt;
use std::ops::AddAssign;

/// What one reactor (or, summed, the server) has counted since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    /// Closed at once because --max-connections was reached.
    pub rejected: u64,
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
    /// Connections open now.
    pub open: u64,
    /// Pool buffers lent out now.
    pub buffers_lent: u64,
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
    /// Worker pool gauges (server-wide, filled in by the server, zero per shard).
    pub workers: u64,
    pub workers_busy: u64,
    pub jobs_queued: u64,
    pub workers_grown: u64,
    pub workers_retired: u64,
}

impl AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.accept_fd_errors += o.accept_fd_errors;
        self.closed += o.closed;
        self.idle_timeouts += o.idle_timeouts;
        self.read_timeouts += o.read_timeouts;
        self.write_timeouts += o.write_timeouts;
        self.io_errors += o.io_errors;
        self.requests += o.requests;
        self.bad_requests += o.bad_requests;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.cut_at_shutdown += o.cut_at_shutdown;
        self.open += o.open;
        self.buffers_lent += o.buffers_lent;
        self.jobs += o.jobs;
        self.jobs_dropped += o.jobs_dropped;
        self.handler_panics += o.handler_panics;
        self.handler_timeouts += o.handler_timeouts;
        self.stalls += o.stalls;
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
             idle_timeouts={} read_timeouts={} write_timeouts={} io_errors={} \
             accept_fd_errors={} bytes_in={} bytes_out={} buffers_lent={} cut_at_shutdown={}",
            self.open,
            self.accepted,
            self.rejected,
            self.closed,
            self.requests,
            self.bad_requests,
            self.idle_timeouts,
            self.read_timeouts,
            self.write_timeouts,
            self.io_errors,
            self.accept_fd_errors,
            self.bytes_in,
            self.bytes_out,
            self.buffers_lent,
            self.cut_at_shutdown,
        )?;
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
