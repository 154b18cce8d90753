//! Waking a core from other threads. The io_uring driver's loop sleeps in
//! its own ring, not in glommio's, so a message sent to a core from another
//! thread (another core, the control plane, the NATS bridge) must also
//! wake that ring: every channel into a core carries the core's [`Waker`],
//! and sending calls it. It writes the core's eventfd, which the loop
//! always has a read armed on, at most once until the loop has taken the
//! wake-up (so a burst of messages costs one write). With the epoll driver
//! glommio parks and wakes itself: the waker does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

/// The cross-thread wake-up of one core.
pub struct Wake {
    /// An eventfd the core's loop reads (io_uring driver), or -1.
    fd: i32,
    /// A write is on its way and the loop has not taken it yet.
    pending: AtomicBool,
}

impl Wake {
    /// A wake-up for a core that sleeps in its own ring: makes its eventfd.
    pub fn eventfd() -> std::io::Result<Arc<Wake>> {
        // SAFETY: plain syscall; the fd is owned by the returned Wake.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Wake {
            fd,
            pending: AtomicBool::new(false),
        }))
    }

    /// A wake-up that does nothing (glommio wakes itself).
    pub fn none() -> Arc<Wake> {
        Arc::new(Wake {
            fd: -1,
            pending: AtomicBool::new(false),
        })
    }

    /// The eventfd the loop reads, if any.
    pub fn fd(&self) -> Option<i32> {
        (self.fd >= 0).then_some(self.fd)
    }

    /// The loop took the wake-up: the next message writes again. Called
    /// before the loop lets the woken tasks run, so none is missed.
    pub fn taken(&self) {
        self.pending.store(false, Ordering::SeqCst);
    }

    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }
}

impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.fd >= 0 && !self.pending.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: an 8-byte write to our eventfd; a full counter
            // (EAGAIN) still leaves it readable, which is all that matters.
            unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: our eventfd, closed once.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// A sender into a core's inbox that also wakes the core.
#[derive(Clone)]
pub struct CoreTx {
    tx: flume::Sender<super::CoreMsg>,
    wake: Waker,
}

impl CoreTx {
    pub fn new(tx: flume::Sender<super::CoreMsg>, wake: Waker) -> CoreTx {
        CoreTx { tx, wake }
    }

    pub fn try_send(&self, m: super::CoreMsg) -> Result<(), flume::TrySendError<super::CoreMsg>> {
        self.tx.try_send(m)?;
        self.wake.wake_by_ref();
        Ok(())
    }

    pub fn send(&self, m: super::CoreMsg) -> Result<(), flume::SendError<super::CoreMsg>> {
        self.tx.send(m)?;
        self.wake.wake_by_ref();
        Ok(())
    }

    pub async fn send_async(&self, m: super::CoreMsg) -> Result<(), flume::SendError<super::CoreMsg>> {
        self.tx.send_async(m).await?;
        self.wake.wake_by_ref();
        Ok(())
    }
}
