//! What a client that never authenticates can cost: frames before Auth are
//! held to `auth_frame_bytes_max`, and a core's buffers for unauthenticated
//! connections to `preauth_bytes_per_core_max` (the oldest are closed,
//! PREAUTH_LIMIT); clients that authenticate are served throughout. And the
//! admin port under slow clients: `/healthz` keeps answering.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use gw_proto::pb::frame::Body;
use gw_proto::{CloseReason, ErrorCode};

#[test]
fn a_frame_over_the_preauth_limit_is_refused_before_auth_and_allowed_after() {
    let (gw, _) = start(test_config());
    let mut c = Client::connect(gw.local_addr);
    // A length prefix of 10,000 bytes, over the default 8 KiB before Auth.
    c.send_raw(&10_000u32.to_be_bytes());
    let (closed, frames) = c.read_to_close();
    assert!(closed);
    assert!(
        frames
            .iter()
            .any(|b| matches!(b, Body::Error(e) if e.code == ErrorCode::FrameTooLarge as i32)),
        "{frames:?}"
    );
    // After Auth the full frame_bytes_max (64 KiB) applies.
    let (mut c, _) = Client::login(gw.local_addr, "big");
    let big = "x".repeat(20_000);
    let r = c.call(1, "echo", &big);
    assert_eq!((r.status, r.payload.len()), (0, 20_000));
    assert_eq!(closes(&gw, "FRAME_TOO_LARGE"), 1);
    gw.shutdown(false);
}

#[test]
fn the_preauth_budget_closes_the_oldest_unauthenticated_connections() {
    let cfg = gateway::Config {
        preauth_bytes_per_core_max: 64 * 1024,
        auth_timeout_ms: 60_000,
        ..test_config()
    };
    let (gw, _) = start(cfg);
    // Each sends the start of an 8,000-byte frame and then nothing: about
    // 8 KB held per connection, 64 KiB allowed per core (two cores).
    let mut hostile: Vec<TcpStream> = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(gw.local_addr).unwrap();
        s.write_all(&8_000u32.to_be_bytes()).unwrap();
        s.write_all(&[0u8; 100]).unwrap();
        hostile.push(s);
        std::thread::sleep(Duration::from_millis(5));
    }
    eventually("the budget enforced", || {
        closes(&gw, "PREAUTH_LIMIT") >= 40 - 2 * 8
    });
    // An honest client gets in and is served.
    let (mut c, _) = Client::login(gw.local_addr, "honest");
    assert_eq!(c.call(1, "echo", "hi").status, 0);
    // The newest hostile connection was not the one evicted: it is open.
    let last = hostile.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    match last.read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the newest connection was closed: {other:?}"),
    }
    // The first one was, and was told BUSY before the close.
    let first = &mut hostile[0];
    first.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = first.read_to_end(&mut got);
    let err = gw_proto::decode(&got, 1 << 20);
    assert!(
        matches!(&err, Ok(gw_proto::Decoded::Frame(f, _)) if matches!(&f.body, Some(Body::Error(e)) if e.code == ErrorCode::Busy as i32)),
        "{err:?}"
    );
    let evicted: u64 = gw
        .snapshots()
        .iter()
        .map(|s| s.counters.preauth_evictions)
        .sum();
    assert!(evicted >= 24, "{evicted}");
    assert_eq!(closes(&gw, "PREAUTH_LIMIT"), evicted);
    let _ = CloseReason::PreauthLimit;
    gw.shutdown(false);
}

/// 300 admin connections that send half a request head and stall (a
/// slowloris) do not keep the liveness probe out: at the cap of 256, each
/// new connection evicts the slowest head.
#[test]
fn healthz_answers_while_slow_clients_hold_the_admin_port() {
    let (gw, _) = start(test_config());
    let admin = gw.admin_addr.unwrap();
    let slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(admin).unwrap();
            s.write_all(b"GET /heal").unwrap();
            s
        })
        .collect();
    for _ in 0..25 {
        let (status, body) = http_get(admin, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    drop(slow);
    gw.shutdown(false);
}
