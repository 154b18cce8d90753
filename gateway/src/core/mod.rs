//! Per-core state: the connection slab, the session (user) index, the room
//! index, the timing wheel and the metrics of one data-plane core. Owned by
//! that core's thread only (`Rc`/`RefCell`); other cores and the control
//! plane reach it through its inbox ([`CoreMsg`]).
//!
//! - `deliver.rs`: pushes and session operations, local and across cores.
//! - `delivery.rs`: reliable push on one connection, without I/O.
//! - `liveness.rs`: auth, idle and token deadlines, without I/O.
//! - `sweep.rs`: the per-tick pass over due connections (auth deadline,
//!   idle reaping, ack retransmit).
//! - `lifecycle.rs`: teardown of a connection, drain and stop of the core.
//! - `connz.rs`: connection inspection for the admin `/connz`.
//! - `overload.rs`: queueing delay, priority admission and token buckets.

pub mod aggregate;
mod conn;
pub mod connz;
mod deliver;
pub mod delivery;
pub mod expiry;
mod lifecycle;
pub mod liveness;
pub mod overload;
pub mod preauth;
pub mod push;
mod reach;
pub mod rooms;
mod session;
mod sweep;
pub mod timers;
pub mod wake;
pub mod wheel;

pub use conn::{ByKey, Conn, ConnKey, Extra, Flags, WsPhase};
pub use deliver::Tally;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::CloseReason;

use crate::auth::Verifier;
use crate::backend::{Backend, SessionOp, Target};
use crate::config::Config;
use crate::metrics::{CoreMetrics, Snapshot};
use push::Out;
pub use session::Members;
pub use wake::{CoreTx, Wake, WakeTx};
use wheel::{Tick, Wheel};

/// Bits of a connection id: core (8) | generation (24) | slab index (32).
pub fn conn_id(core: usize, gen: u32, idx: u32) -> u64 {
    ((core as u64 & 0xff) << 56) | ((gen as u64 & 0xff_ffff) << 32) | idx as u64
}
/// The core that holds a connection id.
pub fn conn_id_core(id: u64) -> usize {
    (id >> 56) as usize
}
pub fn conn_id_idx(id: u64) -> u32 {
    id as u32
}

/// Slots of the timing wheel (times `tick_ms` = how far ahead entries go).
const WHEEL_SLOTS: usize = 1024;

/// A message to a core from another core or from the control plane.
pub enum CoreMsg {
    /// A push encoded once (`body`, see `push.rs`), fanned out by each core.
    Push {
        target: Target,
        body: Bytes,
        ack_required: bool,
        priority: gw_proto::pb::Priority,
        /// Ack-required user and room pushes: counted by every core.
        tally: Option<Arc<Tally>>,
    },
    Op(SessionOp),
    Snapshot(flume::Sender<Snapshot>),
    /// New TLS settings (certificate reload) for connections from now on.
    Tls(Arc<rustls::ServerConfig>),
    /// A reload: the configuration and token keys from now on.
    Reload(Arc<Config>, Arc<Verifier>),
    /// Graceful: stop accepting, GoAway to every client, wait up to the
    /// drain deadline, close what is left, exit.
    Drain,
    /// Fast: close everything now, exit.
    Stop,
    /// Connection inspection (admin `/connz`): this core's matching connections.
    Connz(Arc<connz::ConnzQuery>, flume::Sender<connz::ConnzPart>),
}

/// Mutable state of one core.
pub struct State {
    pub conns: slab::Slab<Conn>,
    pub users: HashMap<Rc<str>, Members>,
    pub rooms: HashMap<Rc<str>, Members>,
    pub wheel: Wheel,
    next_gen: u32,
    pub sessions: u64,
    pub upstream_inflight: u32,
}

