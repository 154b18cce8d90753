//! Fuzzes the reliable-push machine (`gateway/src/core/delivery.rs`) on a
//! connection in memory: the input is a program of offers, acks (any seq,
//! the client's word), clock steps and reads of the outbound queue, with
//! small limits so that windows fill, backlogs overflow and stall, and
//! retries run out. Checked after every step:
//! - never a panic;
//! - every ack-required push offered is acknowledged or handed back, not
//!   both and not neither (handed back: overflow, out of retries, close);
//! - seqs follow each other; a retransmit carries its first push;
//!   pushes are written in the order they were offered;
//! - window, backlog and outbound queue within their limits;
//! - nothing waits that there is room to send.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use bytes::{BufMut, Bytes, BytesMut};
use gateway::core::delivery::{self, Limits, Link, Memory, Placed};
use gateway::core::push::{self, Unacked};
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::Decoded;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    unacked_pushes_max: 4,
    push_queue_bytes_max: 2_048,
    outbound_bytes_max: 4_096,
    ack_ticks: 3,
    ack_retries_max: 2,
    stall_ticks: 10,
};

#[derive(Debug, PartialEq)]
enum Fate {
    Pending,
    Acked,
    Reported,
}

struct Run {
    link: Memory,
    now: u32,
    fate: HashMap<u64, Fate>,
    /// seq -> push id of the window, from the frames sent.
    mirror: BTreeMap<u64, u64>,
    last_seq: u64,
    next_id: u64,
    last_written: u64,
    written: Vec<u8>,
}

fn id_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8-byte id"))
}

fn push_of(bytes: &[u8]) -> Option<pb::Push> {
    match gw_proto::decode(bytes, 1 << 20) {
        Ok(Decoded::Frame(
            Frame {
                body: Some(Body::Push(p)),
            },
            used,
        )) => {
            assert_eq!(used, bytes.len());
            Some(p)
        }
        other => panic!("not one push frame: {other:?}"),
    }
}

impl Run {
    fn settle(&mut self, id: u64, to: Fate) {
        let f = self.fate.get_mut(&id).expect("settled push was offered");
        assert_eq!(*f, Fate::Pending, "push {id} {to:?} after {f:?}");
        *f = to;
    }

    fn handed_back(&mut self, items: Vec<Unacked>) {
        for u in items {
            let id = id_of(&push::decode_body(&u.body).1);
            if u.seq != 0 {
                assert_eq!(self.mirror.remove(&u.seq), Some(id));
            }
            self.settle(id, Fate::Reported);
        }
    }

    fn check(&mut self) {
        for (head, body) in std::mem::take(&mut self.link.log) {
            let mut whole = head.as_slice().to_vec();
            whole.extend_from_slice(&body);
            let Some(p) = push_of(&whole) else { continue };
            let id = id_of(&p.payload);
            if p.seq == 0 {
                continue;
            }
            if p.retransmit {
                assert_eq!(
                    self.mirror.get(&p.seq),
                    Some(&id),
                    "retransmit of {}",
                    p.seq
                );
            } else {
                assert_eq!(p.seq, self.last_seq + 1);
                self.last_seq = p.seq;
                self.mirror.insert(p.seq, id);
            }
        }
        let l = &self.link;
        assert_eq!(l.window.len(), self.mirror.len());
        assert!(l.window.len() <= LIMITS.unacked_pushes_max);
        assert!(l.out_bytes <= LIMITS.outbound_bytes_max);
        assert!(l.backlog.as_ref().map_or(0, |b| b.bytes()) <= LIMITS.push_queue_bytes_max);
        if let Some(w) = l.backlog.as_ref().and_then(|b| b.front()) {
            let window_full = w.ack_required && l.window.len() >= LIMITS.unacked_pushes_max;
            let queue_full = l.out_bytes as usize + w.body.len() + push::HEAD_BYTES_MAX
                > LIMITS.outbound_bytes_max as usize;
            assert!(l.closing() || window_full || queue_full, "waits with room");
        }
    }

    /// The client reads `n` bytes; whole frames must come in offer order.
    fn read(&mut self, n: usize) {
        if self.link.write(n, &mut self.written) && self.link.backlog.is_some() {
            delivery::pump(&mut self.link, &LIMITS, self.now);
        }
        loop {
            let (p, used) = match gw_proto::decode(&self.written, 1 << 20) {
                Ok(Decoded::Frame(f, used)) => match f.body {
                    Some(Body::Push(p)) => (p, used),
                    other => panic!("only pushes are written here: {other:?}"),
                },
                Ok(Decoded::Incomplete(_)) => break,
                Err(e) => panic!("bad frame written: {e:?}"),
            };
            self.written.drain(..used);
            if !p.retransmit {
                let id = id_of(&p.payload);
                assert!(id > self.last_written, "written out of order");
                self.last_written = id;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Run {
        link: Memory::new(LIMITS.outbound_bytes_max),
        now: 1,
        fate: HashMap::new(),
        mirror: BTreeMap::new(),
        last_seq: 0,
        next_id: 1,
        last_written: 0,
        written: Vec::new(),
    };
    for op in data.chunks(2) {
        let (code, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        if r.link.closing() {
            break;
        }
        match code % 5 {
            0 | 1 => {
                let ack = code & 0x10 != 0;
                let id = r.next_id;
                r.next_id += 1;
                let mut payload = BytesMut::new();
                payload.put_u64_le(id);
                payload.put_bytes(0, usize::from(arg) * 4);
                let body: Bytes = push::encode_body("f", &payload, ack, pb::Priority::Normal);
                if ack {
                    r.fate.insert(id, Fate::Pending);
                }
                if let Placed::Overflow(w) = delivery::offer(&mut r.link, &LIMITS, body, ack, r.now)
                {
                    r.link.slow_consumer = true;
                    if w.ack_required {
                        r.settle(id_of(&push::decode_body(&w.body).1), Fate::Reported);
                    }
                }
            }
            2 => {
                // Any seq: behind, within or past what was sent.
                let seq = (r.last_seq + u64::from(arg % 8)).saturating_sub(4);
                let before: Vec<u64> = r.mirror.range(..=seq).map(|(&s, _)| s).collect();
                let (n, _) = delivery::ack(&mut r.link, &LIMITS, seq, r.now);
                assert_eq!(n, before.len());
                for s in before {
                    if let Some(id) = r.mirror.remove(&s) {
                        r.settle(id, Fate::Acked);
                    }
                }
            }
            3 => {
                r.now += u32::from(arg % 16);
                let c = delivery::check(&mut r.link, &LIMITS, r.now);
                r.handed_back(c.expired);
                if c.stalled {
                    r.link.slow_consumer = true;
                }
                if let Some(next) = c.next {
                    assert!(
                        next > r.now || r.link.closing(),
                        "next check is in the future"
                    );
                }
            }
            _ => r.read(usize::from(arg) * 16),
        }
        r.check();
    }
    r.link.closed = true;
    let items = delivery::hand_back(&mut r.link);
    r.handed_back(items);
    assert!(r.mirror.is_empty());
    assert!(
        r.fate.values().all(|f| *f != Fate::Pending),
        "pushes neither acked nor reported"
    );
});
