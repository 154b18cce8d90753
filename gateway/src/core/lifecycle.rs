//! End of a connection, and of the core: teardown reports every closed
//! session to the backend (offline, with the close reason) and every push
//! still unacknowledged (undelivered). Drain and stop run from the inbox.

use std::rc::Rc;
use std::time::{Duration, Instant};

use gw_proto::pb::{self, frame::Body};
use gw_proto::CloseReason;

use super::deliver::{remove_member, Wired};
use super::delivery;
use super::ByKey;
use super::{ConnKey, Core, CoreMsg};
use crate::backend::{Interest, SessionEvent, UndeliveredReason};

/// How often a draining core checks whether its clients have left.
pub(super) const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long a stopping core waits for its I/O loop and accept task to end.
const TASKS_EXIT_WAIT: Duration = Duration::from_secs(1);

impl Core {
    /// Closes a connection's socket, removes it and reports it. Idempotent.
    pub fn teardown(&self, key: ConnKey) {
        let idx = key.idx();
        let id = key.id();
        let conn = {
            let mut st = self.state.borrow_mut();
            if !st.conns.holds(key) {
                return;
            }
            let c = st.conns.remove(idx as usize);
            self.preauth.release(super::preauth::bytes(&c));
            // FIN now (shutdown first, even if something else holds the
            // file), then close: directly, or through the ring (behind a
            // send still queued or in flight there).
            self.io.close(c.fd, c.flags.send_inflight());
            if let Some(u) = &c.user {
                if remove_member(&mut st.users, u, idx) {
                    self.backend.interest(Interest::User(u), false);
                }
                st.sessions -= 1;
            }
            for r in c.rooms() {
                if remove_member(&mut st.rooms, r, idx) {
                    self.backend.interest(Interest::Room(r), false);
                }
            }
            c
        };
        self.accepted.borrow_mut().remove(&id);
        let reason = conn.close.unwrap_or(CloseReason::Unspecified);
        self.metrics.closed(reason);
        let mut conn = conn;
        // A login still held (or refused) never went online: no events
        // about the session, only the pushes it had taken.
        let was_online = self.unhold(id);
        if let (Some(user), Some(device)) = (conn.user.clone(), conn.device.clone()) {
            // The window in seq order, then what waited for it (seq 0).
            let unacked = delivery::hand_back(&mut Wired::new(self, &mut conn));
            self.report_undelivered(
                id,
                user.clone(),
                device.clone(),
                unacked,
                UndeliveredReason::ConnectionClosed(reason),
            );
            if was_online {
                self.backend.event(SessionEvent::Offline {
                    conn_id: id,
                    user,
                    device,
                    reason,
                });
            }
        }
        tracing::trace!(conn_id = id, reason = reason.as_str_name(), "closed");
    }

    /// Closes every connection now with `reason` and reports them.
    pub fn close_all(&self, reason: CloseReason) {
        let keys: Vec<ConnKey> = {
            let mut st = self.state.borrow_mut();
            st.conns
                .iter_mut()
                .map(|(_, c)| {
                    c.close.get_or_insert(reason);
                    c.key()
                })
                .collect()
        };
        for key in keys {
            self.teardown(key);
        }
    }

    /// Stops accepting: the accept task sees `draining` and closes the listener.
    fn stop_accepting(&self) {
        self.draining.set(true);
        self.listener_ready();
    }

