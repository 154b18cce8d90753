//! The `hold` scenario of the flood client: its options, and what each
//! glommio executor runs. Each connection is set up by a short-lived task
//! (connect, Auth, wait for AuthOk) that then hands the socket to a
//! [`Held`] task of about 170 bytes that pings on schedule and discards
//! what arrives. Reads go through one scratch buffer per thread
//! ([`crate::net::poll_frames`]), so a held connection owns no buffer.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::poll_fn;
use futures_lite::{AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use gw_proto::Body;
use hdrhistogram::Histogram;

use crate::net::{self, RxEnd};
use crate::wire::{self, body_name, close_reason_name, errno_name, error_code_name};

/// Options of `flood hold`.
#[derive(clap::Args, Clone, Debug)]
pub struct HoldArgs {
    /// Gateway client address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Connections to open (this process; it must stay under its RLIMIT_NOFILE).
    #[arg(long, default_value_t = 1000)]
    pub conns: u64,
    /// New connections per second, paced evenly.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Ping interval, ms; also asked of the server in Auth. The first ping
    /// of each connection comes after a random part of one interval.
    #[arg(long, default_value_t = 30_000)]
    pub heartbeat_ms: u32,
    /// Seconds to hold once every connection is up (or failed).
    #[arg(long, default_value_t = 10)]
    pub hold_s: u64,
    /// HS256 secret [default: the gateway's public demo secret, kid "demo"].
    #[arg(long)]
    pub secret: Option<String>,
    /// Token header `kid` [default: "demo" with the demo secret, none with --secret].
    #[arg(long)]
    pub kid: Option<String>,
    /// Token lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_s: u64,
    /// Device id sent in Auth.
    #[arg(long, default_value = "d")]
    pub device: String,
    /// User ids are u<first-id + i>; give each flood process its own range.
    #[arg(long, default_value_t = 0)]
    pub first_id: u64,
    /// Spread connections over this many source addresses counting up from
    /// --source-base (bind + IP_BIND_ADDRESS_NO_PORT); 0 = let the kernel pick.
    #[arg(long, default_value_t = 0)]
    pub sources: u32,
    /// First source address.
    #[arg(long, default_value = "127.0.0.2")]
    pub source_base: Ipv4Addr,
    /// glommio executors (threads) sharing the connections.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Deadline for connect + auth of one connection, ms.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Processes whose VmRSS is sampled and summed (repeatable).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// RSS sampling interval, ms.
    #[arg(long, default_value_t = 1000)]
    pub sample_ms: u64,
    /// Write the report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write this file (a one-line JSON summary) once every connection is up or failed.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// Counters shared by the executors and the reporting thread.
#[derive(Default)]
pub struct Shared {
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub open: AtomicU64,
    pub dropped: AtomicU64,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub other_frames: AtomicU64,
    /// Microseconds from the start to the latest AuthOk.
    pub last_established_us: AtomicU64,
    pub stop: AtomicBool,
}

/// Settings every connection task reads.
pub struct Settings {
    pub args: HoldArgs,
    pub secret: Vec<u8>,
    pub kid: Option<String>,
    pub start: Instant,
}

/// Per-executor state shared by its connection tasks.
pub struct Ctx {
    set: Arc<Settings>,
    shared: Arc<Shared>,
    ping: Bytes,
    connect_us: RefCell<Histogram<u64>>,
    auth_us: RefCell<Histogram<u64>>,
    failed: RefCell<BTreeMap<String, u64>>,
    dropped: RefCell<BTreeMap<String, u64>>,
    /// Tasks of the established connections; dropping them closes them.
    held: RefCell<Vec<glommio::Task<()>>>,
    /// Connection tasks still connecting or authenticating.
    establishing: Cell<u64>,
}

/// What one executor hands back at the end.
pub struct ExecOut {
    pub connect_us: Histogram<u64>,
    pub auth_us: Histogram<u64>,
    pub failed: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    pub task_bytes: usize,
}

/// An empty latency histogram in microseconds (1 us .. 1 h).
pub fn histogram() -> Histogram<u64> {
    // 1 us .. 1 h, 3 significant digits; bounds are valid constants.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u64::MAX as u128) as u64
}

fn bump(map: &RefCell<BTreeMap<String, u64>>, reason: String) {
    *map.borrow_mut().entry(reason).or_insert(0) += 1;
}

/// Deterministic spread of the first ping (splitmix64 of the index).
fn jitter(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rx_end_name(phase: &str, e: RxEnd) -> String {
    match e {
        RxEnd::Eof => format!("{phase}:closed"),
        RxEnd::Io(e) => format!("{phase}:{}", errno_name(&e)),
        RxEnd::BadFrame(_) => format!("{phase}:bad_frame"),
    }
}

/// Connects, sends Auth, waits for the answer. Err: the failure reason.
async fn establish(ctx: &Ctx, i: u64, t0: Instant) -> Result<(TcpStream, Vec<u8>), String> {
    let a = &ctx.set.args;
    let source = (a.sources > 0).then(|| {
        IpAddr::V4(net::source_addr(
            a.source_base,
            (i % a.sources as u64) as u32,
        ))
    });
    let sock =
        net::start_connect(a.target, source).map_err(|e| format!("socket:{}", errno_name(&e)))?;
    let mut stream = net::into_glommio(sock);
    net::wait_connected(&mut stream)
        .await
        .map_err(|e| format!("connect:{}", errno_name(&e)))?;
    ctx.connect_us.borrow_mut().saturating_record(micros(t0));
    let user = format!("u{}", a.first_id + i);
    let token = wire::token(
        &ctx.set.secret,
        ctx.set.kid.as_deref(),
        &user,
        a.token_ttl_s,
    );
    let auth = wire::auth_frame(token, &a.device, a.heartbeat_ms);
    stream
        .write_all(&auth)
        .await
        .map_err(|e| format!("write:{}", errno_name(&e)))?;
    let mut partial = Vec::new();
    let mut outcome: Option<Result<(), String>> = None;
    poll_fn(|cx| {
        let r = net::poll_frames(&mut stream, &mut partial, cx, 4, &mut |b| {
            if outcome.is_some() {
                return;
            }
            outcome = Some(match b {
                Body::AuthOk(_) => Ok(()),
                Body::AuthError(e) => Err(format!("auth_error:{}", error_code_name(e.code))),
                Body::Error(e) => Err(format!("error:{}", error_code_name(e.code))),
                Body::GoAway(g) => Err(format!("goaway:{}", close_reason_name(g.reason))),
                other => Err(format!("unexpected:{}", body_name(&other))),
            });
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
                outcome = Some(Err(rx_end_name("before_auth", e)));
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    match outcome {
        Some(Ok(())) => Ok((stream, partial)),
        Some(Err(reason)) => Err(reason),
        None => Err("before_auth:closed".into()),
    }
}

/// Why a held connection ended, noted from the last frame (no allocation).
#[derive(Clone, Copy)]
enum Note {
    None,
    GoAway(i32),
    Error(i32),
}

/// A held connection: pings on schedule and discards what arrives until the
/// connection ends. A hand-written future (about 170 bytes) in a task of
/// its own, so the much larger establish state is freed once auth is done.
pub struct Held {
    ctx: Rc<Ctx>,
    stream: TcpStream,
    /// Bytes of an incomplete frame (unallocated when idle).
    partial: Vec<u8>,
    timer: Timer,
    /// Bytes of the current ping already written (None = no ping due).
    ping_off: Option<u8>,
    note: Note,
}

impl Held {
    fn new(ctx: Rc<Ctx>, stream: TcpStream, partial: Vec<u8>, i: u64) -> Held {
        let hb_ms = ctx.set.args.heartbeat_ms.max(1) as u64;
        Held {
            ctx,
            stream,
            partial,
            timer: Timer::new(Duration::from_millis(jitter(i) % hb_ms)),
            ping_off: None,
            note: Note::None,
        }
    }

    /// Ready(reason) when the connection ended.
    fn step(&mut self, cx: &mut std::task::Context<'_>) -> Poll<String> {
        let sh = &*self.ctx.shared;
        let note = &mut self.note;
        let r = net::poll_frames(
            &mut self.stream,
            &mut self.partial,
            cx,
            8,
            &mut |b| match b {
                Body::Pong(_) => {
                    sh.pongs.fetch_add(1, Relaxed);
                }
                Body::GoAway(g) => *note = Note::GoAway(g.reason),
                Body::Error(e) => *note = Note::Error(e.code),
                _ => {
                    sh.other_frames.fetch_add(1, Relaxed);
                }
            },
        );
        if let Note::GoAway(r) = self.note {
            // A well-behaved client leaves on GoAway (a drain waits for it).
            return Poll::Ready(format!("goaway:{}", close_reason_name(r)));
        }
        match r {
            Poll::Ready(Ok(())) => cx.waker().wake_by_ref(),
            Poll::Ready(Err(e)) => {
                return Poll::Ready(match self.note {
                    Note::GoAway(r) => format!("goaway:{}", close_reason_name(r)),
                    Note::Error(c) => format!("error:{}", error_code_name(c)),
                    Note::None => rx_end_name("held", e),
                });
            }
            Poll::Pending => {}
        }
        let ping = &self.ctx.ping;
        loop {
            let Some(off) = self.ping_off else {
                if Pin::new(&mut self.timer).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.timer.reset(Duration::from_millis(
                    self.ctx.set.args.heartbeat_ms.max(1) as u64
                ));
                self.ping_off = Some(0);
                continue;
            };
            let off = off as usize;
            match Pin::new(&mut self.stream).poll_write(cx, &ping[off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready("held:write_zero".into()),
                Poll::Ready(Ok(n)) if off + n >= ping.len() => {
                    self.ping_off = None;
                    sh.pings.fetch_add(1, Relaxed);
                }
                // A ping frame is a few bytes: the offset fits in u8.
                Poll::Ready(Ok(n)) => self.ping_off = Some((off + n) as u8),
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(format!("held:write:{}", errno_name(&e)))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Future for Held {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.step(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(why) => {
                let sh = &this.ctx.shared;
                sh.open.fetch_sub(1, Relaxed);
                sh.dropped.fetch_add(1, Relaxed);
                bump(&this.ctx.dropped, why);
                Poll::Ready(())
            }
        }
    }
}

/// Establishes connection `i` and hands it to a [`Held`] task of its own.
async fn conn_task(ctx: Rc<Ctx>, i: u64) {
    let t0 = Instant::now();
    let timeout = Duration::from_millis(ctx.set.args.timeout_ms.max(1));
    let est = futures_lite::future::or(establish(&ctx, i, t0), async {
        glommio::timer::sleep(timeout).await;
        Err("timeout".to_string())
    })
    .await;
    ctx.establishing
        .set(ctx.establishing.get().saturating_sub(1));
    let sh = &ctx.shared;
    let (stream, partial) = match est {
        Ok(s) => s,
        Err(reason) => {
            sh.failed.fetch_add(1, Relaxed);
            bump(&ctx.failed, reason);
            return;
        }
    };
    ctx.auth_us.borrow_mut().saturating_record(micros(t0));
    sh.last_established_us
        .fetch_max(micros(ctx.set.start), Relaxed);
    sh.established.fetch_add(1, Relaxed);
    if sh.stop.load(Relaxed) {
        return; // the hold is over: close at once
    }
    sh.open.fetch_add(1, Relaxed);
    let held = Held::new(ctx.clone(), stream, partial, i);
    ctx.held.borrow_mut().push(glommio::spawn_local(held));
}

/// Runs executor `k` of `cores`: paces its share of the connections, then
/// waits for the stop flag and drops (cancels, closes) every connection.
pub async fn executor_main(set: Arc<Settings>, shared: Arc<Shared>, k: u64) -> ExecOut {
    let a = &set.args;
    let cores = a.cores as u64;
    let n_k = a.conns / cores + u64::from(k < a.conns % cores);
    let rate_k = a.rate / cores as f64;
    let ctx = Rc::new(Ctx {
        set: set.clone(),
        shared: shared.clone(),
        ping: wire::ping_frame(),
        connect_us: RefCell::new(histogram()),
        auth_us: RefCell::new(histogram()),
        failed: RefCell::new(BTreeMap::new()),
        dropped: RefCell::new(BTreeMap::new()),
        held: RefCell::new(Vec::with_capacity(n_k as usize)),
        establishing: Cell::new(0),
    });
    let task_bytes = std::mem::size_of::<Held>();
    let start = Instant::now();
    let mut spawned = 0u64;
    while spawned < n_k && !shared.stop.load(Relaxed) {
        let due = ((start.elapsed().as_secs_f64() * rate_k) as u64 + 1).min(n_k);
        while spawned < due {
            let i = k + spawned * cores;
            ctx.establishing.set(ctx.establishing.get() + 1);
            glommio::spawn_local(conn_task(ctx.clone(), i)).detach();
            spawned += 1;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    while !shared.stop.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // Close every held connection; connections still being set up end
    // within --timeout-ms and see the stop flag.
    let deadline = Instant::now() + Duration::from_millis(a.timeout_ms) + Duration::from_secs(1);
    loop {
        drop(ctx.held.take());
        if ctx.establishing.get() == 0 || Instant::now() >= deadline {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    ExecOut {
        connect_us: ctx.connect_us.replace(histogram()),
        auth_us: ctx.auth_us.replace(histogram()),
        failed: ctx.failed.take(),
        dropped: ctx.dropped.take(),
        task_bytes,
    }
}
