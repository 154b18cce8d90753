//! The embedded demo backend, used when no NATS URL is configured.
//!
//! Payloads are JSON so that a person can drive it by hand. Routes:
//! - `echo`: replies with the request payload unchanged.
//! - `chat.send` `{"to":"bob","text":"hi"}`: ack-required push `chat.msg`
//!   `{"from":"alice","device":"d1","text":"hi"}` to every device of `to`.
//! - `room.join` / `room.leave` `{"room":"lobby"}`: joins / leaves the room.
//! - `room.send` `{"room":"lobby","text":"hi"}`: push `room.msg`
//!   `{"room":"lobby","from":"alice","text":"hi"}` to every member of the room
//!   (the sender included), fanned out by the gateway, no ack.
//!
//! Replies are `{"ok":true}`; malformed requests get BAD_REQUEST, unknown
//! routes UNKNOWN_ROUTE. Events are logged at debug level.

use std::rc::Rc;

use bytes::Bytes;
use gw_proto::pb::Priority;
use gw_proto::ErrorCode;
use serde::Deserialize;
use serde_json::json;

use super::{
    Backend, BackendFactory, BackendReply, LocalBoxFuture, PushOrder, SessionEvent, SessionOp,
    Target, UpstreamRequest,
};

/// Longest room or user name the demo accepts, bytes.
const NAME_BYTES_MAX: usize = 128;

#[derive(Default)]
pub struct Embedded;

pub struct EmbeddedFactory;

impl BackendFactory for EmbeddedFactory {
    fn for_core(&self, _core: usize) -> Rc<dyn Backend> {
        Rc::new(Embedded)
    }
}

#[derive(Deserialize)]
struct ChatSend {
    to: String,
    #[serde(default)]
    text: serde_json::Value,
}

#[derive(Deserialize)]
struct RoomReq {
    room: String,
    #[serde(default)]
    text: serde_json::Value,
}

fn ok_reply() -> BackendReply {
    BackendReply::ok(Bytes::from_static(b"{\"ok\":true}"))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= NAME_BYTES_MAX
}

fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, BackendReply> {
    serde_json::from_slice(payload)
        .map_err(|e| BackendReply::error(ErrorCode::BadRequest, &format!("bad JSON payload: {e}")))
}

impl Embedded {
    /// The routing logic, synchronous: the demo has no I/O of its own.
    pub fn handle(&self, req: &UpstreamRequest) -> BackendReply {
        match self.route(req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn route(&self, req: &UpstreamRequest) -> Result<BackendReply, BackendReply> {
        match req.route.as_str() {
            "echo" => Ok(BackendReply::ok(req.payload.clone())),
            "chat.send" => {
                let m: ChatSend = parse(&req.payload)?;
                if !valid_name(&m.to) {
                    return Err(BackendReply::error(ErrorCode::BadRequest, "`to` must be 1..=128 bytes"));
                }
                let body = json!({"from": &*req.user, "device": &*req.device, "text": m.text});
                let mut reply = ok_reply();
                reply.pushes.push(PushOrder {
                    target: Target::User(m.to),
                    route: "chat.msg".into(),
                    payload: Bytes::from(body.to_string()),
                    ack_required: true,
                    priority: Priority::Normal,
                });
                Ok(reply)
            }
            "room.join" | "room.leave" => {
                let m: RoomReq = parse(&req.payload)?;
                if !valid_name(&m.room) {
                    return Err(BackendReply::error(ErrorCode::BadRequest, "`room` must be 1..=128 bytes"));
                }
                let mut reply = ok_reply();
                reply.ops.push(if req.route == "room.join" {
                    SessionOp::JoinRoom { conn_id: req.conn_id, room: m.room }
                } else {
                    SessionOp::LeaveRoom { conn_id: req.conn_id, room: m.room }
                });
                Ok(reply)
            }
            "room.send" => {
                let m: RoomReq = parse(&req.payload)?;
                if !valid_name(&m.room) {
                    return Err(BackendReply::error(ErrorCode::BadRequest, "`room` must be 1..=128 bytes"));
                }
                let body = json!({"room": &m.room, "from": &*req.user, "text": m.text});
                let mut reply = ok_reply();
                reply.pushes.push(PushOrder {
                    target: Target::Room(m.room),
                    route: "room.msg".into(),
                    payload: Bytes::from(body.to_string()),
                    ack_required: false,
                    priority: Priority::Normal,
                });
                Ok(reply)
            }
            other => Err(BackendReply::error(
                ErrorCode::UnknownRoute,
                &format!("no route {other:?}; the embedded backend serves echo, chat.send, room.join, room.leave, room.send"),
            )),
        }
    }
}

impl Backend for Embedded {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        let reply = self.handle(&req);
        Box::pin(std::future::ready(reply))
    }

    fn event(&self, ev: SessionEvent) {
        match ev {
            SessionEvent::Online {
                conn_id,
                user,
                device,
                ..
            } => {
                tracing::debug!(conn_id, %user, %device, "online")
            }
            SessionEvent::Offline {
                conn_id,
                user,
                reason,
                ..
            } => {
                tracing::debug!(conn_id, %user, reason = reason.as_str_name(), "offline")
            }
            SessionEvent::Undelivered {
                conn_id,
                user,
                pushes,
                ..
            } => {
                tracing::info!(conn_id, %user, count = pushes.len(), "undelivered pushes (the demo backend keeps no offline store)")
            }
        }
    }
}
