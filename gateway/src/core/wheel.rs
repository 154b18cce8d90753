//! One hashed timing wheel per core drives every deadline (auth, idle,
//! ack retransmit): no timer per connection.
//!
//! Entries are lazy: a connection is put in the slot of its earliest
//! deadline; inbound traffic only moves `last_in` and never touches the
//! wheel. When a slot fires, the owner re-evaluates the connection and, if it
//! still lives, schedules its next deadline. A connection has at most one
//! live entry: `Wheel::schedule` is told the tick the connection is already
//! due at, and skips when that is not later than the new one.

/// Tick count since the core started (resolution `tick_ms`).
pub type Tick = u32;

/// An entry: the key of the connection it was scheduled for (its slab
/// slot and generation), so a slot reused by a newer connection is
/// recognised as stale.
pub type Entry = super::ConnKey;

/// Entries of room a fired slot always keeps (8 bytes each).
const SLOT_KEEP_MIN_ENTRIES: usize = 16;

/// The emptied vector of a fired slot that held `held` entries, with room
/// for about as many as it held this turn, not the most it ever held: a
/// slot fills again one horizon later with the connections that just fired,
/// so steady load reallocates nothing, while a bunch (a reconnect storm
/// lands hundreds of connections on a few ticks) gives its room back on the
/// next turn. Keeping the peak instead ratcheted every slot up to its
/// biggest bunch: the heap grew with each storm that hit new slots (the soak
/// in BENCHMARKS.md).
fn keep_room(mut slot: Vec<Entry>, held: usize) -> Vec<Entry> {
    let keep = held.max(SLOT_KEEP_MIN_ENTRIES);
    if slot.capacity() > 2 * keep {
        slot.shrink_to(keep);
    }
    slot
}

pub struct Wheel {
    slots: Vec<Vec<Entry>>,
    /// Next tick to fire.
    next: Tick,
}

impl Wheel {
    /// `slots` bounds how far ahead an entry is placed; later deadlines are
    /// placed at the horizon and re-evaluated there.
    pub fn new(slots: usize) -> Wheel {
        Wheel {
            slots: (0..slots.max(2)).map(|_| Vec::new()).collect(),
            next: 1,
        }
    }

    /// Furthest tick an entry can be placed at when the wheel stands at `next`.
    fn horizon(&self) -> Tick {
        self.next + self.slots.len() as Tick - 1
    }

    /// Places `e` at `due` (clamped into the wheel's window) unless the
    /// connection is already due no later (`current_due`, 0 = not scheduled).
    /// Returns the tick the entry is due at, to store on the connection.
    pub fn schedule(&mut self, e: Entry, due: Tick, current_due: Tick) -> Tick {
        let due = due.clamp(self.next, self.horizon());
        if current_due != 0 && current_due >= self.next && current_due <= due {
            return current_due;
        }
        let n = self.slots.len();
        self.slots[due as usize % n].push(e);
        due
    }

    /// Moves the entries of every tick up to and including `now` into `out`,
    /// in tick order, with the tick each fired at. The owner then evaluates
    /// them and schedules again (the wheel is free to borrow by then).
    pub fn take_due(&mut self, now: Tick, out: &mut Vec<(Tick, Entry)>) {
        let n = self.slots.len();
        while self.next <= now {
            let tick = self.next;
            let mut slot = std::mem::take(&mut self.slots[tick as usize % n]);
            self.next += 1;
            let held = slot.len();
            out.extend(slot.drain(..).map(|e| (tick, e)));
            self.slots[tick as usize % n] = keep_room(slot, held);
        }
    }

    /// The next tick that will fire.
    pub fn next_tick(&self) -> Tick {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(idx: u32) -> Entry {
        Entry::from_id(idx as u64)
    }

    #[test]
    fn fires_in_order_and_clamps() {
        let mut w = Wheel::new(8);
        assert_eq!(w.schedule(e(1), 3, 0), 3);
        assert_eq!(w.schedule(e(2), 100, 0), 8); // horizon
        assert_eq!(w.schedule(e(3), 0, 0), 1); // past -> next tick
        let mut fired = vec![];
        w.take_due(8, &mut fired);
        let got: Vec<_> = fired.iter().map(|(t, en)| (*t, en.idx())).collect();
        assert_eq!(got, vec![(1, 3), (3, 1), (8, 2)]);
    }

    fn room(w: &Wheel) -> usize {
        w.slots.iter().map(Vec::capacity).sum()
    }

    #[test]
    fn storms_do_not_ratchet_slot_room() {
        // Bunches of 500 land on a different tick each turn, then the load is
        // a trickle: the room kept follows what the slots last held.
        let n = 64;
        let mut w = Wheel::new(n);
        let mut fired = vec![];
        for turn in 0..(n as u32) {
            let at = w.next_tick() + turn % (n as u32 - 1);
            for i in 0..500 {
                w.schedule(e(i), at, 0);
            }
            w.take_due(w.next_tick() + n as u32 - 1, &mut fired);
            fired.clear();
        }
        let after_storms = room(&w);
        for i in 0..(2 * n as u32) {
            let at = w.next_tick();
            w.schedule(e(i), at, 0);
            w.take_due(at, &mut fired);
        }
        assert!(
            after_storms <= 2 * 500 + n * 2 * SLOT_KEEP_MIN_ENTRIES,
            "after storms the wheel keeps room for {after_storms} entries"
        );
        assert!(
            room(&w) <= n * 2 * SLOT_KEEP_MIN_ENTRIES,
            "after the storms passed it keeps {}",
            room(&w)
        );
    }

    #[test]
    fn steady_load_keeps_its_room() {
        let mut w = Wheel::new(8);
        let mut fired = vec![];
        for i in 0..100 {
            w.schedule(e(i), 3, 0);
        }
        w.take_due(3, &mut fired);
        let kept = w.slots[3].capacity();
        assert!(kept >= 100, "kept {kept}");
    }

    #[test]
    fn at_most_one_live_entry() {
        let mut w = Wheel::new(16);
        let due = w.schedule(e(1), 5, 0);
        assert_eq!(
            w.schedule(e(1), 9, due),
            5,
            "later deadline keeps the earlier entry"
        );
        assert_eq!(
            w.schedule(e(1), 2, due),
            2,
            "earlier deadline adds an entry"
        );
        let mut fired = vec![];
        w.take_due(10, &mut fired);
        let got: Vec<_> = fired.iter().map(|(t, en)| (*t, en.idx())).collect();
        assert_eq!(
            got,
            vec![(2, 1), (5, 1)],
            "the owner sees the stale one and ignores it"
        );
    }
}
