//! `[tls]`: certificate, key and session settings of the client port
//! (the server configuration built from them: `tls.rs`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: String,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Development only: a throwaway self-signed certificate for localhost.
    pub self_signed: bool,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    pub tls12: bool,
    /// Session tickets (TLS 1.3 resumption: a returning client skips the
    /// certificate and key exchange).
    pub tickets: bool,
    /// A file of at least 32 random bytes: the ticket key, so that several
    /// nodes (and restarts) accept each other's tickets. Empty = a random
    /// key per process, rotated by rustls.
    pub ticket_key_file: String,
    /// How long a ticket is good for, s.
    pub ticket_lifetime_s: u32,
    /// Records per key and direction before a KeyUpdate; None =
    /// `RECORDS_PER_KEY_MAX`. Not read from the config file: tests set it
    /// to reach the limit. Held within RECORDS_PER_KEY_MIN..=MAX, so it can
    /// only make keys change sooner.
    #[serde(skip)]
    pub records_per_key: Option<u64>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: String::new(),
            key_file: String::new(),
            self_signed: false,
            tls12: false,
            tickets: true,
            ticket_key_file: String::new(),
            ticket_lifetime_s: 12 * 3600,
            records_per_key: None,
        }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.self_signed || !self.cert_file.is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err("tls.cert_file and tls.key_file go together".into());
        }
        if self.self_signed && !self.cert_file.is_empty() {
            return Err("tls.self_signed and tls.cert_file exclude each other".into());
        }
        if self.tickets && !(60..=7 * 24 * 3600).contains(&self.ticket_lifetime_s) {
            return Err(
                "tls.ticket_lifetime_s must be within 60..=604800 (RFC 8446 caps it at 7 days)"
                    .into(),
            );
        }
        Ok(())
    }
}
