//! The core side of the NATS bridge: a [`Backend`] that turns upstream
//! frames into NATS requests, session events into publishes, and interest
//! changes into subscriptions. One per core; it holds only channel ends.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use gw_proto::{pb, ErrorCode};

use super::bridge::{Answers, BridgeStats, Call, CoreLink, ToNats};
use super::contract::{self, Subjects};
use super::interest::{Event, Interest as Subscriptions};
use crate::backend::{
    Backend, BackendFactory, BackendReply, Interest, LocalBoxFuture, SessionEvent, UpstreamRequest,
};
use crate::metrics::LogLimit;

pub struct NatsBackend {
    tx: flume::Sender<ToNats>,
    /// Answers to this core's requests.
    replies: Rc<super::replies::Replies>,
    subs: Subscriptions,
    subjects: Subjects,
    node: String,
    stats: Arc<BridgeStats>,
    /// Limits the log of dropped events.
    dropped_log: LogLimit,
}

/// Hands each core its link; `inbound` is taken by the server for the
/// core's inbound task.
pub struct NatsFactory {
    links: Mutex<Vec<Option<CoreLink>>>,
    subjects: Subjects,
    node: String,
    stats: Arc<BridgeStats>,
}

impl NatsFactory {
    pub fn new(links: Vec<CoreLink>, cfg: &crate::Config, stats: Arc<BridgeStats>) -> NatsFactory {
        NatsFactory {
            links: Mutex::new(links.into_iter().map(Some).collect()),
            subjects: Subjects::new(&cfg.nats.prefix),
            node: cfg.node_id.clone(),
            stats,
        }
    }

    /// The inbound end of a core's subscriptions (once).
    pub fn take_inbound(&self, core: usize) -> Option<(flume::Receiver<Event>, Subscriptions)> {
        let links = self.links.lock().ok()?;
        let l = links.get(core)?.as_ref()?;
        Some((l.inbound.clone(), l.interest.clone()))
    }

    /// Each core's subscription connection and request client, for
    /// readiness (`/readyz`).
    pub fn health(&self) -> Vec<super::CoreHealth> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .flatten()
            .map(|l| super::CoreHealth {
                subscriptions: l.interest.clone(),
                requests: l.requests.clone(),
            })
            .collect()
    }

    /// Closes every subscription connection and lets go of the request
    /// channels, so the bridge tasks end once the cores have (at shutdown).
    pub fn close(&self) {
        if let Ok(mut links) = self.links.lock() {
            for l in links.drain(..).flatten() {
                l.interest.close();
            }
        }
    }
}

impl BackendFactory for NatsFactory {
    fn for_core(&self, core: usize) -> Rc<dyn Backend> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let l = links
            .get(core)
            .and_then(|l| l.as_ref())
            .expect("one NATS link per core, made by nats::bridge::start");
        Rc::new(NatsBackend {
            tx: l.tx.clone(),
            replies: super::replies::Replies::start(l.wake.clone()),
            subs: l.interest.clone(),
            subjects: self.subjects.clone(),
            node: self.node.clone(),
            stats: self.stats.clone(),
            dropped_log: LogLimit::default(),
        })
    }
}

fn unavailable(msg: &str) -> BackendReply {
    BackendReply::error(ErrorCode::BackendUnavailable, msg)
}

impl NatsBackend {
    fn publish(&self, kind: &str, payload: bytes::Bytes) {
        let msg = ToNats::Publish {
            subject: self.subjects.event(kind),
            payload,
        };
        if self.tx.try_send(msg).is_err() {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
            if self.dropped_log.allow() {
                tracing::warn!(kind, "NATS bridge queue full (nats.bridge_queue_max): session event dropped; see gateway_nats_events_dropped_total");
            }
        }
    }
}

