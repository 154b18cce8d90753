//! Reliable push: per-connection sequence numbers, a bounded window of
//! unacknowledged pushes, cumulative Ack, retransmit, and hand-back of what
//! was never acknowledged. Pure logic; the clock comes in as an argument.
//!
//! A push is encoded once into a shared body (route, payload, flags) and
//! every recipient gets a few bytes of its own in front (length prefix, the
//! Frame/Push headers and its `seq`). Protobuf allows fields in any order, so
//! `head ++ body` is one valid `Frame`, and a broadcast to many connections
//! costs one encoding and one refcount per recipient.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use gw_proto::pb;
use prost::Message;

use super::wheel::Tick;

/// Bytes of the per-recipient head, at most.
pub const HEAD_BYTES_MAX: usize = 24;
pub use crate::wire::out::{Head, Out, HEAD_BUF};

// A push head with a WebSocket header in place of its prefix fits a Head.
const _: () = assert!(HEAD_BYTES_MAX + 8 <= HEAD_BUF);

fn varint(mut v: u64, out: &mut [u8; HEAD_BUF], at: &mut usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[*at] = b;
            *at += 1;
            return;
        }
        out[*at] = b | 0x80;
        *at += 1;
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

/// Encodes the shared part of a push: route, payload, ack_required, priority.
pub fn encode_body(
    route: &str,
    payload: &[u8],
    ack_required: bool,
    priority: pb::Priority,
) -> Bytes {
    let p = pb::Push {
        seq: 0,
        route: route.to_owned(),
        payload: Bytes::copy_from_slice(payload),
        ack_required,
        priority: priority as i32,
        ..Default::default()
    };
    let mut b = BytesMut::with_capacity(p.encoded_len());
    // Cannot fail: capacity reserved.
    let _ = p.encode(&mut b);
    b.freeze()
}

/// The head that turns `body` into a whole length-prefixed Frame{push}.
pub fn head(seq: u64, retransmit: bool, body_len: usize) -> Head {
    let seq_len = if seq != 0 { 1 + varint_len(seq) } else { 0 };
    let rt_len = if retransmit { 2 } else { 0 };
    let push_len = seq_len + rt_len + body_len;
    let frame_len = 1 + varint_len(push_len as u64) + push_len;
    let mut h = Head::EMPTY;
    h.buf[..4].copy_from_slice(&(frame_len as u32).to_be_bytes());
    let mut at = 4;
    h.buf[at] = 0x42; // Frame field 8 (push), length-delimited
    at += 1;
    varint(push_len as u64, &mut h.buf, &mut at);
    if seq != 0 {
        h.buf[at] = 0x08; // Push field 1 (seq), varint
        at += 1;
        varint(seq, &mut h.buf, &mut at);
    }
    if retransmit {
        h.buf[at] = 0x30; // Push field 6 (retransmit), varint
        h.buf[at + 1] = 1;
        at += 2;
    }
    h.len = at as u8;
    h
}

/// A push awaiting its Ack.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub seq: u64,
    pub body: Bytes,
    pub sent: Tick,
    /// The first send on the link's fine clock (`Link::clock_us`, µs,
    /// wrapping), for the push-to-ack histogram.
    pub first_us: u32,
    pub retries: u8,
}

/// Decodes a shared body back into (route, payload), for undelivered reports.
pub fn decode_body(body: &Bytes) -> (String, Bytes) {
    match pb::Push::decode(body.clone()) {
        Ok(p) => (p.route, p.payload),
        Err(_) => (String::new(), Bytes::new()),
    }
}

/// The unacknowledged pushes of one connection. Empty costs no allocation.
#[derive(Default)]
pub struct Window {
    last_seq: u64,
    items: VecDeque<Unacked>,
}

impl Window {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Assigns the next sequence number and remembers the push, sent at
    /// `now` (and `now_us` on the fine clock).
    pub fn add(&mut self, body: Bytes, now: Tick, now_us: u32) -> u64 {
        self.last_seq += 1;
        self.items.push_back(Unacked {
            seq: self.last_seq,
            body,
            sent: now,
            first_us: now_us,
            retries: 0,
        });
        self.last_seq
    }

    /// Cumulative ack, one push at a time: takes the oldest push if its
    /// seq is <= `seq`, and returns its first send (`first_us`). Call
    /// [`Window::acked`] when done.
    pub fn pop_acked(&mut self, seq: u64) -> Option<u32> {
        if self.items.front().is_some_and(|u| u.seq <= seq) {
            self.items.pop_front().map(|u| u.first_us)
        } else {
            None
        }
    }

