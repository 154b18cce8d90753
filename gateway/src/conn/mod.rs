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
mod input;
mod output;
mod tls;
pub mod uring;
pub mod web;
pub mod ws;

pub use crate::sockets::{poller, Io, Poller};
pub use driver::{Chosen, IoConfig, IoDriver};
pub use epoll::IoLoop;
pub use frames::valid_route;
