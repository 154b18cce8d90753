//! Live rooms at scale on one core (PROTOCOL.md §7.5, OPERATIONS.md "Live
//! rooms").
//!
//! - **Coalescing.** A hot room's pushes that need no ack and are not HIGH
//!   are gathered for `rooms.coalesce_window_ms`, then go to each local
//!   member as one Push carrying the batch: encoded once here and shared
//!   by every member, like any push body. A room is hot when `rooms.hot`
//!   names it, when a backend marks it (`SessionOp::RoomMode`), or while
//!   its pushes on this core pass `rooms.hot_rate_per_s` (until a second
//!   under half of it). Members that did not ask for batches
//!   (`Auth.push_batches`) get the same pushes one by one, in the same
//!   order.
//! - **Order.** A push of the room that is not gathered (ack-required,
//!   or the room is not hot) sends the pending batch first, so a member
//!   sees the room's pushes in the order this core received them. A HIGH
//!   push is never held: it joins the pending batch, which goes out at
//!   once (one frame), or goes alone when nothing is gathering.
//! - **Shedding.** LOW pushes are dropped when the room is over its rate
//!   (`overload.room_broadcast_rate_per_s`) or the core sheds upstreams
//!   (overload); NORMAL ones over the rate are coalesced (the room turns
//!   hot) instead of dropped; HIGH ones always go. A batch carries at most
//!   `rooms.batch_pushes_max` pushes: past it the window's LOW and NORMAL
//!   pushes are dropped, so one hot room cannot take the core. Drops are
//!   counted (per reason and priority in /metrics, per room in /stats) and
//!   told to members in the next batch (`Push.dropped`), never reported
//!   one by one.
//! - **Upstream.** Upstream frames naming a room take a token of the
//!   room's bucket (`rooms.upstream_rate_per_s`, per core): over it BUSY.
//!
//! - **Window.** A room with many members on this core gathers for longer:
//!   its window is stretched so it causes at most `rooms.frames_per_s_max`
//!   batch frames a second here (members * 1000 / frames_per_s_max ms), up
//!   to `rooms.coalesce_window_max_ms`, which is also every hot room's
//!   window while the core sheds load. A stretched window carries
//!   proportionally more pushes (`RoomsConfig::batch_cap`).
//!
//! One queue ordered by due instant and one task per core (`run_rooms`)
//! flush the batches, with no timer per room: the task sleeps until the
//! earliest is due, and a batch that starts due sooner wakes it.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use gw_proto::pb::Priority;
use prost::encoding::{encode_varint, encoded_len_varint};
use serde::Serialize;

use super::overload::{Bucket, Rate};
use super::push;
use super::wheel::Tick;
use super::{Core, State};
use crate::metrics::CoreMetrics;

/// Rooms whose upstream buckets a core keeps; past it they start over.
const UPSTREAM_BUCKETS_MAX: usize = 65_536;
/// Hot rooms listed per core in /stats.
pub const STATS_ROOMS_MAX: usize = 16;

/// Why a room push was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Over `overload.room_broadcast_rate_per_s` (LOW only).
    RoomRate,
    /// The core sheds load (LOW only).
    Overload,
    /// The window's batch is full (`rooms.batch_pushes_max`).
    BatchFull,
}

impl Drop {
    pub const ALL: [Drop; 3] = [Drop::RoomRate, Drop::Overload, Drop::BatchFull];
    pub fn label(self) -> &'static str {
        match self {
            Drop::RoomRate => "room_rate",
            Drop::Overload => "overload",
            Drop::BatchFull => "batch_full",
        }
    }
}

/// Cells of `CoreMetrics::room_drops`: reason × (LOW, NORMAL).
pub const DROP_CELLS: usize = 6;

/// The cell of a drop.
pub fn drop_cell(why: Drop, priority: Priority) -> usize {
    why as usize * 2 + usize::from(priority != Priority::Low)
}

