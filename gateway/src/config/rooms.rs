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
    /// Pushes one batch may carry; past it LOW, then NORMAL pushes of the
    /// room are dropped until the window ends (HIGH are never batched).
    pub batch_pushes_max: u32,
    /// Upstream frames naming a room (`Upstream.room`) per second per
    /// room, per core; over it: BUSY; 0 = no limit.
    pub upstream_rate_per_s: u32,
    /// Upstream frames a room takes at once before the rate applies.
    pub upstream_burst: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            coalesce_window_ms: 100,
            hot: Vec::new(),
            hot_rate_per_s: 100,
            batch_pushes_max: 200,
            upstream_rate_per_s: 0,
            upstream_burst: 1_000,
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
        if let Some(p) = self.hot.iter().find(|p| p.is_empty() || p.len() > 129) {
            return Err(format!(
                "rooms.hot: {p:?} must be a room name (1 to 128 bytes) or a prefix ending in *"
            ));
        }
        if self.hot_rate_per_s > BURST_MAX {
            return Err(format!("rooms.hot_rate_per_s must be at most {BURST_MAX}"));
        }
        let (rate, burst) = (self.upstream_rate_per_s, self.upstream_burst);
        if rate > BURST_MAX || (rate > 0 && !(1..=BURST_MAX).contains(&burst)) {
            return Err(format!(
                "rooms: upstream_rate_per_s must be at most {BURST_MAX} and, when on, upstream_burst from 1 to {BURST_MAX}"
            ));
        }
        Ok(())
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
    }
}
