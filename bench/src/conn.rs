//! Connections of the flood client, for every scenario and protocol: the
//! settings and counters they share, and the short-lived task that sets
//! each one up (connect, TLS and WebSocket upgrade when asked, handshake,
//! join the room, with retries) before handing the stream to a
//! [`crate::held::Held`] task.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::poll_fn;
use futures_lite::AsyncWriteExt;
use hdrhistogram::Histogram;

use crate::args::{Common, Latency, Scenario, Share};
use crate::msg::{histogram, live_histogram, round_histogram, PHASES, PHASE_ACTION};
use crate::net::{self, mono_ns, RxEnd};
use crate::proto::{self, Codec, Event, Protocol};
use crate::transport::{io_reason, Stream, Transport};
use crate::wire::{self, close_reason_name, errno_name, error_code_name};
use crate::{mqtt, nats, ws};

/// Settings every connection task of a worker reads.
pub struct Settings {
    pub sc: Scenario,
    pub c: Common,
    pub share: Share,
    pub secret: Vec<u8>,
    pub kid: Option<String>,
    pub transport: Transport,
    pub codec: Codec,
    /// Interval of a held connection's timer: echo requests or heartbeats.
    pub tick: Duration,
    pub echo: bool,
    /// Chat: the timer sends `chat.send` to the partner connection.
    pub chat: bool,
    /// Broadcast: room to join and rounds to expect.
    pub room: Option<String>,
    pub rounds: u32,
    /// The latency recorded as the run goes (`Shared::live_us`).
    pub latency: Latency,
}

/// Counters of a worker, shared by its executors and its main thread.
pub struct Shared {
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub open: AtomicU64,
    pub dropped: AtomicU64,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub other_frames: AtomicU64,
    pub deliveries: AtomicU64,
    /// Deliveries whose payload says `"prio":"h"` (natspub --priority-mix).
    pub deliveries_high: AtomicU64,
    pub replies: AtomicU64,
    /// `go` lines received from the coordinator.
    pub go: AtomicU32,
    pub stop: AtomicBool,
    /// Echo: replies to requests sent at or after this count.
    pub measuring: AtomicBool,
    pub measure_start_ns: AtomicU64,
    pub measure_end_ns: AtomicU64,
    /// Executors done with each phase, and executors finished.
    pub ready: [AtomicU32; PHASES],
    pub done: AtomicU32,
    /// Open descriptors of the worker when `stop` arrived.
    pub fds_at_stop: AtomicU64,
    pub seg_start: [AtomicU64; PHASES],
    pub seg_last: [AtomicU64; PHASES],
    pub seg_est: [AtomicU64; PHASES],
    /// The scenario's latency since the last progress message, us
    /// (`Settings::latency`; the worker takes it once a second).
    pub live_us: Mutex<Histogram<u64>>,
}

impl Default for Shared {
    fn default() -> Shared {
        let z = || AtomicU64::new(0);
        Shared {
            established: z(),
            failed: z(),
            open: z(),
            dropped: z(),
            pings: z(),
            pongs: z(),
            other_frames: z(),
            deliveries: z(),
            deliveries_high: z(),
            replies: z(),
            go: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            measure_start_ns: AtomicU64::new(u64::MAX),
            measure_end_ns: z(),
            ready: [const { AtomicU32::new(0) }; PHASES],
            done: AtomicU32::new(0),
            fds_at_stop: z(),
            seg_start: [const { AtomicU64::new(u64::MAX) }; PHASES],
            seg_last: [const { AtomicU64::new(0) }; PHASES],
            seg_est: [const { AtomicU64::new(0) }; PHASES],
            live_us: Mutex::new(live_histogram()),
        }
    }
}

impl Shared {
    /// Records a latency of the run's kind, microseconds.
    pub fn live(&self, us: u64) {
        self.live_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(us.max(1));
    }

    /// What was recorded since the last call.
    pub fn take_live(&self) -> Histogram<u64> {
        let mut h = self.live_us.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *h, live_histogram())
    }
}

/// Receipts of one broadcast round on one executor.
#[derive(Default)]
pub struct RoundAcc {
    pub count: u64,
    pub lat_us: Option<Histogram<u64>>,
    pub last_ns: u64,
}

