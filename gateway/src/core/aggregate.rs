//! Aggregated upstreams of live rooms (PROTOCOL.md §14.2.1, OPERATIONS.md
//! "Live rooms").
//!
//! A quiz room's members answer at once. For a route listed in
//! `rooms.aggregate_routes`, the upstream frames naming the same room are
//! gathered on this core for `rooms.coalesce_window_ms` (or until
//! `rooms.aggregate_items_max` are waiting, or the next would take it past
//! `rooms.aggregate_bytes_max`) and handed to the backend
//! together (`Backend::upstream_batch`: over NATS one request carrying an
//! `UpstreamBatch`, answered by one `BatchReply`). Each frame keeps its own
//! answer: its task (`conn/frames.rs`, `run_upstream`) waits for it under
//! its own `upstream_timeout_ms`, which the window counts in, and applies
//! it as any reply (ops, reply, pushes).
//!
//! Nothing is held per connection: an entry per (route, room) gathering,
//! and one timer task per gathering batch.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use gw_proto::ErrorCode;

use super::Core;
use crate::backend::{BackendReply, LocalBoxFuture, UpstreamRequest};
use crate::metrics::CoreMetrics;

/// Where one gathered frame's answer goes: the backend's future for it.
type Slot = flume::Sender<LocalBoxFuture<BackendReply>>;

/// The frames of one route and room gathering on this core.
struct Gathering {
    /// Tells this batch's timer from a later batch's of the same key.
    generation: u64,
    items: Vec<(UpstreamRequest, Slot)>,
    /// The items' bytes once encoded, about (`item_bytes`).
    bytes: usize,
}

/// Bytes an item takes in an `UpstreamBatch`, at most: its fields, their
/// tags and lengths, the conn id, the item's own tag and length.
fn item_bytes(req: &UpstreamRequest) -> usize {
    req.payload.len() + req.user.len() + req.device.len() + req.client_msg_id.len() + 40
}

/// The gathering batches of one core, by (route, room).
#[derive(Default)]
pub struct Aggregates {
    map: RefCell<HashMap<(String, String), Gathering>>,
    generation: Cell<u64>,
}

impl Core {
    /// The answer to `req` (a frame of an aggregated route naming a room),
    /// once its batch has gone to the backend and been answered.
    pub fn aggregated_upstream(
        self: &Rc<Self>,
        req: UpstreamRequest,
    ) -> LocalBoxFuture<BackendReply> {
        let (tx, rx) = flume::bounded(1);
        let key = (req.route.clone(), req.room.clone());
        let (items_max, bytes_max) = {
            let rc = &self.cfg().rooms;
            (
                rc.aggregate_items_max as usize,
                rc.aggregate_bytes_max as usize,
            )
        };
        let bytes = item_bytes(&req);
        // This item would take the gathering past its bytes: it goes first.
        let over = self
            .aggregates
            .map
            .borrow()
            .get(&key)
            .is_some_and(|g| g.bytes + bytes > bytes_max);
        if over {
            self.send_aggregate(&key, None);
        }
        let (started, full, generation) = {
            let mut map = self.aggregates.map.borrow_mut();
            let g = map.entry(key.clone()).or_insert_with(|| {
                let generation = self.aggregates.generation.get() + 1;
                self.aggregates.generation.set(generation);
                Gathering {
                    generation,
                    items: Vec::new(),
                    bytes: 0,
                }
            });
            g.items.push((req, tx));
            g.bytes += bytes;
            (g.items.len() == 1, g.items.len() >= items_max, g.generation)
        };
        if full {
            self.send_aggregate(&key, None);
        } else if started {
            let core = self.clone();
            let window = Duration::from_millis(self.cfg().rooms.coalesce_window_ms.into());
            super::wake::spawn(async move {
                core.sleep(window).await;
                core.send_aggregate(&key, Some(generation));
            })
            .detach();
        }
        Box::pin(async move {
            match rx.recv_async().await {
                Ok(answer) => answer.await,
                // The core dropped the batch (it cannot: every gathered
                // frame is sent); answered rather than left hanging.
                Err(_) => BackendReply::error(ErrorCode::Internal, "aggregated request lost"),
            }
        })
    }

    /// Sends the batch of `key` to the backend (only if it is still batch
    /// `generation`, when given: a full batch went early).
    fn send_aggregate(&self, key: &(String, String), generation: Option<u64>) {
        let items = {
            let mut map = self.aggregates.map.borrow_mut();
            let this = map
                .get(key)
                .is_some_and(|g| generation.is_none_or(|n| n == g.generation));
            if !this {
                return;
            }
            map.remove(key).map(|g| g.items).unwrap_or_default()
        };
        debug_assert!(!items.is_empty(), "a gathering holds its first frame");
        CoreMetrics::inc(&self.metrics.upstream_aggregates);
        CoreMetrics::add(&self.metrics.upstream_aggregated, items.len() as u64);
        let (reqs, slots): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let answers = self.backend.upstream_batch(reqs);
        debug_assert_eq!(answers.len(), slots.len(), "one answer per item");
        for (slot, answer) in slots.into_iter().zip(answers) {
            // A frame whose task gave up (timeout, closed) no longer waits.
            let _ = slot.try_send(answer);
        }
    }
}
