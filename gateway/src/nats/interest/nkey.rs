//! Credentials: nsc `.creds` files and NKeys (base32, CRC16, ed25519 seeds,
//! public keys and nonce signatures for CONNECT).

use base64::Engine as _;

/// Parses an nsc `.creds` file: the user JWT block, then the NKey seed block.
pub fn read_creds(text: &str) -> Result<(String, String), String> {
    let mut jwt = None;
    let mut seed = None;
    let mut unlabelled = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let is_begin = line.len() > 6
            && line.starts_with("---")
            && line.ends_with("---")
            && line.contains("BEGIN");
        if !is_begin {
            continue;
        }
        let Some(content) = lines.by_ref().find(|l| !l.is_empty()) else {
            break;
        };
        if content.starts_with("---") {
            continue;
        }
        let content = content.to_string();
        if line.contains("JWT") {
            jwt.get_or_insert(content);
        } else if line.contains("SEED") {
            seed.get_or_insert(content);
        } else {
            unlabelled.push(content);
        }
    }
    let mut unlabelled = unlabelled.into_iter();
    let jwt = jwt
        .or_else(|| unlabelled.next())
        .ok_or("no JWT block (-----BEGIN NATS USER JWT-----) in the creds file")?;
    let seed = seed
        .or_else(|| unlabelled.next())
        .ok_or("no seed block (-----BEGIN USER NKEY SEED-----) in the creds file")?;
    if jwt.split('.').count() != 3 {
        return Err(
            "the JWT in the creds file is not a JWT (expected three dot-separated parts)".into(),
        );
    }
    if !seed.starts_with('S') {
        return Err("the seed in the creds file does not start with 'S'".into());
    }
    Ok((jwt, seed))
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, no padding.
pub(super) fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(B32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub(super) fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    Some(out)
}

/// CRC-16/XMODEM (poly 0x1021, init 0), as NKeys use.
pub(super) fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

const NKEY_PREFIX_SEED: u8 = 18 << 3;
/// Public-key prefix byte of user keys ('U').
#[cfg(test)]
pub(super) const NKEY_PREFIX_USER: u8 = 20 << 3;

fn nkey_encode(prefix: &[u8], key: &[u8]) -> String {
    let mut raw = Vec::with_capacity(prefix.len() + key.len() + 2);
    raw.extend_from_slice(prefix);
    raw.extend_from_slice(key);
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    base32_encode(&raw)
}

/// Encodes a 32-byte ed25519 seed of the given key type (prefix byte, e.g.
/// [`NKEY_PREFIX_USER`]) as seed text (`S` + type letter + ...).
#[cfg(test)]
pub(super) fn nkey_encode_seed(kind: u8, seed: &[u8; 32]) -> String {
    let b1 = NKEY_PREFIX_SEED | (kind >> 5);
    let b2 = (kind & 31) << 3;
    nkey_encode(&[b1, b2], seed)
}

/// Encodes a public key of the given type (`U...` for users).
pub(super) fn nkey_encode_public(kind: u8, key: &[u8]) -> String {
    nkey_encode(&[kind], key)
}

/// Decodes seed text into (key type prefix byte, raw seed).
pub(super) fn nkey_decode_seed(text: &str) -> Result<(u8, [u8; 32]), String> {
    let raw = base32_decode(text.trim())
        .ok_or("the NKey seed is not base32 (expected text like SUAB...)")?;
    if raw.len() != 36 {
        return Err(format!(
            "the NKey seed has the wrong length ({} bytes decoded, expected 36)",
            raw.len()
        ));
    }
    let (body, crc) = raw.split_at(34);
    if crc16(body) != u16::from_le_bytes([crc[0], crc[1]]) {
        return Err("the NKey seed's checksum does not match (truncated or mistyped?)".into());
    }
    if body[0] & 0xf8 != NKEY_PREFIX_SEED {
        return Err("this is not an NKey seed (it must start with 'S')".into());
    }
    let kind = ((body[0] & 7) << 5) | ((body[1] & 0xf8) >> 3);
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&body[2..]);
    Ok((kind, seed))
}

/// The public key (NKey text) of a seed and the signature of `nonce`,
/// base64url without padding, as CONNECT wants them.
pub(super) fn nkey_sign(seed_text: &str, nonce: &[u8]) -> Result<(String, String), String> {
    let (kind, seed) = nkey_decode_seed(seed_text)?;
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| "the NKey seed is not a valid ed25519 seed".to_string())?;
    use ring::signature::KeyPair as _;
    let public = nkey_encode_public(kind, kp.public_key().as_ref());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.sign(nonce).as_ref());
    Ok((public, sig))
}
