//! TLS 1.3 records after the handshake, with the traffic keys rustls hands
//! over (`dangerous_extract_secrets`, the route rustls offers for kernel
//! TLS): an idle connection keeps two AEAD keys, two IVs and two sequence
//! numbers (about 1 KB) instead of a whole buffered rustls session (8.4 KB
//! measured). Record protection follows RFC 8446 §5.2–5.3: outer type 23,
//! the inner content type after the plaintext, nonce = IV xor sequence,
//! the 5-byte header as associated data.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Largest plaintext in one record (RFC 8446 §5.1).
pub const PLAINTEXT_BYTES_MAX: usize = 16 * 1024;
/// Largest ciphertext in one record: plaintext, content type, padding, tag.
const CIPHERTEXT_BYTES_MAX: usize = PLAINTEXT_BYTES_MAX + 256;
/// TLS record header: type, version, length.
pub const HEADER_BYTES: usize = 5;
const TAG_BYTES: usize = 16;
pub const APPLICATION_DATA: u8 = 23;
/// Records per key and direction before the connection is closed (clients
/// reconnect): under the AES-GCM confidentiality limit of 2^24.5 records
/// (RFC 8446 §5.5), since this layer does not do KeyUpdate.
pub const RECORDS_PER_KEY_MAX: u64 = 1 << 24;
const ALERT: u8 = 21;