impl Backend for NatsBackend {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        let (reply, answer) = self.replies.expect();
        let mut headers = vec![
            (contract::H_NODE, self.node.clone()),
            (contract::H_CONN, req.conn_id.to_string()),
            (contract::H_USER, req.user.to_string()),
            (contract::H_DEVICE, req.device.to_string()),
            (contract::H_MSG_ID, req.client_msg_id),
        ];
        // Gw-Room only when the client named a room (PROTOCOL.md §14.2).
        if !req.room.is_empty() {
            headers.push((contract::H_ROOM, req.room));
        }
        let msg = ToNats::Request(Box::new(Call {
            headers,
            route: req.route,
            payload: req.payload,
            reply: Answers::One(reply),
        }));
        let tx = self.tx.clone();
        Box::pin(async move {
            if crate::core::wake::send(&tx, msg).await.is_err() {
                return unavailable("the NATS bridge has stopped");
            }
            answer.get().await
        })
    }

    /// One request carrying an `UpstreamBatch` (PROTOCOL.md §14.2.1); each
    /// item's answer comes back on its own.
    fn upstream_batch(&self, items: Vec<UpstreamRequest>) -> Vec<LocalBoxFuture<BackendReply>> {
        let Some(first) = items.first() else {
            return Vec::new();
        };
        let (route, room) = (first.route.clone(), first.room.clone());
        let n = items.len();
        let mut tos = Vec::with_capacity(n);
        let mut answers = Vec::with_capacity(n);
        let mut batch = pb::UpstreamBatch::default();
        for req in items {
            debug_assert!(
                req.route == route && req.room == room,
                "one route and room per batch"
            );
            let (to, answer) = self.replies.expect();
            tos.push(to);
            answers.push(answer);
            batch.items.push(pb::UpstreamItem {
                conn_id: req.conn_id,
                user: req.user.to_string(),
                device: req.device.to_string(),
                client_msg_id: req.client_msg_id,
                payload: req.payload,
            });
        }
        let msg = ToNats::Request(Box::new(Call {
            headers: vec![
                (contract::H_NODE, self.node.clone()),
                (contract::H_ROOM, room),
                (contract::H_BATCH, n.to_string()),
            ],
            route,
            payload: contract::to_bytes(&batch),
            reply: Answers::Batch(tos),
        }));
        // Sent once, from its own task; the answers wait on their own. If
        // the bridge has stopped, the dropped ReplyTos answer
        // BACKEND_UNAVAILABLE.
        let tx = self.tx.clone();
        crate::core::wake::spawn(async move {
            let _ = crate::core::wake::send(&tx, msg).await;
        })
        .detach();
        answers
            .into_iter()
            .map(|answer| -> LocalBoxFuture<BackendReply> { Box::pin(answer.get()) })
            .collect()
    }

    fn event(&self, ev: SessionEvent) {
        match ev {
            SessionEvent::Online {
                conn_id,
                user,
                device,
                resume_seq,
                metadata,
                resync,
            } => {
                let mut e = contract::online_event(
                    &self.node, conn_id, &user, &device, resume_seq, metadata,
                );
                e.resync = resync;
                // The core sends this only once the user's subscription is
                // confirmed by the server, so a backend that pushes on
                // `online` (to replay what the client missed) finds the
                // user whichever connection the event leaves on.
                self.publish("online", contract::to_bytes(&e));
            }
            SessionEvent::Offline {
                conn_id,
                user,
                device,
                reason,
            } => {
                let e = contract::offline_event(&self.node, conn_id, &user, &device, reason);
                self.publish("offline", contract::to_bytes(&e));
            }
            SessionEvent::Undelivered {
                conn_id,
                user,
                device,
                room,
                pushes,
            } => {
                let e = gw_proto::pb::UndeliveredEvent {
                    node: self.node.clone(),
                    conn_id,
                    user: user.to_string(),
                    device: device.to_string(),
                    pushes: pushes.iter().map(contract::undelivered_push).collect(),
                    at_unix_ms: contract::unix_ms(),
                    room: room.map(|r| r.to_string()).unwrap_or_default(),
                };
                self.publish("undelivered", contract::to_bytes(&e));
            }
        }
    }

    fn interest(&self, what: Interest<'_>, on: bool) -> Option<u64> {
        let (name, subject) = self.subject(what);
        if !contract::valid_name(name) {
            tracing::warn!(name, "a user or room name that cannot be a NATS subject: pushes over NATS cannot reach it");
            return None;
        }
        if on {
            self.subs.sub(&subject, None)
        } else {
            self.subs.unsub(&subject);
            None
        }
    }

    fn ticket(&self, what: Interest<'_>) -> Option<u64> {
        let (name, subject) = self.subject(what);
        if !contract::valid_name(name) {
            return None;
        }
        self.subs.ticket(&subject)
    }
}

impl NatsBackend {
    fn subject<'a>(&self, what: Interest<'a>) -> (&'a str, String) {
        match what {
            Interest::User(u) => (u, self.subjects.user(u)),
            Interest::Room(r) => (r, self.subjects.room(r)),
        }
    }
}
