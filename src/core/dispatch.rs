//! The dispatch layer, for handlers that block: requests handed to the worker pool
//! as jobs, their answers brought back by the completion inbox and put back in request
//! order (the reorder queue, [`Jobs`]), with the pool's queue reserved before decoding so
//! that backpressure, not loss, is what a full queue means.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::BytesMut;
use log::warn;

use super::conn::*;
use super::drive::{ConnIo, panic_message};
use crate::jobs::{Completion, Inbox, Jobs};
use crate::protocol::Cx;
use crate::service::{Failure, Handler};
use crate::workers::{Pool, Task};

/// The shard's side of the worker pool.
pub(crate) struct Offload<H: Handler> {
    pub pool: Pool,
    pub inbox: Arc<Inbox<H::Response>>,
    /// Jobs decoded this turn, handed to the pool in one batch at the end of it.
    pub tasks: Vec<Task>,
    /// Connections that stopped reading because the pool's queue was full.
    pub room_stalled: Vec<usize>,
    pub(super) next_generation: u64,
}

impl<H: Handler> Offload<H> {
    pub fn new(pool: Pool, inbox: Arc<Inbox<H::Response>>) -> Self {
        Offload {
            pool,
            inbox,
            tasks: Vec::new(),
            room_stalled: Vec::new(),
            next_generation: 0,
        }
    }

    /// Hands this turn's jobs to the pool.
    pub fn submit(&mut self) {
        if !self.tasks.is_empty() {
            self.pool.submit(self.tasks.drain(..));
        }
    }
}

impl<H: Handler> ConnIo<H> {
    /// Whether the connection must stop reading for the pool: it has its most jobs in
    /// flight (its completions will drive it again), or the queue is full (the pool
    /// wakes the shard when room frees).
    pub(super) fn no_room_for_jobs(&mut self, conn: &Conn<H::State>, key: usize) -> bool {
        let Some(off) = self.offload.as_mut() else {
            return false;
        };
        if conn.jobs_pending() >= self.set.max_inflight {
            self.stats.stalls += 1;
            return true;
        }
        if off.pool.has_room() {
            return false;
        }
        off.pool.wake_on_room(off.inbox.waker());
        // Room freed between the look and the request to be woken is not missed.
        if off.pool.has_room() {
            return false;
        }
        off.room_stalled.push(key);
        self.stats.stalls += 1;
        true
    }

    /// After a decode: turns the requests it handed over into jobs, and keeps every
    /// answer in request order. The decoder wrote its immediate answers to `out` and
    /// noted where each call stands in it; whatever follows a job (or any job still in
    /// flight) must wait for it, so it moves into the connection's reorder queue.
    pub(super) fn hand_over(
        &mut self,
        conn: &mut Conn<H::State>,
        key: usize,
        out: &mut BytesMut,
        out_start: usize,
        reserved: usize,
    ) {
        let Some(off) = self.offload.as_mut() else {
            return;
        };
        let used = self.calls.len();
        if used > reserved {
            // A codec that handed over more than its limit: count them all.
            off.pool.force_reserve(used - reserved);
        }
        off.pool.release(reserved.saturating_sub(used));
        if used == 0 && conn.jobs().is_none() {
            return;
        }
        self.segment.clear();
        self.segment.extend_from_slice(&out[out_start..]);
        out.truncate(out_start);
        let busy = conn.busy.get_or_insert_with(Box::default);
        let jobs = busy.jobs.get_or_insert_with(|| {
            off.next_generation = off.next_generation.wrapping_add(1);
            Box::new(Jobs::new(off.next_generation))
        });
        let generation = jobs.generation;
        let mut done = 0;
        for (at, request) in self.calls.drain(..) {
            let upto = at - out_start;
            place(&self.segment[done..upto], out, jobs);
            done = upto;
            let seq = jobs.push_pending(self.now);
            let handler = self.handler.clone();
            let inbox = off.inbox.clone();
            off.tasks.push(Box::new(move || {
                let result = catch_unwind(AssertUnwindSafe(|| handler.call(request)));
                let result = result.map_err(|panic| {
                    let msg = panic_message(&*panic);
                    warn!("a handler panicked: {msg}; its request gets an error answer");
                });
                inbox.push(Completion {
                    key,
                    generation,
                    seq,
                    result,
                });
            }));
        }
        place(&self.segment[done..], out, jobs);
        if jobs.is_empty() {
            busy.jobs = None;
        }
        self.stats.jobs += used as u64;
    }