/// Per-executor state shared by its connection tasks.
pub struct Ctx {
    pub set: Arc<Settings>,
    pub shared: Arc<Shared>,
    pub heartbeat: Bytes,
    pub connect_us: RefCell<Histogram<u64>>,
    /// TCP connect plus TLS handshake and WebSocket upgrade (not plain TCP).
    pub transport_us: RefCell<Histogram<u64>>,
    pub ready_us: RefCell<Histogram<u64>>,
    pub join_us: RefCell<Histogram<u64>>,
    pub reconnect_us: RefCell<Histogram<u64>>,
    pub failed: RefCell<BTreeMap<String, u64>>,
    pub retried: RefCell<BTreeMap<String, u64>>,
    pub dropped: RefCell<BTreeMap<String, u64>>,
    /// TLS handshakes by version, cipher suite and kind (full, resumed).
    pub tls_sessions: RefCell<BTreeMap<String, u64>>,
    /// WebSocket messages masked so far (each gets its own mask).
    pub masked: Cell<u64>,
    /// Tasks of the established connections; dropping them closes them.
    pub held: RefCell<Vec<glommio::Task<()>>>,
    /// Connection tasks still connecting or handshaking.
    pub establishing: Cell<u64>,
    pub echo_rtt_us: RefCell<Histogram<u64>>,
    pub echo_sent: Cell<u64>,
    pub echo_status: RefCell<BTreeMap<String, u64>>,
    pub rounds: RefCell<Vec<RoundAcc>>,
}

impl Ctx {
    pub fn new(set: Arc<Settings>, shared: Arc<Shared>, conns: u64) -> Ctx {
        let rounds = (0..set.rounds).map(|_| RoundAcc::default()).collect();
        Ctx {
            heartbeat: proto::heartbeat(set.c.protocol),
            set,
            shared,
            connect_us: RefCell::new(histogram()),
            transport_us: RefCell::new(histogram()),
            ready_us: RefCell::new(histogram()),
            join_us: RefCell::new(histogram()),
            reconnect_us: RefCell::new(histogram()),
            failed: RefCell::default(),
            retried: RefCell::default(),
            dropped: RefCell::default(),
            tls_sessions: RefCell::default(),
            masked: Cell::new(0),
            held: RefCell::new(Vec::with_capacity(conns as usize)),
            establishing: Cell::new(0),
            echo_rtt_us: RefCell::new(histogram()),
            echo_sent: Cell::new(0),
            echo_status: RefCell::default(),
            rounds: RefCell::new(rounds),
        }
    }

    /// What to write for a length-prefixed frame: the frame, or over
    /// WebSocket one masked binary message.
    pub fn out(&self, frame: Bytes) -> Bytes {
        if !self.set.codec.ws {
            return frame;
        }
        let n = self.masked.get().wrapping_add(1);
        self.masked.set(n);
        ws::wrap(&frame, jitter(n ^ (self.set.share.first_id << 20)) as u32)
    }

    pub fn on_delivery(&self, payload: &[u8]) {
        self.shared.deliveries.fetch_add(1, Relaxed);
        if proto::is_high(payload) {
            self.shared.deliveries_high.fetch_add(1, Relaxed);
        }
        let Some((r, sent_ns)) = proto::parse_text(payload) else {
            bump(&self.dropped, "bad_broadcast_payload".into());
            return;
        };
        let now = mono_ns();
        let us = now.saturating_sub(sent_ns) / 1000;
        if self.set.latency == Latency::SendToPush || self.set.latency == Latency::Delivery {
            self.shared.live(us);
        }
        if self.set.chat {
            // Chat: the push carries the send time; only sends in the window count.
            if self.shared.measuring.load(Relaxed)
                && sent_ns >= self.shared.measure_start_ns.load(Relaxed)
            {
                self.echo_rtt_us.borrow_mut().saturating_record(us);
            }
            return;
        }
        let mut rounds = self.rounds.borrow_mut();
        if let Some(acc) = rounds.get_mut(r as usize) {
            acc.count += 1;
            acc.last_ns = acc.last_ns.max(now);
            acc.lat_us
                .get_or_insert_with(round_histogram)
                .saturating_record(us);
        }
    }

    pub fn on_reply(&self, status: u32, payload: &[u8]) {
        self.shared.replies.fetch_add(1, Relaxed);
        if self.set.chat && self.shared.measuring.load(Relaxed) {
            bump(&self.echo_status, status_name(status));
            return;
        }
        if !self.set.echo {
            return;
        }
        let Ok(ts) = <[u8; 8]>::try_from(payload) else {
            return;
        };
        let sent_ns = u64::from_be_bytes(ts);
        let us = mono_ns().saturating_sub(sent_ns) / 1000;
        if status == 0 {
            // The progress line and the plot: every OK reply, ramp included.
            self.shared.live(us);
        }
        if !self.shared.measuring.load(Relaxed)
            || sent_ns < self.shared.measure_start_ns.load(Relaxed)
        {
            return;
        }
        bump(&self.echo_status, status_name(status));
        if status == 0 {
            self.echo_rtt_us.borrow_mut().saturating_record(us);
        }
    }
}

