//! Pushes and session operations: executed locally when the target lives on
//! this core, sent through the target core's inbox otherwise. Users and
//! rooms may have members on every core, so those orders go to all cores;
//! a connection id names its core.
//!
//! Inbox sends await when an inbox is full (`core_inbox_max`): the
//! upstream task that produced the order waits, so backpressure reaches the
//! client that caused it and nothing is dropped.

use std::rc::Rc;

use bytes::Bytes;
use gw_proto::pb::{self, frame::Body};
use gw_proto::CloseReason;

use super::push::{self, Out};
use super::wheel::Entry;
use super::{conn_id_core, conn_id_idx, Conn, Core, CoreMsg, Members, State};
use crate::backend::{
    Interest, PushOrder, SessionEvent, SessionOp, Target, UndeliveredPush, UndeliveredReason,
};
use crate::metrics::{CoreMetrics, Reject};

/// A push that could not be placed, to report after the state borrow ends.
/// A push that reached nobody: connection id (0 = none), user, device,
/// room (for a room push), the push.
type Lost = (
    u64,
    Option<Rc<str>>,
    Option<Rc<str>>,
    Option<Rc<str>>,
    UndeliveredPush,
);

impl Core {
    /// Executes a backend's push orders, then its session operations.
    pub async fn execute(&self, pushes: Vec<PushOrder>, ops: Vec<SessionOp>) {
        for p in pushes {
            if let Some(body) = self.encode_push(&p) {
                self.route_push(p.target, body, p.ack_required).await;
            }
        }
        for op in ops {
            self.route_op(op).await;
        }
    }

    /// A push's shared body, or None (counted, logged, and reported when
    /// ack-required) when it would not fit in `frame_bytes_max`: a frame the
    /// client is told it will never receive is refused here, loudly.
    pub fn encode_push(&self, p: &PushOrder) -> Option<Bytes> {
        let body = push::encode_body(&p.route, &p.payload, p.ack_required, p.priority);
        if body.len() + push::HEAD_BYTES_MAX <= self.cfg.frame_bytes_max as usize {
            return Some(body);
        }
        CoreMetrics::inc(&self.metrics.pushes_too_large);
        tracing::warn!(route = %p.route, bytes = body.len(), "push larger than frame_bytes_max refused");
        if p.ack_required {
            self.report_lost(vec![lost_push(
                &p.target,
                &body,
                UndeliveredReason::TooLarge,
            )]);
        }
        None
    }

    /// Sends a push to the cores that may hold its target.
    pub async fn route_push(&self, target: Target, body: Bytes, ack_required: bool) {
        let cores: Vec<usize> = match &target {
            Target::Conn(id) => vec![conn_id_core(*id)],
            Target::User(_) | Target::Room(_) => (0..self.mesh.len()).collect(),
        };
        for core in cores {
            if core == self.index {
                self.deliver(&target, &body, ack_required);
                continue;
            }
            let msg = CoreMsg::Push {
                target: target.clone(),
                body: body.clone(),
                ack_required,
            };
            let sent = match self.mesh.get(core) {
                Some(tx) => tx.send_async(msg).await.is_ok(),
                None => false,
            };
            // A stopped core has closed (and reported) all its connections:
            // a user or room has nobody there. Only a push to one of its
            // connections is lost.
            if !sent && ack_required && matches!(target, Target::Conn(_)) {
                self.report_lost(vec![lost_push(
                    &target,
                    &body,
                    UndeliveredReason::NoConnection,
                )]);
            }
        }
    }

