//! The io_uring driver: one ring per core, served by the core's own loop.
//!
//! - Accepts with one multishot accept on the core's listener (`accept.rs`).
//! - Reads with one multishot recv per connection into the core's provided
//!   buffer ring (`bufs.rs`): no connection holds a buffer while idle.
//! - Writes with SEND (one slice) or SENDMSG entries that own what they
//!   point at (`sends.rs`, reused), one in flight per connection, all
//!   submitted together.
//! - Closes through the ring (shutdown, then close).
//! - One `io_uring_enter` per loop iteration: when nothing else is
//!   runnable it submits what the iterations queued and waits for the
//!   next completion (beyond those of the sends it submits) or the next
//!   timer of the core (`core/timers.rs`).
//!
//! How it lives with glommio: the loop is a glommio task that never parks
//! through glommio. When a task of the core was woken since it last looked
//! (`wake::wakes`: by the loop's work, a timer or the eventfd), it yields,
//! so that the woken tasks (upstream requests, the inbox) run; otherwise it
//! waits in its own ring at once. glommio's park costs about 8 `io_uring_enter` and
//! a `membarrier` per wake-up (measured, ARCHITECTURE.md): waiting in our
//! ring is one. Other threads wake the loop through the core's eventfd
//! (`core/wake.rs`), which it always has a read armed on; the core's
//! timers are the loop's (`core/timers.rs`).

mod accept;
mod bufs;
mod sends;
mod setup;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gw_proto::CloseReason;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::core::{conn_id, wake, ConnKey, Core, Wake};
use crate::metrics::LogLimit;
use bufs::BufRing;
use sends::SendOp;
use setup::{build_ring, kind_of, user_data, Kind, VALUE_MASK};
pub use setup::{probe, Settings};

pub use crate::sockets::Pending;

/// Sets up the loop of one core: its ring and receive buffers. Then
/// [`run`] it (a glommio task): it accepts, reads, writes and closes for
/// every connection of the core, until the core stops.
pub fn start(
    core: Rc<Core>,
    listener: socket2::Socket,
    s: Settings,
    wake: Arc<Wake>,
) -> std::io::Result<Loop> {
    let l = Loop::new(core, listener, s, wake)?;
    // From now on the core's sleeps are the loop's.
    l.core.timers.run_own();
    Ok(l)
}

/// Runs a loop made by [`start`] until the core stops.
pub async fn run(mut l: Loop) {
    let core = l.core.clone();
    l.serve().await;
    l.finish();
    core.timers.stop_own();
    wake::set_own_loop(false);
    if let super::Io::Uring(p) = &core.io {
        p.ended.set(true);
    }
    core.io_running.set(false);
    core.accept_running.set(false);
}

/// `IORING_ENTER_GETEVENTS`: post completions (runs deferred task work).
const GETEVENTS: u32 = 1;
/// While the loop stays busy, every this many iterations it enters the
/// kernel to collect completions even with nothing to submit.
const GETEVENTS_EVERY_BUSY: u32 = 8;
/// The longest a wait that also counts the completions of the sends it
/// submits may take: a send the socket had no room for completes later,
/// and the wait must not hold other connections' input back for it.
const SEND_WAIT_MAX: Duration = Duration::from_millis(10);

/// Entries of a final send's chain: the send, the shutdown, the close.
const CLOSE_CHAIN_ENTRIES: usize = 3;

/// Completions taken from the ring at a time.
const REAP_BATCH: usize = 256;

/// One core's io_uring loop.
pub struct Loop {
    core: Rc<Core>,
    ring: IoUring,
    bufs: BufRing,
    sends: slab::Slab<Box<SendOp>>,
    listener: Option<socket2::Socket>,
    accept_armed: bool,
    /// When to arm accepting again after an error (EMFILE, ...).
    accept_retry: Option<Instant>,
    accept_backoff_ms: u32,
    accept_log: LogLimit,
    wake: Arc<Wake>,
    /// Where the armed eventfd read lands (boxed: the kernel writes it).
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Connections whose multishot recv ended and must be armed again.
    rearm: Vec<(i32, u64)>,
    /// Sends queued since the last submission. A send the socket takes
    /// completes during the submission, so the wait that submits them
    /// counts their completions and still sleeps until something new.
    sends_unsubmitted: u32,
    /// Finished sends kept for reuse (`SendOp::recycle`).
    spare: sends::Spare,
    /// Completions taken from the ring, handled after (reused).
    cqes: Vec<(u64, i32, u32)>,
    /// The socket whose final send was just queued, hard-linked to what
    /// comes next in the queue: `queue_closes` queues its shutdown first.
    linked_close: Option<i32>,
}

