//! NATS faults: nats-server killed (or hung, then killed) and restarted
//! under traffic, and a NATS backend process frozen with SIGSTOP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gw_proto::pb::{self, frame::Body};
use gw_proto::ErrorCode;
use prost::Message as _;

use crate::backend::{
    burst_and_collect, sample_inflight, stall_config, BURST, PER_CONN, PER_CORE, STALL_CLIENTS,
};
use crate::common::faults::{init_log, js_read, js_stream, timed_out};
use crate::common::nats::{wait_for_interest, ChatBackend, Nats, NatsServer};
use crate::common::{self, test_config, Client, WAIT};
use crate::ping_pong;

/// How the sender of one ack-required push saw it.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The gateway took it: `Gw-Delivered` answered a publisher's request,
    /// or a `chat.send` upstream got status 0 (the backend ordered the push
    /// and the gateway executes the order).
    Confirmed,
    /// The sender was told it did not go, and must retry: the request
    /// failed (no responders, timed out, NATS unreachable from the
    /// publisher), or the upstream got an error status
    /// (BACKEND_UNAVAILABLE, TIMEOUT).
    Refused(String),
}

#[derive(Default)]
struct Ledger {
    /// Every push sent: id, outcome, when the sender learned it.
    sent: Mutex<Vec<(String, Outcome, Instant)>>,
    /// Ids of pushes a client acked.
    acked: Mutex<HashSet<String>>,
}

impl Ledger {
    fn record(&self, id: String, o: Outcome) {
        self.sent.lock().unwrap().push((id, o, Instant::now()));
    }
    fn first_confirmed_after(&self, prefix: char, t: Instant) -> Option<Duration> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, o, at)| id.starts_with(prefix) && *o == Outcome::Confirmed && *at > t)
            .map(|(_, _, at)| at.duration_since(t))
            .min()
    }
    fn confirmed_before(&self, t: Instant) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, o, at)| *o == Outcome::Confirmed && *at < t)
            .count()
    }
}

/// The id a push carries: a publisher's push is the id ("p17"); a chat
/// push is JSON with the id as its text ("c17").
fn push_id(payload: &[u8]) -> String {
    if payload.first() == Some(&b'{') {
        serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["text"].as_str().map(String::from))
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(payload).into_owned()
    }
}

/// Reads pushes until `stop`, acking the ack-required ones when `ack`. A
/// receiver must never be closed by the gateway.
fn receiver(
    mut c: Client,
    ack: bool,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match c.recv_within(Duration::from_millis(50)) {
                Ok(Body::Push(p)) if p.seq > 0 && ack => {
                    c.send(Body::Ack(pb::Ack { seq: p.seq }));
                    ledger.acked.lock().unwrap().insert(push_id(&p.payload));
                }
                Ok(_) => {}
                Err(e) if timed_out(&e) => {}
                Err(e) => panic!("a receiving client was closed: {e}"),
            }
        }
    })
}

/// Users that receive: four ack, `mute` reads but never acks (its pushes
/// stay unacked until it leaves at the end), `leaver` never acks and
/// leaves while NATS is down.
const TARGETS: [&str; 6] = ["a0", "a1", "a2", "a3", "mute", "leaver"];

/// Counts every ack-required push sent while nats-server is killed and
/// restarted: two senders (a NATS publisher sending requests to
/// `gw.user.<u>` with `Gw-Ack: 1`, and a client sending `chat.send` through
/// the reference backend) to six users. At the end each push is exactly one
/// of:
/// - acked by its client;
/// - reported in an `UndeliveredEvent` (read back from a JetStream stream
///   on `gw.evt.undelivered`, which keeps what the gateway publishes across
///   the restart whoever listens);
/// - refused to its sender, which knows it must retry (see `Outcome`).
///
/// Unaccounted = the sender was told the gateway took it, and it was
/// neither acked nor reported. There must be none.
///
/// Pushes do not expire during this test (`ack_timeout_ms` 10 s): the
/// unacked ones are reported when their connection closes (`leaver` while
/// NATS is down, `mute` at the end), never at the moment NATS dies. The
/// ignored test below shows what happens to reports sent at that moment.
#[test]
fn nats_killed_and_restarted_under_traffic_every_ack_required_push_is_accounted_for() {
    nats_fault_under_traffic(false);
}

