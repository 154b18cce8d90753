//! What worker processes tell the coordinating flood process: one JSON
//! object per line on the worker's stdout. The coordinator answers with
//! `go` and `stop` lines on the worker's stdin. Histograms travel in
//! hdrhistogram's V2 serialisation, base64-encoded.

use std::collections::BTreeMap;
use std::io::Cursor;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Phases a worker reports as done.
pub const PHASE_MARK: usize = 0;
pub const PHASE_FULL: usize = 1;
pub const PHASE_ACTION: usize = 2;
pub const PHASES: usize = 3;

/// Cumulative counters, sent once a second.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Progress {
    pub established: u64,
    pub failed: u64,
    pub open: u64,
    pub pings: u64,
    pub pongs: u64,
    pub deliveries: u64,
    /// Deliveries of HIGH pushes (natspub --priority-mix marks them).
    #[serde(default)]
    pub deliveries_high: u64,
    pub replies: u64,
    pub flood_rss_bytes: u64,
    /// The scenario's latency ([`crate::args::Latency`]) measured since the
    /// previous progress message (not cumulative), microseconds
    /// ([`live_histogram`], serialised; empty: none).
    #[serde(default)]
    pub live_us: String,
}

/// Timing of one ramp segment of one worker (monotonic ns).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Seg {
    /// First connection attempt (u64::MAX: none).
    pub start_ns: u64,
    /// Latest connection established.
    pub last_ns: u64,
    pub established: u64,
}

/// Per-round receiver statistics of one worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct RoundOut {
    pub round: u32,
    pub count: u64,
    /// Latency from send to receipt, microseconds (serialised histogram).
    pub lat_us: String,
    /// Monotonic ns of the latest receipt.
    pub last_ns: u64,
}

/// Everything a worker hands back at the end.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WorkerResult {
    pub worker: u32,
    pub conns: u64,
    pub established: u64,
    pub failed: BTreeMap<String, u64>,
    /// Failed attempts that were retried.
    pub retried: BTreeMap<String, u64>,
    pub dropped: BTreeMap<String, u64>,
    pub open_at_end: u64,
    pub connect_us: String,
    /// Connect plus TLS handshake and WebSocket upgrade (not plain TCP).
    #[serde(default)]
    pub transport_us: String,
    /// TLS handshakes by version, cipher suite and kind.
    #[serde(default)]
    pub tls_sessions: BTreeMap<String, u64>,
    pub ready_us: String,
    pub join_us: String,
    pub pings: u64,
    pub pongs: u64,
    pub other_frames: u64,
    pub segs: [Seg; PHASES],
    /// Echo: round-trip times in the measurement window, and statuses.
    pub echo_rtt_us: String,
    pub echo_sent: u64,
    pub echo_status: BTreeMap<String, u64>,
    pub echo_window_ns: (u64, u64),
    /// Broadcast: receipts per round, and (sender) send times per round.
    pub rounds: Vec<RoundOut>,
    pub sends_ns: Vec<u64>,
    pub sender_error: Option<String>,
    pub sender_replies: BTreeMap<String, u64>,
    /// Storm: reconnect (connect + handshake) latency.
    pub reconnect_us: String,
    pub held_future_bytes: usize,
    pub fds_at_end: usize,
    pub flood_rss_bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    Progress(Progress),
    Ready {
        phase: usize,
        seg: Seg,
        established: u64,
        failed: u64,
        open: u64,
    },
    Result(Box<WorkerResult>),
}

/// An empty latency histogram in microseconds (1 us .. 1 h, 3 digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

/// A coarser one (2 digits) for per-round figures.
pub fn round_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("constant, valid histogram bounds")
}

/// The histogram of the latency measured as a run goes (progress line,
/// plot): microseconds, 1 us .. 1 h, 2 digits, to keep progress lines short.
pub fn live_histogram() -> Histogram<u64> {
    round_histogram()
}

/// V2 serialisation, base64.
pub fn hist_to_b64(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// A serialised histogram; None for empty or bad input.
pub fn from_b64(s: &str) -> Option<Histogram<u64>> {
    if s.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    Deserializer::new()
        .deserialize(&mut Cursor::new(bytes))
        .ok()
}

/// Adds a serialised histogram into `into`; empty or bad input adds nothing.
pub fn add_b64(into: &mut Histogram<u64>, s: &str) {
    if let Some(h) = from_b64(s) {
        let _ = into.add(&h);
    }
}

/// Adds counts of `from` into `into`.
pub fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip() {
        let mut h = histogram();
        for v in [10u64, 20, 30_000, 5_000_000] {
            h.record(v).unwrap();
        }
        let mut m = histogram();
        add_b64(&mut m, &hist_to_b64(&h));
        add_b64(&mut m, &hist_to_b64(&h));
        assert_eq!(m.len(), 8);
        assert_eq!(m.max(), h.max());
        let line = serde_json::to_string(&Msg::Progress(Progress::default())).unwrap();
        assert!(line.starts_with("{\"t\":\"progress\""));
        let back: Msg = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Msg::Progress(_)));
    }
}
