//! Readiness for every socket of one core, without a task or a glommio
//! stream per connection.
//!
//! One epoll instance per core; sockets are registered edge-triggered with
//! the connection id as the key. A small poller thread blocks in
//! `epoll_wait` and forwards batches of ready keys to the core over a
//! bounded channel; the core's I/O loop (`io.rs`) does all reads, writes and
//! decoding on the core's own thread. Why not glommio's per-stream readiness:
//! it costs a 496-byte `Source` plus a 192-byte task per idle connection
//! (measured, see BENCHMARKS.md), and glommio offers no readiness for an
//! arbitrary fd such as an epoll instance.

use std::io;
use std::os::fd::RawFd;

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
    pub fn writable(&self) -> bool {
        self.flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
}

/// Key of the listening socket.
pub const LISTENER_KEY: u64 = u64::MAX - 1;
/// Key of the eventfd that stops the poller thread.
const STOP_KEY: u64 = u64::MAX;
/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// Batches queued to the core before the poller thread waits.
pub const BATCHES_QUEUED_MAX: usize = 64;

/// The core's handle: registers sockets. [`Poller::stop`] (or dropping it)
/// ends the thread; the fds are closed on drop, after the thread has ended.
pub struct Poller {
    epfd: RawFd,
    stopfd: RawFd,
    thread: Option<std::thread::JoinHandle<()>>,
    stopped: std::cell::Cell<bool>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Poller {
    /// Creates the epoll instance and starts the poller thread, which sends
    /// batches of events to `tx` until the poller is dropped.
    pub fn start(core: usize, tx: flume::Sender<Vec<Event>>) -> io::Result<Poller> {
        // SAFETY: plain syscalls; the fds are owned by the returned Poller / thread.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let stopfd = match cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
        {
            Ok(fd) => fd,
            Err(e) => {
                unsafe { libc::close(epfd) };
                return Err(e);
            }
        };
        let mut p = Poller {
            epfd,
            stopfd,
            thread: None,
            stopped: std::cell::Cell::new(false),
        };
        p.ctl(libc::EPOLL_CTL_ADD, stopfd, STOP_KEY, libc::EPOLLIN as u32)?;
        p.thread = Some(
            std::thread::Builder::new()
                .name(format!("gw-poll-{core}"))
                .spawn(move || run(epfd, tx))?,
        );
        Ok(p)
    }

    /// Ends the poller thread; its channel then closes, which ends the I/O
    /// loop. Registration calls fail from here on.
    pub fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: write 8 bytes to our own eventfd (closed only in drop).
        unsafe { libc::write(self.stopfd, &one as *const u64 as *const libc::c_void, 8) };
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, key: u64, flags: u32) -> io::Result<()> {
        if self.stopped.get() {
            return Err(io::Error::other("the core's poller has stopped"));
        }
        let mut ev = libc::epoll_event {
            events: flags,
            u64: key,
        };
        // SAFETY: epoll_ctl with a valid epoll fd and an event we own.
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

    /// Stops watching `fd` (before it is closed, or while it stays open).
    pub fn remove(&self, fd: RawFd) {
        if self.stopped.get() {
            return;
        }
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as above; failure (already gone) is harmless.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop();
        // The thread exits at once: woken by the eventfd, or its send fails
        // because the I/O loop (the receiver) is gone by now.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: the thread has ended; these fds are ours alone.
        unsafe {
            libc::close(self.epfd);
            libc::close(self.stopfd);
        }
    }
}

/// The poller thread: waits, forwards, stops on the eventfd or when the core is gone.
fn run(epfd: RawFd, tx: flume::Sender<Vec<Event>>) {
    let mut events: Vec<libc::epoll_event> =
        vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    'outer: loop {
        // SAFETY: the buffer holds EVENTS_PER_WAIT events.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EVENTS_PER_WAIT as i32, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %io::Error::last_os_error(), "epoll_wait failed; the core stops seeing socket events");
            break;
        }
        let mut batch = Vec::with_capacity(n as usize);
        for ev in &events[..n as usize] {
            let (key, flags) = (ev.u64, ev.events);
            if key == STOP_KEY {
                break 'outer;
            }
            batch.push(Event { key, flags });
        }
        if !batch.is_empty() && tx.send(batch).is_err() {
            break;
        }
    }
}
