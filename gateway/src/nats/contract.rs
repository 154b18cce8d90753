//! The NATS contract in code: subject names, header names, and conversions
//! between the protobuf messages of `proto/backend.proto` and the backend
//! types the cores execute. PROTOCOL.md ("NATS contract") is the reference.

use std::collections::HashMap;

use bytes::Bytes;
use gw_proto::pb::{self, push_order, session_op, Priority};
use gw_proto::{CloseReason, ROUTE_BYTES_MAX};

use crate::backend::{
    BackendReply, PushOrder, SessionOp, Target, UndeliveredPush, UndeliveredReason,
};

/// Upstream request headers (gateway to backend).
pub const H_NODE: &str = "Gw-Node";
pub const H_CONN: &str = "Gw-Conn";
pub const H_USER: &str = "Gw-User";
pub const H_DEVICE: &str = "Gw-Device";
pub const H_MSG_ID: &str = "Gw-Msg-Id";
/// The room an upstream frame names (`Upstream.room`); absent when none.
pub const H_ROOM: &str = "Gw-Room";
/// On an aggregated upstream request: how many items its UpstreamBatch
/// carries (PROTOCOL.md §14.2.1).
pub const H_BATCH: &str = "Gw-Batch";
/// Push headers on user and room subjects (anyone to gateways).
pub const H_ROUTE: &str = "Gw-Route";
pub const H_ACK: &str = "Gw-Ack";
pub const H_PRIORITY: &str = "Gw-Priority";
/// On a room subject: how the room's pushes are sent on the nodes that
/// hold its members: `hot`, `normal` or `auto` (`SessionOp::RoomMode`).
pub const H_ROOM_MODE: &str = "Gw-Room-Mode";
/// On a user subject: close every connection of the user; value = message.
pub const H_KICK: &str = "Gw-Kick";
/// In a gateway's answer to a push sent as a request: connections that took it.
pub const H_DELIVERED: &str = "Gw-Delivered";

/// Subject names under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
        }
    }
    pub fn up(&self, route: &str) -> String {
        format!("{}.up.{route}", self.prefix)
    }
    pub fn user(&self, user: &str) -> String {
        format!("{}.user.{user}", self.prefix)
    }
    pub fn room(&self, room: &str) -> String {
        format!("{}.room.{room}", self.prefix)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }
    pub fn event(&self, kind: &str) -> String {
        format!("{}.evt.{kind}", self.prefix)
    }
    /// What an inbound subject addresses, if it is one of the gateway's.
    pub fn parse<'a>(&self, subject: &'a str) -> Option<Addressed<'a>> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (kind, name) = rest.split_once('.')?;
        match kind {
            "user" => Some(Addressed::User(name)),
            "room" => Some(Addressed::Room(name)),
            "node" => Some(Addressed::Node(name)),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Addressed<'a> {
    User(&'a str),
    Room(&'a str),
    Node(&'a str),
}

/// Longest user or room name that can be a subject suffix, bytes.
pub const NAME_BYTES_MAX: usize = 256;

/// Whether a user or room name can end a subject: non-empty dot-separated
/// tokens without whitespace, control characters or wildcards.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b > b' ' && b != 0x7f && b != b'*' && b != b'>')
        })
}

/// A push's attributes, from the headers of a message on a user or room subject.
#[derive(Debug)]
pub struct PushHeaders {
    pub route: String,
    pub ack_required: bool,
    pub priority: Priority,
}

/// Why a push's headers were refused (the message says what to send).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("missing the Gw-Route header")]
    MissingRoute,
    #[error("Gw-Route must be 1 to 64 bytes")]
    RouteLength,
    #[error("Gw-Ack {0:?}: use 1 or 0")]
    Ack(String),
    #[error("Gw-Priority {0:?}: use low, normal or high")]
    Priority(String),
    #[error("Gw-Room-Mode {0:?}: use hot, normal or auto")]
    RoomMode(String),
}

/// Whether a push route fits `Gw-Route`: 1 to `ROUTE_BYTES_MAX` bytes.
fn push_route_fits(route: &str) -> bool {
    (1..=ROUTE_BYTES_MAX).contains(&route.len())
}

/// Reads Gw-Route (required), Gw-Ack and Gw-Priority.
pub fn push_headers(headers: &[(String, String)]) -> Result<PushHeaders, HeaderError> {
    let get = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim())
    };
    let route = get(H_ROUTE).ok_or(HeaderError::MissingRoute)?;
    if !push_route_fits(route) {
        return Err(HeaderError::RouteLength);
    }
    let ack_required = match get(H_ACK).unwrap_or("0") {
        "1" | "true" | "yes" => true,
        "0" | "false" | "no" | "" => false,
        other => return Err(HeaderError::Ack(other.to_string())),
    };
    let priority = match get(H_PRIORITY).unwrap_or("normal") {
        "normal" | "" => Priority::Normal,
        "high" => Priority::High,
        "low" => Priority::Low,
        other => return Err(HeaderError::Priority(other.to_string())),
    };
    Ok(PushHeaders {
        route: route.to_string(),
        ack_required,
        priority,
    })
}

