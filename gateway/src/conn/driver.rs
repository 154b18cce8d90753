//! Which socket driver a core runs (`[io]` in the config, `--io-driver`),
//! and what the core holds of it.

pub use crate::config::io::{IoConfig, IoDriver};

use super::uring;

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
