//! Pushes and session operations: executed locally when the target lives on
//! this core, sent through the target core's inbox otherwise. Users and
//! rooms may have members on every core, so those orders go to all cores;
//! a connection id names its core.
//!
//! Inbox sends await when an inbox is full (`core_inbox_max`): the
//! upstream task that produced the order waits, so backpressure reaches the
//! client that caused it and nothing is dropped.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use gw_proto::pb::{self, frame::Body, Priority};
use gw_proto::CloseReason;

use super::delivery::{self, Link, Placed};
use super::push::{self, Backlog, Out, Window};
use super::wheel::{Tick, Wheel};
use super::ByKey;
use super::{conn_id_core, Conn, ConnKey, Core, CoreMsg, Members, State};
use crate::backend::{
    Interest, PushOrder, SessionEvent, SessionOp, Target, UndeliveredPush, UndeliveredReason,
};
use crate::metrics::{CoreMetrics, Reject};

/// An ack-required user or room push fanned out to every core by the
/// embedded backend: the cores still to place it, and whether any did.
#[derive(Debug)]
pub struct Tally {
    left: AtomicUsize,
    placed: AtomicBool,
}

impl Tally {
    pub fn new(cores: usize) -> Arc<Tally> {
        Arc::new(Tally {
            left: AtomicUsize::new(cores),
            placed: AtomicBool::new(false),
        })
    }

