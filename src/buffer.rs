//! The per-reactor pool of 4 KB buffers.
//!
//! A connection borrows a buffer only while it holds bytes in flight (a partial request,
//! unsent output) and gives it back as soon as those bytes are gone, so an idle
//! connection holds no buffer at all (nginx, memcached 1.6 and gnet do the same). The pool
//! belongs to one reactor thread, so borrowing and returning are a `Vec` pop and push,
//! with no lock and, once warm, no allocation.
//!
//! The pool keeps at most `max_free` idle buffers and frees the rest, so a burst of
//! traffic does not pin its peak memory for ever. A buffer that grew far past 4 KB while
//! lent (a large pipelined batch, say) is freed rather than kept.

use bytes::BytesMut;

/// The size of a pooled buffer.
pub const BUF_SIZE: usize = 4096;

/// Buffers larger than this are freed on return instead of being kept.
const KEEP_MAX: usize = 4 * BUF_SIZE;

/// A pool of reusable [`BytesMut`] buffers of [`BUF_SIZE`] bytes.
pub struct BufferPool {
    free: Vec<BytesMut>,
    max_free: usize,
    lent: usize,
    allocated: u64,
    /// Bytes of buffers freed (not kept) since the last [`take_freed`](Self::take_freed).
    freed: usize,
}

impl BufferPool {
    /// A pool that keeps at most `max_free` idle buffers.
    pub fn new(max_free: usize) -> Self {
        BufferPool {
            free: Vec::new(),
            max_free,
            lent: 0,
            allocated: 0,
            freed: 0,
        }
    }

    /// Borrows an empty buffer with at least [`BUF_SIZE`] bytes of capacity.
    pub fn get(&mut self) -> BytesMut {
        self.lent += 1;
        match self.free.pop() {
            Some(buf) => buf,
            None => {
                self.allocated += 1;
                BytesMut::with_capacity(BUF_SIZE)
            }
        }
    }

    /// Returns a buffer. Its contents are discarded.
    pub fn put(&mut self, mut buf: BytesMut) {
        self.lent = self.lent.saturating_sub(1);
        buf.clear();
        // After `advance` the front of the allocation is out of reach and `capacity`
        // counts only what lies past it: a 64 KB output buffer written out down to its
        // last 4 KB says 4 KB. On an empty, uniquely owned buffer `try_reclaim` moves
        // the start back without allocating, so asking for more than `KEEP_MAX` tells
        // whether the whole allocation is larger than a buffer worth keeping.
        if self.free.len() >= self.max_free || buf.try_reclaim(KEEP_MAX + 1) {
            self.freed += buf.capacity();
            return;
        }
        buf.reserve(BUF_SIZE);
        if buf.capacity() <= KEEP_MAX {
            self.free.push(buf);
        } else {
            // Not reclaimed in place (a shared buffer, say): `reserve` allocated.
            self.freed += buf.capacity();
        }
    }

    /// Frees idle buffers beyond `keep`: after a burst, the spares it left behind go
    /// back to the allocator instead of staying in the pool for ever.
    pub fn shrink_idle(&mut self, keep: usize) {
        while self.free.len() > keep {
            if let Some(buf) = self.free.pop() {
                self.freed += buf.capacity();
            }
        }
        self.free.shrink_to(keep.max(self.free.len()));
    }

    /// Bytes of buffers freed since the last call.
    pub fn take_freed(&mut self) -> usize {
        std::mem::take(&mut self.freed)
    }

    /// Buffers currently borrowed.
    pub fn lent(&self) -> usize {
        self.lent
    }

    /// Idle buffers held by the pool.
    pub fn idle(&self) -> usize {
        self.free.len()
    }

    /// Buffers allocated over the pool's life (a measure of how well reuse works).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn a_grown_buffer_written_out_is_freed_though_it_looks_small() {
        let mut pool = BufferPool::new(8);
        let mut b = pool.get();
        b.extend_from_slice(&[7u8; 64 * 1024]);
        // Written out but the last 100 bytes: what is left of the allocation past the
        // start is small, the allocation is not.
        b.advance(64 * 1024 - 100);
        assert!(b.capacity() < KEEP_MAX);
        pool.put(b);
        assert_eq!(pool.idle(), 0, "a 64 KB allocation kept as a 4 KB buffer");
        assert!(pool.take_freed() >= 64 * 1024);
        // A 4 KB buffer in the same state is kept, and whole again.
        let mut b = pool.get();
        b.extend_from_slice(&[7u8; 3000]);
        b.advance(2900);
        pool.put(b);
        assert_eq!(pool.idle(), 1);
        assert!(pool.get().capacity() >= BUF_SIZE);
    }

    #[test]
    fn a_returned_buffer_is_reused_without_allocating() {
        let mut pool = BufferPool::new(8);
        let mut b = pool.get();
        assert!(b.capacity() >= BUF_SIZE);
        b.extend_from_slice(b"hello");
        let ptr = b.as_ptr();
        pool.put(b);
        assert_eq!(pool.lent(), 0);
        let b = pool.get();
        assert!(b.is_empty(), "contents are discarded");
        assert_eq!(b.as_ptr(), ptr, "same allocation handed out again");
        assert_eq!(pool.allocated(), 1);
    }

    #[test]
    fn an_advanced_buffer_gets_its_full_capacity_back() {
        let mut pool = BufferPool::new(8);
        let mut b = pool.get();
        b.extend_from_slice(&[7u8; 3000]);
        b.advance(3000);
        assert!(b.capacity() < BUF_SIZE);
        pool.put(b);
        let b = pool.get();
        assert!(b.capacity() >= BUF_SIZE);
        assert_eq!(pool.allocated(), 1);
    }

    #[test]
    fn keeps_at_most_max_free() {
        let mut pool = BufferPool::new(2);
        let bufs: Vec<_> = (0..5).map(|_| pool.get()).collect();
        assert_eq!(pool.lent(), 5);
        for b in bufs {
            pool.put(b);
        }
        assert_eq!(pool.idle(), 2);
        assert_eq!(pool.lent(), 0);
    }

    #[test]
    fn a_grown_buffer_is_freed_not_kept() {
        let mut pool = BufferPool::new(8);
        let mut b = pool.get();
        b.extend_from_slice(&vec![1u8; 64 * 1024]);
        pool.put(b);
        assert_eq!(pool.idle(), 0);
    }
}
