//! WebSocket on the client port: one binary message per frame, next to
//! plain TCP; bad handshakes, text, unmasked and oversized frames.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{http_get, test_config, Client, WAIT};
use gw_proto::pb::{self, frame::Body, Frame};
use prost::Message as _;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect(addr: SocketAddr, origin: Option<&str>) -> Result<Ws, Box<tungstenite::Error>> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/ws"))
            .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    tungstenite::client(req, s)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => Box::new(e),
            tungstenite::HandshakeError::Interrupted(_) => panic!("blocking socket"),
        })
}

fn send(ws: &mut Ws, body: Body) {
    let bytes = Frame { body: Some(body) }.encode_to_vec();
    ws.send(Message::Binary(bytes.into())).unwrap();
}

fn recv(ws: &mut Ws) -> Body {
    loop {
        match ws.read().unwrap() {
            Message::Binary(b) => return Frame::decode(&b[..]).unwrap().body.unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn login(ws: &mut Ws, user: &str) -> pb::AuthOk {
    send(
        ws,
        Body::Auth(pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: common::token(user, 600),
            device_id: "browser".into(),
            ..Default::default()
        }),
    );
    match recv(ws) {
        Body::AuthOk(ok) => ok,
        other => panic!("expected AuthOk, got {other:?}"),
    }
}

/// The close code the server sent, after reading to the close.
fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
            Ok(Message::Close(None)) => return None,
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[test]
fn websocket_and_plain_tcp_share_the_port() {
    let (gw, _) = common::start(test_config());
    let mut alice = connect(gw.local_addr, None).unwrap();
    assert_eq!(login(&mut alice, "alice").user_id, "alice");
    // WebSocket-level ping counts as life and is answered.
    alice.send(Message::Ping(b"hi".to_vec().into())).unwrap();
    send(&mut alice, Body::Ping(pb::Ping::default()));
    assert!(matches!(recv(&mut alice), Body::Pong(_)));
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    assert_eq!(
        bob.call(1, "chat.send", r#"{"to":"alice","text":"to the browser"}"#)
            .status,
        0
    );
    let p = loop {
        if let Body::Push(p) = recv(&mut alice) {
            break p;
        }
    };
    assert_eq!(p.route, "chat.msg");
    send(&mut alice, Body::Ack(pb::Ack { seq: p.seq }));
    // A large message (over 64 KiB of WebSocket payload needs the 64-bit length).
    let big = "y".repeat(60_000);
    send(
        &mut alice,
        Body::Upstream(pb::Upstream {
            correlation_id: 5,
            route: "echo".into(),
            payload: big.clone().into_bytes().into(),
            ..Default::default()
        }),
    );
    let r = loop {
        if let Body::UpstreamReply(r) = recv(&mut alice) {
            break r;
        }
    };
    assert_eq!(r.payload.len(), big.len());
    // A kick arrives as GoAway, then a close frame with code 4000 + KICKED.
    let mut admin = Client::login(gw.local_addr, "admin").0;
    assert_eq!(admin.call(2, "test.kick", "alice").status, 0);
    assert!(matches!(recv(&mut alice), Body::GoAway(_)));
    assert_eq!(
        close_code(&mut alice),
        Some(4000 + pb::CloseReason::Kicked as u16)
    );
    gw.shutdown(false);
}

#[test]
fn a_client_close_is_echoed_and_counted_as_client_closed() {
    let (gw, _) = common::start(test_config());
    let mut ws = connect(gw.local_addr, None).unwrap();
    login(&mut ws, "carol");
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    common::eventually("a CLIENT_CLOSED close", || {
        common::closes(&gw, "CLIENT_CLOSED") == 1
    });
    gw.shutdown(false);
}

#[test]
fn text_unmasked_and_oversized_frames_close_with_typed_codes() {
    let mut cfg = test_config();
    cfg.frame_bytes_max = 1024;
    cfg.outbound_bytes_max = 64 * 1024;
    let (gw, _) = common::start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    // Text instead of binary.
    let mut ws = connect(gw.local_addr, None).unwrap();
    ws.send(Message::Text("hello".into())).unwrap();
    assert_eq!(
        close_code(&mut ws),
        Some(4000 + pb::CloseReason::ProtocolViolation as u16)
    );
    // Larger than frame_bytes_max.
    let mut ws = connect(gw.local_addr, None).unwrap();
    ws.send(Message::Binary(vec![0u8; 2048].into())).unwrap();
    assert_eq!(
        close_code(&mut ws),
        Some(4000 + pb::CloseReason::FrameTooLarge as u16)
    );
    // An unmasked frame, by hand after a real handshake.
    let mut raw = raw_upgrade(gw.local_addr, "/ws", None);
    raw.write_all(&[0x82, 0x02, 0x08, 0x00]).unwrap();
    assert!(read_all(&mut raw)
        .windows(2)
        .any(|w| w == (4000 + pb::CloseReason::ProtocolViolation as u16).to_be_bytes()));
    assert_eq!(bob.call(1, "echo", "fine").status, 0);
    let (_, metrics) = http_get(gw.admin_addr.unwrap(), "/metrics");
    assert!(metrics.contains("gateway_ws_rejected_total"));
    gw.shutdown(false);
}

/// A hand-made upgrade request; returns the socket after the 101 response.
fn raw_upgrade(addr: SocketAddr, path: &str, origin: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    if path == "/ws" && origin.is_empty() {
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{text}"
        );
    }
    s
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn bad_handshakes_get_http_errors() {
    let mut cfg = test_config();
    cfg.ws.allowed_origins = vec!["https://app.example".into()];
    cfg.ws.handshake_bytes_max = 512;
    let (gw, _) = common::start(cfg);
    // Wrong path.
    let mut s = raw_upgrade(gw.local_addr, "/other", None);
    assert!(
        String::from_utf8_lossy(&read_all(&mut s)).is_empty(),
        "the 404 was read by raw_upgrade"
    );
    // Origin not allowed, and allowed.
    assert!(connect(gw.local_addr, Some("https://evil.example")).is_err());
    let mut ok = connect(gw.local_addr, Some("https://app.example")).unwrap();
    login(&mut ok, "dora");
    // A handshake that never ends within handshake_bytes_max.
    let mut s = TcpStream::connect(gw.local_addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\n").unwrap();
    s.write_all(&[b'a'; 600]).unwrap();
    let reply = String::from_utf8_lossy(&read_all(&mut s)).to_string();
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    common::eventually("three refused", || {
        let (_, m) = http_get(gw.admin_addr.unwrap(), "/metrics");
        m.lines()
            .filter(|l| l.starts_with("gateway_ws_rejected_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
            == 3
    });
    gw.shutdown(false);
}

/// One masked binary message.
fn masked(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80 | op];
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(&[1, 2, 3, 4]);
    v.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    v
}

#[test]
fn messages_after_a_violation_in_the_same_read_are_not_handled() {
    let (gw, rec) = common::start(test_config());
    let mut s = raw_upgrade(gw.local_addr, "/ws", None);
    // A Ping before Auth (a violation), then an Auth, in one write.
    let ping = Frame {
        body: Some(Body::Ping(pb::Ping::default())),
    }
    .encode_to_vec();
    let auth = Frame {
        body: Some(Body::Auth(pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: common::token("mallory", 600),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    let mut both = masked(2, &ping);
    both.extend(masked(2, &auth));
    s.write_all(&both).unwrap();
    read_all(&mut s);
    // A session afterwards proves the core has handled everything before it.
    let _marker = Client::login(gw.local_addr, "marker");
    rec.wait_for("the marker online", |e| {
        e.iter()
            .any(|e| matches!(e, common::Ev::Online { user, .. } if user == "marker"))
    });
    assert!(
        !rec.events()
            .iter()
            .any(|e| matches!(e, common::Ev::Online { user, .. } if user == "mallory")),
        "a session was bound on a connection closed for a violation"
    );
    gw.shutdown(false);
}

/// The next binary message from the gateway (unmasked), as a frame body.
fn read_message(s: &mut TcpStream) -> Body {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l) as usize
            }
            l => l as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        match h[0] & 0x0f {
            2 => return Frame::decode(&payload[..]).unwrap().body.unwrap(),
            8 => panic!("closed: {payload:?}"),
            _ => continue,
        }
    }
}

#[test]
fn a_message_over_the_preauth_limit_right_after_auth_in_one_read_is_handled() {
    let cfg = test_config();
    let big = "x".repeat(cfg.auth_frame_bytes_max as usize + 2000);
    assert!(big.len() + 64 < cfg.frame_bytes_max as usize);
    let (gw, _) = common::start(cfg);
    let frame = |body| Frame { body: Some(body) }.encode_to_vec();
    let auth = frame(Body::Auth(pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token: common::token("pia", 600),
        ..Default::default()
    }));
    let up = frame(Body::Upstream(pb::Upstream {
        correlation_id: 7,
        route: "echo".into(),
        payload: big.clone().into_bytes().into(),
        ..Default::default()
    }));
    // Auth and the large message in one write (one read on the gateway).
    let mut s = raw_upgrade(gw.local_addr, "/ws", None);
    let mut both = masked(2, &auth);
    both.extend(masked(2, &up));
    s.write_all(&both).unwrap();
    assert!(matches!(read_message(&mut s), Body::AuthOk(_)));
    match read_message(&mut s) {
        Body::UpstreamReply(r) => {
            assert_eq!((r.correlation_id, r.status), (7, 0));
            assert_eq!(r.payload.len(), big.len());
        }
        other => panic!("expected the echo, got {other:?}"),
    }
    // After an Auth that is refused, the same message is not handled: the
    // connection closes (AuthError and a close frame, no echo).
    let mut s = raw_upgrade(gw.local_addr, "/ws", None);
    let mut bad = masked(2, &frame(Body::Auth(pb::Auth::default())));
    bad.extend(masked(2, &up));
    s.write_all(&bad).unwrap();
    let rest = read_all(&mut s);
    assert!(
        !rest.is_empty() && rest.len() < 1000,
        "{} bytes",
        rest.len()
    );
    assert!(rest.windows(2).any(|w| w[0] == 0x88), "a close frame");
    gw.shutdown(false);
}

#[test]
fn a_ping_flood_from_a_client_that_does_not_read_ends_as_a_slow_consumer() {
    let mut cfg = test_config();
    cfg.outbound_bytes_max = 64 * 1024;
    cfg.frame_bytes_max = 1024;
    // The flood may take longer than the test's 2 s auth deadline to fill
    // the kernel's buffers (they autotune up to tcp_wmem's maximum): only
    // the slow-consumer check may end this connection.
    cfg.auth_timeout_ms = 60_000;
    let (gw, _) = common::start(cfg);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.local_addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut s = s;
    write!(s, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    // Pings, never reading the pongs: 6 bytes each, 36 KB per write.
    let chunk: Vec<u8> = (0..6000).flat_map(|_| masked(9, b"")).collect();
    // Until the gateway gives up on us. A write that times out (the gateway
    // reads slower than we write, on a busy machine) goes on where it
    // stopped, so the ping frames stay whole.
    let t = std::time::Instant::now();
    let mut pos = 0;
    while common::closes(&gw, "SLOW_CONSUMER") == 0 && t.elapsed() < WAIT * 3 {
        match s.write(&chunk[pos..]) {
            Ok(n) => pos = (pos + n) % chunk.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break, // closed by the gateway
        }
    }
    common::eventually("a SLOW_CONSUMER close", || {
        common::closes(&gw, "SLOW_CONSUMER") == 1
    });
    gw.shutdown(false);
}

#[test]
fn fragments_are_reassembled_and_stray_continuations_refused() {
    let (gw, _) = common::start(test_config());
    let auth = Frame {
        body: Some(Body::Auth(pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: common::token("frag", 600),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    // Auth in three fragments, a ping (control) in the middle.
    let mut s = raw_upgrade(gw.local_addr, "/ws", None);
    let (a, rest) = auth.split_at(10);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut wire = masked(0x02 & 0x0f, a);
    wire[0] &= 0x7f; // FIN off: first fragment
    let mut mid = masked(0x00, b);
    mid[0] &= 0x7f;
    wire.extend(mid);
    wire.extend(masked(0x09, b"p"));
    wire.extend(masked(0x00, c)); // FIN on: the end
    s.write_all(&wire).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap(); // the pong, then the AuthOk message
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"frag") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before AuthOk");
        got.extend_from_slice(&buf[..n]);
    }
    // A continuation with no message started.
    let mut s = raw_upgrade(gw.local_addr, "/ws", None);
    s.write_all(&masked(0x00, b"x")).unwrap();
    let code = (4000 + pb::CloseReason::ProtocolViolation as u16).to_be_bytes();
    assert!(read_all(&mut s).windows(2).any(|w| w == code));
    gw.shutdown(false);
}

/// Demo mode serves the demo page, the client library and demo tokens on
/// the client port; the token logs in. Without demo mode those paths are
/// ordinary wrong WebSocket paths (404).
#[test]
fn demo_page_and_token_endpoint_only_in_demo_mode() {
    let (gw, _) = common::start(test_config());
    let (status, page) = http_get(gw.local_addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("gateway-client.js"), "{page}");
    let (status, js) = http_get(gw.local_addr, "/gateway-client.js");
    assert_eq!(status, 200);
    assert!(js.contains("export class GatewayClient"));
    let (status, body) = http_get(gw.local_addr, "/demo/token?user=erin&device=web1");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut c = Client::connect(gw.local_addr);
    match c.auth_with(v["token"].as_str().unwrap().to_string(), "") {
        Body::AuthOk(ok) => assert_eq!(
            (ok.user_id.as_str(), ok.device_id.as_str()),
            ("erin", "web1")
        ),
        other => panic!("{other:?}"),
    }
    let (status, _) = http_get(gw.local_addr, "/demo/token?user=bad%20name");
    assert_eq!(status, 400);
    assert_eq!(common::closes(&gw, "HTTP_ANSWERED"), 4);
    gw.shutdown(false);

    // Without --demo: an HS256 key from the environment (PATH is long
    // enough to be a secret and always set), and no demo paths.
    let mut cfg = test_config();
    cfg.demo = false;
    cfg.auth.keys = vec![gateway::auth::KeySpec {
        secret_file: None,
        kid: None,
        alg: gateway::auth::Alg::HS256,
        secret_env: Some("PATH".into()),
        public_key_file: None,
    }];
    let (gw, _) = common::start(cfg);
    for path in ["/", "/gateway-client.js", "/demo/token?user=erin"] {
        assert_eq!(http_get(gw.local_addr, path).0, 404, "{path}");
    }
    assert_eq!(common::closes(&gw, "HTTP_ANSWERED"), 0);
    gw.shutdown(false);
}
