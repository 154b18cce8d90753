//! `[rooms]`: live rooms at scale, coalescing and shedding of room pushes
//! and the rooms' upstream rate (the mechanism: `core/rooms.rs`).

use serde::{Deserialize, Serialize};

use super::overload::BURST_MAX;

/// Longest coalescing window, ms.
pub const COALESCE_WINDOW_MAX_MS: u32 = 5_000;
/// Most pushes one batch may carry.
pub const BATCH_PUSHES_MAX: u32 = 10_000;
/// Most `hot` patterns.
pub const HOT_PATTERNS_MAX: usize = 1_024;
/// Longest room name in `rooms.hot` (without a trailing `*`): the NATS
/// contract's room name limit (`nats::contract::NAME_BYTES_MAX`).
pub const HOT_NAME_BYTES_MAX: usize = 256;
/// Most routes in `aggregate_routes`.
pub const AGGREGATE_ROUTES_MAX: usize = 64;
/// Most items of one aggregated upstream request.
pub const AGGREGATE_ITEMS_MAX: u32 = 10_000;
/// Most bytes of one aggregated upstream request.
pub const AGGREGATE_BYTES_MAX: u32 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// A hot room's pushes (not ack-required, not HIGH) are gathered for
    /// this long on each core and go to each member as one batch, ms.
    pub coalesce_window_ms: u32,
    /// Rooms always hot: exact names, or prefixes ending in `*`
    /// (`"live-*"`).
    pub hot: Vec<String>,
    /// A room becomes hot on a core once its pushes there pass this rate,
    /// and cools after a window under half of it, per s; 0 = only rooms
    /// named in `hot` or marked by a backend.
    pub hot_rate_per_s: u32,
    /// Pushes one batch of `coalesce_window_ms` may carry (a stretched
    /// window carries proportionally more, up to 10,000); past it LOW and
    /// NORMAL pushes of the room are dropped until the window ends (HIGH
    /// are never dropped).
    pub batch_pushes_max: u32,
    /// Batch frames one hot room may cause per second on one core: a room
    /// with more members there than `frames_per_s_max *
    /// coalesce_window_ms / 1000` gathers for longer (members * 1000 /
    /// frames_per_s_max ms), up to `coalesce_window_max_ms`; 0 = not
    /// stretched by members.
    pub frames_per_s_max: u32,
    /// Longest window of a stretched room, and the window of every hot
    /// room while the core sheds load (overload), ms; a
    /// `coalesce_window_ms` longer than this wins.
    pub coalesce_window_max_ms: u32,
    /// Upstream frames naming a room (`Upstream.room`) per second per
    /// room, per core; over it: BUSY; 0 = no limit.
    pub upstream_rate_per_s: u32,
    /// Upstream frames a room takes at once before the rate applies.
    pub upstream_burst: u32,
    /// Routes whose upstream frames naming a room (`Upstream.room`) are
    /// gathered per room and core for `coalesce_window_ms` and sent to the
    /// backend as one request (an UpstreamBatch, PROTOCOL.md §14.2.1); empty
    /// = none.
    pub aggregate_routes: Vec<String>,
    /// Items one aggregated request carries at most: a full one goes at
    /// once.
    pub aggregate_items_max: u32,
    /// Bytes one aggregated request carries at most (its items encoded),
    /// under the NATS server's max_payload (1 MiB by default): an item
    /// that would pass it sends the gathering first.
    pub aggregate_bytes_max: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            coalesce_window_ms: 100,
            hot: Vec::new(),
            hot_rate_per_s: 100,
            batch_pushes_max: 200,
            frames_per_s_max: 20_000,
            coalesce_window_max_ms: 1_000,
            upstream_rate_per_s: 0,
            upstream_burst: 1_000,
            aggregate_routes: Vec::new(),
            aggregate_items_max: 1_000,
            aggregate_bytes_max: 512 * 1024,
        }
    }
}

