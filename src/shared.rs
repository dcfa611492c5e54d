//! What the server and its shards share: the shutdown flags and each shard's published
//! counters. A leaf module, so that the server can depend on the shards and the shards
//! on this, with no cycle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use crate::stats::Counters;

/// A shard's counters as last published, for the server to read.
pub(crate) type StatsCell = Mutex<Counters>;

pub(crate) struct Shared {
    /// Set on the first SIGINT/SIGTERM (or [`Server::shutdown`](crate::Server::shutdown)):
    /// drain.
    pub shutdown: AtomicBool,
    /// Set on the second: cut what is still open.
    pub force: AtomicBool,
    /// The listening sockets went to a successor (--handover): their accept queue is
    /// its, and a drain must not empty it.
    pub handed_over: AtomicBool,
    pub stats: Vec<StatsCell>,
    /// Connections open per client address, under --max-connections-per-ip (touched
    /// on accept and close only, never per request).
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The memory budget (`--max-buffer-memory`), 0 for none.
    pub memory_limit: u64,
}

impl Shared {
    pub fn new(shards: usize, memory_limit: u64) -> Shared {
        Shared {
            shutdown: AtomicBool::new(false),
            force: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            stats: (0..shards)
                .map(|_| Mutex::new(Counters::default()))
                .collect(),
            per_ip: Mutex::new(HashMap::new()),
            memory_limit,
        }
    }

    /// The shards' counters summed, with the process-wide memory gauges.
    pub fn total(&self) -> Counters {
        let mut sum = Counters::default();
        for cell in &self.stats {
            if let Ok(c) = cell.lock() {
                sum += *c;
            }
        }
        sum.buffer_memory = crate::memory::in_use().unwrap_or(0) as u64;
        sum.buffer_memory_limit = self.memory_limit;
        sum
    }
}

/// Asks the allocator to return freed memory to the system: glibc's `malloc_trim`
/// (which also releases free pages inside its heaps), a no-op elsewhere.
pub(crate) fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
