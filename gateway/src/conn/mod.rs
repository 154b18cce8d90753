//! One client connection: the driver future that owns the socket
//! (`driver.rs`) and the handling of each inbound frame (`frames.rs`).

mod driver;
mod frames;

pub use driver::Driver;
