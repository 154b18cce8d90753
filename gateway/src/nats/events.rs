//! Session events (online, offline, undelivered) on their way to NATS.
//!
//! By default an event is a core-NATS publish: at most once. If a server
//! hangs and then dies, an event the client had already written to it is
//! lost, undelivered reports included.
//!
//! With `nats.events_confirm`, each event is a request carrying a
//! `Nats-Msg-Id` header. Whatever answers confirms it: a JetStream stream
//! on the event subjects answers with its PubAck and drops duplicates by
//! the id, or a service of your own can reply. An event with no answer
//! within `push_confirm_timeout_ms`, or with a JetStream error, is sent
//! again with the same id, backing off from 100 ms to 2 s, for up to
//! `events_confirm_window_ms`. An event still unconfirmed after that is
//! counted and logged. At most `events_confirm_inflight_max` events wait at
//! once; past that, events are published without confirmation and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Request};
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::bridge::BridgeStats;
use super::requests::Requests;
use super::NatsConfig;

const RESEND_DELAY_MIN: Duration = Duration::from_millis(100);
const RESEND_DELAY_MAX: Duration = Duration::from_secs(2);

/// How events leave this node (one per bridge, shared by the cores).
pub struct Events {
    confirm: bool,
    window: Duration,
    timeout: Duration,
    inflight_max: u32,
    inflight: Arc<Semaphore>,
    /// Events whose confirmation task still runs (for `settle`).
    pending: AtomicUsize,
    /// `settle` counted what it gave up on (once for all cores).
    abandoned_counted: AtomicBool,
    /// `<node>.<boot time>.`: message ids unique across restarts.
    id_prefix: String,
    seq: AtomicU64,
    stats: Arc<BridgeStats>,
    /// For warnings at most once a second: ms since `created` of the last one.
    created: Instant,
    logged_ms: AtomicU64,
}

impl Events {
    pub fn new(cfg: &NatsConfig, node: &str, stats: Arc<BridgeStats>) -> Events {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Events {
            confirm: cfg.events_confirm,
            window: Duration::from_millis(cfg.events_confirm_window_ms as u64),
            timeout: Duration::from_millis(cfg.push_confirm_timeout_ms as u64),
            inflight_max: cfg.events_confirm_inflight_max,
            inflight: Arc::new(Semaphore::new(cfg.events_confirm_inflight_max as usize)),
            pending: AtomicUsize::new(0),
            abandoned_counted: AtomicBool::new(false),
            id_prefix: format!("{node}.{boot}."),
            seq: AtomicU64::new(0),
            stats,
            created: Instant::now(),
            logged_ms: AtomicU64::new(0),
        }
    }

    /// Whether a warning may be logged now (at most one a second).
    fn log_allowed(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64 + 1_000;
        let last = self.logged_ms.load(Ordering::Relaxed);
        now >= last + 1_000
            && self
                .logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Sends one event: a publish, or a confirmed request on its own task.
    pub async fn send(self: &Arc<Self>, requests: &Requests, subject: String, payload: Bytes) {
        let permit = if self.confirm {
            let p = self.inflight.clone().try_acquire_owned().ok();
            if p.is_none() {
                self.stats
                    .events_unconfirmed
                    .fetch_add(1, Ordering::Relaxed);
                if self.log_allowed() {
                    tracing::warn!(max = self.inflight_max, "events awaiting confirmation are at nats.events_confirm_inflight_max: this event goes out unconfirmed");
                }
            }
            p
        } else {
            None
        };
        let Some(permit) = permit else {
            if let Err(e) = requests.current().publish(subject, payload).await {
                self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "NATS publish of a session event failed");
            }
            return;
        };
        let id = format!(
            "{}{}",
            self.id_prefix,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let (me, requests) = (self.clone(), requests.clone());
        self.pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            me.confirmed(&requests, subject, payload, &id).await;
            me.pending.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }

    /// Resends until something confirms, or the window closes.
    async fn confirmed(&self, requests: &Requests, subject: String, payload: Bytes, id: &str) {
        let started = Instant::now();
        let mut delay = RESEND_DELAY_MIN;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        for attempt in 0u32.. {
            let req = Request::new()
                .headers(headers.clone())
                .payload(payload.clone())
                .timeout(Some(self.timeout));
            // The current client each time: a stuck one may be replaced.
            let why = match requests.current().send_request(subject.clone(), req).await {
                Ok(reply) if !is_jetstream_error(&reply.payload) => {
                    self.stats.events_confirmed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(reply) => String::from_utf8_lossy(&reply.payload).into_owned(),
                Err(e) => e.to_string(),
            };
            if started.elapsed() + delay > self.window {
                self.stats
                    .events_unconfirmed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(%subject, id, attempts = attempt + 1, %why, "session event not confirmed within nats.events_confirm_window_ms; given up (is there a JetStream stream on the event subjects?)");
                return;
            }
            if attempt == 0 && self.log_allowed() {
                tracing::warn!(%subject, %why, "session event not confirmed; resending with the same Nats-Msg-Id");
            }
            self.stats.events_resent.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RESEND_DELAY_MAX);
        }
    }

    /// Waits (at most `wait`) for events still awaiting confirmation. Every
    /// core's bridge task calls it when it stops; it takes nothing, so the
    /// other cores' last events still get confirmed meanwhile. What is still
    /// unconfirmed at the end is counted once, then dropped with the runtime.
    pub async fn settle(&self, wait: Duration) {
        if !self.confirm {
            return;
        }
        let deadline = Instant::now() + wait;
        while self.pending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.pending.load(Ordering::SeqCst);
        if left > 0 && !self.abandoned_counted.swap(true, Ordering::SeqCst) {
            self.stats
                .events_unconfirmed
                .fetch_add(left as u64, Ordering::Relaxed);
            tracing::warn!(
                events = left,
                "stopping with session events still unconfirmed (counted in gateway_nats_events_unconfirmed_total)"
            );
        }
    }
}

/// A JetStream error answer (`{"error":{"code":..}}`) is not a confirmation.
fn is_jetstream_error(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{')
        && serde_json::from_slice::<serde_json::Value>(payload)
            .is_ok_and(|v| v.get("error").is_some())
}

#[cfg(test)]
mod tests {
    use super::is_jetstream_error;

    #[test]
    fn jetstream_errors_are_not_confirmations() {
        assert!(!is_jetstream_error(br#"{"stream":"EVT","seq":7}"#));
        assert!(!is_jetstream_error(
            br#"{"stream":"EVT","seq":7,"duplicate":true}"#
        ));
        assert!(!is_jetstream_error(b"ok"));
        assert!(!is_jetstream_error(b""));
        assert!(is_jetstream_error(
            br#"{"error":{"code":503,"err_code":10077,"description":"JetStream system temporarily unavailable"}}"#
        ));
    }
}
