//! Readiness for every socket of one core, without a task or a glommio
//! stream per connection.
//!
//! One epoll instance per core; sockets are registered edge-triggered with
//! the connection id as the key. The epoll driver's loop (`epoll.rs`) waits for
//! the epoll instance itself to become readable through glommio's io_uring
//! (a poll on a dup of the epoll fd, see [`Poller::waiter`]), then collects
//! the events with a non-blocking `epoll_wait` on its own thread.
//!
//! Why not glommio's per-stream readiness: it costs a 496-byte `Source` plus
//! a 192-byte task per idle connection (measured, see BENCHMARKS.md). Why
//! not a thread blocked in `epoll_wait`: it costs two thread wake-ups per
//! event at low rates (measured: 4.1% of a core for 500 pings/s).

use std::io;
use std::os::fd::{FromRawFd, RawFd};

/// One readiness event: the registered key and the epoll flags.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub key: u64,
    pub flags: u32,
}

impl Event {
    pub fn readable(&self) -> bool {
        self.flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
            != 0
    }
    /// The peer closed or reset: the end of the stream is already queued
    /// behind whatever data came with this edge, and no further edge will
    /// announce it.
    pub fn hangup(&self) -> bool {
        self.flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
    pub fn writable(&self) -> bool {
        self.flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
}

/// Key of the listening socket.
pub const LISTENER_KEY: u64 = u64::MAX - 1;
/// Events taken from the kernel per `epoll_wait`.
pub const EVENTS_PER_WAIT: usize = 1024;
/// `epoll_wait` calls per collection before the loop serves what it has.
const WAITS_PER_COLLECT: usize = 8;

/// The core's epoll instance.
pub struct Poller {
    epfd: RawFd,
    buf: std::cell::RefCell<Vec<libc::epoll_event>>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain syscall; the fd is owned by the returned Poller.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let buf = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        Ok(Poller {
            epfd,
            buf: std::cell::RefCell::new(buf),
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, key: u64, flags: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: flags,
            u64: key,
        };
        // SAFETY: epoll_ctl with our epoll fd and an event we own.
        cvt(unsafe { libc::epoll_ctl(self.epfd, op, fd, &mut ev) }).map(|_| ())
    }

    /// Watches a connection (read, write and hang-up edges).
    pub fn add_conn(&self, fd: RawFd, key: u64) -> io::Result<()> {
        let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        self.ctl(libc::EPOLL_CTL_ADD, fd, key, flags as u32)
    }

    /// Watches the listening socket (new-connection edges).
    pub fn add_listener(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            fd,
            LISTENER_KEY,
            (libc::EPOLLIN | libc::EPOLLET) as u32,
        )
    }

    /// Stops watching `fd` while it stays open (closing it also does).
    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as above; failure (already gone) is harmless.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Takes the pending events without waiting.
    pub fn collect(&self, out: &mut Vec<Event>) -> io::Result<()> {
        let mut buf = self.buf.borrow_mut();
        for _ in 0..WAITS_PER_COLLECT {
            // SAFETY: the buffer holds EVENTS_PER_WAIT events.
            let n =
                unsafe { libc::epoll_wait(self.epfd, buf.as_mut_ptr(), EVENTS_PER_WAIT as i32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            out.extend(buf[..n as usize].iter().map(|ev| Event {
                key: ev.u64,
                flags: ev.events,
            }));
            if (n as usize) < EVENTS_PER_WAIT {
                break;
            }
        }
        Ok(())
    }

    /// A one-shot waiter: a glommio stream over a dup of the epoll fd.
    /// Building it arms an io_uring poll for readability of the epoll
    /// instance (it has events); its `poll_read` stays pending until then
    /// and afterwards fails at once (`recv` on a non-socket), which is the
    /// signal. Dropping it closes the dup (and cancels a pending poll).
    pub fn waiter(&self) -> io::Result<glommio::net::TcpStream> {
        // SAFETY: F_DUPFD_CLOEXEC returns a new fd that the stream then owns.
        let fd = cvt(unsafe { libc::fcntl(self.epfd, libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `fd` is a fresh fd owned by nobody else.
        Ok(unsafe { glommio::net::TcpStream::from_raw_fd(fd) })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: our epoll fd, closed once.
        unsafe { libc::close(self.epfd) };
    }
}