/// One data-plane core.
pub struct Core {
    pub index: usize,
    /// The configuration: this core's own copy (no shared reference
    /// count on the hot path), replaced on a reload (`Core::reload`).
    cfg: RefCell<Rc<Config>>,
    verifier: RefCell<Arc<Verifier>>,
    pub backend: Rc<dyn Backend>,
    pub metrics: CoreMetrics,
    pub state: RefCell<State>,
    /// Read buffer lent to one connection for the duration of one poll.
    pub scratch: RefCell<Box<[u8]>>,
    /// Inboxes of every core, this one included (index = core).
    pub mesh: Vec<CoreTx>,
    /// Connection cap of this core (config and RLIMIT_NOFILE).
    pub conns_max: u32,
    pub draining: Cell<bool>,
    /// How this core does socket I/O: epoll readiness, or io_uring.
    pub io: crate::sockets::Io,
    /// Connections to serve (ids), in order.
    work: RefCell<VecDeque<u64>>,
    /// The I/O loop's waker, woken when `work` gains an entry.
    io_waker: RefCell<Option<Waker>>,
    /// The listener has (or may have) connections to accept.
    pub accept_ready: Cell<bool>,
    accept_waker: RefCell<Option<Waker>>,
    /// The I/O loop / accept task has not ended yet.
    pub io_running: Cell<bool>,
    pub accept_running: Cell<bool>,
    pub ticks_running: Cell<bool>,
    /// The NATS inbound task (`nats::inbound`) has not ended yet.
    pub nats_running: Cell<bool>,
    /// Set on Stop: long-running tasks end.
    pub stopping: Cell<bool>,
    /// TLS server settings, when `[tls]` is configured (set after `new`,
    /// replaced on reload; sessions already running keep theirs).
    pub tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// Load signal, admission level and rate limits of this core.
    pub overload: overload::Overload,
    /// Subscription tickets, held logins and NATS outages (`reach.rs`).
    pub reach: reach::Reach,
    /// Timers of the core's tasks (`timers.rs`).
    pub timers: Rc<timers::Timers>,
    /// What unauthenticated connections buffer (`preauth.rs`).
    pub preauth: preauth::Preauth,
    pub preauth_log: crate::metrics::LogLimit,
    /// The reliable-push limits, in ticks (`delivery.rs`).
    pub delivery: Cell<delivery::Limits>,
    /// When each connection not authenticated yet was accepted, for the
    /// TLS-handshake and connect-to-AuthOk histograms (bounded by the
    /// connections; an entry leaves at login or teardown).
    pub accepted: RefCell<HashMap<u64, Instant>>,
    /// Hot rooms: batches, shedding, the rooms' upstream rate (`rooms.rs`).
    pub rooms: rooms::Rooms,
    /// Upstreams of aggregated routes gathering per room (`aggregate.rs`).
    pub aggregates: aggregate::Aggregates,
    start: Instant,
}

/// Bytes of the per-core read scratch buffer.
const SCRATCH_BYTES: usize = 64 * 1024;

impl Core {
    pub fn new(
        index: usize,
        cfg: Arc<Config>,
        verifier: Arc<Verifier>,
        backend: Rc<dyn Backend>,
        mesh: Vec<CoreTx>,
        conns_max: u32,
        io: crate::sockets::Io,
    ) -> Core {
        let load = overload::Overload::new(&cfg, index);
        let reach = reach::Reach::new(cfg.nats.enabled());
        let delivery = Cell::new(delivery::Limits::of(&cfg));
        Core {
            index,
            cfg: RefCell::new(Rc::new((*cfg).clone())),
            verifier: RefCell::new(verifier),
            backend,
            metrics: CoreMetrics::default(),
            // Sized for the cap up front: pages never touched cost no RSS, and
            // the slab never doubles (a copy of everything, twice the memory).
            state: RefCell::new(State {
                conns: slab::Slab::with_capacity(conns_max as usize),
                users: HashMap::with_capacity(conns_max as usize),
                rooms: HashMap::new(),
                wheel: Wheel::new(WHEEL_SLOTS),
                next_gen: 0,
                sessions: 0,
                upstream_inflight: 0,
            }),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            mesh,
            conns_max,
            draining: Cell::new(false),
            io,
            work: RefCell::new(VecDeque::new()),
            io_waker: RefCell::new(None),
            accept_ready: Cell::new(true),
            accept_waker: RefCell::new(None),
            io_running: Cell::new(true),
            accept_running: Cell::new(true),
            ticks_running: Cell::new(true),
            nats_running: Cell::new(false),
            stopping: Cell::new(false),
            tls: RefCell::new(None),
            overload: load,
            reach,
            timers: Default::default(),
            preauth: Default::default(),
            preauth_log: Default::default(),
            delivery,
            accepted: Default::default(),
            rooms: Default::default(),
            aggregates: Default::default(),
            start: Instant::now(),
        }
    }

    /// The configuration in force.
    pub fn cfg(&self) -> Rc<Config> {
        self.cfg.borrow().clone()
    }

