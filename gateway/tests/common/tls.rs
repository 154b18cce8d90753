//! TLS for tests: a server config with a self-signed certificate, a client
//! config that trusts it, and a connected client stream.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway::Config;

use super::WAIT;

/// A test config with a self-signed certificate for localhost; returns the
/// config and the certificate to trust.
pub fn tls_config() -> (Config, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gw-tls-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = super::test_config();
    cfg.tls.cert_file = cert.display().to_string();
    cfg.tls.key_file = key.display().to_string();
    (cfg, ck.cert.der().clone())
}

/// A client that trusts `ca` and speaks `versions`.
pub fn tls_client_config(
    ca: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection with the handshake done.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsStream {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

/// Catches a client's TLS 1.3 application traffic secrets (one config per
/// connection, so one pair per catcher).
#[derive(Debug, Default)]
pub struct CatchSecrets(pub std::sync::Mutex<(Vec<u8>, Vec<u8>)>);

impl rustls::KeyLog for CatchSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut s = self.0.lock().unwrap();
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => s.0 = secret.to_vec(),
            "SERVER_TRAFFIC_SECRET_0" => s.1 = secret.to_vec(),
            _ => {}
        }
    }
}

/// One direction of [`RawTls`]: written for the tests, apart from the
/// gateway's record layer, so that the two check each other.
struct RawDir {
    alg: &'static ring::aead::Algorithm,
    hkdf: ring::hkdf::Algorithm,
    secret: Vec<u8>,
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 §7.1).
fn expand_label(hkdf: ring::hkdf::Algorithm, secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    struct L(usize);
    impl ring::hkdf::KeyType for L {
        fn len(&self) -> usize {
            self.0
        }
    }
    let full = format!("tls13 {label}");
    let info = [
        &(len as u16).to_be_bytes()[..],
        &[full.len() as u8][..],
        full.as_bytes(),
        &[0u8][..],
    ];
    let mut out = vec![0u8; len];
    ring::hkdf::Prk::new_less_safe(hkdf, secret)
        .expand(&info, L(len))
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out
}

impl RawDir {
    fn new(
        alg: &'static ring::aead::Algorithm,
        hkdf: ring::hkdf::Algorithm,
        secret: Vec<u8>,
        seq: u64,
    ) -> RawDir {
        let key = expand_label(hkdf, &secret, "key", alg.key_len());
        let iv = expand_label(hkdf, &secret, "iv", 12);
        RawDir {
            alg,
            hkdf,
            key: ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &key).unwrap()),
            iv: iv.try_into().unwrap(),
            secret,
            seq,
        }
    }

    fn update(&mut self) {
        let next = expand_label(self.hkdf, &self.secret, "traffic upd", self.secret.len());
        *self = RawDir::new(self.alg, self.hkdf, next, 0);
    }

    fn nonce(&mut self) -> ring::aead::Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        ring::aead::Nonce::assume_unique_for_key(n)
    }

    /// A protected record with this inner plaintext (no checks at all).
    fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = inner.len() + 16;
        let header = [23, 3, 3, (len >> 8) as u8, len as u8];
        let mut body = inner.to_vec();
        let nonce = self.nonce();
        self.key
            .seal_in_place_append_tag(nonce, ring::aead::Aad::from(header), &mut body)
            .unwrap();
        let mut rec = header.to_vec();
        rec.extend(body);
        rec
    }
}

/// What [`RawTls`] read.
#[derive(Debug, PartialEq)]
pub enum Got {
    Data(Vec<u8>),
    /// The alert's description.
    Alert(u8),
    /// A KeyUpdate from the server (already applied); true = it asked for ours.
    KeyUpdate(bool),
}

/// A TLS 1.3 client that does the handshake with rustls, then protects
/// its records itself: it sends what a real client would not (oversized,
/// corrupt, unknown types, KeyUpdate) and shows every record it gets.
pub struct RawTls {
    pub sock: TcpStream,
    tx: RawDir,
    rx: RawDir,
    inbuf: Vec<u8>,
    /// Application data received and not taken yet.
    pub data: Vec<u8>,
    /// Records protected with each server key, in order.
    pub per_server_key: Vec<usize>,
    /// The server asked for our KeyUpdate: it goes before our next data.
    pub owe_update: bool,
    /// KeyUpdates the server sent (true = asked for ours).
    pub server_updates: Vec<bool>,
}

impl RawTls {
    pub fn connect(addr: SocketAddr, ca: &rustls::pki_types::CertificateDer<'static>) -> RawTls {
        let catch = Arc::new(CatchSecrets::default());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.enable_secret_extraction = true;
        cfg.key_log = catch.clone();
        let s = tls_connect(addr, Arc::new(cfg));
        let suite = s.conn.negotiated_cipher_suite().unwrap().suite();
        let (alg, hkdf) = match suite {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => {
                (&ring::aead::AES_128_GCM, ring::hkdf::HKDF_SHA256)
            }
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => {
                (&ring::aead::AES_256_GCM, ring::hkdf::HKDF_SHA384)
            }
            _ => (&ring::aead::CHACHA20_POLY1305, ring::hkdf::HKDF_SHA256),
        };
        let rustls::StreamOwned { conn, sock } = s;
        let x = conn.dangerous_extract_secrets().unwrap();
        let (client, server) = catch.0.lock().unwrap().clone();
        let tx = RawDir::new(alg, hkdf, client, x.tx.0);
        let rx = RawDir::new(alg, hkdf, server, x.rx.0);
        RawTls {
            sock,
            tx,
            rx,
            inbuf: Vec::new(),
            data: Vec::new(),
            per_server_key: vec![0],
            owe_update: false,
            server_updates: Vec::new(),
        }
    }

