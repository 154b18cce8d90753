//! The connection driver: one small hand-written future per connection that
//! owns the socket and nothing else (state lives in the core's slab).
//!
//! Each poll: write what is queued (one vectored `sendmsg`), then read into
//! the core's scratch buffer, lent for this poll only, and decode whole
//! frames from it. Only the bytes of an incomplete frame are kept per
//! connection, so an idle connection holds no read or write buffer. Readiness
//! comes from glommio (io_uring poll); other tasks wake the driver through
//! the waker stored on the connection when they queue output or close it.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use gw_proto::{CloseReason, Decoded, ErrorCode};

use crate::core::{Conn, Core};
use crate::metrics::CoreMetrics;

/// Reads per poll before yielding to other connections.
const READS_PER_POLL: usize = 4;
/// Buffers per vectored write.
const IOV_MAX: usize = 64;

pub struct Driver {
    core: Rc<Core>,
    stream: TcpStream,
    idx: u32,
    id: u64,
}

impl Driver {
    pub fn new(core: Rc<Core>, stream: TcpStream, idx: u32, id: u64) -> Driver {
        core.drivers.set(core.drivers.get() + 1);
        Driver {
            core,
            stream,
            idx,
            id,
        }
    }

    /// Writes queued output until done (true) or the socket is full (false).
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let fd = self.stream.as_raw_fd();
        loop {
            let written = {
                let mut st = self.core.state.borrow_mut();
                let Some(c) = st
                    .conns
                    .get_mut(self.idx as usize)
                    .filter(|c| c.id == self.id)
                else {
                    return Ok(true);
                };
                if c.out.is_empty() {
                    return Ok(true);
                }
                match sendv(fd, c) {
                    Ok(n) => {
                        advance(c, n);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                }
            };
            if written > 0 {
                CoreMetrics::add(&self.core.metrics.bytes_out, written as u64);
                continue;
            }
            // Socket full: ask glommio for write readiness. Its poll_write may
            // also find room and send the first unwritten bytes itself.
            let Driver {
                core,
                stream,
                idx,
                id,
            } = self;
            let mut st = core.state.borrow_mut();
            let Some(c) = st.conns.get_mut(*idx as usize).filter(|c| c.id == *id) else {
                return Ok(true);
            };
            let Some(buf) = first_unwritten(c) else {
                return Ok(true);
            };
            match Pin::new(stream).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    advance(c, n);
                    CoreMetrics::add(&core.metrics.bytes_out, n as u64);
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
    }

    /// Decodes and handles every whole frame in `data` (plus any partial).
    fn on_bytes(&self, data: &[u8]) {
        let core = &self.core;
        CoreMetrics::add(&core.metrics.bytes_in, data.len() as u64);
        let now = core.now();
        let Some(mut partial) =
            core.with_conn(self.idx, self.id, |c| std::mem::take(&mut c.partial))
        else {
            return;
        };
        let buf: &[u8] = if partial.is_empty() {
            data
        } else {
            partial.extend_from_slice(data);
            &partial
        };
        let max = core.cfg.frame_bytes_max as usize;
        let mut pos = 0;
        let mut closing = false;
        while pos < buf.len() && !closing {
            match gw_proto::decode(&buf[pos..], max) {
                Ok(Decoded::Frame(frame, used)) => {
                    pos += used;
                    CoreMetrics::inc(&core.metrics.frames_in);
                    // A whole frame is a sign of life; stray bytes are not.
                    core.with_conn(self.idx, self.id, |c| c.last_in = now);
                    super::frames::on_frame(core, self.idx, self.id, frame);
                    closing = core
                        .with_conn(self.idx, self.id, |c| c.close.is_some())
                        .unwrap_or(true);
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
                    tracing::debug!(conn_id = self.id, error = %e, "bad frame");
                    core.close(
                        self.idx,
                        self.id,
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
        let rest = &buf[pos..];
        let keep = if rest.is_empty() {
            Vec::new()
        } else if partial.is_empty() {
            rest.to_vec()
        } else {
            partial.drain(..pos);
            partial
        };
        core.with_conn(self.idx, self.id, |c| c.partial = keep);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.core
            .drivers
            .set(self.core.drivers.get().saturating_sub(1));
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..READS_PER_POLL {
            let Some(closing) = this.core.with_conn(this.idx, this.id, |c| c.close) else {
                let _ = shutdown(&this.stream); // torn down by the core (stop)
                return Poll::Ready(());
            };
            let wrote = this.flush(cx);
            if closing.is_some() {
                // One best-effort flush (a GoAway or error frame), then go.
                let _ = shutdown(&this.stream);
                this.core.teardown(this.idx, this.id);
                return Poll::Ready(());
            }
            if let Err(e) = wrote {
                tracing::debug!(conn_id = this.id, error = %e, "write failed");
                this.core
                    .close(this.idx, this.id, CloseReason::IoError, None);
                continue;
            }
            let read = {
                let mut scratch = this.core.scratch.borrow_mut();
                match Pin::new(&mut this.stream).poll_read(cx, &mut scratch[..]) {
                    Poll::Ready(Ok(0)) => Some(Err(CloseReason::ClientClosed)),
                    Poll::Ready(Ok(n)) => {
                        this.on_bytes(&scratch[..n]);
                        Some(Ok(()))
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(conn_id = this.id, error = %e, "read failed");
                        Some(Err(CloseReason::IoError))
                    }
                    Poll::Pending => None,
                }
            };
            match read {
                Some(Ok(())) => {}
                Some(Err(reason)) => this.core.close(this.idx, this.id, reason, None),
                None => {
                    this.core.with_conn(this.idx, this.id, |c| {
                        if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            c.waker = Some(cx.waker().clone());
                        }
                    });
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The first unwritten bytes of the front item (its head or its body).
fn first_unwritten(c: &Conn) -> Option<&[u8]> {
    let front = c.out.front()?;
    let off = c.out_off as usize;
    let head = front.head.as_slice();
    if off < head.len() {
        Some(&head[off..])
    } else {
        front.body.get(off - head.len()..)
    }
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
fn advance(c: &mut Conn, n: usize) {
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

/// Ends the TCP connection now. Closing the fd alone is not enough: an
/// in-flight io_uring poll holds a reference to the socket until it completes.
fn shutdown(stream: &TcpStream) -> io::Result<()> {
    // SAFETY: plain shutdown(2) on an open fd owned by `stream`.
    let r = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
