//! Command line: every config option as a flag that overrides the TOML
//! file, plus the `token` subcommand that mints demo tokens.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

macro_rules! overrides {
    ($($(#[$m:meta])* $field:ident : $ty:ty),* $(,)?) => {
        /// Config overrides; each flag replaces the file's value.
        #[derive(clap::Args, Debug, Default)]
        pub struct Overrides {
            $($(#[$m])* #[arg(long)] pub $field: Option<$ty>,)*
        }
        impl Overrides {
            pub fn apply(self, cfg: &mut Config) {
                $(if let Some(v) = self.$field { cfg.$field = v; })*
            }
        }
    };
}

overrides! {
    /// Name of this node, reported to backends and in AuthOk [default: gw-1]
    node_id: String,
    /// Client listener address [default: 0.0.0.0:7000]
    listen: SocketAddr,
    /// listen(2) backlog of each per-core listener [default: 4096]
    listen_backlog: u32,
    /// Data-plane cores, one pinned executor each; 0 = all [default: 0]
    cores: usize,
    /// Connections per core at most; also capped by RLIMIT_NOFILE [default: 1000000]
    conns_per_core_max: u32,
    /// File descriptors kept free of client connections [default: 64]
    fd_reserve: u32,
    /// Largest frame body, bytes [default: 65536]
    frame_bytes_max: u32,
    /// Time to authenticate after connecting, ms [default: 10000]
    auth_timeout_ms: u32,
    /// Largest frame accepted before authentication, bytes [default: 8192]
    auth_frame_bytes_max: u32,
    /// Bytes a core may buffer for unauthenticated connections; past it the oldest are closed [default: 16777216]
    preauth_bytes_per_core_max: u32,
    /// Heartbeat interval announced by default, ms [default: 30000]
    heartbeat_interval_ms: u32,
    /// Smallest heartbeat interval a client may ask for, ms [default: 5000]
    heartbeat_interval_min_ms: u32,
    /// Largest heartbeat interval a client may ask for, ms [default: 300000]
    heartbeat_interval_max_ms: u32,
    /// Silent intervals before a connection is reaped [default: 3]
    idle_timeout_intervals: u32,
    /// Resend an unacknowledged push after, ms [default: 5000]
    ack_timeout_ms: u32,
    /// Resends before a push is reported undelivered [default: 2]
    ack_retries_max: u32,
    /// Ack-required pushes in flight per connection (the window); more wait in the backlog [default: 128]
    unacked_pushes_max: u32,
    /// Bytes of pushes waiting for the window per connection before it is a slow consumer [default: 1048576]
    push_queue_bytes_max: u32,
    /// With pushes waiting, longest time without one leaving before a slow-consumer close, ms [default: 10000]
    push_stall_timeout_ms: u32,
    /// Rooms one connection may join [default: 64]
    rooms_per_conn_max: u32,
    /// Queued outbound bytes per connection before it is a slow consumer [default: 262144]
    outbound_bytes_max: u32,
    /// Upstream requests in flight per connection before BUSY [default: 32]
    upstream_inflight_per_conn_max: u32,
    /// Upstream requests in flight per core before BUSY [default: 10000]
    upstream_inflight_per_core_max: u32,
    /// Backend answer deadline, ms [default: 5000]
    upstream_timeout_ms: u32,
    /// retry_after_ms sent with BUSY and TIMEOUT [default: 1000]
    busy_retry_after_ms: u32,
    /// Messages queued to one core from other threads [default: 65536]
    core_inbox_max: u32,
    /// Timing-wheel resolution, ms [default: 100]
    tick_ms: u32,
    /// Drain deadline after SIGTERM, ms [default: 30000]
    drain_deadline_ms: u32,
    /// retry_after_ms in the drain GoAway [default: 1000]
    goaway_retry_after_ms: u32,
    /// Window over which a drain spreads its GoAways, ms [default: 10000]
    drain_spread_ms: u32,
    /// Random extra retry_after_ms per drain GoAway, up to, ms [default: 5000]
    goaway_retry_jitter_ms: u32,
    /// Longest accept pause after EMFILE and the like, ms [default: 1000]
    accept_backoff_max_ms: u32,
    /// io_uring registered memory per core, bytes [default: 524288]
    io_memory_bytes: u32,
    /// Admin HTTP address; "" disables it [default: 127.0.0.1:9100]
    admin_listen: String,
    /// Log format: text or json [default: text]
    log_format: crate::config::LogFormat,
}

/// Flags whose values are lists or optional (not plain overrides).
#[derive(clap::Args, Debug, Default)]
pub struct ListOverrides {
    /// Reconnect hints ("host:port") in drain GoAways, comma-separated [default: none]
    #[arg(long, value_delimiter = ',')]
    pub goaway_endpoints: Option<Vec<String>>,
    /// Environment variable holding the admin bearer token [default: none: no token]
    #[arg(long)]
    pub admin_token_env: Option<String>,
    /// Share the client and admin ports with other processes (SO_REUSEPORT):
    /// several processes per box, or a binary upgrade [default: refuse to start
    /// when another process listens on them]
    #[arg(long)]
    pub listen_shared: bool,
}

impl ListOverrides {
    pub fn apply(self, cfg: &mut Config) {
        if let Some(v) = self.goaway_endpoints {
            cfg.goaway_endpoints = v;
        }
        if let Some(v) = self.admin_token_env {
            cfg.admin_token_env = Some(v);
        }
        if self.listen_shared {
            cfg.listen_shared = true;
        }
    }
}

/// Flags for the options of one config section (`[nats]`, `[tls]`, `[overload]`).
macro_rules! section_overrides {
    ($name:ident, $section:ident, $($(#[$m:meta])* $field:ident = $flag:literal : $ty:ty),* $(,)?) => {
        /// Overrides of one config section; each flag replaces the file's value.
        #[derive(clap::Args, Debug, Default)]
        pub struct $name {
            $($(#[$m])* #[arg(long = $flag)] pub $field: Option<$ty>,)*
        }
        impl $name {
            pub fn apply(self, cfg: &mut Config) {
                $(if let Some(v) = self.$field { cfg.$section.$field = v; })*
            }
        }
    };
}

section_overrides! {
    AuthOverrides, auth,
    /// Clock skew allowed on exp and nbf, s [default: 5]
    leeway_s = "auth-leeway-s": u64,
    /// Tokens expiring further ahead than this are rejected, s [default: 2592000]
    token_lifetime_max_s = "auth-token-lifetime-max-s": u64,
    /// Sessions end at their token's exp unless refreshed in band [default: true]
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    expire_sessions = "auth-expire-sessions": bool,
    /// TokenExpiring is sent this long before exp, s [default: 60]
    refresh_ahead_s = "auth-refresh-ahead-s": u64,
    /// Refuse high-S ES256 signatures (malleable; many libraries make them) [default: false]
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    es256_low_s_only = "auth-es256-low-s-only": bool,
}

section_overrides! {
    TlsOverrides, tls,
    /// TLS certificate chain (PEM); TLS clients use the same port, detected by their first byte
    cert_file = "tls-cert-file": String,
    /// TLS private key (PEM)
    key_file = "tls-key-file": String,
    /// Development only: TLS with a throwaway self-signed certificate for localhost
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    self_signed = "tls-self-signed": bool,
    /// Also accept TLS 1.2 (default: TLS 1.3 only)
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    tls12 = "tls12": bool,
}

section_overrides! {
    OverloadOverrides, overload,
    /// Queueing delay per core above which upstream frames are shed by priority, ms; 0 = never [default: 20]
    queue_delay_max_ms = "overload-queue-delay-max-ms": u32,
    /// Window of the queueing-delay average and admission level, ms [default: 1000]
    queue_delay_window_ms = "overload-queue-delay-window-ms": u32,
    /// Over the delay, admit this much less per window, percent [default: 5]
    shed_alpha_pct = "overload-shed-alpha-pct": u32,
    /// Under the delay, admit this much more per window, percent [default: 1]
    shed_beta_pct = "overload-shed-beta-pct": u32,
    /// User priorities are reshuffled this often, s [default: 3600]
    user_priority_period_s = "overload-user-priority-period-s": u32,
    /// New connections per second per core; 0 = no limit [default: 0]
    accept_rate_per_core_per_s = "overload-accept-rate-per-core-per-s": u32,
    /// New connections at once per core before the accept rate applies [default: 1000]
    accept_burst = "overload-accept-burst": u32,
    /// Upstream frames per second per connection; 0 = no limit [default: 1000]
    upstream_rate_per_conn_per_s = "overload-upstream-rate-per-conn-per-s": u32,
    /// Upstream frames at once per connection before the rate applies [default: 1000]
    upstream_burst = "overload-upstream-burst": u32,
    /// Pushes per second to one room, per core; 0 = no limit [default: 1000]
    room_broadcast_rate_per_s = "overload-room-broadcast-rate-per-s": u32,
    /// Pushes at once to one room before the rate applies [default: 1000]
    room_burst = "overload-room-burst": u32,
}

section_overrides! {
    RoomsOverrides, rooms,
    /// A hot room's pushes are gathered this long per core and sent as one batch, ms [default: 100]
    coalesce_window_ms = "rooms-coalesce-window-ms": u32,
    /// Rooms always hot: names, or prefixes ending in * (comma-separated) [default: none]
    #[arg(value_delimiter = ',')]
    hot = "rooms-hot": Vec<String>,
    /// A room's pushes per second on a core above which it becomes hot; 0 = never by rate [default: 100]
    hot_rate_per_s = "rooms-hot-rate-per-s": u32,
    /// Pushes one batch of coalesce_window_ms carries at most (more in a stretched window); past it LOW and NORMAL are dropped [default: 200]
    batch_pushes_max = "rooms-batch-pushes-max": u32,
    /// Batch frames one hot room may cause per second per core; a bigger room gathers longer; 0 = not stretched by members [default: 20000]
    frames_per_s_max = "rooms-frames-per-s-max": u32,
    /// Longest window of a stretched room, and every hot room's window under overload (coalesce_window_ms if longer), ms [default: 1000]
    coalesce_window_max_ms = "rooms-coalesce-window-max-ms": u32,
    /// Upstream frames naming a room, per second per room and core; 0 = no limit [default: 0]
    upstream_rate_per_s = "rooms-upstream-rate-per-s": u32,
    /// Upstream frames naming a room taken at once before the rate applies [default: 1000]
    #[arg(id = "rooms_upstream_burst")]
    upstream_burst = "rooms-upstream-burst": u32,
    /// Routes whose upstreams naming a room go to the backend as one request per room, core and window (comma-separated) [default: none]
    #[arg(value_delimiter = ',')]
    aggregate_routes = "rooms-aggregate-routes": Vec<String>,
    /// Items one aggregated upstream request carries at most [default: 1000]
    aggregate_items_max = "rooms-aggregate-items-max": u32,
    /// Bytes one aggregated upstream request carries at most; keep it under the NATS server's max_payload [default: 524288]
    aggregate_bytes_max = "rooms-aggregate-bytes-max": u32,
}

section_overrides! {
    NatsOverrides, nats,
    /// NATS server URLs, comma-separated; none = embedded demo backend [default: none]
    #[arg(value_delimiter = ',')]
    urls = "nats-urls": Vec<String>,
    /// Subject prefix [default: gw]
    prefix = "nats-prefix": String,
    /// NATS token (prefer the config file or NATS_TOKEN over a flag)
    #[arg(env = "NATS_TOKEN", hide_env_values = true)]
    token = "nats-token": String,
    /// NATS user (with --nats-password)
    user = "nats-user": String,
    /// NATS password
    #[arg(env = "NATS_PASSWORD", hide_env_values = true)]
    password = "nats-password": String,
    /// File with an NKey user seed
    nkey_seed_file = "nats-nkey-seed-file": String,
    /// NATS .creds file (JWT and seed)
    creds_file = "nats-creds-file": String,
    /// Require TLS to NATS [default: false]
    tls_required = "nats-tls-required": bool,
    /// CA certificates (PEM) for NATS TLS; empty = system roots
    tls_ca_file = "nats-tls-ca-file": String,
    /// Client certificate (PEM) for NATS TLS
    tls_cert_file = "nats-tls-cert-file": String,
    /// Client key (PEM) for NATS TLS
    tls_key_file = "nats-tls-key-file": String,
    /// One NATS connection attempt at most, ms [default: 2000]
    connect_timeout_ms = "nats-connect-timeout-ms": u32,
    /// Longest pause between NATS reconnection attempts, ms [default: 2000]
    reconnect_delay_max_ms = "nats-reconnect-delay-max-ms": u32,
    /// Messages queued between a core and its NATS connection [default: 65536]
    bridge_queue_max = "nats-bridge-queue-max": u32,
    /// Wait for a gateway to confirm an ack-required user push, ms [default: 2000]
    push_confirm_timeout_ms = "nats-push-confirm-timeout-ms": u32,
    /// Session events as requests, resent until a JetStream stream (or a service) confirms [default: false]
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    events_confirm = "nats-events-confirm": bool,
    /// Give up resending an unconfirmed session event after, ms [default: 60000]
    events_confirm_window_ms = "nats-events-confirm-window-ms": u32,
    /// Session events awaiting confirmation at once [default: 10000]
    events_confirm_inflight_max = "nats-events-confirm-inflight-max": u32,
    /// PING every NATS connection this often; two silent intervals = move to another server, ms [default: 5000]
    ping_interval_ms = "nats-ping-interval-ms": u32,
    /// Subscriptions lost this long take the node out (not ready, GoAway NODE_UNAVAILABLE), ms [default: 10000]
    restore_deadline_ms = "nats-restore-deadline-ms": u32,
}

section_overrides! {
    IoOverrides, io,
    /// Socket driver: auto (io_uring when the kernel has it), uring or epoll [default: auto]
    driver = "io-driver": crate::config::IoDriver,
    /// Submission queue entries of each core's io_uring [default: 4096]
    uring_entries = "io-uring-entries": u32,
    /// Receive buffers per core for the io_uring driver (power of two) [default: 1024]
    uring_buffers = "io-uring-buffers": u32,
    /// Bytes of one io_uring receive buffer [default: 4096]
    uring_buffer_bytes = "io-uring-buffer-bytes": u32,
}

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GATEWAY_REVISION"), ")"),
    about = "Connection gateway for IM and live-interaction systems.",
    long_about = "Connection gateway for IM and live-interaction systems.\n\n\
Options come from a TOML file (--config), then these flags. Token keys are configured in the file \
([[auth.keys]]; secrets come from environment variables named there). --demo adds a public demo key \
and serves the embedded demo backend: never in production. Logging: RUST_LOG (default info)."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// Demo mode: adds the public HS256 demo key (kid "demo"); see `gateway token`.
    #[arg(long, global = true)]
    pub demo: bool,
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(flatten)]
    pub lists: ListOverrides,
    #[command(flatten)]
    pub nats: NatsOverrides,
    #[command(flatten)]
    pub tls: TlsOverrides,
    #[command(flatten)]
    pub overload: OverloadOverrides,
    #[command(flatten)]
    pub rooms: RoomsOverrides,
    #[command(flatten)]
    pub auth: AuthOverrides,
    #[command(flatten)]
    pub io: IoOverrides,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Print an HS256 token signed with the demo key (or the secret in $GATEWAY_TOKEN_SECRET).
    Token {
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Device id (`did` claim).
        #[arg(long)]
        did: Option<String>,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
    /// Check the configuration and exit.
    CheckConfig,
}

impl Cli {
    /// The effective config: file (or defaults), then flags.
    pub fn config(self) -> anyhow::Result<(Config, Option<Cmd>)> {
        let mut cfg = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        let listen_given =
            self.overrides.listen.is_some() || self.config.as_deref().is_some_and(file_sets_listen);
        self.overrides.apply(&mut cfg);
        self.lists.apply(&mut cfg);
        self.nats.apply(&mut cfg);
        self.tls.apply(&mut cfg);
        self.overload.apply(&mut cfg);
        self.rooms.apply(&mut cfg);
        self.auth.apply(&mut cfg);
        self.io.apply(&mut cfg);
        if self.demo {
            cfg.demo = true;
        }
        // Demo mode mints tokens for anyone who asks: loopback only, unless
        // the listen address was chosen on purpose.
        if cfg.demo && !listen_given {
            cfg.listen = crate::config::DEMO_LISTEN;
        }
        Ok((cfg, self.cmd))
    }
}

/// Whether a config file sets `listen` (read again; errors are reported by
/// `Config::from_file`).
fn file_sets_listen(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("listen"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Config {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .expect("flags")
            .config()
            .expect("config")
            .0
    }

    #[test]
    fn demo_listens_on_loopback_unless_told_otherwise() {
        assert_eq!(parsed(&["--demo"]).listen, crate::config::DEMO_LISTEN);
        assert_eq!(
            parsed(&["--demo", "--listen", "0.0.0.0:7100"])
                .listen
                .to_string(),
            "0.0.0.0:7100"
        );
        assert_eq!(parsed(&[]).listen, Config::default().listen);
        let dir = std::env::temp_dir().join(format!("gw-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gw.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:7000\"\n").unwrap();
        let from_file = parsed(&["--demo", "--config", file.to_str().unwrap()]);
        assert_eq!(
            from_file.listen.to_string(),
            "0.0.0.0:7000",
            "the file chose it"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_format_and_port_sharing_flags() {
        let io = parsed(&["--io-driver", "epoll", "--io-uring-buffers", "64"]).io;
        assert_eq!(
            (io.driver, io.uring_buffers),
            (crate::config::IoDriver::Epoll, 64)
        );
        let c = parsed(&["--log-format", "json", "--listen-shared"]);
        assert_eq!(c.log_format, crate::config::LogFormat::Json);
        assert!(c.listen_shared);
        assert!(!parsed(&[]).listen_shared);
    }
}