/// A header value, case-insensitively.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A numeric header value (Gw-Conn, Gw-Delivered).
pub fn header_value(v: Option<&str>) -> Option<u64> {
    v?.trim().parse().ok()
}

/// Work from a reply or node command that leaves this node over NATS.
#[derive(Debug, Clone)]
pub enum Remote {
    /// Published to `<p>.user.<user>` (as a request when ack-required).
    UserPush { user: String, order: PushOrder },
    /// Published to `<p>.room.<room>`.
    RoomPush { room: String, order: PushOrder },
    /// Published to `<p>.user.<user>` with Gw-Kick.
    KickUser { user: String, message: String },
    /// Published to `<p>.room.<room>` with Gw-Room-Mode.
    RoomMode { room: String, hot: Option<bool> },
    /// Published to `<p>.node.<node>`.
    Node { node: String, cmd: pb::NodeCommand },
}

/// A decoded reply or node command: what this node executes itself, and
/// what goes to other nodes.
#[derive(Debug, Default)]
pub struct Orders {
    pub pushes: Vec<PushOrder>,
    pub ops: Vec<SessionOp>,
    pub remote: Vec<Remote>,
    /// Orders refused (bad names, missing targets), for the log.
    pub refused: Vec<String>,
}

/// Whether a ConnRef names this node.
fn local(conn: &pb::ConnRef, node: &str) -> bool {
    conn.node.is_empty() || conn.node == node
}

/// Splits orders into local and remote work. `fan_out`: user and room
/// targets and user kicks go over NATS (true for backend replies, so they
/// reach every node); false for node commands, which act on this node only.
pub fn split(
    pushes: Vec<pb::PushOrder>,
    ops: Vec<pb::SessionOp>,
    node: &str,
    fan_out: bool,
) -> Orders {
    let mut out = Orders::default();
    for p in pushes {
        let priority = Priority::try_from(p.priority).unwrap_or(Priority::Normal);
        let order = |target| PushOrder {
            target,
            route: p.route.clone(),
            payload: p.payload.clone(),
            ack_required: p.ack_required,
            priority,
        };
        match &p.target {
            None => out
                .refused
                .push(format!("push {:?} without a target", p.route)),
            Some(push_order::Target::User(u)) | Some(push_order::Target::Room(u))
                if !valid_name(u) =>
            {
                out.refused
                    .push(format!("push {:?}: {u:?} cannot be a subject", p.route))
            }
            // Published with Gw-Route, which every gateway checks.
            Some(push_order::Target::User(_)) | Some(push_order::Target::Room(_))
                if fan_out && !push_route_fits(&p.route) =>
            {
                out.refused.push(format!(
                    "push route {:?}: 1 to {ROUTE_BYTES_MAX} bytes",
                    p.route
                ))
            }
            Some(push_order::Target::User(u)) if fan_out => out.remote.push(Remote::UserPush {
                user: u.clone(),
                order: order(Target::User(u.clone())),
            }),
            Some(push_order::Target::Room(r)) if fan_out => out.remote.push(Remote::RoomPush {
                room: r.clone(),
                order: order(Target::Room(r.clone())),
            }),
            Some(push_order::Target::User(u)) => out.pushes.push(order(Target::User(u.clone()))),
            Some(push_order::Target::Room(r)) => out.pushes.push(order(Target::Room(r.clone()))),
            Some(push_order::Target::Conn(c)) if local(c, node) => {
                out.pushes.push(order(Target::Conn(c.conn_id)))
            }
            Some(push_order::Target::Conn(c)) if fan_out => out.remote.push(Remote::Node {
                node: c.node.clone(),
                cmd: pb::NodeCommand {
                    pushes: vec![p.clone()],
                    ops: vec![],
                },
            }),
            Some(push_order::Target::Conn(c)) => out.refused.push(format!(
                "push {:?}: connection of node {:?}; a node command acts on its own node",
                p.route, c.node
            )),
        }
    }
    for op in ops {
        let conn_op = |conn: &Option<pb::ConnRef>,
                       make: &dyn Fn(u64) -> SessionOp,
                       out: &mut Orders,
                       raw: &pb::SessionOp| match conn {
            None => out.refused.push("session op without a connection".into()),
            Some(c) if local(c, node) => out.ops.push(make(c.conn_id)),
            Some(c) if !fan_out => out.refused.push(format!(
                "session op: connection of node {:?}; a node command acts on its own node",
                c.node
            )),
            Some(c) => out.remote.push(Remote::Node {
                node: c.node.clone(),
                cmd: pb::NodeCommand {
                    pushes: vec![],
                    ops: vec![raw.clone()],
                },
            }),
        };
        match &op.op {
            None => out.refused.push("empty session op".into()),
            Some(session_op::Op::JoinRoom(r)) | Some(session_op::Op::LeaveRoom(r))
                if !valid_name(&r.room) =>
            {
                out.refused
                    .push(format!("room {:?} cannot be a subject", r.room))
            }
            Some(session_op::Op::JoinRoom(r)) => {
                let room = r.room.clone();
                conn_op(
                    &r.conn,
                    &|conn_id| SessionOp::JoinRoom {
                        conn_id,
                        room: room.clone(),
                    },
                    &mut out,
                    &op,
                )
            }
            Some(session_op::Op::LeaveRoom(r)) => {
                let room = r.room.clone();
                conn_op(
                    &r.conn,
                    &|conn_id| SessionOp::LeaveRoom {
                        conn_id,
                        room: room.clone(),
                    },
                    &mut out,
                    &op,
                )
            }
            Some(session_op::Op::KickConn(k)) => {
                let message = k.message.clone();
                conn_op(
                    &k.conn,
                    &|conn_id| SessionOp::KickConn {
                        conn_id,
                        message: message.clone(),
                    },
                    &mut out,
                    &op,
                )
            }
            Some(session_op::Op::KickUser(k)) if !valid_name(&k.user) => out
                .refused
                .push(format!("kick: {:?} cannot be a subject", k.user)),
            Some(session_op::Op::KickUser(k)) if fan_out => out.remote.push(Remote::KickUser {
                user: k.user.clone(),
                message: k.message.clone(),
            }),
            Some(session_op::Op::KickUser(k)) => out.ops.push(SessionOp::KickUser {
                user: k.user.clone(),
                message: k.message.clone(),
            }),
            Some(session_op::Op::RoomMode(m)) if !valid_name(&m.room) => out
                .refused
                .push(format!("room mode: {:?} cannot be a subject", m.room)),
            Some(session_op::Op::RoomMode(m)) => {
                let hot = room_mode_hot(m.mode());
                if fan_out {
                    out.remote.push(Remote::RoomMode {
                        room: m.room.clone(),
                        hot,
                    })
                } else {
                    out.ops.push(SessionOp::RoomMode {
                        room: m.room.clone(),
                        hot,
                    })
                }
            }
        }
    }
    out
}

