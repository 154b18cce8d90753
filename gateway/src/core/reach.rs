//! Reachability before acknowledgement, and a node that is whole or out.
//!
//! With NATS, a user or room is reachable once the server has the core's
//! subscription for it. The backend hands out a *ticket* for each new
//! subscription (`Backend::interest`), and the server confirms tickets in
//! order (`Event::Confirmed`, one PING per batch of SUBs). So:
//!
//! - a login's `AuthOk` is queued at once but *held* (nothing is written to
//!   the connection) until its user's ticket is confirmed; then it goes out
//!   with whatever queued behind it, and the online event is sent. A login
//!   not confirmed by its auth deadline gets `AuthError{BACKEND_UNAVAILABLE}`
//!   and closes as `NODE_UNAVAILABLE`;
//! - a join's reply waits for the room's ticket (`wait_ticket`).
//!
//! When the core's subscriptions are lost (`Event::Down`), the core counts
//! how long; past `nats.restore_deadline_ms` the node is *out*: logins are
//! refused at once, and sessions get `GoAway{NODE_UNAVAILABLE}` spread over
//! `drain_spread_ms` and are closed at `drain_deadline_ms` if NATS is still
//! away. When the subscriptions are back (`Event::Up`), every session that
//! was online before gets its online event again with `resync` set, so
//! backends replay what may have found nobody meanwhile.
//!
//! The embedded backend hands out no tickets and has no outages: nothing
//! here costs it anything but an empty map check per flush.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use gw_proto::pb::{self, frame::Body};
use gw_proto::{CloseReason, ErrorCode};

use super::{ConnKey, Core};
use crate::backend::SessionEvent;
use crate::metrics::CoreMetrics;

/// A held login whose wait failed: it must send no session events.
const REFUSED: u64 = u64::MAX;

/// Per-core reachability state.
pub struct Reach {
    /// Highest ticket confirmed by the NATS server.
    confirmed: Cell<u64>,
    /// Logins whose AuthOk is held: conn id → ticket (`REFUSED`: given up).
    held: RefCell<HashMap<u64, u64>>,
    /// Tasks waiting for a ticket (a join's reply).
    waiters: RefCell<Vec<(u64, Waker)>>,
    /// While the subscriptions are not in place: since when. None with the
    /// embedded backend, and while NATS is up.
    down_since: Cell<Option<Instant>>,
    /// Subscriptions have been down past the restore deadline.
    out: Cell<bool>,
    /// Counts the times the node went out (an evacuation ends with its episode).
    episode: Cell<u32>,
    /// Logins released by confirmations since the last `Up`: their online
    /// event has just gone out, no resync event for them.
    fresh: RefCell<Vec<u64>>,
}

impl Reach {
    /// `nats`: subscriptions live on NATS, and are not in place until the
    /// first `Up`.
    pub fn new(nats: bool) -> Reach {
        Reach {
            confirmed: Cell::new(0),
            held: RefCell::new(HashMap::new()),
            waiters: RefCell::new(Vec::new()),
            down_since: Cell::new(nats.then(Instant::now)),
            out: Cell::new(false),
            episode: Cell::new(0),
            fresh: RefCell::new(Vec::new()),
        }
    }

    /// Whether a ticket is confirmed.
    pub fn is_confirmed(&self, ticket: u64) -> bool {
        ticket <= self.confirmed.get()
    }

    /// The node is out: subscriptions lost past the restore deadline.
    pub fn is_out(&self) -> bool {
        self.out.get()
    }

    /// Subscriptions are in place (always with the embedded backend).
    pub fn is_up(&self) -> bool {
        self.down_since.get().is_none()
    }
}

impl Core {
    /// Whether a connection's output is held until its login is confirmed.
    pub fn held(&self, id: u64) -> bool {
        let held = self.reach.held.borrow();
        !held.is_empty() && held.get(&id).is_some_and(|&t| t != REFUSED)
    }

    /// Holds a login's output until `ticket` is confirmed.
    pub fn hold(&self, id: u64, ticket: u64) {
        self.reach.held.borrow_mut().insert(id, ticket);
    }

