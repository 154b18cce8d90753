//! Client connections: readiness (`poller.rs`, epoll waited on through
//! glommio's io_uring), the per-core I/O loop that
//! reads, decodes and writes for every connection (`io.rs`), and what each
//! inbound frame does (`frames.rs`); TLS inside the loop (`tls.rs`,
//! `records/`), WebSocket (`ws.rs`) with its HTTP request parser
//! (`http.rs`), and the demo-mode HTTP answers (`web.rs`).

mod frames;
pub mod http;
mod io;
pub mod poller;
pub mod preauth;
pub mod records;
mod tls;
pub mod web;
pub mod ws;

pub use frames::valid_route;
pub use io::IoLoop;
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