/// The same, but nats-server first hangs (SIGSTOP) and is then killed, as a
/// supervisor would kill a hung server: `leaver` leaves while the server
/// hangs. The gateway's NATS client still counts as connected and writes
/// the undelivered event for leaver's pushes to its socket, where the hung
/// server never reads it; the kill discards it. With a core-NATS publish
/// (at most once) that event was lost. With `nats.events_confirm` (set by
/// this test) events are requests that the JetStream stream acknowledges,
/// resent with the same Nats-Msg-Id until it does, so the report arrives
/// after the restart.
#[test]
fn nats_hung_then_killed_loses_no_undelivered_report() {
    nats_fault_under_traffic(true);
}

/// `hang_first`: SIGSTOP the server, let `leaver` leave, then kill it.
fn nats_fault_under_traffic(hang_first: bool) {
    init_log();
    let store =
        std::env::temp_dir().join(format!("gw-faults-js-{}-{hang_first}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let mut nats = NatsServer::start_with(
        common::nats::free_port(),
        vec!["-js".into(), "-sd".into(), store.display().to_string()],
    );
    let url = nats.url();
    js_stream(&Nats::connect(&url), "GW_UNDELIVERED", "gw.evt.undelivered");
    let _backend = ChatBackend::start(&url, &[]);
    let mut cfg = test_config();
    cfg.node_id = "gw-fault".into();
    cfg.nats.urls = vec![url.clone()];
    cfg.nats.reconnect_delay_max_ms = 100;
    cfg.nats.push_confirm_timeout_ms = 500;
    // At least once: the stream below confirms every event (nats/events.rs).
    cfg.nats.events_confirm = true;
    cfg.upstream_timeout_ms = 1_000;
    cfg.ack_timeout_ms = 10_000;
    cfg.unacked_pushes_max = 10_000;
    let gw = common::start(cfg).0;

    let ledger = Arc::new(Ledger::default());
    let stop_ackers = Arc::new(AtomicBool::new(false));
    let stop_mute = Arc::new(AtomicBool::new(false));
    let stop_leaver = Arc::new(AtomicBool::new(false));
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let mut ackers = Vec::new();
    let mut mute = None;
    let mut leaver = None;
    let probe = Nats::connect(&url);
    for user in TARGETS {
        let (c, _) = Client::login(gw.local_addr, user);
        wait_for_interest(&probe, &format!("gw.user.{user}"));
        match user {
            "mute" => mute = Some(receiver(c, false, ledger.clone(), stop_mute.clone())),
            "leaver" => leaver = Some(receiver(c, false, ledger.clone(), stop_leaver.clone())),
            _ => ackers.push(receiver(c, true, ledger.clone(), stop_ackers.clone())),
        }
    }
    drop(probe);
    let (mut sender, _) = Client::login(gw.local_addr, "sender");
    let t = Instant::now();
    while sender.call(0, "echo", "").status != 0 {
        assert!(t.elapsed() < WAIT, "the reference backend never served");
        std::thread::sleep(Duration::from_millis(20));
    }

    let publisher = {
        let (url, ledger, stop) = (url.clone(), ledger.clone(), stop_traffic.clone());
        std::thread::spawn(move || {
            let opts = async_nats::ConnectOptions::new()
                .reconnect_delay_callback(|_| Duration::from_millis(20));
            let nats = Nats::connect_with(&url, opts);
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let user = TARGETS[n % TARGETS.len()];
                let id = format!("p{n}");
                let r = nats.request_within(
                    &format!("gw.user.{user}"),
                    &[("Gw-Route", "fault"), ("Gw-Ack", "1")],
                    id.as_bytes(),
                    Duration::from_millis(300),
                );
                let outcome = match r {
                    Ok(m)
                        if m.headers
                            .as_ref()
                            .and_then(|h| h.get("Gw-Delivered"))
                            .is_some() =>
                    {
                        Outcome::Confirmed
                    }
                    Ok(_) => Outcome::Refused("an answer without Gw-Delivered".into()),
                    Err(kind) => Outcome::Refused(kind),
                };
                ledger.record(id, outcome);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let chat = {
        let (ledger, stop) = (ledger.clone(), stop_traffic.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("c{n}");
                let to = TARGETS[n % TARGETS.len()];
                let msg = serde_json::json!({"to": to, "text": id}).to_string();
                let r = sender.call(n as u64 + 1, "chat.send", &msg);
                let outcome = match r.status {
                    0 => Outcome::Confirmed,
                    s => Outcome::Refused(format!(
                        "upstream {}",
                        ErrorCode::try_from(s as i32).map_or("?", |c| c.as_str_name())
                    )),
                };
                ledger.record(id, outcome);
                n += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };

    std::thread::sleep(Duration::from_millis(600));
    let t_kill = Instant::now();
    let mut leave = || {
        stop_leaver.store(true, Ordering::SeqCst);
        leaver.take().unwrap().join().unwrap();
    };
    if hang_first {
        let pid = nats.pid().unwrap() as libc::pid_t;
        // SAFETY: a signal to the nats-server this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        std::thread::sleep(Duration::from_millis(200));
        leave();
        std::thread::sleep(Duration::from_millis(200));
        nats.kill();
        std::thread::sleep(Duration::from_millis(400));
    } else {
        nats.kill();
        std::thread::sleep(Duration::from_millis(200));
        // A receiver leaves while NATS is away: its unacked pushes are
        // reported (buffered by the gateway's NATS client until the server
        // is back).
        leave();
        std::thread::sleep(Duration::from_millis(600));
    }
    let outage = t_kill.elapsed();
    let t_restart = Instant::now();
    nats.restart();
    let listening = t_restart.elapsed();
    let probe = Nats::connect(&url);
    wait_for_interest(&probe, "gw.user.a0");
    let resubscribed = t_restart.elapsed();
    loop {
        let (p, c) = (
            ledger.first_confirmed_after('p', t_restart),
            ledger.first_confirmed_after('c', t_restart),
        );
        if p.is_some() && c.is_some() && t_restart.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            t_restart.elapsed() < WAIT,
            "no recovery after the restart: publisher {p:?}, chat {c:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_traffic.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    chat.join().unwrap();
    // The mute receiver leaves last: every push it holds is reported.
    stop_mute.store(true, Ordering::SeqCst);
    mute.take().unwrap().join().unwrap();

    let sent: BTreeMap<String, Outcome> = ledger
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|(id, o, _)| (id.clone(), o.clone()))
        .collect();
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut next_seq = 1;
    let t = Instant::now();
    let unaccounted = loop {
        let reader = Nats::connect(&url);
        let (msgs, next) = js_read(&reader, "GW_UNDELIVERED", next_seq);
        next_seq = next;
        for m in msgs {
            let ev = pb::UndeliveredEvent::decode(&m[..]).expect("an UndeliveredEvent");
            for p in ev.pushes {
                let reason = pb::UndeliveredReason::try_from(p.reason)
                    .map_or("?".to_string(), |r| r.as_str_name().to_string());
                reported.insert(push_id(&p.payload), reason);
            }
        }
        let acked = ledger.acked.lock().unwrap().clone();
        let unaccounted: Vec<&String> = sent
            .iter()
            .filter(|(id, o)| {
                **o == Outcome::Confirmed && !acked.contains(*id) && !reported.contains_key(*id)
            })
            .map(|(id, _)| id)
            .collect();
        if unaccounted.is_empty() || t.elapsed() > WAIT {
            break unaccounted.into_iter().cloned().collect::<Vec<String>>();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop_ackers.store(true, Ordering::SeqCst);
    for a in ackers {
        a.join().unwrap();
    }

    // Classify: acked, else reported, else refused (by what the sender saw).
    let acked = ledger.acked.lock().unwrap().clone();
    let (mut n_acked, mut n_reported, mut n_refused) = (0, 0, 0);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for (id, o) in &sent {
        if acked.contains(id) {
            n_acked += 1;
        } else if let Some(r) = reported.get(id) {
            n_reported += 1;
            *reasons.entry(r.clone()).or_default() += 1;
        } else if let Outcome::Refused(why) = o {
            n_refused += 1;
            *refusals.entry(why.clone()).or_default() += 1;
        }
    }
    eprintln!(
        "NATS killed under traffic: {} pushes sent = {n_acked} acked + {n_reported} reported \
         undelivered {reasons:?} + {n_refused} refused to the sender {refusals:?} + {} unaccounted; \
         outage {outage:?}; after the restart: listening in {listening:?}, subscriptions back in \
         {resubscribed:?}, first confirmed publish {:?}, first chat.send served {:?}",
        sent.len(),
        unaccounted.len(),
        ledger.first_confirmed_after('p', t_restart),
        ledger.first_confirmed_after('c', t_restart),
    );
    assert!(
        unaccounted.is_empty(),
        "confirmed pushes neither acked nor reported: {unaccounted:?}"
    );
    assert_eq!(n_acked + n_reported + n_refused, sent.len());
    assert!(
        ledger.confirmed_before(t_kill) >= 20,
        "traffic before the kill"
    );
    assert!(n_refused > 0, "senders were told about the outage");
    assert!(n_reported > 0, "pushes to mute and leaver were reported");
    gw.shutdown(false);
    drop(nats);
    let _ = std::fs::remove_dir_all(&store);
}

/// The same with a real NATS backend process frozen with SIGSTOP (it holds
/// its connection and reads nothing): BUSY and TIMEOUT, bounded in-flight,
/// heartbeats and logins served; after SIGCONT every client is served again,
/// and the frozen backend's late answers to timed-out requests are
/// discarded (no second reply).
#[test]
fn a_frozen_nats_backend_gets_busy_and_timeouts_and_recovers_without_late_replies() {
    init_log();
    let nats = NatsServer::start();
    let backend = ChatBackend::start(&nats.url(), &[]);
    let mut cfg = stall_config();
    cfg.nats.urls = vec![nats.url()];
    let gw = common::start(cfg).0;
    let bound = gw.snapshots().len() as u64 * PER_CORE as u64;
    let mut clients: Vec<Client> = (0..STALL_CLIENTS)
        .map(|i| Client::login(gw.local_addr, &format!("n{i}")).0)
        .collect();
    for c in clients.iter_mut() {
        let t = Instant::now();
        while c.call(1, "echo", "x").status != 0 {
            assert!(t.elapsed() < WAIT, "the backend never served");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let pid = backend.pid() as libc::pid_t;
    // SAFETY: signals to the child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_inflight(gw.admin_addr.unwrap(), stop.clone());
    let mut answered = HashSet::new();
    let (busy, timeouts) = burst_and_collect(&mut clients, "echo", 1000, BURST, &mut answered);
    let (mut fresh, _) = Client::login(gw.local_addr, "fresh");
    ping_pong(&mut fresh);
    stop.store(true, Ordering::SeqCst);
    let (max_per_conn, max_total) = sampler.join().unwrap();
    assert!(busy > 0 && timeouts > 0, "busy {busy}, timeouts {timeouts}");
    assert!(max_per_conn <= PER_CONN as u64 && max_total <= bound);

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let t = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        let corr = 5000 + i as u64;
        c.upstream(corr, "echo", "back");
        let r = c.recv_until("the reply after the resume", |b| match b {
            Body::UpstreamReply(r) => Some(r.clone()),
            _ => None,
        });
        assert_eq!(
            r.correlation_id, corr,
            "a late answer to a timed-out request reached the client: {r:?}"
        );
        assert_eq!(r.status, 0, "{r:?}");
    }
    let recovered = t.elapsed();
    eprintln!(
        "frozen NATS backend: {} requests → {busy} BUSY + {timeouts} TIMEOUT; in flight at most \
         {max_total} (bound {bound}), {max_per_conn} per connection; served again {recovered:?} \
         after SIGCONT",
        BURST * STALL_CLIENTS as u64
    );
    gw.shutdown(false);
}
