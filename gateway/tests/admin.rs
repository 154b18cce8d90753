//! The admin plane for operators: `/connz` (inspect and filter
//! connections), `POST /kick`, `POST /drain` with GoAways spread over a
//! window, and the optional admin token.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, http_get, http_request, http_request_with, start, test_config, Client};
use gw_proto::pb::frame::Body;
use gw_proto::CloseReason;
use serde_json::Value;

fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn connz_lists_filters_and_sorts_connections() {
    let (gw, _rec) = start(test_config());
    let admin = gw.admin_addr.unwrap();
    let (mut alice, ok_a) = Client::login(gw.local_addr, "alice");
    let (_bob, ok_b) = Client::login(gw.local_addr, "bob");
    let _anon = Client::connect(gw.local_addr); // never authenticates
    assert_eq!(alice.call(1, "room.join", r#"{"room":"lobby"}"#).status, 0);
    assert_eq!(alice.call(2, "echo", &"x".repeat(500)).status, 0);
    eventually("three connections", || {
        get_json(admin, "/connz")["matched"] == 3
    });

    let all = get_json(admin, "/connz?sort=bytes_in");
    let conns = all["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[0]["user"], "alice", "alice sent the most: {all}");
    assert!(all["closes"]["CLIENT_CLOSED"].is_u64());

    let a = get_json(admin, "/connz?user=alice");
    assert_eq!(a["matched"], 1);
    let c = &a["connections"][0];
    assert_eq!(c["conn_id"], ok_a.conn_id);
    assert_eq!(c["device"], "dev1");
    assert_eq!(c["transport"], "tcp");
    assert_eq!(c["rooms"], serde_json::json!(["lobby"]));
    assert_eq!(
        c["remote"],
        alice.s.local_addr().unwrap().to_string(),
        "the client's own address"
    );
    assert!(c["bytes_in"].as_u64().unwrap() > 500, "{c}");
    assert!(c["bytes_out"].as_u64().unwrap() > 500, "{c}");
    assert_eq!(c["unacked"], 0);

    assert_eq!(get_json(admin, "/connz?authed=false")["matched"], 1);
    assert_eq!(
        get_json(admin, &format!("/connz?conn={}", ok_b.conn_id))["connections"][0]["user"],
        "bob"
    );
    assert_eq!(get_json(admin, "/connz?transport=ws")["matched"], 0);
    let one = get_json(admin, "/connz?limit=1&sort=age");
    assert_eq!(
        (
            one["matched"].as_u64(),
            one["connections"].as_array().unwrap().len()
        ),
        (Some(3), 1)
    );
    for bad in [
        "/connz?limit=0",
        "/connz?sort=name",
        "/connz?transport=udp",
        "/connz?authed=yes",
        "/connz?idle_ms_min=x",
    ] {
        let (status, body) = http_get(admin, bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    gw.shutdown(false);
}

#[test]
fn kick_by_user_or_connection_sends_goaway_kicked() {
    let (gw, rec) = start(test_config());
    let admin = gw.admin_addr.unwrap();
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let (mut bob, ok_b) = Client::login(gw.local_addr, "bob");
    let (mut carol, _) = Client::login(gw.local_addr, "carol");

    let (status, body) = http_request(admin, "POST", "/kick?user=alice&message=bye%20now");
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["kicked"], 1);
    let g = alice.recv_until("GoAway", |b| match b {
        Body::GoAway(g) => Some(g.clone()),
        _ => None,
    });
    assert_eq!(
        (g.reason, g.message.as_str()),
        (CloseReason::Kicked as i32, "bye now")
    );
    assert!(alice.read_to_close().0);

    let (status, _) = http_request(admin, "POST", &format!("/kick?conn={}", ok_b.conn_id));
    assert_eq!(status, 200);
    assert!(bob.read_to_close().0);
    rec.wait_for("two kicks", |evs| {
        evs.iter()
            .filter(|e| {
                matches!(
                    e,
                    common::Ev::Offline {
                        reason: CloseReason::Kicked,
                        ..
                    }
                )
            })
            .count()
            == 2
    });

    for bad in [
        "/kick",
        "/kick?user=",
        "/kick?conn=x",
        "/kick?user=a&conn=1",
    ] {
        assert_eq!(http_request(admin, "POST", bad).0, 400, "{bad}");
    }
    assert_eq!(http_get(admin, "/kick?user=carol").0, 405);
    assert_eq!(carol.call(1, "echo", "still here").status, 0);
    gw.shutdown(false);
}

#[test]
fn admin_token_guards_everything_but_healthz() {
    std::env::set_var("GW_TEST_ADMIN_TOKEN", "0123456789abcdef-test-token");
    let mut cfg = test_config();
    cfg.admin_token_env = Some("GW_TEST_ADMIN_TOKEN".into());
    let (gw, _rec) = start(cfg);
    let admin = gw.admin_addr.unwrap();
    assert_eq!(http_get(admin, "/healthz").0, 200);
    for path in ["/metrics", "/stats", "/connz"] {
        assert_eq!(http_get(admin, path).0, 401, "{path}");
        let wrong = http_request_with(
            admin,
            "GET",
            path,
            &["Authorization: Bearer 0123456789abcdef-test-tokeX"],
        );
        assert_eq!(wrong.0, 401, "{path}");
        let right = http_request_with(
            admin,
            "GET",
            path,
            &["Authorization: Bearer 0123456789abcdef-test-token"],
        );
        assert_eq!(right.0, 200, "{path}");
    }
    assert_eq!(http_request(admin, "POST", "/drain").0, 401);
    assert_eq!(http_get(admin, "/healthz").0, 200, "not draining");
    gw.shutdown(false);

    // A token variable that is not set refuses to start, saying why.
    let mut cfg = test_config();
    cfg.admin_token_env = Some("GW_TEST_ADMIN_TOKEN_UNSET".into());
    let err = gateway::start(cfg, std::sync::Arc::new(common::Recorder::default()), false)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("GW_TEST_ADMIN_TOKEN_UNSET"),
        "{err:#}"
    );
}

/// `POST /drain`: GoAways spread over `drain_spread_ms` with jittered
/// retry_after_ms and the reconnect endpoints; the gateway exits once the
/// clients have left.
#[test]
fn drain_spreads_goaways_over_the_window_and_exits() {
    let mut cfg = test_config();
    cfg.cores = 1;
    cfg.drain_spread_ms = 1_500;
    cfg.drain_deadline_ms = 6_000;
    cfg.goaway_retry_after_ms = 1_000;
    cfg.goaway_retry_jitter_ms = 4_000;
    cfg.goaway_endpoints = vec!["gw-2.example:7000".into(), "gw-3.example:7000".into()];
    let (gw, rec) = start(cfg);
    let admin = gw.admin_addr.unwrap();
    let n = 30;
    let mut clients: Vec<Client> = (0..n)
        .map(|i| Client::login(gw.local_addr, &format!("u{i}")).0)
        .collect();
    let (status, body) = http_request(admin, "POST", "/drain");
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        http_request(admin, "POST", "/drain").0,
        200,
        "already draining"
    );
    // Alive, but not ready for new clients.
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let (status, body) = http_get(admin, "/readyz");
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    // Each client leaves when its GoAway comes, as a client should.
    let mut arrivals = Vec::new();
    let mut retries = Vec::new();
    for c in clients.iter_mut() {
        let g = c.recv_until("GoAway", |b| match b {
            Body::GoAway(g) => Some(g.clone()),
            _ => None,
        });
        arrivals.push(Instant::now());
        assert_eq!(g.reason, CloseReason::Drain as i32);
        assert_eq!(g.endpoints, ["gw-2.example:7000", "gw-3.example:7000"]);
        assert!(
            (1_000..=5_000).contains(&g.retry_after_ms),
            "{}",
            g.retry_after_ms
        );
        retries.push(g.retry_after_ms);
    }
    drop(clients);
    let first = *arrivals.iter().min().unwrap();
    let last = *arrivals.iter().max().unwrap();
    // Not all at once: the GoAways span a good part of the window.
    assert!(
        last - first >= Duration::from_millis(700),
        "GoAways within {:?}",
        last - first
    );
    retries.sort_unstable();
    retries.dedup();
    assert!(
        retries.len() > n / 2,
        "jittered retry_after_ms: {retries:?}"
    );
    // Everyone left by themselves, and the gateway exits on its own.
    let mut gw = gw;
    gw.join();
    let polite = rec
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                common::Ev::Offline {
                    reason: CloseReason::ClientClosed,
                    ..
                }
            )
        })
        .count();
    assert_eq!(polite, n);
}