/// What happens to one push to a room.
#[derive(Debug, PartialEq, Eq)]
pub enum Way {
    /// To each member now (the pending batch first).
    Now,
    /// Into the room's batch.
    Gathered,
    /// Into the room's batch, which goes out now (a HIGH push ending a
    /// window early, in one frame with what was gathered before it).
    GatheredLast,
    Dropped(Drop),
}

/// One room's state on a core.
#[derive(Default)]
struct Room {
    /// A backend's mark: hot or not, over `rooms.hot` and the rate.
    marked: Option<bool>,
    /// Hot by rate.
    auto_hot: bool,
    /// The second being counted, and its pushes.
    rate_start: Option<Instant>,
    rate_count: u32,
    /// The batch being gathered (push bodies, in order) and its bytes.
    batch: Vec<Bytes>,
    batch_bytes: usize,
    /// Dropped since the last batch went out.
    dropped: u32,
    /// The gathering batch's window, ms.
    window_ms: u32,
    /// When the gathering batch is due (its entry in the due queue); None
    /// when nothing gathers. An entry whose instant is not this one is
    /// stale (the batch went early, with a HIGH push or a full frame).
    due_at: Option<Instant>,
    /// For /stats.
    coalesced: u64,
    batches: u64,
    dropped_total: u64,
}

/// One hot room in /stats.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HotRoom {
    pub room: String,
    pub core: usize,
    /// Pushes gathered into batches, batches sent, pushes dropped.
    pub coalesced: u64,
    pub batches: u64,
    pub dropped: u64,
    /// The window of its latest batch, ms (stretched for a room with many
    /// members here, or while the core sheds load).
    pub window_ms: u32,
}

/// A gathering batch's due instant and room, earliest first in the heap.
type Due = Reverse<(Instant, Rc<str>)>;

/// The rooms' state of one core.
#[derive(Default)]
pub struct Rooms {
    map: RefCell<HashMap<Rc<str>, Room>>,
    /// Rooms whose batch is gathering, earliest due first.
    due: RefCell<BinaryHeap<Due>>,
    waker: RefCell<Option<Waker>>,
    /// When `run_rooms` will look at the heap next: None while it runs or
    /// waits for a first batch.
    until: Cell<Option<Instant>>,
    /// A batch came due before `until`: `run_rooms` looks again.
    kicked: Cell<bool>,
    /// `run_rooms` has not ended yet.
    pub running: Cell<bool>,
    upstream: RefCell<HashMap<Rc<str>, Bucket>>,
}

impl Rooms {
    /// Rooms hot on this core now.
    pub fn hot_count(&self, named: impl Fn(&str) -> bool) -> u64 {
        self.map
            .borrow()
            .iter()
            .filter(|(k, r)| r.marked.unwrap_or(r.auto_hot || named(k)))
            .count() as u64
    }

    /// Wakes `run_rooms` (the core stops).
    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// A batch due `at` started: `run_rooms` looks again if it would not
    /// look by then (windows differ per room, and change on a reload).
    fn due_at(&self, at: Instant) {
        if self.until.get().is_none_or(|u| at < u) {
            self.kicked.set(true);
            self.wake();
        }
    }

    /// The busiest rooms by pushes gathered, for /stats.
    pub fn stats(&self, core: usize) -> Vec<HotRoom> {
        let mut v: Vec<HotRoom> = self
            .map
            .borrow()
            .iter()
            .filter(|(_, r)| r.coalesced > 0 || r.dropped_total > 0)
            .map(|(k, r)| HotRoom {
                room: k.to_string(),
                core,
                coalesced: r.coalesced,
                batches: r.batches,
                dropped: r.dropped_total,
                window_ms: r.window_ms,
            })
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.coalesced + r.dropped));
        v.truncate(STATS_ROOMS_MAX);
        v
    }
}

impl Room {
    /// Gathers one push body.
    fn add(&mut self, body: &Bytes) {
        self.batch_bytes += field_len(body.len());
        self.batch.push(body.clone());
    }
}

