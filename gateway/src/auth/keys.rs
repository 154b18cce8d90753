//! Verification keys: the config shape, loading secrets and PEM files, and
//! picking the key for a token.
//!
//! Everything that can be wrong with a key is caught here, once, at startup,
//! with an error that tells the operator what to change. At request time the
//! only questions left are "which key does this `kid` name" and "does the
//! signature check out", both answered by [`KeySet`] without allocation.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use ring::{hmac, signature};

use super::jwt::{Alg, JwtError};
use super::pem::{self, PemError, PublicKey};

/// Shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const HS256_SECRET_MIN: usize = 32;
/// Largest public key file read; a PEM public key is well under 1 KiB.
const PEM_FILE_MAX: u64 = 64 * 1024;

/// One key as written in the TOML config (`[[auth.keys]]` tables).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Key id matched against the token header's `kid`. Optional when only one key is configured.
    pub kid: Option<String>,
    /// Algorithm tokens under this key must use.
    pub alg: Alg,
    /// HS256 only: name of the environment variable that holds the shared secret (secrets never go in the file).
    pub secret_env: Option<String>,
    /// HS256 only, instead of `secret_env`: path of a file holding the
    /// shared secret (one line; keep it 0600). Read again on a reload, so
    /// a secret can be rotated without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// EdDSA / ES256 only: path of a PEM file with the public key ("-----BEGIN PUBLIC KEY-----", SubjectPublicKeyInfo).
    pub public_key_file: Option<PathBuf>,
}

/// The key bytes themselves, already read from wherever they live.
pub enum KeyMaterial {
    /// HS256 shared secret (at least [`HS256_SECRET_MIN`] bytes).
    Secret(Vec<u8>),
    /// EdDSA / ES256 public key as PEM text (`-----BEGIN PUBLIC KEY-----`).
    PublicKeyPem(String),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Secret(s) => write!(f, "Secret(<{} bytes redacted>)", s.len()),
            KeyMaterial::PublicKeyPem(p) => f.debug_tuple("PublicKeyPem").field(p).finish(),
        }
    }
}

/// A key ready to be handed to [`Verifier::new`](super::Verifier::new).
#[derive(Debug)]
pub struct VerifyKey {
    /// Key id matched against the token header's `kid`.
    pub kid: Option<String>,
    /// Algorithm tokens under this key must use.
    pub alg: Alg,
    /// Secret or public key.
    pub material: KeyMaterial,
}

