//! `failover`: how long pushes stop for users whose gateway loses its NATS
//! server.
//!
//! `--users` clients log in (on whichever gateway process of the port
//! takes each; `AuthOk` names the node) and ack every push as it arrives.
//! A publisher on `--nats-url` (a server that stays up) sends ack-required
//! pushes round-robin to all of them at `--rate`, each a NATS publish to
//! `<prefix>.user.<user>` with a reply subject of ours. After `--before-s`
//! it SIGKILLs `--kill-pid` (a nats-server of the cluster) and goes on for
//! `--after-s`. Per node it reports, from the kill (one clock: this
//! process's CLOCK_MONOTONIC):
//! - `resume_ms`: until the first push published after the kill reached a
//!   user of the node;
//! - `all_users_resumed_ms`: until every user of the node had one;
//! - `gap_ms`: the longest silence between two pushes arriving at the
//!   node's users, from 1 s before the kill on (`spacing_ms` is the median
//!   before the kill, for scale);
//! - pushes published after the kill that never arrived, by the answer
//!   their request got ("no responders" = nobody held the user then, so
//!   the publisher knows; "taken" and lost would be a gateway bug), and
//!   when they were published (first and last, ms after the kill);
//! - online events with `resync = true` seen from the node after the kill.
//!
//! Prints one JSON object.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bench::net::mono_ns;
use bench::pushprobe::{self, percentile, Answer};
use bytes::Bytes;
use clap::Parser;
use futures_lite::StreamExt as _;
use gw_proto::pb;
use prost::Message as _;
use serde_json::json;

/// Clients at most (one thread each).
const USERS_MAX: usize = 2000;
/// Pushes per second at most.
const RATE_MAX: f64 = 100_000.0;
/// How long to wait for every user to be reachable before publishing.
const REACH_WITHIN: Duration = Duration::from_secs(10);
/// After the last publish: time for answers (longer than the gateways'
/// push_confirm_timeout_ms, 2 s) and late pushes.
const DRAIN: Duration = Duration::from_secs(3);
/// Arrival gaps are looked for from this long before the kill.
const GAP_FROM_BEFORE_KILL_NS: u64 = 1_000_000_000;

#[derive(Parser, Debug)]
#[command(
    name = "failover",
    about = "Push gap when a NATS server of the cluster is killed."
)]
struct Args {
    /// Gateway client address (all gateway processes share it).
    #[arg(long, default_value = "127.0.0.1:7000")]
    target: SocketAddr,
    /// NATS server of the publisher (not the one killed).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subject prefix (the gateways' nats.prefix).
    #[arg(long, default_value = "gw")]
    prefix: String,
    /// Clients; users are <user-prefix>0, <user-prefix>1, ...
    #[arg(long, default_value_t = 90)]
    users: usize,
    #[arg(long, default_value = "fo")]
    user_prefix: String,
    /// Ack-required pushes per second over all users.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Process to SIGKILL (a nats-server); 0: kill nothing (a control run).
    #[arg(long, default_value_t = 0)]
    kill_pid: i32,
    /// Nodes whose only configured server is the one killed (for the report).
    #[arg(long = "listed-by")]
    listed_by: Vec<String>,
    /// Seconds of pushes before the kill.
    #[arg(long, default_value_t = 3.0)]
    before_s: f64,
    /// Seconds of pushes after the kill.
    #[arg(long, default_value_t = 12.0)]
    after_s: f64,
}

/// A push that arrived: its index and arrival time.
type Arrival = (u64, u64);

fn main() {
    if let Err(e) = run() {
        eprintln!("failover: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    let ok_s = |s: f64| s.is_finite() && s > 0.0 && s <= 3600.0;
    if a.users == 0 || a.users > USERS_MAX || !(a.rate > 0.0 && a.rate <= RATE_MAX) {
        bail!("need 1 <= --users <= {USERS_MAX} and 0 < --rate <= {RATE_MAX}");
    }
    if !ok_s(a.before_s) || !ok_s(a.after_s) {
        bail!("need 0 < --before-s, --after-s <= 3600");
    }
    let users: Vec<String> = (0..a.users)
        .map(|i| format!("{}{i}", a.user_prefix))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut nodes = Vec::with_capacity(a.users);
    let mut threads = Vec::with_capacity(a.users);
    for u in &users {
        let mut s = pushprobe::login(a.target, u)?;
        nodes.push(s.node.clone());
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut got: Vec<Arrival> = Vec::new();
            let end = s.serve(&stop, &mut |p, at| {
                if p.ack_required && !p.retransmit {
                    if let Some(i) = pushprobe::payload_index(&p.payload) {
                        got.push((i, at));
                    }
                }
                true
            });
            (got, end.map_err(|e| format!("{e:#}")))
        }));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pubd = rt.block_on(publish(&a, &users));
    stop.store(true, Ordering::Relaxed);
    let mut arrivals = Vec::with_capacity(a.users);
    let mut client_errors = BTreeMap::new();
    for (t, u) in threads.into_iter().zip(&users) {
        let (got, end) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        if let Ok(pushprobe::Ended::Closed(why)) | Err(why) = end.map_err(Some) {
            client_errors.insert(u.clone(), why);
        }
        arrivals.push(got);
    }
    let p = pubd?;
    println!("{}", report(&a, &nodes, &arrivals, &p, client_errors));
    Ok(())
}

