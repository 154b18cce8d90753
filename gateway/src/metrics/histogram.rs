//! Latency histograms of one core: fixed buckets of plain `Cell` counts
//! (no atomics on the hot path), copied into a [`Hist`] when scraped and
//! summed over the cores, as the counters are.

use std::cell::Cell;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the buckets, µs; a last bucket (+Inf) takes the rest.
/// From 100 µs (a loopback round trip) to 10 s (past every default
/// timeout), about three per decade.
pub const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Buckets, the +Inf one included.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// One histogram of one core.
#[derive(Default)]
pub struct Histogram {
    counts: [Cell<u64>; BUCKETS],
    sum_us: Cell<u64>,
}

impl Histogram {
    /// Counts one observation of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        let i = BOUNDS_US.partition_point(|&b| b < us);
        let c = &self.counts[i];
        c.set(c.get() + 1);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// A copy of the counts.
    pub fn get(&self) -> Hist {
        let mut h = Hist::default();
        for (d, s) in h.counts.iter_mut().zip(self.counts.iter()) {
            *d = s.get();
        }
        h.sum_us = self.sum_us.get();
        h
    }
}

/// A histogram's counts (one core's, or the sum), sendable across threads.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq)]
pub struct Hist {
    /// Observations per bucket (not cumulative), bounds as [`BOUNDS_US`].
    pub counts: [u64; BUCKETS],
    /// Sum of the observations, µs.
    pub sum_us: u64,
}

impl Hist {
    pub fn add(&mut self, o: &Hist) {
        for (d, v) in self.counts.iter_mut().zip(o.counts.iter()) {
            *d += v;
        }
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
    }

    /// Observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Appends the histogram in Prometheus text format: cumulative
    /// `_bucket{le}` lines in seconds, `_sum` in seconds, `_count`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, n) in self.counts.iter().enumerate() {
            cum += n;
            match BOUNDS_US.get(i) {
                Some(&b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cum}", seconds(b));
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}", seconds(self.sum_us));
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// Microseconds as seconds, exactly (no float rounding: `0.00025`).
pub fn seconds(us: u64) -> String {
    let (s, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return s.to_string();
    }
    let f = format!("{frac:06}");
    format!("{s}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_values_up_to_their_bound() {
        let h = Histogram::default();
        h.observe_us(0);
        h.observe_us(100); // le 0.0001
        h.observe_us(101); // le 0.00025
        h.observe_us(10_000_001); // +Inf
        let g = h.get();
        assert_eq!(g.counts[0], 2);
        assert_eq!(g.counts[1], 1);
        assert_eq!(g.counts[BUCKETS - 1], 1);
        assert_eq!(g.count(), 4);
        assert_eq!(g.sum_us, 10_000_202);
    }

    #[test]
    fn renders_cumulative_buckets_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(2));
        let mut a = h.get();
        a.add(&h.get()); // two cores alike
        let mut out = String::new();
        a.render(&mut out, "x_seconds", "help");
        assert!(out.contains("# TYPE x_seconds histogram\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.0005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.0025\"} 4\n"));
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 4\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(out.contains("x_seconds_sum 0.0046\n"));
        assert!(out.contains("x_seconds_count 4\n"));
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(250), "0.00025");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(10_000_000), "10");
    }
}
