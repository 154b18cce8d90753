//! Sockets of the flood client: a non-blocking connect from an optional
//! source address, and frame reads (over any [`Stream`]) through one
//! scratch buffer per thread so that a connection owns no read buffer.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;
use glommio::net::TcpStream;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::proto::{Codec, Event};
use crate::transport::Stream;

/// `IP_BIND_ADDRESS_NO_PORT` (linux/in.h): bind the address now, pick the
/// port at connect time per 4-tuple, so each source address has the whole
/// ephemeral range towards each destination.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Bytes of the per-thread read scratch buffer.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// Source address number `n` (0-based) counting up from `base`:
/// 127.0.0.2, 127.0.0.3, ... carrying into the third octet.
pub fn source_addr(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

/// Starts a non-blocking connect to `target`, bound to `source` first when
/// given. The connect completes in the background (EINPROGRESS); see
/// [`wait_connected`].
pub fn start_connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    s.set_nodelay(true)?;
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on an open socket with a valid pointer and length.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    match s.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s)
}

/// Hands a socket to the current glommio executor (must run on one).
pub fn into_glommio(s: Socket) -> TcpStream {
    // glommio builds on socket2 0.4, this crate on 0.5: move the fd across.
    // SAFETY: the fd is an open TCP socket whose ownership moves to the stream.
    unsafe { TcpStream::from_raw_fd(s.into_raw_fd()) }
}

/// Waits until a connect started by [`start_connect`] completes: a
/// zero-byte send fails with EAGAIN while the handshake runs (glommio then
/// polls for writability), returns 0 once connected, and returns the
/// connect error (ECONNREFUSED, ETIMEDOUT, ...) if it failed.
pub async fn wait_connected(stream: &mut TcpStream) -> io::Result<()> {
    futures_lite::AsyncWriteExt::write(stream, &[])
        .await
        .map(|_| ())
}

/// Why a connection's read side ended.
#[derive(Debug)]
pub enum RxEnd {
    /// The peer closed (read returned 0).
    Eof,
    Io(io::Error),
    /// The peer sent something this protocol cannot parse.
    BadFrame(String),
}

/// Reads what is available (at most `reads_max` reads) into the thread's
/// scratch buffer and hands every whole message to `on`. Ready(Ok) when
/// the reads stopped at `reads_max` (the caller should yield and come back),
/// Pending when the socket is drained (the waker is registered), Ready(Err)
/// when the read side ended.
pub fn poll_frames(
    stream: &mut Stream,
    codec: Codec,
    partial: &mut Vec<u8>,
    cx: &mut Context<'_>,
    reads_max: usize,
    on: &mut dyn FnMut(Event),
) -> Poll<Result<(), RxEnd>> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        for _ in 0..reads_max {
            let n = match Pin::new(&mut *stream).poll_read(cx, &mut s[..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(RxEnd::Eof)),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(RxEnd::Io(e))),
                Poll::Pending => return Poll::Pending,
            };
            if let Err(e) = crate::proto::feed(codec, partial, &s[..n], on) {
                return Poll::Ready(Err(RxEnd::BadFrame(e)));
            }
        }
        Poll::Ready(Ok(()))
    })
}

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC is one clock for every
/// process of the host, so worker processes compare their readings).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_count_up() {
        let base = Ipv4Addr::new(127, 0, 0, 2);
        assert_eq!(source_addr(base, 0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(base, 254), Ipv4Addr::new(127, 0, 1, 0));
    }
}
