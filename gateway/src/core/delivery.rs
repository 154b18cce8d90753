//! Reliable push on one connection, as a state machine without I/O: pushes
//! and acks and the clock come in, frames to queue and pushes to hand back
//! come out. The core runs it on its connections (`deliver.rs`,
//! `sweep.rs`, `lifecycle.rs`); the simulation (`tests/sim.rs`) and the
//! `delivery` fuzz target run the same code on connections of their own.
//!
//! The rules (PROTOCOL.md §7.3): an ack-required push takes the next `seq`
//! when there is room in the window (`unacked_pushes_max`) and in the
//! outbound queue (`outbound_bytes_max`); otherwise it waits in the
//! backlog, in order, within `push_queue_bytes_max`. A cumulative Ack
//! trims the window and lets waiting pushes out. A push unacknowledged for
//! `ack_timeout_ms` is sent again (same seq, `retransmit`) up to
//! `ack_retries_max` times, then handed back. A backlog that does not move
//! for `push_stall_timeout_ms`, or overflows, makes the connection a slow
//! consumer. Nothing leaves except acknowledged or handed back.

use bytes::Bytes;

use super::push::{self, Backlog, Out, Unacked, Waiting, Window};
use super::wheel::Tick;

/// The limits the machine keeps, in ticks and bytes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Ack-required pushes in flight (`unacked_pushes_max`).
    pub unacked_pushes_max: usize,
    /// Bytes waiting in the backlog (`push_queue_bytes_max`).
    pub push_queue_bytes_max: u32,
    /// Bytes queued for writing (`outbound_bytes_max`).
    pub outbound_bytes_max: u32,
    /// `ack_timeout_ms` in ticks.
    pub ack_ticks: Tick,
    pub ack_retries_max: u32,
    /// `push_stall_timeout_ms` in ticks.
    pub stall_ticks: Tick,
}

impl Limits {
    /// The limits a configuration sets.
    pub fn of(cfg: &crate::Config) -> Limits {
        let ticks = |ms: u32| ms.div_ceil(cfg.tick_ms);
        Limits {
            unacked_pushes_max: cfg.unacked_pushes_max as usize,
            push_queue_bytes_max: cfg.push_queue_bytes_max,
            outbound_bytes_max: cfg.outbound_bytes_max,
            ack_ticks: ticks(cfg.ack_timeout_ms),
            ack_retries_max: cfg.ack_retries_max,
            stall_ticks: ticks(cfg.push_stall_timeout_ms),
        }
    }
}

/// A connection as the machine sees it.
pub trait Link {
    fn window(&self) -> &Window;
    fn window_mut(&mut self) -> &mut Window;
    /// The backlog, when something waits (None or empty otherwise).
    fn backlog(&self) -> Option<&Backlog>;
    /// The backlog, allocated on first use.
    fn backlog_mut(&mut self) -> &mut Backlog;
    /// Frees an empty backlog (an idle connection holds none).
    fn backlog_done(&mut self);
    /// Bytes queued for writing.
    fn queued_bytes(&self) -> u32;
    /// Whether the connection is closing (nothing more is sent).
    fn closing(&self) -> bool;
    /// Queues one frame. Room was checked against `outbound_bytes_max`; a
    /// link that overflows anyway closes as a slow consumer.
    fn send(&mut self, out: Out);
    /// A fine clock, µs (wrapping), for the push-to-ack histogram; a link
    /// that does not measure keeps the default.
    fn clock_us(&self) -> u32 {
        0
    }
    /// An ack-required push was acknowledged `us` after its first send.
    fn acked_after(&mut self, _us: u32) {}
}

/// Where an offered push went.
pub enum Placed {
    /// Queued for writing. `due`: its ack deadline (ack-required only).
    Sent { due: Option<Tick> },
    /// Into the backlog. `due`: the stall deadline, when the backlog was
    /// empty before (it starts now).
    Waiting { due: Option<Tick> },
    /// The backlog is full (`push_queue_bytes_max`): the connection is a
    /// slow consumer, and this push comes back to be reported.
    Overflow(Waiting),
}

/// What a check of the clock found.
#[derive(Default)]
pub struct Checked {
    /// Pushes sent again.
    pub retransmits: usize,
    /// Pushes out of retries, out of the window: hand them back.
    pub expired: Vec<Unacked>,
    /// The backlog did not move for `stall_ticks`: a slow consumer.
    pub stalled: bool,
    /// The next tick this connection's delivery needs the clock (None:
    /// nothing in flight or waiting).
    pub next: Option<Tick>,
}

