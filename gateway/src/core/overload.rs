//! Overload control of one core, after WeChat's DAGOR (FIELD_NOTES.md,
//! "Overload"): measure the core's queueing delay, admit upstream frames by
//! priority, cut fast and recover slowly; plus token buckets for accepts,
//! per-connection upstream frames and per-room broadcasts.
//!
//! - **Signal**: how long work waits on the core. Two sources feed one
//!   average per window: the ready list (a marker follows each generation
//!   of queued connections from the moment it is queued to the moment its
//!   last member is served; each member counts) and the lateness of the
//!   core's tick timer (what any task waits for the executor).
//! - **Admission level** ([`Controller`]): an upstream frame has a priority
//!   `business × 128 + user` (business from `route_priority`: high 0,
//!   normal 1, low 2; user = a hash of the user id with a salt that changes
//!   every `user_priority_period_s`, so a shed user stays shed for the
//!   period instead of every user losing a random share). Frames with a
//!   priority under the level are admitted. Each window (`queue_delay_window_ms`
//!   or 2,000 upstream frames) the controller looks at the histogram of
//!   priorities it saw: over `queue_delay_max_ms` it lowers the level until
//!   `shed_alpha_pct` fewer frames would have been admitted, under it it
//!   raises the level until `shed_beta_pct` more would have been. Auth,
//!   Ping and Ack never pass through it.
//! - **Buckets** ([`Bucket`]): integer milli-tokens refilled on the tick
//!   clock, 8 bytes each: one per core for accepts, one per connection
//!   (in `Conn`) for upstream frames, one per room with broadcasts on the
//!   core (a side table pruned against the room index).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::wheel::Tick;

/// User priority levels within one business priority (DAGOR uses 128; a
/// power of two: the user level is the top 7 bits of a hash).
pub const USER_LEVELS: u16 = 128;
/// Priority levels in all: high, normal and low business priority.
pub const LEVELS: u16 = 3 * USER_LEVELS;
/// Upstream frames that end a window early (DAGOR: 1 s or 2,000 requests).
pub const WINDOW_ARRIVALS_MAX: u32 = 2_000;
/// A window with fewer upstream frames never lowers the level: shedding a
/// handful of frames relieves nothing, and a short stall (a descheduled
/// thread) must not shed the few requests of a quiet core.
pub const SHED_ARRIVALS_MIN: u32 = 64;
/// Largest burst of any bucket (milli-tokens must fit in 32 bits).
use crate::config::overload::BURST_MAX;
pub use crate::config::overload::{OverloadConfig, RoutePriority};

/// Rate and size of a family of buckets, on the tick clock.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    per_s: u32,
    burst_milli: u32,
    tick_ms: u32,
}

impl Rate {
    /// None when `per_s` is 0 (no limit).
    pub fn new(per_s: u32, burst: u32, tick_ms: u32) -> Option<Rate> {
        (per_s > 0).then(|| Rate {
            per_s,
            burst_milli: burst.clamp(1, BURST_MAX) * 1000,
            tick_ms: tick_ms.max(1),
        })
    }
}

/// A token bucket: milli-tokens and the tick they were counted at (0 = never
/// used, full). Refilled lazily when a token is asked for; integer only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    milli: u32,
    at: Tick,
}

impl Bucket {
    /// Takes one token at tick `now`, or says in how many ms one is there.
    pub fn take(&mut self, rate: &Rate, now: Tick) -> Result<(), u32> {
        let milli = if self.at == 0 {
            rate.burst_milli
        } else {
            // tokens/s × ms = milli-tokens.
            let gained = u64::from(now.saturating_sub(self.at))
                * u64::from(rate.tick_ms)
                * u64::from(rate.per_s);
            (u64::from(self.milli) + gained).min(u64::from(rate.burst_milli)) as u32
        };
        self.at = now.max(1);
        if milli >= 1000 {
            self.milli = milli - 1000;
            return Ok(());
        }
        self.milli = milli;
        // Milli-tokens ÷ tokens/s = ms; refills come whole ticks at a time.
        let ms = (1000 - milli).div_ceil(rate.per_s);
        Err(ms.div_ceil(rate.tick_ms) * rate.tick_ms)
    }
}