/// What the publisher saw.
struct Published {
    /// Publish time of push i (`mono_ns`); push i went to user i % users.
    at: Vec<u64>,
    answers: Vec<Option<Answer>>,
    kill_ns: Option<u64>,
    /// The kill on the wall clock, seconds since the Unix epoch (to line it
    /// up with other tools' samples).
    kill_unix_s: Option<f64>,
    kill_error: Option<String>,
    /// Node -> times of its online events with resync = true after the kill.
    resync: BTreeMap<String, Vec<u64>>,
    undelivered_pushes: u64,
}

async fn publish(a: &Args, users: &[String]) -> anyhow::Result<Published> {
    let nc = async_nats::ConnectOptions::new()
        .name("failover")
        .connect(a.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to {}", a.nats_url))?;
    let mut online = nc.subscribe(format!("{}.evt.online", a.prefix)).await?;
    let mut undelivered = nc
        .subscribe(format!("{}.evt.undelivered", a.prefix))
        .await?;
    let inbox = nc.new_inbox();
    let mut replies = nc.subscribe(format!("{inbox}.*")).await?;
    nc.flush().await.context("flushing the subscriptions")?;
    for u in users {
        pushprobe::reachable(&nc, &a.prefix, u, REACH_WITHIN).await?;
    }
    let headers = pushprobe::push_headers("probe", true);
    let subjects: Vec<String> = users
        .iter()
        .map(|u| format!("{}.user.{u}", a.prefix))
        .collect();
    let mut p = Published {
        at: Vec::new(),
        answers: Vec::new(),
        kill_ns: None,
        kill_unix_s: None,
        kill_error: None,
        resync: BTreeMap::new(),
        undelivered_pushes: 0,
    };
    let start = Instant::now();
    let kill_at = start + Duration::from_secs_f64(a.before_s);
    let stop_at = kill_at + Duration::from_secs_f64(a.after_s);
    let end_at = stop_at + DRAIN;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let now = Instant::now();
        if now >= end_at {
            break;
        }
        if now >= kill_at && p.kill_ns.is_none() {
            p.kill_ns = Some(mono_ns());
            p.kill_unix_s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs_f64());
            if a.kill_pid > 0 {
                // SAFETY: kill(2) with a pid and a signal number; no memory involved.
                if unsafe { libc::kill(a.kill_pid, libc::SIGKILL) } != 0 {
                    p.kill_error = Some(std::io::Error::last_os_error().to_string());
                }
            }
        }
        if now < stop_at {
            let due = (start.elapsed().as_secs_f64() * a.rate) as usize + 1;
            while p.at.len() < due {
                let i = p.at.len();
                p.at.push(mono_ns());
                p.answers.push(None);
                nc.publish_with_reply_and_headers(
                    subjects[i % subjects.len()].clone(),
                    format!("{inbox}.{i}"),
                    headers.clone(),
                    Bytes::from(i.to_string()),
                )
                .await
                .context("publishing")?;
            }
        }
        tokio::select! {
            m = replies.next() => {
                let Some(m) = m else { bail!("the reply subscription ended") };
                let i = m.subject.as_str().rsplit('.').next().and_then(|t| t.parse::<usize>().ok());
                if let Some(slot) = i.and_then(|i| p.answers.get_mut(i)) {
                    // The first answer counts (a push reaches one connection).
                    slot.get_or_insert(pushprobe::answer(&m));
                }
            }
            m = online.next() => {
                let Some(m) = m else { bail!("the event subscription ended") };
                if let (Ok(ev), Some(k)) = (pb::OnlineEvent::decode(m.payload), p.kill_ns) {
                    if ev.resync {
                        p.resync.entry(ev.node).or_default().push(mono_ns().saturating_sub(k));
                    }
                }
            }
            m = undelivered.next() => {
                let Some(m) = m else { bail!("the event subscription ended") };
                if let Ok(ev) = pb::UndeliveredEvent::decode(m.payload) {
                    p.undelivered_pushes += ev.pushes.len().max(1) as u64;
                }
            }
            _ = tick.tick() => {}
        }
    }
    Ok(p)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The per-node figures (see the module doc) and the totals, as JSON.
