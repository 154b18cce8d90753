//! TLS for client connections (rustls with the ring provider): the `[tls]`
//! section and the server configuration built from it. A TLS client speaks
//! on the same port as plain TCP: a connection whose first byte is 0x16 (a
//! TLS handshake record) is TLS; a plain frame's first byte is 0x00 or 0x01
//! (a length below 16 MiB), so the two cannot be confused.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// First byte of a TLS handshake record.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
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
        Ok(())
    }
}

/// Reads the certificate chain and key named in the config.
fn read_pem(
    cfg: &TlsConfig,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = std::fs::read(&cfg.cert_file)
        .with_context(|| format!("reading tls.cert_file {}", cfg.cert_file))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &certs[..])
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert_file {} is not PEM certificates", cfg.cert_file))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert_file {} holds no certificate", cfg.cert_file);
    }
    let key = std::fs::read(&cfg.key_file)
        .with_context(|| format!("reading tls.key_file {}", cfg.key_file))?;
    let key = rustls_pemfile::private_key(&mut &key[..])
        .with_context(|| format!("tls.key_file {} is not PEM", cfg.key_file))?
        .with_context(|| format!("tls.key_file {} holds no private key", cfg.key_file))?;
    Ok((certs, key))
}

/// A self-signed certificate for localhost; its PEM is written next to the
/// temp dir so that development clients can trust it.
fn self_signed(
    node: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ck =
        rcgen::generate_simple_self_signed(names).context("making a self-signed certificate")?;
    let path = std::env::temp_dir().join(format!("gateway-{node}-self-signed.pem"));
    std::fs::write(&path, ck.cert.pem()).with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        cert = %path.display(),
        "TLS with a SELF-SIGNED certificate (--tls-self-signed): for development only; clients must trust this file"
    );
    let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    Ok((vec![ck.cert.der().clone()], key))
}

/// New settings from the same certificate and key files, for a reload
/// (SIGHUP, `POST /tls/reload`). Connections already open keep theirs.
pub fn reload(cfg: &crate::Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    if !cfg.tls.enabled() {
        anyhow::bail!("TLS is not configured: nothing to reload");
    }
    if cfg.tls.self_signed {
        anyhow::bail!("a self-signed certificate (--tls-self-signed) is not reloaded");
    }
    server_config(cfg)?.context("TLS is not configured")
}

/// Sends new TLS settings to every core.
pub fn install(mesh: &[flume::Sender<crate::core::CoreMsg>], sc: &Arc<rustls::ServerConfig>) {
    for tx in mesh {
        let _ = tx.send(crate::core::CoreMsg::Tls(sc.clone()));
    }
}

/// The server configuration, or None when TLS is off.
pub fn server_config(cfg: &crate::Config) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let t = &cfg.tls;
    if !t.enabled() {
        return Ok(None);
    }
    let (certs, key) = if t.self_signed {
        self_signed(&cfg.node_id)?
    } else {
        read_pem(t)?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if t.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match or are unsupported")?;
    // No 0-RTT; session resumption by tickets comes later (issue 5).
    sc.max_early_data_size = 0;
    sc.send_tls13_tickets = 0;
    // After a TLS 1.3 handshake the I/O loop takes the traffic keys and
    // drops the rustls session (conn/tls.rs): 8.4 KB -> ~1 KB per connection.
    sc.enable_secret_extraction = true;
    Ok(Some(Arc::new(sc)))
}
