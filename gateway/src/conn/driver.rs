//! Which socket driver a core runs (`[io]` in the config, `--io-driver`),
//! and what the core holds of it.

pub use crate::config::io::{IoConfig, IoDriver};

use super::uring;
use super::Poller;

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

/// The io_uring driver's settings from `[io]`.
pub fn uring_settings(io: &IoConfig) -> uring::Settings {
    uring::Settings {
        entries: io.uring_entries,
        buffers: io.uring_buffers as u16,
        buffer_bytes: io.uring_buffer_bytes,
    }
}

/// Picks the driver, and says why: `uring` fails when the kernel lacks
/// what it needs, `auto` then falls back to epoll.
pub fn choose(io: &IoConfig) -> Result<(Chosen, String), String> {
    match io.driver {
            IoDriver::Epoll => Ok((Chosen::Epoll, "io.driver = epoll".into())),
            IoDriver::Uring => match uring::probe(&uring_settings(io)) {
                Ok(()) => Ok((Chosen::Uring, "io.driver = uring".into())),
                Err(why) => Err(format!(
                    "io.driver = uring, but {why}; use io.driver = auto or epoll on this kernel (see OPERATIONS.md)"
                )),
            },
            IoDriver::Auto => Ok(match uring::probe(&uring_settings(io)) {
                Ok(()) => (
                    Chosen::Uring,
                    "io.driver = auto and the kernel has multishot accept and recv, provided buffer rings and deferred task work".into(),
                ),
                Err(why) => (Chosen::Epoll, format!("io.driver = auto and {why}")),
            }),
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
    fn epoll_is_chosen_when_asked() {
        let c = IoConfig {
            driver: IoDriver::Epoll,
            ..Default::default()
        };
        assert_eq!(choose(&c).map(|(d, _)| d), Ok(Chosen::Epoll));
    }
}
