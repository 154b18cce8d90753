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
    // Its handshake was timed: one TLS handshake, two logins.
    assert_eq!(total("gateway_tls_handshake_seconds_count"), 1);
    assert_eq!(total("gateway_connect_auth_seconds_count"), 2);
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

// ---- The record layer after the handshake, driven by a client that
// protects its own records (common::tls::RawTls). ----

use common::tls::RawTls;

/// Alert descriptions (RFC 8446 §6).
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;

fn auth(user: &str) -> Body {
    Body::Auth(pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token: common::token(user, 600),
        device_id: "raw".into(),
        ..Default::default()
    })
}

/// A raw TLS client, logged in.
fn raw_login(gw: &gateway::GatewayHandle, ca: &CertificateDer<'static>, user: &str) -> RawTls {
    let mut r = RawTls::connect(gw.local_addr, ca);
    r.send_frame(auth(user));
    match r.recv_frame() {
        Body::AuthOk(ok) => assert_eq!(ok.user_id, user),
        other => panic!("expected AuthOk, got {other:?}"),
    }
    r
}

fn ping_pong(r: &mut RawTls) {
    r.send_frame(Body::Ping(pb::Ping::default()));
    loop {
        if let Body::Pong(_) = r.recv_frame() {
            return;
        }
    }
}