/// Bytes at most of a `dropped` field (tag and a u32 varint).
const DROPPED_BYTES_MAX: usize = 6;

/// Bytes of a batch body for `room` whose pushes take `pushes_bytes`, at
/// most (with its `dropped` field).
fn batch_len(room: &str, pushes_bytes: usize) -> usize {
    pushes_bytes + field_len(room.len()) + DROPPED_BYTES_MAX
}

/// Bytes a length-delimited field of `len` bytes takes.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// The shared body of a batch: a Push whose `batch` holds the gathered
/// pushes (each already an encoded Push), with `room` and `dropped`.
pub fn encode_batch(room: &str, pushes: &[Bytes], dropped: u32) -> Bytes {
    let pushes_bytes = pushes.iter().map(|p| field_len(p.len())).sum();
    let mut out = BytesMut::with_capacity(batch_len(room, pushes_bytes));
    for p in pushes {
        out.put_u8(0x3a); // Push field 7 (batch), length-delimited
        encode_varint(p.len() as u64, &mut out);
        out.put_slice(p);
    }
    out.put_u8(0x42); // field 8 (room)
    encode_varint(room.len() as u64, &mut out);
    out.put_slice(room.as_bytes());
    if dropped > 0 {
        out.put_u8(0x48); // field 9 (dropped), varint
        encode_varint(dropped.into(), &mut out);
    }
    out.freeze()
}

impl Core {
    /// Decides what happens to a push to `room` that needs no ack.
    /// `over_rate`: the room is over `overload.room_broadcast_rate_per_s`;
    /// `members`: the room's members on this core.
    pub(super) fn room_way(
        &self,
        room: &Rc<str>,
        body: &Bytes,
        priority: Priority,
        over_rate: bool,
        members: usize,
    ) -> Way {
        let cfg = self.cfg();
        let rc = &cfg.rooms;
        let now = Instant::now();
        let mut map = self.rooms.map.borrow_mut();
        let r = map.entry(room.clone()).or_default();
        // The room's rate on this core, measured per second.
        match r.rate_start {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {}
            Some(t) => {
                let per_s = f64::from(r.rate_count) / now.duration_since(t).as_secs_f64();
                let hot = f64::from(rc.hot_rate_per_s);
                if per_s < hot / 2.0 {
                    r.auto_hot = false;
                }
                r.rate_start = Some(now);
                r.rate_count = 0;
            }
            None => r.rate_start = Some(now),
        }
        r.rate_count = r.rate_count.saturating_add(1);
        if rc.hot_rate_per_s > 0 && r.rate_count > rc.hot_rate_per_s {
            r.auto_hot = true;
        }
        let limit = (cfg.frame_bytes_max as usize).saturating_sub(push::HEAD_BYTES_MAX);
        let fits = batch_len(room, r.batch_bytes + field_len(body.len())) <= limit;
        if priority == Priority::High {
            // Never held: with a batch gathering, it ends the batch (one
            // frame, order kept); else it goes alone.
            if r.due_at.is_some() && fits {
                r.add(body);
                return Way::GatheredLast;
            }
            return Way::Now;
        }
        let shedding = self.overload.shedding();
        let shed = if over_rate {
            Some(Drop::RoomRate)
        } else if shedding {
            Some(Drop::Overload)
        } else {
            None
        };
        if priority == Priority::Low {
            if let Some(why) = shed {
                return self.dropped(r, why, priority);
            }
        }
        let hot = r
            .marked
            .unwrap_or_else(|| r.auto_hot || rc.named_hot(room))
            // Over the rate, NORMAL is coalesced rather than dropped.
            || over_rate;
        if !hot {
            return Way::Now;
        }
        if r.due_at.is_some() && r.batch.len() >= rc.batch_cap(r.window_ms) {
            return self.dropped(r, Drop::BatchFull, priority);
        }
        if !fits {
            // This push would not fit the batch's frame: the batch goes
            // now and this push starts the next one.
            drop(map);
            self.flush_room(room);
            map = self.rooms.map.borrow_mut();
        }
        let r = map.entry(room.clone()).or_default();
        r.add(body);
        r.coalesced += 1;
        CoreMetrics::inc(&self.metrics.room_coalesced);
        if r.due_at.is_none() {
            r.window_ms = rc.window_ms(members, shedding);
            let at = now + Duration::from_millis(r.window_ms.into());
            r.due_at = Some(at);
            self.rooms
                .due
                .borrow_mut()
                .push(Reverse((at, room.clone())));
            self.rooms.due_at(at);
        }
        Way::Gathered
    }

