//! TLS inside the I/O loop: a connection whose first byte is a TLS
//! handshake record gets a rustls `ServerConnection` (boxed in the
//! connection's `Extra`). Inbound bytes go through it before the frame
//! decoder; queued frames go into it and its records out to the socket.
//! The handshake has the same deadline as authentication
//! (`auth_timeout_ms`): a stalled handshake is reaped as AUTH_TIMEOUT.

use std::io::{self, Read, Write};
use std::rc::Rc;

use gw_proto::CloseReason;

use crate::core::{Conn, Core};
use crate::metrics::CoreMetrics;
use crate::tls::TLS_HANDSHAKE_BYTE;

/// Plaintext read out of rustls per step, bytes.
const PLAIN_CHUNK: usize = 16 * 1024;

/// Whether this first read of a connection starts a TLS handshake; if so
/// (and TLS is configured), the connection becomes a TLS connection.
pub fn maybe_start(core: &Core, c: &mut Conn, first: &[u8]) -> bool {
    let Some(cfg) = core.tls.as_ref() else {
        return false;
    };
    if first.first() != Some(&TLS_HANDSHAKE_BYTE) || c.authed() || !c.partial.is_empty() {
        return false;
    }
    match rustls::ServerConnection::new(cfg.clone()) {
        Ok(mut s) => {
            // Bounds what rustls buffers for a client that does not read.
            s.set_buffer_limit(Some(core.cfg.outbound_bytes_max as usize));
            c.extra_mut().tls = Some(Box::new(s));
            CoreMetrics::inc(&core.metrics.tls_handshakes);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a TLS session");
            false
        }
    }
}

/// Whether the connection speaks TLS.
pub fn active(c: &Conn) -> bool {
    c.extra.as_ref().is_some_and(|e| e.tls.is_some())
}

/// Feeds received TLS records to the session and the plaintext they carry
/// to the frame decoder.
pub fn input(core: &Rc<Core>, idx: u32, id: u64, mut data: &[u8]) {
    let Some(mut tls) = core
        .with_conn(idx, id, |c| c.extra_mut().tls.take())
        .flatten()
    else {
        return;
    };
    let mut plain = Vec::new();
    let mut failed = None;
    let mut peer_closed = false;
    let mut chunk = [0u8; PLAIN_CHUNK];
    while !data.is_empty() && failed.is_none() && !peer_closed {
        if let Err(e) = tls.read_tls(&mut data) {
            failed = Some(e.to_string());
            break;
        }
        match tls.process_new_packets() {
            Ok(state) => peer_closed = state.peer_has_closed(),
            // rustls has queued an alert for the peer; it goes out on close.
            Err(e) => failed = Some(e.to_string()),
        }
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(_) => break, // WouldBlock: no more plaintext now
            }
        }
    }
    let handshaking = tls.is_handshaking();
    core.with_conn(idx, id, |c| {
        c.extra_mut().tls = Some(tls);
        core.ready(c); // handshake records or alerts to write
    });
    if let Some(why) = failed {
        CoreMetrics::inc(&core.metrics.tls_failures);
        tracing::debug!(conn_id = id, %why, handshaking, "TLS failed");
        core.close(idx, id, CloseReason::TlsFailed, None);
        return;
    }
    if !plain.is_empty() {
        super::io::on_bytes(core, idx, id, &plain);
    }
    if peer_closed {
        core.close(idx, id, CloseReason::ClientClosed, None);
    }
}

/// Moves queued frames into the TLS session and its records to the socket,
/// until done or the socket is full.
pub fn flush(core: &Core, c: &mut Conn) -> io::Result<()> {
    let fd = c.fd;
    let Some(mut tls) = c.extra.as_mut().and_then(|e| e.tls.take()) else {
        return Ok(());
    };
    if c.close.is_some() {
        tls.send_close_notify();
    }
    let result = (|| loop {
        // Plaintext in, as much as rustls takes (its buffer is bounded).
        while let Some(front) = c.out.front() {
            let (head, body, len) = (front.head, front.body.clone(), front.len());
            let head = head.as_slice();
            let mut pos = c.out_off as usize;
            while pos < len {
                let part = if pos < head.len() {
                    &head[pos..]
                } else {
                    &body[pos - head.len()..]
                };
                let n = tls.writer().write(part)?;
                if n == 0 {
                    break;
                }
                pos += n;
            }
            let done = pos == len;
            let off = c.out_off as usize;
            super::io::advance(c, pos - off);
            if !done {
                break;
            }
        }
        if !tls.wants_write() {
            return Ok(());
        }
        match tls.write_tls(&mut FdWriter(fd)) {
            Ok(n) => CoreMetrics::add(&core.metrics.bytes_out, n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.write_blocked = true;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    })();
    if let Some(e) = c.extra.as_mut() {
        e.tls = Some(tls);
    }
    result
}

/// Non-blocking `send` on a raw socket.
struct FdWriter(i32);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: send from our buffer on the connection's open socket.
        let n = unsafe {
            libc::send(
                self.0,
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
