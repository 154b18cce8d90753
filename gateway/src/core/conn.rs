//! One connection's record in the core's slab: `Conn` (kept near 200 bytes:
//! ARCHITECTURE.md, memory budget), its flag bits, and the rarely used
//! `Extra` allocated on demand.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use gw_proto::CloseReason;

use super::overload;
use super::push::{self, Out, Window};
use super::wheel::Tick;

/// A connection's key on its core: its id, which packs the core (8 bits),
/// a generation (24 bits) and the slab index (32 bits) (`super::conn_id`).
/// The slab slot is `idx()`; the generation tells a reused slot from the
/// connection a caller meant, so a stale key finds nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnKey(u64);

impl ConnKey {
    /// The key of connection id `id` (as events and the backend name it).
    pub fn from_id(id: u64) -> ConnKey {
        ConnKey(id)
    }
    /// The connection id (wire, events, `/connz`).
    pub fn id(self) -> u64 {
        self.0
    }
    /// The slab slot.
    pub fn idx(self) -> u32 {
        super::conn_id_idx(self.0)
    }
}

/// The slab of a core's connections, looked up by key: a slot reused by a
/// newer connection is not the connection the key names.
pub trait ByKey {
    /// The connection `key` names, if it is still open.
    fn by_key(&mut self, key: ConnKey) -> Option<&mut Conn>;
    /// Whether the connection `key` names is still open.
    fn holds(&self, key: ConnKey) -> bool;
}

impl ByKey for slab::Slab<Conn> {
    fn by_key(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.get_mut(key.idx() as usize)
            .filter(|c| c.id == key.id())
    }
    fn holds(&self, key: ConnKey) -> bool {
        self.get(key.idx() as usize)
            .is_some_and(|c| c.id == key.id())
    }
}

/// One client connection's state: everything a connection costs besides
/// its kernel socket and epoll registration. Served by the core's I/O loop
/// (`conn::epoll` or `conn::uring`); there is no task per connection.
pub struct Conn {
    pub id: u64,
    /// The socket; closed by `teardown`.
    pub fd: i32,
    /// I/O and session bits in one byte (see [`Flags`]).
    pub flags: Flags,
    /// Where the connection is in the WebSocket protocol (one byte, so an
    /// idle WebSocket costs nothing more).
    pub ws: WsPhase,
    /// Set once authenticated.
    pub user: Option<Rc<str>>,
    pub device: Option<Rc<str>>,
    pub created: Tick,
    /// Tick of the last inbound bytes (any frame counts as life).
    pub last_in: Tick,
    /// Tick of this connection's wheel entry (0 = none).
    pub due: Tick,
    pub heartbeat_ms: u32,
    pub out: VecDeque<Out>,
    /// Bytes of the front `out` item already written.
    pub out_off: u32,
    pub out_bytes: u32,
    /// Bytes read from and written to the socket (saturating; for /connz).
    pub bytes_in: u32,
    pub bytes_out: u32,
    pub window: Window,
    /// Bytes of a frame not yet complete (empty, unallocated, when idle).
    pub partial: Vec<u8>,
    pub close: Option<CloseReason>,
    /// Upstream requests of this connection awaiting the backend (at most
    /// `upstream_inflight_per_conn_max`, ≤ 65,535).
    pub inflight: u16,
    /// The token's expiry, unix seconds; the session ends at this plus
    /// `auth.leeway_s` unless refreshed. 0 = never (or not authenticated).
    pub expires: u32,
    /// Upstream frames allowed by `upstream_rate_per_conn_per_s` (8 bytes).
    pub upstream_bucket: overload::Bucket,
    /// What most connections never use, allocated on first use.
    pub extra: Option<Box<Extra>>,
}

impl Conn {
    /// A connection just accepted on `fd`: not authenticated, nothing
    /// queued, not on the wheel yet.
    pub fn new(id: u64, fd: i32, now: Tick, heartbeat_ms: u32) -> Conn {
        Conn {
            id,
            fd,
            flags: Flags::new_readable(),
            ws: WsPhase::None,
            user: None,
            device: None,
            created: now,
            last_in: now,
            due: 0,
            heartbeat_ms,
            out: VecDeque::new(),
            out_off: 0,
            out_bytes: 0,
            bytes_in: 0,
            bytes_out: 0,
            window: Window::default(),
            partial: Vec::new(),
            close: None,
            inflight: 0,
            expires: 0,
            upstream_bucket: Default::default(),
            extra: None,
        }
    }
}

/// A connection's WebSocket phase after the upgrade (the upgrade itself
/// and message fragments live in `Extra::ws`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(u8)]
pub enum WsPhase {
    /// Not a WebSocket (or not upgraded yet).
    #[default]
    None,
    /// Upgraded: frames go out wrapped as binary messages.
    Open,
    /// Upgraded, and the gateway's close frame went out.
    CloseSent,
}

/// Bits of a connection's state, packed in one byte (the connection record
/// is paid per connection): on the ready list, readable, write-blocked,
/// token expiry noticed, first plaintext seen.
#[derive(Clone, Copy, Default)]
pub struct Flags(u8);

