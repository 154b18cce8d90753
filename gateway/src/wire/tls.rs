//! TLS without I/O: the rustls handshake, the handover of TLS 1.3 keys to
//! the record layer (`records/`), and sealing of queued frames. Bytes in,
//! plaintext and ciphertext out; `conn/tls.rs` runs it on a connection
//! and writes what it seals.
//!
//! A connection whose first byte is a TLS
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

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use gw_proto::CloseReason;

use super::out::Out;
use super::records::keys::{Derived, Suite};
use super::records::{RecordError, Records, APPLICATION_DATA, HEADER_BYTES, PLAINTEXT_BYTES_MAX};
use crate::tls::{take_traffic_secrets, TrafficSecrets};

/// What a TLS session in rustls's hands costs while it handshakes (its
/// buffers and state; about 6.6 KB measured per connection mid-handshake),
/// on top of the partial record held for it (the pre-auth budget's charge).
pub const TLS_SESSION_BYTES: usize = 8 * 1024;

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
pub enum Failure {
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

/// What received bytes amounted to.
#[derive(Default)]
pub struct Fed {
    /// The TLS state to keep; None when the keys could not be taken
    /// (nothing more may be written then).
    pub tls: Option<Tls>,
    /// Plaintext for the next layer.
    pub plain: Vec<u8>,
    /// The client sent close_notify.
    pub peer_closed: bool,
    /// Why TLS failed; the alert, if any, is sealed already.
    pub failed: Option<Failure>,
    /// The handshake finished and the keys moved to the record layer.
    pub handed_over: bool,
    /// KeyUpdates the client sent.
    pub key_updates: u32,
}

/// What a seal step did besides sealing frames.
#[derive(Default)]
pub struct Sealed {
    /// KeyUpdates sealed.
    pub key_updates: u32,
}

/// The plaintext a connection has queued, as sealing takes it.
pub trait Plain {
    /// The queued frames, and how much of the first is taken already.
    fn queue(&self) -> (&VecDeque<Out>, usize);
    /// `n` more bytes were taken.
    fn advance(&mut self, n: usize);
    /// Drops everything queued (nothing may be written any more).
    fn discard(&mut self);
    /// Why the connection closes, if it does (close_notify after the
    /// last frame; nothing more after a TLS failure).
    fn closing(&self) -> Option<CloseReason>;
}

impl Tls {
    /// A TLS session for a connection whose first byte is a handshake
    /// record; rustls buffers at most `buffer_bytes_max` for it.
    pub fn start(
        cfg: Arc<rustls::ServerConfig>,
        buffer_bytes_max: usize,
    ) -> Result<Tls, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(cfg)?;
        conn.set_buffer_limit(Some(buffer_bytes_max));
        Ok(Tls::Session(Box::new(Session {
            conn,
            pending: Vec::new(),
            secrets: TrafficSecrets::default(),
            unsent: Vec::new(),
            close_sent: false,
        })))
    }

    /// Whether the handshake is still under way.
    pub fn handshaking(&self) -> bool {
        match self {
            Tls::Session(s) => s.conn.is_handshaking(),
            Tls::Records { .. } => false,
        }
    }

    /// Inbound bytes held, for the pre-auth budget: a rustls session while
    /// it handshakes (a fixed estimate) plus the partial record waiting for
    /// the rest; after the handover, the record layer's partial record.
    /// Outbound bytes are not counted: they change outside reads, where
    /// the charge is taken.
    pub fn buffered(&self) -> usize {
        match self {
            Tls::Session(s) => TLS_SESSION_BYTES + s.pending.capacity(),
            Tls::Records { rec, .. } => rec.buffered(),
        }
    }