/// The admission level and the delay average of one core, with no clock of
/// its own (samples and window ends are given), so it can be tested alone.
pub struct Controller {
    /// Priorities under this are admitted; `LEVELS` admits everything.
    level: u16,
    /// Upstream frames seen in this window, by priority.
    hist: Box<[u32]>,
    arrivals: u32,
    delay_sum_us: u64,
    delay_weight: u64,
    /// Average of the last window, µs.
    delay_avg_us: u64,
    delay_max_us: u64,
    alpha_pct: u64,
    beta_pct: u64,
}

impl Controller {
    pub fn new(cfg: &OverloadConfig) -> Controller {
        Controller {
            level: LEVELS,
            hist: vec![0; LEVELS as usize].into_boxed_slice(),
            arrivals: 0,
            delay_sum_us: 0,
            delay_weight: 0,
            delay_avg_us: 0,
            delay_max_us: u64::from(cfg.queue_delay_max_ms) * 1000,
            alpha_pct: u64::from(cfg.shed_alpha_pct),
            beta_pct: u64::from(cfg.shed_beta_pct),
        }
    }

    pub fn level(&self) -> u16 {
        self.level
    }

    /// Average queueing delay of the last window, µs.
    pub fn delay_us(&self) -> u64 {
        self.delay_avg_us
    }

    /// Counts an upstream frame of priority `p`; true when it is admitted.
    pub fn arrive(&mut self, p: u16) -> bool {
        if let Some(n) = self.hist.get_mut(p as usize) {
            *n = n.saturating_add(1);
        }
        self.arrivals = self.arrivals.saturating_add(1);
        p < self.level
    }

    /// A delay sample: `weight` items waited `us` each, on average.
    pub fn observe(&mut self, us: u64, weight: u64) {
        self.delay_sum_us = self.delay_sum_us.saturating_add(us.saturating_mul(weight));
        self.delay_weight = self.delay_weight.saturating_add(weight);
    }

    /// Enough upstream frames for a window.
    pub fn window_full(&self) -> bool {
        self.arrivals >= WINDOW_ARRIVALS_MAX
    }

    /// Ends a window: averages the delay, moves the level, starts afresh.
    pub fn close_window(&mut self) {
        self.delay_avg_us = self
            .delay_sum_us
            .checked_div(self.delay_weight)
            .unwrap_or(0);
        let overloaded = self.delay_max_us > 0 && self.delay_avg_us > self.delay_max_us;
        let admitted: u64 = self.hist[..self.level as usize]
            .iter()
            .map(|&n| u64::from(n))
            .sum();
        if overloaded {
            if self.arrivals >= SHED_ARRIVALS_MIN && admitted > 0 {
                // Cut fast: the highest level admitting at most (1 - α) of
                // what was admitted; below the current one, as admitted > target.
                let target = admitted * (100 - self.alpha_pct) / 100;
                let mut cum = 0u64;
                let mut level = 0;
                while level < self.level && cum + u64::from(self.hist[level as usize]) <= target {
                    cum += u64::from(self.hist[level as usize]);
                    level += 1;
                }
                self.level = level;
            }
        } else if self.level < LEVELS {
            // Recover slowly: admit up to (1 + β) of what was admitted, and
            // at least one more level, so a quiet core opens up again.
            let target = admitted + (admitted * self.beta_pct).div_ceil(100);
            let mut cum = admitted;
            let mut level = self.level;
            while level < LEVELS && cum + u64::from(self.hist[level as usize]) <= target {
                cum += u64::from(self.hist[level as usize]);
                level += 1;
            }
            self.level = level.max(self.level + 1).min(LEVELS);
        }
        self.hist.fill(0);
        self.arrivals = 0;
        self.delay_sum_us = 0;
        self.delay_weight = 0;
    }
}

