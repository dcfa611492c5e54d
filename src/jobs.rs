//! Jobs in flight: what a shard keeps for requests it handed to the worker pool, and
//! how their answers come back.
//!
//! - [`Jobs`] belongs to one connection and exists only while that connection has jobs
//!   in flight (a boxed part of the connection; an idle connection holds `None`). It is
//!   the connection's reorder queue: one slot per owed answer, in request order. A slot
//!   is pending until its job completes; answers leave from the front only, so a
//!   connection's answers go out in request order even when its jobs finish out of
//!   order.
//! - [`Completion`]s travel from the workers to the owning shard through its [`Inbox`],
//!   a mutex-guarded vector swapped out whole, and the shard's `mio::Waker`, woken once
//!   per batch: only the push that finds the inbox empty wakes the shard.
//! - A job carries its connection's slab key and the *generation* of the `Jobs` it was
//!   counted in. A shard numbers every `Jobs` it creates, so a completion for a
//!   connection that has closed, or whose slab key a new connection took, or whose job
//!   was already answered by the handler timeout, finds no matching slot and is dropped
//!   (and counted), never sent to the wrong peer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use mio::Waker;

/// A finished job on its way back to its shard.
pub struct Completion<R> {
    pub key: usize,
    pub generation: u64,
    pub seq: u32,
    /// `Err` when the handler panicked.
    pub result: Result<R, ()>,
}

/// A shard's completion queue.
pub struct Inbox<R> {
    items: Mutex<Vec<Completion<R>>>,
    waker: Arc<Waker>,
}

impl<R> Inbox<R> {
    pub fn new(waker: Arc<Waker>) -> Self {
        Inbox {
            items: Mutex::new(Vec::new()),
            waker,
        }
    }

    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }

    /// Called by a worker. Wakes the shard only if the inbox was empty: the shard takes
    /// everything at once, so one wake-up serves a whole batch.
    pub fn push(&self, c: Completion<R>) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = items.is_empty();
        items.push(c);
        drop(items);
        if was_empty {
            let _ = self.waker.wake();
        }
    }

    /// Called by the shard: swaps the queue with `into` (which must be empty), so that
    /// neither side allocates once both vectors have grown.
    pub fn take(&self, into: &mut Vec<Completion<R>>) {
        debug_assert!(into.is_empty());
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *items, into);
    }
}

/// One owed answer.
enum Slot {
    /// The job was handed over at this time (ms) and has not come back.
    Pending { since: u64 },
    /// The encoded answer, waiting for the answers before it.
    Ready(BytesMut),
}

/// A connection's jobs in flight and answers waiting their turn.
pub struct Jobs {
    pub generation: u64,
    /// Sequence number of the front slot.
    head: u32,
    slots: VecDeque<Slot>,
    pending: usize,
    held: usize,
}

/// What a waiting answer costs beyond its bytes, for the high-water accounting.
const SLOT_COST: usize = 64;

impl Jobs {
    pub fn new(generation: u64) -> Self {
        Jobs {
            generation,
            head: 0,
            slots: VecDeque::new(),
            pending: 0,
            held: 0,
        }
    }

    /// Bytes of answers waiting their turn (plus a slot's overhead each), counted
    /// against the connection's high-water mark like unsent output.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Jobs handed over and not yet answered.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether any answer is still owed or waiting.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a slot for a job handed over now; returns its sequence number.
    pub fn push_pending(&mut self, now: u64) -> u32 {
        let seq = self.head.wrapping_add(self.slots.len() as u32);
        self.slots.push_back(Slot::Pending { since: now });
        self.pending += 1;
        seq
    }

    /// Adds an answer given at once, to go out after the jobs before it.
    pub fn push_ready(&mut self, answer: BytesMut) {
        self.held += answer.len() + SLOT_COST;
        self.slots.push_back(Slot::Ready(answer));
    }

    /// Whether `seq` is a pending slot (its job's answer is still wanted). Marks it
    /// answered (no longer pending) if so.
    pub fn take_pending(&mut self, seq: u32) -> Option<SlotRef> {
        let i = seq.wrapping_sub(self.head) as usize;
        match self.slots.get(i) {
            Some(Slot::Pending { since }) => {
                self.pending -= 1;
                Some(SlotRef { i, since: *since })
            }
            _ => None,
        }
    }

    /// Whether the slot is the last one: its answer is the last the connection owes.
    pub fn is_last(&self, slot: &SlotRef) -> bool {
        slot.i + 1 == self.slots.len()
    }

