//! TLS 1.3 records after the handshake. rustls does the handshake; then its
//! traffic keys move here (`conn/tls.rs`) and rustls is dropped: an idle
//! connection keeps two AEAD keys, two IVs, two sequence numbers and two
//! traffic secrets (for KeyUpdate) instead of a whole buffered rustls
//! session (8.4 KB measured).
//!
//! Pure: bytes in, plaintext and events out, records appended to a buffer;
//! no socket. What it follows (RFC 8446):
//! - protection (§5.2–5.3): outer type 23, the inner content type after
//!   the content, zero padding, nonce = IV xor sequence number, the 5-byte
//!   header as associated data;
//! - limits (§5.1, §5.2, §5.4): at most 2^14 + 256 bytes of ciphertext and
//!   2^14 + 1 bytes of inner plaintext (content, type and padding), else
//!   `record_overflow`;
//! - every failure is a typed [`RecordError`] naming the fatal alert that
//!   answers it (§6.2); the caller seals it with [`Records::fail`] and
//!   sends nothing after it;
//! - KeyUpdate both ways (§4.6.3, §7.2): a client's KeyUpdate changes the
//!   receiving key (and, when it asks, makes ours due); our own key changes
//!   before it has protected `records_per_key` records, and we ask the
//!   client to change its key when its key has protected as many.

pub mod keys;
#[cfg(test)]
mod tests;

use gw_proto::CloseReason;
use keys::{Dir, Suite};
use ring::aead::Aad;

/// Largest content in one record (RFC 8446 §5.1), bytes.
pub const PLAINTEXT_BYTES_MAX: usize = 1 << 14;
/// Largest inner plaintext of a protected record: content, content type
/// and padding together (RFC 8446 §5.2, §5.4), bytes.
const INNER_PLAINTEXT_BYTES_MAX: usize = PLAINTEXT_BYTES_MAX + 1;
/// Largest ciphertext of one record (RFC 8446 §5.2), bytes.
const CIPHERTEXT_BYTES_MAX: usize = PLAINTEXT_BYTES_MAX + 256;
/// TLS record header: type, version, length; bytes.
pub const HEADER_BYTES: usize = 5;
/// AEAD tag of every TLS 1.3 suite, bytes.
const TAG_BYTES: usize = 16;
/// Handshake message header: type and 24-bit length; bytes.
const HS_HEADER_BYTES: usize = 4;
/// Records one key protects, per direction, before it changes: under the
/// AES-GCM confidentiality limit of 2^24.5 records (RFC 8446 §5.5). Ours
/// changes by a KeyUpdate before it protects more; at this many records
/// from the client on one key we ask the client to change its key.
pub const RECORDS_PER_KEY_MAX: u64 = 1 << 24;
/// Fewest records per key a test may set: the two session tickets rustls
/// sends under the first key, one record, and the KeyUpdate.
pub const RECORDS_PER_KEY_MIN: u64 = 8;
/// KeyUpdates (and user_canceled alerts) accepted in a row with no
/// application data between them, as rustls and BoringSSL do: each costs a
/// key derivation and carries nothing.
const CONTROL_RECORDS_IN_A_ROW_MAX: u8 = 32;

pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;
/// Handshake message type of KeyUpdate (RFC 8446 §4).
pub const KEY_UPDATE: u8 = 24;

/// Alert descriptions this layer sends or reads (RFC 8446 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Alert {
    CloseNotify = 0,
    UnexpectedMessage = 10,
    BadRecordMac = 20,
    RecordOverflow = 22,
    IllegalParameter = 47,
    DecodeError = 50,
    InternalError = 80,
    UserCanceled = 90,
}

