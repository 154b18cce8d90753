//! Why a connection attempt failed or a connection dropped: the reason for
//! logs and status, a hint about what to do, and logging that does not
//! repeat itself.

use std::time::{Duration, Instant};

/// Why an attempt failed: the reason for logs/status, and what to do.
pub(super) struct ConnErr {
    pub(super) reason: String,
    pub(super) hint: &'static str,
}

pub(super) const HINT_REFUSED: &str =
    "is nats-server running and listening there? check [nats] urls";
pub(super) const HINT_NETWORK: &str = "check the address, DNS, routes and firewall in [nats] urls";
pub(super) const HINT_TIMEOUT: &str = "the server did not complete the handshake in time: check the address and firewall, whether it expects TLS (tls://), or raise connect_timeout_ms";
pub(super) const HINT_AUTH: &str = "check the [nats] credentials (token, user/password, nkey_seed_file, creds_file) against the server's authorization config";
pub(super) const HINT_TLS: &str = "check tls_ca_file/tls_cert_file/tls_key_file, that the server certificate is valid for the host in the URL, and tls:// vs nats://";
pub(super) const HINT_PROTOCOL: &str =
    "is this a NATS client port (not the monitoring, cluster or websocket port)?";
pub(super) const HINT_SERVER: &str = "see the server's log for details";

impl ConnErr {
    pub(super) fn new(reason: impl Into<String>, hint: &'static str) -> ConnErr {
        ConnErr {
            reason: reason.into(),
            hint,
        }
    }

    pub(super) fn io(stage: &str, e: std::io::Error) -> ConnErr {
        use std::io::ErrorKind::*;
        let hint = match e.kind() {
            ConnectionRefused => HINT_REFUSED,
            InvalidData => HINT_TLS,
            _ => HINT_NETWORK,
        };
        ConnErr::new(format!("{stage}: {e}"), hint)
    }

    pub(super) fn server(text: String) -> ConnErr {
        let lower = text.to_ascii_lowercase();
        let hint = if lower.contains("authorization") || lower.contains("authentication") {
            HINT_AUTH
        } else if lower.contains("tls") || lower.contains("secure") {
            HINT_TLS
        } else {
            HINT_SERVER
        };
        ConnErr::new(format!("server said: {text}"), hint)
    }
}

/// Logs each distinct failure per URL at once, and repeats of the same one
/// at most once per 10 s.
#[derive(Default)]
pub(super) struct FailLog {
    entries: Vec<FailEntry>,
}

struct FailEntry {
    url: String,
    reason: String,
    logged_at: Instant,
    suppressed: u32,
}

const FAIL_LOG_EVERY: Duration = Duration::from_secs(10);

impl FailLog {
    pub(super) fn failed(&mut self, url: &str, e: &ConnErr) {
        let now = Instant::now();
        let suppressed = match self.entries.iter_mut().find(|x| x.url == url) {
            Some(x) => {
                if x.reason == e.reason && now.duration_since(x.logged_at) < FAIL_LOG_EVERY {
                    x.suppressed += 1;
                    return;
                }
                let s = x.suppressed;
                x.reason.clone_from(&e.reason);
                x.logged_at = now;
                x.suppressed = 0;
                s
            }
            None => {
                self.entries.push(FailEntry {
                    url: url.to_string(),
                    reason: e.reason.clone(),
                    logged_at: now,
                    suppressed: 0,
                });
                0
            }
        };
        tracing::warn!(
            url,
            repeats_not_logged = suppressed,
            "cannot connect to NATS (interest connection): {}; {}; retrying with backoff",
            e.reason,
            e.hint
        );
    }

    pub(super) fn reset(&mut self) {
        self.entries.clear();
    }
}

/// What to do about a lost connection, from its reason.
pub(super) fn lost_hint(why: &str) -> &'static str {
    let lower = why.to_ascii_lowercase();
    if lower.contains("slow consumer") {
        "the gateway read too slowly (inbound queue full for long); check core load and bridge_queue_max"
    } else if lower.contains("authorization") || lower.contains("authentication") {
        HINT_AUTH
    } else if lower.contains("stale connection") || lower.contains("no pong") {
        "PINGs went unanswered; check the network and whether either side is overloaded"
    } else if lower.contains("protocol error") {
        "the server sent something unexpected; check the server version and logs"
    } else {
        "the server restarted, shut down or the network failed; see the server's log"
    }
}
