//! Local JWT (JWS compact serialization) verification with `ring`.
//!
//! Clients present a token on connect; the gateway checks it here without a
//! network round trip. The order of checks is fixed and conservative: size
//! limit, strict base64url of all three segments, header (alg allow-listed,
//! `crit` refused), key selection by `kid`, header alg == key alg (no
//! algorithm confusion), signature, and only then the payload claims.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde::Deserialize;
use serde_json::Value;

use super::keys::{KeyError, KeySet, KeySpec, VerifyKey};

/// Longest accepted `sub` and `did` claim, in bytes.
pub const ID_BYTES_MAX: usize = 128;
/// Longest header `alg` echoed back in [`JwtError::AlgorithmRejected`].
const ALG_ECHO_MAX: usize = 32;

/// Signature algorithms the gateway accepts (JOSE names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Alg {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// Ed25519 signatures.
    EdDSA,
    /// ECDSA on P-256 with SHA-256, raw `r || s` signatures.
    ES256,
}

impl Alg {
    /// The JOSE `alg` name, exactly as it appears in a token header.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
        }
    }

    /// Exact, case-sensitive match of a header `alg`.
    fn from_header(alg: &str) -> Option<Alg> {
        [Alg::HS256, Alg::EdDSA, Alg::ES256]
            .into_iter()
            .find(|a| a.as_str() == alg)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verified token says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// User id from `sub` (non-empty, at most 128 bytes).
    pub sub: String,
    /// Device id from `did`, if present (non-empty, at most 128 bytes).
    pub device_id: Option<String>,
    /// Expiry from `exp`, NumericDate seconds (fractions rounded down).
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than `token_bytes_max`; nothing was decoded.
    #[error("token is longer than the allowed maximum")]
    TooLarge,
    /// Not a well-formed JWS compact token; the text says which part.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Header `alg` is unsupported or not the one the selected key uses.
    #[error("token algorithm {0:?} is not accepted for this key")]
    AlgorithmRejected(String),
    /// No configured key matches the header `kid` (or it is missing and several keys exist).
    #[error("token names no configured key (unknown or missing kid)")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` (plus leeway) is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` (minus leeway) is in the future.
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// A required claim is absent.
    #[error("token lacks the required {0:?} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or an out-of-range value.
    #[error("token claim {0:?} has an invalid type or value")]
    BadClaim(&'static str),
    /// `exp` lies further ahead than the configured maximum lifetime.
    #[error("token expires more than auth.token_lifetime_max_s ({0} s) from now")]
    LifetimeTooLong(u64),
    /// `iss` differs from the configured issuer.
    #[error("token issuer does not match")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("token audience does not match")]
    WrongAudience,
}

/// Policy knobs for [`Verifier::verify`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// When `Some`, `iss` must equal it.
    pub issuer: Option<String>,
    /// When `Some`, `aud` (a string or an array of strings) must contain it.
    pub audience: Option<String>,
    /// Longer tokens are rejected before any decoding.
    pub token_bytes_max: usize,
    /// A token whose `exp` lies further ahead than this is rejected: an
    /// absurd expiry (1e300 saturates to "never") is a token that can never
    /// be cut off. Seconds.
    pub lifetime_max_s: u64,
    /// Refuse ES256 signatures whose `s` is in the upper half (see
    /// `LoadedKey::verify`: malleability against interoperability).
    pub es256_low_s_only: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            leeway_s: 5,
            issuer: None,
            audience: None,
            token_bytes_max: 4096,
            lifetime_max_s: 30 * 24 * 3600,
            es256_low_s_only: false,
        }
    }
}

/// Verifies client tokens against a fixed set of keys. Cheap to share (`Send + Sync`).
#[derive(Clone)]
pub struct Verifier {
    keys: KeySet,
    opts: VerifyOptions,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier from keys whose material has already been read.
    pub fn new(keys: Vec<VerifyKey>, opts: VerifyOptions) -> Result<Verifier, KeyError> {
        Ok(Verifier {
            keys: KeySet::build(keys)?,
            opts,
        })
    }

    /// Reads secrets from env vars and public keys from files.
    pub fn from_specs(specs: &[KeySpec], opts: VerifyOptions) -> Result<Verifier, KeyError> {
        Self::from_specs_with_env(specs, opts, &|var| std::env::var(var))
    }

    /// [`Verifier::from_specs`] with an injectable environment (for tests).
    pub(super) fn from_specs_with_env(
        specs: &[KeySpec],
        opts: VerifyOptions,
        getenv: super::keys::GetEnv<'_>,
    ) -> Result<Verifier, KeyError> {
        Ok(Verifier {
            keys: KeySet::from_specs(specs, getenv)?,
            opts,
        })
    }

