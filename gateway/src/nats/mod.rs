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
pub mod replies;
pub mod requests;

pub use backend::NatsFactory;

/// One core's NATS connections, as readiness sees them.
#[derive(Clone)]
pub struct CoreHealth {
    pub subscriptions: interest::Interest,
    pub requests: requests::Requests,
}

impl CoreHealth {
    /// The subscription connection is up and every subscription restored.
    pub fn subscriptions_up(&self) -> bool {
        self.subscriptions.is_connected()
    }
    /// The request client is connected.
    pub fn requests_up(&self) -> bool {
        self.requests.connected()
    }
}
pub use bridge::BridgeStats;
pub use config::NatsConfig;