    /// Delivers a push to this core's connections that match `target`;
    /// returns how many connections took it (each one will deliver it or
    /// report it undelivered). A room push over the room's rate on this
    /// core (`room_broadcast_rate_per_s`) is dropped when it needs no ack,
    /// and reported undelivered (`RateLimited`, once, naming the room)
    /// otherwise.
    pub fn deliver(&self, target: &Target, body: &Bytes, ack_required: bool) -> usize {
        let now = self.now();
        let mut lost: Vec<Lost> = Vec::new();
        let mut placed = 0;
        {
            let mut st = self.state.borrow_mut();
            let State {
                conns,
                users,
                rooms,
                wheel,
                ..
            } = &mut *st;
            let over_rate = match target {
                Target::Room(r) => rooms.get_key_value(r.as_str()).is_some_and(|(key, _)| {
                    !self.overload.take_room(key, now, |k| rooms.contains_key(k))
                }),
                _ => false,
            };
            if over_rate {
                self.metrics.rejected(Reject::RoomRate);
            }
            let mut one = |c: &mut Conn| {
                if c.authed() && c.close.is_none() {
                    placed += 1;
                    if over_rate {
                        return;
                    }
                }
                if let Some(l) = self.deliver_one(c, body, ack_required, now, wheel) {
                    lost.push(l);
                }
            };
            match target {
                Target::Conn(id) => match conns.get_mut(conn_id_idx(*id) as usize) {
                    Some(c) if c.id == *id => one(c),
                    _ if ack_required => {
                        lost.push(lost_push(target, body, UndeliveredReason::NoConnection))
                    }
                    _ => {}
                },
                Target::User(u) => for_members(users.get(u.as_str()), conns, &mut one),
                Target::Room(r) => for_members(rooms.get(r.as_str()), conns, &mut one),
            }
            // One report per push and core, naming the room: not one per
            // member, which for a large room would flood the events.
            if over_rate && ack_required && placed > 0 {
                lost.push(lost_push(target, body, UndeliveredReason::RateLimited));
            }
        }
        self.report_lost(lost);
        placed
    }

    fn deliver_one(
        &self,
        c: &mut Conn,
        body: &Bytes,
        ack_required: bool,
        now: super::wheel::Tick,
        wheel: &mut super::wheel::Wheel,
    ) -> Option<Lost> {
        let lost = |c: &Conn, reason| Some(lost_on(c, body, reason));
        if !c.authed() || c.close.is_some() {
            return if ack_required {
                lost(
                    c,
                    UndeliveredReason::ConnectionClosed(
                        c.close.unwrap_or(CloseReason::Unspecified),
                    ),
                )
            } else {
                None
            };
        }
        CoreMetrics::inc(&self.metrics.pushes);
        if !ack_required {
            self.enqueue(
                c,
                Out {
                    head: push::head(0, false, body.len()),
                    body: body.clone(),
                },
            );
            return None;
        }
        if c.window.len() >= self.cfg.unacked_pushes_max as usize {
            CoreMetrics::inc(&self.metrics.slow_consumers);
            c.close = Some(CloseReason::SlowConsumer);
            self.ready(c);
            return lost(
                c,
                UndeliveredReason::ConnectionClosed(CloseReason::SlowConsumer),
            );
        }
        let seq = c.window.add(body.clone(), now);
        // If this overflows the outbound bytes, the connection closes as a slow
        // consumer and the push, already in the window, is reported at teardown.
        self.enqueue(
            c,
            Out {
                head: push::head(seq, false, body.len()),
                body: body.clone(),
            },
        );
        let due = now + self.ticks(self.cfg.ack_timeout_ms);
        c.due = wheel.schedule(
            Entry {
                idx: conn_id_idx(c.id),
                conn_id: c.id,
            },
            due,
            c.due,
        );
        None
    }

    /// Reports pushes that could not be placed to the backend.
    fn report_lost(&self, lost: Vec<Lost>) {
        for (conn_id, user, device, room, p) in lost {
            CoreMetrics::inc(&self.metrics.undelivered);
            self.backend.event(SessionEvent::Undelivered {
                conn_id,
                user: user.unwrap_or_else(|| Rc::from("")),
                device: device.unwrap_or_else(|| Rc::from("")),
                room,
                pushes: vec![p],
            });
        }
    }

    /// Sends a session operation to the core(s) it concerns.
    pub async fn route_op(&self, op: SessionOp) {
        let cores: Vec<usize> = match &op {
            SessionOp::JoinRoom { conn_id, .. }
            | SessionOp::LeaveRoom { conn_id, .. }
            | SessionOp::KickConn { conn_id, .. } => vec![conn_id_core(*conn_id)],
            SessionOp::KickUser { .. } => (0..self.mesh.len()).collect(),
        };
        for core in cores {
            if core == self.index {
                self.apply_op(op.clone());
            } else if let Some(tx) = self.mesh.get(core) {
                let _ = tx.send_async(CoreMsg::Op(op.clone())).await;
            }
        }
    }

    /// Applies a session operation to this core's connections.
    pub fn apply_op(&self, op: SessionOp) {
        match op {
            SessionOp::JoinRoom { conn_id, room } => self.join(conn_id, &room),
            SessionOp::LeaveRoom { conn_id, room } => self.leave(conn_id, &room),
            SessionOp::KickConn { conn_id, message } => self.kick(conn_id, message),
            SessionOp::KickUser { user, message } => {
                let ids: Vec<u64> = {
                    let st = self.state.borrow();
                    let idxs = st
                        .users
                        .get(user.as_str())
                        .map(Members::to_vec)
                        .unwrap_or_default();
                    idxs.iter()
                        .filter_map(|&i| st.conns.get(i as usize))
                        .map(|c| c.id)
                        .collect()
                };
                for id in ids {
                    self.kick(id, message.clone());
                }
            }
        }
    }

