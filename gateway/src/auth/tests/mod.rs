//! Tests for `auth`: shared fixtures plus the happy paths. Tokens for the
//! public-key algorithms are minted by the `jsonwebtoken` crate (a standard,
//! independent JWT library) from keys generated here by `ring`, to prove that
//! real-world tokens verify; the verifier gets only the public key, as PEM.
//! Every test passes `now` explicitly, so nothing depends on the wall clock.

mod keys;
mod malformed;
mod pem;
mod reject;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::*;

/// The fixed "current time" of every test.
const NOW: u64 = 1_700_000_000;
/// A 37-byte HS256 secret.
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

/// SPKI DER up to the key bytes, for Ed25519 (RFC 8410) and P-256 (RFC 5480).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A generated key pair: PKCS#8 DER (for the signer) and the public key PEM (for us).
struct TestKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    pem: String,
}

fn ed25519_key() -> TestKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
    let public = pair.public_key().as_ref().to_vec();
    let pem = pem_block("PUBLIC KEY", &[&ED25519_SPKI_PREFIX[..], &public].concat());
    TestKey {
        pkcs8: pkcs8.as_ref().to_vec(),
        public,
        pem,
    }
}

fn p256_key() -> TestKey {
    let rng = SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("parse");
    let public = pair.public_key().as_ref().to_vec();
    let pem = pem_block("PUBLIC KEY", &[&P256_SPKI_PREFIX[..], &public].concat());
    TestKey {
        pkcs8: pkcs8.as_ref().to_vec(),
        public,
        pem,
    }
}

/// PEM armour: base64 wrapped at 64 columns.
fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
}

/// Mints a token with the `jsonwebtoken` crate.
fn jwt_lib(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("jsonwebtoken encode")
}

fn ed_token(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    jwt_lib(
        Algorithm::EdDSA,
        kid,
        &EncodingKey::from_ed_der(&key.pkcs8),
        claims,
    )
}

fn es_token(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    jwt_lib(
        Algorithm::ES256,
        kid,
        &EncodingKey::from_ec_der(&key.pkcs8),
        claims,
    )
}

/// Valid claims at [`NOW`].
fn claims() -> Value {
    json!({"sub": "user-1", "did": "device-9", "exp": NOW + 60, "iat": NOW})
}

fn expected() -> Claims {
    Claims {
        sub: "user-1".into(),
        device_id: Some("device-9".into()),
        exp: NOW + 60,
    }
}

fn hs_key(kid: Option<&str>) -> VerifyKey {
    VerifyKey {
        kid: kid.map(Into::into),
        alg: Alg::HS256,
        material: KeyMaterial::Secret(SECRET.to_vec()),
    }
}

fn pem_key(kid: Option<&str>, alg: Alg, key: &TestKey) -> VerifyKey {
    VerifyKey {
        kid: kid.map(Into::into),
        alg,
        material: KeyMaterial::PublicKeyPem(key.pem.clone()),
    }
}

/// `claims` signed with `SECRET` under kid "hs1".
fn hs_with(c: &Value) -> String {
    sign_hs256(SECRET, Some("hs1"), c)
}

/// `claims()` with one field replaced (or removed when `v` is `None`).
fn claims_with(field: &str, v: Option<Value>) -> Value {
    let mut c = claims();
    let map = c.as_object_mut().expect("object");
    match v {
        Some(v) => map.insert(field.into(), v),
        None => map.remove(field),
    };
    c
}

/// A verifier with the single HS256 key "hs1" and the given options.
fn hs_verifier_with(opts: VerifyOptions) -> Verifier {
    Verifier::new(vec![hs_key(Some("hs1"))], opts).expect("verifier")
}

fn hs_verifier() -> Verifier {
    hs_verifier_with(VerifyOptions::default())
}

