//! The TLS 1.3 key schedule after the handshake (RFC 8446 §7.2–7.3): a
//! traffic secret gives one direction's record key and IV, and the next
//! secret when that direction's key changes (KeyUpdate). HKDF is ring's.
//!
//! Each direction keeps its current traffic secret next to its key: a
//! KeyUpdate needs the secret, and rustls hands over keys only
//! (`dangerous_extract_secrets`), so the secrets come from its key log at
//! the handshake (`crate::tls::SecretCapture`). That is 48 bytes more per
//! direction than keys alone, inside the record layer's existing box.

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

/// Longest traffic secret (SHA-384's output), bytes.
pub const SECRET_BYTES_MAX: usize = 48;
/// Nonce (and IV) length of every TLS 1.3 AEAD, bytes.
pub const IV_BYTES: usize = 12;
/// Longest AEAD key (AES-256, ChaCha20), bytes.
const KEY_BYTES_MAX: usize = 32;

/// A TLS 1.3 cipher suite: the AEAD and the hash of its key schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128GcmSha256,
    Aes256GcmSha384,
    Chacha20Poly1305Sha256,
}

impl Suite {
    /// The suite rustls negotiated, when it is one this layer can run.
    pub fn from_rustls(s: rustls::CipherSuite) -> Option<Suite> {
        match s {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128GcmSha256),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256GcmSha384),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
                Some(Suite::Chacha20Poly1305Sha256)
            }
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128GcmSha256 => &aead::AES_128_GCM,
            Suite::Aes256GcmSha384 => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305Sha256 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256GcmSha384 => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    /// Hash.length: the length of this suite's traffic secrets, bytes.
    pub fn secret_len(self) -> usize {
        match self {
            Suite::Aes256GcmSha384 => 48,
            _ => 32,
        }
    }
}

/// The key schedule could not run (a secret of the wrong length; ring
/// refused a length, which the fixed lengths here rule out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyError;

/// An output length for ring's HKDF-Expand.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 §7.1).
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], out: &mut [u8]) -> Result<(), KeyError> {
    const PREFIX: &[u8] = b"tls13 ";
    let len = u16::try_from(out.len())
        .map_err(|_| KeyError)?
        .to_be_bytes();
    let label_len = [u8::try_from(PREFIX.len() + label.len()).map_err(|_| KeyError)?];
    let info = [&len[..], &label_len[..], PREFIX, label, &[0u8][..]];
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
    let okm = prk.expand(&info, Len(out.len())).map_err(|_| KeyError)?;
    okm.fill(out).map_err(|_| KeyError)
}

/// Overwrites key material before its memory is given back.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: a valid, aligned &mut u8; volatile so the store stays.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// A traffic secret as rustls's key log gave it (wiped when dropped).
pub struct Secret {
    bytes: [u8; SECRET_BYTES_MAX],
    len: u8,
}

