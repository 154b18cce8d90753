//! PEM and SubjectPublicKeyInfo (SPKI) parsing for JWT verification keys.
//!
//! `ring` verifies signatures from raw public key bytes only, so the gateway
//! has to unwrap the usual `-----BEGIN PUBLIC KEY-----` files itself. This is
//! a deliberately small, bounds-checked DER reader that understands exactly
//! two shapes of SPKI — Ed25519 (RFC 8410) and EC P-256 (RFC 5480) — and
//! rejects everything else with a message an operator can act on.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// A public key extracted from an SPKI structure, ready for `ring`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublicKey {
    /// Raw 32-byte Ed25519 public key.
    Ed25519([u8; 32]),
    /// Uncompressed P-256 point: `0x04 || X || Y`, 65 bytes.
    P256(Vec<u8>),
}

impl PublicKey {
    /// Human description used in "wrong key type" errors.
    pub(super) fn describe(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "an Ed25519 key",
            PublicKey::P256(_) => "an EC P-256 key",
        }
    }
}

/// Why a PEM text could not be turned into a supported public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No `-----BEGIN ...-----` line at all.
    #[error("no \"-----BEGIN PUBLIC KEY-----\" line found")]
    NoBlock,
    /// A PEM block of another kind (private key, certificate, ...).
    #[error("the PEM block is \"{0}\", expected \"PUBLIC KEY\" (export the public half, e.g. `openssl pkey -in key.pem -pubout`)")]
    WrongLabel(String),
    /// BEGIN without a matching END line.
    #[error("missing \"-----END PUBLIC KEY-----\" line")]
    Unterminated,
    /// The text between BEGIN and END is not valid base64.
    #[error("the PEM body is not valid base64")]
    BadBase64,
    /// The decoded bytes are not a well-formed SubjectPublicKeyInfo.
    #[error("the key is not a valid SubjectPublicKeyInfo: {0}")]
    BadDer(&'static str),
    /// Well-formed, but a key type this gateway cannot verify with.
    #[error("unsupported key type: {0} (only Ed25519 and EC P-256 public keys are supported)")]
    Unsupported(&'static str),
}

const BEGIN_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----";
const END_PUBLIC: &str = "-----END PUBLIC KEY-----";

/// Largest DER we accept; real Ed25519/P-256 SPKIs are 44 and 91 bytes.
const DER_MAX: usize = 1024;

/// Parses the first PEM block in `text`, which must be a `PUBLIC KEY`.
/// Text before the BEGIN line (comments) is ignored, as is text after END.
pub(super) fn parse_public_key_pem(text: &str) -> Result<PublicKey, PemError> {
    let mut lines = text.lines().map(str::trim);
    let begin = lines
        .find(|l| l.starts_with("-----BEGIN ") && l.ends_with("-----"))
        .ok_or(PemError::NoBlock)?;
    if begin != BEGIN_PUBLIC {
        let label = begin
            .trim_start_matches("-----BEGIN ")
            .trim_end_matches('-');
        return Err(PemError::WrongLabel(label.chars().take(40).collect()));
    }
    let mut body = String::new();
    let mut terminated = false;
    for line in lines {
        if line.starts_with("-----") {
            terminated = line == END_PUBLIC;
            break;
        }
        if body.len() + line.len() > DER_MAX * 2 {
            return Err(PemError::BadDer("key is far larger than any supported key"));
        }
        body.push_str(line);
    }
    if !terminated {
        return Err(PemError::Unterminated);
    }
    let der = STANDARD.decode(body).map_err(|_| PemError::BadBase64)?;
    parse_spki_der(&der)
}

// OID contents (without the 0x06 tag and length byte).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70]; // 1.3.101.112
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]; // 1.2.840.10045.2.1
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]; // 1.2.840.10045.3.1.7

/// A few well-known OIDs we name in errors instead of saying "unknown".
const KNOWN_UNSUPPORTED: &[(&[u8], &str)] = &[
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
        "RSA",
    ),
    (&[0x2b, 0x65, 0x6e], "X25519"),
    (&[0x2b, 0x65, 0x6f], "X448"),
    (&[0x2b, 0x65, 0x71], "Ed448"),
];
const KNOWN_CURVES: &[(&[u8], &str)] = &[
    (&[0x2b, 0x81, 0x04, 0x00, 0x22], "EC P-384"),
    (&[0x2b, 0x81, 0x04, 0x00, 0x23], "EC P-521"),
    (&[0x2b, 0x81, 0x04, 0x00, 0x0a], "EC secp256k1"),
];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_BIT_STRING: u8 = 0x03;

