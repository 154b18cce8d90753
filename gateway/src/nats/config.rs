//! The `[nats]` section: where the NATS servers are, how to authenticate,
//! TLS, the subject prefix and the bridge's limits. Empty `urls` means no
//! NATS: the embedded demo backend serves upstream frames.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); empty = embedded backend.
    pub urls: Vec<String>,
    /// First token of every subject (`<prefix>.up.<route>`, `<prefix>.user.<uid>`, ...).
    pub prefix: String,
    /// Token authentication.
    pub token: String,
    /// User and password authentication.
    pub user: String,
    pub password: String,
    /// File holding an NKey user seed (`SU...`).
    pub nkey_seed_file: String,
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes them.
    pub creds_file: String,
    /// Require TLS to NATS even for `nats://` URLs.
    pub tls_required: bool,
    /// PEM file of CA certificates to trust for NATS TLS; empty = system roots.
    pub tls_ca_file: String,
    /// Client certificate and key (PEM) for NATS servers that verify clients.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Give up one connection attempt after this long, ms.
    pub connect_timeout_ms: u32,
    /// Longest pause between reconnection attempts, ms (attempts never stop).
    pub reconnect_delay_max_ms: u32,
    /// Messages queued between one core and its NATS connection, each way.
    pub bridge_queue_max: u32,
    /// How long a gateway waits to learn whether an ack-required user push
    /// reached anyone (NATS request with no responders), ms.
    pub push_confirm_timeout_ms: u32,
    /// Send session events as requests and resend until something answers
    /// (a JetStream stream's PubAck): at least once instead of at most once.
    pub events_confirm: bool,
    /// How long an unconfirmed event is resent before it is given up, ms.
    pub events_confirm_window_ms: u32,
    /// Events awaiting confirmation at once; past it they go unconfirmed.
    pub events_confirm_inflight_max: u32,
    /// Client PINGs on every NATS connection this often, ms; a server that
    /// answers none for two intervals (hung, SIGSTOPped, cut off) is left
    /// for another server of the cluster.
    pub ping_interval_ms: u32,
    /// A core whose subscriptions are lost and not restored within this
    /// time takes the node out: not ready, logins refused, sessions told to
    /// reconnect elsewhere (GoAway NODE_UNAVAILABLE), ms.
    pub restore_deadline_ms: u32,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            prefix: "gw".into(),
            token: String::new(),
            user: String::new(),
            password: String::new(),
            nkey_seed_file: String::new(),
            creds_file: String::new(),
            tls_required: false,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            connect_timeout_ms: 2_000,
            reconnect_delay_max_ms: 2_000,
            bridge_queue_max: 65_536,
            push_confirm_timeout_ms: 2_000,
            events_confirm: false,
            events_confirm_window_ms: 60_000,
            events_confirm_inflight_max: 10_000,
            ping_interval_ms: 5_000,
            restore_deadline_ms: 10_000,
        }
    }
}

/// A subject token: no spaces, dots, wildcards or control characters.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b > b' ' && b != b'.' && b != b'*' && b != b'>' && b != 0x7f)
}

impl NatsConfig {
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Checks the section; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !self.prefix.split('.').all(valid_token) {
            return Err(format!(
                "nats.prefix {:?} must be dot-separated tokens without spaces or wildcards",
                self.prefix
            ));
        }
        let methods = [
            !self.token.is_empty(),
            !self.user.is_empty(),
            !self.nkey_seed_file.is_empty(),
            !self.creds_file.is_empty(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(
                "nats: set at most one of token, user/password, nkey_seed_file, creds_file".into(),
            );
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err("nats.tls_cert_file and nats.tls_key_file go together".into());
        }
        for (name, v) in [
            ("nats.connect_timeout_ms", self.connect_timeout_ms),
            ("nats.reconnect_delay_max_ms", self.reconnect_delay_max_ms),
            ("nats.bridge_queue_max", self.bridge_queue_max),
            ("nats.push_confirm_timeout_ms", self.push_confirm_timeout_ms),
            (
                "nats.events_confirm_window_ms",
                self.events_confirm_window_ms,
            ),
            (
                "nats.events_confirm_inflight_max",
                self.events_confirm_inflight_max,
            ),
            ("nats.ping_interval_ms", self.ping_interval_ms),
            ("nats.restore_deadline_ms", self.restore_deadline_ms),
        ] {
            if v == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        Ok(())
    }
}