    /// Graceful drain: stop accepting, close connections that never
    /// authenticated, then send each session a GoAway, spread evenly over
    /// `drain_spread_ms` so that clients do not all reconnect at once. Each
    /// GoAway carries `goaway_retry_after_ms` plus a random jitter and the
    /// `goaway_endpoints` to try. Sessions still open at
    /// `drain_deadline_ms` are closed (their unacked pushes are reported
    /// undelivered by `teardown`). Returns when the core is empty.
    pub async fn drain(&self) {
        self.stop_accepting();
        let started = Instant::now();
        let ids: Vec<(ConnKey, bool, bool)> = {
            let st = self.state.borrow();
            st.conns
                .iter()
                .map(|(_, c)| (c.key(), c.authed(), c.speaks_frames()))
                .collect()
        };
        let mut sessions = Vec::with_capacity(ids.len());
        for (key, authed, framed) in ids {
            if authed {
                sessions.push(key);
            } else if framed {
                // Not a session yet but speaks frames: told at once where
                // to go, so a login racing the drain reconnects elsewhere
                // instead of seeing a bare close.
                self.close(key, CloseReason::Drain, Some(self.drain_goaway()));
            }
            // A connection still in its TLS or WebSocket handshake, or that
            // sent nothing yet, gets the same GoAway when its Auth arrives
            // (`conn/frames.rs`), or is reaped at `auth_timeout_ms`.
        }
        let deadline = started + Duration::from_millis(self.cfg().drain_deadline_ms as u64);
        tracing::info!(
            core = self.index,
            sessions = sessions.len(),
            spread_ms = self.cfg().drain_spread_ms,
            "drain: GoAways spread over the window"
        );
        let before_deadline = || Instant::now() < deadline;
        self.spread_goaways(&sessions, CloseReason::Drain, started, &before_deadline)
            .await;
        while self.conn_count() > 0 && before_deadline() {
            self.sleep(DRAIN_POLL).await;
        }
        let left = self.conn_count();
        if left > 0 {
            tracing::info!(
                core = self.index,
                left,
                "drain deadline reached; closing the remaining connections"
            );
        }
        self.close_all(CloseReason::Drain);
        // Upstream requests still at a backend may answer with pushes;
        // wait for them (bounded) so those are routed or reported.
        let bound = Instant::now() + Duration::from_millis(self.cfg().upstream_timeout_ms as u64);
        while self.state.borrow().upstream_inflight > 0 && Instant::now() < bound {
            self.sleep(DRAIN_POLL).await;
        }
    }

    /// The GoAway of a drain: `goaway_retry_after_ms` (no jitter) and the
    /// `goaway_endpoints` to try.
    pub fn drain_goaway(&self) -> Body {
        drain_goaway(
            self.cfg().goaway_retry_after_ms,
            &self.cfg().goaway_endpoints,
        )
    }

    /// Sends each of `sessions` a GoAway with `reason`, the k-th of n at
    /// `drain_spread_ms * k / n` after `started`, each with
    /// `goaway_retry_after_ms` plus a random jitter and the
    /// `goaway_endpoints` to try, so that clients do not all reconnect at
    /// once. Returns when all are sent, or early once `go_on` says no.
    pub(super) async fn spread_goaways(
        &self,
        sessions: &[ConnKey],
        reason: CloseReason,
        started: Instant,
        go_on: &dyn Fn() -> bool,
    ) {
        let spread = Duration::from_millis(self.cfg().drain_spread_ms as u64);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut rng = Jitter::new(seed ^ self.index as u64);
        let n = sessions.len();
        let mut sent = 0;
        while sent < n && go_on() {
            // Session k of n gets its GoAway at spread * k / n.
            let due = if spread.is_zero() {
                n
            } else {
                let frac = started.elapsed().as_secs_f64() / spread.as_secs_f64();
                ((frac * n as f64).floor() as usize + 1).min(n)
            };
            for &key in &sessions[sent..due] {
                let cfg = self.cfg();
                let retry = cfg
                    .goaway_retry_after_ms
                    .saturating_add(rng.below(cfg.goaway_retry_jitter_ms as u64 + 1) as u32);
                let g = goaway_to(reason, retry, &cfg.goaway_endpoints);
                self.send_frame(key, g);
            }
            sent = due;
            if sent < n {
                self.sleep(DRAIN_POLL).await;
            }
        }
    }

    /// Ends the I/O loop and the accept task while the executor still runs.
    /// A pending task is owned by its wakers, and the core holds theirs: left
    /// pending, they would keep the core (and its epoll fd) alive.
    async fn stop_tasks(&self) {
        self.stopping.set(true);
        self.wake_io(); // the I/O loop sees `stopping` and ends
        self.rooms.wake(); // and so does the rooms' flusher
        let deadline = Instant::now() + TASKS_EXIT_WAIT;
        let running = || {
            self.io_running.get()
                || self.accept_running.get()
                || self.ticks_running.get()
                || self.rooms.running.get()
                || self.nats_running.get()
        };
        while running() && Instant::now() < deadline {
            self.sleep(Duration::from_millis(1)).await;
        }
        self.drop_wakers();
    }