/// A key configuration problem, found when the verifier is built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key list is empty.
    #[error("no auth keys configured: add at least one [[auth.keys]] table")]
    NoKeys,
    /// Several keys, and at least one of them has no `kid`.
    #[error("{count} keys are configured but {key} has no kid; give every key a kid when there is more than one")]
    KidRequired { count: usize, key: String },
    /// Two keys share a `kid`.
    #[error("kid {0:?} is used by more than one key; key ids must be unique")]
    DuplicateKid(String),
    /// More than one of `secret_env`, `secret_file` and `public_key_file` is set.
    #[error(
        "{key}: set only one of secret_env or secret_file (HS256), or public_key_file (EdDSA, ES256)"
    )]
    BothSources { key: String },
    /// None of `secret_env`, `secret_file` and `public_key_file` is set.
    #[error(
        "{key}: set secret_env or secret_file (for HS256), or public_key_file (for EdDSA, ES256)"
    )]
    NoSource { key: String },
    /// A secret for a public-key algorithm, or a public key for HS256.
    #[error("{key}: alg {alg} needs {needs}")]
    WrongMaterial {
        key: String,
        alg: Alg,
        needs: &'static str,
    },
    /// The secret's environment variable is not set.
    #[error("{key}: environment variable {var} is not set; export the HS256 shared secret in it")]
    EnvMissing { key: String, var: String },
    /// The secret's environment variable is set but empty.
    #[error("{key}: environment variable {var} is empty; put the HS256 shared secret in it")]
    EnvEmpty { key: String, var: String },
    /// The secret's environment variable is not UTF-8.
    #[error("{key}: environment variable {var} is not valid UTF-8; use a printable secret (e.g. `openssl rand -base64 48`)")]
    EnvNotUnicode { key: String, var: String },
    /// The HS256 secret is too short to be safe.
    #[error("{key}: the HS256 secret is {len} bytes; use at least 32 random bytes (e.g. `openssl rand -base64 48`)")]
    SecretTooShort { key: String, len: usize },
    /// The secret file is empty.
    #[error("{key}: secret file {} is empty; put the HS256 shared secret in it", path.display())]
    SecretFileEmpty { key: String, path: PathBuf },
    /// The public key file (or the secret file) could not be opened or read.
    #[error("{key}: cannot read key file {}: {source}", path.display())]
    ReadFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is implausibly large.
    #[error("{key}: key file {} is larger than 64 KiB; it should hold one PEM public key or one secret", path.display())]
    FileTooLarge { key: String, path: PathBuf },
    /// The PEM text is not a supported SubjectPublicKeyInfo.
    #[error("{key}: {source}")]
    BadPem { key: String, source: PemError },
    /// A valid public key, but of the wrong type for the configured alg.
    #[error("{key}: alg {alg} needs {needs} but the PEM holds {found}")]
    WrongKeyType {
        key: String,
        alg: Alg,
        needs: &'static str,
        found: &'static str,
    },
}

/// How a loaded key checks a signature.
#[derive(Clone)]
enum Check {
    Hmac(hmac::Key),
    Public(signature::UnparsedPublicKey<Vec<u8>>),
}

/// A validated key, ready to check signatures.
#[derive(Clone)]
pub(super) struct LoadedKey {
    kid: Option<String>,
    alg: Alg,
    check: Check,
}

impl LoadedKey {
    /// The algorithm this key accepts.
    pub(super) fn alg(&self) -> Alg {
        self.alg
    }

    /// True when `sig` is a valid signature of `msg` under this key. With
    /// `low_s_only`, an ES256 signature must be in low-S form: (r, n − s)
    /// verifies as well as (r, s), so accepting both makes tokens malleable
    /// (a second valid token from any seen one, which a cache or deny list
    /// keyed by the token bytes would miss). It is off by default because
    /// standard libraries do not normalize: 191 of 400 ES256 tokens from the
    /// `jsonwebtoken` crate (RustCrypto p256) were high-S.
    pub(super) fn verify(&self, msg: &[u8], sig: &[u8], low_s_only: bool) -> bool {
        if low_s_only && self.alg == Alg::ES256 && !low_s(sig) {
            return false;
        }
        match &self.check {
            Check::Hmac(key) => hmac::verify(key, msg, sig).is_ok(),
            Check::Public(key) => key.verify(msg, sig).is_ok(),
        }
    }
}

/// Half the order of the P-256 group, big-endian: an ES256 `s` above it is
/// the high-S twin of a valid signature.
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether a fixed-size ES256 signature (r ‖ s, 32 bytes each) has s ≤ n/2.
/// Other lengths are left to the signature check (which refuses them).
fn low_s(sig: &[u8]) -> bool {
    match sig.get(32..64) {
        Some(s) if sig.len() == 64 => s <= &P256_HALF_ORDER[..],
        _ => true,
    }
}

/// The configured keys, validated; selects the key for a token.
#[derive(Clone)]
pub(super) struct KeySet {
    keys: Vec<LoadedKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for k in &self.keys {
            list.entry(&format_args!("{:?}/{}", k.kid, k.alg));
        }
        list.finish()
    }
}

/// Environment lookup, injectable so tests need not mutate the process env.
pub(super) type GetEnv<'a> = &'a dyn Fn(&str) -> Result<String, std::env::VarError>;