    /// One core is done and placed the push on `placed` connections. True
    /// when that was the last core and no core placed it.
    pub fn count(&self, placed: usize) -> bool {
        if placed > 0 {
            self.placed.store(true, Ordering::SeqCst);
        }
        self.left.fetch_sub(1, Ordering::SeqCst) == 1 && !self.placed.load(Ordering::SeqCst)
    }
}

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
    /// Returns the highest ticket of the room subscriptions its joins on
    /// this core started, if they are not confirmed yet.
    pub async fn execute(&self, pushes: Vec<PushOrder>, ops: Vec<SessionOp>) -> Option<u64> {
        for p in pushes {
            if let Some(body) = self.encode_push(&p) {
                self.route_push(p.target, body, p.ack_required, p.priority)
                    .await;
            }
        }
        let mut ticket = None;
        for op in ops {
            ticket = ticket.max(self.route_op(op).await);
        }
        ticket
    }

    /// A push's shared body, or None (counted, logged, and reported when
    /// ack-required) when it would not fit in `frame_bytes_max`: a frame the
    /// client is told it will never receive is refused here, loudly.
    pub fn encode_push(&self, p: &PushOrder) -> Option<Bytes> {
        let body = push::encode_body(&p.route, &p.payload, p.ack_required, p.priority);
        if body.len() + push::HEAD_BYTES_MAX <= self.cfg().frame_bytes_max as usize {
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

    /// Sends a push to the cores that may hold its target. An ack-required
    /// user or room push carries a [`Tally`]: the last core to count it
    /// reports it `NO_CONNECTION` when no core placed it (as "no
    /// responders" does over NATS), so a push racing its user's close is
    /// reported, not lost.
    pub async fn route_push(
        &self,
        target: Target,
        body: Bytes,
        ack_required: bool,
        priority: Priority,
    ) {
        let cores: Vec<usize> = match &target {
            Target::Conn(id) => vec![conn_id_core(*id)],
            Target::User(_) | Target::Room(_) => (0..self.mesh.len()).collect(),
        };
        let tally =
            (ack_required && !matches!(target, Target::Conn(_))).then(|| Tally::new(cores.len()));
        for core in cores {
            if core == self.index {
                self.deliver_counted(&target, &body, ack_required, priority, tally.as_deref());
                continue;
            }
            let msg = CoreMsg::Push {
                target: target.clone(),
                body: body.clone(),
                ack_required,
                priority,
                tally: tally.clone(),
            };
            let sent = match self.mesh.get(core) {
                Some(tx) => tx.send_from_core(msg).await.is_ok(),
                None => false,
            };
            if sent {
                continue;
            }
            // A stopped core has closed (and reported) all its connections:
            // it counts as placing nothing. Only a push to one of its
            // connections is lost at once.
            let nobody = tally.as_ref().is_some_and(|t| t.count(0));
            if nobody || (ack_required && matches!(target, Target::Conn(_))) {
                self.report_lost(vec![lost_push(
                    &target,
                    &body,
                    UndeliveredReason::NoConnection,
                )]);
            }
        }
    }

    /// [`Core::deliver`], then counts the push in its tally (if any) and
    /// reports it `NO_CONNECTION` when this core was the last and nobody
    /// placed it.
    pub fn deliver_counted(
        &self,
        target: &Target,
        body: &Bytes,
        ack_required: bool,
        priority: Priority,
        tally: Option<&Tally>,
    ) {
        let placed = self.deliver(target, body, ack_required, priority);
        if tally.is_some_and(|t| t.count(placed)) {
            self.report_lost(vec![lost_push(
                target,
                body,
                UndeliveredReason::NoConnection,
            )]);
        }
    }

    /// Delivers a push to this core's connections that match `target`;
    /// returns how many connections took it (each one will deliver it or
    /// report it undelivered). A room push goes through `rooms.rs` first:
    /// gathered into the room's batch, dropped (LOW under load), or sent
    /// now; over the room's rate on this core
    /// (`room_broadcast_rate_per_s`), an ack-required push that is not
    /// HIGH is reported undelivered (`RateLimited`, once, naming the room).
    pub fn deliver(
        &self,
        target: &Target,
        body: &Bytes,
        ack_required: bool,
        priority: Priority,
    ) -> usize {
        let now = self.now();
        let mut over_rate = false;
        if let Target::Room(r) = target {
            self.prune_rooms();
            // The room's key (when it has members here) and its rate.
            let room = {
                let st = self.state.borrow();
                st.rooms.get_key_value(r.as_str()).map(|(k, m)| {
                    let over = !self
                        .overload
                        .take_room(k, now, |k| st.rooms.contains_key(k));
                    (k.clone(), over, m.len())
                })
            };
            if let Some((key, over, members)) = room {
                over_rate = over;
                if over_rate {
                    self.metrics.rejected(Reject::RoomRate);
                }
                if !ack_required {
                    match self.room_way(&key, body, priority, over_rate, members) {
                        // Every member will have it (or its drop counted).
                        super::rooms::Way::Gathered | super::rooms::Way::Dropped(_) => return 1,
                        super::rooms::Way::GatheredLast => {
                            self.flush_room(&key);
                            return 1;
                        }
                        super::rooms::Way::Now => over_rate = false,
                    }
                } else if priority == Priority::High {
                    over_rate = false; // HIGH is never dropped
                }
                // What the room gathered goes first: order is kept.
                self.flush_room(&key);
            }
        }
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
            // A connection takes the push when it is live, or when it
            // reports it (closing): either way it will not reach nobody.
            let mut one = |c: &mut Conn| {
                let live = c.authed() && c.close.is_none();
                if live {
                    placed += 1;
                    if over_rate {
                        return;
                    }
                }
                if let Some(l) = self.deliver_one(c, body, ack_required, now, wheel) {
                    placed += usize::from(!live);
                    lost.push(l);
                }
            };
            match target {
                Target::Conn(id) => match conns.by_key(ConnKey::from_id(*id)) {
                    Some(c) => one(c),
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

    /// Places one push on a connection (`delivery::offer`): sent at once
    /// when there is room, else into the connection's backlog (behind
    /// anything already waiting, so pushes keep their order). Returns the
    /// push when it will not reach this connection and must be reported.
    pub(super) fn deliver_one(
        &self,
        c: &mut Conn,
        body: &Bytes,
        ack_required: bool,
        now: Tick,
        wheel: &mut Wheel,
    ) -> Option<Lost> {
        if !c.authed() || c.close.is_some() {
            let reason =
                UndeliveredReason::ConnectionClosed(c.close.unwrap_or(CloseReason::Unspecified));
            return ack_required.then(|| lost_on(c, body, reason));
        }
        CoreMetrics::inc(&self.metrics.pushes);
        let placed = delivery::offer(
            &mut Wired::new(self, c),
            &self.delivery.get(),
            body.clone(),
            ack_required,
            now,
        );
        let due = match placed {
            Placed::Sent { due } => due,
            Placed::Waiting { due } => {
                CoreMetrics::inc(&self.metrics.pushes_waited);
                due
            }
            Placed::Overflow(w) => {
                CoreMetrics::inc(&self.metrics.pushes_waited);
                self.slow_consumer(c, "push_queue_bytes_max reached");
                let reason = UndeliveredReason::ConnectionClosed(CloseReason::SlowConsumer);
                return w.ack_required.then(|| lost_on(c, &w.body, reason));
            }
        };
        schedule(c, due, wheel);
        None
    }

    /// Sends what waits in the backlog while there is room, in order.
    pub fn pump(&self, c: &mut Conn, now: Tick, wheel: &mut Wheel) {
        let due = delivery::pump(&mut Wired::new(self, c), &self.delivery.get(), now);
        schedule(c, due, wheel);
    }

    /// A cumulative Ack: trims the window, then lets waiting pushes out.
    pub fn ack(&self, key: ConnKey, seq: u64) {
        let now = self.now();
        let mut st = self.state.borrow_mut();
        let State { conns, wheel, .. } = &mut *st;
        let Some(c) = conns.by_key(key) else {
            return;
        };
        let (n, due) = delivery::ack(&mut Wired::new(self, c), &self.delivery.get(), seq, now);
        CoreMetrics::add(&self.metrics.pushes_acked, n as u64);
        schedule(c, due, wheel);
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

    /// Sends a session operation to the core(s) it concerns. Returns the
    /// ticket of a room subscription a join on this core started.
    pub async fn route_op(&self, op: SessionOp) -> Option<u64> {
        let cores: Vec<usize> = match &op {
            SessionOp::JoinRoom { conn_id, .. }
            | SessionOp::LeaveRoom { conn_id, .. }
            | SessionOp::KickConn { conn_id, .. } => vec![conn_id_core(*conn_id)],
            SessionOp::KickUser { .. } | SessionOp::RoomMode { .. } => {
                (0..self.mesh.len()).collect()
            }
        };
        let mut ticket = None;
        for core in cores {
            if core == self.index {
                ticket = self.apply_op(op.clone());
            } else if let Some(tx) = self.mesh.get(core) {
                let _ = tx.send_from_core(CoreMsg::Op(op.clone())).await;
            }
        }
        ticket
    }

    /// Applies a session operation to this core's connections. Returns the
    /// ticket of the room subscription a join started, if not confirmed.
    pub fn apply_op(&self, op: SessionOp) -> Option<u64> {
        match op {
            SessionOp::JoinRoom { conn_id, room } => {
                return self
                    .join(conn_id, &room)
                    .filter(|&t| !self.reach.is_confirmed(t))
            }
            SessionOp::LeaveRoom { conn_id, room } => self.leave(conn_id, &room),
            SessionOp::KickConn { conn_id, message } => self.kick(conn_id, message),
            SessionOp::RoomMode { room, hot } => self.mark_room(&room, hot),
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
        None
    }

    fn kick(&self, conn_id: u64, message: String) {
        let goaway = Body::GoAway(pb::GoAway {
            reason: CloseReason::Kicked as i32,
            retry_after_ms: 0,
            endpoints: vec![],
            message,
        });
        self.close(ConnKey::from_id(conn_id), CloseReason::Kicked, Some(goaway));
    }

    /// Joins a room; the ticket of its subscription (new or pending).
    fn join(&self, conn_id: u64, room: &str) -> Option<u64> {
        let key = ConnKey::from_id(conn_id);
        let idx = key.idx();
        let mut ticket = None;
        let refused = {
            let mut st = self.state.borrow_mut();
            let State { conns, rooms, .. } = &mut *st;
            let c = conns.by_key(key).filter(|c| c.authed())?;
            if c.rooms().iter().any(|r| &**r == room) {
                return self.backend.ticket(Interest::Room(room));
            }
            if c.rooms().len() >= self.cfg().rooms_per_conn_max as usize {
                true
            } else {
                let key: Rc<str> = match rooms.get_key_value(room) {
                    Some((k, _)) => k.clone(),
                    None => Rc::from(room),
                };
                c.extra_mut().rooms.push(key.clone());
                ticket = match rooms.get_mut(room) {
                    Some(m) => {
                        m.add(idx);
                        self.backend.ticket(Interest::Room(room))
                    }
                    None => {
                        rooms.insert(key, Members::One(idx));
                        self.backend.interest(Interest::Room(room), true)
                    }
                };
                false
            }
        };
        if refused {
            let msg = format!(
                "rooms_per_conn_max ({}) reached",
                self.cfg().rooms_per_conn_max
            );
            let err = Core::error_body(gw_proto::ErrorCode::BadRequest, msg, 0);
            self.send_frame(ConnKey::from_id(conn_id), err);
        }
        ticket
    }

    fn leave(&self, conn_id: u64, room: &str) {
        let key = ConnKey::from_id(conn_id);
        let idx = key.idx();
        let mut st = self.state.borrow_mut();
        let State { conns, rooms, .. } = &mut *st;
        let Some(c) = conns.by_key(key) else {
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

/// Moves a connection's wheel entry earlier when `due` is.
pub(super) fn schedule(c: &mut Conn, due: Option<Tick>, wheel: &mut Wheel) {
    if let Some(due) = due {
        c.due = wheel.schedule(c.key(), due, c.due);
    }
}

/// A connection of this core as the delivery machine sees it: frames go
/// through the core's outbound queue (WebSocket wrapping, slow-consumer
/// check, ready list).
pub(super) struct Wired<'a> {
    core: &'a Core,
    c: &'a mut Conn,
}

impl<'a> Wired<'a> {
    pub(super) fn new(core: &'a Core, c: &'a mut Conn) -> Wired<'a> {
        Wired { core, c }
    }
}

impl Link for Wired<'_> {
    fn window(&self) -> &Window {
        &self.c.window
    }
    fn window_mut(&mut self) -> &mut Window {
        &mut self.c.window
    }
    fn backlog(&self) -> Option<&Backlog> {
        self.c.extra.as_ref().map(|e| &e.backlog)
    }
    fn backlog_mut(&mut self) -> &mut Backlog {
        &mut self.c.extra_mut().backlog
    }
    fn backlog_done(&mut self) {
        self.c.shrink_extra();
    }
    fn queued_bytes(&self) -> u32 {
        self.c.out_bytes
    }
    fn closing(&self) -> bool {
        self.c.close.is_some()
    }
    fn send(&mut self, out: Out) {
        self.core.enqueue(self.c, out);
    }
    fn clock_us(&self) -> u32 {
        self.core.clock_us()
    }
    fn acked_after(&mut self, us: u32) {
        self.core.metrics.hist.push_ack.observe_us(us.into());
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

pub(super) fn for_members(
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
