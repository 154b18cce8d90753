//! What each glommio executor of a worker runs: the ramp (paced, with a
//! bound on setups in flight), the optional pause at `--mark`, the
//! scenario's action (a storm's drop and reconnect, the broadcast sender's
//! rounds), then the close.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future::poll_fn;
use futures_lite::AsyncWriteExt;
use hdrhistogram::Histogram;

use crate::args::{split, Scenario};
use crate::conn::{conn_task, establish, source_of, status_name, Ctx, RoundAcc, Settings, Shared};
use crate::msg::{PHASE_ACTION, PHASE_FULL, PHASE_MARK};
use crate::net::{self, mono_ns};
use crate::proto::{self, Event};
use crate::transport::{io_reason, Stream};

/// What one executor hands back at the end.
pub struct ExecOut {
    pub connect_us: Histogram<u64>,
    pub transport_us: Histogram<u64>,
    pub ready_us: Histogram<u64>,
    pub join_us: Histogram<u64>,
    pub reconnect_us: Histogram<u64>,
    pub failed: BTreeMap<String, u64>,
    pub retried: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    pub tls_sessions: BTreeMap<String, u64>,
    pub echo_rtt_us: Histogram<u64>,
    pub echo_sent: u64,
    pub echo_status: BTreeMap<String, u64>,
    pub rounds: Vec<RoundAcc>,
    pub sends_ns: Vec<u64>,
    pub sender_error: Option<String>,
    pub sender_replies: BTreeMap<String, u64>,
    pub held_future_bytes: usize,
}

