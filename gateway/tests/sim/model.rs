//! The simulation's model: its random numbers, the kinds of client, and
//! the gateway's and the client's side of one session.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use gateway::core::delivery::{Link, Memory};
use gateway::core::liveness::Phase;
use gateway::core::push::{self, Out};
use gateway::core::wheel::Tick;
use gw_proto::pb::{frame::Body, Frame};
use gw_proto::{CloseReason, Decoded};

use crate::FRAME_BYTES_MAX;

/// splitmix64: small, seeded, the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(u64::from(hi - lo + 1)) as u32
    }
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Good,
    LateAcker,
    LossyAcker,
    StopsAcking(Tick),
    SlowReader(usize),
    NeverAuths,
    GoesSilent(Tick),
    Leaves(Tick),
    NoRefresh,
}

impl Kind {
    pub fn pick(rng: &mut Rng, created: Tick) -> Kind {
        let later = |rng: &mut Rng| created + rng.range(100, 1_200);
        match rng.below(100) {
            0..=49 => Kind::Good,
            50..=56 => Kind::LateAcker,
            57..=63 => Kind::LossyAcker,
            64..=70 => Kind::StopsAcking(later(rng)),
            71..=77 => Kind::SlowReader(rng.range(5, 100) as usize),
            78..=83 => Kind::NeverAuths,
            84..=89 => Kind::GoesSilent(later(rng)),
            90..=95 => Kind::Leaves(later(rng)),
            _ => Kind::NoRefresh,
        }
    }

    /// The close reasons this kind of client may end with.
    pub fn allows(self, r: CloseReason) -> bool {
        use CloseReason as R;
        match self {
            // Overflow of a back-fill burst is a documented slow consumer
            // even for a good client; it is counted apart below.
            Kind::Good
            | Kind::LateAcker
            | Kind::LossyAcker
            | Kind::StopsAcking(_)
            | Kind::SlowReader(_) => {
                matches!(
                    r,
                    R::Drain | R::ClientClosed | R::NodeUnavailable | R::SlowConsumer
                )
            }
            Kind::NeverAuths => r == R::AuthTimeout,
            Kind::GoesSilent(_) => matches!(
                r,
                R::StaleHeartbeat
                    | R::SlowConsumer
                    | R::NodeUnavailable
                    | R::Drain
                    | R::ClientClosed
            ),
            Kind::Leaves(_) => matches!(
                r,
                R::ClientClosed | R::SlowConsumer | R::NodeUnavailable | R::Drain
            ),
            Kind::NoRefresh => matches!(
                r,
                R::TokenExpired | R::Drain | R::ClientClosed | R::NodeUnavailable | R::SlowConsumer
            ),
        }
    }
}

/// The gateway's side of one connection: what `Conn` holds for it.
pub struct Gw {
    pub link: Memory,
    pub close: Option<CloseReason>,
    pub phase: Phase,
    pub created: Tick,
    pub last_in: Tick,
    pub expires: u32,
    pub noticed: bool,
    pub due: Tick,
    pub held_until: Tick,
}

impl Gw {
    /// Why the connection closes, if it does.
    pub fn reason(&self) -> Option<CloseReason> {
        self.close
            .or(self.link.slow_consumer.then_some(CloseReason::SlowConsumer))
    }
    /// Closes with `r` unless it closes already.
    pub fn close(&mut self, r: CloseReason) {
        if self.reason().is_none() {
            self.close = Some(r);
            self.link.closed = true;
        }
    }
    /// Queues a frame of the session layer (Pong, TokenExpiring).
    pub fn send_frame(&mut self, body: Body) {
        self.link
            .send(Out::frame(gw_proto::encode(&Frame { body: Some(body) })));
    }
}

/// (seq, retransmit, id) of a queued push frame; None for other frames.
pub fn push_of(head: &push::Head, body: &Bytes) -> Option<(u64, bool, u64)> {
    let mut whole = head.as_slice().to_vec();
    whole.extend_from_slice(body);
    match gw_proto::decode(&whole, FRAME_BYTES_MAX) {
        Ok(Decoded::Frame(
            Frame {
                body: Some(Body::Push(p)),
            },
            used,
        )) => {
            assert_eq!(used, whole.len(), "one queued item is one whole frame");
            Some((p.seq, p.retransmit, id_of(&p.payload)))
        }
        Ok(Decoded::Frame(..)) => None,
        other => panic!("the machine queued a broken frame: {other:?}"),
    }
}

pub fn id_of(payload: &[u8]) -> u64 {
    let b: [u8; 8] = payload
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .expect("payload starts with the push id");
    u64::from_le_bytes(b)
}

/// The client's side.
pub struct Client {
    pub kind: Kind,
    pub rx: Vec<u8>,
    /// Frames on their way to the gateway: (arrival tick, bytes).
    pub up: VecDeque<(Tick, Bytes)>,
    pub next_ping: Tick,
    pub auth_at: Option<Tick>,
    pub acks: VecDeque<(Tick, u64)>,
    pub refresh_at: Option<Tick>,
    pub leaves_at: Option<Tick>,
    pub last_first_id: u64,
    pub first_seq: HashMap<u64, u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fate {
    Pending,
    Acked,
    Reported,
}

pub struct Session {
    pub gw: Gw,
    pub client: Client,
    /// seq -> push id of what is in the window, mirrored from frames sent.
    pub mirror: BTreeMap<u64, u64>,
    pub last_seq: u64,
    pub torn_down: Option<CloseReason>,
    pub expired: usize,
    pub overflowed: bool,
    pub stalled: bool,
}

#[derive(Default, Debug)]
pub struct Tally {
    pub offered: u64,
    pub acked: u64,
    pub reported: u64,
    pub retransmits: u64,
    pub closes: BTreeMap<&'static str, u64>,
    pub good_overflows: u64,
    pub digest: u64,
}