/// A room mode as `SessionOp::RoomMode` holds it.
pub fn room_mode_hot(m: pb::RoomModeKind) -> Option<bool> {
    match m {
        pb::RoomModeKind::RoomModeAuto => None,
        pb::RoomModeKind::RoomModeHot => Some(true),
        pb::RoomModeKind::RoomModeNormal => Some(false),
    }
}

/// The value of a Gw-Room-Mode header.
pub fn room_mode_header(hot: Option<bool>) -> &'static str {
    match hot {
        None => "auto",
        Some(true) => "hot",
        Some(false) => "normal",
    }
}

/// A Gw-Room-Mode header's value, or None when it is not one.
pub fn parse_room_mode(v: &str) -> Option<Option<bool>> {
    match v {
        "auto" => Some(None),
        "hot" => Some(Some(true)),
        "normal" => Some(Some(false)),
        _ => None,
    }
}

/// The local part of a backend reply, ready for the core.
pub fn local_reply(r: &pb::BackendReply, orders: &mut Orders) -> BackendReply {
    BackendReply {
        status: r.status,
        payload: r.payload.clone(),
        retry_after_ms: r.retry_after_ms,
        pushes: std::mem::take(&mut orders.pushes),
        ops: std::mem::take(&mut orders.ops),
    }
}

fn conn_ref(conn_id: u64) -> Option<pb::ConnRef> {
    Some(pb::ConnRef {
        node: String::new(),
        conn_id,
    })
}

/// Encodes a push order (connection targets relative to the requesting node).
pub fn encode_push(p: &PushOrder) -> pb::PushOrder {
    pb::PushOrder {
        target: Some(match &p.target {
            Target::User(u) => push_order::Target::User(u.clone()),
            Target::Room(r) => push_order::Target::Room(r.clone()),
            Target::Conn(c) => push_order::Target::Conn(pb::ConnRef {
                node: String::new(),
                conn_id: *c,
            }),
        }),
        route: p.route.clone(),
        payload: p.payload.clone(),
        ack_required: p.ack_required,
        priority: p.priority as i32,
    }
}