    /// Forgets a connection at teardown; false when its login never
    /// completed (no online event went out, so no offline event either).
    pub fn unhold(&self, id: u64) -> bool {
        let mut held = self.reach.held.borrow_mut();
        held.is_empty() || held.remove(&id).is_none()
    }

    /// The server confirmed every ticket up to `n`: held logins whose
    /// ticket is covered go out, and waiting joins are answered.
    pub fn confirmed(&self, n: u64) {
        if n <= self.reach.confirmed.get() {
            return;
        }
        self.reach.confirmed.set(n);
        let released: Vec<u64> = {
            let mut held = self.reach.held.borrow_mut();
            let ids: Vec<u64> = held
                .iter()
                .filter(|&(_, &t)| t != REFUSED && t <= n)
                .map(|(&id, _)| id)
                .collect();
            for id in &ids {
                held.remove(id);
            }
            ids
        };
        let now = self.now();
        for id in released {
            self.reach.fresh.borrow_mut().push(id);
            self.with_conn(ConnKey::from_id(id), |c| {
                // Nothing was written while held: acks were not possible,
                // so the window's clocks start now.
                c.window.restart_clock(now);
                self.ready(c);
            });
            self.online(ConnKey::from_id(id), false);
        }
        let ready: Vec<Waker> = {
            let mut w = self.reach.waiters.borrow_mut();
            let (done, wait): (Vec<_>, Vec<_>) = w.drain(..).partition(|(t, _)| *t <= n);
            *w = wait;
            done.into_iter().map(|(_, w)| w).collect()
        };
        for w in ready {
            w.wake();
        }
    }

    /// Waits until `ticket` is confirmed, at most `timeout`; true if it was.
    pub async fn wait_ticket(&self, ticket: u64, timeout: Duration) -> bool {
        let confirmed = std::future::poll_fn(|cx| {
            if self.reach.is_confirmed(ticket) {
                Poll::Ready(true)
            } else {
                self.reach
                    .waiters
                    .borrow_mut()
                    .push((ticket, cx.waker().clone()));
                Poll::Pending
            }
        });
        futures_lite::future::or(confirmed, async {
            self.sleep(timeout).await;
            false
        })
        .await
    }

    /// Reports a session online to the backend (at login, or again with
    /// `resync` after the subscriptions were restored).
    pub fn online(&self, key: ConnKey, resync: bool) {
        let id = key.id();
        if !resync {
            // The AuthOk goes out now: the end of connect-to-AuthOk.
            if let Some(t) = self.accepted.borrow_mut().remove(&id) {
                self.metrics.hist.connect_auth.observe(t.elapsed());
            }
        }
        let ev = self.with_conn(key, |c| {
            let (Some(user), Some(device)) = (c.user.clone(), c.device.clone()) else {
                return None;
            };
            let (resume_seq, metadata) = c
                .extra
                .as_ref()
                .map_or((0, HashMap::new()), |e| (e.resume_seq, e.metadata.clone()));
            Some(SessionEvent::Online {
                conn_id: id,
                user,
                device,
                resume_seq,
                metadata,
                resync,
            })
        });
        if let Some(Some(ev)) = ev {
            self.backend.event(ev);
        }
    }

    /// Refuses a login: its subscription cannot be confirmed (the node is
    /// out, or the auth deadline passed while waiting). Whatever was queued
    /// behind the held AuthOk goes; the client sees only the AuthError.
    pub fn refuse_login(&self, key: ConnKey) {
        let id = key.id();
        if let Some(t) = self.reach.held.borrow_mut().get_mut(&id) {
            *t = REFUSED;
        }
        self.with_conn(key, |c| {
            debug_assert!(c.out_off == 0, "a held connection wrote nothing");
            c.out = Default::default();
            c.out_bytes = 0;
        });
        CoreMetrics::inc(&self.metrics.auth_failures);
        let err = Body::AuthError(pb::AuthError {
            code: ErrorCode::BackendUnavailable as i32,
            message: "this gateway cannot reach NATS, so pushes could not reach you: \
                      reconnect (to another node) after a short wait"
                .into(),
        });
        self.close(key, CloseReason::NodeUnavailable, Some(err));
    }