impl RoomsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let w = self.coalesce_window_ms;
        if !(1..=COALESCE_WINDOW_MAX_MS).contains(&w) {
            return Err(format!(
                "rooms.coalesce_window_ms ({w}) must be from 1 to {COALESCE_WINDOW_MAX_MS}"
            ));
        }
        let m = self.coalesce_window_max_ms;
        if !(1..=COALESCE_WINDOW_MAX_MS).contains(&m) {
            return Err(format!(
                "rooms.coalesce_window_max_ms ({m}) must be from 1 to {COALESCE_WINDOW_MAX_MS}"
            ));
        }
        if !(1..=BATCH_PUSHES_MAX).contains(&self.batch_pushes_max) {
            return Err(format!(
                "rooms.batch_pushes_max must be from 1 to {BATCH_PUSHES_MAX}"
            ));
        }
        if self.hot.len() > HOT_PATTERNS_MAX {
            return Err(format!(
                "rooms.hot: at most {HOT_PATTERNS_MAX} names or prefixes"
            ));
        }
        if let Some(p) = self
            .hot
            .iter()
            .find(|p| p.is_empty() || p.strip_suffix('*').unwrap_or(p).len() > HOT_NAME_BYTES_MAX)
        {
            return Err(format!(
                "rooms.hot: {p:?} must be a room name (1 to {HOT_NAME_BYTES_MAX} bytes) or a prefix of one ending in *"
            ));
        }
        if self.hot_rate_per_s > BURST_MAX {
            return Err(format!("rooms.hot_rate_per_s must be at most {BURST_MAX}"));
        }
        if self.aggregate_routes.len() > AGGREGATE_ROUTES_MAX
            || !self
                .aggregate_routes
                .iter()
                .all(|r| gw_proto::valid_route(r))
        {
            return Err(format!(
                "rooms.aggregate_routes: at most {AGGREGATE_ROUTES_MAX} routes, each 1 to {} bytes of A-Z, a-z, 0-9, '.', '_' and '-'",
                gw_proto::ROUTE_BYTES_MAX
            ));
        }
        if !(1..=AGGREGATE_ITEMS_MAX).contains(&self.aggregate_items_max) {
            return Err(format!(
                "rooms.aggregate_items_max must be from 1 to {AGGREGATE_ITEMS_MAX}"
            ));
        }
        if !(1024..=AGGREGATE_BYTES_MAX).contains(&self.aggregate_bytes_max) {
            return Err(format!(
                "rooms.aggregate_bytes_max must be from 1024 to {AGGREGATE_BYTES_MAX}"
            ));
        }
        let (rate, burst) = (self.upstream_rate_per_s, self.upstream_burst);
        if rate > BURST_MAX || (rate > 0 && !(1..=BURST_MAX).contains(&burst)) {
            return Err(format!(
                "rooms: upstream_rate_per_s must be at most {BURST_MAX} and, when on, upstream_burst from 1 to {BURST_MAX}"
            ));
        }
        Ok(())
    }

    /// The window of a hot room with `members` on this core, ms: the
    /// configured one, stretched so the room causes at most
    /// `frames_per_s_max` frames a second here, and the longest one while
    /// the core sheds load.
    pub fn window_ms(&self, members: usize, shedding: bool) -> u32 {
        let w = self.coalesce_window_ms;
        let max = self.coalesce_window_max_ms.max(w);
        if shedding {
            return max;
        }
        if self.frames_per_s_max == 0 {
            return w;
        }
        let need = (members as u64 * 1_000).div_ceil(u64::from(self.frames_per_s_max));
        need.clamp(u64::from(w), u64::from(max)) as u32
    }

    /// Pushes a batch of a `window_ms` window may carry.
    pub fn batch_cap(&self, window_ms: u32) -> usize {
        let scaled = u64::from(self.batch_pushes_max) * u64::from(window_ms)
            / u64::from(self.coalesce_window_ms.max(1));
        scaled.clamp(
            u64::from(self.batch_pushes_max),
            u64::from(BATCH_PUSHES_MAX.max(self.batch_pushes_max)),
        ) as usize
    }

    /// Whether upstream frames of `route` naming a room are aggregated.
    pub fn aggregated(&self, route: &str) -> bool {
        self.aggregate_routes.iter().any(|r| r == route)
    }

    /// Whether `room` is named hot by `hot`.
    pub fn named_hot(&self, room: &str) -> bool {
        self.hot.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => p == room,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes() {
        let c = RoomsConfig {
            hot: vec!["quiz".into(), "live-*".into()],
            ..RoomsConfig::default()
        };
        assert!(c.named_hot("quiz"));
        assert!(!c.named_hot("quiz2"));
        assert!(c.named_hot("live-42"));
        assert!(!c.named_hot("lobby"));
        assert!(c.validate().is_ok());
        let bad = RoomsConfig {
            coalesce_window_ms: 0,
            ..RoomsConfig::default()
        };
        assert!(bad.validate().is_err());
        // A name or prefix as long as a room name may be, and no longer.
        let with_hot = |p: String| RoomsConfig {
            hot: vec![p],
            ..RoomsConfig::default()
        };
        let longest = "r".repeat(HOT_NAME_BYTES_MAX);
        assert!(with_hot(longest.clone()).validate().is_ok());
        assert!(with_hot(format!("{longest}*")).validate().is_ok());
        assert!(with_hot(format!("{longest}r")).validate().is_err());
        assert!(with_hot(format!("{longest}r*")).validate().is_err());
        assert!(with_hot(String::new()).validate().is_err());
    }

    #[test]
    fn a_window_stretches_with_the_members_and_under_overload() {
        let c = RoomsConfig::default(); // 100 ms, 20,000 frames/s, 1 s
        assert_eq!(c.window_ms(0, false), 100);
        assert_eq!(c.window_ms(2_000, false), 100);
        assert_eq!(c.window_ms(2_001, false), 101);
        assert_eq!(c.window_ms(10_000, false), 500);
        assert_eq!(c.window_ms(1_000_000, false), 1_000);
        assert_eq!(c.window_ms(1, true), 1_000);
        let off = RoomsConfig {
            frames_per_s_max: 0,
            ..RoomsConfig::default()
        };
        assert_eq!(off.window_ms(1_000_000, false), 100);
        // The cap grows with the window, within BATCH_PUSHES_MAX.
        assert_eq!(c.batch_cap(100), 200);
        assert_eq!(c.batch_cap(400), 800);
        let big = RoomsConfig {
            batch_pushes_max: 5_000,
            ..RoomsConfig::default()
        };
        assert_eq!(big.batch_cap(1_000), BATCH_PUSHES_MAX as usize);
        // A window longer than the max (a config from before the max): the
        // window wins.
        let long = RoomsConfig {
            coalesce_window_ms: 2_000,
            ..RoomsConfig::default()
        };
        assert!(long.validate().is_ok());
        assert_eq!(long.window_ms(1_000_000, true), 2_000);
        assert_eq!(long.window_ms(1, false), 2_000);
        let bad_route = RoomsConfig {
            aggregate_routes: vec!["quiz answer".into()],
            ..RoomsConfig::default()
        };
        assert!(bad_route.validate().is_err(), "not a route");
    }
}
