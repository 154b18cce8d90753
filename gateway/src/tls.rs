//! TLS for client connections (rustls with the ring provider): the `[tls]`
//! section and the server configuration built from it. A TLS client speaks
//! on the same port as plain TCP: a connection whose first byte is 0x16 (a
//! TLS handshake record) is TLS; a plain frame's first byte is 0x00 or 0x01
//! (a length below 16 MiB), so the two cannot be confused.

use std::cell::RefCell;
use std::sync::Arc;

pub use crate::config::tls::TlsConfig;
use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Records per key and direction before a KeyUpdate (`TlsConfig::records_per_key`,
/// held within the record layer's bounds).
pub fn records_per_key(cfg: &TlsConfig) -> u64 {
    use crate::wire::records::{RECORDS_PER_KEY_MAX, RECORDS_PER_KEY_MIN};
    cfg.records_per_key.map_or(RECORDS_PER_KEY_MAX, |n| {
        n.clamp(RECORDS_PER_KEY_MIN, RECORDS_PER_KEY_MAX)
    })
}

/// First byte of a TLS handshake record.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

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
pub fn install(mesh: &[crate::core::CoreTx], sc: &Arc<rustls::ServerConfig>) {
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
    // The server's suite order (strongest first), not the client's.
    sc.ignore_client_order = true;
    // No 0-RTT (replayable); resumption by tickets when configured.
    sc.max_early_data_size = 0;
    if t.tickets {
        sc.ticketer = if t.ticket_key_file.is_empty() {
            rustls::crypto::ring::Ticketer::new().context("making a TLS ticket key")?
        } else {
            Arc::new(FileTicketer::load(&t.ticket_key_file, t.ticket_lifetime_s)?)
        };
        // Two, as rustls does by default: a reconnect racing the old
        // connection still has one to use.
        sc.send_tls13_tickets = 2;
    } else {
        sc.send_tls13_tickets = 0;
    }
    // After a TLS 1.3 handshake the I/O loop takes the traffic keys and
    // drops the rustls session (conn/tls.rs): 8.4 KB -> ~1.5 KB per
    // connection. The traffic secrets, for KeyUpdate, come from the key log.
    sc.enable_secret_extraction = true;
    sc.key_log = Arc::new(SecretCapture);
    Ok(Some(Arc::new(sc)))
}

/// rustls's key-log labels of the TLS 1.3 application traffic secrets.
const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

/// One TLS 1.3 handshake's application traffic secrets.
#[derive(Default)]
pub struct TrafficSecrets {
    pub client: Option<crate::wire::records::keys::Secret>,
    pub server: Option<crate::wire::records::keys::Secret>,
}

thread_local! {
    /// What `SecretCapture` caught on this thread since the last take.
    static CAUGHT: RefCell<TrafficSecrets> = RefCell::default();
}

/// Catches the application traffic secrets as rustls derives them, through
/// its key-log hook. The record layer needs them for KeyUpdate (RFC 8446
/// §7.2) and `dangerous_extract_secrets` hands over keys only. rustls
/// calls the hook synchronously, inside `process_new_packets`, on the
/// thread driving that one connection: a thread-local slot, emptied before
/// and taken after each call (`take_traffic_secrets`), pairs the secrets
/// with their connection. Nothing is written anywhere.
#[derive(Debug)]
pub struct SecretCapture;

impl rustls::KeyLog for SecretCapture {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET || label == SERVER_TRAFFIC_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let secret = crate::wire::records::keys::Secret::new(secret);
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            match label {
                CLIENT_TRAFFIC_SECRET => c.client = secret,
                SERVER_TRAFFIC_SECRET => c.server = secret,
                _ => {}
            }
        });
    }
}

/// The secrets `SecretCapture` caught on this thread since the last call.
pub fn take_traffic_secrets() -> TrafficSecrets {
    CAUGHT.take()
}

/// Tickets sealed with a key from a file (ChaCha20-Poly1305, random nonce):
/// every node given the same file accepts the others' tickets. Rotate by
/// replacing the file and reloading; old tickets then fall back to a full
/// handshake.
struct FileTicketer {
    key: ring::aead::LessSafeKey,
    /// First bytes of every ticket: which key sealed it.
    key_id: [u8; 8],
    lifetime_s: u32,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTicketer")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl FileTicketer {
    fn load(path: &str, lifetime_s: u32) -> anyhow::Result<FileTicketer> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading tls.ticket_key_file {path}"))?;
        if bytes.len() < 32 {
            anyhow::bail!("tls.ticket_key_file {path} must hold at least 32 random bytes (head -c 32 /dev/urandom > {path})");
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&digest.as_ref()[..8]);
        let okm = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"gateway ticket key".as_slice(), &bytes].concat(),
        );
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, okm.as_ref())
            .map_err(|_| anyhow::anyhow!("bad ticket key"))?;
        Ok(FileTicketer {
            key: ring::aead::LessSafeKey::new(key),
            key_id,
            lifetime_s,
            rng: ring::rand::SystemRandom::new(),
        })
    }
}

impl rustls::server::ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use ring::rand::SecureRandom as _;
        let mut nonce = [0u8; 12];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(8 + 12 + plain.len() + 16);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&self.key_id),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < 8 + 12 + 16 || cipher[..8] != self.key_id {
            return None;
        }
        let nonce: [u8; 12] = cipher[8..20].try_into().ok()?;
        let mut body = cipher[20..].to_vec();
        let plain = self
            .key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&self.key_id),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}