/// One direction's keys.
pub struct Dir {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Dir {
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Dir, String> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err("unsupported TLS cipher for record handover".into()),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| "bad TLS traffic key")?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| "bad TLS IV length")?;
        Ok(Dir {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// Whether this key has protected as many records as it may.
    pub fn exhausted(&self) -> bool {
        self.seq >= RECORDS_PER_KEY_MAX
    }

    fn nonce(&mut self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(n)
    }
}

/// What a batch of received records held.
#[derive(Default, Debug)]
pub struct Opened {
    pub plain: Vec<u8>,
    pub peer_closed: bool,
}

/// The record layer of one connection after its handshake.
pub struct Records {
    rx: Dir,
    tx: Dir,
    /// Bytes of a record not complete yet (empty while idle).
    partial: Vec<u8>,
    /// close_notify queued.
    pub close_sent: bool,
}

impl Records {
    pub fn new(rx: Dir, tx: Dir) -> Records {
        Records {
            rx,
            tx,
            partial: Vec::new(),
            close_sent: false,
        }
    }

    /// Bytes held of a record not complete yet (capacity).
    pub fn buffered(&self) -> usize {
        self.partial.capacity()
    }

    /// Decrypts every whole record in `partial ++ data`; keeps the rest.
    pub fn open(&mut self, data: &[u8]) -> Result<Opened, String> {
        let mut out = Opened::default();
        let joined;
        let buf: &[u8] = if self.partial.is_empty() {
            data
        } else {
            self.partial.extend_from_slice(data);
            joined = std::mem::take(&mut self.partial);
            &joined
        };
        let mut pos = 0;
        let mut rec = Vec::new();
        while buf.len() - pos >= HEADER_BYTES {
            let h = &buf[pos..pos + HEADER_BYTES];
            let len = u16::from_be_bytes([h[3], h[4]]) as usize;
            if h[0] != APPLICATION_DATA
                || h[1] != 3
                || !(TAG_BYTES + 1..=CIPHERTEXT_BYTES_MAX).contains(&len)
            {
                return Err(format!(
                    "unexpected TLS record (type {}, length {len})",
                    h[0]
                ));
            }
            if buf.len() - pos < HEADER_BYTES + len {
                break;
            }
            if self.rx.exhausted() {
                return Err("the client's TLS key reached its record limit".into());
            }
            let header: [u8; HEADER_BYTES] = [h[0], h[1], h[2], h[3], h[4]];
            rec.clear();
            rec.extend_from_slice(&buf[pos + HEADER_BYTES..pos + HEADER_BYTES + len]);
            pos += HEADER_BYTES + len;
            let nonce = self.rx.nonce();
            let plain = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(header), &mut rec)
                .map_err(|_| "a TLS record failed to decrypt")?;
            // Inner plaintext: content, content type, zero padding.
            let end = plain
                .iter()
                .rposition(|b| *b != 0)
                .ok_or("a TLS record without a content type")?;
            match plain[end] {
                APPLICATION_DATA => out.plain.extend_from_slice(&plain[..end]),
                // close_notify (description 0); TLS 1.3 ignores the level.
                ALERT if end == 2 && plain[1] == 0 => {
                    out.peer_closed = true; // close_notify
                    break;
                }
                ALERT => return Err(format!("TLS alert {:?} from the client", &plain[..end])),
                t => {
                    return Err(format!(
                        "TLS content type {t} after the handshake (KeyUpdate is not supported)"
                    ))
                }
            }
        }
        if pos < buf.len() && !out.peer_closed {
            self.partial = buf[pos..].to_vec();
        }
        Ok(out)
    }

    /// Starts a record at the end of `out` (its header, filled in by
    /// `finish`); the caller appends at most PLAINTEXT_BYTES_MAX bytes of
    /// plaintext after it. Returns where the record starts.
    pub fn begin(out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        start
    }

    /// Seals the record started at `start` in place. On failure the record
    /// is removed from `out`: plaintext never leaves unsealed.
    pub fn finish(
        &mut self,
        out: &mut Vec<u8>,
        start: usize,
        content_type: u8,
    ) -> Result<(), String> {
        out.push(content_type);
        let len = out.len() - start - HEADER_BYTES + TAG_BYTES;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out[start..start + HEADER_BYTES].copy_from_slice(&header);
        let nonce = self.tx.nonce();
        match self.tx.key.seal_in_place_separate_tag(
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
                Err("sealing a TLS record failed".into())
            }
        }
    }

    /// Appends one record carrying `plain` (at most PLAINTEXT_BYTES_MAX bytes).
    pub fn seal(
        &mut self,
        plain: &[u8],
        content_type: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let start = Self::begin(out);
        out.extend_from_slice(plain);
        self.finish(out, start, content_type)
    }

    /// Appends a close_notify alert record.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        self.seal(&[1, 0], ALERT, out)
    }

    /// Whether the sending key may protect no more records.
    pub fn tx_exhausted(&self) -> bool {
        self.tx.exhausted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
            iv: rustls::crypto::cipher::Iv::new([9u8; 12]),
        }
    }

    /// A sender and a receiver sharing one direction's key.
    fn pair() -> (Records, Records) {
        let d = || Dir::new(5, secret()).unwrap();
        (Records::new(d(), d()), Records::new(d(), d()))
    }

    #[test]
    fn sealed_records_open_whole_and_split_at_every_byte() {
        let (mut tx, _) = pair();
        let mut wire = Vec::new();
        tx.seal(b"hello", APPLICATION_DATA, &mut wire).unwrap();
        tx.seal(&vec![1u8; PLAINTEXT_BYTES_MAX], APPLICATION_DATA, &mut wire)
            .unwrap();
        let (_, mut rx) = pair();
        let o = rx.open(&wire).unwrap();
        assert_eq!(o.plain.len(), 5 + PLAINTEXT_BYTES_MAX);
        assert_eq!(&o.plain[..5], b"hello");
        let (_, mut rx) = pair();
        let mut got = Vec::new();
        for b in &wire {
            got.extend(rx.open(std::slice::from_ref(b)).unwrap().plain);
        }
        assert_eq!(got.len(), 5 + PLAINTEXT_BYTES_MAX);
    }

    #[test]
    fn tampering_alerts_and_unknown_types_are_refused() {
        let (mut tx, _) = pair();
        let mut wire = Vec::new();
        tx.seal(b"hello", APPLICATION_DATA, &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(pair().1.open(&wire).is_err(), "a bad tag");
        let (mut tx, _) = pair();
        let mut wire = Vec::new();
        tx.seal_close_notify(&mut wire).unwrap();
        assert!(pair().1.open(&wire).unwrap().peer_closed);
        let (mut tx, _) = pair();
        let mut wire = Vec::new();
        tx.seal(&[24, 0, 0, 1, 0], 22, &mut wire).unwrap(); // a KeyUpdate
        assert!(pair().1.open(&wire).unwrap_err().contains("KeyUpdate"));
        assert!(
            pair().1.open(&[22, 3, 3, 0, 1, 0]).is_err(),
            "a plaintext handshake record"
        );
    }

    #[test]
    fn a_key_stops_at_its_record_limit() {
        let mut d = Dir::new(RECORDS_PER_KEY_MAX - 1, secret()).unwrap();
        assert!(!d.exhausted());
        let _ = d.nonce();
        assert!(d.exhausted());
    }
}