    /// Whether the slot is at the front, so its answer may go straight to the output.
    pub fn is_front(&self, slot: &SlotRef) -> bool {
        slot.i == 0
    }

    /// Fills a slot taken with [`take_pending`](Jobs::take_pending).
    pub fn fill(&mut self, slot: SlotRef, answer: BytesMut) {
        self.held += answer.len() + SLOT_COST;
        self.slots[slot.i] = Slot::Ready(answer);
    }

    /// Drops the front slot, whose answer went straight to the output.
    pub fn pop_front_answered(&mut self) {
        self.slots.pop_front();
        self.head = self.head.wrapping_add(1);
    }

    /// Takes the front answer if it is ready.
    pub fn pop_ready(&mut self) -> Option<BytesMut> {
        if !matches!(self.slots.front(), Some(Slot::Ready(_))) {
            return None;
        }
        self.head = self.head.wrapping_add(1);
        match self.slots.pop_front() {
            Some(Slot::Ready(b)) => {
                self.held -= b.len() + SLOT_COST;
                Some(b)
            }
            _ => None,
        }
    }

    /// When the oldest pending job was handed over.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.slots.iter().find_map(|s| match s {
            Slot::Pending { since } => Some(*since),
            Slot::Ready(_) => None,
        })
    }

    /// Pending slots handed over at or before `cutoff`: they are given up on, and
    /// `answer` fills each (the handler timeout). Returns how many.
    pub fn expire(&mut self, cutoff: u64, mut answer: impl FnMut(u64, bool) -> BytesMut) -> usize {
        let mut n = 0;
        let last = self.slots.len().saturating_sub(1);
        for (i, s) in self.slots.iter_mut().enumerate() {
            match s {
                Slot::Pending { since } if *since <= cutoff => {
                    let b = answer(*since, i == last);
                    self.held += b.len() + SLOT_COST;
                    *s = Slot::Ready(b);
                    n += 1;
                }
                // Handed over in order, so the rest are younger.
                Slot::Pending { .. } => break,
                Slot::Ready(_) => {}
            }
        }
        self.pending -= n;
        n
    }

    /// Every buffer held, for return to the pool when the connection closes.
    pub fn into_buffers(self) -> impl Iterator<Item = BytesMut> {
        self.slots.into_iter().filter_map(|s| match s {
            Slot::Ready(b) => Some(b),
            Slot::Pending { .. } => None,
        })
    }
}

/// A pending slot just completed (see [`Jobs::take_pending`]).
pub struct SlotRef {
    i: usize,
    /// When its job was handed over (ms).
    pub since: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> BytesMut {
        BytesMut::from(s)
    }

    #[test]
    fn answers_leave_in_request_order() {
        let mut j = Jobs::new(1);
        let s0 = j.push_pending(0);
        j.push_ready(b("inline"));
        let s1 = j.push_pending(0);
        assert_eq!(j.pending(), 2);
        // The second job finishes first: it waits.
        let r1 = j.take_pending(s1).unwrap();
        assert!(!j.is_front(&r1));
        j.fill(r1, b("one"));
        assert!(j.pop_ready().is_none());
        // A duplicate or late completion finds nothing.
        assert!(j.take_pending(s1).is_none());
        let r0 = j.take_pending(s0).unwrap();
        assert!(j.is_front(&r0));
        j.pop_front_answered();
        let rest: Vec<_> = std::iter::from_fn(|| j.pop_ready()).collect();
        assert_eq!(rest, [b("inline"), b("one")]);
        assert!(j.is_empty());
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn expiry_answers_the_old_jobs_and_drops_their_late_results() {
        let mut j = Jobs::new(1);
        let s0 = j.push_pending(10);
        let s1 = j.push_pending(20);
        let s2 = j.push_pending(30);
        assert_eq!(j.oldest_pending(), Some(10));
        assert_eq!(j.expire(20, |_, _| b("late")), 2);
        assert_eq!(j.oldest_pending(), Some(30));
        assert!(j.take_pending(s0).is_none());
        assert!(j.take_pending(s1).is_none());
        assert!(j.take_pending(s2).is_some());
        assert_eq!(j.pop_ready(), Some(b("late")));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut j = Jobs::new(1);
        j.head = u32::MAX;
        let a = j.push_pending(0);
        let c = j.push_pending(0);
        assert_eq!((a, c), (u32::MAX, 0));
        let r = j.take_pending(c).unwrap();
        j.fill(r, b("c"));
        let r = j.take_pending(a).unwrap();
        assert!(j.is_front(&r));
        j.pop_front_answered();
        assert_eq!(j.pop_ready(), Some(b("c")));
    }
}