/// Priority of an upstream frame: lower is more important.
pub fn priority(business: RoutePriority, user: &str, salt: u64) -> u16 {
    // FNV-1a over the salt and the user id: stable across cores and nodes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in user.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // The top 7 bits after a final multiply: FNV's low bits mix poorly.
    let user_level = ((h ^ (h >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as u16;
    business.rank() * USER_LEVELS + user_level
}

/// The salt of the period that `unix_s` falls in (the same on every node).
pub fn salt(unix_s: u64, period_s: u32) -> u64 {
    let mut z = (unix_s / u64::from(period_s.max(1))).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The overload state of one core (in `Core`).
pub struct Overload {
    ctl: RefCell<Controller>,
    shedding: bool,
    routes: HashMap<Box<str>, RoutePriority>,
    period_s: u32,
    salt: Cell<u64>,
    window: Duration,
    window_start: Cell<Instant>,
    /// The ready-list marker: when the current generation was queued, how
    /// many of it are left, how many it had, and whether it still grows.
    mark: Cell<Option<Instant>>,
    mark_left: Cell<u32>,
    mark_len: Cell<u32>,
    mark_open: Cell<bool>,
    upstream_rate: Cell<Option<Rate>>,
    accept_rate: Cell<Option<Rate>>,
    accept: Cell<Bucket>,
    room_rate: Cell<Option<Rate>>,
    rooms: RefCell<HashMap<Rc<str>, Bucket>>,
    rng: Cell<u64>,
}

impl Overload {
    pub fn new(cfg: &crate::Config, core: usize) -> Overload {
        let o = &cfg.overload;
        let now = Instant::now();
        let unix = unix_s();
        let load = Overload {
            ctl: RefCell::new(Controller::new(o)),
            shedding: o.queue_delay_max_ms > 0,
            routes: o
                .route_priority
                .iter()
                .map(|(r, p)| (r.as_str().into(), *p))
                .collect(),
            period_s: o.user_priority_period_s,
            salt: Cell::new(salt(unix, o.user_priority_period_s)),
            window: Duration::from_millis(u64::from(o.queue_delay_window_ms)),
            window_start: Cell::new(now),
            mark: Cell::new(None),
            mark_left: Cell::new(0),
            mark_len: Cell::new(0),
            mark_open: Cell::new(false),
            upstream_rate: Cell::new(None),
            accept_rate: Cell::new(None),
            accept: Cell::new(Bucket::default()),
            room_rate: Cell::new(None),
            rooms: RefCell::new(HashMap::new()),
            rng: Cell::new(salt(unix.wrapping_add(core as u64), 1) | 1),
        };
        load.set_rates(cfg);
        load
    }

    /// Takes the rate limits from `cfg` (at start, and on a reload: the
    /// buckets keep their fill).
    pub fn set_rates(&self, cfg: &crate::Config) {
        let o = &cfg.overload;
        self.upstream_rate.set(Rate::new(
            o.upstream_rate_per_conn_per_s,
            o.upstream_burst,
            cfg.tick_ms,
        ));
        self.accept_rate.set(Rate::new(
            o.accept_rate_per_core_per_s,
            o.accept_burst,
            cfg.tick_ms,
        ));
        self.room_rate.set(Rate::new(
            o.room_broadcast_rate_per_s,
            o.room_burst,
            cfg.tick_ms,
        ));
    }

    /// Admission of one upstream frame on `route` from `user`.
    pub fn admit_upstream(&self, route: &str, user: &str) -> bool {
        if !self.shedding {
            return true;
        }
        let business = match self.routes.is_empty() {
            true => RoutePriority::Normal,
            false => self.routes.get(route).copied().unwrap_or_default(),
        };
        let p = priority(business, user, self.salt.get());
        self.ctl.borrow_mut().arrive(p)
    }

    /// One upstream frame against a connection's bucket.
    pub fn take_upstream(&self, b: &mut Bucket, now: Tick) -> Result<(), u32> {
        match &self.upstream_rate.get() {
            Some(r) => b.take(r, now),
            None => Ok(()),
        }
    }

    /// One new connection against the core's accept bucket.
    pub fn take_accept(&self, now: Tick) -> Result<(), u32> {
        let Some(r) = &self.accept_rate.get() else {
            return Ok(());
        };
        let mut b = self.accept.get();
        let res = b.take(r, now);
        self.accept.set(b);
        res
    }

    /// One push to a room against its bucket. `live` tells which rooms still
    /// have members here; buckets of the others are dropped now and then.
    pub fn take_room(&self, room: &Rc<str>, now: Tick, live: impl Fn(&str) -> bool) -> bool {
        let Some(r) = &self.room_rate.get() else {
            return true;
        };
        let mut rooms = self.rooms.borrow_mut();
        if let Some(b) = rooms.get_mut(&**room) {
            return b.take(r, now).is_ok();
        }
        if rooms.len() >= 64 && rooms.len() >= rooms.capacity() {
            rooms.retain(|k, _| live(k)); // before the table would grow
        }
        let mut b = Bucket::default();
        let ok = b.take(r, now).is_ok();
        rooms.insert(room.clone(), b);
        ok
    }

    /// The ready list grew to `len`: a new generation starts when there is
    /// none, and joins the open one until its first member is served.
    pub fn queued(&self, len: usize) {
        if self.mark.get().is_none() {
            self.mark.set(Some(Instant::now()));
            self.mark_open.set(true);
        } else if !self.mark_open.get() {
            return;
        }
        self.mark_left.set(len as u32);
        self.mark_len.set(len as u32);
    }

    /// A connection was taken off the ready list; `len` are left.
    pub fn dequeued(&self, len: usize) {
        let Some(t) = self.mark.get() else { return };
        self.mark_open.set(false);
        let left = self.mark_left.get().saturating_sub(1);
        self.mark_left.set(left);
        if left > 0 {
            return;
        }
        let now = Instant::now();
        let n = u64::from(self.mark_len.get().max(1));
        // Served one after another, the n members waited (n+1)/2n of it on average.
        let waited = now.duration_since(t).as_micros() as u64 * (n + 1) / (2 * n);
        self.ctl.borrow_mut().observe(waited, n);
        if len > 0 {
            self.mark.set(Some(now));
            self.mark_left.set(len as u32);
            self.mark_len.set(len as u32);
        } else {
            self.mark.set(None);
        }
    }

    /// Once per tick: the tick was `late`; ends the window when it is due.
    pub fn on_tick(&self, late: Duration, now: Instant) {
        let mut ctl = self.ctl.borrow_mut();
        ctl.observe(late.as_micros() as u64, 1);
        if now.duration_since(self.window_start.get()) < self.window && !ctl.window_full() {
            return;
        }
        let before = ctl.level();
        ctl.close_window();
        let (level, queue_delay_us) = (ctl.level(), ctl.delay_us());
        if level < before {
            tracing::warn!(
                queue_delay_us,
                level,
                before,
                "overload: shedding upstream frames by priority ({LEVELS} levels admit all)"
            );
        } else if level > before {
            tracing::info!(
                queue_delay_us,
                level,
                before,
                "overload: admitting more upstream frames ({LEVELS} levels admit all)"
            );
        }
        self.window_start.set(now);
        self.salt.set(salt(unix_s(), self.period_s));
    }

    /// The admission level (of `LEVELS`) and the last window's delay, µs.
    /// Whether the core sheds load now (the admission level is under
    /// all): room pushes of LOW priority are dropped then (`rooms.rs`).
    pub fn shedding(&self) -> bool {
        self.ctl.borrow().level() < LEVELS
    }

    pub fn gauges(&self) -> (u64, u64) {
        let ctl = self.ctl.borrow();
        (u64::from(ctl.level()), ctl.delay_us())
    }

    /// A random 0..=max, to spread the retries of refused clients.
    pub fn jitter(&self, max: u32) -> u32 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x % (u64::from(max) + 1)) as u32
    }
}

#[cfg(test)]
mod tests;
