//! Token lifetime: a session ends when its token expires (GoAway
//! TOKEN_EXPIRED), after a TokenExpiring notice, unless the client sends a
//! fresh token in band (Refresh); or, configured so, it outlives its token.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gw_proto::pb::{self, frame::Body};
use gw_proto::{CloseReason, ErrorCode};

/// Short clocks: the notice comes 1 s before exp, no leeway.
fn cfg() -> gateway::Config {
    let mut c = test_config();
    c.auth.leeway_s = 0;
    c.auth.refresh_ahead_s = 1;
    c
}

/// Logs in with a token living `ttl_s`; returns the client and AuthOk.
fn login_for(addr: std::net::SocketAddr, user: &str, ttl_s: i64) -> (Client, pb::AuthOk) {
    let mut c = Client::connect(addr);
    match c.auth_with(token(user, ttl_s), "d") {
        Body::AuthOk(ok) => (c, ok),
        other => panic!("expected AuthOk, got {other:?}"),
    }
}

fn next(c: &mut Client) -> Body {
    c.recv_within(Duration::from_secs(5)).expect("a frame")
}

#[test]
fn a_session_ends_with_its_token_after_a_notice() {
    let (gw, rec) = start(cfg());
    let (mut c, ok) = login_for(gw.local_addr, "short", 2);
    let exp = ok.token_expires_at_unix_s;
    assert!(
        exp >= unix_now() && exp <= unix_now() + 2,
        "AuthOk names the expiry: {exp}"
    );
    match next(&mut c) {
        Body::TokenExpiring(t) => assert_eq!(t.expires_at_unix_s, exp),
        other => panic!("expected TokenExpiring, got {other:?}"),
    }
    match next(&mut c) {
        Body::GoAway(g) => assert_eq!(g.reason, CloseReason::TokenExpired as i32),
        other => panic!("expected GoAway, got {other:?}"),
    }
    assert!(unix_now() > exp, "not before the token expired");
    assert!(c.read_to_close().0);
    rec.wait_for("offline TOKEN_EXPIRED", |e| {
        e.iter().any(|e| {
            matches!(e, Ev::Offline { user, reason: CloseReason::TokenExpired } if user == "short")
        })
    });
    assert_eq!(closes(&gw, "TOKEN_EXPIRED"), 1);
    gw.shutdown(false);
}

#[test]
fn a_refreshed_session_lives_on() {
    let (gw, _rec) = start(cfg());
    let (mut c, ok) = login_for(gw.local_addr, "fresh", 2);
    assert!(matches!(next(&mut c), Body::TokenExpiring(_)));
    c.send(Body::Refresh(pb::Refresh {
        token: token("fresh", 3600),
    }));
    match next(&mut c) {
        Body::RefreshReply(r) => {
            assert_eq!(r.code, 0, "{}", r.message);
            assert!(r.expires_at_unix_s > ok.token_expires_at_unix_s + 3000);
        }
        other => panic!("expected RefreshReply, got {other:?}"),
    }
    // Past the first token's expiry the session still serves.
    let t = Instant::now();
    while unix_now() <= ok.token_expires_at_unix_s + 1 {
        assert!(t.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(100));
    }
    c.send(Body::Ping(pb::Ping::default()));
    assert!(matches!(next(&mut c), Body::Pong(_)));
    assert_eq!(closes(&gw, "TOKEN_EXPIRED"), 0);
    gw.shutdown(false);
}

#[test]
fn a_refresh_for_another_user_is_refused_and_the_old_expiry_stands() {
    let (gw, _rec) = start(cfg());
    let (mut c, _) = login_for(gw.local_addr, "alice", 2);
    c.send(Body::Refresh(pb::Refresh {
        token: token("mallory", 3600),
    }));
    let reply = c.recv_until("RefreshReply", |b| match b {
        Body::RefreshReply(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(
        reply.code,
        ErrorCode::TokenInvalid as i32,
        "{}",
        reply.message
    );
    c.send(Body::Refresh(pb::Refresh {
        token: "not.a.token".into(),
    }));
    let reply = c.recv_until("RefreshReply", |b| match b {
        Body::RefreshReply(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(reply.code, ErrorCode::TokenInvalid as i32);
    let g = c.recv_until("GoAway", |b| match b {
        Body::GoAway(g) => Some(g.clone()),
        _ => None,
    });
    assert_eq!(g.reason, CloseReason::TokenExpired as i32);
    let refused: u64 = gw
        .snapshots()
        .iter()
        .map(|s| s.counters.refresh_failures)
        .sum();
    assert_eq!(refused, 2);
    gw.shutdown(false);
}

#[test]
fn sessions_outlive_tokens_when_configured_so() {
    let mut c = cfg();
    c.auth.expire_sessions = false;
    let (gw, _rec) = start(c);
    let (mut c, ok) = login_for(gw.local_addr, "old-style", 1);
    assert_eq!(ok.token_expires_at_unix_s, 0, "no expiry announced");
    std::thread::sleep(Duration::from_millis(2_200));
    c.send(Body::Ping(pb::Ping::default()));
    assert!(
        matches!(next(&mut c), Body::Pong(_)),
        "no notice, no GoAway"
    );
    gw.shutdown(false);
}
