//! A backend that records every undelivered push with its payload and can
//! stall on demand.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::backend::{
    Backend, BackendFactory, BackendReply, LocalBoxFuture, PushOrder, SessionEvent, Target,
    UndeliveredReason, UpstreamRequest,
};
use gateway::{Config, GatewayHandle};
use gw_proto::{CloseReason, ErrorCode};

use super::super::WAIT;

/// Route of the ack-required pushes the fault backend sends.
pub const PUSH_ROUTE: &str = "fault.push";

/// What the fault backend was told by the gateway, payloads included.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Online {
        conn_id: u64,
        user: String,
    },
    Offline {
        conn_id: u64,
        user: String,
        reason: CloseReason,
    },
    Undelivered {
        conn_id: u64,
        user: String,
        seq: u64,
        payload: String,
        reason: UndeliveredReason,
    },
}

/// A backend for fault tests (one shared state for every core). Routes:
/// - `echo`: the payload back;
/// - `push` `"<conn_id> <text>"`: an ack-required push of `text` to that
///   connection (so a push to a connection already gone is reported
///   NO_CONNECTION: every push is accounted for);
/// - `fill` `"<conn_id> <bytes>"`: a push of that many bytes, no ack;
/// - `work`: the payload back, but only once the backend is not stalled.
///   Each `work` future alive is counted (`live`, `peak`), so a test sees
///   how much work a stalled backend was made to hold.
#[derive(Clone, Default)]
pub struct FaultBackend {
    events: Arc<Mutex<Vec<Event>>>,
    stalled: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct CoreBackend(FaultBackend);

/// Counts one `work` future alive until it is dropped (answered, or
/// dropped by the gateway at `upstream_timeout_ms`).
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn conn_and_rest(payload: &[u8]) -> Option<(u64, String)> {
    let s = std::str::from_utf8(payload).ok()?;
    let (id, rest) = s.split_once(' ')?;
    Some((id.parse().ok()?, rest.to_string()))
}

impl Backend for CoreBackend {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        let b = &self.0;
        let reply = match req.route.as_str() {
            "echo" => BackendReply::ok(req.payload),
            "push" | "fill" => match conn_and_rest(&req.payload) {
                Some((conn_id, rest)) => {
                    let (payload, ack_required) = if req.route == "push" {
                        (Bytes::from(rest), true)
                    } else {
                        let n: usize = rest.parse().unwrap_or(0);
                        (Bytes::from(vec![b'f'; n]), false)
                    };
                    let mut r = BackendReply::ok(Bytes::new());
                    r.pushes.push(PushOrder {
                        target: Target::Conn(conn_id),
                        route: PUSH_ROUTE.into(),
                        payload,
                        ack_required,
                        priority: gw_proto::pb::Priority::Normal,
                    });
                    r
                }
                None => BackendReply::error(ErrorCode::BadRequest, "want \"<conn_id> <text>\""),
            },
            "work" => {
                let n = b.live.fetch_add(1, Ordering::SeqCst) + 1;
                b.peak.fetch_max(n, Ordering::SeqCst);
                let alive = Alive(b.live.clone());
                let stalled = b.stalled.clone();
                return Box::pin(async move {
                    let _alive = alive;
                    while stalled.load(Ordering::SeqCst) {
                        gateway::core::timers::sleep(Duration::from_millis(5)).await;
                    }
                    BackendReply::ok(req.payload)
                });
            }
            _ => BackendReply::error(ErrorCode::UnknownRoute, "no such route"),
        };
        Box::pin(std::future::ready(reply))
    }

    fn event(&self, ev: SessionEvent) {
        let mut log = self.0.events.lock().unwrap();
        match ev {
            SessionEvent::Online { conn_id, user, .. } => log.push(Event::Online {
                conn_id,
                user: user.to_string(),
            }),
            SessionEvent::Offline {
                conn_id,
                user,
                reason,
                ..
            } => log.push(Event::Offline {
                conn_id,
                user: user.to_string(),
                reason,
            }),
            SessionEvent::Undelivered {
                conn_id,
                user,
                pushes,
                ..
            } => {
                for p in pushes {
                    log.push(Event::Undelivered {
                        conn_id,
                        user: user.to_string(),
                        seq: p.seq,
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        reason: p.reason,
                    });
                }
            }
        }
    }
}

impl BackendFactory for FaultBackend {
    fn for_core(&self, _core: usize) -> Rc<dyn Backend> {
        Rc::new(CoreBackend(self.clone()))
    }
}

impl FaultBackend {
    /// Starts an in-process gateway served by this backend.
    pub fn start(&self, cfg: Config) -> GatewayHandle {
        gateway::start(cfg, Arc::new(self.clone()), false).expect("gateway starts")
    }
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
    /// `work` futures alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
    /// Most `work` futures ever alive at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    /// The close reason of a connection, once it went offline.
    pub fn offline(&self, conn_id: u64) -> Option<CloseReason> {
        self.events().iter().find_map(|e| match e {
            Event::Offline {
                conn_id: c, reason, ..
            } if *c == conn_id => Some(*reason),
            _ => None,
        })
    }
    /// Every undelivered push reported: (payload, conn_id, reason).
    pub fn undelivered(&self) -> Vec<(String, u64, UndeliveredReason)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Undelivered {
                    payload,
                    conn_id,
                    reason,
                    ..
                } => Some((payload, conn_id, reason)),
                _ => None,
            })
            .collect()
    }
    /// Waits (up to WAIT) until `pred` holds.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&FaultBackend) -> bool) {
        let t = Instant::now();
        while !pred(self) {
            assert!(
                t.elapsed() < WAIT,
                "timed out waiting for {what}; events: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