    /// A finished job: its answer goes to the output if every answer before it is out,
    /// else into its slot. Returns whether the connection should be driven (flushed).
    pub fn complete(
        &mut self,
        conn: Option<&mut Conn<H::State>>,
        c: Completion<H::Response>,
    ) -> bool {
        let Some(conn) = conn else {
            self.stats.jobs_dropped += 1;
            return false;
        };
        let Some(busy) = conn.busy.as_deref_mut() else {
            self.stats.jobs_dropped += 1;
            return false;
        };
        let Some(jobs) = busy.jobs.as_mut().filter(|j| j.generation == c.generation) else {
            self.stats.jobs_dropped += 1;
            return false;
        };
        let Some(slot) = jobs.take_pending(c.seq) else {
            // Already answered by the handler timeout.
            self.stats.jobs_dropped += 1;
            return false;
        };
        self.stats
            .record_latency(self.now.saturating_sub(slot.since), 1);
        let mut cx = Cx::new(&self.clock);
        // The connection closes after this answer: a failure answer must say so.
        cx.draining = matches!(conn.stage, Stage::Closing | Stage::Ending) && jobs.is_last(&slot);
        let encode = |out: &mut BytesMut| match c.result {
            Ok(answer) => self.handler.encode(answer, out, &cx),
            Err(()) => {
                self.stats.handler_panics += 1;
                self.handler.encode_failure(Failure::Panicked, out, &cx);
            }
        };
        if jobs.is_front(&slot) {
            let out = busy.output.get_or_insert_with(|| self.pool.get());
            encode(out);
            jobs.pop_front_answered();
            while let Some(b) = jobs.pop_ready() {
                out.extend_from_slice(&b);
                self.pool.put(b);
            }
        } else {
            let mut b = self.pool.get();
            encode(&mut b);
            jobs.fill(slot, b);
        }
        if jobs.is_empty() {
            busy.jobs = None;
        }
        conn.last_active = Stamp::at(self.now);
        true
    }

    /// The handler timeout: jobs in flight longer than it are answered with a failure
    /// now, and their late results will be dropped.
    pub fn expire_jobs(&mut self, conn: &mut Conn<H::State>) {
        let closing = matches!(conn.stage, Stage::Closing | Stage::Ending);
        let Some(busy) = conn.busy.as_deref_mut() else {
            return;
        };
        let (Some(jobs), Some(limit)) = (busy.jobs.as_mut(), self.set.timeouts.handler) else {
            return;
        };
        let mut cx = Cx::new(&self.clock);
        let pool = &mut self.pool;
        let handler = &self.handler;
        let (stats, now) = (&mut self.stats, self.now);
        let n = jobs.expire(now.saturating_sub(limit), |since, last| {
            stats.record_latency(now.saturating_sub(since), 1);
            // The connection closes after this answer: a failure answer must say so.
            cx.draining = closing && last;
            let mut b = pool.get();
            handler.encode_failure(Failure::TimedOut, &mut b, &cx);
            b
        });
        self.stats.handler_timeouts += n as u64;
        if let Some(b) = jobs.pop_ready() {
            let out = busy.output.get_or_insert_with(|| pool.get());
            out.extend_from_slice(&b);
            pool.put(b);
            while let Some(b) = jobs.pop_ready() {
                out.extend_from_slice(&b);
                pool.put(b);
            }
        }
        if jobs.is_empty() {
            busy.jobs = None;
        }
    }
}

/// Puts an immediate answer where it belongs: straight into the output when no answer
/// is owed before it, else behind the owed ones.
fn place(bytes: &[u8], out: &mut BytesMut, jobs: &mut Jobs) {
    if bytes.is_empty() {
        return;
    }
    if jobs.is_empty() {
        out.extend_from_slice(bytes);
    } else {
        // Sized to the answer (an error line, say), not a whole pooled buffer.
        jobs.push_ready(BytesMut::from(bytes));
    }
}