/// Name of an UpstreamReply status.
pub fn status_name(status: u32) -> String {
    match status {
        0 => "OK".into(),
        s if s < 1000 => error_code_name(s as i32),
        s => format!("status{s}"),
    }
}

pub fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u64::MAX as u128) as u64
}

pub fn bump(map: &RefCell<BTreeMap<String, u64>>, reason: String) {
    *map.borrow_mut().entry(reason).or_insert(0) += 1;
}

/// Deterministic spread (splitmix64 of the index).
pub fn jitter(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn rx_end_name(phase: &str, e: RxEnd) -> String {
    match e {
        RxEnd::Eof => format!("{phase}:closed"),
        RxEnd::Io(e) => format!("{phase}:{}", io_reason(&e)),
        RxEnd::BadFrame(_) => format!("{phase}:bad_frame"),
    }
}

/// Failure reason of a WebSocket close code: `ws_close:<CloseReason>` for
/// the gateway's 4000 + reason, else the number.
pub fn ws_close_name(code: u16) -> String {
    match code {
        4000..=4999 => format!("ws_close:{}", close_reason_name(code as i32 - 4000)),
        c => format!("ws_close:{c}"),
    }
}

/// Reads until `pick` decides on an event: Ok, or Err(reason).
async fn await_event(
    stream: &mut Stream,
    codec: Codec,
    partial: &mut Vec<u8>,
    phase: &str,
    pick: &mut dyn FnMut(Event) -> Option<Result<(), String>>,
) -> Result<(), String> {
    let mut outcome: Option<Result<(), String>> = None;
    poll_fn(|cx| {
        let r = net::poll_frames(stream, codec, partial, cx, 4, &mut |ev| {
            if outcome.is_none() {
                outcome = pick(ev);
            }
        });
        if outcome.is_some() {
            return Poll::Ready(());
        }
        match r {
            Poll::Ready(Ok(())) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Err(e)) => {
                outcome = Some(Err(rx_end_name(phase, e)));
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    outcome.unwrap_or_else(|| Err(format!("{phase}:closed")))
}

/// Failure reason of an event that is not the one awaited.
fn refusal(ev: Event) -> Option<Result<(), String>> {
    match ev {
        Event::Refused(r) => Some(Err(r)),
        Event::Error(c) => Some(Err(format!("error:{}", error_code_name(c)))),
        Event::GoAway(r) => Some(Err(format!("goaway:{}", close_reason_name(r)))),
        Event::Closed(c) => Some(Err(ws_close_name(c))),
        _ => None,
    }
}

/// Writes `bytes` whole and flushes them (TLS keeps records until a flush).
async fn send(stream: &mut Stream, bytes: &[u8]) -> Result<(), String> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("write:{}", io_reason(&e)))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("write:{}", io_reason(&e)))
}

/// Connects from `source`, brings up the transport (TLS, WebSocket),
/// completes the protocol's handshake as `user`, and joins the room when
/// `join`. `seed` varies the WebSocket key. Err: the failure reason.
pub async fn establish(
    ctx: &Ctx,
    user: &str,
    source: Option<IpAddr>,
    join: bool,
    reconnect: bool,
    seed: u64,
) -> Result<(Stream, Vec<u8>), String> {
    let c = &ctx.set.c;
    let t0 = Instant::now();
    let sock =
        net::start_connect(c.target, source).map_err(|e| format!("socket:{}", errno_name(&e)))?;
    let mut tcp = net::into_glommio(sock);
    net::wait_connected(&mut tcp)
        .await
        .map_err(|e| format!("connect:{}", errno_name(&e)))?;
    if !reconnect {
        ctx.connect_us.borrow_mut().saturating_record(micros(t0));
    }
    let transport = &ctx.set.transport;
    let (mut stream, mut partial) = transport.open(tcp, seed).await?;
    if !reconnect && !transport.is_tcp() {
        ctx.transport_us.borrow_mut().saturating_record(micros(t0));
    }
    if let Some(kind) = stream.tls_summary() {
        bump(&ctx.tls_sessions, kind);
    }
    let codec = ctx.set.codec;
    let p = c.protocol;
    let hello: Bytes = match p {
        Protocol::Raw => Bytes::new(),
        Protocol::Gw => {
            let token = wire::token(&ctx.set.secret, ctx.set.kid.as_deref(), user, c.token_ttl_s);
            ctx.out(wire::auth_frame(
                token,
                &c.device,
                c.heartbeat_ms,
                !c.no_batches,
            ))
        }
        Protocol::Mqtt => {
            mqtt::connect(user, c.heartbeat_ms.div_ceil(1000).min(65_535) as u16).into()
        }
        Protocol::Nats => nats::connect(user).into(),
    };
    if !hello.is_empty() {
        send(&mut stream, &hello).await?;
        await_event(
            &mut stream,
            codec,
            &mut partial,
            "handshake",
            &mut |ev| match ev {
                Event::Ready if p != Protocol::Nats => Some(Ok(())),
                Event::Pong if p == Protocol::Nats => Some(Ok(())),
                ev => refusal(ev),
            },
        )
        .await?;
    }
    let us = micros(t0);
    if reconnect {
        ctx.reconnect_us.borrow_mut().saturating_record(us);
    } else {
        ctx.ready_us.borrow_mut().saturating_record(us);
    }
    let Some(room) = ctx.set.room.as_deref().filter(|_| join) else {
        return Ok((stream, partial));
    };
    let t1 = Instant::now();
    let sub: Bytes = match p {
        Protocol::Gw => ctx.out(wire::upstream_frame(
            1,
            "room.join",
            format!("{{\"room\":\"{room}\"}}").into_bytes(),
        )),
        Protocol::Mqtt => mqtt::subscribe(1, room).into(),
        Protocol::Nats => nats::subscribe(room, 1).into(),
        Protocol::Raw => return Err("join:raw".into()),
    };
    send(&mut stream, &sub).await?;
    await_event(
        &mut stream,
        codec,
        &mut partial,
        "join",
        &mut |ev| match ev {
            Event::Reply {
                corr: 1, status: 0, ..
            } => Some(Ok(())),
            Event::Reply {
                corr: 1, status, ..
            } => Some(Err(format!("join:{}", status_name(status)))),
            Event::SubAck(true) | Event::Pong => Some(Ok(())),
            Event::SubAck(false) => Some(Err("join:suback_refused".into())),
            ev => refusal(ev),
        },
    )
    .await?;
    ctx.join_us.borrow_mut().saturating_record(micros(t1));
    Ok((stream, partial))
}

/// Source address of connection `i` of this worker.
pub fn source_of(c: &Common, share: &Share, i: u64) -> Option<IpAddr> {
    (c.sources > 0).then(|| {
        IpAddr::V4(net::source_addr(
            share.source_base,
            (i % c.sources as u64) as u32,
        ))
    })
}

/// Failure reasons of a storm's reconnects start with "storm:".
fn tagged(phase: usize, reason: String) -> String {
    if phase == PHASE_ACTION {
        format!("storm:{reason}")
    } else {
        reason
    }
}

/// Establishes connection `i` of this worker (retrying as configured) and
/// hands it to a [`Held`] task of its own.
pub async fn conn_task(ctx: Rc<Ctx>, i: u64, phase: usize) {
    let set = &ctx.set;
    let sh = &ctx.shared;
    let user = format!("u{}", set.share.first_id + i);
    let source = source_of(&set.c, &set.share, i);
    let timeout = Duration::from_millis(set.c.timeout_ms);
    let join = set.room.is_some();
    let mut attempt = 0;
    let est = loop {
        let r = futures_lite::future::or(
            establish(&ctx, &user, source, join, phase == PHASE_ACTION, i),
            async {
                glommio::timer::sleep(timeout).await;
                Err("timeout".to_string())
            },
        )
        .await;
        match r {
            Ok(s) => break Ok(s),
            Err(reason) if attempt < set.c.retries && !sh.stop.load(Relaxed) => {
                bump(&ctx.retried, tagged(phase, reason));
                let backoff = 100u64 << attempt.min(6);
                let pause = backoff + jitter(i ^ ((attempt as u64) << 40)) % backoff;
                glommio::timer::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            Err(reason) => break Err(reason),
        }
    };
    ctx.establishing
        .set(ctx.establishing.get().saturating_sub(1));
    let (stream, partial) = match est {
        Ok(s) => s,
        Err(reason) => {
            sh.failed.fetch_add(1, Relaxed);
            bump(&ctx.failed, tagged(phase, reason));
            return;
        }
    };
    sh.seg_last[phase].fetch_max(mono_ns(), Relaxed);
    sh.seg_est[phase].fetch_add(1, Relaxed);
    sh.established.fetch_add(1, Relaxed);
    if sh.stop.load(Relaxed) {
        return; // the run is over: close at once
    }
    sh.open.fetch_add(1, Relaxed);
    let held = crate::held::Held::new(ctx.clone(), stream, partial, i);
    ctx.held.borrow_mut().push(glommio::spawn_local(held));
}
