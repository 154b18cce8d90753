//! The per-tick pass: fires due wheel entries and evaluates each connection
//! once (auth deadline, idle reaping, ack retransmit and expiry), then
//! schedules its next deadline. Cost is proportional to the connections that
//! are due, not to all connections.

use std::rc::Rc;
use std::time::Instant;

use gw_proto::pb::{self, frame::Body};
use gw_proto::{CloseReason, ErrorCode};

use super::deliver::Wired;
use super::delivery;
use super::liveness::{self, Due, Phase};
use super::push::{self, Unacked};
use super::wheel::{Entry, Tick};
use super::{Core, State};
use crate::backend::{SessionEvent, UndeliveredPush, UndeliveredReason};
use crate::metrics::CoreMetrics;

/// What a check decided that must happen after the state borrow ends.
enum After {
    Nothing,
    AuthTimeout,
    /// A held login whose subscription was not confirmed by its auth deadline.
    Unreachable,
    /// The session's token expired.
    TokenExpired,
    Expired(Rc<str>, Rc<str>, Vec<Unacked>),
}

impl Core {
    /// Ticks until the core stops. How late each tick wakes up (what any
    /// task waits for the executor) feeds the overload signal.
    pub async fn run_ticks(self: Rc<Self>) {
        let mut due = Vec::new();
        let tick = self.tick_duration();
        while !self.stopping.get() {
            let slept = Instant::now();
            self.sleep(tick).await;
            let now = Instant::now();
            self.overload
                .on_tick(now.duration_since(slept).saturating_sub(tick), now);
            self.sweep(&mut due);
        }
        self.ticks_running.set(false);
    }

    /// Fires every entry due by now.
    pub fn sweep(&self, due: &mut Vec<(Tick, Entry)>) {
        let now = self.now();
        self.state.borrow_mut().wheel.take_due(now, due);
        for (tick, e) in due.drain(..) {
            match self.check(tick, e, now) {
                After::Nothing => {}
                After::AuthTimeout => {
                    CoreMetrics::inc(&self.metrics.auth_failures);
                    let err = Body::AuthError(pb::AuthError {
                        code: ErrorCode::AuthRequired as i32,
                        message: format!(
                            "no Auth frame within auth_timeout_ms ({})",
                            self.cfg().auth_timeout_ms
                        ),
                    });
                    self.close(e, CloseReason::AuthTimeout, Some(err));
                }
                After::Unreachable => self.refuse_login(e),
                After::TokenExpired => self.token_expired(e),
                After::Expired(user, device, items) => self.report_undelivered(
                    e.id(),
                    user,
                    device,
                    items,
                    UndeliveredReason::RetriesExhausted,
                ),
            }
        }
    }

    fn check(&self, tick: Tick, e: Entry, now: Tick) -> After {
        let mut st = self.state.borrow_mut();
        let State { conns, wheel, .. } = &mut *st;
        let Some(c) = conns.get_mut(e.idx() as usize) else {
            return After::Nothing;
        };
        if c.id != e.id() || c.due != tick {
            return After::Nothing; // stale entry: the connection is due elsewhere
        }
        c.due = 0;
        if c.close.is_some() {
            return After::Nothing;
        }
        let phase = if !c.authed() {
            Phase::Unauthenticated
        } else if self.held(c.id) {
            // Nothing is written before AuthOk: no idle or ack checks yet.
            Phase::Held
        } else {
            Phase::Live
        };
        let idle_ticks = self.ticks(self.cfg().idle_timeout_ms(c.heartbeat_ms));
        let auth_ticks = self.ticks(self.cfg().auth_timeout_ms);
        let idle_deadline =
            match liveness::due(phase, c.created, c.last_in, auth_ticks, idle_ticks, now) {
                Due::At(t) => {
                    c.due = wheel.schedule(e, t, 0);
                    return After::Nothing;
                }
                Due::AuthTimeout => return After::AuthTimeout,
                Due::Unreachable => return After::Unreachable,
                Due::Stale => {
                    c.close = Some(CloseReason::StaleHeartbeat);
                    self.ready(c);
                    return After::Nothing;
                }
                Due::Live(t) => t,
            };
        let (Some(user), Some(device)) = (c.user.clone(), c.device.clone()) else {
            return After::Nothing; // Live means authenticated
        };
        let expiry = match self.expiry_check(c, super::expiry::unix_now()) {
            super::expiry::Expiry::Ended => return After::TokenExpired,
            super::expiry::Expiry::Next(t) => t,
        };
        let checked = delivery::check(&mut Wired::new(self, c), &self.delivery.get(), now);
        CoreMetrics::add(&self.metrics.retransmits, checked.retransmits as u64);
        let after = if checked.expired.is_empty() {
            After::Nothing
        } else {
            After::Expired(user, device, checked.expired)
        };
        if checked.stalled {
            self.slow_consumer(c, "the backlog did not move for push_stall_timeout_ms");
            return after;
        }
        let mut next = checked.next.map_or(idle_deadline, |d| d.min(idle_deadline));
        if let Some(t) = expiry {
            next = next.min(t);
        }
        c.due = wheel.schedule(e, next, 0);
        after
    }

    /// Hands pushes that were never acknowledged back to the backend.
    pub fn report_undelivered(
        &self,
        conn_id: u64,
        user: Rc<str>,
        device: Rc<str>,
        items: Vec<Unacked>,
        reason: UndeliveredReason,
    ) {
        if items.is_empty() {
            return;
        }
        CoreMetrics::add(&self.metrics.undelivered, items.len() as u64);
        let pushes = items
            .into_iter()
            .map(|u| {
                let (route, payload) = push::decode_body(&u.body);
                UndeliveredPush {
                    seq: u.seq,
                    route,
                    payload,
                    reason,
                }
            })
            .collect();
        self.backend.event(SessionEvent::Undelivered {
            conn_id,
            user,
            device,
            room: None,
            pushes,
        });
    }
}
