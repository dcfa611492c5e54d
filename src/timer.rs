//! A hashed timer wheel: O(1) schedule, O(1) cancel, and a tick whose cost is the number
//! of entries in the slots it passes, not the number of timers.
//!
//! Time is counted in milliseconds from an epoch the caller chooses (the reactor uses its
//! start `Instant`). The wheel rounds every deadline *up* to its tick, so a timer never
//! fires early; it fires at most one tick late, plus however late the caller polls.
//!
//! One level of `2^k` slots is enough for second-scale timeouts: an entry whose deadline
//! is more than one rotation away simply stays in its slot and is skipped until its turn
//! comes round (netty's `HashedWheelTimer` does the same with a remaining-rounds count).
//! Each slot is an intrusive doubly-linked list threaded through one `Vec` of entries, so
//! cancel unlinks in O(1) and scheduling allocates nothing once the vector has grown.
//! A bitmap of occupied slots lets [`TimerWheel::next_deadline`] find the next slot that
//! holds anything with a few word scans and no walk of the slots themselves.
//!
//! The reactor uses it lazily: a connection keeps its true deadline in its own struct and
//! the wheel holds one entry per connection. Activity only moves the connection's field;
//! when the entry comes due the reactor re-reads the field and re-schedules if the
//! deadline moved. So a busy keep-alive connection costs no wheel operation per request.

use std::num::NonZeroU32;

const NIL: u32 = u32::MAX;
/// The `tick` of a vacant entry.
const VACANT: u64 = u64::MAX;

/// Names a scheduled timer, for [`TimerWheel::cancel`]. The generation makes a stale id
/// (its timer fired or was cancelled, its entry reused) harmless; it is never zero, so
/// an `Option<TimerId>` (one per connection) takes 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId {
    key: u32,
    generation: NonZeroU32,
}

/// 24 bytes with a `u32` value: the wheel holds one per connection.
struct Entry<T> {
    /// The tick this entry is due at (absolute, not modulo the wheel size), or
    /// `VACANT`.
    tick: u64,
    value: T,
    prev: u32,
    /// Next entry in the slot's list, or the next free entry when vacant.
    next: u32,
    generation: NonZeroU32,
}

/// A single-level hashed timer wheel holding values of type `T` (small and `Copy`: a
/// connection's key).
pub struct TimerWheel<T: Copy> {
    entries: Vec<Entry<T>>,
    free: u32,
    heads: Box<[u32]>,
    occupied: Box<[u64]>,
    mask: u64,
    tick_ms: u64,
    /// Every tick before this one has been processed.
    next_tick: u64,
    len: usize,
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel of `slots` slots (rounded up to a power of two, at least 64), each
    /// `tick_ms` milliseconds wide, starting at time 0.
    pub fn new(slots: usize, tick_ms: u64) -> Self {
        let slots = slots.max(64).next_power_of_two();
        TimerWheel {
            entries: Vec::new(),
            free: NIL,
            heads: vec![NIL; slots].into_boxed_slice(),
            occupied: vec![0u64; slots / 64].into_boxed_slice(),
            mask: slots as u64 - 1,
            tick_ms: tick_ms.max(1),
            next_tick: 0,
            len: 0,
        }
    }