    /// Sends one record: `content`, the inner type, `padding` zeros.
    pub fn send_record(&mut self, content_type: u8, content: &[u8], padding: usize) {
        let rec = self.seal_record(content_type, content, padding);
        self.sock.write_all(&rec).unwrap();
    }

    /// The bytes of one record, not sent.
    pub fn seal_record(&mut self, content_type: u8, content: &[u8], padding: usize) -> Vec<u8> {
        let mut inner = content.to_vec();
        inner.push(content_type);
        inner.resize(inner.len() + padding, 0);
        self.tx.seal(&inner)
    }

    /// Sends a KeyUpdate and switches to the next sending key.
    pub fn send_key_update(&mut self, requested: bool) {
        self.send_record(22, &[24, 0, 0, 1, u8::from(requested)], 0);
        self.tx.update();
    }

    /// Switches to the next sending key (after a KeyUpdate sealed by hand).
    pub fn next_tx_key(&mut self) {
        self.tx.update();
    }

    /// The records of a frame, not sent.
    pub fn seal_frame(&mut self, body: gw_proto::pb::frame::Body) -> Vec<u8> {
        let bytes = gw_proto::encode(&gw_proto::pb::Frame { body: Some(body) });
        let mut out = Vec::new();
        for chunk in bytes.chunks(16 * 1024) {
            out.extend(self.seal_record(23, chunk, 0));
        }
        out
    }

    /// Sends a length-prefixed frame in application-data records (after
    /// our KeyUpdate when the server asked for one).
    pub fn send_frame(&mut self, body: gw_proto::pb::frame::Body) {
        if self.owe_update {
            self.send_key_update(false);
            self.owe_update = false;
        }
        let bytes = gw_proto::encode(&gw_proto::pb::Frame { body: Some(body) });
        for chunk in bytes.chunks(16 * 1024) {
            self.send_record(23, chunk, 0);
        }
    }

    /// Reads one record; KeyUpdates are applied, tickets skipped.
    pub fn read(&mut self) -> std::io::Result<Got> {
        use std::io::Read;
        loop {
            if self.inbuf.len() >= 5 {
                let len = u16::from_be_bytes([self.inbuf[3], self.inbuf[4]]) as usize;
                if self.inbuf.len() >= 5 + len {
                    let rec: Vec<u8> = self.inbuf.drain(..5 + len).collect();
                    assert_eq!(rec[0], 23, "a protected record: {:?}", &rec[..5]);
                    let header: [u8; 5] = rec[..5].try_into().unwrap();
                    let mut body = rec[5..].to_vec();
                    let nonce = self.rx.nonce();
                    let plain = self
                        .rx
                        .key
                        .open_in_place(nonce, ring::aead::Aad::from(header), &mut body)
                        .expect("a server record decrypts with the key we expect")
                        .to_vec();
                    *self.per_server_key.last_mut().unwrap() += 1;
                    let end = plain.iter().rposition(|b| *b != 0).unwrap();
                    let (content, typ) = (&plain[..end], plain[end]);
                    match typ {
                        23 => {
                            self.data.extend_from_slice(content);
                            return Ok(Got::Data(content.to_vec()));
                        }
                        21 => return Ok(Got::Alert(content[1])),
                        22 if content[0] == 4 => continue, // NewSessionTicket
                        22 if content[0] == 24 => {
                            assert_eq!(content.len(), 5, "one KeyUpdate per record");
                            let asked = content[4] == 1;
                            self.rx.update();
                            self.per_server_key.push(0);
                            self.server_updates.push(asked);
                            self.owe_update |= asked;
                            return Ok(Got::KeyUpdate(asked));
                        }
                        t => panic!("unexpected record type {t}: {content:?}"),
                    }
                }
            }
            let mut tmp = [0u8; 32 * 1024];
            let n = self.sock.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.inbuf.extend_from_slice(&tmp[..n]);
        }
    }

    /// The next frame from the server.
    pub fn recv_frame(&mut self) -> gw_proto::pb::frame::Body {
        loop {
            if let Ok(gw_proto::Decoded::Frame(f, used)) = gw_proto::decode(&self.data, 1 << 24) {
                self.data.drain(..used);
                return f.body.expect("body");
            }
            match self.read() {
                Ok(Got::Alert(a)) => panic!("alert {a} while waiting for a frame"),
                Ok(_) => {}
                Err(e) => panic!("no frame: {e}"),
            }
        }
    }

    /// The alert the server answers with, then the end of the stream
    /// (nothing after a fatal alert).
    pub fn expect_alert(&mut self) -> u8 {
        let alert = loop {
            match self.read() {
                Ok(Got::Alert(a)) => break a,
                Ok(_) => {}
                Err(e) => panic!("the connection ended without an alert: {e}"),
            }
        };
        match self.read() {
            Err(_) => alert,
            Ok(more) => panic!("{more:?} after the fatal alert {alert}"),
        }
    }
}
