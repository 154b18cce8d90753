//! TLS inside the I/O loop: a connection whose first byte is a TLS
//! handshake record gets a rustls `ServerConnection` for the handshake.
//! Once a TLS 1.3 handshake is done, the traffic keys are taken out (with
//! the traffic secrets rustls's key log gave, for KeyUpdate) and the
//! session dropped: records are then protected by `records/`, which keeps
//! about 1.2 KB per connection instead of the buffered session's 8.4 KB
//! (measured). TLS 1.2, when allowed, stays in rustls for the whole
//! connection (rustls enforces its limits there; TLS 1.2 has no KeyUpdate).
//! The handshake has the same deadline as authentication
//! (`auth_timeout_ms`): a stalled handshake is reaped as AUTH_TIMEOUT.
//!
//! Failures close as TLS_FAILED. rustls answers its own (handshake, TLS
//! 1.2) with the alert it chose; the record layer's are answered by the
//! fatal alert its typed error names, sealed with the current key. A
//! connection that failed never gets close_notify: that would make
//! corruption look like a clean close.

use std::io::{self, Read, Write};
use std::rc::Rc;

use gw_proto::CloseReason;

use super::records::keys::{Derived, Suite};
use super::records::{RecordError, Records, APPLICATION_DATA, HEADER_BYTES, PLAINTEXT_BYTES_MAX};
use crate::core::{Conn, ConnKey, Core};
use crate::metrics::CoreMetrics;
use crate::tls::{take_traffic_secrets, TrafficSecrets, TLS_HANDSHAKE_BYTE};

/// Plaintext read out of rustls per step, bytes.
const PLAIN_CHUNK_BYTES: usize = 16 * 1024;
/// Largest record a client may send during the handshake (rustls's own
/// limit, 2^14 + 2048), bytes.
const HANDSHAKE_RECORD_BYTES_MAX: usize = 16 * 1024 + 2048;

/// A connection's TLS state.
pub enum Tls {
    /// rustls drives the handshake (and all of TLS 1.2).
    Session(Box<Session>),
    /// TLS 1.3 after the handshake: the record layer with the traffic keys,
    /// and encrypted bytes the socket did not take yet.
    Records { rec: Box<Records>, unsent: Vec<u8> },
}

/// A rustls session and what the handover needs from its handshake.
pub struct Session {
    conn: rustls::ServerConnection,
    /// The start of a record not complete yet: rustls is fed whole records
    /// only, so that nothing is left inside it when the keys are taken.
    pending: Vec<u8>,
    /// The application traffic secrets, from rustls's key log.
    secrets: TrafficSecrets,
    /// Ciphertext rustls produced that the socket did not take yet.
    unsent: Vec<u8>,
    /// close_notify queued.
    close_sent: bool,
}