impl KeySet {
    /// Validates already-read keys.
    pub(super) fn build(keys: Vec<VerifyKey>) -> Result<Self, KeyError> {
        check_kids(keys.iter().map(|k| k.kid.as_deref()))?;
        let keys = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| load(label(k.kid.as_deref(), i), k.kid, k.alg, k.material))
            .collect::<Result<_, _>>()?;
        Ok(KeySet { keys })
    }

    /// Validates config entries, reading secrets via `getenv` and PEM files from disk.
    pub(super) fn from_specs(specs: &[KeySpec], getenv: GetEnv<'_>) -> Result<Self, KeyError> {
        check_kids(specs.iter().map(|s| s.kid.as_deref()))?;
        let mut keys = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let key = label(spec.kid.as_deref(), i);
            let material = read_material(spec, &key, getenv)?;
            keys.push(load(key, spec.kid.clone(), spec.alg, material)?);
        }
        Ok(KeySet { keys })
    }

    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key a token header names. A header `kid` must match a configured
    /// kid, except that a lone key configured without a kid accepts any kid
    /// (the operator did not name it, so the name carries no information).
    /// Without a header `kid`, only a lone key can be chosen.
    pub(super) fn select(&self, kid: Option<&str>) -> Result<&LoadedKey, JwtError> {
        if let Some(kid) = kid {
            if let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                return Ok(key);
            }
        }
        match self.keys.as_slice() {
            [only] if kid.is_none() || only.kid.is_none() => Ok(only),
            _ => Err(JwtError::UnknownKey),
        }
    }
}

/// How keys are named in error messages.
fn label(kid: Option<&str>, index: usize) -> String {
    match kid {
        Some(kid) => format!("auth key {kid:?}"),
        None => format!("auth key #{}", index + 1),
    }
}

fn check_kids<'a>(kids: impl ExactSizeIterator<Item = Option<&'a str>>) -> Result<(), KeyError> {
    let count = kids.len();
    let mut seen: Vec<&str> = Vec::with_capacity(count);
    for (i, kid) in kids.enumerate() {
        match kid {
            None if count > 1 => {
                let key = label(None, i);
                return Err(KeyError::KidRequired { count, key });
            }
            None => {}
            Some(kid) if seen.contains(&kid) => return Err(KeyError::DuplicateKid(kid.into())),
            Some(kid) => seen.push(kid),
        }
    }
    if count == 0 {
        return Err(KeyError::NoKeys);
    }
    Ok(())
}

const NEEDS_SECRET: &str = "a shared secret: set secret_env or secret_file, not public_key_file";
const NEEDS_PUBLIC: &str = "a public key: set public_key_file, not secret_env or secret_file";

