//! The connection task: connects (configured URLs, then servers learned
//! from INFO `connect_urls`), serves the connection (`conn.rs`), and
//! reconnects with jittered backoff, forever, until closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_rustls::rustls;

use super::failure::{lost_hint, ConnErr, FailLog, HINT_TIMEOUT};
use super::url::{self, parse_url};
use super::{Cmd, ConnectSpec, Event, Shared, Status};

pub(super) struct Task {
    pub(super) spec: ConnectSpec,
    pub(super) shared: Arc<Shared>,
    pub(super) rx: mpsc::UnboundedReceiver<Cmd>,
    pub(super) inbound: crate::core::WakeTx<Event>,
    pub(super) status: flume::Sender<Status>,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) fail_log: FailLog,
    /// Last `Disconnected` reason sent since the last `Connected`.
    pub(super) last_reported: Option<String>,
    /// Other servers of the cluster, from the servers' INFO `connect_urls`
    /// ("host:port"); tried after the configured URLs on reconnect.
    pub(super) learned: Vec<String>,
}

/// How the connected phase ended.
pub(super) enum End {
    /// Closed on purpose (close(), every handle dropped, inbound receiver gone).
    Stop,
    /// Connection lost; reconnect.
    Lost(String),
}

const BACKOFF_START: Duration = Duration::from_millis(10);

impl Task {
    pub(super) async fn run(mut self) {
        let mut urls = Vec::new();
        for u in &self.spec.urls {
            match parse_url(u) {
                Ok(p) => urls.push(p),
                Err(e) => tracing::error!("ignoring NATS URL: {e}; fix [nats] urls"),
            }
        }
        if urls.is_empty() {
            tracing::error!("no usable NATS URL for the interest connection; fix [nats] urls");
            self.report_disconnected("no usable NATS URL".into());
            return;
        }
        let shared = self.shared.clone();
        let mut next_url = 0usize;
        let mut delay = Duration::ZERO;
        loop {
            if shared.closed.load(Ordering::Relaxed) || self.inbound.is_disconnected() {
                return;
            }
            if !delay.is_zero() && self.wait_backoff(jitter(delay)).await {
                return;
            }
            self.learn_urls(&mut urls);
            let url = urls[next_url % urls.len()].clone();
            next_url = next_url.wrapping_add(1);
            let attempt = tokio::time::timeout(self.spec.connect_timeout, self.handshake(&url));
            let result = tokio::select! {
                r = attempt => r,
                _ = shared.close.notified() => return,
            };
            let err = match result {
                Ok(Ok(conn)) => {
                    self.fail_log.reset();
                    self.learn_urls(&mut urls);
                    let shown = url.shown.trim_end_matches(" (learned)").to_string();
                    *shared.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(shown);
                    let end = self.serve(conn, &url).await;
                    *shared.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    if shared.connected.swap(false, Ordering::AcqRel)
                        && self.inbound.send_async(Event::Down).await.is_err()
                    {
                        return;
                    }
                    match end {
                        End::Stop => return,
                        End::Lost(why) => {
                            tracing::warn!(
                                url = %url.shown,
                                "NATS interest connection lost: {why}; {}; reconnecting",
                                lost_hint(&why)
                            );
                            self.report_disconnected(format!("{}: {why}", url.shown));
                            delay = BACKOFF_START;
                            continue;
                        }
                    }
                }
                Ok(Err(e)) => e,
                Err(_) => ConnErr::new(
                    format!(
                        "no complete handshake within {} ms",
                        self.spec.connect_timeout.as_millis()
                    ),
                    HINT_TIMEOUT,
                ),
            };
            self.fail_log.failed(&url.shown, &err);
            self.report_disconnected(format!("{}: {}", url.shown, err.reason));
            delay = if delay.is_zero() {
                BACKOFF_START
            } else {
                (delay * 2).min(self.spec.reconnect_delay_max.max(BACKOFF_START))
            };
        }
    }

    /// Adds the servers learned from INFO `connect_urls` to the URLs
    /// tried, with the scheme, credentials and TLS name of the first
    /// configured one (as NATS clients do for discovered servers).
    fn learn_urls(&mut self, urls: &mut Vec<url::ServerUrl>) {
        for hostport in std::mem::take(&mut self.learned) {
            let Some(base) = urls.first().cloned() else {
                return;
            };
            let Ok(mut u) = parse_url(&hostport) else {
                continue;
            };
            if urls.iter().any(|k| k.host == u.host && k.port == u.port) {
                continue;
            }
            u.tls = base.tls;
            u.auth = base.auth.clone();
            if u.host.parse::<std::net::IpAddr>().is_ok() {
                u.tls_name = base.tls_name.clone();
            }
            if let Ok(mut l) = self.shared.learned.lock() {
                l.push(u.shown.clone());
            }
            u.shown = format!("{} (learned)", u.shown);
            tracing::info!(url = %u.shown, "NATS interest connection: learned a cluster server");
            urls.push(u);
        }
    }

    fn report_disconnected(&mut self, why: String) {
        if self.last_reported.as_deref() == Some(why.as_str()) {
            return;
        }
        let _ = self.status.try_send(Status::Disconnected(why.clone()));
        self.last_reported = Some(why);
    }

    /// Sleeps, draining commands meanwhile (SUB/UNSUB are in the table and go
    /// out on reconnect; publishes are dropped). True = stop the task.
    async fn wait_backoff(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return false,
                c = self.rx.recv() => match c {
                    None | Some(Cmd::Close) => return true,
                    Some(Cmd::Pub { subject, .. }) => {
                        tracing::debug!(subject = &*subject, "publish dropped: NATS interest connection is down");
                    }
                    Some(_) => {}
                },
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 2];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return d;
    }
    // 75%..100% of d, so many cores do not reconnect in lockstep.
    d.mul_f64(0.75 + 0.25 * f64::from(u16::from_le_bytes(b)) / 65535.0)
}
