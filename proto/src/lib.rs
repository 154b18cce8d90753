//! The gateway's client wire protocol.
//!
//! - [`pb`]: the protobuf messages generated from `proto/gateway.proto`.
//! - [`codec`]: the length-prefixed framing, with no I/O: `check` / `decode`
//!   on byte slices and `encode` into `Bytes`, `frame_bytes_max` enforced
//!   before any allocation.

pub mod codec;

/// Generated protobuf types (package `gateway.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/gateway.v1.rs"));
}

pub use codec::{decode, encode, encode_into, peek_len, DecodeError, Decoded, LEN_PREFIX_BYTES};
pub use pb::frame::Body;
pub use pb::{CloseReason, ErrorCode, Frame};

/// Protocol version described by PROTOCOL.md.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest route name, bytes.
pub const ROUTE_BYTES_MAX: usize = 64;

/// A route name: 1..=`ROUTE_BYTES_MAX` bytes of `[A-Za-z0-9._-]`.
pub fn valid_route(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= ROUTE_BYTES_MAX
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}