fn read_material(spec: &KeySpec, key: &str, getenv: GetEnv<'_>) -> Result<KeyMaterial, KeyError> {
    let key = key.to_owned();
    let sources = [
        spec.secret_env.is_some(),
        spec.secret_file.is_some(),
        spec.public_key_file.is_some(),
    ];
    match sources.iter().filter(|&&s| s).count() {
        0 => return Err(KeyError::NoSource { key }),
        1 => {}
        _ => return Err(KeyError::BothSources { key }),
    }
    match (
        spec.alg,
        &spec.secret_env,
        &spec.secret_file,
        &spec.public_key_file,
    ) {
        (Alg::HS256, Some(var), _, _) => match getenv(var) {
            Ok(s) if s.is_empty() => Err(KeyError::EnvEmpty {
                key,
                var: var.clone(),
            }),
            Ok(s) => Ok(KeyMaterial::Secret(s.into_bytes())),
            Err(std::env::VarError::NotPresent) => Err(KeyError::EnvMissing {
                key,
                var: var.clone(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::EnvNotUnicode {
                key,
                var: var.clone(),
            }),
        },
        (Alg::HS256, _, Some(path), _) => {
            let text = read_pem_file(path, key.clone())?;
            // One line: the newline an editor or `echo` adds is not part of it.
            let secret = text.trim_end_matches(['\n', '\r']);
            if secret.is_empty() {
                return Err(KeyError::SecretFileEmpty {
                    key,
                    path: path.clone(),
                });
            }
            Ok(KeyMaterial::Secret(secret.as_bytes().to_vec()))
        }
        (Alg::HS256, _, _, _) => Err(KeyError::WrongMaterial {
            key,
            alg: spec.alg,
            needs: NEEDS_SECRET,
        }),
        (_, _, _, Some(path)) => read_pem_file(path, key).map(KeyMaterial::PublicKeyPem),
        (alg, _, _, _) => Err(KeyError::WrongMaterial {
            key,
            alg,
            needs: NEEDS_PUBLIC,
        }),
    }
}

fn read_pem_file(path: &Path, key: String) -> Result<String, KeyError> {
    let mut text = String::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(PEM_FILE_MAX + 1).read_to_string(&mut text));
    match read {
        Err(source) => Err(KeyError::ReadFile {
            key,
            path: path.to_owned(),
            source,
        }),
        Ok(n) if n as u64 > PEM_FILE_MAX => Err(KeyError::FileTooLarge {
            key,
            path: path.to_owned(),
        }),
        Ok(_) => Ok(text),
    }
}

fn load(
    key: String,
    kid: Option<String>,
    alg: Alg,
    material: KeyMaterial,
) -> Result<LoadedKey, KeyError> {
    let check = match (alg, material) {
        (Alg::HS256, KeyMaterial::Secret(secret)) => {
            if secret.len() < HS256_SECRET_MIN {
                return Err(KeyError::SecretTooShort {
                    key,
                    len: secret.len(),
                });
            }
            Check::Hmac(hmac::Key::new(hmac::HMAC_SHA256, &secret))
        }
        (Alg::HS256, KeyMaterial::PublicKeyPem(_)) => {
            return Err(KeyError::WrongMaterial {
                key,
                alg,
                needs: NEEDS_SECRET,
            });
        }
        (_, KeyMaterial::Secret(_)) => {
            return Err(KeyError::WrongMaterial {
                key,
                alg,
                needs: NEEDS_PUBLIC,
            });
        }
        (_, KeyMaterial::PublicKeyPem(text)) => {
            let public = match pem::parse_public_key_pem(&text) {
                Ok(public) => public,
                Err(source) => return Err(KeyError::BadPem { key, source }),
            };
            let (algorithm, bytes): (&'static dyn signature::VerificationAlgorithm, Vec<u8>) =
                match (alg, public) {
                    (Alg::EdDSA, PublicKey::Ed25519(raw)) => (&signature::ED25519, raw.to_vec()),
                    (Alg::ES256, PublicKey::P256(point)) => {
                        (&signature::ECDSA_P256_SHA256_FIXED, point)
                    }
                    (_, other) => {
                        let needs = match alg {
                            Alg::EdDSA => "an Ed25519 public key",
                            _ => "an EC P-256 public key",
                        };
                        let found = other.describe();
                        return Err(KeyError::WrongKeyType {
                            key,
                            alg,
                            needs,
                            found,
                        });
                    }
                };
            Check::Public(signature::UnparsedPublicKey::new(algorithm, bytes))
        }
    };
    Ok(LoadedKey { kid, alg, check })
}

/// Reads the material of config entries (secrets from the environment,
/// PEM files from disk) without building a verifier, so callers can add
/// keys of their own (the demo key) before [`super::Verifier::new`].
pub fn read_keys(specs: &[KeySpec]) -> Result<Vec<VerifyKey>, KeyError> {
    let getenv = |var: &str| std::env::var(var);
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let key = label(spec.kid.as_deref(), i);
            let material = read_material(spec, &key, &getenv)?;
            Ok(VerifyKey {
                kid: spec.kid.clone(),
                alg: spec.alg,
                material,
            })
        })
        .collect()
}