    /// Number of configured keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token` and returns its claims. `now_unix_s`: current time
    /// passed in by the caller (clock as an argument, so tests are deterministic).
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Claims, JwtError> {
        if token.len() > self.opts.token_bytes_max {
            return Err(JwtError::TooLarge);
        }
        let segments = JwtError::Malformed("token must have exactly three dot-separated segments");
        let (signing_input, s64) = token.rsplit_once('.').ok_or(segments.clone())?;
        let (h64, p64) = signing_input.split_once('.').ok_or(segments.clone())?;
        if p64.contains('.') {
            return Err(segments);
        }
        let header = b64(h64, "header is not unpadded base64url")?;
        let payload = b64(p64, "payload is not unpadded base64url")?;
        let sig = b64(s64, "signature is not unpadded base64url")?;

        let header: Header = json_object(&header, "header is not a valid JSON object")?;
        if header.crit.is_some() {
            return Err(JwtError::Malformed("crit unsupported"));
        }
        let alg_name = header.alg.ok_or(JwtError::Malformed("header has no alg"))?;
        let rejected =
            || JwtError::AlgorithmRejected(alg_name.chars().take(ALG_ECHO_MAX).collect());
        let alg = Alg::from_header(&alg_name).ok_or_else(rejected)?;
        let key = self.keys.select(header.kid.as_deref())?;
        if key.alg() != alg {
            return Err(rejected());
        }
        if !key.verify(signing_input.as_bytes(), &sig, self.opts.es256_low_s_only) {
            return Err(JwtError::BadSignature);
        }

        let payload: Payload = json_object(&payload, "payload is not a valid JSON object")?;
        self.check_claims(payload, now_unix_s)
    }

    fn check_claims(&self, p: Payload, now: u64) -> Result<Claims, JwtError> {
        let exp = p.exp.ok_or(JwtError::MissingClaim("exp"))?;
        let exp = seconds(&exp, false, "exp")?;
        let nbf = p.nbf.map(|v| seconds(&v, true, "nbf")).transpose()?;
        let sub = p.sub.ok_or(JwtError::MissingClaim("sub"))?;
        let sub = id_string(sub, "sub")?;
        let device_id = p.did.map(|v| id_string(v, "did")).transpose()?;

        let leeway = self.opts.leeway_s;
        if now > exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(JwtError::NotYetValid);
        }
        if exp > now.saturating_add(self.opts.lifetime_max_s) {
            return Err(JwtError::LifetimeTooLong(self.opts.lifetime_max_s));
        }
        if let Some(want) = &self.opts.issuer {
            match p.iss {
                None => return Err(JwtError::MissingClaim("iss")),
                Some(Value::String(iss)) if iss == *want => {}
                Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
                Some(_) => return Err(JwtError::BadClaim("iss")),
            }
        }
        if let Some(want) = &self.opts.audience {
            let found = match p.aud {
                None => return Err(JwtError::MissingClaim("aud")),
                Some(Value::String(aud)) => aud == *want,
                Some(Value::Array(auds)) => {
                    let mut found = false;
                    for aud in &auds {
                        match aud {
                            Value::String(aud) => found |= aud == want,
                            _ => return Err(JwtError::BadClaim("aud")),
                        }
                    }
                    found
                }
                Some(_) => return Err(JwtError::BadClaim("aud")),
            };
            if !found {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(Claims {
            sub,
            device_id,
            exp,
        })
    }
}

/// The claims of a token for `sub` valid from `now_unix_s` for `ttl_s`,
/// with the device id `did` when given (the `token` command and the demo
/// token endpoint).
pub fn claims(sub: &str, did: Option<&str>, now_unix_s: u64, ttl_s: u64) -> Value {
    let mut c =
        serde_json::json!({"sub": sub, "iat": now_unix_s, "exp": now_unix_s.saturating_add(ttl_s)});
    if let Some(d) = did {
        c["did"] = d.into();
    }
    c
}

/// Mint an HS256 token (used by the demo token command and the flood client).
/// `claims` is a JSON object; the header is `{"alg":"HS256","kid":..,"typ":"JWT"}`.
pub fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), Value::from("HS256"));
    header.insert("typ".into(), Value::from("JWT"));
    if let Some(kid) = kid {
        header.insert("kid".into(), Value::from(kid));
    }
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
    );
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
    token
}

/// The header fields we look at; others (`typ`, ...) are ignored.
/// Serde rejects duplicates of these fields, so `{"alg":"HS256","alg":"none"}` is Malformed.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims we look at, kept as raw JSON so type errors map to `BadClaim`.
#[derive(Deserialize)]
struct Payload {
    #[serde(default, deserialize_with = "present")]
    sub: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    aud: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    did: Option<Value>,
}

/// `Some` for any present field, including JSON `null` (which plain `Option` maps to `None`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Strict RFC 7515 base64url: no padding, no whitespace, canonical trailing bits.
fn b64(segment: &str, err: &'static str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed(err))
}

/// Parses `bytes` as a JSON object (not an array, which serde would also
/// accept for a struct) into `T`.
fn json_object<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    err: &'static str,
) -> Result<T, JwtError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(JwtError::Malformed(err));
    }
    serde_json::from_slice(bytes).map_err(|_| JwtError::Malformed(err))
}

/// A NumericDate as whole seconds. Fractions round toward the safe side:
/// down for `exp`, up for `nbf`. Negative or non-numeric -> `BadClaim`.
fn seconds(v: &Value, round_up: bool, name: &'static str) -> Result<u64, JwtError> {
    let Value::Number(n) = v else {
        return Err(JwtError::BadClaim(name));
    };
    if let Some(s) = n.as_u64() {
        return Ok(s);
    }
    match n.as_f64() {
        // `as` saturates for values beyond u64::MAX.
        Some(f) if f.is_finite() && f >= 0.0 => {
            Ok(if round_up { f.ceil() } else { f.floor() } as u64)
        }
        _ => Err(JwtError::BadClaim(name)),
    }
}

/// A non-empty string of at most [`ID_BYTES_MAX`] bytes.
fn id_string(v: Value, name: &'static str) -> Result<String, JwtError> {
    match v {
        Value::String(s) if !s.is_empty() && s.len() <= ID_BYTES_MAX => Ok(s),
        _ => Err(JwtError::BadClaim(name)),
    }
}
