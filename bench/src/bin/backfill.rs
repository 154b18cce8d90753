//! `backfill`: how fast a backlog of ack-required pushes reaches one
//! connection, end to end, when the window (`unacked_pushes_max`) is the
//! limit.
//!
//! One client logs in to the gateway as `--user` and acks every push the
//! moment it arrives. Once the user is reachable through `--nats-url` (a
//! warm-up push answered), a publisher sends `--count` ack-required pushes
//! to `<prefix>.user.<user>` as fast as it can: each a NATS publish with
//! headers `Gw-Route` and `Gw-Ack: 1` and a reply subject of ours, so every
//! answer (`Gw-Delivered`, or "no responders") is counted without waiting
//! for it before the next publish (the back-fill pattern of the gateway's
//! tests). Throughput is count / (first publish -> last push at the
//! client). Every push must arrive, in seq order, with none reported in a
//! `<prefix>.evt.undelivered` event. Prints one JSON object.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bench::net::mono_ns;
use bench::pushprobe::{self, Answer, Ended};
use bytes::Bytes;
use clap::Parser;
use futures_lite::StreamExt as _;
use gw_proto::pb;
use prost::Message as _;

/// Pushes per run at most.
const COUNT_MAX: u64 = 10_000_000;
/// Largest payload asked for, bytes.
const PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// How long to wait for a warm-up push to be answered.
const REACH_WITHIN: Duration = Duration::from_secs(10);
/// After the last push arrived: time for late undelivered events and answers.
const TAIL: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(
    name = "backfill",
    about = "Back-fill throughput: N ack-required pushes to one acking client."
)]
struct Args {
    /// Gateway client address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    target: SocketAddr,
    /// NATS server of the publisher.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subject prefix (the gateways' nats.prefix).
    #[arg(long, default_value = "gw")]
    prefix: String,
    /// User of the client.
    #[arg(long, default_value = "bf")]
    user: String,
    /// Pushes to send.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Payload size, bytes (0: just the push's index, as the gateway's test does).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Push route.
    #[arg(long, default_value = "backfill")]
    route: String,
    /// Give up this long after the first publish, seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
}

/// What the client saw.
#[derive(Default, Debug)]
struct Seen {
    /// Distinct pushes received (by index).
    distinct: u64,
    /// Pushes received, resends included.
    frames: u64,
    retransmits: u64,
    /// A new seq that was not last seq + 1, or an index out of publish order.
    out_of_order: u64,
    first_ns: u64,
    last_ns: u64,
    warmups: u64,
    ended: Option<Ended>,
    error: Option<String>,
}

