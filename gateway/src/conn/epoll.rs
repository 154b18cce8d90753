//! The core's I/O loop: one task per core serves every connection.
//!
//! Connections come to it two ways: socket events from the core's epoll
//! instance (`poller.rs`), and the ready list, where the core puts a connection when
//! it queues output for it or closes it ([`Core::ready`]). Serving one
//! connection: read until the socket is drained (at most a few reads, then
//! it goes to the back of the list), decode whole frames straight from the
//! core's scratch buffer, write what is queued with one vectored `sendmsg`,
//! and finish it if it is closing. An idle connection costs no task, no
//! buffer and no timer: only its slab entry and its epoll registration.

use std::collections::HashSet;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use gw_proto::CloseReason;

use futures_lite::AsyncRead;

use super::poller::{Event, LISTENER_KEY};
use crate::core::ByKey;
use crate::core::{Conn, ConnKey, Core};

/// Reads of one connection per visit before it yields to the others.
const READS_PER_VISIT: usize = 4;
/// Connections served per poll of the loop before it yields to other tasks.
const VISITS_PER_POLL: usize = 256;
/// How often epoll is polled while no waiter can be armed.
const FALLBACK_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// Buffers per vectored write.
const IOV_MAX: usize = 64;

/// The I/O loop future of one core.
pub struct IoLoop {
    core: Rc<Core>,
    /// Armed while the epoll instance has no events for us (see `Poller::waiter`).
    waiter: Option<glommio::net::TcpStream>,
    /// When no waiter can be armed (no free fd for the dup): poll epoll on a
    /// timer instead, until one can.
    fallback: Option<glommio::timer::Timer>,
    waiter_errors: crate::metrics::LogLimit,
    events: Vec<Event>,
    /// Connections whose last event carried a hang-up (FIN, reset), until
    /// they are read to the end: a short read does not mean drained for
    /// them (see `serve`). Empty, unallocated, almost always.
    hangups: HashSet<u64>,
}

impl IoLoop {
    pub fn new(core: Rc<Core>) -> IoLoop {
        IoLoop {
            core,
            waiter: None,
            fallback: None,
            waiter_errors: Default::default(),
            events: Vec::new(),
            hangups: HashSet::new(),
        }
    }

    /// Collects socket events and marks their connections ready.
    fn collect(&mut self) {
        let Some(poller) = self.core.io.poller() else {
            return;
        };
        if let Err(e) = poller.collect(&mut self.events) {
            tracing::error!(core = self.core.index, error = %e, "epoll_wait failed");
        }
        for ev in self.events.drain(..) {
            if ev.key == LISTENER_KEY {
                self.core.listener_ready();
                continue;
            }
            let mut st = self.core.state.borrow_mut();
            let Some(c) = st.conns.by_key(ConnKey::from_id(ev.key)) else {
                continue; // closed since: the key names an old connection
            };
            if ev.readable() {
                c.flags.set_readable(true);
            }
            if ev.hangup() {
                self.hangups.insert(ev.key);
            }
            if ev.writable() {
                c.flags.set_write_blocked(false);
            }
            self.core.ready(c);
        }
    }

    /// Polls the waiter (or the fallback timer): true when it is time to
    /// collect events.
    fn epoll_ready(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(t) = self.fallback.as_mut() {
            return match Pin::new(t).poll(cx) {
                Poll::Pending => false,
                Poll::Ready(_) => {
                    self.fallback = None;
                    true
                }
            };
        }
        let Some(w) = self.waiter.as_mut() else {
            return true;
        };
        let mut byte = [0u8; 1];
        match Pin::new(w).poll_read(cx, &mut byte) {
            Poll::Pending => false,
            Poll::Ready(_) => {
                self.waiter = None;
                true
            }
        }
    }
}

