//! Client connections. Two drivers do the socket I/O of a core (`driver.rs`
//! picks one): the core's own io_uring loop (`uring/`), or edge-triggered
//! epoll waited on through glommio (`poller.rs`, `epoll.rs`). Both hand
//! received bytes to the same layers (`input.rs`: TLS records `tls.rs`
//! and `records/`, WebSocket `ws.rs` with its HTTP parser `http.rs`, frames
//! `frames.rs`) and send what `output.rs` gathers; `web.rs` answers the
//! demo-mode HTTP requests.

pub mod driver;
mod epoll;
mod frames;
pub mod http;
mod input;
mod output;
pub mod poller;
pub mod preauth;
pub mod records;
mod tls;
pub mod uring;
pub mod web;
pub mod ws;

pub use driver::{Chosen, Io, IoConfig, IoDriver};
pub use epoll::IoLoop;
pub use frames::valid_route;
pub use poller::Poller;

pub use tls::Tls;

/// Whether a frame queued now reaches the client as a frame: plain TCP that
/// has sent something (so it is not a TLS or WebSocket client whose first
/// bytes are still on the way) or an open WebSocket. A TLS connection
/// before Auth, or a WebSocket before its upgrade, would see raw protobuf
/// where it expects a handshake.
pub fn speaks_frames(c: &crate::core::Conn) -> bool {
    ws::open(c) || (c.bytes_in > 0 && !tls::active(c) && !ws::active(c))
}
