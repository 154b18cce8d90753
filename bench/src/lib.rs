//! Helpers of the flood client (`src/bin/flood.rs`) and the other bench tools.
//!
//! - [`hold`]: the `hold` scenario: options, connection tasks, executors.
//! - [`procfs`]: RSS of processes and kernel slab, read from `/proc`.
//! - [`wire`]: tokens and frames the client sends, and a small frame reader
//!   that keeps only the bytes of an incomplete frame per connection.
//! - [`net`]: non-blocking connect from a chosen source address, and reading
//!   frames through a per-thread scratch buffer.

pub mod hold;
pub mod net;
pub mod procfs;
pub mod wire;
