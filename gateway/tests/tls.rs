//! TLS on the client port: the same frames over rustls, detected by the
//! first byte, next to plain TCP; bad and stalled handshakes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::{http_get, test_config, Client, WAIT};
use gateway::Config;
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::Decoded;
use rustls::pki_types::{CertificateDer, ServerName};

/// A certificate for localhost in a temp dir; returns (config, CA cert).
fn tls_config() -> (Config, CertificateDer<'static>) {
    // RUST_LOG=debug shows the gateway's log in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    common::tls::tls_config()
}

struct TlsClient {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsClient {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let conn =
            rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
        TlsClient {
            s: rustls::StreamOwned::new(conn, sock),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, body: Body) -> std::io::Result<()> {
        self.s
            .write_all(&gw_proto::encode(&Frame { body: Some(body) }))?;
        self.s.flush()
    }

    fn recv(&mut self) -> std::io::Result<Body> {
        loop {
            if let Ok(Decoded::Frame(f, used)) = gw_proto::decode(&self.buf, 1 << 24) {
                self.buf.drain(..used);
                return Ok(f.body.expect("body"));
            }
            let mut tmp = [0u8; 16384];
            let n = self.s.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    fn login(&mut self, user: &str) -> pb::AuthOk {
        self.send(Body::Auth(pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: common::token(user, 600),
            device_id: "tls".into(),
            ..Default::default()
        }))
        .unwrap();
        match self.recv().unwrap() {
            Body::AuthOk(ok) => ok,
            other => panic!("expected AuthOk, got {other:?}"),
        }
    }
}

#[test]
fn tls_and_plain_tcp_share_the_port() {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let tls13 = common::tls::tls_client_config(&ca, &[&rustls::version::TLS13]);
    let mut alice = TlsClient::connect(gw.local_addr, tls13);
    let ok = alice.login("alice");
    assert_eq!(ok.user_id, "alice");
    alice.send(Body::Ping(pb::Ping::default())).unwrap();
    assert!(matches!(alice.recv().unwrap(), Body::Pong(_)));
    // A plain client on the same port, and a push from it to alice.
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    assert_eq!(
        bob.call(1, "chat.send", r#"{"to":"alice","text":"over tls"}"#)
            .status,
        0
    );
    let p = loop {
        if let Body::Push(p) = alice.recv().unwrap() {
            break p;
        }
    };
    assert_eq!(p.route, "chat.msg");
    alice.send(Body::Ack(pb::Ack { seq: p.seq })).unwrap();
    // Echo of a payload larger than one TLS record (16 KiB).
    let big = "x".repeat(40_000);
    alice
        .send(Body::Upstream(pb::Upstream {
            correlation_id: 9,
            route: "echo".into(),
            payload: big.clone().into_bytes().into(),
            ..Default::default()
        }))
        .unwrap();
    let r = loop {
        if let Body::UpstreamReply(r) = alice.recv().unwrap() {
            break r;
        }
    };
    assert_eq!(r.payload.len(), big.len());
    let (_, metrics) = http_get(gw.admin_addr.unwrap(), "/metrics");
    let total = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(total("gateway_tls_handshakes_total"), 1);
    // TLS 1.3: the keys moved to the gateway's record layer after the handshake.
    assert_eq!(total("gateway_tls_handovers_total"), 1);
    // The client's close_notify is a clean close.
    alice.s.conn.send_close_notify();
    alice.s.flush().unwrap();
    common::eventually("a CLIENT_CLOSED close", || {
        common::closes(&gw, "CLIENT_CLOSED") == 1
    });
    assert_eq!(bob.call(2, "echo", "still").status, 0);
    gw.shutdown(false);
}

#[test]
fn tls12_is_refused_unless_configured() {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let tls12 = common::tls::tls_client_config(&ca, &[&rustls::version::TLS12]);
    let mut c = TlsClient::connect(gw.local_addr, tls12);
    assert!(c.send(Body::Ping(pb::Ping::default())).is_err() || c.recv().is_err());
    common::eventually("a TLS_FAILED close", || {
        common::closes(&gw, "TLS_FAILED") == 1
    });
    gw.shutdown(false);

    let (mut cfg, ca) = tls_config();
    cfg.tls.tls12 = true;
    let (gw, _) = common::start(cfg);
    let mut c = TlsClient::connect(
        gw.local_addr,
        common::tls::tls_client_config(&ca, &[&rustls::version::TLS12]),
    );
    assert_eq!(c.login("old").user_id, "old");
    // A record over rustls' 4 KiB read size arrives whole.
    c.send(Body::Upstream(pb::Upstream {
        correlation_id: 1,
        route: "echo".into(),
        payload: vec![b'z'; 10_000].into(),
        ..Default::default()
    }))
    .unwrap();
    let r = loop {
        if let Body::UpstreamReply(r) = c.recv().unwrap() {
            break r;
        }
    };
    assert_eq!(r.payload.len(), 10_000);
    // The last frame before a close comes before close_notify.
    let (mut admin, _) = Client::login(gw.local_addr, "admin");
    assert_eq!(admin.call(2, "test.kick", "old").status, 0);
    let g = loop {
        match c.recv() {
            Ok(Body::GoAway(g)) => break g,
            Ok(_) => continue,
            Err(e) => panic!("no GoAway before the close: {e}"),
        }
    };
    assert_eq!(g.reason, pb::CloseReason::Kicked as i32);
    gw.shutdown(false);
}

#[test]
fn garbage_after_a_tls_byte_closes_that_connection_only() {
    let (cfg, _) = tls_config();
    let (gw, _) = common::start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let mut bad = Client::connect(gw.local_addr);
    // A handshake record header, then nonsense.
    bad.send_raw(&[0x16, 0x03, 0x01, 0x00, 0x20]);
    bad.send_raw(&[0xAB; 32]);
    let (closed, _) = bad.read_to_close();
    assert!(closed);
    common::eventually("a TLS_FAILED close", || {
        common::closes(&gw, "TLS_FAILED") == 1
    });
    assert_eq!(bob.call(1, "echo", "fine").status, 0);
    gw.shutdown(false);
}

#[test]
fn a_stalled_handshake_is_reaped_at_the_auth_deadline() {
    let (mut cfg, _) = tls_config();
    cfg.auth_timeout_ms = 300;
    let (gw, _) = common::start(cfg);
    let mut slow = Client::connect(gw.local_addr);
    slow.send_raw(&[0x16, 0x03, 0x01]); // three bytes of a ClientHello, then nothing
    let t = std::time::Instant::now();
    let (closed, _) = slow.read_to_close();
    assert!(closed);
    assert!(t.elapsed() < Duration::from_secs(5));
    common::eventually("an AUTH_TIMEOUT close", || {
        common::closes(&gw, "AUTH_TIMEOUT") == 1
    });
    gw.shutdown(false);
}

#[test]
fn without_tls_configured_a_tls_hello_is_a_bad_frame() {
    let (gw, _) = common::start(test_config());
    let mut c = Client::connect(gw.local_addr);
    c.send_raw(&[0x16, 0x03, 0x01, 0x00, 0x20]);
    let (closed, _) = c.read_to_close();
    assert!(closed);
    common::eventually("a FRAME_TOO_LARGE close", || {
        common::closes(&gw, "FRAME_TOO_LARGE") == 1
    });
    gw.shutdown(false);
}

#[test]
fn a_corrupt_record_after_the_handshake_closes_with_tls_failed() {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let mut alice = TlsClient::connect(
        gw.local_addr,
        common::tls::tls_client_config(&ca, &[&rustls::version::TLS13]),
    );
    alice.login("alice");
    // An application-data record that does not decrypt, straight on the socket.
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    forged.extend_from_slice(&[0x5A; 0x20]);
    alice.s.sock.write_all(&forged).unwrap();
    assert!(alice.recv().is_err(), "the connection must close");
    common::eventually("a TLS_FAILED close", || {
        common::closes(&gw, "TLS_FAILED") == 1
    });
    gw.shutdown(false);
}

#[test]
fn a_certificate_reload_serves_new_connections_and_keeps_open_ones() {
    let (cfg, ca_old) = tls_config();
    let (cert_path, key_path) = (cfg.tls.cert_file.clone(), cfg.tls.key_file.clone());
    let (gw, _) = common::start(cfg);
    let old13 = common::tls::tls_client_config(&ca_old, &[&rustls::version::TLS13]);
    let mut before = TlsClient::connect(gw.local_addr, old13.clone());
    before.login("before");
    // New certificate and key in the same files, then reload.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
    gw.reload_tls().unwrap();
    let new13 = common::tls::tls_client_config(&ck.cert.der().clone(), &[&rustls::version::TLS13]);
    let mut after = TlsClient::connect(gw.local_addr, new13);
    assert_eq!(after.login("after").user_id, "after");
    // A client that trusts only the old certificate no longer gets in.
    let mut stale = TlsClient::connect(gw.local_addr, old13);
    assert!(stale.send(Body::Ping(pb::Ping::default())).is_err() || stale.recv().is_err());
    // The connection from before the reload still works.
    before.send(Body::Ping(pb::Ping::default())).unwrap();
    assert!(matches!(before.recv().unwrap(), Body::Pong(_)));
    // A reload that cannot read its files keeps the current certificate.
    std::fs::write(&key_path, "not a key").unwrap();
    assert!(gw.reload_tls().is_err());
    let mut again = TlsClient::connect(
        gw.local_addr,
        common::tls::tls_client_config(&ck.cert.der().clone(), &[&rustls::version::TLS13]),
    );
    assert_eq!(again.login("again").user_id, "again");
    let (status, _) = common::http_request(gw.admin_addr.unwrap(), "POST", "/tls/reload");
    assert_eq!(status, 500);
    gw.shutdown(false);
}

#[test]
fn tickets_resume_sessions_across_nodes_sharing_a_ticket_key() {
    let (mut cfg_a, ca) = tls_config();
    let key = std::path::Path::new(&cfg_a.tls.cert_file).with_file_name("ticket.key");
    std::fs::write(&key, [42u8; 32]).unwrap();
    cfg_a.tls.ticket_key_file = key.display().to_string();
    let mut cfg_b = cfg_a.clone();
    cfg_b.node_id = "gw-b".into();
    let (a, _) = common::start(cfg_a);
    let (b, _) = common::start(cfg_b);
    // One client config = one session cache, as in a real app.
    let client = common::tls::tls_client_config(&ca, &[&rustls::version::TLS13]);
    let kind = |c: &TlsClient| c.s.conn.handshake_kind();
    let mut first = TlsClient::connect(a.local_addr, client.clone());
    first.login("u1"); // reading AuthOk also reads the ticket
    assert_eq!(kind(&first), Some(rustls::HandshakeKind::Full));
    let mut second = TlsClient::connect(a.local_addr, client.clone());
    assert_eq!(second.login("u2").user_id, "u2");
    assert_eq!(kind(&second), Some(rustls::HandshakeKind::Resumed));
    // Node B has the same ticket key: a ticket from A resumes there too.
    let mut third = TlsClient::connect(b.local_addr, client.clone());
    assert_eq!(third.login("u3").user_id, "u3");
    assert_eq!(kind(&third), Some(rustls::HandshakeKind::Resumed));
    a.shutdown(false);
    b.shutdown(false);
}

#[test]
fn websocket_over_tls() {
    use prost::Message as _;
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let tls = TlsClient::connect(
        gw.local_addr,
        common::tls::tls_client_config(&ca, &[&rustls::version::TLS13]),
    );
    let req =
        tungstenite::client::IntoClientRequest::into_client_request("wss://localhost/ws").unwrap();
    let (mut ws, resp) = tungstenite::client(req, tls.s).unwrap_or_else(|e| panic!("upgrade: {e}"));
    assert_eq!(resp.status(), 101);
    let auth = Frame {
        body: Some(Body::Auth(pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: common::token("wss-user", 600),
            ..Default::default()
        })),
    };
    ws.send(tungstenite::Message::Binary(auth.encode_to_vec().into()))
        .unwrap();
    let reply = loop {
        if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
            break Frame::decode(&b[..]).unwrap();
        }
    };
    assert!(
        matches!(reply.body, Some(Body::AuthOk(ref ok)) if ok.user_id == "wss-user"),
        "{reply:?}"
    );
    gw.shutdown(false);
}