    /// The token verifier in force.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.borrow().clone()
    }

    /// A reload (SIGHUP, `POST /reload`): the new configuration (what can
    /// change live; the control plane kept the rest) and token keys. Open
    /// connections keep their session; the new limits apply from their
    /// next use on.
    pub fn reload(&self, cfg: &Config, verifier: Arc<Verifier>) {
        self.delivery.set(delivery::Limits::of(cfg));
        self.overload.set_rates(cfg);
        *self.cfg.borrow_mut() = Rc::new(cfg.clone());
        *self.verifier.borrow_mut() = verifier;
    }

    /// Current tick (>= 1).
    pub fn now(&self) -> Tick {
        (self.start.elapsed().as_millis() / self.cfg().tick_ms as u128) as Tick + 1
    }

    /// A fine clock for latency histograms: µs since the core started,
    /// wrapping every 71 minutes (differences of it are right for
    /// anything shorter).
    pub fn clock_us(&self) -> u32 {
        self.start.elapsed().as_micros() as u32
    }

    /// Milliseconds to ticks, rounded up.
    pub fn ticks(&self, ms: u32) -> Tick {
        ms.div_ceil(self.cfg().tick_ms)
    }

    /// Sleeps on this core's timers (glommio's, or the io_uring loop's own).
    pub fn sleep(&self, d: Duration) -> timers::Sleep {
        self.timers.sleep(d)
    }

    pub fn tick_duration(&self) -> Duration {
        Duration::from_millis(self.cfg().tick_ms as u64)
    }

    /// Registers a new connection (slab entry, auth deadline, epoll);
    /// returns its id. On failure the caller still owns and closes `fd`.
    pub fn add_conn(&self, fd: i32) -> std::io::Result<u64> {
        let now = self.now();
        let mut st = self.state.borrow_mut();
        st.next_gen = st.next_gen % 0xff_fffe + 1;
        let gen = st.next_gen;
        let entry = st.conns.vacant_entry();
        let idx = entry.key() as u32;
        let id = conn_id(self.index, gen, idx);
        entry.insert(Conn::new(id, fd, now, self.cfg().heartbeat_interval_ms));
        let due = now + self.ticks(self.cfg().auth_timeout_ms);
        let at = st.wheel.schedule(ConnKey::from_id(id), due, 0);
        if let Err(e) = self.io.register(fd, id) {
            st.conns.remove(idx as usize);
            return Err(e);
        }
        if let Some(c) = st.conns.get_mut(idx as usize) {
            c.due = at;
            c.flags.set_queued(true); // serve it once: data may have arrived before registration
        }
        drop(st);
        self.accepted.borrow_mut().insert(id, Instant::now());
        self.push_work(id);
        self.wake_io();
        Ok(id)
    }

    /// Puts a connection on the ready list (once) and wakes the I/O loop.
    pub fn ready(&self, c: &mut Conn) {
        if !c.flags.queued() {
            c.flags.set_queued(true);
            self.push_work(c.id);
            self.wake_io();
        }
    }

    /// Puts a connection being served back at the end of the ready list.
    pub fn requeue(&self, c: &mut Conn) {
        c.flags.set_queued(true);
        self.push_work(c.id);
    }

    /// Appends to the ready list; the overload signal times how long it waits.
    fn push_work(&self, id: u64) {
        let mut work = self.work.borrow_mut();
        work.push_back(id);
        self.overload.queued(work.len());
    }

    /// The next connection to serve.
    pub fn next_ready(&self) -> Option<u64> {
        let mut work = self.work.borrow_mut();
        let id = work.pop_front()?;
        self.overload.dequeued(work.len());
        Some(id)
    }

    pub fn set_io_waker(&self, w: &Waker) {
        let mut slot = self.io_waker.borrow_mut();
        if !slot.as_ref().is_some_and(|old| old.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }

    /// Forgets the stored task wakers (stop): breaks the core ↔ task cycle.
    pub fn drop_wakers(&self) {
        self.io_waker.borrow_mut().take();
        self.accept_waker.borrow_mut().take();
    }

    pub fn wake_io(&self) {
        if let Some(w) = self.io_waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// The listener has news (readiness or a drain): wake the accept task.
    pub fn listener_ready(&self) {
        self.accept_ready.set(true);
        if let Some(w) = self.accept_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves when the listener may have connections to accept, or on drain.
    pub fn accept_wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.accept_ready.get() || self.draining.get() {
                std::task::Poll::Ready(())
            } else {
                *self.accept_waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
    }

    pub fn conn_count(&self) -> usize {
        self.state.borrow().conns.len()
    }

    /// Runs `f` on the connection if it still is `id`.
    pub fn with_conn<R>(&self, key: ConnKey, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        let mut st = self.state.borrow_mut();
        st.conns.by_key(key).map(f)
    }

    /// Queues a frame for a connection. Over `outbound_bytes_max` the
    /// connection is closed as a slow consumer and false is returned.
    pub fn send_frame(&self, key: ConnKey, body: Body) -> bool {
        let bytes = gw_proto::encode(&Frame { body: Some(body) });
        let mut st = self.state.borrow_mut();
        match st.conns.by_key(key) {
            Some(c) => self.enqueue(c, Out::frame(bytes)),
            None => false,
        }
    }

    /// Queues an encoded item; the slow-consumer check lives here.
    fn enqueue(&self, c: &mut Conn, out: Out) -> bool {
        if c.close.is_some() {
            return false;
        }
        let len = out.len() as u32;
        if c.out_bytes.saturating_add(len) > self.cfg().outbound_bytes_max {
            self.slow_consumer(c, "outbound_bytes_max reached");
            return false;
        }
        self.push_out(c, out);
        self.ready(c);
        true
    }

    /// Closes a connection as a slow consumer (`why`: which limit), counted
    /// and logged with what it had queued.
    fn slow_consumer(&self, c: &mut Conn, why: &'static str) {
        CoreMetrics::inc(&self.metrics.slow_consumers);
        tracing::debug!(conn_id = c.id, queued = c.out_bytes, why, "slow consumer");
        c.close = Some(CloseReason::SlowConsumer);
        self.ready(c);
    }

    /// Appends to the outbound queue and counts it (no limit check).
    fn push_out(&self, c: &mut Conn, out: Out) {
        let out = if c.ws_open() {
            crate::wire::ws::wrap(out)
        } else {
            out
        };
        self.push_out_raw(c, out);
    }

    /// Queues bytes as they are (WebSocket control frames, HTTP replies).
    pub fn push_out_raw(&self, c: &mut Conn, out: Out) {
        c.out_bytes = c.out_bytes.saturating_add(out.len() as u32);
        c.out.push_back(out);
        CoreMetrics::inc(&self.metrics.frames_out);
    }

    /// Marks a connection for closing; the I/O loop tears it down. A final
    /// frame (GoAway, AuthError, Error) may be queued first with `last`.
    /// The final frame is queued past `outbound_bytes_max` (it is small and
    /// the connection ends anyway), so the close keeps its own reason.
    pub fn close(&self, key: ConnKey, reason: CloseReason, last: Option<Body>) {
        let last = last.map(|body| gw_proto::encode(&Frame { body: Some(body) }));
        self.with_conn(key, |c| {
            if c.close.is_some() {
                return;
            }
            if let Some(bytes) = last {
                self.push_out(c, Out::frame(bytes));
            }
            c.close = Some(reason);
            self.ready(c);
        });
    }

    /// Error frame helper.
    pub fn error_body(
        code: gw_proto::ErrorCode,
        message: impl Into<String>,
        retry_after_ms: u32,
    ) -> Body {
        Body::Error(pb::Error {
            code: code as i32,
            message: message.into(),
            retry_after_ms,
        })
    }

    /// Schedules the connection's next wheel check at `due` (keeps an earlier one).
    pub fn schedule(&self, key: ConnKey, due: Tick) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        if let Some(c) = st.conns.by_key(key) {
            c.due = st.wheel.schedule(key, due, c.due);
        }
    }

    /// Snapshot of this core's metrics and gauges.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.borrow();
        let mut s = self.metrics.snapshot(
            self.index,
            st.conns.len() as u64,
            st.sessions,
            st.rooms.len() as u64,
        );
        (s.admission_level, s.queue_delay_us) = self.overload.gauges();
        let cfg = self.cfg();
        s.hot_rooms_now = self.rooms.hot_count(|r| cfg.rooms.named_hot(r));
        s.hot_rooms = self.rooms.stats(self.index);
        s
    }
}

#[cfg(test)]
mod tests {
    /// The connection record is most of what an idle connection costs in
    /// user space (ARCHITECTURE.md §10): a field added here is paid a
    /// million times. Grow it only on purpose, and update the figure.
    #[test]
    fn conn_record_stays_within_its_budget() {
        assert_eq!(std::mem::size_of::<super::Conn>(), 200);
    }
}