impl Loop {
    fn new(
        core: Rc<Core>,
        listener: socket2::Socket,
        s: Settings,
        wake: Arc<Wake>,
    ) -> std::io::Result<Loop> {
        let ring = build_ring(&s)?;
        // Enters then name the ring by its registered index: no fd lookup
        // per io_uring_enter (kernels without it just look the fd up).
        let _ = ring.submitter().register_ring_fd();
        let bufs = BufRing::new(&ring, s.buffers, s.buffer_bytes as usize)?;
        Ok(Loop {
            core,
            ring,
            bufs,
            sends: slab::Slab::new(),
            listener: Some(listener),
            accept_armed: false,
            accept_retry: None,
            accept_backoff_ms: 0,
            accept_log: LogLimit::default(),
            wake,
            wake_buf: Box::new(0),
            wake_armed: false,
            rearm: Vec::new(),
            sends_unsubmitted: 0,
            spare: Default::default(),
            cqes: Vec::with_capacity(REAP_BATCH),
            linked_close: None,
        })
    }

    /// Queues an entry, submitting first when the queue is full.
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every entry's buffers live until its completion: recv
        // buffers in `bufs`, sends in `sends`, the wake counter in `wake_buf`.
        unsafe {
            if self.ring.submission().push(&e).is_err() {
                let _ = self.ring.submit();
                self.sends_unsubmitted = 0;
                let _ = self.ring.submission().push(&e);
            }
        }
    }

    async fn serve(&mut self) {
        // Spawned tasks run at once: let the spawner go on first.
        futures_lite::future::yield_now().await;
        let mut seen = wake::wakes();
        let mut busy = 0u32;
        loop {
            if self.core.stopping.get() {
                return;
            }
            self.reap();
            self.core.timers.fire(Instant::now());
            self.accepting();
            self.serve_ready();
            self.queue_pending();
            self.bufs.publish();
            // Wait in our ring only when nothing else on this core can run:
            // no task was woken since the last look (glommio has run every
            // task woken before the loop's last yield, which queued the
            // loop behind them).
            let wakes = wake::wakes();
            let others = wakes != seen;
            seen = wakes;
            if others || !self.ring.completion().is_empty() {
                // Let the woken tasks run; what this iteration queued is
                // submitted by the wait that follows, in the same
                // io_uring_enter. While the loop stays busy it enters now
                // and then, so that completions deferred as task work are
                // posted (an enter per busy iteration was a second
                // io_uring_enter per ping, an empty one a third).
                busy += 1;
                if busy.is_multiple_of(GETEVENTS_EVERY_BUSY) {
                    self.enter_nowait();
                }
                if others {
                    futures_lite::future::yield_now().await;
                    seen += 1; // the loop's own wake-up, by its yield
                }
                continue;
            }
            busy = 0;
            // Submit and wait in one enter: for one completion more than
            // the sends being submitted post at once (the socket takes
            // them), so a ping costs one io_uring_enter, as in the
            // reference loop that skips send completions.
            let sends = std::mem::take(&mut self.sends_unsubmitted);
            let mut timeout = self.next_deadline();
            if sends > 0 {
                timeout = timeout.min(SEND_WAIT_MAX);
            }
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self
                .ring
                .submitter()
                .submit_with_args(1 + sends as usize, &args)
            {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::warn!(core = self.core.index, error = %e, "io_uring_enter failed");
                    futures_lite::future::yield_now().await;
                }
            }
        }
    }

    /// Submits what is queued and posts finished completions, without
    /// waiting.
    fn enter_nowait(&mut self) {
        let n = self.ring.submission().len() as u32;
        self.sends_unsubmitted = 0;
        // SAFETY: a plain io_uring_enter on our ring: `n` queued entries
        // (all valid, see `push`), no wait, no argument.
        let r = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(n, 0, GETEVENTS, None)
        };
        if let Err(e) = r {
            if !matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
            ) {
                tracing::warn!(core = self.core.index, error = %e, "io_uring_enter failed");
            }
        }
    }

    /// How long the loop may wait: until the core's next timer, or the
    /// next accept retry, or at most a second.
    fn next_deadline(&self) -> Duration {
        let now = Instant::now();
        let mut at = now + Duration::from_secs(1);
        if let Some(t) = self.core.timers.next() {
            at = at.min(t);
        }
        if let Some(t) = self.accept_retry {
            at = at.min(t);
        }
        at.saturating_duration_since(now)
    }

    /// Handles every completion.
    fn reap(&mut self) {
        // Reused: no allocation per wake-up.
        let mut batch = std::mem::take(&mut self.cqes);
        loop {
            batch.clear();
            batch.extend(
                self.ring
                    .completion()
                    .take(REAP_BATCH)
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if batch.is_empty() {
                self.cqes = batch;
                return;
            }
            for &(ud, res, flags) in &batch {
                match kind_of(ud) {
                    Some(Kind::Accept) => self.accepted(res, flags),
                    Some(Kind::Recv) => self.received(ud & VALUE_MASK, res, flags),
                    Some(Kind::Send) => self.sent((ud & VALUE_MASK) as usize, res),
                    Some(Kind::Wake) => {
                        self.wake_armed = false;
                        self.wake.taken();
                        wake::wake_waiters();
                    }
                    Some(Kind::Close) | Some(Kind::Cancel) | None => {}
                }
            }
        }
    }

    /// The id of this core's connection from the 56 bits a completion kept.
    fn conn(&self, value: u64) -> u64 {
        conn_id(self.core.index, (value >> 32) as u32, value as u32)
    }

    fn received(&mut self, value: u64, res: i32, flags: u32) {
        let id = self.conn(value);
        let key = ConnKey::from_id(id);
        let fd = self.core.with_conn(key, |c| (c.fd, c.close.is_some()));
        if res > 0 {
            if let Some(bid) = cqueue::buffer_select(flags) {
                if let Some((_, false)) = fd {
                    let data = self.bufs.data(bid, res as usize);
                    super::input::received(&self.core, key, data);
                    // What the input queued (replies, a handshake's
                    // answer, TLS records) goes out this iteration.
                    self.core.with_conn(key, |c| {
                        if !c.out.is_empty() || c.close.is_some() || c.tls_active() {
                            self.core.ready(c);
                        }
                    });
                }
                self.bufs.give_back(bid);
            }
        }
        if cqueue::more(flags) {
            return;
        }
        let Some((fd, false)) = fd else {
            return; // gone or closing: nothing to arm
        };
        match res {
            // Out of buffers (the ring was empty for a moment) or the
            // kernel ended the multishot: arm it again.
            r if r > 0 || r == -libc::ENOBUFS => self.rearm.push((fd, id)),
            0 => self.core.close(key, CloseReason::ClientClosed, None),
            r if r == -libc::ECANCELED => {}
            r => {
                tracing::debug!(conn_id = id, error = %std::io::Error::from_raw_os_error(-r), "read failed");
                self.core.close(key, CloseReason::IoError, None);
            }
        }
    }

    fn sent(&mut self, slot: usize, res: i32) {
        let Some(op) = self.sends.try_remove(slot) else {
            return;
        };
        let (conn_id, owns_bytes) = (op.conn_id, op.owns_bytes());
        SendOp::recycle(op, &mut self.spare);
        let key = ConnKey::from_id(conn_id);
        let now = self.core.now();
        let mut st = self.core.state.borrow_mut();
        let crate::core::State { conns, wheel, .. } = &mut *st;
        let Some(c) = conns.get_mut(key.idx() as usize).filter(|c| c.key() == key) else {
            return; // closed meanwhile: the op (and what it held) goes
        };
        c.flags.set_send_inflight(false);
        if res < 0 {
            if c.close.is_none() && res != -libc::ECANCELED {
                tracing::debug!(conn_id = key.id(), error = %std::io::Error::from_raw_os_error(-res), "write failed");
                c.close = Some(CloseReason::IoError);
            }
            self.core.ready(c);
            return;
        }
        let n = res as usize;
        if !owns_bytes {
            super::output::advance(c, n);
        }
        super::output::wrote(&self.core, c, n);
        // Writing made room: pushes waiting for it follow.
        if c.backlogged() {
            self.core.pump(c, now, wheel);
        }
        if !c.out.is_empty() || c.close.is_some() || c.tls_active() {
            self.core.ready(c);
        }
    }

    /// Queues what the core asked for (new connections' recvs, closes) and
    /// the eventfd read.
    fn queue_pending(&mut self) {
        let Some(p) = self.pending() else { return };
        let arms = std::mem::take(&mut *p.arms.borrow_mut());
        for (fd, id) in arms.into_iter().chain(std::mem::take(&mut self.rearm)) {
            // Not for a connection closed meanwhile: its close is queued
            // already, and a recv armed behind it would read whatever
            // socket gets that descriptor number next (on any core).
            let open = self
                .core
                .with_conn(ConnKey::from_id(id), |c| c.fd == fd && c.close.is_none());
            if open != Some(true) {
                continue;
            }
            let e = opcode::RecvMulti::new(types::Fd(fd), bufs::GROUP)
                .build()
                .user_data(user_data(Kind::Recv, id));
            self.push(e);
        }
        self.queue_closes();
        if !self.wake_armed {
            if let Some(fd) = self.wake.fd() {
                let e =
                    opcode::Read::new(types::Fd(fd), &mut *self.wake_buf as *mut u64 as *mut u8, 8)
                        .build()
                        .user_data(user_data(Kind::Wake, 0));
                self.push(e);
                self.wake_armed = true;
            }
        }
    }

    fn pending(&self) -> Option<&Pending> {
        match &self.core.io {
            super::Io::Uring(p) => Some(p),
            super::Io::Epoll(_) => None,
        }
    }

    /// Shutdown then close for each socket the core let go of. The shutdown
    /// (the FIN, and the end of the socket's multishot recv) comes first.
    /// After the socket's final frame it is queued, hard-linked to the
    /// frame's send before it and to the close after it, so the frame goes
    /// out before the FIN. When the core closed the socket at once (a
    /// drain's deadline, a stop) with a send of it queued or in flight, it
    /// is queued too, after that send in the queue (not linked to it: a
    /// send already submitted may still be cut short, as on epoll).
    /// Otherwise it is done at once (the ring would run it in an io-wq
    /// worker thread) and only the close is queued.
    fn queue_closes(&mut self) {
        let linked = self.linked_close.take();
        let mut closes = match self.pending() {
            Some(p) => std::mem::take(&mut *p.closes.borrow_mut()),
            None => return,
        };
        // The socket behind the final send first: the entry right after
        // a hard-linked send is the next in its chain.
        if let Some(i) = linked.and_then(|fd| closes.iter().position(|&(f, _)| f == fd)) {
            debug_assert!(closes[i].1, "a final send is in flight");
            closes.swap(0, i);
        }
        for (fd, behind_send) in closes {
            if behind_send {
                let sd = opcode::Shutdown::new(types::Fd(fd), libc::SHUT_RDWR)
                    .build()
                    .flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS)
                    .user_data(user_data(Kind::Close, 0));
                self.push(sd);
            } else {
                // SAFETY: the connection's socket, which the core let go of
                // and nothing else uses: no send of it is queued or in
                // flight (`Conn::flags.send_inflight` was clear at its
                // teardown), and it is closed once, below.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            let cl = opcode::Close::new(types::Fd(fd))
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(user_data(Kind::Close, 1));
            self.push(cl);
        }
    }

    /// Serves the connections on the core's ready list: a send for each
    /// with output and none in flight; teardown for the closing ones (after
    /// one last send of their final frame).
    fn serve_ready(&mut self) {
        while let Some(id) = self.core.next_ready() {
            let key = ConnKey::from_id(id);
            let Some((closing, inflight, fd)) = self.core.with_conn(key, |c| {
                c.flags.set_queued(false);
                (c.close, c.flags.send_inflight(), c.fd)
            }) else {
                continue;
            };
            if let Some(reason) = closing {
                if inflight {
                    // A send still pending is one the socket had no room
                    // for (io_uring tries a send at once): cancel it, and
                    // close once its completion is in (it brings the
                    // connection back here), so that what was queued before
                    // the close goes out first.
                    self.cancel_send(id);
                    continue;
                }
                if !self.core.held(id) {
                    self.core.with_conn(key, |c| {
                        if let Some(b) = super::ws::closing(c, reason) {
                            self.core.push_out_raw(c, crate::core::push::Out::frame(b));
                        }
                    });
                    // The final frame, hard-linked to the shutdown and close
                    // that teardown queues next: it goes out first.
                    self.send(key, fd, true);
                }
                self.core.teardown(key);
                self.queue_closes();
                continue;
            }
            if inflight || self.core.held(id) {
                continue; // its completion (or the release) brings it back
            }
            self.send(key, fd, false);
        }
    }

    /// Cancels the send in flight for connection `id`, if any.
    fn cancel_send(&mut self, id: u64) {
        let Some(slot) = self
            .sends
            .iter()
            .find(|(_, op)| op.conn_id == id)
            .map(|(k, _)| k)
        else {
            return;
        };
        let e = opcode::AsyncCancel::new(user_data(Kind::Send, slot as u64))
            .build()
            .user_data(user_data(Kind::Cancel, 0));
        self.push(e);
    }

    /// Queues one send of what the connection has queued (TLS: sealed).
    fn send(&mut self, key: ConnKey, fd: i32, last: bool) {
        let id = key.id();
        let spare = &mut self.spare;
        let op = self.core.with_conn(key, |c| {
            if c.tls_active() {
                match super::tls::take_ciphertext(&self.core, c, last) {
                    Ok(b) if b.is_empty() => None,
                    Ok(b) => Some(Ok(SendOp::owned(id, b, spare))),
                    Err(e) => Some(Err(e)),
                }
            } else {
                SendOp::queued(c, spare).map(Ok)
            }
        });
        let op = match op.flatten() {
            None => return,
            Some(Ok(op)) => op,
            Some(Err(e)) => {
                tracing::debug!(conn_id = id, error = %e, "TLS write failed");
                self.core.close(key, CloseReason::IoError, None);
                return;
            }
        };
        self.core
            .with_conn(key, |c| c.flags.set_send_inflight(true));
        let single = op.single();
        let msg = op.msg();
        let slot = self.sends.insert(op);
        let mut flags = squeue::Flags::empty();
        // The last send before a close is one try (as much as the socket
        // takes now): the shutdown and close linked behind it must not wait
        // for a peer that does not read.
        let mut msg_flags = libc::MSG_NOSIGNAL;
        if last {
            flags |= squeue::Flags::IO_HARDLINK;
            msg_flags |= libc::MSG_DONTWAIT;
        } else {
            msg_flags |= libc::MSG_WAITALL;
        }
        let e = match single {
            Some((buf, len)) => opcode::Send::new(types::Fd(fd), buf, len)
                .flags(msg_flags)
                .build(),
            None => opcode::SendMsg::new(types::Fd(fd), msg)
                .flags(msg_flags as u32)
                .build(),
        };
        let e = e.flags(flags).user_data(user_data(Kind::Send, slot as u64));
        if last {
            // The send, its shutdown and its close go in one submission: a
            // chain cut by a full queue would leave the send to an io-wq
            // worker, racing the close (and a reused descriptor).
            let free = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if free < CLOSE_CHAIN_ENTRIES {
                let _ = self.ring.submit();
                self.sends_unsubmitted = 0;
            }
            self.linked_close = Some(fd);
        }
        self.push(e);
        self.sends_unsubmitted += 1;
    }

    /// The core stopped: cancel what is in flight, submit the last closes,
    /// and reap for a moment so the kernel lets go of our buffers before
    /// they are freed (sends still unanswered then are leaked on purpose).
    fn finish(&mut self) {
        self.listener = None;
        self.queue_closes();
        let cancel_all = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(Kind::Cancel, 0));
        self.push(cancel_all);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let ts = types::Timespec::from(Duration::from_millis(20));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
            if self.sends.is_empty() {
                break;
            }
        }
        for op in self.sends.drain() {
            std::mem::forget(op);
        }
    }
}