/// Parses DER `SubjectPublicKeyInfo ::= SEQUENCE { AlgorithmIdentifier, BIT STRING }`.
pub(super) fn parse_spki_der(der: &[u8]) -> Result<PublicKey, PemError> {
    if der.len() > DER_MAX {
        return Err(PemError::BadDer("key is far larger than any supported key"));
    }
    let spki = Der::new(der).single(TAG_SEQUENCE)?;
    let mut spki = Der::new(spki);
    let mut alg_id = Der::new(spki.read(TAG_SEQUENCE)?);
    let key_bits = spki.read(TAG_BIT_STRING)?;
    spki.finish()?;

    let oid = alg_id.read(TAG_OID)?;
    let key = bit_string_bytes(key_bits)?;
    if oid == OID_ED25519 {
        // RFC 8410: parameters MUST be absent.
        alg_id.finish()?;
        let raw: [u8; 32] = key
            .try_into()
            .map_err(|_| PemError::BadDer("Ed25519 key is not 32 bytes"))?;
        Ok(PublicKey::Ed25519(raw))
    } else if oid == OID_EC_PUBLIC_KEY {
        let curve = alg_id.read(TAG_OID)?;
        alg_id.finish()?;
        if curve != OID_PRIME256V1 {
            let name = lookup(KNOWN_CURVES, curve).unwrap_or("EC on an unrecognised curve");
            return Err(PemError::Unsupported(name));
        }
        match key.first() {
            Some(0x04) if key.len() == 65 => Ok(PublicKey::P256(key.to_vec())),
            Some(0x02 | 0x03) => Err(PemError::Unsupported(
                "compressed EC point (re-export with `openssl ec -pubin -conv_form uncompressed`)",
            )),
            _ => Err(PemError::BadDer(
                "EC point is not a 65-byte uncompressed point",
            )),
        }
    } else {
        Err(PemError::Unsupported(
            lookup(KNOWN_UNSUPPORTED, oid).unwrap_or("unrecognised algorithm OID"),
        ))
    }
}

fn lookup(table: &[(&[u8], &'static str)], oid: &[u8]) -> Option<&'static str> {
    table.iter().find(|(o, _)| *o == oid).map(|(_, name)| *name)
}

/// A BIT STRING's content is one "unused bits" byte then the bits; keys use
/// whole bytes, so that first byte must be zero.
fn bit_string_bytes(content: &[u8]) -> Result<&[u8], PemError> {
    match content.split_first() {
        Some((0, rest)) => Ok(rest),
        _ => Err(PemError::BadDer("public key BIT STRING has unused bits")),
    }
}

/// Minimal DER cursor: definite lengths only, minimal length encoding,
/// lengths up to 0xFFFF (plenty for public keys). Never indexes out of range.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Der { rest }
    }

    /// Reads one TLV with the expected tag and returns its content.
    fn read(&mut self, tag: u8) -> Result<&'a [u8], PemError> {
        let (&found, rest) = self
            .rest
            .split_first()
            .ok_or(PemError::BadDer("truncated"))?;
        if found != tag {
            return Err(PemError::BadDer("unexpected element"));
        }
        let (&first, rest) = rest.split_first().ok_or(PemError::BadDer("truncated"))?;
        let (len, rest) = match first {
            0..=0x7f => (usize::from(first), rest),
            0x81 => match rest.split_first() {
                Some((&b, r)) if b >= 0x80 => (usize::from(b), r),
                _ => return Err(PemError::BadDer("bad length encoding")),
            },
            0x82 => match rest {
                [hi, lo, r @ ..] if *hi != 0 => ((usize::from(*hi) << 8) | usize::from(*lo), r),
                _ => return Err(PemError::BadDer("bad length encoding")),
            },
            _ => return Err(PemError::BadDer("bad length encoding")),
        };
        if len > rest.len() {
            return Err(PemError::BadDer("truncated"));
        }
        let (content, after) = rest.split_at(len);
        self.rest = after;
        Ok(content)
    }

    /// Reads one TLV that must be the whole remaining input.
    fn single(mut self, tag: u8) -> Result<&'a [u8], PemError> {
        let content = self.read(tag)?;
        self.finish()?;
        Ok(content)
    }

    /// Fails if bytes are left over.
    fn finish(&self) -> Result<(), PemError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PemError::BadDer("unexpected trailing data"))
        }
    }
}