/// Encodes a session operation (connections on the requesting node).
pub fn encode_op(op: &SessionOp) -> pb::SessionOp {
    let op = match op {
        SessionOp::JoinRoom { conn_id, room } => session_op::Op::JoinRoom(pb::RoomOp {
            conn: conn_ref(*conn_id),
            room: room.clone(),
        }),
        SessionOp::LeaveRoom { conn_id, room } => session_op::Op::LeaveRoom(pb::RoomOp {
            conn: conn_ref(*conn_id),
            room: room.clone(),
        }),
        SessionOp::KickUser { user, message } => session_op::Op::KickUser(pb::KickUser {
            user: user.clone(),
            message: message.clone(),
        }),
        SessionOp::KickConn { conn_id, message } => session_op::Op::KickConn(pb::KickConn {
            conn: conn_ref(*conn_id),
            message: message.clone(),
        }),
        SessionOp::RoomMode { room, hot } => session_op::Op::RoomMode(pb::RoomMode {
            room: room.clone(),
            mode: match hot {
                None => pb::RoomModeKind::RoomModeAuto,
                Some(true) => pb::RoomModeKind::RoomModeHot,
                Some(false) => pb::RoomModeKind::RoomModeNormal,
            } as i32,
        }),
    };
    pb::SessionOp { op: Some(op) }
}

/// Encodes a backend reply as a backend written in Rust would send it.
pub fn encode_reply(r: &BackendReply) -> pb::BackendReply {
    pb::BackendReply {
        status: r.status,
        payload: r.payload.clone(),
        retry_after_ms: r.retry_after_ms,
        pushes: r.pushes.iter().map(encode_push).collect(),
        ops: r.ops.iter().map(encode_op).collect(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn online_event(
    node: &str,
    conn_id: u64,
    user: &str,
    device: &str,
    resume_seq: u64,
    metadata: HashMap<String, String>,
) -> pb::OnlineEvent {
    pb::OnlineEvent {
        node: node.to_string(),
        conn_id,
        user: user.to_string(),
        device: device.to_string(),
        resume_seq,
        metadata,
        at_unix_ms: unix_ms(),
        resync: false,
    }
}

pub fn offline_event(
    node: &str,
    conn_id: u64,
    user: &str,
    device: &str,
    reason: CloseReason,
) -> pb::OfflineEvent {
    pb::OfflineEvent {
        node: node.to_string(),
        conn_id,
        user: user.to_string(),
        device: device.to_string(),
        reason: reason as i32,
        at_unix_ms: unix_ms(),
    }
}

/// One undelivered push on the wire.
pub fn undelivered_push(p: &UndeliveredPush) -> pb::UndeliveredPush {
    use pb::UndeliveredReason as R;
    let (reason, close) = match p.reason {
        UndeliveredReason::RetriesExhausted => (R::RetriesExhausted, CloseReason::Unspecified),
        UndeliveredReason::ConnectionClosed(c) => (R::ConnectionClosed, c),
        UndeliveredReason::NoConnection => (R::NoConnection, CloseReason::Unspecified),
        UndeliveredReason::TooLarge => (R::TooLarge, CloseReason::Unspecified),
        UndeliveredReason::Unconfirmed => (R::Unconfirmed, CloseReason::Unspecified),
        UndeliveredReason::NatsUnavailable => (R::NatsUnavailable, CloseReason::Unspecified),
        UndeliveredReason::RateLimited => (R::RateLimited, CloseReason::Unspecified),
    };
    pb::UndeliveredPush {
        seq: p.seq,
        route: p.route.clone(),
        payload: p.payload.clone(),
        reason: reason as i32,
        close_reason: close as i32,
    }
}

/// The event for a push that never reached a connection.
pub fn unplaced_event(
    node: &str,
    target: &Target,
    order: &PushOrder,
    reason: UndeliveredReason,
) -> pb::UndeliveredEvent {
    let (user, room, conn_id) = match target {
        Target::User(u) => (u.clone(), String::new(), 0),
        Target::Room(r) => (String::new(), r.clone(), 0),
        Target::Conn(c) => (String::new(), String::new(), *c),
    };
    pb::UndeliveredEvent {
        node: node.to_string(),
        conn_id,
        user,
        device: String::new(),
        pushes: vec![undelivered_push(&UndeliveredPush {
            seq: 0,
            route: order.route.clone(),
            payload: order.payload.clone(),
            reason,
        })],
        at_unix_ms: unix_ms(),
        room,
    }
}

/// Encodes a protobuf message to bytes.
pub fn to_bytes(m: &impl prost::Message) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

#[cfg(test)]
mod tests;