    /// After [`Window::pop_acked`]: an empty window gives its buffer back
    /// (idle connections hold no window memory).
    pub fn acked(&mut self) {
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
    }

    /// Cumulative ack: drops every push with seq <= `seq`. Returns how many.
    pub fn ack(&mut self, seq: u64) -> usize {
        let mut n = 0;
        while self.pop_acked(seq).is_some() {
            n += 1;
        }
        self.acked();
        n
    }

    /// Earliest tick at which some push times out.
    pub fn next_due(&self, timeout: Tick) -> Option<Tick> {
        self.items
            .iter()
            .map(|u| u.sent.saturating_add(timeout))
            .min()
    }

    /// Pushes timed out at `now`: those with retries left are marked resent
    /// and returned in `resend`; the others leave the window into `expired`.
    pub fn expire(
        &mut self,
        now: Tick,
        timeout: Tick,
        retries_max: u32,
        resend: &mut Vec<(u64, Bytes)>,
        expired: &mut Vec<Unacked>,
    ) {
        let mut i = 0;
        while i < self.items.len() {
            let u = &mut self.items[i];
            if u.sent.saturating_add(timeout) > now {
                i += 1;
                continue;
            }
            if (u.retries as u32) < retries_max {
                u.retries += 1;
                u.sent = now;
                resend.push((u.seq, u.body.clone()));
                i += 1;
            } else if let Some(u) = self.items.remove(i) {
                expired.push(u);
            }
        }
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
    }

    /// Counts every push as sent at `now` (nothing could be written before:
    /// a login held until its subscription was confirmed).
    pub fn restart_clock(&mut self, now: Tick) {
        for u in self.items.iter_mut() {
            u.sent = now;
        }
    }

    /// Empties the window (connection closing).
    pub fn take_all(&mut self) -> Vec<Unacked> {
        std::mem::take(&mut self.items).into()
    }
}

/// Bytes counted for each waiting push on top of its body: the queue
/// entry itself.
pub const WAITING_ITEM_BYTES: u32 = 32;

/// A push waiting for room (see [`Backlog`]).
pub struct Waiting {
    pub body: Bytes,
    pub ack_required: bool,
}

/// Pushes waiting for room on one connection, in arrival order: the
/// unacked window was full (ack-required pushes), or the outbound queue
/// had no room (any push). They leave in order as acks open the window
/// and writes empty the queue (flow control, like TCP's window or EMQX's
/// max_inflight plus message queue). Bounded in bytes by its owner
/// (`push_queue_bytes_max`); a connection with nothing waiting holds no
/// backlog at all.
#[derive(Default)]
pub struct Backlog {
    items: VecDeque<Waiting>,
    /// Bodies plus `WAITING_ITEM_BYTES` each.
    bytes: u32,
    /// Tick at which the backlog last moved (an item left), or began.
    moved: Tick,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn bytes(&self) -> u32 {
        self.bytes
    }
    /// Tick of the last move (or of the first push into an empty backlog).
    pub fn moved(&self) -> Tick {
        self.moved
    }
    /// What a push costs the backlog's byte budget.
    pub fn cost(body: &Bytes) -> u32 {
        (body.len() as u32).saturating_add(WAITING_ITEM_BYTES)
    }

    /// Appends a push unless that would take the backlog past `bytes_max`;
    /// then the push comes back.
    pub fn push(&mut self, w: Waiting, now: Tick, bytes_max: u32) -> Result<(), Waiting> {
        let cost = Self::cost(&w.body);
        if self.bytes.saturating_add(cost) > bytes_max {
            return Err(w);
        }
        if self.items.is_empty() {
            self.moved = now;
        }
        self.bytes += cost;
        self.items.push_back(w);
        debug_assert_eq!(
            self.bytes as usize,
            self.items
                .iter()
                .map(|w| Self::cost(&w.body) as usize)
                .sum::<usize>()
        );
        Ok(())
    }

    pub fn front(&self) -> Option<&Waiting> {
        self.items.front()
    }

    /// Takes the first push: the backlog moved at `now`.
    pub fn pop(&mut self, now: Tick) -> Option<Waiting> {
        let w = self.items.pop_front()?;
        self.bytes -= Self::cost(&w.body);
        self.moved = now;
        if self.items.is_empty() {
            debug_assert_eq!(self.bytes, 0);
            self.items = VecDeque::new(); // give the buffer back
        }
        Some(w)
    }

