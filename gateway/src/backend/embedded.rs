//! The embedded demo backend, used when no NATS URL is configured.
//!
//! Payloads are JSON so that a person can drive it by hand. Routes:
//! - `echo`: replies with the request payload unchanged.
//! - `chat.send` `{"to":"bob","text":"hi"}`: ack-required push `chat.msg`
//!   `{"from":"alice","device":"d1","to":"bob","text":"hi"}` to every device
//!   of `to`.
//! - `room.join` / `room.leave` `{"room":"lobby"}`: joins / leaves the room.
//! - `room.send` `{"room":"lobby","text":"hi"}`: push `room.msg`
//!   `{"room":"lobby","from":"alice","text":"hi"}` to every member of the room
//!   (the sender included), fanned out by the gateway, no ack.
//!
//! Replies are `{"ok":true}`; malformed requests get BAD_REQUEST, unknown
//! routes UNKNOWN_ROUTE. Events are logged at debug level.
//!
//! Two layers:
//! - [`Embedded`] is the routing alone, a function of the request without
//!   state (test harnesses wrap it and keep its plain behaviour).
//! - [`Demo`] is what `gateway --demo` runs ([`EmbeddedFactory`]): the same
//!   routes plus what a chat page needs, from the session events it is told:
//!   - `chat.send` to a user with no connection on this gateway answers
//!     BAD_REQUEST "`<to>` is not online" and pushes nothing;
//!   - `room.send` from a connection that has not joined the room answers
//!     BAD_REQUEST and pushes nothing;
//!   - the sender's *other* connections get a copy of a direct message
//!     (`chat.msg`, same payload, not ack-required), so every device of the
//!     sender shows the conversation; the sending connection shows it when
//!     the OK reply arrives (a message to oneself is the push itself).
//!
//!   What it knows is bounded ([`USERS_TRACKED_MAX`] users,
//!   [`CONNS_WITH_ROOMS_MAX`] connections with rooms per core): past a bound
//!   it cannot tell, and answers as [`Embedded`] does.
//!
//! The reference NATS backend (`chat-backend`) serves the same routes with
//! the same answers from these pieces ([`parse_request`], [`Directory`],
//! [`Memberships`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

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
pub const NAME_BYTES_MAX: usize = 128;
/// Users whose connections [`Demo`] tracks (the whole gateway). Past it,
/// `chat.send` to an untracked user is answered as if the user were online.
pub const USERS_TRACKED_MAX: usize = 1024;
/// Connections of one user that get copies of the user's direct messages.
pub const CONNS_PER_USER_TRACKED_MAX: usize = 16;
/// Connections whose rooms [`Demo`] tracks, per core. Past it, `room.send`
/// from an untracked connection is not checked.
pub const CONNS_WITH_ROOMS_MAX: usize = 1024;
/// Rooms tracked per connection (the default `rooms_per_conn_max`).
pub const ROOMS_PER_CONN_TRACKED_MAX: usize = 64;

/// The stateless demo routes.
#[derive(Default)]
pub struct Embedded;

/// Makes the [`Demo`] backend of each core for `gateway --demo`. Its
/// directory of online users is one per process, shared by the cores (the
/// binary runs one gateway); [`DemoFactory`] has its own.
pub struct EmbeddedFactory;

impl BackendFactory for EmbeddedFactory {
    fn for_core(&self, _core: usize) -> Rc<dyn Backend> {
        static USERS: OnceLock<Arc<Presence>> = OnceLock::new();
        Rc::new(Demo::new(USERS.get_or_init(Default::default).clone()))
    }
}

/// Makes [`Demo`] backends sharing one directory of online users: one
/// factory per gateway (several gateways in one process, as in tests).
#[derive(Default, Clone)]
pub struct DemoFactory {
    users: Arc<Presence>,
}