impl Flags {
    /// A new connection's flags: readable (its first bytes may be waiting).
    pub fn new_readable() -> Flags {
        Flags(Flags::READABLE)
    }
    /// On the core's ready list.
    const QUEUED: u8 = 1;
    /// A read edge was seen and the socket is not known to be drained.
    const READABLE: u8 = 2;
    /// The last write hit EAGAIN: wait for the write edge.
    const WRITE_BLOCKED: u8 = 4;
    /// TokenExpiring was sent for the current token.
    const EXPIRY_NOTICED: u8 = 8;
    /// The connection's first plaintext (its own bytes, or the first out
    /// of TLS) was seen: WebSocket or frames is decided (`conn/input.rs`).
    const PLAIN_SEEN: u8 = 16;
    /// A send of this connection is in flight on the ring (io_uring driver).
    const SEND_INFLIGHT: u8 = 32;
    /// The client reads batches (`Auth.push_batches`): a hot room's pushes
    /// reach it as one Push carrying many (`core/rooms.rs`).
    const BATCHES: u8 = 64;

    fn get(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
    pub fn queued(self) -> bool {
        self.get(Self::QUEUED)
    }
    pub fn set_queued(&mut self, on: bool) {
        self.set(Self::QUEUED, on)
    }
    pub fn readable(self) -> bool {
        self.get(Self::READABLE)
    }
    pub fn set_readable(&mut self, on: bool) {
        self.set(Self::READABLE, on)
    }
    pub fn write_blocked(self) -> bool {
        self.get(Self::WRITE_BLOCKED)
    }
    pub fn set_write_blocked(&mut self, on: bool) {
        self.set(Self::WRITE_BLOCKED, on)
    }
    pub fn batches(self) -> bool {
        self.get(Self::BATCHES)
    }
    pub fn set_batches(&mut self, on: bool) {
        self.set(Self::BATCHES, on)
    }
    pub fn send_inflight(self) -> bool {
        self.get(Self::SEND_INFLIGHT)
    }
    pub fn set_send_inflight(&mut self, on: bool) {
        self.set(Self::SEND_INFLIGHT, on)
    }
    pub fn expiry_noticed(self) -> bool {
        self.get(Self::EXPIRY_NOTICED)
    }
    pub fn set_expiry_noticed(&mut self, on: bool) {
        self.set(Self::EXPIRY_NOTICED, on)
    }
    pub fn plain_seen(self) -> bool {
        self.get(Self::PLAIN_SEEN)
    }
    pub fn set_plain_seen(&mut self, on: bool) {
        self.set(Self::PLAIN_SEEN, on)
    }
}

/// The rarely used part of a connection's state.
#[derive(Default)]
pub struct Extra {
    /// Rooms joined (sharing the room index's keys).
    pub rooms: Vec<Rc<str>>,
    /// Resume point from Auth, kept for inspection.
    pub resume_seq: u64,
    /// Client metadata from Auth (app version, OS, ...), freed on close.
    pub metadata: HashMap<String, String>,
    /// The TLS session, for a connection that opened with a TLS record.
    pub tls: Option<crate::wire::tls::Tls>,
    /// The WebSocket state, for a connection that opened with `GET`.
    pub ws: Option<crate::wire::ws::Ws>,
    /// Pushes waiting for room in the unacked window or the outbound
    /// queue (`push.rs`, `Backlog`); empty and unallocated almost always.
    pub backlog: push::Backlog,
}

impl Conn {
    /// Rooms this connection is in.
    pub fn rooms(&self) -> &[Rc<str>] {
        self.extra.as_ref().map_or(&[], |e| &e.rooms)
    }
    /// The rarely used state, allocated on first use.
    pub fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }
    /// Frees the rarely used state once nothing in it is in use.
    pub fn shrink_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| {
            e.rooms.is_empty()
                && e.resume_seq == 0
                && e.metadata.is_empty()
                && e.tls.is_none()
                && e.ws.is_none()
                && e.backlog.is_empty()
        }) {
            self.extra = None;
        }
    }
}

impl Conn {
    /// This connection's key.
    pub fn key(&self) -> ConnKey {
        ConnKey(self.id)
    }
    pub fn authed(&self) -> bool {
        self.user.is_some()
    }
    /// Pushes wait for room (the backlog is not empty).
    pub fn backlogged(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| !e.backlog.is_empty())
    }
    /// Whether `len` more bytes fit in the outbound queue.
    pub fn out_room(&self, len: usize, max: u32) -> bool {
        (self.out_bytes as usize).saturating_add(len) <= max as usize
    }

    /// Whether the connection speaks TLS.
    pub fn tls_active(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.tls.is_some())
    }
    /// Whether the connection is a WebSocket (upgraded or upgrading).
    pub fn ws_active(&self) -> bool {
        self.ws != WsPhase::None || self.extra.as_ref().is_some_and(|e| e.ws.is_some())
    }
    /// Whether queued frames must be wrapped as WebSocket messages.
    pub fn ws_open(&self) -> bool {
        self.ws != WsPhase::None
    }
    /// Whether a frame queued now reaches the client as a frame: plain TCP
    /// that has sent something (so it is not a TLS or WebSocket client
    /// whose first bytes are still on the way) or an open WebSocket. A TLS
    /// connection before Auth, or a WebSocket before its upgrade, would see
    /// raw protobuf where it expects a handshake.
    pub fn speaks_frames(&self) -> bool {
        self.ws_open() || (self.bytes_in > 0 && !self.tls_active() && !self.ws_active())
    }
    /// Inbound bytes held besides the partial frame: TLS and WebSocket
    /// state (`Tls::buffered`, `Ws::buffered`).
    pub fn layers_buffered(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| {
            e.tls.as_ref().map_or(0, |t| t.buffered()) + e.ws.as_ref().map_or(0, |w| w.buffered())
        })
    }
}