    fn kick(&self, conn_id: u64, message: String) {
        let goaway = Body::GoAway(pb::GoAway {
            reason: CloseReason::Kicked as i32,
            retry_after_ms: 0,
            endpoints: vec![],
            message,
        });
        self.close(
            conn_id_idx(conn_id),
            conn_id,
            CloseReason::Kicked,
            Some(goaway),
        );
    }

    fn join(&self, conn_id: u64, room: &str) {
        let idx = conn_id_idx(conn_id);
        let refused = {
            let mut st = self.state.borrow_mut();
            let State { conns, rooms, .. } = &mut *st;
            let Some(c) = conns
                .get_mut(idx as usize)
                .filter(|c| c.id == conn_id && c.authed())
            else {
                return;
            };
            if c.rooms().iter().any(|r| &**r == room) {
                return;
            }
            if c.rooms().len() >= self.cfg.rooms_per_conn_max as usize {
                true
            } else {
                let key: Rc<str> = match rooms.get_key_value(room) {
                    Some((k, _)) => k.clone(),
                    None => Rc::from(room),
                };
                c.extra_mut().rooms.push(key.clone());
                match rooms.get_mut(room) {
                    Some(m) => m.add(idx),
                    None => {
                        rooms.insert(key, Members::One(idx));
                        self.backend.interest(Interest::Room(room), true);
                    }
                }
                false
            }
        };
        if refused {
            let msg = format!(
                "rooms_per_conn_max ({}) reached",
                self.cfg.rooms_per_conn_max
            );
            let err = Core::error_body(gw_proto::ErrorCode::BadRequest, msg, 0);
            self.send_frame(idx, conn_id, err);
        }
    }

    fn leave(&self, conn_id: u64, room: &str) {
        let idx = conn_id_idx(conn_id);
        let mut st = self.state.borrow_mut();
        let State { conns, rooms, .. } = &mut *st;
        let Some(c) = conns.get_mut(idx as usize).filter(|c| c.id == conn_id) else {
            return;
        };
        if let Some(p) = c.rooms().iter().position(|r| &**r == room) {
            c.extra_mut().rooms.swap_remove(p);
            if remove_member(rooms, room, idx) {
                self.backend.interest(Interest::Room(room), false);
            }
        }
    }
}

/// Removes `idx` from the member list under `key`, and the key when empty;
/// true when the key went (the last local member left).
pub(super) fn remove_member(
    map: &mut std::collections::HashMap<Rc<str>, Members>,
    key: &str,
    idx: u32,
) -> bool {
    if map.get_mut(key).is_some_and(|m| m.remove(idx)) {
        map.remove(key);
        return true;
    }
    false
}

fn for_members(
    members: Option<&Members>,
    conns: &mut slab::Slab<Conn>,
    f: &mut impl FnMut(&mut Conn),
) {
    let mut each = |i: u32| {
        if let Some(c) = conns.get_mut(i as usize) {
            f(c)
        }
    };
    match members {
        None => {}
        Some(Members::One(i)) => each(*i),
        Some(Members::Many(v)) => v.iter().for_each(|&i| each(i)),
    }
}

/// A push that will not reach connection `c`.
fn lost_on(c: &Conn, body: &Bytes, reason: UndeliveredReason) -> Lost {
    let (route, payload) = push::decode_body(body);
    let p = UndeliveredPush {
        seq: 0,
        route,
        payload,
        reason,
    };
    (c.id, c.user.clone(), c.device.clone(), None, p)
}

fn lost_push(target: &Target, body: &Bytes, reason: UndeliveredReason) -> Lost {
    let (route, payload) = push::decode_body(body);
    let (conn_id, user, room) = match target {
        Target::Conn(id) => (*id, None, None),
        Target::User(u) => (0, Some(Rc::from(u.as_str())), None),
        Target::Room(r) => (0, None, Some(Rc::from(r.as_str()))),
    };
    (
        conn_id,
        user,
        None,
        room,
        UndeliveredPush {
            seq: 0,
            route,
            payload,
            reason,
        },
    )
}