/// Why the record layer gave up; each maps to the fatal alert that answers
/// it (none when no alert may or can be sent) and closes the connection as
/// TLS_FAILED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a TLS record of type {0} after the handshake (only application_data is protected)")]
    UnexpectedRecord(u8),
    #[error(
        "a TLS record of {0} bytes (ciphertext over 2^14 + 256, or inner plaintext over 2^14 + 1)"
    )]
    Overflow(usize),
    #[error("a TLS record failed to decrypt")]
    BadRecordMac,
    #[error("a TLS record with no content type (all zeros)")]
    NoContentType,
    #[error("TLS content type {0} after the handshake")]
    UnexpectedContent(u8),
    #[error("TLS handshake message type {0} after the handshake (only KeyUpdate may come)")]
    UnexpectedHandshake(u8),
    #[error("a malformed TLS {0}")]
    Decode(&'static str),
    #[error("a KeyUpdate with request_update {0}")]
    BadKeyUpdate(u8),
    #[error("a TLS handshake message not aligned with its records (split across a key change or interleaved)")]
    Misaligned,
    #[error("more than 32 KeyUpdates or user_canceled alerts without data between them")]
    TooManyControlRecords,
    #[error("TLS alert {0} from the client")]
    PeerAlert(u8),
    #[error("a TLS key reached its record limit")]
    KeyExhausted,
    #[error("a TLS record after close_notify or a fatal alert")]
    Closed,
    #[error("the TLS key schedule or AEAD failed")]
    Crypto,
}

impl RecordError {
    /// The fatal alert that answers this failure (RFC 8446 §6.2); None
    /// for the client's own alert and when no record can be sealed.
    pub fn alert(self) -> Option<Alert> {
        use RecordError::*;
        match self {
            UnexpectedRecord(_)
            | NoContentType
            | UnexpectedContent(_)
            | UnexpectedHandshake(_)
            | Misaligned
            | TooManyControlRecords => Some(Alert::UnexpectedMessage),
            Overflow(_) => Some(Alert::RecordOverflow),
            BadRecordMac => Some(Alert::BadRecordMac),
            Decode(_) => Some(Alert::DecodeError),
            BadKeyUpdate(_) => Some(Alert::IllegalParameter),
            Crypto => Some(Alert::InternalError),
            PeerAlert(_) | KeyExhausted | Closed => None,
        }
    }

    /// How the connection closes.
    pub fn close_reason(self) -> CloseReason {
        CloseReason::TlsFailed
    }
}

impl From<keys::KeyError> for RecordError {
    fn from(_: keys::KeyError) -> Self {
        RecordError::Crypto
    }
}

/// What a batch of received records held.
#[derive(Default, Debug)]
pub struct Opened {
    pub plain: Vec<u8>,
    /// A close_notify came (what follows it is ignored).
    pub peer_closed: bool,
    /// KeyUpdates received (the receiving key changed this many times).
    pub key_updates: u32,
}

/// Bits of [`Records::flags`].
mod flag {
    /// close_notify or a fatal alert was sealed: nothing more may be.
    pub const CLOSED: u8 = 1;
    /// The client sent close_notify.
    pub const PEER_CLOSED: u8 = 2;
    /// The client asked for a KeyUpdate: ours goes before our next record.
    pub const PEER_ASKED: u8 = 4;
    /// The client's key reached the limit: our next KeyUpdate asks for one.
    pub const ASK_PEER: u8 = 8;
    /// We asked already for the client's current key.
    pub const ASKED: u8 = 16;
}

/// The record layer of one connection after its handshake.
pub struct Records {
    rx: Dir,
    tx: Dir,
    /// Bytes of a record not complete yet (empty while idle). A boxed slice,
    /// not a Vec: 8 bytes less keeps this struct within 1,280 bytes,
    /// mimalloc's size class it had before the traffic secrets came.
    partial: Box<[u8]>,
    suite: Suite,
    /// Records one key protects before it changes (≤ RECORDS_PER_KEY_MAX).
    records_per_key: u32,
    /// The start of a handshake message split across records: at most its
    /// header, since a KeyUpdate's body is one byte.
    hs: [u8; HS_HEADER_BYTES],
    hs_len: u8,
    /// KeyUpdates and user_canceled alerts since the last application data.
    control_in_a_row: u8,
    flags: u8,
}

