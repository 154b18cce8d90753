//! A backend that stalls, in process: its futures never finish.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gateway::Config;
use gw_proto::pb::frame::Body;
use gw_proto::ErrorCode;

use crate::common::faults::{connz, init_log, FaultBackend};
use crate::common::{self, test_config, Client};
use crate::{ping_pong, sum_counter};

/// Sends `burst` requests on every client, then collects exactly one reply
/// for each; returns (BUSY, TIMEOUT) counts.
pub(crate) fn burst_and_collect(
    clients: &mut [Client],
    route: &str,
    base: u64,
    burst: u64,
    answered: &mut HashSet<(usize, u64)>,
) -> (u64, u64) {
    for c in clients.iter_mut() {
        for i in 0..burst {
            c.upstream(base + i, route, "x");
        }
    }
    let (mut busy, mut timeout) = (0, 0);
    for (n, c) in clients.iter_mut().enumerate() {
        let mut got = 0;
        while got < burst {
            let r = c.recv_until("a reply to the burst", |b| match b {
                Body::UpstreamReply(r) => Some(r.clone()),
                _ => None,
            });
            assert!(
                answered.insert((n, r.correlation_id)),
                "a second reply for {}: {r:?}",
                r.correlation_id
            );
            assert!(
                (base..base + burst).contains(&r.correlation_id),
                "a reply out of the burst: {r:?}"
            );
            match ErrorCode::try_from(r.status as i32) {
                Ok(ErrorCode::Busy) => busy += 1,
                Ok(ErrorCode::Timeout) => timeout += 1,
                _ => panic!("a stalled backend gives BUSY or TIMEOUT, got {r:?}"),
            }
            assert!(r.retry_after_ms > 0, "{r:?}");
            got += 1;
        }
    }
    (busy, timeout)
}

/// Samples /connz until `stop`: the largest in-flight count of one
/// connection and of the whole node.
pub(crate) fn sample_inflight(admin: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut per_conn, mut total) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            let z = connz(admin, "authed=true&limit=1000");
            let mut sum = 0;
            for c in z["connections"].as_array().unwrap() {
                let n = c["inflight"].as_u64().unwrap();
                per_conn = per_conn.max(n);
                sum += n;
            }
            total = total.max(sum);
            std::thread::sleep(Duration::from_millis(5));
        }
        (per_conn, total)
    })
}

pub(crate) const STALL_CLIENTS: usize = 8;
pub(crate) const PER_CONN: u32 = 4;
pub(crate) const PER_CORE: u32 = 10;
pub(crate) const BURST: u64 = 30;

pub(crate) fn stall_config() -> Config {
    Config {
        upstream_timeout_ms: 300,
        upstream_inflight_per_conn_max: PER_CONN,
        upstream_inflight_per_core_max: PER_CORE,
        busy_retry_after_ms: 50,
        ..test_config()
    }
}

/// The backend stops answering (its futures never finish) while eight
/// clients send bursts of 30 requests: each request gets exactly one reply,
/// BUSY at once past the in-flight caps or TIMEOUT at `upstream_timeout_ms`;
/// the work the stalled backend is made to hold never exceeds the per-core
/// cap; logins and heartbeats are served throughout; when the backend
/// answers again, so does every client's next request.
#[test]
fn a_stalled_backend_gets_busy_and_timeouts_holds_bounded_work_and_recovers() {
    init_log();
    let fb = FaultBackend::default();
    let gw = fb.start(stall_config());
    let cores = gw.snapshots().len() as u64;
    let bound = cores * PER_CORE as u64;
    let mut clients: Vec<Client> = (0..STALL_CLIENTS)
        .map(|i| Client::login(gw.local_addr, &format!("w{i}")).0)
        .collect();
    for c in clients.iter_mut() {
        assert_eq!(c.call(1, "work", "x").status, 0);
    }
    fb.stall(true);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_inflight(gw.admin_addr.unwrap(), stop.clone());
    let mut answered = HashSet::new();
    let (mut busy, mut timeouts) = (0, 0);
    for round in 0..2u64 {
        let (b, t) = burst_and_collect(
            &mut clients,
            "work",
            1000 * (round + 1),
            BURST,
            &mut answered,
        );
        busy += b;
        timeouts += t;
        // Logins and heartbeats do not wait for the backend.
        let (mut fresh, _) = Client::login(gw.local_addr, &format!("fresh{round}"));
        ping_pong(&mut fresh);
        ping_pong(&mut clients[0]);
    }
    stop.store(true, Ordering::SeqCst);
    let (max_per_conn, max_total) = sampler.join().unwrap();
    let sent = 2 * BURST * STALL_CLIENTS as u64;
    assert_eq!(busy + timeouts, sent);
    assert!(busy > 0 && timeouts > 0, "busy {busy}, timeouts {timeouts}");
    assert_eq!(sum_counter(&gw, |c| c.upstream_busy), busy);
    assert_eq!(sum_counter(&gw, |c| c.upstream_timeouts), timeouts);
    assert!(
        fb.peak() as u64 <= bound,
        "the stalled backend held {} requests at once (bound {bound})",
        fb.peak()
    );
    assert!(max_per_conn <= PER_CONN as u64 && max_total <= bound);

    fb.stall(false);
    let t = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.call(5000 + i as u64, "work", "back").status, 0);
    }
    let recovered = t.elapsed();
    common::eventually("the dropped work is gone", || fb.live() == 0);
    assert!(
        !fb.events().iter().any(
            |e| matches!(e, common::faults::Event::Offline { user, .. } if user.starts_with('w'))
        ),
        "no client was closed"
    );
    eprintln!(
        "stalled backend: {sent} requests → {busy} BUSY + {timeouts} TIMEOUT; held at most {} \
         (bound {bound}), {max_per_conn} per connection; all {STALL_CLIENTS} clients served again \
         {recovered:?} after the backend resumed",
        fb.peak()
    );
    gw.shutdown(false);
}

/// A frame refused for the connection's in-flight cap does not spend its
/// upstream rate: with a burst of 2, one held request and one refused for
/// the cap leave a token for the next frame.
#[test]
fn a_refusal_for_the_in_flight_cap_spends_no_rate() {
    init_log();
    let fb = FaultBackend::default();
    let mut cfg = stall_config();
    cfg.upstream_timeout_ms = 10_000;
    cfg.upstream_inflight_per_conn_max = 1;
    cfg.overload.upstream_rate_per_conn_per_s = 1;
    cfg.overload.upstream_burst = 2;
    let gw = fb.start(cfg);
    let (mut c, _) = Client::login(gw.local_addr, "r1");
    fb.stall(true);
    c.upstream(1, "work", "held");
    common::eventually("the first request is held", || fb.live() == 1);
    let refused = c.call(2, "work", "over the cap");
    assert_eq!(refused.status, ErrorCode::Busy as u32);
    fb.stall(false);
    let first = c.recv_until("the held reply", |b| match b {
        Body::UpstreamReply(r) if r.correlation_id == 1 => Some(r.clone()),
        _ => None,
    });
    assert_eq!(first.status, 0);
    // One token was spent (frame 1); the second is still there.
    assert_eq!(c.call(3, "echo", "third").status, 0);
    let snaps = gw.snapshots();
    let rejected = |r| {
        snaps
            .iter()
            .map(|s| s.counters.rejections.get(r))
            .sum::<u64>()
    };
    assert_eq!(rejected(gateway::metrics::Reject::InflightConn), 1);
    assert_eq!(rejected(gateway::metrics::Reject::UpstreamRate), 0);
    gw.shutdown(false);
}
