//! Client connections: the drivers and the glue. Two drivers do the
//! socket I/O of a core (`driver.rs` picks one): the core's own io_uring
//! loop (`uring/`), or edge-triggered epoll waited on through glommio
//! (`crate::sockets::poller`, `epoll.rs`). Both hand received bytes to
//! `input.rs`, which runs the layers without I/O (`crate::wire`: TLS,
//! WebSocket, the frame splitter) through their glue here (`tls.rs`,
//! `ws.rs`) and each frame to `frames.rs`; they send what `output.rs`
//! gathers. `web.rs` answers the demo-mode HTTP requests.

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
