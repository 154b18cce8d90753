//! Client connections: readiness (`poller.rs`, epoll waited on through
//! glommio's io_uring), the per-core I/O loop that
//! reads, decodes and writes for every connection (`io.rs`), and what each
//! inbound frame does (`frames.rs`); TLS inside the loop (`tls.rs`).

mod frames;
mod io;
pub mod poller;
mod records;
mod tls;
pub mod ws;

pub use io::IoLoop;
pub use poller::Poller;
pub use tls::Tls;