    /// True when pushes wait and nothing left for `timeout` ticks.
    pub fn stalled(&self, now: Tick, timeout: Tick) -> bool {
        !self.items.is_empty() && now >= self.moved.saturating_add(timeout)
    }

    /// Empties the backlog (connection closing).
    pub fn take_all(&mut self) -> Vec<Waiting> {
        self.bytes = 0;
        std::mem::take(&mut self.items).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_proto::{decode, Body, Decoded};

    fn whole(h: Head, body: &Bytes) -> Vec<u8> {
        let mut v = h.as_slice().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn head_plus_body_is_a_valid_frame() {
        let body = encode_body("chat.msg", &[1u8; 300], true, pb::Priority::High);
        for (seq, rt) in [
            (0u64, false),
            (1, false),
            (127, true),
            (128, false),
            (u64::MAX, true),
        ] {
            let bytes = whole(head(seq, rt, body.len()), &body);
            match decode(&bytes, 1 << 20) {
                Ok(Decoded::Frame(f, used)) => {
                    assert_eq!(used, bytes.len());
                    let Some(Body::Push(p)) = f.body else {
                        panic!("not a push")
                    };
                    assert_eq!((p.seq, p.retransmit), (seq, rt));
                    assert_eq!(p.route, "chat.msg");
                    assert_eq!(p.payload.len(), 300);
                    assert!(p.ack_required);
                    assert_eq!(p.priority, pb::Priority::High as i32);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn cumulative_ack_retransmit_and_expiry() {
        let mut w = Window::default();
        let b = Bytes::from_static(b"x");
        assert_eq!(w.add(b.clone(), 0, 0), 1);
        assert_eq!(w.add(b.clone(), 0, 0), 2);
        assert_eq!(w.add(b.clone(), 5, 0), 3);
        assert_eq!(w.ack(1), 1);
        assert_eq!(w.next_due(10), Some(10));
        let (mut re, mut ex) = (vec![], vec![]);
        w.expire(9, 10, 1, &mut re, &mut ex);
        assert!(re.is_empty() && ex.is_empty());
        w.expire(10, 10, 1, &mut re, &mut ex);
        assert_eq!(re.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        assert!(ex.is_empty());
        re.clear();
        w.expire(20, 10, 1, &mut re, &mut ex);
        // seq 2 used its one retry: expired. seq 3 (sent at 5) gets its retry.
        assert_eq!(ex.iter().map(|u| u.seq).collect::<Vec<_>>(), vec![2]);
        assert_eq!(re.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3]);
        assert_eq!(w.ack(100), 1);
        assert!(w.is_empty());
        assert_eq!(w.last_seq(), 3);
    }

    #[test]
    fn decode_body_round_trip() {
        let body = encode_body("r", b"pay", false, pb::Priority::Normal);
        let (route, payload) = decode_body(&body);
        assert_eq!(route, "r");
        assert_eq!(&payload[..], b"pay");
    }

    #[test]
    fn backlog_is_bounded_in_bytes_ordered_and_tracks_moves() {
        let mut b = Backlog::default();
        let body = |n: usize| Bytes::from(vec![0u8; n]);
        let cost = 100 + WAITING_ITEM_BYTES;
        let max = 3 * cost;
        for i in 0..3 {
            let w = Waiting {
                body: body(100),
                ack_required: i % 2 == 0,
            };
            assert!(b.push(w, 5, max).is_ok());
        }
        assert_eq!(b.bytes(), max);
        assert_eq!(b.moved(), 5);
        // One more byte than the budget is refused and handed back.
        let back = b.push(
            Waiting {
                body: body(1),
                ack_required: true,
            },
            6,
            max,
        );
        assert!(back.is_err_and(|w| w.body.len() == 1));
        assert!(!b.stalled(14, 10));
        assert!(b.stalled(15, 10));
        let first = b.pop(20).expect("first");
        assert!(first.ack_required);
        assert_eq!(b.moved(), 20);
        assert!(!b.stalled(29, 10));
        assert_eq!(b.len(), 2);
        assert_eq!(b.take_all().len(), 2);
        assert!(b.is_empty() && b.bytes() == 0);
        assert!(!b.stalled(1000, 10));
    }
}
