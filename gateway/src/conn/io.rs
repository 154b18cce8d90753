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

use gw_proto::{CloseReason, Decoded, ErrorCode};

use futures_lite::AsyncRead;

use super::poller::{Event, LISTENER_KEY};
use crate::core::{conn_id_idx, Conn, Core};
use crate::metrics::CoreMetrics;

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
        if let Err(e) = self.core.poller.collect(&mut self.events) {
            tracing::error!(core = self.core.index, error = %e, "epoll_wait failed");
        }
        for ev in self.events.drain(..) {
            if ev.key == LISTENER_KEY {
                self.core.listener_ready();
                continue;
            }
            let mut st = self.core.state.borrow_mut();
            let Some(c) = st
                .conns
                .get_mut(conn_id_idx(ev.key) as usize)
                .filter(|c| c.id == ev.key)
            else {
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
            match this.core.poller.waiter() {
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
    let idx = conn_id_idx(id);
    let mut reads = 0;
    loop {
        let Some((closing, readable, fd)) =
            core.with_conn(idx, id, |c| (c.close, c.flags.readable(), c.fd))
        else {
            if hangup {
                hangups.remove(&id);
            }
            return;
        };
        if let Some(reason) = closing {
            core.with_conn(idx, id, |c| {
                if let Some(b) = super::ws::closing(c, reason) {
                    core.push_out_raw(c, crate::core::push::Out::frame(b));
                }
            });
            let _ = flush(core, idx, id); // one best-effort flush of a final frame
            core.teardown(idx, id);
            if hangup {
                hangups.remove(&id);
            }
            return;
        }
        if readable && reads < READS_PER_VISIT {
            reads += 1;
            read_once(core, idx, id, fd, hangup);
            continue;
        }
        if let Err(e) = flush(core, idx, id) {
            tracing::debug!(conn_id = id, error = %e, "write failed");
            core.close(idx, id, CloseReason::IoError, None);
            continue;
        }
        // Done, or more to read later: back of the list, or off it.
        core.with_conn(idx, id, |c| {
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
fn read_once(core: &Rc<Core>, idx: u32, id: u64, fd: i32, hangup: bool) {
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
                core.with_conn(idx, id, |c| c.flags.set_readable(false));
            }
            io::ErrorKind::Interrupted => {}
            _ => {
                tracing::debug!(conn_id = id, error = %e, "read failed");
                core.close(idx, id, CloseReason::IoError, None);
            }
        }
        return;
    }
    if n == 0 {
        core.close(idx, id, CloseReason::ClientClosed, None);
        return;
    }
    let n = n as usize;
    CoreMetrics::add(&core.metrics.bytes_in, n as u64);
    let data = &scratch[..n];
    let Some((layer, before)) = core.with_conn(idx, id, |c| {
        // Nothing was read before: these are the connection's first bytes.
        let first = c.bytes_in == 0;
        c.bytes_in = c.bytes_in.saturating_add(n as u32);
        if n < scratch.len() && !hangup {
            // Drained: with edge-triggered epoll, new data brings a new event.
            c.flags.set_readable(false);
        }
        let before = super::preauth::bytes(c);
        (layer(core, c, data, Some(first)), before)
    }) else {
        return;
    };
    match layer {
        Layer::Tls => super::tls::input(core, idx, id, data),
        Layer::Ws => super::ws::input(core, idx, id, data),
        Layer::Frames => on_bytes(core, idx, id, data),
    }
    // What an unauthenticated connection buffers counts against the core's
    // pre-auth budget (`preauth.rs`); an authenticated one costs nothing here.
    let after = core
        .with_conn(idx, id, |c| super::preauth::bytes(c))
        .unwrap_or(0);
    if before != after {
        core.preauth_changed(id, before, after);
    }
}

/// What received bytes go to first.
enum Layer {
    Tls,
    Ws,
    Frames,
}

/// The layer for a connection's bytes: TLS, WebSocket or frames. The
/// transport is decided once, by a connection's first bytes: on its first
/// read (`first_raw` = Some(true)) for TLS, and on its first plaintext
/// (after TLS, when it speaks TLS) for WebSocket. Later bytes never start
/// a handshake, whatever they begin with: a WebSocket or frame connection
/// that sends 0x16 or `G` stays what it is (and its parser judges them).
/// `first_raw` is None for plaintext out of TLS.
fn layer(core: &Core, c: &mut Conn, data: &[u8], first_raw: Option<bool>) -> Layer {
    if let Some(first) = first_raw {
        if super::tls::active(c) || (first && super::tls::maybe_start(core, c, data)) {
            return Layer::Tls;
        }
    }
    if super::ws::active(c) {
        return Layer::Ws;
    }
    let first_plain = !c.flags.plain_seen();
    c.flags.set_plain_seen(true);
    if first_plain && super::ws::maybe_start(core, c, data) {
        Layer::Ws
    } else {
        Layer::Frames
    }
}

/// Plaintext out of TLS: WebSocket or frames.
pub(super) fn plain_input(core: &Rc<Core>, idx: u32, id: u64, data: &[u8]) {
    match core.with_conn(idx, id, |c| layer(core, c, data, None)) {
        Some(Layer::Ws) => super::ws::input(core, idx, id, data),
        Some(_) => on_bytes(core, idx, id, data),
        None => {}
    }
}

/// Decodes and handles every whole frame in `data` (plus any partial);
/// `data` is plaintext (after TLS and WebSocket, when the connection uses
/// them).
pub(super) fn on_bytes(core: &Rc<Core>, idx: u32, id: u64, data: &[u8]) {
    let now = core.now();
    let Some((mut partial, mut authed)) =
        core.with_conn(idx, id, |c| (std::mem::take(&mut c.partial), c.authed()))
    else {
        return;
    };
    let buf: &[u8] = if partial.is_empty() {
        data
    } else {
        // Exactly what arrived: no doubling of a partial frame's buffer.
        partial.reserve_exact(data.len());
        partial.extend_from_slice(data);
        &partial
    };
    // Before Auth only an Auth frame makes sense: a small limit keeps what
    // an unauthenticated client can make the core buffer small.
    let limit = |authed: bool| {
        if authed {
            core.cfg.frame_bytes_max
        } else {
            core.cfg.preauth_frame_bytes_max()
        }
    };
    let mut max = limit(authed) as usize;
    let mut pos = 0;
    let mut closing = false;
    while pos < buf.len() && !closing {
        match gw_proto::decode(&buf[pos..], max) {
            Ok(Decoded::Frame(frame, used)) => {
                pos += used;
                CoreMetrics::inc(&core.metrics.frames_in);
                // A whole frame is a sign of life; stray bytes are not.
                let state = core.with_conn(idx, id, |c| {
                    c.last_in = now;
                    c.authed()
                });
                super::frames::on_frame(core, idx, id, frame);
                let after = core.with_conn(idx, id, |c| (c.close.is_some(), c.authed()));
                closing = after.is_none_or(|(closing, _)| closing);
                if state == Some(false) && after.is_some_and(|(_, a)| a) {
                    authed = true;
                    max = limit(authed) as usize;
                }
            }
            Ok(Decoded::Incomplete(_)) => break,
            Err(e) => {
                let (reason, code) = match e {
                    gw_proto::DecodeError::TooLarge { .. } => {
                        (CloseReason::FrameTooLarge, ErrorCode::FrameTooLarge)
                    }
                    gw_proto::DecodeError::Malformed(_) => {
                        (CloseReason::BadFrame, ErrorCode::BadFrame)
                    }
                };
                tracing::debug!(conn_id = id, error = %e, authed, "bad frame");
                core.close(
                    idx,
                    id,
                    reason,
                    Some(Core::error_body(code, e.to_string(), 0)),
                );
                closing = true;
            }
        }
    }
    if closing {
        return;
    }
    // The joined buffer can stay when all of it is the partial frame and it
    // is not bigger than that frame.
    let joined_fits = pos == 0 && !partial.is_empty() && partial.capacity() <= frame_size(buf, max);
    let keep = if joined_fits {
        partial
    } else {
        keep_partial(&buf[pos..], max)
    };
    core.with_conn(idx, id, |c| c.partial = keep);
}

/// Bytes of the frame at the start of `rest` (prefix included), when its
/// length prefix is in; else what is there.
fn frame_size(rest: &[u8], max: usize) -> usize {
    match gw_proto::peek_len(rest, max) {
        Ok(Some(total)) => total.max(rest.len()),
        _ => rest.len(),
    }
}

/// The buffer for the start of a frame not complete yet: empty and
/// unallocated when nothing is left; otherwise sized to the frame the
/// length prefix announces (already checked against `max`), not to what a
/// doubling growth would leave.
fn keep_partial(rest: &[u8], max: usize) -> Vec<u8> {
    if rest.is_empty() {
        return Vec::new();
    }
    let mut v = Vec::with_capacity(frame_size(rest, max));
    v.extend_from_slice(rest);
    v
}

/// Writes queued output until done or the socket is full (then the
/// connection waits for its write edge). Writing makes room: pushes waiting
/// in the backlog follow in the same visit. A connection whose AuthOk
/// waits for its subscription to be confirmed writes nothing yet
/// ([`Core::held`]).
fn flush(core: &Core, idx: u32, id: u64) -> io::Result<()> {
    if core.held(id) {
        return Ok(());
    }
    let now = core.now();
    let mut st = core.state.borrow_mut();
    let crate::core::State { conns, wheel, .. } = &mut *st;
    let Some(c) = conns.get_mut(idx as usize).filter(|c| c.id == id) else {
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
    if super::tls::active(c) {
        return if c.flags.write_blocked() {
            Ok(())
        } else {
            super::tls::flush(core, c)
        };
    }
    while !c.out.is_empty() && !c.flags.write_blocked() {
        match sendv(c.fd, c) {
            Ok(n) => {
                advance(c, n);
                wrote(core, c, n);
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
    let mut skip = c.out_off as usize;
    for item in c.out.iter() {
        for part in [item.head.as_slice(), &item.body[..]] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            iov.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
        if iov.len() >= IOV_MAX - 1 {
            break;
        }
    }
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

/// Drops `n` written bytes from the front of the queue.
pub(super) fn advance(c: &mut Conn, n: usize) {
    let mut left = n + c.out_off as usize;
    c.out_off = 0;
    while let Some(front) = c.out.front() {
        let len = front.len();
        if left < len {
            c.out_off = left as u32;
            break;
        }
        left -= len;
        c.out_bytes = c.out_bytes.saturating_sub(len as u32);
        c.out.pop_front();
    }
    if c.out.is_empty() {
        c.out = Default::default(); // give the ring buffer back while idle
    }
}

/// Counts bytes written to a connection's socket.
pub(super) fn wrote(core: &Core, c: &mut Conn, n: usize) {
    c.bytes_out = c.bytes_out.saturating_add(n as u32);
    CoreMetrics::add(&core.metrics.bytes_out, n as u64);
}
