//! `[overload]`: the overload control's settings (the control itself:
//! `core/overload.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest rate and burst of a token bucket, per second and tokens.
pub const BURST_MAX: u32 = 1_000_000;

/// Business priority of a route (`[overload.route_priority]`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoutePriority {
    High,
    #[default]
    Normal,
    Low,
}

impl RoutePriority {
    /// 0 (high) to 2 (low): the business part of an upstream's priority.
    pub fn rank(self) -> u16 {
        match self {
            RoutePriority::High => 0,
            RoutePriority::Normal => 1,
            RoutePriority::Low => 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadConfig {
    /// Average queueing delay of a core above which it sheds upstream
    /// frames by priority, ms; 0 = never shed (the delay is still measured).
    pub queue_delay_max_ms: u32,
    /// The delay is averaged and the admission level moved once per window:
    /// this long, or 2,000 upstream frames if sooner, ms.
    pub queue_delay_window_ms: u32,
    /// Over the delay: admit this much less than the last window did, percent.
    pub shed_alpha_pct: u32,
    /// Under the delay: admit this much more than the last window did, percent.
    pub shed_beta_pct: u32,
    /// User priorities are reshuffled (a new salt) this often, s.
    pub user_priority_period_s: u32,
    /// Business priority of routes: "high", "normal" or "low"; unlisted
    /// routes are normal. Low routes are shed first, high ones last.
    pub route_priority: BTreeMap<String, RoutePriority>,
    /// New connections per second each core admits; over it: Error{BUSY}
    /// and close; 0 = no limit.
    pub accept_rate_per_core_per_s: u32,
    /// Connections a core admits at once before the rate applies.
    pub accept_burst: u32,
    /// Upstream frames per second per connection; over it: BUSY; 0 = no limit.
    pub upstream_rate_per_conn_per_s: u32,
    /// Upstream frames a connection may send at once before the rate applies.
    pub upstream_burst: u32,
    /// Pushes per second each core fans out to the local members of one
    /// room; over it non-ack pushes are dropped and ack-required ones
    /// reported undelivered (RATE_LIMITED); 0 = no limit.
    pub room_broadcast_rate_per_s: u32,
    /// Pushes a room may take at once before the rate applies.
    pub room_burst: u32,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            queue_delay_max_ms: 20,
            queue_delay_window_ms: 1_000,
            shed_alpha_pct: 5,
            shed_beta_pct: 1,
            user_priority_period_s: 3_600,
            route_priority: BTreeMap::new(),
            accept_rate_per_core_per_s: 0,
            accept_burst: 1_000,
            upstream_rate_per_conn_per_s: 1_000,
            upstream_burst: 1_000,
            room_broadcast_rate_per_s: 1_000,
            room_burst: 1_000,
        }
    }
}

impl OverloadConfig {
    /// Checks each key and how they relate to `tick_ms`.
    pub fn validate(&self, tick_ms: u32) -> Result<(), String> {
        let w = self.queue_delay_window_ms;
        if w < tick_ms || w > 60_000 {
            return Err(format!(
                "overload.queue_delay_window_ms ({w}) must be within tick_ms ({tick_ms})..=60000: windows end on ticks"
            ));
        }
        if self.queue_delay_max_ms > 60_000 {
            return Err(
                "overload.queue_delay_max_ms must be at most 60000 (0 = never shed)".into(),
            );
        }
        for (name, v) in [
            ("shed_alpha_pct", self.shed_alpha_pct),
            ("shed_beta_pct", self.shed_beta_pct),
        ] {
            if !(1..=50).contains(&v) {
                return Err(format!("overload.{name} ({v}) must be from 1 to 50"));
            }
        }
        if self.user_priority_period_s == 0 {
            return Err("overload.user_priority_period_s must be at least 1".into());
        }
        for route in self.route_priority.keys() {
            if !gw_proto::valid_route(route) {
                return Err(format!(
                    "overload.route_priority: {route:?} is not a route name (1..=64 bytes of [A-Za-z0-9._-])"
                ));
            }
        }
        for (name, rate, burst) in [
            ("accept", self.accept_rate_per_core_per_s, self.accept_burst),
            (
                "upstream",
                self.upstream_rate_per_conn_per_s,
                self.upstream_burst,
            ),
            ("room", self.room_broadcast_rate_per_s, self.room_burst),
        ] {
            if rate > BURST_MAX || (rate > 0 && !(1..=BURST_MAX).contains(&burst)) {
                return Err(format!(
                    "overload: the {name} rate must be at most {BURST_MAX}/s and, when on, its burst from 1 to {BURST_MAX}"
                ));
            }
        }
        Ok(())
    }
}