fn has_room(l: &impl Link, lim: &Limits, body: &Bytes, ack_required: bool) -> bool {
    (!ack_required || l.window().len() < lim.unacked_pushes_max)
        && (l.queued_bytes() as usize).saturating_add(body.len() + push::HEAD_BYTES_MAX)
            <= lim.outbound_bytes_max as usize
}

/// The machine's invariant after every step: nothing waits in the backlog
/// that there is room to send (the window, or the outbound queue, is
/// full), unless the link is closing. Checked by `debug_assert!` here, and
/// by the simulation and the fuzz target after every step.
pub fn work_conserving(l: &impl Link, lim: &Limits) -> bool {
    match l.backlog().and_then(|b| b.front()) {
        Some(w) => l.closing() || !has_room(l, lim, &w.body, w.ack_required),
        None => true,
    }
}

/// Queues a push for writing; an ack-required one takes the next seq.
/// Returns its ack deadline.
fn send(
    l: &mut impl Link,
    lim: &Limits,
    body: Bytes,
    ack_required: bool,
    now: Tick,
) -> Option<Tick> {
    if !ack_required {
        let head = push::head(0, false, body.len());
        l.send(Out { head, body });
        return None;
    }
    debug_assert!(l.window().len() < lim.unacked_pushes_max);
    let now_us = l.clock_us();
    let seq = l.window_mut().add(body.clone(), now, now_us);
    let head = push::head(seq, false, body.len());
    l.send(Out { head, body });
    Some(now.saturating_add(lim.ack_ticks))
}

/// Offers a push to an open connection: sent when there is room and
/// nothing waits before it, else into the backlog.
pub fn offer(
    l: &mut impl Link,
    lim: &Limits,
    body: Bytes,
    ack_required: bool,
    now: Tick,
) -> Placed {
    let waiting = l.backlog().is_some_and(|b| !b.is_empty());
    if !waiting && has_room(l, lim, &body, ack_required) {
        let due = send(l, lim, body, ack_required, now);
        return Placed::Sent { due };
    }
    let w = Waiting { body, ack_required };
    match l.backlog_mut().push(w, now, lim.push_queue_bytes_max) {
        Ok(()) => {
            debug_assert!(work_conserving(l, lim));
            Placed::Waiting {
                due: (!waiting).then(|| now.saturating_add(lim.stall_ticks)),
            }
        }
        Err(w) => {
            l.backlog_done();
            Placed::Overflow(w)
        }
    }
}

/// Sends what waits in the backlog while there is room, in order. Returns
/// the earliest ack deadline of what it sent.
pub fn pump(l: &mut impl Link, lim: &Limits, now: Tick) -> Option<Tick> {
    let mut due = None;
    if l.closing() {
        return due;
    }
    while let Some(front) = l.backlog().and_then(|b| b.front()) {
        if !has_room(l, lim, &front.body, front.ack_required) {
            break;
        }
        let Some(w) = l.backlog_mut().pop(now) else {
            break;
        };
        let d = send(l, lim, w.body, w.ack_required, now);
        due = due.or(d);
    }
    l.backlog_done();
    debug_assert!(work_conserving(l, lim));
    due
}

/// A cumulative Ack: trims the window, then lets waiting pushes out.
/// Returns how many pushes it acknowledged, and the earliest ack deadline
/// of the pushes it let out.
pub fn ack(l: &mut impl Link, lim: &Limits, seq: u64, now: Tick) -> (usize, Option<Tick>) {
    let now_us = l.clock_us();
    let mut n = 0;
    while let Some(first_us) = l.window_mut().pop_acked(seq) {
        l.acked_after(now_us.wrapping_sub(first_us));
        n += 1;
    }
    l.window_mut().acked();
    let waiting = l.backlog().is_some_and(|b| !b.is_empty());
    let due = if n > 0 && waiting {
        pump(l, lim, now)
    } else {
        None
    };
    (n, due)
}

