//! Wire protocol and connection lifecycle against an in-process gateway.

mod common;

use std::time::Duration;

use common::*;
use gw_proto::pb::{self, frame::Body};
use gw_proto::{CloseReason, ErrorCode};

fn auth_error(b: &Body) -> ErrorCode {
    match b {
        Body::AuthError(e) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected AuthError, got {other:?}"),
    }
}

#[test]
fn auth_ok_then_echo_and_ping() {
    let (gw, rec) = start(test_config());
    let (mut c, ok) = Client::login(gw.local_addr, "alice");
    assert_eq!(ok.user_id, "alice");
    assert_eq!(ok.device_id, "dev1");
    assert_eq!(ok.heartbeat_interval_ms, 30_000);
    assert_eq!(ok.idle_timeout_ms, 90_000);
    assert_eq!(ok.node_id, "gw-1");
    let r = c.call(7, "echo", "hello");
    assert_eq!((r.status, &r.payload[..]), (0, &b"hello"[..]));
    c.send(Body::Ping(pb::Ping {
        heartbeat_interval_ms: 1,
    }));
    match c.recv().unwrap() {
        Body::Pong(p) => assert_eq!(
            p.heartbeat_interval_ms, 50,
            "clamped to heartbeat_interval_min_ms"
        ),
        other => panic!("{other:?}"),
    }
    rec.wait_for("online", |e| {
        e.iter()
            .any(|e| matches!(e, Ev::Online { user, .. } if user == "alice"))
    });
    drop(c);
    rec.wait_for("offline", |e| {
        e.iter().any(|e| {
            matches!(
                e,
                Ev::Offline {
                    reason: CloseReason::ClientClosed,
                    ..
                }
            )
        })
    });
    gw.shutdown(false);
}

