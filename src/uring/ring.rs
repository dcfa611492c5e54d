//! One shard's io_uring: the submission and completion queues, the ring of provided
//! receive buffers, and how an operation is named in its `user_data`.
//!
//! **Naming operations.** Every operation carries `(kind, generation, key)` packed in its
//! 64-bit `user_data`: the kind of operation (8 bits), the generation of the connection
//! it belongs to (24 bits) and its slab key (32 bits). A slab slot is reused as soon as
//! its connection closes, but a completion for the old connection can still be on its
//! way (a cancelled receive, a send that was in flight): the generation tells them apart,
//! so a stale completion is recognised and only its resources (a receive buffer, an
//! orphaned send buffer) are given back.
//!
//! **Provided buffers.** Receives do not name a buffer: they pick one from a ring of
//! `BUFS` buffers of `BUF_LEN` bytes that the shard shares with the kernel (a "provided
//! buffer ring", Linux 5.19), only when bytes arrive. So an idle connection with a
//! receive armed holds no buffer at all, exactly as in the epoll backend. The shard
//! hands each buffer back as soon as the decoder has seen its bytes, within the same
//! loop turn; what a decoder leaves over is copied into a pooled buffer of the
//! connection. When the kernel finds the ring empty the receive ends with ENOBUFS and is
//! armed again at the end of the turn, when every buffer is back.
//!
//! **Receives are capped.** A multishot receive left armed hands over whatever arrives,
//! as fast as it arrives: a peer that sends and never reads would have its bytes pile
//! up in the shard before the shard could say stop (measured: 320 KB past a 64 KB
//! high-water mark in one loop turn). So each receive is armed for at most the room the
//! connection has under `--high-water`, and ends by itself when that is used: the
//! byte limit of multishot receives (`sqe->optlen`, Linux 6.17), with each completion
//! also held to that room (`sqe->len`); or, where the kernel does not have the limit,
//! single-shot receives of at most one buffer ([`RecvMode`]).
//!
//! **Ring setup.** `SINGLE_ISSUER` + `DEFER_TASKRUN` (Linux 6.1): only the shard's thread
//! submits, and completions are posted only when it asks for them, in one batch per
//! wait, instead of interrupting it while it works. The ring is created disabled
//! (`R_DISABLED`) on the thread that starts the server, so that a failure is reported
//! before any shard runs, and enabled by the shard's own thread (the single issuer is
//! whoever enables it).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

/// Receive buffers per shard, and their size: 256 x 4 KB = 1 MB per shard (a buffer holds
/// one receive completion and is given back in the same turn). The epoll backend's
/// scratch buffer is 64 KB, but there one buffer serves every connection in turn; here
/// the kernel fills buffers for many connections before the shard looks at any. 1,000
/// connections with 16 echo requests in flight each, or with 4 KB requests, never found
/// the ring empty (the shard logs the count at exit, at debug level).
pub const BUFS: u16 = 256;
pub const BUF_LEN: usize = 4096;
/// The buffer group id of the shard's receive buffers.
pub const BGID: u16 = 0;
/// Submission queue size; the completion queue is larger (multishot receives can post
/// many completions per submission).
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;

/// What an operation is, in the top byte of its `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// The shard's wake-up eventfd.
    Wake = 4,
    /// Cancellations: their own completions are ignored.
    Cancel = 5,
}

/// How connections receive: found out once by [`probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvMode {
    /// Multishot receives with a byte limit: armed once per `--high-water` worth of
    /// input.
    CappedMultishot,
    /// One receive per buffer (kernels before 6.17).
    Single,
}