impl BackendFactory for DemoFactory {
    fn for_core(&self, _core: usize) -> Rc<dyn Backend> {
        Rc::new(Demo::new(self.users.clone()))
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

fn name_error(field: &str) -> BackendReply {
    BackendReply::error(
        ErrorCode::BadRequest,
        &format!("`{field}` must be 1 to {NAME_BYTES_MAX} bytes"),
    )
}

/// One demo request, validated.
#[derive(Debug, Clone)]
pub enum DemoRequest {
    Echo(Bytes),
    /// `chat.send`: `push` goes to every connection of `to`.
    Chat {
        to: String,
        push: PushOrder,
    },
    Join(String),
    Leave(String),
    /// `room.send`: `push` goes to every member of `room`.
    RoomSend {
        room: String,
        push: PushOrder,
    },
}

/// Validates a request for the demo routes; the error is the reply.
pub fn parse_request(req: &UpstreamRequest) -> Result<DemoRequest, BackendReply> {
    match req.route.as_str() {
        "echo" => Ok(DemoRequest::Echo(req.payload.clone())),
        "chat.send" => {
            let m: ChatSend = parse(&req.payload)?;
            if !valid_name(&m.to) {
                return Err(name_error("to"));
            }
            let body =
                json!({"from": &*req.user, "device": &*req.device, "to": &m.to, "text": m.text});
            let push = PushOrder {
                target: Target::User(m.to.clone()),
                route: "chat.msg".into(),
                payload: Bytes::from(body.to_string()),
                ack_required: true,
                priority: Priority::Normal,
            };
            Ok(DemoRequest::Chat { to: m.to, push })
        }
        "room.join" | "room.leave" => {
            let m: RoomReq = parse(&req.payload)?;
            if !valid_name(&m.room) {
                return Err(name_error("room"));
            }
            Ok(if req.route == "room.join" {
                DemoRequest::Join(m.room)
            } else {
                DemoRequest::Leave(m.room)
            })
        }
        "room.send" => {
            let m: RoomReq = parse(&req.payload)?;
            if !valid_name(&m.room) {
                return Err(name_error("room"));
            }
            let body = json!({"room": &m.room, "from": &*req.user, "text": m.text});
            let push = PushOrder {
                target: Target::Room(m.room.clone()),
                route: "room.msg".into(),
                payload: Bytes::from(body.to_string()),
                ack_required: false,
                priority: Priority::Normal,
            };
            Ok(DemoRequest::RoomSend { room: m.room, push })
        }
        other => Err(BackendReply::error(
            ErrorCode::UnknownRoute,
            &format!("no route {other:?}; the demo backend serves echo, chat.send, room.join, room.leave, room.send"),
        )),
    }
}

/// The reply to a valid request, without any check: the push or the
/// session operation it asks for.
pub fn plain_reply(req: &UpstreamRequest, r: DemoRequest) -> BackendReply {
    let mut reply = ok_reply();
    match r {
        DemoRequest::Echo(payload) => return BackendReply::ok(payload),
        DemoRequest::Chat { push, .. } | DemoRequest::RoomSend { push, .. } => {
            reply.pushes.push(push)
        }
        DemoRequest::Join(room) => reply.ops.push(SessionOp::JoinRoom {
            conn_id: req.conn_id,
            room,
        }),
        DemoRequest::Leave(room) => reply.ops.push(SessionOp::LeaveRoom {
            conn_id: req.conn_id,
            room,
        }),
    }
    reply
}

/// The answer to a direct message for a user with no connection.
pub fn not_online(to: &str) -> BackendReply {
    BackendReply::error(
        ErrorCode::BadRequest,
        &format!("{to} is not online; the message was not delivered"),
    )
}

/// The answer to a room message from a connection outside the room.
pub fn not_in_room(room: &str) -> BackendReply {
    BackendReply::error(
        ErrorCode::BadRequest,
        &format!("you have not joined {room}; join it first"),
    )
}

/// The copy of a direct message for one of the sender's other connections:
/// the same payload, not ack-required (the recipient's copy is the one
/// whose loss is reported).
pub fn sender_copy(push: &PushOrder, target: Target) -> PushOrder {
    PushOrder {
        target,
        ack_required: false,
        ..push.clone()
    }
}

impl Embedded {
    /// The routing logic, synchronous: the demo has no I/O of its own.
    pub fn handle(&self, req: &UpstreamRequest) -> BackendReply {
        match parse_request(req) {
            Ok(r) => plain_reply(req, r),
            Err(e) => e,
        }
    }
}

impl Backend for Embedded {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        let reply = self.handle(&req);
        Box::pin(std::future::ready(reply))
    }

    fn event(&self, ev: SessionEvent) {
        log_event(&ev);
    }
}

fn log_event(ev: &SessionEvent) {
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

/// Who is online: users and the ids of their connections, bounded. A user
/// is tracked whole or not at all, so "not tracked" is known to mean "no
/// connection" only while no session is untracked.
#[derive(Debug)]
pub struct Directory<C> {
    users: HashMap<Box<str>, Sessions<C>>,
    /// Sessions of users that are not tracked (the directory was full).
    untracked: u64,
    users_max: usize,
}

#[derive(Debug)]
struct Sessions<C> {
    conns: Vec<C>,
    /// Sessions past [`CONNS_PER_USER_TRACKED_MAX`] (counted, no id).
    more: u64,
}

impl<C: PartialEq + Clone> Directory<C> {
    pub fn new(users_max: usize) -> Self {
        Directory {
            users: HashMap::new(),
            untracked: 0,
            users_max,
        }
    }

    /// A session of `user` came online. Names longer than
    /// [`NAME_BYTES_MAX`] are not kept: nobody can address them.
    pub fn online(&mut self, user: &str, conn: C) {
        if user.len() > NAME_BYTES_MAX {
            return;
        }
        if let Some(s) = self.users.get_mut(user) {
            if s.conns.contains(&conn) {
                return; // told twice (a resync)
            }
            if s.conns.len() < CONNS_PER_USER_TRACKED_MAX {
                s.conns.push(conn);
            } else {
                s.more += 1;
            }
        } else if self.untracked == 0 && self.users.len() < self.users_max {
            let s = Sessions {
                conns: vec![conn],
                more: 0,
            };
            self.users.insert(user.into(), s);
        } else {
            self.untracked += 1;
        }
    }

    /// A session of `user` went offline.
    pub fn offline(&mut self, user: &str, conn: &C) {
        if user.len() > NAME_BYTES_MAX {
            return;
        }
        let Some(s) = self.users.get_mut(user) else {
            self.untracked = self.untracked.saturating_sub(1);
            return;
        };
        match s.conns.iter().position(|c| c == conn) {
            Some(i) => {
                s.conns.swap_remove(i);
            }
            None => s.more = s.more.saturating_sub(1),
        }
        if s.conns.is_empty() && s.more == 0 {
            self.users.remove(user);
        }
    }

    /// Some(true) when `user` has a connection, Some(false) when it surely
    /// has none, None when the directory cannot tell.
    pub fn is_online(&self, user: &str) -> Option<bool> {
        if self.users.contains_key(user) {
            Some(true)
        } else if self.untracked > 0 {
            None
        } else {
            Some(false)
        }
    }

    /// The tracked connections of `user` other than `conn`.
    pub fn others(&self, user: &str, conn: &C) -> Vec<C> {
        self.users.get(user).map_or_else(Vec::new, |s| {
            s.conns.iter().filter(|c| *c != conn).cloned().collect()
        })
    }
}

/// The gateway's online users for [`Demo`], shared by the cores.
#[derive(Debug)]
pub struct Presence(Mutex<Directory<u64>>);

impl Default for Presence {
    fn default() -> Self {
        Presence(Mutex::new(Directory::new(USERS_TRACKED_MAX)))
    }
}

impl Presence {
    /// The directory; a panic elsewhere while it was held leaves it usable.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Directory<u64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which rooms connections joined, bounded.
///
/// `sees_every_join`: the owner is told every join of every connection
/// (the embedded backend of a core), so a connection without an entry is
/// in no room. Otherwise (a NATS backend that may have started after the
/// connection) only a connection whose login it saw ([`Memberships::online`])
/// is known, and anything else is "cannot tell".
#[derive(Debug)]
pub struct Memberships<K> {
    conns: HashMap<K, Joined>,
    conns_max: usize,
    sees_every_join: bool,
    /// A join could not be tracked: connections without an entry are no
    /// longer known to be in no room.
    overflowed: bool,
}

#[derive(Debug)]
struct Joined {
    rooms: Vec<Box<str>>,
    /// Every room of the connection is in `rooms`.
    complete: bool,
}

impl<K: Hash + Eq> Memberships<K> {
    pub fn new(conns_max: usize, sees_every_join: bool) -> Self {
        Memberships {
            conns: HashMap::new(),
            conns_max,
            sees_every_join,
            overflowed: false,
        }
    }

    /// The connection logged in (seen from its start: its joins are known).
    pub fn online(&mut self, conn: K) {
        if let Some(j) = self.conns.get_mut(&conn) {
            j.complete = true;
        } else if self.conns.len() < self.conns_max {
            let j = Joined {
                rooms: Vec::new(),
                complete: true,
            };
            self.conns.insert(conn, j);
        }
    }

    pub fn join(&mut self, conn: K, room: &str) {
        if let Some(j) = self.conns.get_mut(&conn) {
            if j.rooms.iter().any(|r| &**r == room) {
                return;
            }
            if j.rooms.len() < ROOMS_PER_CONN_TRACKED_MAX {
                j.rooms.push(room.into());
            } else {
                j.complete = false;
            }
        } else if !self.sees_every_join {
            // A connection whose login was not seen: nothing to learn.
        } else if self.conns.len() < self.conns_max {
            let j = Joined {
                rooms: vec![room.into()],
                complete: true,
            };
            self.conns.insert(conn, j);
        } else {
            self.overflowed = true;
        }
    }

    pub fn leave(&mut self, conn: &K, room: &str) {
        let Some(j) = self.conns.get_mut(conn) else {
            return;
        };
        if let Some(i) = j.rooms.iter().position(|r| &**r == room) {
            j.rooms.swap_remove(i);
        }
        if j.rooms.is_empty() && j.complete && self.sees_every_join {
            self.conns.remove(conn);
        }
    }

    pub fn offline(&mut self, conn: &K) {
        self.conns.remove(conn);
    }

    /// Some(true) when the connection is in the room, Some(false) when it
    /// surely is not, None when it cannot be told.
    pub fn member(&self, conn: &K, room: &str) -> Option<bool> {
        match self.conns.get(conn) {
            Some(j) if j.rooms.iter().any(|r| &**r == room) => Some(true),
            Some(j) => j.complete.then_some(false),
            None => (self.sees_every_join && !self.overflowed).then_some(false),
        }
    }
}

/// The backend `gateway --demo` runs on each core: [`Embedded`]'s routes,
/// checked against who is online and who joined what (module docs).
pub struct Demo {
    users: Arc<Presence>,
    /// This core's connections: every request and event of a connection
    /// comes to its own core's backend.
    rooms: RefCell<Memberships<u64>>,
}

impl Demo {
    pub fn new(users: Arc<Presence>) -> Demo {
        Demo {
            users,
            rooms: RefCell::new(Memberships::new(CONNS_WITH_ROOMS_MAX, true)),
        }
    }

    pub fn handle(&self, req: &UpstreamRequest) -> BackendReply {
        let r = match parse_request(req) {
            Ok(r) => r,
            Err(e) => return e,
        };
        match &r {
            DemoRequest::Chat { to, push } => {
                let (online, others) = {
                    let users = self.users.lock();
                    (users.is_online(to), users.others(&req.user, &req.conn_id))
                };
                if online == Some(false) {
                    return not_online(to);
                }
                let copies: Vec<PushOrder> = if **to == *req.user {
                    Vec::new() // the push itself reaches every connection of the sender
                } else {
                    others
                        .into_iter()
                        .map(|c| sender_copy(push, Target::Conn(c)))
                        .collect()
                };
                let mut reply = plain_reply(req, r);
                reply.pushes.extend(copies);
                return reply;
            }
            DemoRequest::Join(room) => self.rooms.borrow_mut().join(req.conn_id, room),
            DemoRequest::Leave(room) => self.rooms.borrow_mut().leave(&req.conn_id, room),
            DemoRequest::RoomSend { room, .. } => {
                if self.rooms.borrow().member(&req.conn_id, room) == Some(false) {
                    return not_in_room(room);
                }
            }
            DemoRequest::Echo(_) => {}
        }
        plain_reply(req, r)
    }
}

impl Backend for Demo {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        let reply = self.handle(&req);
        Box::pin(std::future::ready(reply))
    }

    fn event(&self, ev: SessionEvent) {
        match &ev {
            SessionEvent::Online {
                conn_id,
                user,
                resync: false,
                ..
            } => self.users.lock().online(user, *conn_id),
            SessionEvent::Offline { conn_id, user, .. } => {
                self.users.lock().offline(user, conn_id);
                self.rooms.borrow_mut().offline(conn_id);
            }
            _ => {}
        }
        log_event(&ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;

    fn req(conn_id: u64, user: &str, route: &str, payload: &str) -> UpstreamRequest {
        UpstreamRequest {
            conn_id,
            user: Rc::from(user),
            device: Rc::from("d"),
            route: route.into(),
            client_msg_id: String::new(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            room: String::new(),
        }
    }

    fn online(d: &Demo, conn_id: u64, user: &str) {
        d.event(SessionEvent::Online {
            conn_id,
            user: Rc::from(user),
            device: Rc::from("d"),
            resume_seq: 0,
            metadata: Map::new(),
            resync: false,
        });
    }

    fn offline(d: &Demo, conn_id: u64, user: &str) {
        d.event(SessionEvent::Offline {
            conn_id,
            user: Rc::from(user),
            device: Rc::from("d"),
            reason: gw_proto::CloseReason::ClientClosed,
        });
    }

    fn text(r: &BackendReply) -> String {
        String::from_utf8_lossy(&r.payload).into_owned()
    }

    #[test]
    fn the_stateless_routes_answer_as_before() {
        let r = Embedded.handle(&req(
            1,
            "alice",
            "chat.send",
            r#"{"to":"ghost","text":"hi"}"#,
        ));
        assert_eq!((r.status, r.pushes.len()), (0, 1));
        let body: serde_json::Value = serde_json::from_slice(&r.pushes[0].payload).unwrap();
        assert_eq!(
            body,
            json!({"from":"alice","device":"d","to":"ghost","text":"hi"})
        );
        let r = Embedded.handle(&req(1, "alice", "room.send", r#"{"room":"r","text":"x"}"#));
        assert_eq!((r.status, r.pushes.len()), (0, 1));
        let long = format!(r#"{{"to":"{}"}}"#, "a".repeat(NAME_BYTES_MAX + 1));
        let r = Embedded.handle(&req(1, "alice", "chat.send", &long));
        assert_eq!(r.status, ErrorCode::BadRequest as u32);
        assert_eq!(text(&r), "`to` must be 1 to 128 bytes");
        assert!(!text(&r).contains("..="));
        let r = Embedded.handle(&req(1, "alice", "nope", ""));
        assert_eq!(r.status, ErrorCode::UnknownRoute as u32);
    }

    #[test]
    fn direct_messages_need_an_online_user_and_reach_the_senders_other_devices() {
        let d = Demo::new(Arc::default());
        online(&d, 1, "alice");
        online(&d, 2, "alice");
        let send = |to: &str| {
            d.handle(&req(
                1,
                "alice",
                "chat.send",
                &format!(r#"{{"to":"{to}","text":"hi"}}"#),
            ))
        };
        let r = send("bob");
        assert_eq!(r.status, ErrorCode::BadRequest as u32);
        assert_eq!(text(&r), "bob is not online; the message was not delivered");
        assert!(r.pushes.is_empty());

        online(&d, 3, "bob");
        let r = send("bob");
        assert_eq!(r.status, 0);
        let targets: Vec<(Target, bool)> = r
            .pushes
            .iter()
            .map(|p| (p.target.clone(), p.ack_required))
            .collect();
        assert_eq!(
            targets,
            vec![(Target::User("bob".into()), true), (Target::Conn(2), false)]
        );
        assert_eq!(r.pushes[0].payload, r.pushes[1].payload);
        // To oneself: the push reaches every device already.
        let r = send("alice");
        assert_eq!(r.pushes.len(), 1);

        offline(&d, 3, "bob");
        assert_eq!(send("bob").status, ErrorCode::BadRequest as u32);
    }

    #[test]
    fn room_messages_need_a_join() {
        let d = Demo::new(Arc::default());
        online(&d, 1, "alice");
        let call = |route: &str| d.handle(&req(1, "alice", route, r#"{"room":"lobby"}"#));
        let r = call("room.send");
        assert_eq!(r.status, ErrorCode::BadRequest as u32);
        assert_eq!(text(&r), "you have not joined lobby; join it first");
        assert_eq!(call("room.join").status, 0);
        assert_eq!(call("room.send").status, 0);
        assert_eq!(call("room.leave").status, 0);
        assert_eq!(call("room.send").status, ErrorCode::BadRequest as u32);
        assert_eq!(call("room.join").status, 0);
        offline(&d, 1, "alice");
        assert_eq!(call("room.send").status, ErrorCode::BadRequest as u32);
    }

    #[test]
    fn the_directory_is_bounded_and_says_when_it_cannot_tell() {
        let mut dir: Directory<u64> = Directory::new(2);
        dir.online("a", 1);
        dir.online("b", 2);
        assert_eq!(dir.is_online("c"), Some(false));
        dir.online("c", 3); // full: untracked
        assert_eq!(dir.is_online("c"), None);
        assert_eq!(dir.is_online("zed"), None);
        dir.offline("a", &1);
        // Room again, but c is still untracked: new users stay untracked.
        dir.online("d", 4);
        assert_eq!(dir.is_online("d"), None);
        dir.offline("c", &3);
        dir.offline("d", &4);
        assert_eq!(dir.is_online("zed"), Some(false));
        assert_eq!(dir.is_online("b"), Some(true));
        // Sessions past the per-user bound are counted.
        for c in 0..CONNS_PER_USER_TRACKED_MAX as u64 + 3 {
            dir.online("e", 100 + c);
        }
        assert_eq!(dir.others("e", &100).len(), CONNS_PER_USER_TRACKED_MAX - 1);
        for c in 0..CONNS_PER_USER_TRACKED_MAX as u64 + 2 {
            dir.offline("e", &(100 + c));
        }
        assert_eq!(dir.is_online("e"), Some(true));
        dir.offline("e", &(100 + CONNS_PER_USER_TRACKED_MAX as u64 + 2));
        assert_eq!(dir.is_online("e"), Some(false));
        // Names nobody can address are not kept, and take no room.
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        dir.online(&long, 7);
        assert_eq!(dir.is_online("zed"), Some(false));
        dir.offline(&long, &7);
        assert_eq!(dir.is_online("b"), Some(true));
    }

    #[test]
    fn memberships_are_bounded_and_say_when_they_cannot_tell() {
        let mut m: Memberships<u64> = Memberships::new(1, true);
        m.join(1, "r");
        assert_eq!(m.member(&1, "r"), Some(true));
        assert_eq!(m.member(&2, "r"), Some(false));
        m.join(2, "r"); // full
        assert_eq!(m.member(&2, "r"), None);
        assert_eq!(m.member(&3, "r"), None);

        // Seen only from its login on: unknown connections cannot be told.
        let mut m: Memberships<u64> = Memberships::new(10, false);
        m.join(1, "r");
        assert_eq!(m.member(&1, "r"), None);
        m.online(2);
        assert_eq!(m.member(&2, "r"), Some(false));
        m.join(2, "r");
        assert_eq!(m.member(&2, "r"), Some(true));
        m.leave(&2, "r");
        assert_eq!(m.member(&2, "r"), Some(false));
        for i in 0..ROOMS_PER_CONN_TRACKED_MAX + 1 {
            m.join(2, &format!("r{i}"));
        }
        assert_eq!(m.member(&2, "other"), None);
        m.offline(&2);
        assert_eq!(m.member(&2, "r0"), None);
    }
}