#[test]
fn bad_tokens_get_typed_auth_errors_and_close() {
    let (gw, _rec) = start(test_config());
    let addr = gw.local_addr;
    let cases: Vec<(String, ErrorCode)> = vec![
        (token("bob", -3600), ErrorCode::TokenExpired),
        // Bad signature: flip a character of the signature.
        (
            {
                let mut t = token("bob", 600);
                let last = t.pop().unwrap();
                t.push(if last == 'A' { 'B' } else { 'A' });
                t
            },
            ErrorCode::TokenInvalid,
        ),
        // alg "none" with an empty signature.
        (
            {
                use base64::Engine;
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let h = e.encode(br#"{"alg":"none","typ":"JWT"}"#);
                let p = e.encode(format!(r#"{{"sub":"bob","exp":{}}}"#, unix_now() + 600));
                format!("{h}.{p}.")
            },
            ErrorCode::AlgorithmRejected,
        ),
        ("not-a-jwt".into(), ErrorCode::TokenInvalid),
    ];
    for (tok, want) in cases {
        let mut c = Client::connect(addr);
        let got = auth_error(&c.auth_with(tok, "d"));
        assert_eq!(got, want);
        let (closed, _) = c.read_to_close();
        assert!(closed, "closed after {want:?}");
    }
    // The gateway still serves others.
    let (mut c, _) = Client::login(addr, "carol");
    assert_eq!(c.call(1, "echo", "x").status, 0);
    gw.shutdown(false);
}

#[test]
fn no_auth_before_deadline_is_closed_with_reason() {
    let cfg = gateway::Config {
        auth_timeout_ms: 200,
        ..test_config()
    };
    let (gw, _rec) = start(cfg);
    let mut c = Client::connect(gw.local_addr);
    let (closed, frames) = c.read_to_close();
    assert!(closed);
    assert!(
        matches!(frames.as_slice(), [b] if auth_error(b) == ErrorCode::AuthRequired),
        "{frames:?}"
    );
    let snaps = gw.snapshots();
    let timeouts: u64 = snaps
        .iter()
        .map(|s| s.closes[CloseReason::AuthTimeout as usize])
        .sum();
    assert_eq!(timeouts, 1);
    gw.shutdown(false);
}

#[test]
fn first_frame_must_be_auth() {
    let (gw, _rec) = start(test_config());
    let mut c = Client::connect(gw.local_addr);
    c.send(Body::Ping(pb::Ping::default()));
    assert_eq!(auth_error(&c.recv().unwrap()), ErrorCode::AuthRequired);
    assert!(c.read_to_close().0);
    gw.shutdown(false);
}

#[test]
fn unsupported_version_is_refused() {
    let (gw, _rec) = start(test_config());
    let mut c = Client::connect(gw.local_addr);
    c.send(Body::Auth(pb::Auth {
        protocol_version: 99,
        token: token("a", 60),
        ..Default::default()
    }));
    assert_eq!(
        auth_error(&c.recv().unwrap()),
        ErrorCode::UnsupportedVersion
    );
    gw.shutdown(false);
}

fn expect_error_close(c: &mut Client, code: ErrorCode) {
    let (closed, frames) = c.read_to_close();
    assert!(closed, "connection closed");
    let codes: Vec<_> = frames
        .iter()
        .filter_map(|b| match b {
            Body::Error(e) => Some(ErrorCode::try_from(e.code).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![code], "frames: {frames:?}");
}

#[test]
fn oversized_length_prefix_closes_with_frame_too_large() {
    let cfg = gateway::Config {
        frame_bytes_max: 1024,
        ..test_config()
    };
    let (gw, _rec) = start(cfg);
    let (mut c, _) = Client::login(gw.local_addr, "a");
    c.send_raw(&(1025u32).to_be_bytes());
    expect_error_close(&mut c, ErrorCode::FrameTooLarge);
    // Before auth too, and with a huge prefix.
    let mut c = Client::connect(gw.local_addr);
    c.send_raw(&[0xff, 0xff, 0xff, 0xff]);
    expect_error_close(&mut c, ErrorCode::FrameTooLarge);
    let snaps = gw.snapshots();
    let n: u64 = snaps
        .iter()
        .map(|s| s.closes[CloseReason::FrameTooLarge as usize])
        .sum();
    assert_eq!(n, 2);
    gw.shutdown(false);
}

#[test]
fn garbage_bytes_close_with_bad_frame_and_others_keep_working() {
    let (gw, _rec) = start(test_config());
    let (mut good, _) = Client::login(gw.local_addr, "good");
    let (mut c, _) = Client::login(gw.local_addr, "a");
    c.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    expect_error_close(&mut c, ErrorCode::BadFrame);
    let mut c = Client::connect(gw.local_addr);
    c.send_raw(&[0, 0, 0, 0]); // a frame with no body
    expect_error_close(&mut c, ErrorCode::BadFrame);
    // HTTP is a WebSocket upgrade attempt: another path gets 404 and a close
    // (`/` would be the demo page: test_config runs in demo mode).
    let mut c = Client::connect(gw.local_addr);
    c.send_raw(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut c.s, &mut reply);
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    // Other bytes that are no frame length: too large.
    let mut c = Client::connect(gw.local_addr);
    c.send_raw(b"POST / HTTP/1.1\r\n\r\n");
    expect_error_close(&mut c, ErrorCode::FrameTooLarge);
    assert_eq!(good.call(1, "echo", "still here").status, 0);
    gw.shutdown(false);
}

#[test]
fn frames_split_across_writes_are_reassembled() {
    let (gw, _rec) = start(test_config());
    let (mut c, _) = Client::login(gw.local_addr, "a");
    let mut stream = Vec::new();
    for i in 0..3u64 {
        let f = gw_proto::Frame {
            body: Some(Body::Upstream(pb::Upstream {
                correlation_id: i,
                route: "echo".into(),
                payload: vec![b'x'; 300].into(),
                ..Default::default()
            })),
        };
        stream.extend_from_slice(&gw_proto::encode(&f));
    }
    for b in &stream {
        c.send_raw(std::slice::from_ref(b));
        std::thread::sleep(Duration::from_micros(50));
    }
    for i in 0..3u64 {
        let r = c.recv_until("reply", |b| match b {
            Body::UpstreamReply(r) => Some(r.clone()),
            _ => None,
        });
        assert_eq!((r.correlation_id, r.payload.len()), (i, 300));
    }
    gw.shutdown(false);
}

#[test]
fn idle_connections_are_reaped_and_pings_keep_them() {
    let (gw, rec) = start(test_config());
    let (mut live, _) = Client::login(gw.local_addr, "live");
    let (mut idle, _) = Client::login(gw.local_addr, "idle");
    for c in [&mut live, &mut idle] {
        c.send(Body::Ping(pb::Ping {
            heartbeat_interval_ms: 50,
        }));
        assert!(matches!(c.recv().unwrap(), Body::Pong(_)));
    }
    // idle: silent past 3 x 50 ms. live: a thread pings every 20 ms throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let mut w = live.s.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let ping = gw_proto::encode(&gw_proto::Frame {
                body: Some(Body::Ping(pb::Ping::default())),
            });
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if w.write_all(&ping).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    rec.wait_for("idle reaped", |e| {
        e.iter().any(|e| matches!(e, Ev::Offline { user, reason: CloseReason::StaleHeartbeat } if user == "idle"))
    });
    assert!(idle.read_to_close().0);
    std::thread::sleep(Duration::from_millis(300)); // two more idle timeouts for "live"
    assert!(!rec
        .events()
        .iter()
        .any(|e| matches!(e, Ev::Offline { user, .. } if user == "live")));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    pinger.join().unwrap();
    assert_eq!(live.call(1, "echo", "x").status, 0);
    gw.shutdown(false);
}

#[test]
fn upstream_errors_are_replies_not_closes() {
    let (gw, _rec) = start(test_config());
    let (mut c, _) = Client::login(gw.local_addr, "a");
    assert_eq!(c.call(1, "nope", "").status, ErrorCode::UnknownRoute as u32);
    assert_eq!(
        c.call(2, "bad route!", "").status,
        ErrorCode::BadRequest as u32
    );
    assert_eq!(
        c.call(3, "chat.send", "{not json").status,
        ErrorCode::BadRequest as u32
    );
    assert_eq!(c.call(4, "echo", "ok").status, 0);
    gw.shutdown(false);
}

#[test]
fn trickling_bytes_of_an_unfinished_frame_do_not_count_as_life() {
    let (gw, rec) = start(test_config());
    let (mut c, _) = Client::login(gw.local_addr, "trickler");
    c.send(Body::Ping(pb::Ping {
        heartbeat_interval_ms: 50,
    }));
    assert!(matches!(c.recv().unwrap(), Body::Pong(_)));
    // A length prefix for a 1,000-byte frame, then one byte every 20 ms for
    // up to 1 s (idle timeout: 150 ms): bytes keep arriving, no frame ends.
    c.send_raw(&1000u32.to_be_bytes());
    let mut reaped_while_trickling = false;
    for _ in 0..50 {
        let offline = rec.events().iter().any(|e| matches!(e, Ev::Offline { .. }));
        if offline || std::io::Write::write_all(&mut c.s, &[0x0a]).is_err() {
            reaped_while_trickling = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reaped_while_trickling,
        "still open after 1 s of trickled bytes"
    );
    rec.wait_for("trickler reaped", |e| {
        e.iter().any(|e| matches!(e, Ev::Offline { user, reason: CloseReason::StaleHeartbeat } if user == "trickler"))
    });
    gw.shutdown(false);
}