fn metric(gw: &gateway::GatewayHandle, name: &str) -> u64 {
    let (_, metrics) = http_get(gw.admin_addr.unwrap(), "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Each `bad` input on a fresh logged-in connection gets `alert`, then
/// the end of the stream; every one closes as TLS_FAILED.
/// What a hostile client sends on a logged-in connection.
type Bad = fn(&mut RawTls);

fn expect_alerts(cases: &[(u8, Bad)]) {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let n = cases.len() as u64;
    for (i, (alert, bad)) in cases.iter().enumerate() {
        let mut r = raw_login(&gw, &ca, &format!("mallory{i}"));
        bad(&mut r);
        assert_eq!(r.expect_alert(), *alert, "case {i}");
    }
    common::eventually("TLS_FAILED closes", || {
        common::closes(&gw, "TLS_FAILED") == n
    });
    assert_eq!(metric(&gw, "gateway_tls_failures_total"), n);
    gw.shutdown(false);
}

#[test]
fn an_oversized_record_gets_record_overflow() {
    expect_alerts(&[
        // 2^14 + 1 bytes of content.
        (RECORD_OVERFLOW, |r| {
            r.send_record(23, &vec![0u8; 16 * 1024 + 1], 0)
        }),
        // Little content, padding past 2^14 + 1 bytes of inner plaintext.
        (RECORD_OVERFLOW, |r| r.send_record(23, b"x", 16 * 1024)),
        // A header announcing 2^14 + 257 bytes of ciphertext: refused on
        // the header alone.
        (RECORD_OVERFLOW, |r| {
            r.sock.write_all(&[23, 3, 3, 0x41, 0x01]).unwrap()
        }),
    ]);
}

#[test]
fn the_largest_record_is_accepted() {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let mut r = raw_login(&gw, &ca, "max");
    // An Upstream frame cut into a record of exactly 2^14 bytes of content
    // (and the rest), the first padded up to the limit's last byte.
    let frame = gw_proto::encode(&Frame {
        body: Some(Body::Upstream(pb::Upstream {
            correlation_id: 3,
            route: "echo".into(),
            payload: vec![b'm'; 20_000].into(),
            ..Default::default()
        })),
    });
    r.send_record(23, &frame[..16 * 1024], 0);
    r.send_record(23, &frame[16 * 1024..16 * 1024 + 10], 16 * 1024 - 10);
    r.send_record(23, &frame[16 * 1024 + 10..], 0);
    let reply = loop {
        if let Body::UpstreamReply(rep) = r.recv_frame() {
            break rep;
        }
    };
    assert_eq!(reply.payload.len(), 20_000);
    gw.shutdown(false);
}

#[test]
fn a_corrupted_record_gets_bad_record_mac() {
    expect_alerts(&[
        (BAD_RECORD_MAC, |r| {
            let mut rec = r.seal_record(23, b"\0\0\0\x02\x3a\0", 0);
            rec[7] ^= 0x40;
            r.sock.write_all(&rec).unwrap();
        }),
        // Too short to hold a tag.
        (BAD_RECORD_MAC, |r| {
            r.sock.write_all(&[23, 3, 3, 0, 4, 1, 2, 3, 4]).unwrap()
        }),
    ]);
}

#[test]
fn an_unknown_content_type_gets_unexpected_message() {
    expect_alerts(&[
        (UNEXPECTED_MESSAGE, |r| r.send_record(0x99, b"?", 0)),
        // A protected change_cipher_spec.
        (UNEXPECTED_MESSAGE, |r| r.send_record(20, &[1], 0)),
        // A plaintext handshake record after the handshake.
        (UNEXPECTED_MESSAGE, |r| {
            r.sock.write_all(&[22, 3, 3, 0, 5, 24, 0, 0, 1, 0]).unwrap()
        }),
        // A post-handshake message other than KeyUpdate (a NewSessionTicket).
        (UNEXPECTED_MESSAGE, |r| {
            r.send_record(22, &[4, 0, 0, 1, 0], 0)
        }),
        // Only padding: no content type.
        (UNEXPECTED_MESSAGE, |r| r.send_record(0, &[], 3)),
    ]);
}

#[test]
fn a_malformed_key_update_gets_decode_error_or_illegal_parameter() {
    expect_alerts(&[
        (DECODE_ERROR, |r| r.send_record(22, &[24, 0, 0, 2, 0, 0], 0)),
        (ILLEGAL_PARAMETER, |r| {
            r.send_record(22, &[24, 0, 0, 1, 5], 0)
        }),
        // A KeyUpdate that does not end its record.
        (UNEXPECTED_MESSAGE, |r| {
            r.send_record(22, &[24, 0, 0, 1, 0, 24], 0)
        }),
    ]);
}

#[test]
fn a_client_key_update_keeps_the_connection_working() {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let mut r = raw_login(&gw, &ca, "rekey");
    ping_pong(&mut r);
    // update_not_requested: the client's key changes, the server's stays.
    r.send_key_update(false);
    ping_pong(&mut r);
    ping_pong(&mut r);
    assert!(r.server_updates.is_empty(), "{:?}", r.server_updates);
    // update_requested: the server's KeyUpdate comes (not asking back),
    // and its later records decrypt with the next key.
    r.send_key_update(true);
    ping_pong(&mut r);
    assert_eq!(r.server_updates, vec![false]);
    for _ in 0..3 {
        ping_pong(&mut r);
    }
    // Twice more in one write, the second split over two records, then a
    // Ping: both requests share one answer.
    let mut wire = r.seal_record(22, &[24, 0, 0, 1, 1], 0);
    r.next_tx_key();
    wire.extend(r.seal_record(22, &[24, 0], 0));
    wire.extend(r.seal_record(22, &[0, 1, 1], 0));
    r.next_tx_key();
    wire.extend(r.seal_frame(Body::Ping(pb::Ping::default())));
    r.sock.write_all(&wire).unwrap();
    while !matches!(r.recv_frame(), Body::Pong(_)) {}
    assert_eq!(r.server_updates, vec![false, false]);
    ping_pong(&mut r);
    assert_eq!(metric(&gw, "gateway_tls_key_updates_received_total"), 4);
    assert_eq!(metric(&gw, "gateway_tls_key_updates_sent_total"), 2);
    assert_eq!(common::closes(&gw, "TLS_FAILED"), 0);
    gw.shutdown(false);
}

#[test]
fn rustls_as_the_client_updates_keys_with_the_gateway() {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let mut c = TlsClient::connect(
        gw.local_addr,
        common::tls::tls_client_config(&ca, &[&rustls::version::TLS13]),
    );
    c.login("rustls");
    for _ in 0..3 {
        // rustls sends KeyUpdate(update_requested) with its next record.
        c.s.conn.refresh_traffic_keys().unwrap();
        for _ in 0..3 {
            c.send(Body::Ping(pb::Ping::default())).unwrap();
            while !matches!(c.recv().unwrap(), Body::Pong(_)) {}
        }
    }
    assert_eq!(metric(&gw, "gateway_tls_key_updates_received_total"), 3);
    assert_eq!(metric(&gw, "gateway_tls_key_updates_sent_total"), 3);
    gw.shutdown(false);
}

#[test]
fn the_server_updates_its_key_before_the_record_limit() {
    let (mut cfg, ca) = tls_config();
    cfg.tls.records_per_key = Some(8);
    let (gw, _) = common::start(cfg);
    // The raw client sees every record: no server key protects more than
    // 8, and after 8 of its own the server asks for the client's update.
    let mut r = raw_login(&gw, &ca, "counted");
    for _ in 0..30 {
        ping_pong(&mut r);
    }
    let per_key = r.per_server_key.clone();
    assert!(per_key.len() >= 4, "{per_key:?}");
    assert!(per_key.iter().all(|&n| n <= 8), "{per_key:?}");
    assert!(
        r.server_updates.iter().any(|&asked| asked),
        "the server asks for the client's KeyUpdate: {:?}",
        r.server_updates
    );
    // rustls as the client: both sides rekey many times, unnoticed.
    let mut c = TlsClient::connect(
        gw.local_addr,
        common::tls::tls_client_config(&ca, &[&rustls::version::TLS13]),
    );
    c.login("rustls");
    let before = metric(&gw, "gateway_tls_key_updates_sent_total");
    for _ in 0..40 {
        c.send(Body::Ping(pb::Ping::default())).unwrap();
        while !matches!(c.recv().unwrap(), Body::Pong(_)) {}
    }
    assert!(metric(&gw, "gateway_tls_key_updates_sent_total") >= before + 5);
    assert!(metric(&gw, "gateway_tls_key_updates_received_total") >= 4);
    assert_eq!(common::closes(&gw, "TLS_FAILED"), 0);
    gw.shutdown(false);
}

#[test]
fn the_client_close_notify_is_answered_with_close_notify() {
    let (cfg, ca) = tls_config();
    let (gw, _) = common::start(cfg);
    let mut r = raw_login(&gw, &ca, "bye");
    r.send_record(21, &[1, 0], 0);
    assert_eq!(r.expect_alert(), 0, "close_notify back, then the end");
    common::eventually("a CLIENT_CLOSED close", || {
        common::closes(&gw, "CLIENT_CLOSED") == 1
    });
    gw.shutdown(false);
}

/// A plain WebSocket upgrade on a raw socket; returns it after the 101.
fn ws_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

#[test]
fn a_websocket_that_sends_a_tls_byte_later_stays_a_websocket() {
    let (cfg, _) = tls_config();
    let (gw, _) = common::start(cfg);
    // Upgraded, then a TLS handshake record header: a WebSocket frame with
    // reserved bits set, so a protocol violation, not a TLS handshake.
    let mut s = ws_upgrade(gw.local_addr);
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let code = 4000 + pb::CloseReason::ProtocolViolation as u16;
    assert_eq!(got.first(), Some(&0x88), "a close frame: {got:?}");
    assert_eq!(got[2..4], code.to_be_bytes());
    // Still in its upgrade request: the 0x16 is part of the request.
    let mut s = TcpStream::connect(gw.local_addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50)); // a second read
    s.write_all(b"\x16\x03\x01\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    common::eventually("two PROTOCOL_VIOLATION closes", || {
        common::closes(&gw, "PROTOCOL_VIOLATION") == 2
    });
    assert_eq!(metric(&gw, "gateway_tls_handshakes_total"), 0);
    gw.shutdown(false);
}

