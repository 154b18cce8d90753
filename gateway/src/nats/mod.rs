//! The NATS side of the gateway: backends in any language behind NATS
//! (PROTOCOL.md, "NATS contract"; ARCHITECTURE.md, "NATS bridge").
//!
//! - `config`: the `[nats]` section.
//! - `contract`: subjects, headers, protobuf conversions.
//! - `bridge`: the control-plane (tokio) side: one async-nats client per
//!   core for requests and publishes.
//! - `interest`: a small hand-written NATS connection per core holding the
//!   subscriptions for that core's users and rooms (async-nats costs
//!   ~4.9 KB per subscription; see ARCHITECTURE.md).
//! - `backend`: the core side, a `Backend` over the bridge.
//! - `inbound`: executes what arrives on the subscriptions.

pub mod backend;
pub mod bridge;
pub mod config;
pub mod contract;
pub mod events;
pub mod inbound;
pub mod interest;

pub use backend::NatsFactory;
pub use bridge::BridgeStats;
pub use config::NatsConfig;