impl Records {
    /// The record layer from the two application traffic secrets and
    /// sequence numbers at the handover; `records_per_key` is held within
    /// RECORDS_PER_KEY_MIN..=RECORDS_PER_KEY_MAX (lower than the maximum
    /// only makes keys change sooner).
    pub fn new(
        suite: Suite,
        rx_secret: &[u8],
        rx_seq: u64,
        tx_secret: &[u8],
        tx_seq: u64,
        records_per_key: u64,
    ) -> Result<Records, RecordError> {
        let per_key = records_per_key.clamp(RECORDS_PER_KEY_MIN, RECORDS_PER_KEY_MAX) as u32;
        Ok(Records {
            rx: Dir::new(suite, rx_secret, rx_seq)?,
            tx: Dir::new(suite, tx_secret, tx_seq)?,
            partial: Box::default(),
            suite,
            records_per_key: per_key,
            hs: [0; HS_HEADER_BYTES],
            hs_len: 0,
            control_in_a_row: 0,
            flags: 0,
        })
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    fn set(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }

    /// Bytes held of a record not complete yet.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Whether close_notify or a fatal alert was sealed.
    pub fn closed(&self) -> bool {
        self.has(flag::CLOSED)
    }

    /// Decrypts every whole record in `partial ++ data`; keeps the rest.
    /// After an error the connection must close (the layer's state is
    /// spent): seal the answer with [`Records::fail`].
    pub fn open(&mut self, data: &[u8]) -> Result<Opened, RecordError> {
        let mut out = Opened::default();
        if self.has(flag::PEER_CLOSED) {
            return Ok(out); // nothing after close_notify counts
        }
        let joined;
        let buf: &[u8] = if self.partial.is_empty() {
            data
        } else {
            let mut v = std::mem::take(&mut self.partial).into_vec();
            v.extend_from_slice(data);
            joined = v;
            &joined
        };
        let mut pos = 0;
        let mut rec = Vec::new();
        while buf.len() - pos >= HEADER_BYTES {
            let h = &buf[pos..pos + HEADER_BYTES];
            let len = u16::from_be_bytes([h[3], h[4]]) as usize;
            // A plaintext handshake or alert, a change_cipher_spec (only
            // before the client's Finished), or an unknown type (§5).
            if h[0] != APPLICATION_DATA {
                return Err(RecordError::UnexpectedRecord(h[0]));
            }
            // Judged on the header, before the record is even complete.
            if len > CIPHERTEXT_BYTES_MAX {
                return Err(RecordError::Overflow(len));
            }
            if buf.len() - pos < HEADER_BYTES + len {
                break;
            }
            let header = [h[0], h[1], h[2], h[3], h[4]];
            rec.clear();
            rec.extend_from_slice(&buf[pos + HEADER_BYTES..pos + HEADER_BYTES + len]);
            pos += HEADER_BYTES + len;
            self.open_one(header, &mut rec, &mut out)?;
            if out.peer_closed {
                self.set(flag::PEER_CLOSED, true);
                return Ok(out);
            }
        }
        if pos < buf.len() {
            self.partial = buf[pos..].into();
        }
        Ok(out)
    }

    /// Decrypts one record and acts on its content.
    fn open_one(
        &mut self,
        header: [u8; HEADER_BYTES],
        rec: &mut [u8],
        out: &mut Opened,
    ) -> Result<(), RecordError> {
        // Too short for a tag and a content type: cannot be authentic.
        if rec.len() < TAG_BYTES + 1 {
            return Err(RecordError::BadRecordMac);
        }
        let nonce = self.rx.next_nonce().ok_or(RecordError::KeyExhausted)?;
        // The version bytes are not checked: they are part of the AAD, so a
        // changed version fails the tag like any other change.
        let plain = self
            .rx
            .key()
            .open_in_place(nonce, Aad::from(header), rec)
            .map_err(|_| RecordError::BadRecordMac)?;
        if plain.len() > INNER_PLAINTEXT_BYTES_MAX {
            return Err(RecordError::Overflow(plain.len()));
        }
        // Inner plaintext: content, content type, zero padding.
        let end = plain
            .iter()
            .rposition(|b| *b != 0)
            .ok_or(RecordError::NoContentType)?;
        let (content, content_type) = (&plain[..end], plain[end]);
        // A handshake message split across records admits nothing else
        // between its parts (§5.1).
        if self.hs_len > 0 && content_type != HANDSHAKE {
            return Err(RecordError::Misaligned);
        }
        match content_type {
            APPLICATION_DATA => {
                out.plain.extend_from_slice(content);
                self.control_in_a_row = 0;
            }
            ALERT => {
                // One alert per record, never fragmented (§5.1).
                let &[_level, description] = content else {
                    return Err(RecordError::Decode("alert"));
                };
                // TLS 1.3 ignores the level (§6): close_notify closes,
                // user_canceled waits for the close_notify that should
                // follow it (§6.1), anything else is an error alert.
                match description {
                    d if d == Alert::CloseNotify as u8 => out.peer_closed = true,
                    d if d == Alert::UserCanceled as u8 => self.control_record()?,
                    d => return Err(RecordError::PeerAlert(d)),
                }
            }
            HANDSHAKE => {
                // Zero-length handshake fragments must not be sent (§5.1).
                if content.is_empty() {
                    return Err(RecordError::Decode("empty handshake record"));
                }
                self.handshake(content, out)?;
            }
            // A protected change_cipher_spec, or an unknown type (§5).
            t => return Err(RecordError::UnexpectedContent(t)),
        }
        // The client's key has protected as many records as ours may: ask
        // it to change (once per key; it must, §4.6.3).
        if self.rx.seq >= u64::from(self.records_per_key) && !self.has(flag::ASKED) {
            self.set(flag::ASK_PEER | flag::ASKED, true);
        }
        Ok(())
    }

    /// Handshake messages after the handshake: KeyUpdate only (the server
    /// asks for no client certificate, so no post-handshake auth).
    fn handshake(&mut self, mut rest: &[u8], out: &mut Opened) -> Result<(), RecordError> {
        while !rest.is_empty() {
            let have = self.hs_len as usize;
            if have < HS_HEADER_BYTES {
                let take = (HS_HEADER_BYTES - have).min(rest.len());
                self.hs[have..have + take].copy_from_slice(&rest[..take]);
                self.hs_len += take as u8;
                rest = &rest[take..];
                if self.hs[0] != KEY_UPDATE {
                    return Err(RecordError::UnexpectedHandshake(self.hs[0]));
                }
                if (self.hs_len as usize) < HS_HEADER_BYTES {
                    return Ok(()); // the rest of the header in the next record
                }
                let len = u32::from_be_bytes([0, self.hs[1], self.hs[2], self.hs[3]]);
                if len != 1 {
                    return Err(RecordError::Decode("KeyUpdate"));
                }
            }
            let Some((&request, after)) = rest.split_first() else {
                return Ok(()); // the body in the next record
            };
            rest = after;
            self.hs_len = 0;
            let asked = match request {
                0 => false, // update_not_requested
                1 => true,  // update_requested
                r => return Err(RecordError::BadKeyUpdate(r)),
            };
            // A key change ends its record: what follows would straddle it.
            if !rest.is_empty() {
                return Err(RecordError::Misaligned);
            }
            self.control_record()?;
            self.rx.update(self.suite)?;
            out.key_updates += 1;
            // A fresh client key: any request of ours for one is moot.
            self.set(flag::ASK_PEER | flag::ASKED, false);
            if asked {
                // Ours goes before our next application data (§4.6.3);
                // requests that come before it share one answer.
                self.set(flag::PEER_ASKED, true);
            }
        }
        Ok(())
    }

    /// Counts a record that carried no data (KeyUpdate, user_canceled).
    fn control_record(&mut self) -> Result<(), RecordError> {
        self.control_in_a_row = self.control_in_a_row.saturating_add(1);
        if self.control_in_a_row > CONTROL_RECORDS_IN_A_ROW_MAX {
            return Err(RecordError::TooManyControlRecords);
        }
        Ok(())
    }

    /// Whether a KeyUpdate of ours is due: the client asked, the client's
    /// key needs changing, or our key has room for one record only (which
    /// the KeyUpdate takes, so no key protects more than
    /// `records_per_key` records).
    pub fn key_update_due(&self) -> bool {
        !self.closed()
            && (self.has(flag::PEER_ASKED | flag::ASK_PEER)
                || self.tx.seq.saturating_add(1) >= u64::from(self.records_per_key))
    }

    /// Appends our KeyUpdate (asking for the client's when its key is due)
    /// and switches to our next key after it.
    pub fn seal_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        let ask = self.has(flag::ASK_PEER);
        let msg = [KEY_UPDATE, 0, 0, 1, u8::from(ask)];
        self.seal_padded(&msg, HANDSHAKE, 0, out)?;
        if let Err(e) = self.tx.update(self.suite) {
            // The client switches keys at that record; we cannot follow.
            self.set(flag::CLOSED, true);
            return Err(e.into());
        }
        self.set(flag::PEER_ASKED | flag::ASK_PEER, false);
        Ok(())
    }