/// TLS 1.2 stays in rustls, which has no KeyUpdate there: a KeyUpdate
/// message in a TLS 1.2 record is rustls's to refuse, with its alert.
#[test]
fn a_key_update_in_tls12_is_refused_by_rustls() {
    let (mut cfg, ca) = tls_config();
    cfg.tls.tls12 = true;
    let (gw, _) = common::start(cfg);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut ccfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ccfg.enable_secret_extraction = true;
    let s = common::tls::tls_connect(gw.local_addr, Arc::new(ccfg));
    let rustls::StreamOwned { conn, mut sock } = s;
    let x = conn.dangerous_extract_secrets().unwrap();
    let (seq, keys) = x.tx;
    let (key, iv, alg) = match keys {
        rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            (key, iv, &ring::aead::AES_128_GCM)
        }
        rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            (key, iv, &ring::aead::AES_256_GCM)
        }
        other => panic!(
            "a GCM suite expected, got {:?}",
            std::mem::discriminant(&other)
        ),
    };
    // TLS 1.2 GCM (RFC 5288): nonce = IV xor sequence number, its last 8
    // bytes sent explicitly; AAD = seq, type, version, plaintext length.
    let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, key.as_ref()).unwrap());
    let mut nonce: [u8; 12] = iv.as_ref().try_into().unwrap();
    for (b, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    let plain = [24u8, 0, 0, 1, 0]; // KeyUpdate(update_not_requested)
    let mut aad = seq.to_be_bytes().to_vec();
    aad.extend_from_slice(&[22, 3, 3, 0, plain.len() as u8]);
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(&aad[..]),
        &mut body,
    )
    .unwrap();
    let len = 8 + body.len();
    let mut rec = vec![22, 3, 3, (len >> 8) as u8, len as u8];
    rec.extend_from_slice(&nonce[4..]);
    rec.extend(body);
    sock.write_all(&rec).unwrap();
    // rustls answers with a (protected) alert record, then the end.
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    assert_eq!(got.first(), Some(&21), "an alert record: {got:?}");
    common::eventually("a TLS_FAILED close", || {
        common::closes(&gw, "TLS_FAILED") == 1
    });
    gw.shutdown(false);
}

/// An HTTP answer larger than one TLS record (the demo's client library,
/// ~21 KB), then the close: every record and the close_notify arrive, in
/// that order (the io_uring driver once sent only what was sealed first).
#[test]
fn an_answer_of_several_records_arrives_whole_before_the_close() {
    let (cfg, ca) = common::tls::tls_config();
    assert!(cfg.demo);
    let (gw, _) = common::start(cfg);
    let client = common::tls::tls_client_config(&ca, &[&rustls::version::TLS13]);
    for _ in 0..5 {
        let mut s = common::tls::tls_connect(gw.local_addr, client.clone());
        s.write_all(b"GET /gateway-client.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        // A clean end (close_notify) reads as Ok(0); a cut stream as an error.
        s.read_to_end(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(len > 16 * 1024, "{len}");
        assert_eq!(body.len(), len);
    }
    gw.shutdown(false);
}