    fn dropped(&self, r: &mut Room, why: Drop, priority: Priority) -> Way {
        r.dropped = r.dropped.saturating_add(1);
        r.dropped_total += 1;
        if let Some(c) = self.metrics.room_drops.get(drop_cell(why, priority)) {
            CoreMetrics::inc(c);
        }
        Way::Dropped(why)
    }

    /// Sends `room`'s batch to its local members now: one shared body to
    /// the members that read batches, the pushes one by one to the others.
    /// Nothing when nothing gathers.
    pub(super) fn flush_room(&self, room: &Rc<str>) {
        let (pushes, dropped) = {
            let mut map = self.rooms.map.borrow_mut();
            let Some(r) = map.get_mut(room) else { return };
            r.due_at = None;
            if r.batch.is_empty() {
                return;
            }
            r.batches += 1;
            r.batch_bytes = 0;
            (std::mem::take(&mut r.batch), std::mem::take(&mut r.dropped))
        };
        CoreMetrics::inc(&self.metrics.room_batches);
        let body = encode_batch(room, &pushes, dropped);
        let now = self.now();
        let mut lost = Vec::new();
        {
            let mut st = self.state.borrow_mut();
            let State {
                conns,
                rooms,
                wheel,
                ..
            } = &mut *st;
            super::deliver::for_members(rooms.get(&**room), conns, &mut |c| {
                if c.flags.batches() {
                    lost.extend(self.deliver_one(c, &body, false, now, wheel));
                } else {
                    for p in &pushes {
                        lost.extend(self.deliver_one(c, p, false, now, wheel));
                    }
                }
            });
        }
        debug_assert!(lost.is_empty(), "pushes without ack are never reported");
    }

    /// Flushes every batch due by now, and drops the stale entries (of
    /// batches that went early) ahead of the next one; the next due
    /// instant, if any.
    fn flush_due(&self) -> Option<Instant> {
        loop {
            let now = Instant::now();
            let (at, room) = {
                let due = self.rooms.due.borrow();
                match due.peek() {
                    Some(Reverse((at, room))) => (*at, room.clone()),
                    None => return None,
                }
            };
            let current = self.rooms.map.borrow().get(&room).and_then(|r| r.due_at) == Some(at);
            if current && at > now {
                return Some(at);
            }
            self.rooms.due.borrow_mut().pop();
            if current {
                self.flush_room(&room);
            }
        }
    }

    /// Flushes batches as they come due, until the core stops.
    pub async fn run_rooms(self: Rc<Self>) {
        self.rooms.running.set(true);
        while !self.stopping.get() {
            self.rooms.until.set(None);
            let next = self.flush_due();
            self.rooms.until.set(next);
            // Until the next batch is due, or one due sooner starts (or the
            // core stops).
            let kicked = std::future::poll_fn(|cx| {
                if self.stopping.get() || self.rooms.kicked.replace(false) {
                    return Poll::Ready(());
                }
                *self.rooms.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            });
            match next {
                Some(at) => {
                    let wait = self.sleep(at.saturating_duration_since(Instant::now()));
                    futures_lite::future::or(wait, kicked).await
                }
                None => kicked.await,
            }
        }
        // What is still gathering goes out before the connections close.
        let rooms: Vec<_> = self.rooms.due.borrow_mut().drain().collect();
        for Reverse((_, room)) in rooms {
            self.flush_room(&room);
        }
        self.rooms.running.set(false);
    }

