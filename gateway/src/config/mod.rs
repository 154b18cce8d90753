//! Gateway configuration: a documented serde struct with named defaults, read
//! from TOML, overridden by CLI flags (see `cli.rs`), checked by
//! [`Config::validate`]. Every limit carries its unit in its name.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::auth::{KeySpec, VerifyOptions};
pub mod io;
pub mod overload;
pub mod rooms;
pub mod tls;

use crate::nats::NatsConfig;
pub use io::{IoConfig, IoDriver};
pub use overload::{OverloadConfig, RoutePriority};
pub use rooms::RoomsConfig;

/// Secret of the demo key used by `--demo`. Public on purpose: demo only.
pub const DEMO_SECRET: &str = "demo-secret-not-for-production-0123456789";
/// Key id of the demo key.
pub const DEMO_KID: &str = "demo";
/// Where `--demo` listens unless `listen` is set: loopback, since demo mode
/// serves a token-minting endpoint.
pub const DEMO_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7000,
));

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this gateway node, reported to backends and in AuthOk.
    pub node_id: String,
    /// Client listener address (TCP, length-prefixed frames).
    pub listen: SocketAddr,
    /// listen(2) backlog of each per-core listener.
    pub listen_backlog: u32,
    /// Data-plane cores (one pinned executor each); 0 = every available core.
    pub cores: usize,
    /// Upper bound on connections per core; further capped by RLIMIT_NOFILE at start.
    pub conns_per_core_max: u32,
    /// File descriptors kept free of client connections (logs, admin, NATS).
    pub fd_reserve: u32,
    /// Largest frame body either side may send, bytes (after the 4-byte prefix).
    pub frame_bytes_max: u32,
    /// A connection must authenticate within this time, ms.
    pub auth_timeout_ms: u32,
    /// Largest frame body accepted before authentication, bytes: an Auth
    /// frame is a token (auth.token_bytes_max) plus small fields. Keeps
    /// what a client that never authenticates can make the gateway buffer
    /// small.
    pub auth_frame_bytes_max: u32,
    /// Bytes one core may buffer for connections not authenticated yet
    /// (partial frames, WebSocket upgrade requests, TLS handshakes). Past
    /// it the oldest such connections are closed (PREAUTH_LIMIT), so a flood
    /// of clients that never authenticate cannot take the memory, and
    /// clients that authenticate promptly still get through.
    pub preauth_bytes_per_core_max: u32,
    /// Heartbeat interval announced by default, ms.
    pub heartbeat_interval_ms: u32,
    /// Smallest interval a client may ask for, ms.
    pub heartbeat_interval_min_ms: u32,
    /// Largest interval a client may ask for, ms (keep under carrier NAT timeouts).
    pub heartbeat_interval_max_ms: u32,
    /// A connection silent for this many heartbeat intervals is reaped.
    pub idle_timeout_intervals: u32,
    /// Resend an unacknowledged push after this long, ms.
    pub ack_timeout_ms: u32,
    /// Resends of one push before it is reported undelivered.
    pub ack_retries_max: u32,
    /// Ack-required pushes in flight (sent, not yet acked) per connection:
    /// the window. Further pushes wait in the connection's backlog.
    pub unacked_pushes_max: u32,
    /// Bytes of pushes waiting for room in the window or the outbound queue,
    /// per connection (bodies plus 32 bytes each); one more closes the
    /// connection as a slow consumer.
    pub push_queue_bytes_max: u32,
    /// With pushes waiting, the longest time the backlog may go without one
    /// of them leaving (acks open the window, writes empty the queue), ms;
    /// then the connection is closed as a slow consumer.
    pub push_stall_timeout_ms: u32,
    /// Rooms one connection may be in; further joins are refused with an Error frame.
    pub rooms_per_conn_max: u32,
    /// Bytes queued for one connection; past this it is closed as a slow consumer.
    pub outbound_bytes_max: u32,
    /// Upstream requests awaiting a backend answer, per connection; past it: BUSY.
    pub upstream_inflight_per_conn_max: u32,
    /// Upstream requests awaiting a backend answer, per core; past it: BUSY.
    pub upstream_inflight_per_core_max: u32,
    /// A backend answer later than this becomes a TIMEOUT reply, ms.
    pub upstream_timeout_ms: u32,
    /// retry_after_ms sent with BUSY / TIMEOUT replies.
    pub busy_retry_after_ms: u32,
    /// Messages queued to one core from other cores and the control plane.
    pub core_inbox_max: u32,
    /// Timing-wheel resolution (heartbeat, auth and ack deadlines), ms.
    pub tick_ms: u32,
    /// After SIGTERM, wait at most this long for clients to leave, ms.
    pub drain_deadline_ms: u32,
    /// retry_after_ms in the GoAway sent on drain.
    pub goaway_retry_after_ms: u32,
    /// A drain sends its GoAways spread evenly over this window, ms, so the
    /// clients do not all reconnect in the same second; under drain_deadline_ms.
    pub drain_spread_ms: u32,
    /// Each drain GoAway adds a random 0..=this to goaway_retry_after_ms, ms.
    pub goaway_retry_jitter_ms: u32,
    /// Other endpoints ("host:port") sent in drain GoAways as reconnect hints.
    pub goaway_endpoints: Vec<String>,
    /// Longest pause of the accept loop after EMFILE/ENFILE and similar, ms.
    pub accept_backoff_max_ms: u32,
    /// io_uring registered buffer memory per core, bytes (locked memory).
    pub io_memory_bytes: u32,
    /// Admin HTTP (/metrics, /healthz, /readyz, /stats, /connz, /drain, /kick); empty string disables it.
    pub admin_listen: String,
    /// Other processes may listen on `listen` and `admin_listen` too
    /// (SO_REUSEPORT): several gateway processes on one box, or the overlap
    /// of a binary upgrade. Without it the gateway refuses to start when
    /// another process listens on either port, instead of silently
    /// splitting the traffic with it.
    pub listen_shared: bool,
    /// Log format: `text` (colours only on a terminal) or `json` (one
    /// object per line, for log shippers).
    pub log_format: LogFormat,
    /// Name of an environment variable holding the admin bearer token; when
    /// set, every admin endpoint but /healthz requires `Authorization: Bearer <token>`.
    pub admin_token_env: Option<String>,
    /// Token verification.
    pub auth: AuthConfig,
    /// NATS: where business backends live; no URLs = the embedded demo backend.
    pub nats: NatsConfig,
    /// TLS on the client port (detected per connection by its first byte).
    pub tls: tls::TlsConfig,
    /// WebSocket on the client port (detected by `GET`, after TLS if any).
    pub ws: WsConfig,
    /// Demo mode: adds the public demo HS256 key (kid "demo"). Never in production.
    pub demo: bool,
    /// Overload control: queueing-delay shedding by priority and rate limits.
    pub overload: OverloadConfig,
    /// Hot rooms: coalescing, shedding, upstream rate (`[rooms]`).
    pub rooms: RoomsConfig,
    /// The socket driver (io_uring or epoll) and its sizes.
    pub io: IoConfig,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when the output is a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Verification keys ([[auth.keys]]).
    pub keys: Vec<KeySpec>,
    /// Clock skew allowed on exp / nbf, seconds.
    pub leeway_s: u64,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Longer tokens are rejected before decoding, bytes.
    pub token_bytes_max: usize,
    /// Tokens expiring further ahead than this are rejected (TOKEN_INVALID), s.
    pub token_lifetime_max_s: u64,
    /// A session ends when its token expires (exp + leeway_s), unless the
    /// client sends a fresh one (Refresh). false: sessions outlive tokens.
    pub expire_sessions: bool,
    /// The server sends TokenExpiring this long before the token's exp, s
    /// (at once for a token with less left).
    pub refresh_ahead_s: u64,
    /// Refuse ES256 signatures in high-S form (malleable). Off by default:
    /// about half of the ES256 tokens standard libraries make are high-S.
    pub es256_low_s_only: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys: Vec::new(),
            leeway_s: 5,
            issuer: None,
            audience: None,
            token_bytes_max: 4096,
            token_lifetime_max_s: 30 * 24 * 3600,
            expire_sessions: true,
            refresh_ahead_s: 60,
            es256_low_s_only: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "gw-1".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7000)),
            listen_backlog: 4096,
            cores: 0,
            conns_per_core_max: 1_000_000,
            fd_reserve: 64,
            frame_bytes_max: 64 * 1024,
            auth_timeout_ms: 10_000,
            auth_frame_bytes_max: 8 * 1024,
            preauth_bytes_per_core_max: 16 << 20,
            heartbeat_interval_ms: 30_000,
            heartbeat_interval_min_ms: 5_000,
            heartbeat_interval_max_ms: 300_000,
            idle_timeout_intervals: 3,
            ack_timeout_ms: 5_000,
            ack_retries_max: 2,
            unacked_pushes_max: 128,
            push_queue_bytes_max: 1 << 20,
            push_stall_timeout_ms: 10_000,
            outbound_bytes_max: 256 * 1024,
            rooms_per_conn_max: 64,
            upstream_inflight_per_conn_max: 32,
            upstream_inflight_per_core_max: 10_000,
            upstream_timeout_ms: 5_000,
            busy_retry_after_ms: 1_000,
            core_inbox_max: 65_536,
            tick_ms: 100,
            drain_deadline_ms: 30_000,
            goaway_retry_after_ms: 1_000,
            drain_spread_ms: 10_000,
            goaway_retry_jitter_ms: 5_000,
            goaway_endpoints: Vec::new(),
            accept_backoff_max_ms: 1_000,
            io_memory_bytes: 512 * 1024,
            admin_listen: "127.0.0.1:9100".into(),
            listen_shared: false,
            log_format: LogFormat::Text,
            admin_token_env: None,
            auth: AuthConfig::default(),
            nats: NatsConfig::default(),
            tls: Default::default(),
            ws: WsConfig::default(),
            demo: false,
            overload: OverloadConfig::default(),
            rooms: RoomsConfig::default(),
            io: IoConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Accept WebSocket upgrades on the client port.
    pub enabled: bool,
    /// The only path upgraded.
    pub path: String,
    /// Origins allowed to upgrade (exact `Origin` values); empty = any.
    pub allowed_origins: Vec<String>,
    /// Largest upgrade request, bytes; larger gets 431 and a close.
    pub handshake_bytes_max: u32,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            enabled: true,
            path: "/ws".into(),
            allowed_origins: Vec::new(),
            handshake_bytes_max: 4096,
        }
    }
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is in the message, not a `source`: `{e:#}` would print it twice.
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("config file {path} is not valid: {cause}")]
    Parse {
        path: String,
        cause: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        toml::from_str(&text).map_err(|cause| ConfigError::Parse {
            path: path.display().to_string(),
            cause,
        })
    }

    /// Checks each limit and how limits relate; the error says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let nonzero = [
            ("listen_backlog", self.listen_backlog),
            ("conns_per_core_max", self.conns_per_core_max),
            ("frame_bytes_max", self.frame_bytes_max),
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("idle_timeout_intervals", self.idle_timeout_intervals),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("unacked_pushes_max", self.unacked_pushes_max),
            ("push_stall_timeout_ms", self.push_stall_timeout_ms),
            ("outbound_bytes_max", self.outbound_bytes_max),
            ("rooms_per_conn_max", self.rooms_per_conn_max),
            (
                "upstream_inflight_per_conn_max",
                self.upstream_inflight_per_conn_max,
            ),
            (
                "upstream_inflight_per_core_max",
                self.upstream_inflight_per_core_max,
            ),
            ("upstream_timeout_ms", self.upstream_timeout_ms),
            ("core_inbox_max", self.core_inbox_max),
            ("tick_ms", self.tick_ms),
            ("accept_backoff_max_ms", self.accept_backoff_max_ms),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return bad(format!("{name} must be greater than 0"));
            }
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return bad("node_id must be 1 to 64 bytes".into());
        }
        if self.frame_bytes_max < 256 || self.frame_bytes_max > 16 << 20 {
            return bad(format!(
                "frame_bytes_max {} must be within 256..=16777216",
                self.frame_bytes_max
            ));
        }
        if self.push_queue_bytes_max < self.frame_bytes_max {
            return bad(format!(
                "push_queue_bytes_max ({}) must hold at least one push of frame_bytes_max ({})",
                self.push_queue_bytes_max, self.frame_bytes_max
            ));
        }
        if self.push_stall_timeout_ms < self.tick_ms {
            return bad(format!(
                "push_stall_timeout_ms ({}) must be at least tick_ms ({})",
                self.push_stall_timeout_ms, self.tick_ms
            ));
        }
        if self.outbound_bytes_max < self.frame_bytes_max + 4 {
            return bad(format!(
                "outbound_bytes_max ({}) must hold at least one frame of frame_bytes_max ({}) plus its 4-byte prefix",
                self.outbound_bytes_max, self.frame_bytes_max
            ));
        }
        let (lo, hb, hi) = (
            self.heartbeat_interval_min_ms,
            self.heartbeat_interval_ms,
            self.heartbeat_interval_max_ms,
        );
        if !(lo <= hb && hb <= hi) {
            return bad(format!(
                "need heartbeat_interval_min_ms ({lo}) <= heartbeat_interval_ms ({hb}) <= heartbeat_interval_max_ms ({hi})"
            ));
        }
        if lo < self.tick_ms {
            return bad(format!(
                "heartbeat_interval_min_ms ({lo}) must be at least tick_ms ({})",
                self.tick_ms
            ));
        }
        if self.idle_timeout_intervals < 2 {
            return bad(
                "idle_timeout_intervals must be at least 2, or one late ping reaps a live client"
                    .into(),
            );
        }
        if (hi as u64) * (self.idle_timeout_intervals as u64) > u32::MAX as u64 {
            return bad(
                "heartbeat_interval_max_ms * idle_timeout_intervals overflows 32 bits of ms".into(),
            );
        }
        if self.ack_timeout_ms < self.tick_ms || self.auth_timeout_ms < self.tick_ms {
            return bad(format!(
                "ack_timeout_ms and auth_timeout_ms must be at least tick_ms ({})",
                self.tick_ms
            ));
        }
        if !(10..=1000).contains(&self.tick_ms) {
            return bad(
                "tick_ms must be within 10..=1000 (ticks are 32-bit: at 10 ms they last 497 days)"
                    .into(),
            );
        }
        // A day at most: larger is a mistake, and the sum must fit in u32.
        const RETRY_MS_MAX: u32 = 86_400_000;
        if self.goaway_retry_after_ms > RETRY_MS_MAX || self.goaway_retry_jitter_ms > RETRY_MS_MAX {
            return bad(format!(
                "goaway_retry_after_ms and goaway_retry_jitter_ms must be at most {RETRY_MS_MAX} (a day)"
            ));
        }
        if self.drain_spread_ms >= self.drain_deadline_ms {
            return bad(format!(
                "drain_spread_ms ({}) must be under drain_deadline_ms ({}): clients need time to leave after the last GoAway",
                self.drain_spread_ms, self.drain_deadline_ms
            ));
        }
        if self.accept_backoff_max_ms < 10 {
            return bad("accept_backoff_max_ms must be at least 10 (the first pause)".into());
        }
        if self.ack_retries_max > 100 {
            return bad("ack_retries_max must be at most 100".into());
        }
        if self.upstream_inflight_per_conn_max > u16::MAX as u32 {
            return bad(format!(
                "upstream_inflight_per_conn_max must be at most {}",
                u16::MAX
            ));
        }
        if self.auth_frame_bytes_max < 1024 {
            return bad(format!(
                "auth_frame_bytes_max ({}) must be at least 1024 (an Auth frame holds a token)",
                self.auth_frame_bytes_max
            ));
        }
        if (self.preauth_bytes_per_core_max as u64) < 4 * self.auth_frame_bytes_max as u64 {
            return bad(format!(
                "preauth_bytes_per_core_max ({}) must be at least 4 × auth_frame_bytes_max ({})",
                self.preauth_bytes_per_core_max, self.auth_frame_bytes_max
            ));
        }
        if self.auth.token_lifetime_max_s < 60 {
            return bad("auth.token_lifetime_max_s must be at least 60".into());
        }
        if self.auth.refresh_ahead_s >= self.auth.token_lifetime_max_s {
            return bad("auth.refresh_ahead_s must be under auth.token_lifetime_max_s".into());
        }
        if self.io_memory_bytes < 64 * 1024 {
            return bad("io_memory_bytes must be at least 65536".into());
        }
        if self.auth.keys.is_empty() && !self.demo {
            return bad("no token keys: add [[auth.keys]] to the config file (see OPERATIONS.md), or run with --demo for a throwaway setup".into());
        }
        if !self.admin_listen.is_empty() && self.admin_listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "admin_listen {:?} is not an address like 127.0.0.1:9100 (empty disables the admin server)",
                self.admin_listen
            ));
        }
        self.nats.validate().map_err(ConfigError::Invalid)?;
        self.tls.validate().map_err(ConfigError::Invalid)?;
        if !(256..=65_536).contains(&self.ws.handshake_bytes_max) || !self.ws.path.starts_with('/')
        {
            return bad(
                "ws.handshake_bytes_max must be from 256 to 65536 and ws.path start with /".into(),
            );
        }
        self.overload
            .validate(self.tick_ms)
            .map_err(ConfigError::Invalid)?;
        self.io.validate().map_err(ConfigError::Invalid)?;
        self.rooms.validate().map_err(ConfigError::Invalid)?;
        if !self.rooms.aggregate_routes.is_empty()
            && self.rooms.coalesce_window_ms >= self.upstream_timeout_ms
        {
            // The window counts in each aggregated frame's timeout.
            return Err(ConfigError::Invalid(format!(
                "rooms.coalesce_window_ms ({}) must be under upstream_timeout_ms ({}) when rooms.aggregate_routes is set",
                self.rooms.coalesce_window_ms, self.upstream_timeout_ms
            )));
        }
        Ok(())
    }

    /// Options for the token verifier.
    /// The frame limit before authentication: `auth_frame_bytes_max`, or
    /// `frame_bytes_max` when that is smaller.
    pub fn preauth_frame_bytes_max(&self) -> u32 {
        self.auth_frame_bytes_max.min(self.frame_bytes_max)
    }

    pub fn verify_options(&self) -> VerifyOptions {
        VerifyOptions {
            leeway_s: self.auth.leeway_s,
            issuer: self.auth.issuer.clone(),
            audience: self.auth.audience.clone(),
            token_bytes_max: self.auth.token_bytes_max,
            lifetime_max_s: self.auth.token_lifetime_max_s,
            es256_low_s_only: self.auth.es256_low_s_only,
        }
    }

    /// Every file the configuration names, with the key naming it: what
    /// the service's user must be able to read (`gateway check-config`).
    pub fn named_files(&self) -> Vec<(String, std::path::PathBuf)> {
        let mut out: Vec<(String, std::path::PathBuf)> = Vec::new();
        for (i, k) in self.auth.keys.iter().enumerate() {
            if let Some(p) = &k.secret_file {
                out.push((format!("auth.keys[{i}].secret_file"), p.clone()));
            }
            if let Some(p) = &k.public_key_file {
                out.push((format!("auth.keys[{i}].public_key_file"), p.clone()));
            }
        }
        let named = [
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
            ("tls.ticket_key_file", &self.tls.ticket_key_file),
            ("nats.creds_file", &self.nats.creds_file),
            ("nats.nkey_seed_file", &self.nats.nkey_seed_file),
            ("nats.tls_ca_file", &self.nats.tls_ca_file),
            ("nats.tls_cert_file", &self.nats.tls_cert_file),
            ("nats.tls_key_file", &self.nats.tls_key_file),
        ];
        for (key, path) in named {
            if !path.is_empty() {
                out.push((key.to_string(), path.into()));
            }
        }
        out
    }

    /// Idle timeout for a given heartbeat interval, ms.
    pub fn idle_timeout_ms(&self, interval_ms: u32) -> u32 {
        interval_ms.saturating_mul(self.idle_timeout_intervals)
    }

    /// Clamps a client's wanted interval into the configured bounds (0 = default).
    pub fn clamp_heartbeat(&self, wanted_ms: u32) -> u32 {
        if wanted_ms == 0 {
            return self.heartbeat_interval_ms;
        }
        wanted_ms.clamp(
            self.heartbeat_interval_min_ms,
            self.heartbeat_interval_max_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_needs_keys_or_demo() {
        let mut c = Config::default();
        assert!(c.validate().unwrap_err().to_string().contains("--demo"));
        c.demo = true;
        c.validate().unwrap();
    }

    #[test]
    fn relations_are_checked() {
        let mut c = Config {
            demo: true,
            ..Config::default()
        };
        c.heartbeat_interval_min_ms = 60_000;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("heartbeat_interval_min_ms"));
        let mut c = Config {
            demo: true,
            ..Config::default()
        };
        c.outbound_bytes_max = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("outbound_bytes_max"));
        // An aggregated frame waits for the window within its timeout.
        let mut c = Config {
            demo: true,
            ..Config::default()
        };
        c.rooms.aggregate_routes = vec!["quiz.answer".into()];
        c.validate().unwrap();
        c.upstream_timeout_ms = c.rooms.coalesce_window_ms;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("upstream_timeout_ms"));
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let c: Config = toml::from_str("frame_bytes_max = 1024\n[auth]\nleeway_s = 1\n").unwrap();
        assert_eq!(c.frame_bytes_max, 1024);
        assert_eq!(c.auth.leeway_s, 1);
        assert!(toml::from_str::<Config>("frame_bytes = 1").is_err());
    }

    #[test]
    fn named_files_lists_every_file_key() {
        let c: Config = toml::from_str(
            "[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\n[nats]\ncreds_file = \"/n\"\n\
             [[auth.keys]]\nkid = \"a\"\nalg = \"EdDSA\"\npublic_key_file = \"/p\"\n",
        )
        .unwrap();
        let keys: Vec<String> = c.named_files().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "auth.keys[0].public_key_file",
                "tls.cert_file",
                "tls.key_file",
                "nats.creds_file"
            ]
        );
    }

    #[test]
    fn heartbeat_clamp() {
        let c = Config::default();
        assert_eq!(c.clamp_heartbeat(0), 30_000);
        assert_eq!(c.clamp_heartbeat(1), 5_000);
        assert_eq!(c.clamp_heartbeat(u32::MAX), 300_000);
    }
}