    /// Delivers the pushes waiting in the inbox (against whatever
    /// connections are left); other messages are moot once stopping.
    fn deliver_queued(&self, rx: &flume::Receiver<CoreMsg>) {
        while let Ok(msg) = rx.try_recv() {
            if let CoreMsg::Push {
                target,
                body,
                ack_required,
                priority,
                tally,
            } = msg
            {
                self.deliver_counted(&target, &body, ack_required, priority, tally.as_deref());
            }
        }
    }

    /// Serves the inbox until Stop, or until a drain completes.
    pub async fn run_inbox(self: Rc<Self>, rx: flume::Receiver<CoreMsg>) {
        let mut drain_task: Option<glommio::task::JoinHandle<()>> = None;
        while let Ok(msg) = super::wake::recv(&rx).await {
            match msg {
                CoreMsg::Push {
                    target,
                    body,
                    ack_required,
                    priority,
                    tally,
                } => {
                    self.deliver_counted(&target, &body, ack_required, priority, tally.as_deref());
                }
                CoreMsg::Op(op) => {
                    self.apply_op(op);
                }
                CoreMsg::Tls(cfg) => *self.tls.borrow_mut() = Some(cfg),
                CoreMsg::Reload(cfg, verifier) => self.reload(&cfg, verifier),
                CoreMsg::Snapshot(tx) => {
                    let _ = tx.try_send(self.snapshot());
                }
                CoreMsg::Connz(q, tx) => {
                    let _ = tx.try_send(self.connz(&q));
                }
                CoreMsg::Drain => {
                    if drain_task.is_none() {
                        let core = self.clone();
                        let me = self.mesh.get(self.index).cloned();
                        drain_task = Some(
                            super::wake::spawn(async move {
                                core.drain().await;
                                if let Some(me) = me {
                                    let _ = me.send_from_core(CoreMsg::Stop).await;
                                }
                            })
                            .detach(),
                        );
                    }
                }
                CoreMsg::Stop => {
                    self.stop_accepting();
                    self.close_all(CloseReason::Shutdown);
                    // Pushes still queued for this core: with no connection
                    // left, ack-required ones to a connection are reported
                    // undelivered (NO_CONNECTION) instead of being dropped.
                    self.deliver_queued(&rx);
                    self.stop_tasks().await;
                    // Once more: a core that routed a push here while the
                    // tasks stopped must not lose it with the inbox.
                    self.deliver_queued(&rx);
                    return;
                }
            }
        }
    }
}

/// The GoAway of a drain: a reconnect hint and where else to go.
fn drain_goaway(retry_after_ms: u32, endpoints: &[String]) -> Body {
    goaway_to(CloseReason::Drain, retry_after_ms, endpoints)
}

/// A GoAway with a reconnect hint and where else to go.
fn goaway_to(reason: CloseReason, retry_after_ms: u32, endpoints: &[String]) -> Body {
    let mut g = goaway(reason, retry_after_ms);
    if let Body::GoAway(g) = &mut g {
        g.endpoints = endpoints.to_vec();
    }
    g
}

/// A small non-cryptographic generator for reconnect jitter (splitmix64).
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Jitter(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// A number in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// A GoAway frame.
pub fn goaway(reason: CloseReason, retry_after_ms: u32) -> Body {
    Body::GoAway(pb::GoAway {
        reason: reason as i32,
        retry_after_ms,
        endpoints: vec![],
        message: match reason {
            CloseReason::Drain => "server is draining; reconnect after retry_after_ms".into(),
            CloseReason::NodeUnavailable => {
                "this node lost NATS; reconnect (to another node) after retry_after_ms".into()
            }
            _ => String::new(),
        },
    })
}