/// Why TLS failed on a connection (logged; each closes as TLS_FAILED).
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// rustls refused the input; it has queued its alert.
    #[error("TLS: {0}")]
    Session(#[from] rustls::Error),
    #[error("rustls refused a record: {0}")]
    Feed(io::Error),
    #[error("rustls took no bytes of a record")]
    Stuck,
    #[error("a TLS record of {0} bytes during the handshake")]
    HandshakeRecord(usize),
    #[error("the TLS keys could not be taken: {0}")]
    Handover(&'static str),
    #[error(transparent)]
    Record(#[from] RecordError),
}

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
    match rustls::ServerConnection::new(cfg.clone()) {
        Ok(mut conn) => {
            // Bounds what rustls buffers for a client that does not read.
            conn.set_buffer_limit(Some(core.cfg.outbound_bytes_max as usize));
            c.extra_mut().tls = Some(Tls::Session(Box::new(Session {
                conn,
                pending: Vec::new(),
                secrets: TrafficSecrets::default(),
                unsent: Vec::new(),
                close_sent: false,
            })));
            CoreMetrics::inc(&core.metrics.tls_handshakes);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a TLS session");
            false
        }
    }
}

/// Inbound bytes the connection's TLS state holds for the pre-auth budget
/// (`preauth.rs`): a rustls session while it handshakes (a fixed estimate)
/// plus the partial record waiting for the rest; after the handover, the
/// record layer's partial record. Outbound bytes are not counted: they
/// change outside reads, where the charge is taken.
pub fn buffered(c: &Conn) -> usize {
    match c.extra.as_ref().and_then(|e| e.tls.as_ref()) {
        None => 0,
        Some(Tls::Session(s)) => super::preauth::TLS_SESSION_BYTES + s.pending.capacity(),
        Some(Tls::Records { rec, .. }) => rec.buffered(),
    }
}

/// Whether the connection speaks TLS.
pub fn active(c: &Conn) -> bool {
    c.extra.as_ref().is_some_and(|e| e.tls.is_some())
}

/// What received bytes amounted to.
#[derive(Default)]
struct Input {
    plain: Vec<u8>,
    peer_closed: bool,
    failed: Option<Failure>,
}

/// Feeds received TLS bytes to the connection's TLS state and the
/// plaintext they carry to the next layer.
pub fn input(core: &Rc<Core>, key: ConnKey, data: &[u8]) {
    let id = key.id();
    let Some(tls) = core.with_conn(key, |c| c.extra_mut().tls.take()).flatten() else {
        return;
    };
    let mut got = Input::default();
    let mut rest = data;
    let mut tls = match tls {
        Tls::Session(mut s) => {
            rest = feed_session(&mut s, rest, &mut got);
            if got.failed.is_none() && tls13_done(&s.conn) {
                match hand_over(*s, crate::tls::records_per_key(&core.cfg.tls)) {
                    Ok(records) => {
                        CoreMetrics::inc(&core.metrics.tls_handovers);
                        Some(records)
                    }
                    Err(e) => {
                        got.failed = Some(e);
                        None
                    }
                }
            } else {
                Some(Tls::Session(s))
            }
        }
        records => Some(records),
    };
    if let (Some(Tls::Records { rec, unsent }), None) = (&mut tls, &got.failed) {
        if !rest.is_empty() {
            match rec.open(rest) {
                Ok(o) => {
                    if got.plain.is_empty() {
                        got.plain = o.plain;
                    } else {
                        got.plain.extend_from_slice(&o.plain);
                    }
                    got.peer_closed |= o.peer_closed;
                    CoreMetrics::add(
                        &core.metrics.tls_key_updates_received,
                        u64::from(o.key_updates),
                    );
                }
                Err(e) => {
                    // The answer follows the records already sealed, under
                    // the current key; nothing follows it.
                    rec.fail(e, unsent);
                    got.failed = Some(e.into());
                }
            }
        }
    }
    core.with_conn(key, |c| {
        if tls.is_none() {
            // The keys could not be taken: nothing more may be written.
            c.out = Default::default();
            c.out_bytes = 0;
        }
        c.extra_mut().tls = tls;
        core.ready(c); // handshake records, KeyUpdates or alerts to write
    });
    if let Some(why) = got.failed {
        CoreMetrics::inc(&core.metrics.tls_failures);
        tracing::debug!(conn_id = id, %why, "TLS failed");
        core.close(key, CloseReason::TlsFailed, None);
        return;
    }
    if !got.plain.is_empty() {
        super::input::plain_input(core, key, &got.plain);
    }
    if got.peer_closed {
        core.close(key, CloseReason::ClientClosed, None);
    }
}

/// Feeds whole records to rustls while it handshakes (all of them for TLS
/// 1.2); returns the bytes after the record that completed a TLS 1.3
/// handshake, for the record layer.
fn feed_session<'a>(s: &mut Session, data: &'a [u8], got: &mut Input) -> &'a [u8] {
    let Session {
        conn,
        pending,
        secrets,
        ..
    } = s;
    let mut data = data;
    let mut chunk = [0u8; PLAIN_CHUNK_BYTES];
    loop {
        if tls13_done(conn) || got.failed.is_some() || got.peer_closed {
            return data;
        }
        // Complete one record in `pending`, from `data`.
        let have = pending.len();
        let need = if have < HEADER_BYTES {
            HEADER_BYTES
        } else {
            HEADER_BYTES + u16::from_be_bytes([pending[3], pending[4]]) as usize
        };
        if need > HANDSHAKE_RECORD_BYTES_MAX + HEADER_BYTES && conn.is_handshaking() {
            // rustls refuses such a record from its header, with its own
            // alert: give it the header and let it answer.
            let header = std::mem::take(pending);
            let _ = conn.read_tls(&mut &header[..]);
            got.failed = Some(match conn.process_new_packets() {
                Err(e) => e.into(),
                Ok(_) => Failure::HandshakeRecord(need),
            });
            return data;
        }
        let take = (need - have).min(data.len());
        pending.extend_from_slice(&data[..take]);
        data = &data[take..];
        if pending.len() < need {
            if data.is_empty() {
                if pending.is_empty() {
                    *pending = Vec::new();
                }
                return data;
            }
            continue; // the header is complete now: read the body
        }
        if need == HEADER_BYTES && have < HEADER_BYTES {
            continue; // header done; body next
        }
        // rustls reads at most 4 KiB per call: feed the whole record.
        let record = std::mem::take(pending);
        let mut rd = &record[..];
        while !rd.is_empty() {
            match conn.read_tls(&mut rd) {
                Ok(0) => {
                    got.failed = Some(Failure::Stuck);
                    return data;
                }
                Ok(_) => {}
                Err(e) => {
                    got.failed = Some(Failure::Feed(e));
                    return data;
                }
            }
        }
        // rustls logs the traffic secrets (crate::tls::SecretCapture) while
        // it processes the ClientHello: whatever the slot holds before is
        // not this connection's.
        drop(take_traffic_secrets());
        let processed = conn.process_new_packets();
        let caught = take_traffic_secrets();
        if caught.client.is_some() || caught.server.is_some() {
            *secrets = caught;
        }
        match processed {
            Ok(state) => got.peer_closed = state.peer_has_closed(),
            Err(e) => got.failed = Some(e.into()), // rustls queued an alert
        }
        while let Ok(n) = conn.reader().read(&mut chunk) {
            if n == 0 {
                break;
            }
            got.plain.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A TLS 1.3 handshake is done: the keys can move to the record layer.
/// (TLS 1.2 stays in rustls.)
fn tls13_done(conn: &rustls::ServerConnection) -> bool {
    !conn.is_handshaking() && conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
}

/// Takes the traffic keys out of a finished TLS 1.3 session, with the
/// secrets its key log gave; what rustls had not written yet goes first.
fn hand_over(s: Session, records_per_key: u64) -> Result<Tls, Failure> {
    let Session {
        mut conn,
        secrets,
        unsent,
        ..
    } = s;
    // What rustls sealed and the socket did not take yet goes first.
    let mut unsent = unsent;
    while conn.wants_write() {
        conn.write_tls(&mut unsent).map_err(Failure::Feed)?;
    }
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| Suite::from_rustls(s.suite()))
        .ok_or(Failure::Handover(
            "a cipher suite the record layer does not run",
        ))?;
    let (Some(client), Some(server)) = (secrets.client, secrets.server) else {
        return Err(Failure::Handover("rustls logged no traffic secrets"));
    };
    let x = conn.dangerous_extract_secrets()?;
    let ((rx_seq, rx_keys), (tx_seq, tx_keys)) = (x.rx, x.tx);
    // The secrets must give the keys rustls used: proof that they are this
    // connection's, before anything depends on them.
    if !gives(suite, client.as_bytes(), &rx_keys) || !gives(suite, server.as_bytes(), &tx_keys) {
        return Err(Failure::Handover(
            "the logged secrets do not give rustls's keys",
        ));
    }
    let rec = Records::new(
        suite,
        client.as_bytes(),
        rx_seq,
        server.as_bytes(),
        tx_seq,
        records_per_key,
    )?;
    Ok(Tls::Records {
        rec: Box::new(rec),
        unsent,
    })
}

/// Whether `secret` derives exactly the key and IV rustls handed over.
fn gives(suite: Suite, secret: &[u8], keys: &rustls::ConnectionTrafficSecrets) -> bool {
    use rustls::ConnectionTrafficSecrets as K;
    let (key, iv) = match keys {
        K::Aes128Gcm { key, iv } | K::Aes256Gcm { key, iv } | K::Chacha20Poly1305 { key, iv } => {
            (key.as_ref(), iv.as_ref())
        }
        _ => return false,
    };
    Derived::new(suite, secret).is_ok_and(|d| d.key() == key && d.iv[..] == *iv)
}

/// Ciphertext sealed per flush step before it is written, bytes (about).
const SEAL_BATCH_BYTES: usize = 64 * 1024;

impl Tls {
    /// Ciphertext sealed and not written yet.
    fn unsent(&mut self) -> &mut Vec<u8> {
        match self {
            Tls::Session(s) => &mut s.unsent,
            Tls::Records { unsent, .. } => unsent,
        }
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

/// Seals queued frames (and a KeyUpdate or close_notify when due) into TLS
/// records at the end of the connection's unsent ciphertext, up to about
/// `SEAL_BATCH_BYTES`.
fn seal(core: &Core, c: &mut Conn, tls: &mut Tls) -> io::Result<()> {
    match tls {
        Tls::Session(s) => seal_session(c, &mut s.conn, &mut s.unsent, &mut s.close_sent),
        Tls::Records { rec, unsent } => seal_records(core, c, rec, unsent),
    }
}

fn seal_session(
    c: &mut Conn,
    tls: &mut rustls::ServerConnection,
    out: &mut Vec<u8>,
    close_sent: &mut bool,
) -> io::Result<()> {
    let start = out.len();
    if c.close == Some(CloseReason::TlsFailed) {
        // Only what rustls queued (its alert, if it chose one) goes out: no
        // more data, and no close_notify (after a fatal alert rustls sends
        // none anyway; without one it would read as a clean close).
        c.out = Default::default();
        c.out_bytes = 0;
    }
    loop {
        // close_notify after the last frame (a client drops what follows it).
        if c.close.is_some()
            && c.close != Some(CloseReason::TlsFailed)
            && c.out.is_empty()
            && !*close_sent
        {
            tls.send_close_notify();
            *close_sent = true;
        }
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
            super::output::advance(c, pos - off);
            if !done {
                break;
            }
        }
        if !tls.wants_write() || out.len() >= start + SEAL_BATCH_BYTES {
            return Ok(());
        }
        tls.write_tls(out)?;
    }
}

fn seal_records(
    core: &Core,
    c: &mut Conn,
    rec: &mut Records,
    unsent: &mut Vec<u8>,
) -> io::Result<()> {
    let limit = unsent.len() + SEAL_BATCH_BYTES;
    while unsent.len() < limit {
        if rec.closed() {
            // Nothing may follow close_notify or a fatal alert.
            c.out = Default::default();
            c.out_bytes = 0;
            return Ok(());
        }
        if c.out.is_empty() {
            if rec.key_update_due() {
                // Even with no data waiting: the client that asked for it
                // sees it now, not with our next frame.
                rec.seal_key_update(unsent).map_err(io::Error::other)?;
                CoreMetrics::inc(&core.metrics.tls_key_updates_sent);
                continue;
            }
            if c.close.is_some() {
                rec.seal_close_notify(unsent).map_err(io::Error::other)?;
                continue;
            }
            return Ok(());
        }
        // Up to one record's worth of queued frames, gathered in place (after
        // a KeyUpdate when one is due: the key has room for one record more,
        // or the client asked).
        if rec.key_update_due() {
            CoreMetrics::inc(&core.metrics.tls_key_updates_sent);
        }
        let start = rec.begin(unsent).map_err(io::Error::other)?;
        let room = |unsent: &Vec<u8>| PLAINTEXT_BYTES_MAX - (unsent.len() - start - HEADER_BYTES);
        while let Some(front) = c.out.front() {
            let (len, off) = (front.len(), c.out_off as usize);
            let n = (len - off).min(room(unsent));
            let head = front.head.as_slice();
            let (end, hl) = (off + n, head.len());
            if off < hl {
                unsent.extend_from_slice(&head[off..end.min(hl)]);
            }
            if end > hl {
                unsent.extend_from_slice(&front.body[off.max(hl) - hl..end - hl]);
            }
            super::output::advance(c, n);
            if room(unsent) == 0 {
                break;
            }
        }
        rec.finish(unsent, start, APPLICATION_DATA)
            .map_err(io::Error::other)?;
    }
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