/// A receive into a buffer of the shard's ring of at most `cap` bytes in all.
pub fn recv(mode: RecvMode, fd: i32, cap: u32) -> squeue::Entry {
    match mode {
        RecvMode::CappedMultishot => {
            // The limit ends the receive once it has taken `cap` bytes or more; each
            // completion is also held to `cap`, so it overshoots by less than a buffer.
            let each = cap.min(BUF_LEN as u32);
            with_total_cap(opcode::RecvMulti::new(Fd(fd), BGID).len(each).build(), cap)
        }
        RecvMode::Single => {
            opcode::Recv::new(Fd(fd), std::ptr::null_mut(), cap.min(BUF_LEN as u32))
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        }
    }
}

const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// Sets a multishot receive's total byte limit: `sqe->optlen` (Linux 6.17), which the
/// io-uring crate does not expose yet. A limit of 0 means none.
fn with_total_cap(e: squeue::Entry, cap: u32) -> squeue::Entry {
    // SAFETY: `Entry` is `repr(C)` around the kernel's 64-byte `io_uring_sqe`, whose
    // `optlen` (a union with `file_index`) is the u32 at offset 44; every bit pattern
    // of the array is a valid entry.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[44..48].copy_from_slice(&cap.to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Whether io_uring works here with what this backend needs, and how receives are
/// capped. Builds a ring as a shard would, then tries a capped multishot receive on a
/// socket pair: kernels without the limit refuse it (EINVAL).
pub fn probe() -> io::Result<RecvMode> {
    let mut ring = Ring::new()?;
    ring.enable()?;
    let mut fds = [0i32; 2];
    // SAFETY: socketpair(2) writes two descriptors into the array we pass.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new descriptors, owned here.
    let (a, b) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    use std::os::fd::AsRawFd;
    // SAFETY: writes 2 bytes from a live buffer.
    if unsafe { libc::write(b.as_raw_fd(), b"xy".as_ptr().cast(), 2) } != 2 {
        return Err(io::Error::last_os_error());
    }
    ring.push(&recv(RecvMode::CappedMultishot, a.as_raw_fd(), 1).user_data(1))?;
    let ts = Timespec::from(std::time::Duration::from_secs(2));
    let args = SubmitArgs::new().timespec(&ts);
    match ring.uring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => return Err(e),
    }
    let first = ring
        .uring
        .completion()
        .next()
        .map(|c| (c.result(), c.flags()));
    log::debug!("io_uring probe: capped multishot receive gave {first:?}");
    // One byte, and the receive ended by itself: the limit is honoured.
    let mode = match first {
        Some((1, flags)) if !cqueue::more(flags) => RecvMode::CappedMultishot,
        _ => RecvMode::Single,
    };
    drop((a, b));
    Ok(mode)
}

impl Op {
    fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Wake,
            5 => Op::Cancel,
            _ => return None,
        })
    }
}

/// Generations wrap at 24 bits: a slot would have to be reused 16 million times while a
/// completion for it is in flight to be confused.
pub const GEN_MASK: u32 = 0xFF_FFFF;

pub fn user_data(op: Op, generation: u32, key: usize) -> u64 {
    ((op as u64) << 56) | (((generation & GEN_MASK) as u64) << 32) | (key as u32 as u64)
}

pub fn parse_user_data(ud: u64) -> (Option<Op>, u32, usize) {
    (
        Op::from_u8((ud >> 56) as u8),
        ((ud >> 32) as u32) & GEN_MASK,
        (ud & 0xFFFF_FFFF) as usize,
    )
}

