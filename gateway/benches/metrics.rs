//! What a latency observation and a scrape cost: the gateway's per-core
//! `Cell` histogram against the prometheus-client crate's histogram (one
//! lock per observation; shared by cores, it is also contended), and the
//! rendering of /metrics for a box of 2 and of 64 cores. The figures back
//! the decision in ARCHITECTURE.md §14 ("own encoder").
//!
//! `cargo bench -p gateway --bench metrics` prints ns per observation and
//! µs per scrape, and writes target/bench-metrics.json.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::metrics::{self, CoreMetrics, Histogram};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as PcHistogram};

const OBSERVATIONS: u64 = 20_000_000;

/// ns per call of `f(i)` over `n` calls.
fn per_call(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn pc_histogram() -> PcHistogram {
    PcHistogram::new(exponential_buckets(0.0001, 2.5, 16))
}

fn main() {
    let ours = Histogram::default();
    let cell_ns = per_call(OBSERVATIONS, |i| ours.observe_us(black_box(i % 20_000)));
    black_box(ours.get());

    let pc = pc_histogram();
    let pc_ns = per_call(OBSERVATIONS, |i| {
        pc.observe(black_box((i % 20_000) as f64 / 1e6))
    });

    // Two threads (two cores) observing into one shared histogram.
    let shared = Arc::new(pc_histogram());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let h = shared.clone();
            std::thread::spawn(move || {
                per_call(OBSERVATIONS / 4, |i| {
                    h.observe(black_box((i % 20_000) as f64 / 1e6))
                })
            })
        })
        .collect();
    let pc_shared_ns: f64 = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(f64::NAN))
        .sum::<f64>()
        / 2.0;

    // A scrape: snapshots of every core, summed and rendered.
    let render = |cores: usize| -> (f64, usize) {
        let m = CoreMetrics::default();
        for i in 0..1000 {
            m.hist.upstream_rtt.observe(Duration::from_micros(i));
            CoreMetrics::inc(&m.frames_in);
        }
        let snaps: Vec<_> = (0..cores).map(|c| m.snapshot(c, 1000, 900, 10)).collect();
        let mut bytes = 0;
        let us = per_call(200, |_| {
            let text = metrics::render_prometheus(black_box(&snaps), false);
            bytes = text.len();
            black_box(text);
        }) / 1000.0;
        (us, bytes)
    };
    let (render2_us, bytes2) = render(2);
    let (render64_us, bytes64) = render(64);

    println!("histogram observation, ns: gateway Cell {cell_ns:.1}, prometheus-client {pc_ns:.1} ({:.1}x), prometheus-client shared by 2 threads {pc_shared_ns:.1} ({:.1}x)",
        pc_ns / cell_ns, pc_shared_ns / cell_ns);
    println!("render /metrics (without process and NATS lines): 2 cores {render2_us:.1} us ({bytes2} bytes), 64 cores {render64_us:.1} us ({bytes64} bytes)");
    let json = serde_json::json!({
        "bench": "metrics",
        "observations": OBSERVATIONS,
        "observe_ns": {"gateway_cell": cell_ns, "prometheus_client": pc_ns, "prometheus_client_shared_2_threads": pc_shared_ns},
        "render_us": {"cores_2": render2_us, "cores_64": render64_us},
        "render_bytes": {"cores_2": bytes2, "cores_64": bytes64},
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-metrics.json");
    if let Err(e) = std::fs::write(path, json.to_string()) {
        eprintln!("cannot write {path}: {e}");
    }
}