impl Future for IoLoop {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.core.set_io_waker(cx.waker());
        loop {
            if this.core.stopping.get() {
                this.waiter = None;
                this.fallback = None;
                this.core.io_running.set(false);
                return Poll::Ready(());
            }
            if this.epoll_ready(cx) {
                this.collect();
            }
            let mut visits = 0;
            if this.hangups.is_empty() && this.hangups.capacity() > 1024 {
                this.hangups = HashSet::new(); // after a mass disconnect
            }
            while let Some(id) = this.core.next_ready() {
                serve(&this.core, id, &mut this.hangups);
                visits += 1;
                if visits == VISITS_PER_POLL {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            if this.waiter.is_some() || this.fallback.is_some() {
                return Poll::Pending;
            }
            let Some(poller) = this.core.io.poller() else {
                this.core.io_running.set(false);
                return Poll::Ready(()); // the io_uring driver runs this core
            };
            match poller.waiter() {
                Ok(w) => this.waiter = Some(w), // polled at the top: registers the wake-up
                Err(e) => {
                    // Out of files (EMFILE): poll epoll every FALLBACK_POLL instead.
                    if this.waiter_errors.allow() {
                        tracing::warn!(core = this.core.index, error = %e, "cannot arm the epoll waiter (open-file limit?); polling every 10 ms until it can");
                    }
                    this.fallback = Some(glommio::timer::Timer::new(FALLBACK_POLL));
                }
            }
        }
    }
}

/// Serves one connection: read, decode, write, and finish if closing.
///
/// `hangups` holds connections whose event reported the peer's FIN or a
/// reset. With edge-triggered epoll, data and a FIN that arrive together
/// (one segment, or both before the events are collected) make a single
/// edge; a short read of the data then looks drained, and nothing would
/// ever announce the end of stream: the connection would linger until a
/// deadline (auth, idle). For these connections reading goes on until the
/// end of stream (or an error) shows.
fn serve(core: &Rc<Core>, id: u64, hangups: &mut HashSet<u64>) {
    let hangup = !hangups.is_empty() && hangups.contains(&id);
    let key = ConnKey::from_id(id);
    let mut reads = 0;
    loop {
        let Some((closing, readable, fd)) =
            core.with_conn(key, |c| (c.close, c.flags.readable(), c.fd))
        else {
            if hangup {
                hangups.remove(&id);
            }
            return;
        };
        if let Some(reason) = closing {
            core.with_conn(key, |c| {
                if let Some(b) = super::ws::closing(c, reason) {
                    core.push_out_raw(c, crate::core::push::Out::frame(b));
                }
            });
            let _ = flush(core, key); // one best-effort flush of a final frame
            core.teardown(key);
            if hangup {
                hangups.remove(&id);
            }
            return;
        }
        if readable && reads < READS_PER_VISIT {
            reads += 1;
            read_once(core, key, fd, hangup);
            continue;
        }
        if let Err(e) = flush(core, key) {
            tracing::debug!(conn_id = id, error = %e, "write failed");
            core.close(key, CloseReason::IoError, None);
            continue;
        }
        // Done, or more to read later: back of the list, or off it.
        core.with_conn(key, |c| {
            if c.flags.readable() {
                core.requeue(c);
            } else {
                c.flags.set_queued(false);
            }
        });
        if hangup && !readable {
            hangups.remove(&id);
        }
        return;
    }
}

/// One `recv` into the core's scratch buffer, and the frames it completes.
/// After a hang-up event a short read does not mean drained: the end of
/// stream is still to be read.
fn read_once(core: &Rc<Core>, key: ConnKey, fd: i32, hangup: bool) {
    let id = key.id();
    let mut scratch = core.scratch.borrow_mut();
    // SAFETY: recv into our buffer, non-blocking, on the connection's open socket.
    let n = unsafe {
        libc::recv(
            fd,
            scratch.as_mut_ptr() as *mut libc::c_void,
            scratch.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                core.with_conn(key, |c| c.flags.set_readable(false));
            }
            io::ErrorKind::Interrupted => {}
            _ => {
                tracing::debug!(conn_id = id, error = %e, "read failed");
                core.close(key, CloseReason::IoError, None);
            }
        }
        return;
    }
    if n == 0 {
        core.close(key, CloseReason::ClientClosed, None);
        return;
    }
    let n = n as usize;
    if n < scratch.len() && !hangup {
        // Drained: with edge-triggered epoll, new data brings a new event.
        core.with_conn(key, |c| c.flags.set_readable(false));
    }
    super::input::received(core, key, &scratch[..n]);
}

/// Writes queued output until done or the socket is full (then the
/// connection waits for its write edge). Writing makes room: pushes waiting
/// in the backlog follow in the same visit. A connection whose AuthOk
/// waits for its subscription to be confirmed writes nothing yet
/// ([`Core::held`]).
fn flush(core: &Core, key: ConnKey) -> io::Result<()> {
    let id = key.id();
    if core.held(id) {
        return Ok(());
    }
    let now = core.now();
    let mut st = core.state.borrow_mut();
    let crate::core::State { conns, wheel, .. } = &mut *st;
    let Some(c) = conns.by_key(key) else {
        return Ok(());
    };
    loop {
        write_out(core, c)?;
        if c.flags.write_blocked() || !c.backlogged() {
            return Ok(());
        }
        let before = c.out_bytes;
        core.pump(c, now, wheel);
        if c.out_bytes == before {
            return Ok(());
        }
    }
}

/// Writes what is queued until done or the socket is full.
fn write_out(core: &Core, c: &mut Conn) -> io::Result<()> {
    if c.tls_active() {
        return if c.flags.write_blocked() {
            Ok(())
        } else {
            super::tls::flush(core, c)
        };
    }
    while !c.out.is_empty() && !c.flags.write_blocked() {
        match sendv(c.fd, c) {
            Ok(n) => {
                super::output::advance(c, n);
                super::output::wrote(core, c, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.flags.set_write_blocked(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One non-blocking vectored send of the queued items.
fn sendv(fd: i32, c: &Conn) -> io::Result<usize> {
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(IOV_MAX.min(c.out.len() * 2));
    super::output::gather(c, &mut iov, IOV_MAX - 1);
    if iov.is_empty() {
        return Ok(0);
    }
    // SAFETY: msghdr points at `iov`, which outlives the call; fd is open.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
