//! Fuzzes token verification (`auth/jwt.rs`). Two ways per input:
//! - the bytes as a whole token, against HS256 and EdDSA keys (parsing of
//!   segments, base64url, header JSON, key selection);
//! - the bytes split at the first NUL into a header and a payload that are
//!   then signed with the HS256 key, so the fuzzer reaches the claim checks
//!   behind the signature (exp, nbf, iss, aud, sub, did).
//!
//! Every input must give claims or a typed error, never a panic; accepted
//! claims must respect the documented bounds.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gateway::auth::{Alg, KeyMaterial, Verifier, VerifyKey, VerifyOptions};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SECRET: &[u8] = b"fuzz-secret-0123456789-0123456789-0123456789";
const NOW: u64 = 1_800_000_000;
/// An Ed25519 public key (RFC 8032 test vector 1), as SPKI PEM.
const ED_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let keys = vec![
            VerifyKey {
                kid: Some("hs".into()),
                alg: Alg::HS256,
                material: KeyMaterial::Secret(SECRET.to_vec()),
            },
            VerifyKey {
                kid: Some("ed".into()),
                alg: Alg::EdDSA,
                material: KeyMaterial::PublicKeyPem(ED_PEM.into()),
            },
        ];
        let opts = VerifyOptions {
            issuer: Some("iss".into()),
            audience: Some("aud".into()),
            ..VerifyOptions::default()
        };
        Verifier::new(keys, opts).expect("fuzz keys load")
    })
}

fn check(token: &str) {
    if let Ok(c) = verifier().verify(token, NOW) {
        assert!(!c.sub.is_empty() && c.sub.len() <= 128);
        assert!(c
            .device_id
            .as_ref()
            .is_none_or(|d| !d.is_empty() && d.len() <= 128));
        // exp saturates at u64::MAX for huge NumericDates (never expires).
        assert!(c.exp.saturating_add(5) >= NOW);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
    }
    if let Some(nul) = data.iter().position(|&b| b == 0) {
        let (header, payload) = (&data[..nul], &data[nul + 1..]);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        check(&format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())));
    }
});