    /// Feeds received bytes: handshake records to rustls, then (TLS 1.3,
    /// after the handover) records to the record layer.
    pub fn feed(self, data: &[u8], records_per_key: u64) -> Fed {
        let mut got = Fed::default();
        let mut rest = data;
        let mut tls = match self {
            Tls::Session(mut s) => {
                rest = feed_session(&mut s, rest, &mut got);
                if got.failed.is_none() && tls13_done(&s.conn) {
                    match hand_over(*s, records_per_key) {
                        Ok(records) => {
                            got.handed_over = true;
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
                        got.key_updates += o.key_updates;
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
        got.tls = tls;
        got
    }

    /// Ciphertext sealed and not written yet.
    pub fn unsent(&mut self) -> &mut Vec<u8> {
        match self {
            Tls::Session(s) => &mut s.unsent,
            Tls::Records { unsent, .. } => unsent,
        }
    }

    /// Seals queued frames (and a KeyUpdate or close_notify when due) into
    /// TLS records at the end of the unsent ciphertext, up to about
    /// `SEAL_BATCH_BYTES`.
    pub fn seal(&mut self, c: &mut impl Plain) -> io::Result<Sealed> {
        let mut sealed = Sealed::default();
        match self {
            Tls::Session(s) => seal_session(c, &mut s.conn, &mut s.unsent, &mut s.close_sent)?,
            Tls::Records { rec, unsent } => seal_records(c, rec, unsent, &mut sealed)?,
        }
        Ok(sealed)
    }
}

/// Feeds whole records to rustls while it handshakes (all of them for TLS
/// 1.2); returns the bytes after the record that completed a TLS 1.3
/// handshake, for the record layer.
fn feed_session<'a>(s: &mut Session, data: &'a [u8], got: &mut Fed) -> &'a [u8] {
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
pub const SEAL_BATCH_BYTES: usize = 64 * 1024;

fn seal_session(
    c: &mut impl Plain,
    tls: &mut rustls::ServerConnection,
    out: &mut Vec<u8>,
    close_sent: &mut bool,
) -> io::Result<()> {
    let start = out.len();
    if c.closing() == Some(CloseReason::TlsFailed) {
        // Only what rustls queued (its alert, if it chose one) goes out: no
        // more data, and no close_notify (after a fatal alert rustls sends
        // none anyway; without one it would read as a clean close).
        c.discard();
    }
    loop {
        // close_notify after the last frame (a client drops what follows it).
        if c.closing().is_some_and(|r| r != CloseReason::TlsFailed)
            && c.queue().0.is_empty()
            && !*close_sent
        {
            tls.send_close_notify();
            *close_sent = true;
        }
        // Plaintext in, as much as rustls takes (its buffer is bounded).
        while let (Some(front), off) = (c.queue().0.front(), c.queue().1) {
            let (head, body, len) = (front.head, front.body.clone(), front.len());
            let head = head.as_slice();
            let mut pos = off;
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
            c.advance(pos - off);
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
    c: &mut impl Plain,
    rec: &mut Records,
    unsent: &mut Vec<u8>,
    sealed: &mut Sealed,
) -> io::Result<()> {
    let limit = unsent.len() + SEAL_BATCH_BYTES;
    while unsent.len() < limit {
        if rec.closed() {
            // Nothing may follow close_notify or a fatal alert.
            c.discard();
            return Ok(());
        }
        if c.queue().0.is_empty() {
            if rec.key_update_due() {
                // Even with no data waiting: the client that asked for it
                // sees it now, not with our next frame.
                rec.seal_key_update(unsent).map_err(io::Error::other)?;
                sealed.key_updates += 1;
                continue;
            }
            if c.closing().is_some() {
                rec.seal_close_notify(unsent).map_err(io::Error::other)?;
                continue;
            }
            return Ok(());
        }
        // Up to one record's worth of queued frames, gathered in place (after
        // a KeyUpdate when one is due: the key has room for one record more,
        // or the client asked).
        if rec.key_update_due() {
            sealed.key_updates += 1;
        }
        let start = rec.begin(unsent).map_err(io::Error::other)?;
        let room = |unsent: &Vec<u8>| PLAINTEXT_BYTES_MAX - (unsent.len() - start - HEADER_BYTES);
        while let (Some(front), off) = (c.queue().0.front(), c.queue().1) {
            let len = front.len();
            let n = (len - off).min(room(unsent));
            let head = front.head.as_slice();
            let (end, hl) = (off + n, head.len());
            if off < hl {
                unsent.extend_from_slice(&head[off..end.min(hl)]);
            }
            if end > hl {
                unsent.extend_from_slice(&front.body[off.max(hl) - hl..end - hl]);
            }
            c.advance(n);
            if room(unsent) == 0 {
                break;
            }
        }
        rec.finish(unsent, start, APPLICATION_DATA)
            .map_err(io::Error::other)?;
    }
    Ok(())
}