    /// How many timers are scheduled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Reserves room for `n` timers up front. Untouched room costs no memory (the
    /// pages are never written), and a wheel that never grows never copies itself: a
    /// doubling vector leaves its old copy's pages behind in the heap.
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
    }

    /// Whether no timer is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `value` to fire at `deadline_ms`. A deadline already past fires at the
    /// first [`poll`](Self::poll) of the next tick.
    pub fn schedule(&mut self, deadline_ms: u64, value: T) -> TimerId {
        let tick = deadline_ms.div_ceil(self.tick_ms).max(self.next_tick);
        let key = if self.free != NIL {
            let key = self.free;
            let e = &mut self.entries[key as usize];
            self.free = e.next;
            e.value = value;
            e.tick = tick;
            key
        } else {
            let key = u32::try_from(self.entries.len()).expect("fewer than 2^32 timers");
            assert!(key != NIL, "timer wheel full");
            self.entries.push(Entry {
                tick,
                value,
                prev: NIL,
                next: NIL,
                generation: NonZeroU32::MIN,
            });
            key
        };
        self.link(key);
        self.len += 1;
        TimerId {
            key,
            generation: self.entries[key as usize].generation,
        }
    }

    /// Cancels a timer, giving back its value; `None` if it already fired or was
    /// cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        self.live(id)?;
        self.unlink(id.key);
        Some(self.release(id.key))
    }

    /// Whether the timer `id` is still scheduled and fires no later than a deadline at
    /// `deadline_ms` would (the same tick or earlier).
    pub fn fires_by(&self, id: TimerId, deadline_ms: u64) -> bool {
        self.live(id)
            .is_some_and(|e| e.tick <= deadline_ms.div_ceil(self.tick_ms).max(self.next_tick))
    }

    fn live(&self, id: TimerId) -> Option<&Entry<T>> {
        self.entries
            .get(id.key as usize)
            .filter(|e| e.generation == id.generation && e.tick != VACANT)
    }

    /// Fires every timer due at or before `now_ms`, pushing their values onto `fired`
    /// (in no particular order). Entries are unlinked before the caller sees any value,
    /// so the caller may schedule and cancel freely afterwards.
    pub fn poll(&mut self, now_ms: u64, fired: &mut Vec<T>) {
        let last = now_ms / self.tick_ms;
        if last < self.next_tick {
            return;
        }
        let slots = self.mask + 1;
        let span = (last - self.next_tick + 1).min(slots);
        for i in 0..span {
            let slot = ((self.next_tick + i) & self.mask) as usize;
            if self.occupied[slot / 64] & (1 << (slot % 64)) != 0 {
                self.fire_slot(slot, last, fired);
            }
        }
        self.next_tick = last + 1;
    }

    /// The earliest time at which [`poll`](Self::poll) may have something to fire, or
    /// `None` when the wheel is empty. It may be early (the slot found can hold entries
    /// for a later rotation), never late.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let slots = self.mask + 1;
        let start = self.next_tick & self.mask;
        let words = self.occupied.len();
        // Scan the bitmap from `start`, wrapping once.
        for step in 0..=words {
            let w = (start as usize / 64 + step) % words;
            let mut bits = self.occupied[w];
            if step == 0 {
                bits &= !0u64 << (start % 64);
            } else if step == words {
                bits &= !(!0u64 << (start % 64));
            }
            if bits != 0 {
                let slot = (w * 64) as u64 + u64::from(bits.trailing_zeros());
                let distance = (slot + slots - start) & self.mask;
                return Some((self.next_tick + distance) * self.tick_ms);
            }
        }
        debug_assert!(false, "non-empty wheel with an empty bitmap");
        Some(self.next_tick * self.tick_ms)
    }

    fn fire_slot(&mut self, slot: usize, last: u64, fired: &mut Vec<T>) {
        let mut key = self.heads[slot];
        while key != NIL {
            let next = self.entries[key as usize].next;
            if self.entries[key as usize].tick <= last {
                self.unlink(key);
                fired.push(self.release(key));
            }
            key = next;
        }
    }

    fn link(&mut self, key: u32) {
        let slot = (self.entries[key as usize].tick & self.mask) as usize;
        let head = self.heads[slot];
        {
            let e = &mut self.entries[key as usize];
            e.prev = NIL;
            e.next = head;
        }
        if head != NIL {
            self.entries[head as usize].prev = key;
        }
        self.heads[slot] = key;
        self.occupied[slot / 64] |= 1 << (slot % 64);
    }

    fn unlink(&mut self, key: u32) {
        let (prev, next, tick) = {
            let e = &self.entries[key as usize];
            (e.prev, e.next, e.tick)
        };
        let slot = (tick & self.mask) as usize;
        if prev == NIL {
            debug_assert_eq!(self.heads[slot], key);
            self.heads[slot] = next;
            if next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    fn release(&mut self, key: u32) -> T {
        let e = &mut self.entries[key as usize];
        debug_assert!(e.tick != VACANT, "released a vacant timer entry");
        e.tick = VACANT;
        let value = e.value;
        e.generation = e.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
        e.next = self.free;
        e.prev = NIL;
        self.free = key;
        self.len -= 1;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(w: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut v = Vec::new();
        w.poll(now, &mut v);
        v.sort_unstable();
        v
    }

    #[test]
    fn an_entry_and_an_id_stay_small() {
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 24);
        assert_eq!(std::mem::size_of::<Option<TimerId>>(), 8);
    }

    #[test]
    fn fires_by_compares_ticks_and_forgets_fired_timers() {
        let mut w = TimerWheel::new(64, 10);
        let id = w.schedule(25, 1u32);
        assert!(w.fires_by(id, 25));
        assert!(w.fires_by(id, 21), "same tick");
        assert!(!w.fires_by(id, 20), "an earlier tick");
        assert!(w.fires_by(id, 1000));
        assert_eq!(drain(&mut w, 30), vec![1]);
        assert!(!w.fires_by(id, 1000), "fired");
    }

    #[test]
    fn fires_at_deadline_never_early() {
        let mut w = TimerWheel::new(64, 10);
        w.schedule(25, 1);
        assert_eq!(drain(&mut w, 10), Vec::<u32>::new());
        assert_eq!(drain(&mut w, 29), Vec::<u32>::new());
        assert_eq!(drain(&mut w, 30), vec![1]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_on_next_poll() {
        let mut w = TimerWheel::new(64, 10);
        assert!(drain(&mut w, 1000).is_empty());
        w.schedule(5, 7);
        assert_eq!(drain(&mut w, 1010), vec![7]);
    }

    #[test]
    fn entries_beyond_one_rotation_wait_their_turn() {
        // 64 slots of 10 ms: one rotation is 640 ms.
        let mut w = TimerWheel::new(64, 10);
        w.schedule(100, 1);
        w.schedule(100 + 640, 2);
        w.schedule(100 + 3 * 640, 3);
        assert_eq!(drain(&mut w, 100), vec![1]);
        assert_eq!(drain(&mut w, 739), Vec::<u32>::new());
        assert_eq!(drain(&mut w, 740), vec![2]);
        assert_eq!(drain(&mut w, 100 + 3 * 640 - 1), Vec::<u32>::new());
        assert_eq!(drain(&mut w, 100 + 3 * 640), vec![3]);
    }

    #[test]
    fn a_long_gap_between_polls_fires_everything_due() {
        let mut w = TimerWheel::new(64, 1);
        for i in 0..1000 {
            w.schedule(i * 7, i as u32);
        }
        let fired = drain(&mut w, 5000);
        assert_eq!(fired.len(), (0..1000).filter(|i| i * 7 <= 5000).count());
        assert_eq!(w.len(), 1000 - fired.len());
        let rest = drain(&mut w, 10_000);
        assert_eq!(fired.len() + rest.len(), 1000);
    }

    #[test]
    fn cancel_removes_and_stale_ids_are_harmless() {
        let mut w = TimerWheel::new(64, 10);
        let a = w.schedule(50, 1);
        let b = w.schedule(50, 2);
        let c = w.schedule(50, 3);
        assert_eq!(w.cancel(b), Some(2));
        assert_eq!(w.cancel(b), None, "second cancel of the same id");
        // The freed entry is reused; the old id must not cancel the new timer.
        let d = w.schedule(60, 4);
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.len(), 3);
        assert_eq!(drain(&mut w, 50), vec![1, 3]);
        assert_eq!(w.cancel(a), None, "cancel after firing");
        assert_eq!(w.cancel(c), None);
        assert_eq!(w.cancel(d), Some(4));
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn cancel_head_middle_and_tail_of_a_slot() {
        let mut w = TimerWheel::new(64, 10);
        let ids: Vec<_> = (0..5).map(|i| w.schedule(40, i)).collect();
        // List order is newest first: 4 3 2 1 0.
        assert_eq!(w.cancel(ids[4]), Some(4)); // head
        assert_eq!(w.cancel(ids[2]), Some(2)); // middle
        assert_eq!(w.cancel(ids[0]), Some(0)); // tail
        assert_eq!(drain(&mut w, 40), vec![1, 3]);
    }

    #[test]
    fn next_deadline_finds_the_nearest_occupied_slot() {
        let mut w = TimerWheel::new(256, 10);
        assert_eq!(w.next_deadline(), None);
        w.schedule(2000, 1); // slot 200
        w.schedule(700, 2); // slot 70
        assert_eq!(w.next_deadline(), Some(700));
        assert_eq!(drain(&mut w, 700), vec![2]);
        assert_eq!(w.next_deadline(), Some(2000));
        // Wrap-around: from tick 2010 (slot 201) the next occupied slot is 200 again
        // one rotation later, where the entry for 4550 lives.
        assert_eq!(drain(&mut w, 2000), vec![1]);
        w.schedule(4550, 3); // tick 455, slot 199
        assert_eq!(w.next_deadline(), Some(4550));
        assert!(drain(&mut w, 4549).is_empty());
        assert_eq!(drain(&mut w, 4550), vec![3]);
    }

    #[test]
    fn randomized_against_a_model() {
        let tick = 3;
        let mut w = TimerWheel::new(64, tick);
        let mut seed = 12345u64;
        let mut live: Vec<(TimerId, u32, u64)> = Vec::new();
        let mut now = 0;
        for n in 0..5000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = seed >> 33;
            if r % 3 != 2 {
                let d = now + r % 500;
                live.push((w.schedule(d, n), n, d));
            } else if !live.is_empty() {
                let (id, v, _) = live.swap_remove((r as usize) % live.len());
                assert_eq!(w.cancel(id), Some(v));
            }
            if let Some(min) = live.iter().map(|l| l.2).min() {
                let next = w.next_deadline().expect("wheel holds timers");
                assert!(
                    next <= min.div_ceil(tick) * tick,
                    "next {next} after due {min}"
                );
            }
            now += r % 7;
            let mut fired = Vec::new();
            w.poll(now, &mut fired);
            for f in &fired {
                let pos = live
                    .iter()
                    .position(|l| l.1 == *f)
                    .expect("fired a live timer");
                assert!(live[pos].2 <= now, "fired early");
                live.swap_remove(pos);
            }
            for l in &live {
                assert!(l.2.div_ceil(tick) > now / tick, "due timer not fired");
            }
            assert_eq!(w.len(), live.len());
        }
    }
}
