//! Admission, drain and the admin endpoints.

mod common;

use std::time::Duration;

use common::*;
use gw_proto::pb::{self, frame::Body};
use gw_proto::{CloseReason, ErrorCode};

#[test]
fn connection_cap_refuses_with_server_full_and_recovers() {
    let cfg = gateway::Config {
        cores: 1,
        conns_per_core_max: 3,
        ..test_config()
    };
    let (gw, _rec) = start(cfg);
    assert_eq!(gw.conns_per_core_max, 3);
    let mut held: Vec<Client> = (0..3)
        .map(|i| Client::login(gw.local_addr, &format!("u{i}")).0)
        .collect();
    let mut over = Client::connect(gw.local_addr);
    let (closed, frames) = over.read_to_close();
    assert!(closed);
    match frames.as_slice() {
        [Body::Error(e)] => {
            assert_eq!(e.code, ErrorCode::ServerFull as i32);
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("expected SERVER_FULL, got {other:?}"),
    }
    let refusals: u64 = gw
        .snapshots()
        .iter()
        .map(|s| s.counters.conn_limit_refusals)
        .sum();
    assert_eq!(refusals, 1);
    // The held connections are unaffected; freeing one admits a new one.
    assert_eq!(held[0].call(1, "echo", "x").status, 0);
    held.pop();
    eventually("a slot frees", || gw.snapshots()[0].connections == 2);
    let (mut c, _) = Client::login(gw.local_addr, "late");
    assert_eq!(c.call(1, "echo", "x").status, 0);
    gw.shutdown(false);
}

#[test]
fn graceful_shutdown_sends_goaway_waits_and_reports() {
    let cfg = gateway::Config {
        ack_timeout_ms: 60_000,
        drain_deadline_ms: 5_000,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let admin = gw.admin_addr.unwrap();
    let (mut polite, _) = Client::login(gw.local_addr, "polite");
    let (mut stubborn, _) = Client::login(gw.local_addr, "stubborn");
    // An unacked push to stubborn must be reported undelivered when it is closed.
    assert_eq!(
        polite
            .call(1, "chat.send", r#"{"to":"stubborn","text":"t"}"#)
            .status,
        0
    );
    assert!(matches!(stubborn.recv().unwrap(), Body::Push(_)));
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let t = std::thread::spawn(move || gw.shutdown(true));
    for c in [&mut polite, &mut stubborn] {
        let g = c.recv_until("GoAway", |b| match b {
            Body::GoAway(g) => Some(g.clone()),
            _ => None,
        });
        assert_eq!(g.reason, CloseReason::Drain as i32);
        assert_eq!(g.retry_after_ms, 1_000);
    }
    // Draining: no longer ready (/readyz), whatever /healthz says.
    eventually("readyz says draining", || {
        http_get(admin, "/readyz").0 == 503
    });
    // New connections are no longer accepted.
    std::thread::sleep(Duration::from_millis(50));
    let refused = std::net::TcpStream::connect_timeout(
        &polite.s.peer_addr().unwrap(),
        Duration::from_millis(500),
    );
    if let Ok(mut s) = refused {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "a new connection is not served while draining"
        );
    }
    drop(polite); // leaves by itself; stubborn stays until the deadline
    t.join().unwrap();
    let evs = rec.events();
    assert!(
        evs.contains(&Ev::Offline {
            user: "polite".into(),
            reason: CloseReason::ClientClosed
        }),
        "{evs:?}"
    );
    assert!(
        evs.contains(&Ev::Offline {
            user: "stubborn".into(),
            reason: CloseReason::Drain
        }),
        "{evs:?}"
    );
    assert!(evs.iter().any(|e| matches!(e, Ev::Undelivered { user, seqs, .. } if user == "stubborn" && seqs == &vec![1])));
    assert!(stubborn.read_to_close().0);
}

#[test]
fn fast_stop_closes_everything_and_reports() {
    let (gw, rec) = start(test_config());
    let (mut c, _) = Client::login(gw.local_addr, "a");
    gw.shutdown(false);
    assert!(c.read_to_close().0);
    assert!(rec.events().contains(&Ev::Offline {
        user: "a".into(),
        reason: CloseReason::Shutdown
    }));
}

#[test]
fn admin_endpoints_report_metrics_and_stats() {
    let (gw, _rec) = start(test_config());
    let admin = gw.admin_addr.unwrap();
    let (mut c, _) = Client::login(gw.local_addr, "a");
    c.send(Body::Ping(pb::Ping::default()));
    assert!(matches!(c.recv().unwrap(), Body::Pong(_)));
    // One upstream, answered with two ack-required pushes, acked at once.
    assert_eq!(c.call(1, "test.burst", "a 2").status, 0);
    let last = c.recv_until("the second push", |b| match b {
        Body::Push(p) if p.seq == 2 => Some(p.seq),
        _ => None,
    });
    c.send(Body::Ack(pb::Ack { seq: last }));
    let (status, text) = eventually_metrics(admin, "gateway_push_ack_seconds_count 2");
    assert_eq!(status, 200);
    for needle in [
        "gateway_connections{core=\"0\"}",
        "gateway_heartbeats_total{core=",
        "gateway_closes_total{reason=\"stale_heartbeat\"} 0",
        "gateway_accepts_total",
        "gateway_bytes_in_total",
        "# TYPE gateway_upstream_rtt_seconds histogram",
        "gateway_upstream_rtt_seconds_bucket{le=\"+Inf\"} 1",
        "gateway_upstream_rtt_seconds_count 1",
        "gateway_auth_seconds_count 1",
        "gateway_connect_auth_seconds_count 1",
        "gateway_tls_handshake_seconds_count 0",
        "gateway_build_info{version=\"",
        "# TYPE process_cpu_seconds_total counter",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "gateway_queue_delay_seconds{core=\"0\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
    // Label values are lower case throughout.
    for l in text.lines().filter(|l| l.contains("reason=\"")) {
        assert!(!l.bytes().any(|b| b.is_ascii_uppercase()), "{l}");
    }
    let heartbeats: u64 = text
        .lines()
        .filter(|l| l.starts_with("gateway_heartbeats_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(heartbeats, 1);
    let (status, body) = http_get(admin, "/stats");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sessions"], 1);
    assert_eq!(v["cores"].as_array().unwrap().len(), 2);
    assert_eq!(http_get(admin, "/nope").0, 404);
    gw.shutdown(false);
}

/// /metrics once it contains `needle` (an ack is counted when the core
/// reads it, after the client's write returned).
fn eventually_metrics(admin: std::net::SocketAddr, needle: &str) -> (u16, String) {
    let t = std::time::Instant::now();
    loop {
        let (status, text) = http_get(admin, "/metrics");
        if text.contains(needle) || t.elapsed() > Duration::from_secs(10) {
            return (status, text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn invalid_config_is_refused_with_a_reason() {
    let cfg = gateway::Config {
        demo: false,
        ..test_config()
    };
    let err = gateway::start(cfg, std::sync::Arc::new(Recorder::default()), false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("--demo"), "{err}");
}
