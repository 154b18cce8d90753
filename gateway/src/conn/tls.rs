//! TLS on a connection: runs the pure layer (`wire/tls.rs`) on the
//! connection's bytes, hands the plaintext on, and writes the ciphertext
//! (the epoll driver here, the io_uring driver takes it). The handshake has
//! the same deadline as authentication (`auth_timeout_ms`): a stalled
//! handshake is reaped as AUTH_TIMEOUT. Failures close as TLS_FAILED.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::rc::Rc;

use gw_proto::CloseReason;

use crate::core::push::Out;
use crate::core::{Conn, ConnKey, Core};
use crate::metrics::CoreMetrics;
use crate::tls::TLS_HANDSHAKE_BYTE;
pub use crate::wire::tls::{Plain, Tls};

/// Whether this first read of a connection starts a TLS handshake; if so
/// (and TLS is configured), the connection becomes a TLS connection. The
/// caller asks on a connection's first read only (`input.rs`, `layer`).
pub fn maybe_start(core: &Core, c: &mut Conn, first: &[u8]) -> bool {
    if first.first() != Some(&TLS_HANDSHAKE_BYTE) {
        return false;
    }
    let Some(cfg) = core.tls.borrow().clone() else {
        return false;
    };
    // Bounds what rustls buffers for a client that does not read.
    match Tls::start(cfg, core.cfg().outbound_bytes_max as usize) {
        Ok(tls) => {
            c.extra_mut().tls = Some(tls);
            CoreMetrics::inc(&core.metrics.tls_handshakes);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a TLS session");
            false
        }
    }
}

/// Feeds received TLS bytes to the connection's TLS state and the
/// plaintext they carry to the next layer.
pub fn input(core: &Rc<Core>, key: ConnKey, data: &[u8]) {
    let id = key.id();
    let Some(tls) = core.with_conn(key, |c| c.extra_mut().tls.take()).flatten() else {
        return;
    };
    let was_handshaking = tls.handshaking();
    let fed = tls.feed(data, crate::tls::records_per_key(&core.cfg().tls));
    if was_handshaking && fed.tls.as_ref().is_some_and(|t| !t.handshaking()) {
        if let Some(t) = core.accepted.borrow().get(&id) {
            core.metrics.hist.tls_handshake.observe(t.elapsed());
        }
    }
    if fed.handed_over {
        CoreMetrics::inc(&core.metrics.tls_handovers);
    }
    CoreMetrics::add(
        &core.metrics.tls_key_updates_received,
        u64::from(fed.key_updates),
    );
    let tls = fed.tls;
    core.with_conn(key, |c| {
        if tls.is_none() {
            // The keys could not be taken: nothing more may be written.
            Queued(c).discard();
        }
        c.extra_mut().tls = tls;
        core.ready(c); // handshake records, KeyUpdates or alerts to write
    });
    if let Some(why) = fed.failed {
        CoreMetrics::inc(&core.metrics.tls_failures);
        tracing::debug!(conn_id = id, %why, "TLS failed");
        core.close(key, CloseReason::TlsFailed, None);
        return;
    }
    if !fed.plain.is_empty() {
        super::input::plain_input(core, key, &fed.plain);
    }
    if fed.peer_closed {
        core.close(key, CloseReason::ClientClosed, None);
    }
}

/// A connection's outbound queue, as TLS sealing takes it.
struct Queued<'a>(&'a mut Conn);

impl Plain for Queued<'_> {
    fn queue(&self) -> (&VecDeque<Out>, usize) {
        (&self.0.out, self.0.out_off as usize)
    }
    fn advance(&mut self, n: usize) {
        super::output::advance(self.0, n);
    }
    fn discard(&mut self) {
        self.0.out = Default::default();
        self.0.out_bytes = 0;
    }
    fn closing(&self) -> Option<CloseReason> {
        self.0.close
    }
}

/// Epoll driver: seals queued frames into TLS records and writes them,
/// until done or the socket is full.
pub fn flush(core: &Core, c: &mut Conn) -> io::Result<()> {
    let Some(mut tls) = c.extra.as_mut().and_then(|e| e.tls.take()) else {
        return Ok(());
    };
    let result = (|| loop {
        if tls.unsent().is_empty() {
            seal(core, c, &mut tls)?;
            if tls.unsent().is_empty() {
                *tls.unsent() = Vec::new(); // give the buffer back while idle
                return Ok(());
            }
        }
        let unsent = tls.unsent();
        let mut sent = 0;
        while sent < unsent.len() {
            match FdWriter(c.fd).write(&unsent[sent..]) {
                Ok(n) => {
                    super::output::wrote(core, c, n);
                    sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    unsent.drain(..sent);
                    c.flags.set_write_blocked(true);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        unsent.clear();
    })();
    if let Some(e) = c.extra.as_mut() {
        e.tls = Some(tls);
    }
    result
}

/// io_uring driver: seals what is queued and hands over the ciphertext to
/// write (owned, so the ring can keep it while the send is in flight).
/// Empty when there is nothing to send. With `last` (the send before a
/// close) everything queued is sealed, behind any ciphertext not yet sent
/// (a handshake's, say), and the close_notify after it.
pub fn take_ciphertext(core: &Core, c: &mut Conn, last: bool) -> io::Result<Vec<u8>> {
    let Some(mut tls) = c.extra.as_mut().and_then(|e| e.tls.take()) else {
        return Ok(Vec::new());
    };
    let result = if last {
        // Each call seals up to SEAL_BATCH_BYTES more; the queue is bounded
        // (`outbound_bytes_max`), so this ends.
        loop {
            let before = tls.unsent().len();
            let r = seal(core, c, &mut tls);
            if r.is_err() || tls.unsent().len() == before {
                break r;
            }
        }
    } else if tls.unsent().is_empty() {
        seal(core, c, &mut tls)
    } else {
        Ok(())
    };
    let out = std::mem::take(tls.unsent());
    if let Some(e) = c.extra.as_mut() {
        e.tls = Some(tls);
    }
    result.map(|_| out)
}

/// Seals queued frames into the connection's unsent ciphertext, counting
/// the KeyUpdates it sealed.
fn seal(core: &Core, c: &mut Conn, tls: &mut Tls) -> io::Result<()> {
    let sealed = tls.seal(&mut Queued(c))?;
    CoreMetrics::add(
        &core.metrics.tls_key_updates_sent,
        u64::from(sealed.key_updates),
    );
    Ok(())
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
