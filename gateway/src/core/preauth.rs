//! The pre-auth budget: what connections that have not authenticated yet
//! make a core buffer (a partial frame, a WebSocket upgrade request or
//! message fragments, a TLS handshake and its partial records) is counted
//! per core and bounded by `preauth_bytes_per_core_max`. Past it, the
//! *oldest* unauthenticated connections are closed (`PREAUTH_LIMIT`)
//! until the budget holds again: a flood of clients that never
//! authenticate costs a bounded amount of memory, and clients that do
//! authenticate (in milliseconds, so never the oldest) keep getting in.
//!
//! The charge of a connection is a function of its state (`bytes`), taken
//! before and after each read and at teardown, so the core's total is kept
//! exact without a per-connection field.

use gw_proto::CloseReason;

use super::{Conn, ConnKey, Core};

/// Bytes a connection not authenticated yet holds; 0 once authenticated.
pub fn bytes(c: &Conn) -> usize {
    if c.authed() {
        return 0;
    }
    c.partial.capacity() + c.layers_buffered()
}

impl Core {
    /// Records a change of one unauthenticated connection's charge (taken
    /// before and after the change), and evicts the oldest unauthenticated
    /// connections while the core is over its budget.
    pub fn preauth_changed(&self, id: u64, before: usize, after: usize) {
        if after > before {
            if before == 0 {
                let mut order = self.preauth.order.borrow_mut();
                order.push_back(id);
                // Entries of connections that authenticated since stay until
                // met; prune them before they outnumber the connections.
                let live = self.conn_count();
                if order.len() > 2 * live + 1024 {
                    order.retain(|&id| {
                        self.with_conn(ConnKey::from_id(id), |c| bytes(c) > 0)
                            .unwrap_or(false)
                    });
                }
            }
            self.preauth
                .bytes
                .set(self.preauth.bytes.get() + (after - before));
            self.preauth_evict();
        } else {
            self.preauth.release(before - after);
        }
    }

    /// Closes the oldest unauthenticated connections until the core's
    /// pre-auth bytes fit the budget again.
    fn preauth_evict(&self) {
        let max = self.cfg().preauth_bytes_per_core_max as usize;
        let mut over = self.preauth.bytes.get().saturating_sub(max);
        while over > 0 {
            let Some(id) = self.preauth.order.borrow_mut().pop_front() else {
                return;
            };
            let key = ConnKey::from_id(id);
            // Gone, authenticated, or already closing: not counted any more
            // (or released at its teardown).
            let Some(charge) = self
                .with_conn(key, |c| (c.close.is_none()).then(|| bytes(c)))
                .flatten()
                .filter(|&b| b > 0)
            else {
                continue;
            };
            crate::metrics::CoreMetrics::inc(&self.metrics.preauth_evictions);
            if self.preauth_log.allow() {
                tracing::warn!(
                    core = self.index,
                    budget = max,
                    "unauthenticated connections hold more than preauth_bytes_per_core_max: closing the oldest (PREAUTH_LIMIT); a flood of clients that never authenticate?"
                );
            }
            let busy = Core::error_body(
                gw_proto::ErrorCode::Busy,
                "too many unauthenticated connections; retry",
                self.cfg().busy_retry_after_ms,
            );
            let framed = self.with_conn(key, |c| c.speaks_frames()).unwrap_or(false);
            self.close(key, CloseReason::PreauthLimit, framed.then_some(busy));
            over = over.saturating_sub(charge);
        }
    }
}

/// Per-core pre-auth accounting.
#[derive(Default)]
pub struct Preauth {
    /// Bytes charged to unauthenticated connections now.
    pub bytes: std::cell::Cell<usize>,
    /// Unauthenticated connections with a charge, oldest first (ids of
    /// connections gone or authenticated since are skipped when met).
    pub order: std::cell::RefCell<std::collections::VecDeque<u64>>,
}

impl Preauth {
    /// Gives back a connection's charge (it shrank, authenticated, or closed).
    pub fn release(&self, n: usize) {
        debug_assert!(n <= self.bytes.get(), "pre-auth bytes released twice");
        self.bytes.set(self.bytes.get().saturating_sub(n));
        let mut order = self.order.borrow_mut();
        if self.bytes.get() == 0 && order.capacity() > 1024 {
            *order = Default::default(); // after a flood: give the memory back
        } else if self.bytes.get() == 0 {
            order.clear();
        }
    }
}
