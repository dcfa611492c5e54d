//! The memory budget's meter: a global allocator that counts the bytes the process has
//! on the heap, for [`Config::max_buffer_memory`](crate::Config::max_buffer_memory).
//!
//! Why the heap and not a sum over connections: what a connection holds lives in many
//! places (its input and output buffers, answers waiting for the worker pool, a TLS
//! session, an HTTP body being collected, pushes waiting in a shard's inbox) and changes
//! size in each of them. A counter at the allocator sees all of it and costs
//! one relaxed atomic add per allocation; a sum kept by hand would have to be mended at
//! every place a buffer grows. It counts the sizes asked for, not the allocator's own
//! overhead, and memory reserved whether touched or not; the budget also counts the
//! server's own structures (under 1 MB at rest with a budget, when the connection
//! table is not reserved up front), which `reactor_buffer_memory_bytes` shows.
//!
//! The `reactor` binary installs it. A program of its own that sets a budget installs
//! it too, in its `main.rs`:
//!
//! ```rust,ignore
//! #[global_allocator]
//! static HEAP: reactor::memory::Counted = reactor::memory::Counted;
//! ```
//!
//! Without it, [`in_use`] is `None` and a server with a budget refuses to start.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting the bytes it has lent.
pub struct Counted;

// SAFETY: every call is passed to the system allocator unchanged; the counter is only
// arithmetic beside it.
unsafe impl GlobalAlloc for Counted {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            counted(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            counted(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        counted(-(layout.size() as isize));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counted(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[inline]
fn counted(delta: isize) {
    // A global allocator is in place before `main`: every allocation freed here was
    // counted here, so the subtraction cannot go below zero.
    if delta >= 0 {
        IN_USE.fetch_add(delta as usize, Relaxed);
    } else {
        IN_USE.fetch_sub(delta.unsigned_abs(), Relaxed);
    }
    if !INSTALLED.load(Relaxed) {
        INSTALLED.store(true, Relaxed);
    }
}

/// Bytes on the heap now, if [`Counted`] is the global allocator.
#[inline]
pub fn in_use() -> Option<usize> {
    INSTALLED.load(Relaxed).then(|| IN_USE.load(Relaxed))
}

/// Whether the heap holds `limit` bytes or more (never, without the counter).
#[inline]
pub(crate) fn at_least(limit: usize) -> bool {
    IN_USE.load(Relaxed) >= limit
}
