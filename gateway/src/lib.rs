//! The connection gateway library: everything the `gateway` binary runs,
//! startable in-process for tests ([`server::start`] on port 0).
//!
//! Layout (see ARCHITECTURE.md): `listener` accepts per core; `conn` drives
//! one connection; `core` holds per-core state (sessions, rooms, timing
//! wheel, reliable push); `backend` is the business seam (embedded demo
//! backend here); `nats` bridges cores to NATS backends; `control` is the tokio thread (admin HTTP, signals);
//! `auth` verifies JWTs; `notify` talks to systemd; `config` and `metrics`
//! are what they say.

pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod core;
pub mod heap;
pub mod listener;
pub mod metrics;
pub mod nats;
pub mod notify;
pub mod server;
pub mod sockets;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use server::{start, GatewayHandle};

/// This build's version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision this binary was built from (`git describe`), or
/// "unknown" when built outside a git checkout (`build.rs`).
pub const REVISION: &str = env!("GATEWAY_REVISION");