    /// Starts an application-data record at the end of `out` (its header,
    /// filled in by `finish`), after a KeyUpdate when one is due; the
    /// caller appends at most PLAINTEXT_BYTES_MAX bytes of content after
    /// it. Returns where the record starts.
    pub fn begin(&mut self, out: &mut Vec<u8>) -> Result<usize, RecordError> {
        if self.key_update_due() {
            self.seal_key_update(out)?;
        }
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        Ok(start)
    }

    /// Seals the record started at `start` in place. On failure the record
    /// is removed from `out`: content never leaves unsealed.
    pub fn finish(
        &mut self,
        out: &mut Vec<u8>,
        start: usize,
        content_type: u8,
    ) -> Result<(), RecordError> {
        self.finish_padded(out, start, content_type, 0)
    }

    fn finish_padded(
        &mut self,
        out: &mut Vec<u8>,
        start: usize,
        content_type: u8,
        padding: usize,
    ) -> Result<(), RecordError> {
        let content = out.len().saturating_sub(start + HEADER_BYTES);
        let refused = if self.closed() {
            Some(RecordError::Closed)
        } else if content.saturating_add(padding) > PLAINTEXT_BYTES_MAX {
            Some(RecordError::Overflow(content + padding))
        } else if self.tx.seq >= u64::from(self.records_per_key) {
            Some(RecordError::KeyExhausted)
        } else {
            None
        };
        let nonce = match refused {
            Some(e) => Err(e),
            None => self.tx.next_nonce().ok_or(RecordError::KeyExhausted),
        };
        let nonce = match nonce {
            Ok(n) => n,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        out.push(content_type);
        out.resize(out.len() + padding, 0);
        let len = out.len() - start - HEADER_BYTES + TAG_BYTES;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out[start..start + HEADER_BYTES].copy_from_slice(&header);
        match self.tx.key().seal_in_place_separate_tag(
            nonce,
            Aad::from(header),
            &mut out[start + HEADER_BYTES..],
        ) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(RecordError::Crypto)
            }
        }
    }

    /// Appends one application-data record carrying `plain` (at most
    /// PLAINTEXT_BYTES_MAX bytes), after a KeyUpdate when one is due.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let start = self.begin(out)?;
        out.extend_from_slice(plain);
        self.finish(out, start, APPLICATION_DATA)
    }

    /// Appends one record of any content type with `padding` zero bytes,
    /// as it is (no KeyUpdate first): alerts here, and a peer's records in
    /// tests and the fuzz target.
    pub fn seal_padded(
        &mut self,
        content: &[u8],
        content_type: u8,
        padding: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        out.extend_from_slice(content);
        self.finish_padded(out, start, content_type, padding)
    }

    /// Appends a close_notify alert; nothing may follow it.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.closed() {
            return Ok(());
        }
        // Level warning, as rustls sends it; TLS 1.3 ignores the level.
        let sealed = self.seal_padded(&[1, Alert::CloseNotify as u8], ALERT, 0, out);
        self.set(flag::CLOSED, true);
        sealed
    }

    /// After a failure: appends the fatal alert that answers it (when
    /// there is one and a record can still be sealed), protected with our
    /// current key, and closes the layer: nothing may follow (§6.2).
    pub fn fail(&mut self, err: RecordError, out: &mut Vec<u8>) {
        if self.closed() {
            return;
        }
        if let Some(alert) = err.alert() {
            // Level fatal. Sealing fails only for a spent key: then the
            // connection just closes.
            let _ = self.seal_padded(&[2, alert as u8], ALERT, 0, out);
        }
        self.set(flag::CLOSED, true);
    }
}
