//! Which socket driver a core runs (`[io]` in the config, `--io-driver`),
//! and what the core holds of it.

use serde::{Deserialize, Serialize};

use super::uring;
use super::Poller;

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

/// The driver that runs, once chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Uring,
    Epoll,
}

impl Chosen {
    pub fn name(self) -> &'static str {
        match self {
            Chosen::Uring => "uring",
            Chosen::Epoll => "epoll",
        }
    }
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

    /// The io_uring driver's settings.
    pub fn uring(&self) -> uring::Settings {
        uring::Settings {
            entries: self.uring_entries,
            buffers: self.uring_buffers as u16,
            buffer_bytes: self.uring_buffer_bytes,
        }
    }

    /// Picks the driver, and says why: `uring` fails when the kernel lacks
    /// what it needs, `auto` then falls back to epoll.
    pub fn choose(&self) -> Result<(Chosen, String), String> {
        match self.driver {
            IoDriver::Epoll => Ok((Chosen::Epoll, "io.driver = epoll".into())),
            IoDriver::Uring => match uring::probe(&self.uring()) {
                Ok(()) => Ok((Chosen::Uring, "io.driver = uring".into())),
                Err(why) => Err(format!(
                    "io.driver = uring, but {why}; use io.driver = auto or epoll on this kernel (see OPERATIONS.md)"
                )),
            },
            IoDriver::Auto => Ok(match uring::probe(&self.uring()) {
                Ok(()) => (
                    Chosen::Uring,
                    "io.driver = auto and the kernel has multishot accept and recv, provided buffer rings and deferred task work".into(),
                ),
                Err(why) => (Chosen::Epoll, format!("io.driver = auto and {why}")),
            }),
        }
    }
}

/// How a core does socket I/O.
pub enum Io {
    /// Edge-triggered epoll, waited on through glommio (`epoll.rs`).
    Epoll(Poller),
    /// The core's own io_uring loop (`uring/`): the core only queues
    /// what the loop submits next.
    Uring(uring::Pending),
}

impl Io {
    /// Starts serving a new connection's socket.
    pub fn register(&self, fd: i32, id: u64) -> std::io::Result<()> {
        match self {
            Io::Epoll(p) => p.add_conn(fd, id),
            Io::Uring(p) => {
                p.arm(fd, id);
                Ok(())
            }
        }
    }

    /// Shuts a connection's socket down (FIN now) and closes it.
    pub fn close(&self, fd: i32) {
        match self {
            // SAFETY: the connection's socket, closed exactly once, by teardown.
            Io::Epoll(_) => unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
                libc::close(fd);
            },
            Io::Uring(p) => p.close(fd),
        }
    }

    /// The epoll instance, with the epoll driver.
    pub fn poller(&self) -> Option<&Poller> {
        match self {
            Io::Epoll(p) => Some(p),
            Io::Uring(_) => None,
        }
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

    #[test]
    fn epoll_is_chosen_when_asked() {
        let c = IoConfig {
            driver: IoDriver::Epoll,
            ..Default::default()
        };
        assert_eq!(c.choose().map(|(d, _)| d), Ok(Chosen::Epoll));
    }
}
