//! Client authentication: local verification of JWTs presented on connect.
//!
//! Keys come from the `[[auth.keys]]` config tables ([`KeySpec`]); secrets are
//! read from environment variables and public keys from PEM files, once, when
//! the [`Verifier`] is built. Verification itself is pure and takes the clock
//! as an argument. All cryptography is done by `ring`.
//!
//! - `jwt`: token parsing, claim checks, [`Verifier`], [`sign_hs256`], [`claims`].
//! - `keys`: key config, loading and selection by `kid`.
//! - `pem`: PEM / SubjectPublicKeyInfo parsing for Ed25519 and P-256 keys.

mod jwt;
mod keys;
mod pem;
#[cfg(test)]
mod tests;

pub use jwt::{claims, sign_hs256, Alg, Claims, JwtError, Verifier, VerifyOptions};
pub use keys::{read_keys, KeyError, KeyMaterial, KeySpec, VerifyKey, HS256_SECRET_MIN};
pub use pem::PemError;