/// An HS256-signed token from raw header/payload text (lets tests send odd JSON).
fn hs_raw(header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[test]
fn hs256_token_from_jsonwebtoken_verifies() {
    let token = jwt_lib(
        Algorithm::HS256,
        Some("hs1"),
        &EncodingKey::from_secret(SECRET),
        &claims(),
    );
    assert_eq!(hs_verifier().verify(&token, NOW), Ok(expected()));
}

#[test]
fn eddsa_token_from_jsonwebtoken_verifies() {
    let key = ed25519_key();
    let v = Verifier::new(
        vec![pem_key(Some("ed1"), Alg::EdDSA, &key)],
        VerifyOptions::default(),
    )
    .expect("verifier");
    assert_eq!(
        v.verify(&ed_token(&key, Some("ed1"), &claims()), NOW),
        Ok(expected())
    );
}

#[test]
fn es256_token_from_jsonwebtoken_verifies() {
    let key = p256_key();
    let v = Verifier::new(
        vec![pem_key(Some("es1"), Alg::ES256, &key)],
        VerifyOptions::default(),
    )
    .expect("verifier");
    assert_eq!(
        v.verify(&es_token(&key, Some("es1"), &claims()), NOW),
        Ok(expected())
    );
}

#[test]
fn kid_selects_among_several_keys() {
    let (ed, es) = (ed25519_key(), p256_key());
    let keys = vec![
        hs_key(Some("hs1")),
        pem_key(Some("ed1"), Alg::EdDSA, &ed),
        pem_key(Some("es1"), Alg::ES256, &es),
    ];
    let v = Verifier::new(keys, VerifyOptions::default()).expect("verifier");
    assert_eq!(v.key_count(), 3);
    assert_eq!(
        v.verify(&sign_hs256(SECRET, Some("hs1"), &claims()), NOW),
        Ok(expected())
    );
    assert_eq!(
        v.verify(&ed_token(&ed, Some("ed1"), &claims()), NOW),
        Ok(expected())
    );
    assert_eq!(
        v.verify(&es_token(&es, Some("es1"), &claims()), NOW),
        Ok(expected())
    );
    // A token signed by one key but naming another fails.
    let other = p256_key();
    assert_eq!(
        v.verify(&es_token(&other, Some("es1"), &claims()), NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn sign_hs256_round_trip() {
    let v = hs_verifier();
    assert_eq!(
        v.verify(&sign_hs256(SECRET, Some("hs1"), &claims()), NOW),
        Ok(expected())
    );
    // No kid in the header: the lone key is used.
    assert_eq!(
        v.verify(&sign_hs256(SECRET, None, &claims()), NOW),
        Ok(expected())
    );
    // The standard library accepts our tokens too.
    let token = sign_hs256(SECRET, Some("hs1"), &claims());
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.validate_exp = false; // NOW is in the past of the real clock
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET),
        &validation,
    )
    .expect("jsonwebtoken decode");
    assert_eq!(data.claims, claims());
    assert_eq!(data.header.kid.as_deref(), Some("hs1"));
    assert_eq!(data.header.typ.as_deref(), Some("JWT"));
}

#[test]
fn lone_key_without_kid_accepts_any_kid() {
    let v = Verifier::new(vec![hs_key(None)], VerifyOptions::default()).expect("verifier");
    assert_eq!(
        v.verify(&sign_hs256(SECRET, Some("whatever"), &claims()), NOW),
        Ok(expected())
    );
    assert_eq!(
        v.verify(&sign_hs256(SECRET, None, &claims()), NOW),
        Ok(expected())
    );
}

#[test]
fn optional_and_flexible_claims() {
    let v = hs_verifier();
    let got = v.verify(
        &sign_hs256(SECRET, None, &json!({"sub": "u", "exp": 1_700_000_010.9})),
        NOW,
    );
    assert_eq!(
        got,
        Ok(Claims {
            sub: "u".into(),
            device_id: None,
            exp: 1_700_000_010
        })
    );
    // Unknown claims and header fields are ignored.
    let token = hs_raw(
        r#"{"alg":"HS256","typ":"at+jwt","x":[1]}"#,
        r#"{"sub":"u","exp":1700000001,"zzz":{"a":null}}"#,
    );
    assert!(v.verify(&token, NOW).is_ok());
}

#[test]
fn issuer_and_audience_match() {
    let opts = VerifyOptions {
        issuer: Some("auth.example".into()),
        audience: Some("gw".into()),
        ..Default::default()
    };
    let v = hs_verifier_with(opts);
    let mut c = claims();
    c["iss"] = json!("auth.example");
    c["aud"] = json!("gw");
    assert_eq!(v.verify(&sign_hs256(SECRET, None, &c), NOW), Ok(expected()));
    c["aud"] = json!(["other", "gw"]);
    assert_eq!(v.verify(&sign_hs256(SECRET, None, &c), NOW), Ok(expected()));
}

#[test]
fn verifier_is_shareable_and_debug_hides_secrets() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Verifier>();
    let debug = format!("{:?} {:?}", hs_verifier(), hs_key(None));
    assert!(debug.contains("hs1") && debug.contains("HS256"), "{debug}");
    assert!(!debug.contains("0123456789abcdef"), "{debug}");
}

#[test]
fn options_default() {
    let o = VerifyOptions::default();
    assert_eq!(
        (o.leeway_s, o.issuer, o.audience, o.token_bytes_max),
        (5, None, None, 4096)
    );
}
