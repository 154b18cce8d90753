//! What a core holds of its socket driver, without the driver: the epoll
//! instance (`poller.rs`) or the queue of what the io_uring loop submits
//! next. The core registers and closes sockets through [`Io`]; the drivers
//! (`conn/epoll.rs`, `conn/uring/`) do the rest. Depends on nothing of the
//! gateway, so the core does not depend on the drivers.

pub mod poller;

use std::cell::{Cell, RefCell};

pub use poller::Poller;

/// How a core does socket I/O.
pub enum Io {
    /// Edge-triggered epoll, waited on through glommio (`conn/epoll.rs`).
    Epoll(Poller),
    /// The core's own io_uring loop (`conn/uring/`): the core only queues
    /// what the loop submits next.
    Uring(Pending),
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
    /// `send_inflight`: the io_uring loop has a send of it queued or in
    /// flight, which the shutdown must follow.
    pub fn close(&self, fd: i32, send_inflight: bool) {
        match self {
            // SAFETY: the connection's socket, closed exactly once, by teardown.
            Io::Epoll(_) => unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
                libc::close(fd);
            },
            Io::Uring(p) => p.close(fd, send_inflight),
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

/// What the core queued for the loop's next submission.
#[derive(Default)]
pub struct Pending {
    /// New connections: arm their multishot recv.
    pub(crate) arms: RefCell<Vec<(i32, u64)>>,
    /// Sockets to shut down and close, and whether a send of theirs is
    /// queued or in flight on the ring.
    pub(crate) closes: RefCell<Vec<(i32, bool)>>,
    /// The loop has ended: sockets are closed at once.
    pub(crate) ended: Cell<bool>,
}

impl Pending {
    pub fn arm(&self, fd: i32, id: u64) {
        self.arms.borrow_mut().push((fd, id));
    }
    pub fn close(&self, fd: i32, send_inflight: bool) {
        if self.ended.get() {
            // SAFETY: the connection's socket, closed exactly once, by teardown.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
                libc::close(fd);
            }
        } else {
            self.closes.borrow_mut().push((fd, send_inflight));
        }
    }
}