fn report(
    a: &Args,
    nodes: &[String],
    arrivals: &[Vec<Arrival>],
    p: &Published,
    client_errors: BTreeMap<String, Option<String>>,
) -> serde_json::Value {
    let kill = p.kill_ns.unwrap_or(u64::MAX);
    let n_users = nodes.len();
    let mut delivered = vec![false; p.at.len()];
    for got in arrivals {
        for &(i, _) in got {
            if let Some(d) = delivered.get_mut(i as usize) {
                *d = true;
            }
        }
    }
    let mut per_node = serde_json::Map::new();
    let mut names: Vec<&String> = nodes.iter().collect();
    names.sort();
    names.dedup();
    for node in names {
        let mine: Vec<usize> = (0..n_users).filter(|&u| &nodes[u] == node).collect();
        let mut times: Vec<u64> = mine
            .iter()
            .flat_map(|&u| arrivals[u].iter().map(|&(_, t)| t))
            .collect();
        times.sort_unstable();
        // Arrivals of pushes published after the kill, per user: the first.
        let firsts: Vec<Option<u64>> = mine
            .iter()
            .map(|&u| {
                arrivals[u]
                    .iter()
                    .filter(|&&(i, _)| p.at.get(i as usize).is_some_and(|&t| t > kill))
                    .map(|&(_, t)| t)
                    .min()
            })
            .collect();
        let resume = firsts.iter().flatten().min().map(|&t| ms(t - kill));
        let all_back = if firsts.iter().all(Option::is_some) {
            firsts.iter().flatten().max().map(|&t| ms(t - kill))
        } else {
            None
        };
        let gap = times
            .windows(2)
            .filter(|w| w[1] >= kill.saturating_sub(GAP_FROM_BEFORE_KILL_NS))
            .map(|w| w[1] - w[0])
            .max()
            .map(ms);
        let mut spacing: Vec<f64> = times
            .windows(2)
            .filter(|w| w[1] < kill)
            .map(|w| ms(w[1] - w[0]))
            .collect();
        spacing.sort_by(f64::total_cmp);
        let (mut after, mut lost) = (0u64, BTreeMap::<&str, u64>::new());
        let mut lost_before = 0u64;
        let mut lost_when = BTreeMap::<&str, [f64; 2]>::new();
        for (i, &t) in p.at.iter().enumerate() {
            if &nodes[i % n_users] != node {
                continue;
            }
            if t > kill {
                after += 1;
            }
            if delivered[i] {
                continue;
            }
            if t <= kill {
                lost_before += 1;
                continue;
            }
            let why = match p.answers[i] {
                Some(Answer::Taken) => "taken",
                Some(Answer::NoResponders) => "no_responders",
                Some(Answer::Other) => "other",
                None => "no_answer",
            };
            *lost.entry(why).or_default() += 1;
            // When (after the kill) the lost ones of each kind were published.
            let off = ms(t - kill);
            let span = lost_when.entry(why).or_insert([off, off]);
            span[0] = span[0].min(off);
            span[1] = span[1].max(off);
        }
        let resync = p.resync.get(node.as_str());
        per_node.insert(
            node.clone(),
            json!({
                "users": mine.len(), "listed_killed_server": a.listed_by.contains(node),
                "resume_ms": resume, "all_users_resumed_ms": all_back, "gap_ms": gap,
                "spacing_ms": percentile(&spacing, 0.5),
                "published_after_kill": after,
                "not_delivered_after_kill_by_answer": lost,
                "not_delivered_published_ms_after_kill": lost_when,
                "not_delivered_published_before_kill": lost_before,
                "resync_online_events": resync.map_or(0, Vec::len),
                "first_resync_ms": resync.and_then(|v| v.iter().min()).map(|&t| ms(t)),
            }),
        );
    }
    let got: usize = arrivals.iter().map(Vec::len).sum();
    json!({
        "users": n_users, "rate_per_s": a.rate, "before_s": a.before_s, "after_s": a.after_s,
        "kill_pid": a.kill_pid, "kill_unix_s": p.kill_unix_s, "kill_error": p.kill_error, "listed_by": a.listed_by,
        "published": p.at.len(), "arrived": got,
        "undelivered_events_pushes": p.undelivered_pushes,
        "nodes": per_node, "client_errors": client_errors,
        "what": "ack-required pushes round-robin to every user; times from the SIGKILL of the nats-server, on this process's monotonic clock; arrival = the client's read",
    })
}