fn payload(i: u64, size: usize) -> Bytes {
    let mut s = i.to_string();
    if size > s.len() {
        s.push(':');
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    Bytes::from(s)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("backfill: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.count == 0 || a.count > COUNT_MAX || a.payload_bytes > PAYLOAD_BYTES_MAX {
        bail!("need 1 <= --count <= {COUNT_MAX} and --payload-bytes <= {PAYLOAD_BYTES_MAX}");
    }
    let mut session = pushprobe::login(a.target, &a.user)?;
    let node = session.node.clone();
    let count = a.count;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (stop2, done2) = (stop.clone(), done.clone());
    let client = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let mut got = vec![false; count as usize];
        let (mut last_seq, mut next_index) = (0u64, 0u64);
        let r = session.serve(&stop2, &mut |p, at| {
            if p.route == pushprobe::WARMUP_ROUTE {
                seen.warmups += 1;
                return true;
            }
            seen.frames += 1;
            if p.retransmit || p.seq <= last_seq {
                seen.retransmits += 1;
                return true;
            }
            if p.seq != last_seq + 1 {
                seen.out_of_order += 1;
            }
            last_seq = p.seq;
            match pushprobe::payload_index(&p.payload).filter(|&i| i < count) {
                Some(i) if !got[i as usize] => {
                    got[i as usize] = true;
                    if i != next_index {
                        seen.out_of_order += 1;
                    }
                    next_index = i + 1;
                    if seen.distinct == 0 {
                        seen.first_ns = at;
                    }
                    seen.distinct += 1;
                    seen.last_ns = at;
                }
                _ => seen.out_of_order += 1,
            }
            seen.distinct < count
        });
        match r {
            Ok(e) => seen.ended = Some(e),
            Err(e) => seen.error = Some(format!("{e:#}")),
        }
        done2.store(true, Ordering::Relaxed);
        seen
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(publish(&a, &node, &done));
    stop.store(true, Ordering::Relaxed);
    let seen = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
    let p = out?;
    let e2e_s = seen.last_ns.saturating_sub(p.t0_ns) as f64 / 1e9;
    let line = serde_json::json!({
        "user": a.user, "node": node, "count": a.count, "route": a.route,
        "payload_bytes": payload(a.count - 1, a.payload_bytes).len(),
        "received": seen.distinct, "push_frames": seen.frames, "retransmits": seen.retransmits,
        "out_of_order": seen.out_of_order, "warmup_pushes": seen.warmups,
        "all_received": seen.distinct == a.count,
        "publish_s": p.publish_s, "published_per_s": a.count as f64 / p.publish_s,
        "first_push_ms": seen.first_ns.saturating_sub(p.t0_ns) as f64 / 1e6,
        "end_to_end_s": e2e_s,
        "pushes_per_s": if e2e_s > 0.0 { seen.distinct as f64 / e2e_s } else { 0.0 },
        "answers": {"taken": p.taken, "no_responders": p.no_responders, "other": p.other,
                    "none": a.count.saturating_sub(p.taken + p.no_responders + p.other)},
        "undelivered_reported": p.undelivered, "undelivered_events": p.undelivered_events,
        "client_end": seen.ended, "client_error": seen.error,
        "what": "count ack-required pushes published back to back (NATS publish with reply subject, Gw-Ack: 1) to one client that acks each on arrival; pushes_per_s = received / (first publish -> last push at the client)",
    });
    println!("{line}");
    Ok(())
}

/// What the publisher saw.
struct Published {
    t0_ns: u64,
    publish_s: f64,
    taken: u64,
    no_responders: u64,
    other: u64,
    /// Pushes named in undelivered events for our user.
    undelivered: u64,
    undelivered_events: u64,
}

async fn publish(a: &Args, node: &str, done: &AtomicBool) -> anyhow::Result<Published> {
    let nc = async_nats::ConnectOptions::new()
        .name("backfill")
        .connect(a.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to {}", a.nats_url))?;
    let mut undelivered = nc
        .subscribe(format!("{}.evt.undelivered", a.prefix))
        .await?;
    let inbox = nc.new_inbox();
    let mut replies = nc.subscribe(format!("{inbox}.*")).await?;
    nc.flush().await.context("flushing the subscriptions")?;
    pushprobe::reachable(&nc, &a.prefix, &a.user, REACH_WITHIN)
        .await
        .with_context(|| format!("(client on node {node})"))?;
    let subject = format!("{}.user.{}", a.prefix, a.user);
    let headers = pushprobe::push_headers(&a.route, true);
    let t0_ns = mono_ns();
    let start = Instant::now();
    for i in 0..a.count {
        nc.publish_with_reply_and_headers(
            subject.clone(),
            format!("{inbox}.{i}"),
            headers.clone(),
            payload(i, a.payload_bytes),
        )
        .await
        .context("publishing")?;
    }
    nc.flush().await.context("flushing the pushes")?;
    let publish_s = start.elapsed().as_secs_f64();
    let mut p = Published {
        t0_ns,
        publish_s,
        taken: 0,
        no_responders: 0,
        other: 0,
        undelivered: 0,
        undelivered_events: 0,
    };
    let give_up = start + Duration::from_secs(a.timeout_s);
    let mut tail_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= give_up || tail_until.is_some_and(|t| now >= t) {
            break;
        }
        if tail_until.is_none() && done.load(Ordering::Relaxed) {
            tail_until = Some(now + TAIL);
        }
        let tick = tokio::time::sleep(Duration::from_millis(5));
        tokio::select! {
            m = replies.next() => match m.map(|m| pushprobe::answer(&m)) {
                Some(Answer::Taken) => p.taken += 1,
                Some(Answer::NoResponders) => p.no_responders += 1,
                Some(Answer::Other) => p.other += 1,
                None => bail!("the reply subscription ended"),
            },
            m = undelivered.next() => {
                let Some(m) = m else { bail!("the event subscription ended") };
                match pb::UndeliveredEvent::decode(m.payload) {
                    Ok(ev) if ev.user == a.user => {
                        p.undelivered_events += 1;
                        p.undelivered += ev.pushes.len() as u64;
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("backfill: an undelivered event that is not protobuf: {e}"),
                }
            },
            _ = tick => {}
        }
    }
    Ok(p)
}