    /// The core's subscriptions are gone (NATS connection lost).
    pub fn nats_down(&self) {
        if self.reach.down_since.get().is_none() {
            self.reach.down_since.set(Some(Instant::now()));
        }
        // Logins released before the loss were online before it: they are
        // re-announced at the next `Up` like every other session.
        self.reach.fresh.borrow_mut().clear();
    }

    /// The core's subscriptions are all in place again: sessions that were
    /// online before get their online event again (`resync`).
    pub async fn nats_up(&self) {
        let was_down = self.reach.down_since.take().is_some();
        let was_out = self.reach.out.replace(false);
        let fresh = std::mem::take(&mut *self.reach.fresh.borrow_mut());
        if was_out {
            tracing::info!(
                core = self.index,
                "NATS subscriptions restored: this node takes logins again"
            );
        }
        if !was_down {
            return;
        }
        let sessions: Vec<ConnKey> = {
            let st = self.state.borrow();
            st.conns
                .iter()
                .filter(|(_, c)| c.authed() && c.close.is_none())
                .map(|(_, c)| c.key())
                .filter(|k| !fresh.contains(&k.id()) && !self.held(k.id()))
                .collect()
        };
        if sessions.is_empty() {
            return;
        }
        tracing::info!(
            core = self.index,
            sessions = sessions.len(),
            "NATS subscriptions restored: online events sent again (resync) so backends replay what may have been missed"
        );
        for (k, &key) in sessions.iter().enumerate() {
            self.online(key, true);
            CoreMetrics::inc(&self.metrics.resyncs);
            if k % RESYNC_BATCH == RESYNC_BATCH - 1 {
                glommio::yield_if_needed().await;
            }
        }
    }

    /// Called about every 100 ms: a core whose subscriptions have been
    /// down for `restore_deadline_ms` takes the node out. True when it just
    /// went out (the caller starts the evacuation).
    pub fn outage_check(&self, restore_deadline: Duration) -> bool {
        let Some(since) = self.reach.down_since.get() else {
            return false;
        };
        if self.reach.out.get() || since.elapsed() < restore_deadline {
            return false;
        }
        self.reach.out.set(true);
        self.reach
            .episode
            .set(self.reach.episode.get().wrapping_add(1));
        true
    }

    /// The node is out: refuse held logins, then tell sessions to go
    /// elsewhere (GoAway spread over `drain_spread_ms`), and close the ones
    /// still here at `drain_deadline_ms` if NATS has not come back.
    pub async fn evacuate(self: Rc<Self>) {
        let held: Vec<u64> = self
            .reach
            .held
            .borrow()
            .iter()
            .filter(|&(_, &t)| t != REFUSED)
            .map(|(&id, _)| id)
            .collect();
        for id in held {
            self.refuse_login(ConnKey::from_id(id));
        }
        let sessions = self.session_ids();
        tracing::warn!(
            core = self.index,
            sessions = sessions.len(),
            deadline_ms = self.cfg().nats.restore_deadline_ms,
            "NATS subscriptions not restored within nats.restore_deadline_ms: this node is out (not ready); logins are refused and sessions are told to reconnect elsewhere (GoAway NODE_UNAVAILABLE)"
        );
        let started = Instant::now();
        let episode = self.reach.episode.get();
        let still_out =
            || self.reach.out.get() && self.reach.episode.get() == episode && !self.stopping.get();
        self.spread_goaways(&sessions, CloseReason::NodeUnavailable, started, &still_out)
            .await;
        let deadline = started + Duration::from_millis(self.cfg().drain_deadline_ms as u64);
        while still_out() && Instant::now() < deadline && self.conn_count() > 0 {
            self.sleep(super::lifecycle::DRAIN_POLL).await;
        }
        if !still_out() {
            return;
        }
        for key in self.session_ids() {
            self.close(key, CloseReason::NodeUnavailable, None);
        }
    }

    /// The key of every open session.
    pub(super) fn session_ids(&self) -> Vec<ConnKey> {
        let st = self.state.borrow();
        st.conns
            .iter()
            .filter(|(_, c)| c.authed() && c.close.is_none())
            .map(|(_, c)| c.key())
            .collect()
    }
}

/// Resync events sent before the core yields to other work.
const RESYNC_BATCH: usize = 1024;
