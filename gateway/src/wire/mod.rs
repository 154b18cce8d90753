//! The connection layers without I/O: bytes (and a clock) in, events and
//! bytes out. Nothing here touches a socket, the core or its slab; the
//! drivers (`conn/`) run these layers on each connection's bytes.
//!
//! - `frames.rs`: length-prefixed frames out of a byte stream.
//! - `http.rs`: the HTTP/1.1 request head (WebSocket upgrade, admin, demo).
//! - `out.rs`: a frame on its way out, head and shared body.
//! - `records/`: the TLS 1.3 record layer after the handshake.
//! - `tls.rs`: the TLS handshake (rustls), key handover, sealing.
//! - `ws.rs`: WebSocket: the upgrade, client frames, server frames.

pub mod frames;
pub mod http;
pub mod out;
pub mod records;
pub mod tls;
pub mod ws;
