//! `[io]`: which socket driver the cores run and the io_uring driver's
//! sizes (the drivers themselves: `conn/driver.rs`).

use serde::{Deserialize, Serialize};

/// The socket driver asked for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoDriver {
    /// io_uring when the kernel has what it needs, epoll otherwise.
    #[default]
    Auto,
    /// io_uring, or refuse to start.
    Uring,
    /// epoll (waited on through glommio).
    Epoll,
}

/// `[io]`: the socket driver and the io_uring driver's sizes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IoConfig {
    /// `auto`, `uring` or `epoll`.
    pub driver: IoDriver,
    /// Submission queue entries of each core's ring (a power of two; the
    /// completion queue has twice as many).
    pub uring_entries: u32,
    /// Receive buffers in each core's provided buffer ring (a power of two,
    /// at most 32768). Only data in flight holds one: idle connections none.
    pub uring_buffers: u32,
    /// Bytes of one receive buffer.
    pub uring_buffer_bytes: u32,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            driver: IoDriver::Auto,
            uring_entries: 4096,
            uring_buffers: 1024,
            uring_buffer_bytes: 4096,
        }
    }
}

impl IoConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.uring_entries.is_power_of_two() || !(64..=32_768).contains(&self.uring_entries) {
            return Err("io.uring_entries must be a power of two within 64..=32768".into());
        }
        if !self.uring_buffers.is_power_of_two() || !(16..=32_768).contains(&self.uring_buffers) {
            return Err("io.uring_buffers must be a power of two within 16..=32768".into());
        }
        if !(1024..=1 << 20).contains(&self.uring_buffer_bytes) {
            return Err("io.uring_buffer_bytes must be within 1024..=1048576".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(IoConfig::default().validate().is_ok());
        for bad in [
            IoConfig {
                uring_entries: 1000,
                ..Default::default()
            },
            IoConfig {
                uring_buffers: 0,
                ..Default::default()
            },
            IoConfig {
                uring_buffers: 65_536,
                ..Default::default()
            },
            IoConfig {
                uring_buffer_bytes: 100,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
