//! What the peers counted, summed, and the run's verdict.

use std::ops::AddAssign;

use serde::Serialize;

/// Failures of each kind (lost, corrupt, error) kept, described, in a sum.
const KEPT: usize = 5;

/// One peer's counts (and, summed, the run's). The first eight fields are the JSON
/// summary's promised ones, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Tally {
    /// Exchanges ended, whatever their ending.
    pub(crate) exchanges: u64,
    /// Requests written whole.
    pub(crate) requests: u64,
    /// Answers read and found right (of checked exchanges).
    pub(crate) answers: u64,
    /// Requests of checked exchanges whose answer never came.
    pub(crate) lost: u64,
    /// Requests of checked exchanges answered wrong (bytes, order), or after a wrong
    /// answer.
    pub(crate) corrupt: u64,
    /// Connections that failed: refused, reset, timed out.
    pub(crate) errors: u64,
    /// Exchanges closed without reading the answers.
    pub(crate) aborted: u64,
    /// Exchanges ended by a reset.
    pub(crate) resets: u64,
    pub(crate) half_closes: u64,
    pub(crate) graceful: u64,
    pub(crate) slow_reads: u64,
    pub(crate) keep_alives: u64,
    /// Connections opened.
    pub(crate) connections: u64,
    /// Requests of aborted and reset exchanges (nothing to check).
    pub(crate) unchecked: u64,
    /// Bytes of the answers checked.
    pub(crate) answer_bytes: u64,
    /// Requests of checked exchanges whose answer never came because the fault proxy
    /// cut their connection (`--faults`), and those exchanges.
    pub(crate) cut: u64,
    pub(crate) cut_exchanges: u64,
    /// The first failures of each kind, described: `<kind>: connection <n>: <what>`.
    pub(crate) failures: Vec<String>,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.exchanges += o.exchanges;
        self.requests += o.requests;
        self.answers += o.answers;
        self.lost += o.lost;
        self.corrupt += o.corrupt;
        self.errors += o.errors;
        self.aborted += o.aborted;
        self.resets += o.resets;
        self.half_closes += o.half_closes;
        self.graceful += o.graceful;
        self.slow_reads += o.slow_reads;
        self.keep_alives += o.keep_alives;
        self.connections += o.connections;
        self.unchecked += o.unchecked;
        self.answer_bytes += o.answer_bytes;
        self.cut += o.cut;
        self.cut_exchanges += o.cut_exchanges;
        for f in o.failures {
            self.note(f, KEPT);
        }
    }
}

impl Tally {
    /// Keeps the description of a failure, `<kind>: ...`, unless `limit` of its kind
    /// are kept already.
    pub(crate) fn note(&mut self, failure: String, limit: usize) {
        let kind = |f: &str| f.split(':').next().unwrap_or_default().to_string();
        let k = kind(&failure);
        if self.failures.iter().filter(|f| kind(f) == k).count() < limit {
            self.failures.push(failure);
        }
    }

    /// Why the run failed, if it did.
    pub(crate) fn verdict(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.lost > 0 {
            why.push(format!("{} answers lost", self.lost));
        }
        if self.corrupt > 0 {
            why.push(format!("{} answers corrupt", self.corrupt));
        }
        if self.errors > 0 {
            why.push(format!("{} connection errors", self.errors));
        }
        if self.exchanges == 0 {
            why.push("no exchange ran".into());
        }
        why
    }
}
