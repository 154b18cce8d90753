//! The seam between the gateway core and business logic.
//!
//! The core calls a [`Backend`] for every upstream frame and reports session
//! events to it. A backend answers with a reply for the sender, push orders
//! (to users, rooms, connections) and session operations (join/leave a room,
//! kick). The core executes those; the backend never touches connections.
//!
//! Each core owns its own backend instance (made by a [`BackendFactory`]), so
//! nothing here needs locks. The embedded demo backend lives in [`embedded`];
//! the NATS bridge (`crate::nats`) is the other implementation.

pub mod embedded;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use gw_proto::{CloseReason, ErrorCode};

pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// An upstream frame from an authenticated client.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub conn_id: u64,
    pub user: Rc<str>,
    pub device: Rc<str>,
    pub route: String,
    pub client_msg_id: String,
    pub payload: Bytes,
    /// The room the request is about (`Upstream.room`), or empty.
    pub room: String,
}

/// Who a push goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of a user, on every core.
    User(String),
    /// Every local member of a room, on every core.
    Room(String),
    /// One connection (gateway-wide id).
    Conn(u64),
}

/// A push a backend wants delivered.
#[derive(Debug, Clone)]
pub struct PushOrder {
    pub target: Target,
    pub route: String,
    pub payload: Bytes,
    pub ack_required: bool,
    pub priority: gw_proto::pb::Priority,
}

/// A change to sessions a backend wants made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOp {
    JoinRoom {
        conn_id: u64,
        room: String,
    },
    LeaveRoom {
        conn_id: u64,
        room: String,
    },
    /// Close every connection of a user (GoAway with reason KICKED).
    KickUser {
        user: String,
        message: String,
    },
    /// Close one connection.
    KickConn {
        conn_id: u64,
        message: String,
    },
    /// How a room's pushes are sent on every core (`core/rooms.rs`):
    /// always coalesced (`Some(true)`), never (`Some(false)`), or by
    /// `rooms.hot` and the rate (`None`).
    RoomMode {
        room: String,
        hot: Option<bool>,
    },
}

/// A backend's answer to one upstream frame.
#[derive(Debug, Clone, Default)]
pub struct BackendReply {
    /// 0 = OK; an `ErrorCode` value, or a backend status >= 1000.
    pub status: u32,
    pub payload: Bytes,
    /// For retryable statuses: how long the client should wait, ms.
    pub retry_after_ms: u32,
    pub pushes: Vec<PushOrder>,
    pub ops: Vec<SessionOp>,
}

impl BackendReply {
    pub fn ok(payload: Bytes) -> Self {
        BackendReply {
            payload,
            ..Default::default()
        }
    }
    pub fn error(code: ErrorCode, message: &str) -> Self {
        BackendReply {
            status: code as u32,
            payload: Bytes::copy_from_slice(message.as_bytes()),
            ..Default::default()
        }
    }
    /// A retryable error: the client should try again after `retry_after_ms`.
    pub fn retry(code: ErrorCode, message: &str, retry_after_ms: u32) -> Self {
        BackendReply {
            retry_after_ms,
            ..Self::error(code, message)
        }
    }
}

/// A push that was accepted but not acknowledged by the client.
#[derive(Debug, Clone, PartialEq)]
pub struct UndeliveredPush {
    pub seq: u64,
    pub route: String,
    pub payload: Bytes,
    /// Why: retries ran out, or the connection closed with this reason.
    pub reason: UndeliveredReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndeliveredReason {
    RetriesExhausted,
    ConnectionClosed(CloseReason),
    /// The connection was gone (or never existed) when the push arrived.
    NoConnection,
    /// The push would not fit in `frame_bytes_max`.
    TooLarge,
    /// A user push that no gateway confirmed in time (it may have arrived).
    Unconfirmed,
    /// NATS was unreachable when the push was to be published.
    NatsUnavailable,
    /// A room push over `room_broadcast_rate_per_s` on the member's core.
    RateLimited,
}

/// A user or room whose first local member arrived or last one left; the
/// NATS backend follows these with subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest<'a> {
    User(&'a str),
    Room(&'a str),
}

/// Session events the core reports.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    Online {
        conn_id: u64,
        user: Rc<str>,
        device: Rc<str>,
        resume_seq: u64,
        metadata: HashMap<String, String>,
        /// Sent again for a session already online: the node's
        /// subscriptions were restored after a loss (PROTOCOL.md §14.5).
        resync: bool,
    },
    Offline {
        conn_id: u64,
        user: Rc<str>,
        device: Rc<str>,
        reason: CloseReason,
    },
    Undelivered {
        conn_id: u64,
        user: Rc<str>,
        device: Rc<str>,
        /// The room, for a room push that reached no connection.
        room: Option<Rc<str>>,
        pushes: Vec<UndeliveredPush>,
    },
}

/// Business logic behind the gateway, one instance per core.
pub trait Backend {
    /// Handles one upstream frame. The core bounds how many are in flight and
    /// how long each may take (`upstream_timeout_ms`).
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply>;
    /// Handles upstream frames of one route naming one room, gathered on
    /// this core over one window (`rooms.aggregate_routes`): one answer per
    /// item, in their order. By default each is handled alone; the NATS
    /// backend sends them as one request (PROTOCOL.md §14.2.1).
    fn upstream_batch(&self, items: Vec<UpstreamRequest>) -> Vec<LocalBoxFuture<BackendReply>> {
        items.into_iter().map(|r| self.upstream(r)).collect()
    }
    /// Reports a session event; must not block.
    fn event(&self, ev: SessionEvent);
    /// This core gained (`on`) its first or lost its last member of a user
    /// or room. Must not block. Returns a ticket when the new interest is
    /// not in place yet (NATS: the subscription is not confirmed): the
    /// core waits for [`Core::confirmed`](crate::core::Core::confirmed) to
    /// reach it before it tells the client (AuthOk, a join's reply). The
    /// embedded backend ignores interest and returns None.
    fn interest(&self, _what: Interest<'_>, _on: bool) -> Option<u64> {
        None
    }
    /// The ticket to wait for before an existing interest is in place (a
    /// second session of a user whose subscription is not confirmed yet, or
    /// any while the subscriptions are being restored); None when in place.
    fn ticket(&self, _what: Interest<'_>) -> Option<u64> {
        None
    }
}

/// Makes the backend of each core; shared by the cores' threads.
pub trait BackendFactory: Send + Sync {
    fn for_core(&self, core: usize) -> Rc<dyn Backend>;
}