/// Waits until the coordinator has said `go` at least `n` times, or stop.
async fn wait_go(sh: &Shared, n: u32) {
    while sh.go.load(Relaxed) < n && !sh.stop.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens this executor's connections `from..to` (local numbering) at the
/// executor's share of --rate (None: as fast as --inflight allows), and
/// waits until every one is established or failed.
async fn ramp(ctx: &Rc<Ctx>, e: u64, from: u64, to: u64, phase: usize, paced: bool) {
    let set = &ctx.set;
    let sh = &ctx.shared;
    let execs = set.c.procs as u64 * set.c.cores as u64;
    let cores = set.c.cores as u64;
    let rate = set.c.rate / execs as f64;
    let inflight = (set.c.inflight / execs).max(1);
    let start = Instant::now();
    sh.seg_start[phase].fetch_min(mono_ns(), Relaxed);
    let n = to.saturating_sub(from);
    let mut spawned = 0u64;
    while spawned < n && !sh.stop.load(Relaxed) {
        let due = if paced {
            ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(n)
        } else {
            n
        };
        while spawned < due && ctx.establishing.get() < inflight {
            let i = e + (from + spawned) * cores;
            ctx.establishing.set(ctx.establishing.get() + 1);
            glommio::spawn_local(conn_task(ctx.clone(), i, phase)).detach();
            spawned += 1;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    while ctx.establishing.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads and discards what the sender's connection gets, counting reply
/// statuses; returns only when the connection ends.
async fn sender_reads(
    ctx: &Ctx,
    stream: &mut Stream,
    partial: &mut Vec<u8>,
    replies: &mut BTreeMap<String, u64>,
) -> String {
    let codec = ctx.set.codec;
    poll_fn(|cx| {
        let r = net::poll_frames(stream, codec, partial, cx, 8, &mut |ev| match ev {
            Event::Reply { status, .. } => *replies.entry(status_name(status)).or_insert(0) += 1,
            Event::Refused(r) => *replies.entry(r).or_insert(0) += 1,
            _ => {}
        });
        match r {
            Poll::Ready(Ok(())) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(format!("sender closed: {e:?}")),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The broadcast sender: connects, then on `go` sends --rounds broadcasts
/// spaced by --interval-ms, each carrying its round and send time. Returns
/// the connection, to be kept open until the end.
async fn sender(ctx: &Rc<Ctx>, go: u32, out: &mut ExecOut) -> Option<Stream> {
    let Scenario::Broadcast(b) = &ctx.set.sc else {
        return None;
    };
    let source = source_of(&ctx.set.c, &ctx.set.share, u64::MAX);
    let user = format!("s{}", ctx.set.share.first_id);
    // The gateway's backends answer `room.send` only from a member (BAD_REQUEST
    // otherwise), so the gw sender joins the room too (and gets its own
    // broadcasts, which it reads and discards); MQTT and NATS publishers
    // need no subscription.
    let join = ctx.set.c.protocol == crate::proto::Protocol::Gw;
    let mut conn = Err(String::new());
    for _ in 0..3 {
        conn = establish(ctx, &user, source, join, false, u64::MAX).await;
        if conn.is_ok() {
            break;
        }
    }
    let (mut stream, mut partial) = match conn {
        Ok(c) => c,
        Err(e) => {
            out.sender_error = Some(format!("sender connect: {e}"));
            ctx.shared.ready[PHASE_FULL].fetch_add(1, Relaxed);
            return None;
        }
    };
    ctx.shared.ready[PHASE_FULL].fetch_add(1, Relaxed);
    wait_go(&ctx.shared, go).await;
    let proto = ctx.set.c.protocol;
    let interval = Duration::from_millis(b.interval_ms);
    for r in 0..b.rounds {
        if ctx.shared.stop.load(Relaxed) {
            break;
        }
        let ns = mono_ns();
        let frame = ctx.out(proto::publish(
            proto,
            &b.room,
            r as u64 + 2,
            &format!("{r}:{ns}"),
        ));
        let sent = match stream.write_all(&frame).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            out.sender_error = Some(format!("sender write: {}", io_reason(&e)));
            break;
        }
        out.sends_ns.push(ns);
        let until = Instant::now() + interval;
        let replies = &mut out.sender_replies;
        let ended = futures_lite::future::or(
            async { Some(sender_reads(ctx, &mut stream, &mut partial, replies).await) },
            async {
                glommio::timer::sleep(until.saturating_duration_since(Instant::now())).await;
                None
            },
        )
        .await;
        if let Some(why) = ended {
            out.sender_error = Some(why);
            break;
        }
    }
    // Collect the last replies.
    let replies = &mut out.sender_replies;
    let _ = futures_lite::future::or(
        async { Some(sender_reads(ctx, &mut stream, &mut partial, replies).await) },
        async {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            None
        },
    )
    .await;
    Some(stream)
}

/// Runs executor `e` of the worker: its share of the connections through
/// every phase, then closes them all.
pub async fn executor_main(set: Arc<Settings>, shared: Arc<Shared>, e: u64) -> ExecOut {
    let cores = set.c.cores as u64;
    let n_e = split(set.share.conns, cores, e).0;
    let mark_e = set.share.mark.map(|m| split(m, cores, e).0);
    let ctx = Rc::new(Ctx::new(set.clone(), shared.clone(), n_e));
    let mut out = ExecOut {
        connect_us: crate::msg::histogram(),
        transport_us: crate::msg::histogram(),
        ready_us: crate::msg::histogram(),
        join_us: crate::msg::histogram(),
        reconnect_us: crate::msg::histogram(),
        failed: BTreeMap::new(),
        retried: BTreeMap::new(),
        dropped: BTreeMap::new(),
        tls_sessions: BTreeMap::new(),
        echo_rtt_us: crate::msg::histogram(),
        echo_sent: 0,
        echo_status: BTreeMap::new(),
        rounds: Vec::new(),
        sends_ns: Vec::new(),
        sender_error: None,
        sender_replies: BTreeMap::new(),
        held_future_bytes: std::mem::size_of::<crate::held::Held>(),
    };
    let mut go = 0;
    let mut from = 0;
    if let Some(m) = mark_e {
        ramp(&ctx, e, 0, m, PHASE_MARK, true).await;
        from = m;
        shared.ready[PHASE_MARK].fetch_add(1, Relaxed);
        go += 1;
        wait_go(&shared, go).await;
    }
    ramp(&ctx, e, from, n_e, PHASE_FULL, true).await;
    go += 1;
    let is_sender = set.share.sender && e == 0 && matches!(set.sc, Scenario::Broadcast(_));
    // The sender counts itself ready once connected, then sends on `go`;
    // its connection stays open until the end.
    let _sender_conn = if is_sender {
        sender(&ctx, go, &mut out).await
    } else {
        shared.ready[PHASE_FULL].fetch_add(1, Relaxed);
        wait_go(&shared, go).await;
        None
    };
    if matches!(set.sc, Scenario::Storm(_)) && !shared.stop.load(Relaxed) {
        let held = ctx.held.take();
        shared.open.fetch_sub(held.len() as u64, Relaxed);
        drop(held);
        ramp(&ctx, e, 0, n_e, PHASE_ACTION, false).await;
    }
    shared.ready[PHASE_ACTION].fetch_add(1, Relaxed);
    while !shared.stop.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // Close every held connection; connections still being set up end
    // within --timeout-ms and see the stop flag.
    let deadline =
        Instant::now() + Duration::from_millis(set.c.timeout_ms) + Duration::from_secs(1);
    loop {
        drop(ctx.held.take());
        if ctx.establishing.get() == 0 || Instant::now() >= deadline {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    out.connect_us = ctx.connect_us.replace(crate::msg::histogram());
    out.transport_us = ctx.transport_us.replace(crate::msg::histogram());
    out.ready_us = ctx.ready_us.replace(crate::msg::histogram());
    out.join_us = ctx.join_us.replace(crate::msg::histogram());
    out.reconnect_us = ctx.reconnect_us.replace(crate::msg::histogram());
    out.echo_rtt_us = ctx.echo_rtt_us.replace(crate::msg::histogram());
    out.echo_sent = ctx.echo_sent.get();
    out.echo_status = ctx.echo_status.take();
    out.failed = ctx.failed.take();
    out.retried = ctx.retried.take();
    out.dropped = ctx.dropped.take();
    out.tls_sessions = ctx.tls_sessions.take();
    out.rounds = ctx.rounds.take();
    out
}