impl Secret {
    /// None for a secret longer than any TLS 1.3 hash.
    pub fn new(secret: &[u8]) -> Option<Secret> {
        let mut bytes = [0u8; SECRET_BYTES_MAX];
        bytes.get_mut(..secret.len())?.copy_from_slice(secret);
        Some(Secret {
            bytes,
            len: secret.len() as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// A record key and IV derived from a traffic secret (RFC 8446 §7.3).
pub struct Derived {
    key: [u8; KEY_BYTES_MAX],
    key_len: usize,
    pub iv: [u8; IV_BYTES],
}

impl Derived {
    pub fn new(suite: Suite, secret: &[u8]) -> Result<Derived, KeyError> {
        if secret.len() != suite.secret_len() {
            return Err(KeyError);
        }
        let key_len = suite.aead().key_len();
        let mut d = Derived {
            key: [0; KEY_BYTES_MAX],
            key_len,
            iv: [0; IV_BYTES],
        };
        expand_label(suite, secret, b"key", &mut d.key[..key_len])?;
        expand_label(suite, secret, b"iv", &mut d.iv)?;
        Ok(d)
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }
}

impl Drop for Derived {
    fn drop(&mut self) {
        wipe(&mut self.key);
        wipe(&mut self.iv);
    }
}

/// One direction's protection: AEAD key, IV, the next record's sequence
/// number, and the traffic secret they came from (for the next KeyUpdate).
pub struct Dir {
    key: LessSafeKey,
    iv: [u8; IV_BYTES],
    /// Records protected with this key so far = the next sequence number.
    pub seq: u64,
    secret: [u8; SECRET_BYTES_MAX],
}

impl Dir {
    /// The direction protected by `secret`, `seq` records in.
    pub fn new(suite: Suite, secret: &[u8], seq: u64) -> Result<Dir, KeyError> {
        let d = Derived::new(suite, secret)?;
        let key = UnboundKey::new(suite.aead(), d.key()).map_err(|_| KeyError)?;
        let mut kept = [0u8; SECRET_BYTES_MAX];
        kept[..secret.len()].copy_from_slice(secret);
        Ok(Dir {
            key: LessSafeKey::new(key),
            iv: d.iv,
            seq,
            secret: kept,
        })
    }

    /// The next generation (RFC 8446 §7.2): secret_N+1 =
    /// HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length), its key
    /// and IV, sequence number 0. The old secret and key are dropped.
    pub fn update(&mut self, suite: Suite) -> Result<(), KeyError> {
        let n = suite.secret_len();
        let mut next = [0u8; SECRET_BYTES_MAX];
        let result = expand_label(suite, &self.secret[..n], b"traffic upd", &mut next[..n])
            .and_then(|()| Dir::new(suite, &next[..n], 0));
        wipe(&mut next);
        *self = result?;
        Ok(())
    }

    /// The nonce for the next record (IV xor sequence number, RFC 8446
    /// §5.3), counting the record; None once the 64-bit sequence number
    /// would wrap, which must not happen (§5.3).
    pub fn next_nonce(&mut self) -> Option<Nonce> {
        let seq = self.seq;
        self.seq = seq.checked_add(1)?;
        let mut n = self.iv;
        for (b, s) in n[IV_BYTES - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Some(Nonce::assume_unique_for_key(n))
    }

    pub fn key(&self) -> &LessSafeKey {
        &self.key
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // ring does not wipe its key schedule; the secret, which would
        // give every later key, at least goes.
        wipe(&mut self.secret);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn keys_and_ivs_match_rfc_8448() {
        // RFC 8448 §3: server and client application traffic secrets, and
        // the write keys derived from them (TLS_AES_128_GCM_SHA256).
        let s = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
        let d = Derived::new(Suite::Aes128GcmSha256, &s).unwrap();
        assert_eq!(d.key(), hex("9f02283b6c9c07efc26bb9f2ac92e356"));
        assert_eq!(d.iv.to_vec(), hex("cf782b88dd83549aadf1e984"));
        let c = hex("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5");
        let d = Derived::new(Suite::Aes128GcmSha256, &c).unwrap();
        assert_eq!(d.key(), hex("17422dda596ed5d9acd890e3c63f5051"));
        assert_eq!(d.iv.to_vec(), hex("5b78923dee08579033e523d9"));
        assert!(Derived::new(Suite::Aes256GcmSha384, &c).is_err(), "length");
    }

    /// RFC 8448 has no KeyUpdate; the next generation here was computed
    /// with Python's hmac module (HKDF-Expand written out by hand), which
    /// reproduces the RFC 8448 values above, and the SHA-384 keys match Go's
    /// crypto/tls kTLS test vector for the same secret.
    #[test]
    fn traffic_update_gives_the_next_generation() {
        let c = hex("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5");
        let mut d = Dir::new(Suite::Aes128GcmSha256, &c, 7).unwrap();
        d.update(Suite::Aes128GcmSha256).unwrap();
        assert_eq!(
            d.secret[..32].to_vec(),
            hex("fcdfcc72725aaee48bf64e4fd8b749cdbdbab39d90da0b26e2245ca6ea167207")
        );
        assert_eq!(d.seq, 0);
        assert_eq!(d.iv.to_vec(), hex("5dfb2c5938c3379b6cc5d1f2"));
        let k = Derived::new(Suite::Aes128GcmSha256, &d.secret[..32]).unwrap();
        assert_eq!(k.key(), hex("3879d82f5f14056e623f2ce5bfc66fce"));

        let s: Vec<u8> = (0u8..48).collect();
        let d0 = Derived::new(Suite::Aes256GcmSha384, &s).unwrap();
        assert_eq!(
            d0.key(),
            hex("6877d022f1c61d24ebb7487c16752d9a4798e40431c75b39320e537c90e23225")
        );
        assert_eq!(d0.iv.to_vec(), hex("42822531a0fe88648fc09e9f"));
        let mut d = Dir::new(Suite::Aes256GcmSha384, &s, 0).unwrap();
        d.update(Suite::Aes256GcmSha384).unwrap();
        assert_eq!(
            d.secret.to_vec(),
            hex("401331b63e9d59f202e8f041042d9516f4cd7fa2e2ee14631d3b49fc340d7af37fc2c0c9f252d8036f81ec5b85cbe5db")
        );
        let k = Derived::new(Suite::Aes256GcmSha384, &d.secret).unwrap();
        assert_eq!(
            k.key(),
            hex("eb354f3b48924ed78de34dd8aa6a6a0a51d857ddad1454d5cfa7b69f60712911")
        );
        assert_eq!(k.iv.to_vec(), hex("8478ffbe4f2e5450789775b3"));
    }

    #[test]
    fn the_sequence_number_never_wraps() {
        let s = [1u8; 32];
        let mut d = Dir::new(Suite::Chacha20Poly1305Sha256, &s, u64::MAX - 1).unwrap();
        assert!(d.next_nonce().is_some());
        assert!(d.next_nonce().is_none());
        assert_eq!(d.seq, u64::MAX);
    }
}