/// The clock: retransmits what timed out, hands back what is out of
/// retries, lets waiting pushes into the room that made, and checks the
/// backlog for a stall.
pub fn check(l: &mut impl Link, lim: &Limits, now: Tick) -> Checked {
    let mut out = Checked::default();
    let mut resend = Vec::new();
    l.window_mut().expire(
        now,
        lim.ack_ticks,
        lim.ack_retries_max,
        &mut resend,
        &mut out.expired,
    );
    out.retransmits = resend.len();
    for (seq, body) in resend {
        let head = push::head(seq, true, body.len());
        l.send(Out { head, body });
    }
    if !out.expired.is_empty() {
        pump(l, lim, now);
    }
    out.next = l.window().next_due(lim.ack_ticks);
    if let Some(b) = l.backlog().filter(|b| !b.is_empty()) {
        if b.stalled(now, lim.stall_ticks) {
            out.stalled = true;
            return out;
        }
        let stall = b.moved().saturating_add(lim.stall_ticks);
        out.next = Some(out.next.map_or(stall, |t| t.min(stall)));
    }
    out
}

/// Everything not acknowledged, for the report at close: the window in
/// seq order, then the ack-required pushes that waited (seq 0, never sent).
pub fn hand_back(l: &mut impl Link) -> Vec<Unacked> {
    let mut items = l.window_mut().take_all();
    if l.backlog().is_some() {
        let waited = l.backlog_mut().take_all();
        items.extend(
            waited
                .into_iter()
                .filter(|w| w.ack_required)
                .map(|w| Unacked {
                    seq: 0,
                    body: w.body,
                    sent: 0,
                    first_us: 0,
                    retries: 0,
                }),
        );
        l.backlog_done();
    }
    items
}

/// A connection in memory: the outbound queue is a `VecDeque` its owner
/// drains with [`Memory::write`]. The simulation and the fuzz target run
/// the machine on it; it keeps the core's rule that a frame over
/// `outbound_bytes_max` is not queued and makes the link a slow consumer.
#[derive(Default)]
pub struct Memory {
    pub window: Window,
    pub backlog: Option<Box<Backlog>>,
    pub out: std::collections::VecDeque<Out>,
    /// Bytes of the front item already written.
    pub out_off: usize,
    pub out_bytes: u32,
    pub outbound_bytes_max: u32,
    /// Set when the link closes as a slow consumer (or by its owner).
    pub slow_consumer: bool,
    pub closed: bool,
    /// Every frame handed to `send`, queued or not, for the owner to check.
    pub log: Vec<(push::Head, Bytes)>,
}

impl Memory {
    pub fn new(outbound_bytes_max: u32) -> Memory {
        Memory {
            outbound_bytes_max,
            ..Default::default()
        }
    }

    /// Writes up to `budget` bytes of the outbound queue into `to`; true
    /// when anything was written.
    pub fn write(&mut self, mut budget: usize, to: &mut Vec<u8>) -> bool {
        let mut wrote = false;
        while budget > 0 {
            let Some(front) = self.out.front() else {
                break;
            };
            let (head, len) = (front.head.as_slice(), front.len());
            let (from, end) = (
                self.out_off,
                self.out_off + (len - self.out_off).min(budget),
            );
            let n = end - from;
            if from < head.len() {
                to.extend_from_slice(&head[from..end.min(head.len())]);
            }
            if end > head.len() {
                to.extend_from_slice(
                    &front.body[from.max(head.len()) - head.len()..end - head.len()],
                );
            }
            self.out_off += n;
            self.out_bytes -= n as u32;
            budget -= n;
            wrote = true;
            if self.out_off == len {
                self.out.pop_front();
                self.out_off = 0;
            }
        }
        wrote
    }
}

impl Link for Memory {
    fn window(&self) -> &Window {
        &self.window
    }
    fn window_mut(&mut self) -> &mut Window {
        &mut self.window
    }
    fn backlog(&self) -> Option<&Backlog> {
        self.backlog.as_deref()
    }
    fn backlog_mut(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Default::default)
    }
    fn backlog_done(&mut self) {
        if self.backlog.as_ref().is_some_and(|b| b.is_empty()) {
            self.backlog = None;
        }
    }
    fn queued_bytes(&self) -> u32 {
        self.out_bytes
    }
    fn closing(&self) -> bool {
        self.closed || self.slow_consumer
    }
    fn send(&mut self, out: Out) {
        if self.closing() {
            return;
        }
        self.log.push((out.head, out.body.clone()));
        let len = out.len() as u32;
        if self.out_bytes.saturating_add(len) > self.outbound_bytes_max {
            self.slow_consumer = true;
            return;
        }
        self.out_bytes += len;
        self.out.push_back(out);
    }
}
