//! TLS client configuration (rustls with the ring provider).

use std::sync::Arc;

use tokio_rustls::rustls;

use super::ConnectSpec;

pub(super) fn build_tls(spec: &ConnectSpec) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if spec.tls_ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err("no system root certificates found; set tls_ca_file".into());
        }
    } else {
        let pem = std::fs::read(&spec.tls_ca_file)
            .map_err(|e| format!("cannot read tls_ca_file {:?}: {e}", spec.tls_ca_file))?;
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            let c = c.map_err(|e| format!("bad PEM in tls_ca_file {:?}: {e}", spec.tls_ca_file))?;
            roots.add(c).map_err(|e| {
                format!("bad certificate in tls_ca_file {:?}: {e}", spec.tls_ca_file)
            })?;
        }
        if roots.is_empty() {
            return Err(format!(
                "no certificates in tls_ca_file {:?}",
                spec.tls_ca_file
            ));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots);
    let config = match (spec.tls_cert_file.is_empty(), spec.tls_key_file.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let pem = std::fs::read(&spec.tls_cert_file)
                .map_err(|e| format!("cannot read tls_cert_file {:?}: {e}", spec.tls_cert_file))?;
            let certs = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad PEM in tls_cert_file {:?}: {e}", spec.tls_cert_file))?;
            if certs.is_empty() {
                return Err(format!(
                    "no certificates in tls_cert_file {:?}",
                    spec.tls_cert_file
                ));
            }
            let pem = std::fs::read(&spec.tls_key_file)
                .map_err(|e| format!("cannot read tls_key_file {:?}: {e}", spec.tls_key_file))?;
            let key = rustls_pemfile::private_key(&mut &pem[..])
                .map_err(|e| format!("bad PEM in tls_key_file {:?}: {e}", spec.tls_key_file))?
                .ok_or_else(|| format!("no private key in tls_key_file {:?}", spec.tls_key_file))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate/key rejected: {e}"))?
        }
        _ => return Err("set both tls_cert_file and tls_key_file, or neither".into()),
    };
    Ok(Arc::new(config))
}