/// The ring of provided receive buffers: the entries the kernel reads (page-aligned,
/// shared with it) and the buffers they point to.
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    /// Our tail: entries before it are the kernel's; published with `commit`.
    tail: u16,
    published: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let entries_layout =
            Layout::from_size_align(BUFS as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        let bufs_layout =
            Layout::from_size_align(BUFS as usize * BUF_LEN, 4096).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let (entries, bufs) = unsafe {
            (
                alloc_zeroed(entries_layout) as *mut BufRingEntry,
                alloc_zeroed(bufs_layout),
            )
        };
        if entries.is_null() || bufs.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // The kernel takes buffers in ring order, so traffic soon touches every one:
        // touch them now, so that the shard's memory is what it will be from the start
        // (a fixed 1 MB per shard, not a cost that seems to grow with the first
        // connections).
        for page in (0..bufs_layout.size()).step_by(4096) {
            // SAFETY: inside the allocation just made.
            unsafe { bufs.add(page).write_volatile(0) };
        }
        let mut ring = BufRing {
            entries,
            entries_layout,
            bufs,
            bufs_layout,
            tail: 0,
            published: 0,
        };
        for bid in 0..BUFS {
            ring.give_back(bid);
        }
        ring.commit();
        Ok(ring)
    }

    /// The bytes of buffer `bid` the kernel filled.
    ///
    /// # Safety
    /// `bid` must come from a completion not yet given back, and `len` from the same
    /// completion; the slice must not be used after [`give_back`](Self::give_back).
    pub unsafe fn data<'a>(&self, bid: u16, len: usize) -> &'a [u8] {
        let bid = (bid % BUFS) as usize;
        // SAFETY: in bounds (bid < BUFS, len <= BUF_LEN), and the kernel is done with
        // the buffer until it is given back.
        unsafe { std::slice::from_raw_parts(self.bufs.add(bid * BUF_LEN), len.min(BUF_LEN)) }
    }

    /// Returns buffer `bid` to the kernel (visible after [`commit`](Self::commit)).
    pub fn give_back(&mut self, bid: u16) {
        let bid = bid % BUFS;
        let i = (self.tail % BUFS) as usize;
        // SAFETY: i < BUFS, inside the entries allocation; the kernel does not read
        // entries at or past the published tail.
        unsafe {
            let e = &mut *self.entries.add(i);
            e.set_addr(self.bufs.add(bid as usize * BUF_LEN) as u64);
            e.set_len(BUF_LEN as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the buffers given back since the last call.
    pub fn commit(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail field lives in the first entry, which is ours to write with
        // release ordering (the kernel reads it with acquire).
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring that used them is
        // dropped first (see `Ring`'s field order).
        unsafe {
            dealloc(self.entries as *mut u8, self.entries_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
}

/// A shard's io_uring with its buffer ring.
pub struct Ring {
    // Field order matters: the io_uring (which the kernel uses the buffers through) is
    // dropped before the buffers.
    pub uring: IoUring,
    pub bufs: BufRing,
}

// SAFETY: the raw pointers in `BufRing` are owned allocations, used by one thread at a
// time (the ring moves to its shard's thread once, before use).
unsafe impl Send for Ring {}

impl Ring {
    /// A ring for one shard, disabled until [`enable`](Self::enable) on the shard's
    /// thread; also the probe of whether io_uring works here at all.
    pub fn new() -> io::Result<Ring> {
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?;
        let bufs = BufRing::new()?;
        // SAFETY: the entries stay allocated (and at the same address) until the ring
        // is dropped, which happens first.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(bufs.entries as u64, BUFS, BGID, 0)?;
        }
        Ok(Ring { uring, bufs })
    }

    /// Enables the ring; called on the thread that will submit to it.
    pub fn enable(&self) -> io::Result<()> {
        self.uring.submitter().register_enable_rings()
    }

    /// Queues an operation, submitting what is queued first if the queue is full.
    pub fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points to is owned by the shard and kept
            // alive (and unmoved) until the operation's last completion.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.bufs.commit();
            self.uring.submit()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(Op::Send, 0x12_3456, 987_654);
        assert_eq!(parse_user_data(ud), (Some(Op::Send), 0x12_3456, 987_654));
        let ud = user_data(Op::Recv, u32::MAX, u32::MAX as usize);
        assert_eq!(
            parse_user_data(ud),
            (Some(Op::Recv), GEN_MASK, u32::MAX as usize)
        );
        assert_eq!(parse_user_data(0).0, None);
    }
}