    /// A backend marks `room` hot (`Some(true)`), not hot (`Some(false)`),
    /// or hands it back to `rooms.hot` and the rate (`None`).
    pub fn mark_room(&self, room: &str, hot: Option<bool>) {
        let mut map = self.rooms.map.borrow_mut();
        match map.get_mut(room) {
            Some(r) => r.marked = hot,
            None if hot.is_some() => {
                map.insert(
                    Rc::from(room),
                    Room {
                        marked: hot,
                        ..Room::default()
                    },
                );
            }
            None => {}
        }
    }

    /// Forgets rooms with no local member and nothing gathering (called
    /// when the map has grown past the rooms that have members).
    pub(super) fn prune_rooms(&self) {
        let st = self.state.borrow();
        let mut map = self.rooms.map.borrow_mut();
        if map.len() <= 2 * st.rooms.len() + 64 {
            return;
        }
        map.retain(|k, r| r.due_at.is_some() || r.marked.is_some() || st.rooms.contains_key(k));
    }

    /// An upstream frame naming `room`: a token of its bucket, or the ms
    /// until one is there.
    pub fn take_room_upstream(&self, room: &str, now: Tick) -> Result<(), u32> {
        let cfg = self.cfg();
        let Some(rate) = Rate::new(
            cfg.rooms.upstream_rate_per_s,
            cfg.rooms.upstream_burst,
            cfg.tick_ms,
        ) else {
            return Ok(());
        };
        let mut buckets = self.rooms.upstream.borrow_mut();
        if let Some(b) = buckets.get_mut(room) {
            return b.take(&rate, now);
        }
        if buckets.len() >= UPSTREAM_BUCKETS_MAX {
            buckets.clear();
        }
        let mut b = Bucket::default();
        let res = b.take(&rate, now);
        buckets.insert(Rc::from(room), b);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_proto::pb;
    use prost::Message;

    fn a2() -> Bytes {
        push::encode_body("like", b"1", false, Priority::Low)
    }
    fn b2() -> Bytes {
        push::encode_body("gift", b"rose", false, Priority::Normal)
    }

    #[test]
    fn a_batch_decodes_as_a_push_carrying_the_pushes_in_order() {
        let (a, b) = (a2(), b2());
        let body = encode_batch("live-1", &[a, b], 3);
        let p = pb::Push::decode(body).expect("decodes");
        assert_eq!(p.room, "live-1");
        assert_eq!(p.dropped, 3);
        assert_eq!(p.seq, 0);
        assert!(!p.ack_required);
        let routes: Vec<_> = p.batch.iter().map(|x| x.route.as_str()).collect();
        assert_eq!(routes, ["like", "gift"]);
        assert_eq!(&p.batch[1].payload[..], b"rose");
        assert_eq!(p.batch[0].priority, Priority::Low as i32);
        // Byte for byte what prost makes of the same message.
        assert_eq!(encode_batch("live-1", &[a2(), b2()], 3), p.encode_to_vec());
        // The head of a push frame makes it a whole Frame.
        let body = encode_batch("r", &[], 0);
        let h = push::head(0, false, body.len());
        let mut frame = h.buf[..h.len as usize].to_vec();
        frame.extend_from_slice(&body);
        let f = pb::Frame::decode(&frame[4..]).expect("frame");
        assert!(matches!(f.body, Some(pb::frame::Body::Push(p)) if p.room == "r"));
    }

    #[test]
    fn field_len_counts_tag_length_and_bytes() {
        assert_eq!(field_len(0), 2);
        assert_eq!(field_len(127), 129);
        assert_eq!(field_len(128), 131);
    }

    #[test]
    fn drop_cells_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for d in Drop::ALL {
            for p in [Priority::Low, Priority::Normal] {
                assert!(seen.insert(drop_cell(d, p)));
                assert!(drop_cell(d, p) < DROP_CELLS);
            }
        }
    }
}
