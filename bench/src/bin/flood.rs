//! `flood`: many long-lived client connections against the gateway.
//!
//! Scenario `hold`: open `--conns` connections at `--rate` per second over
//! `--cores` glommio executors, authenticate each with a fresh HS256 token,
//! ping every `--heartbeat-ms`, hold `--hold-s` seconds after all are up,
//! then report connect+auth latency, failures by reason and the RSS of the
//! `--pid` processes over time (stdout, and `--json FILE`).
//!
//! Per connection the client keeps the socket, a timer and a few words: no
//! read buffer (reads go through one scratch buffer per thread, only the
//! bytes of an incomplete frame are kept). SIGINT / SIGTERM end the ramp or
//! the hold early; the report is still written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bench::hold::{executor_main, histogram, HoldArgs, Settings, Shared};
use bench::procfs;
use clap::{Parser, Subcommand};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "flood", about = "Connection flood client for the gateway.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open connections, authenticate, heartbeat, hold, report.
    Hold(HoldArgs),
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Relaxed);
}

fn main() {
    if let Err(e) = run() {
        eprintln!("flood: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Hold(a) => hold_scenario(a),
    }
}

/// One RSS sample.
#[derive(serde::Serialize)]
struct Sample {
    t_s: f64,
    /// Sum of VmRSS of the --pid processes (null when none is readable).
    rss_bytes: Option<u64>,
    flood_rss_bytes: Option<u64>,
    slab_bytes: u64,
    sunreclaim_bytes: u64,
    established: u64,
    open: u64,
}

/// Samples kept at most (the last one is always taken at the end).
const SAMPLES_MAX: usize = 100_000;

fn sample(a: &HoldArgs, start: Instant, sh: &Shared) -> Sample {
    let rss: Vec<u64> = a
        .pids
        .iter()
        .filter_map(|&p| procfs::rss_bytes(p))
        .collect();
    let slab = procfs::slab();
    Sample {
        t_s: start.elapsed().as_secs_f64(),
        rss_bytes: (!rss.is_empty()).then(|| rss.iter().sum()),
        flood_rss_bytes: procfs::self_rss_bytes(),
        slab_bytes: slab.slab_bytes,
        sunreclaim_bytes: slab.sunreclaim_bytes,
        established: sh.established.load(Relaxed),
        open: sh.open.load(Relaxed),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

fn check_args(a: &HoldArgs) -> anyhow::Result<()> {
    if a.conns == 0 || a.rate.is_nan() || a.rate <= 0.0 || a.cores == 0 || a.cores > 64 {
        bail!("need --conns > 0, --rate > 0 and 1 <= --cores <= 64");
    }
    if a.heartbeat_ms < 100 || a.sample_ms < 10 {
        bail!("need --heartbeat-ms >= 100 and --sample-ms >= 10");
    }
    let nofile = procfs::nofile_limit();
    if a.conns + 64 > nofile {
        bail!(
            "--conns {} needs more file descriptors than RLIMIT_NOFILE ({nofile}) allows: \
             run several flood processes with their own --first-id",
            a.conns
        );
    }
    if a.sources > 0 && !a.target.ip().is_loopback() {
        eprintln!(
            "flood: warning: --sources binds {}.. which only reaches a loopback target",
            a.source_base
        );
    }
    Ok(())
}

fn hold_scenario(a: HoldArgs) -> anyhow::Result<()> {
    check_args(&a)?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
    }
    let (secret, kid) = match &a.secret {
        Some(s) => (s.as_bytes().to_vec(), a.kid.clone()),
        None => (
            gateway::config::DEMO_SECRET.as_bytes().to_vec(),
            Some(
                a.kid
                    .clone()
                    .unwrap_or_else(|| gateway::config::DEMO_KID.into()),
            ),
        ),
    };
    let start = Instant::now();
    let set = Arc::new(Settings {
        args: a.clone(),
        secret,
        kid,
        start,
    });
    let shared = Arc::new(Shared::default());
    println!(
        "flood hold: {} conns to {} at {}/s, {} executor(s), {} source address(es), heartbeat {} ms, hold {} s",
        a.conns, a.target, a.rate, a.cores, a.sources, a.heartbeat_ms, a.hold_s
    );
    let mut handles = Vec::with_capacity(a.cores);
    for k in 0..a.cores {
        let (set, shared) = (set.clone(), shared.clone());
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("flood-{k}"))
            .io_memory(512 * 1024)
            .spawn(move || executor_main(set, shared, k as u64))
            .map_err(|e| {
                anyhow::anyhow!("starting executor {k}: {e} (io_uring / locked memory)")
            })?;
        handles.push(h);
    }

    let sh = &*shared;
    let mut samples: Vec<Sample> = Vec::new();
    let sample_every = Duration::from_millis(a.sample_ms);
    let mut next_sample = start;
    let mut next_progress = start + Duration::from_secs(1);
    let ramp_limit = start
        + Duration::from_secs_f64(a.conns as f64 / a.rate)
        + Duration::from_millis(a.timeout_ms)
        + Duration::from_secs(30);
    let mut ramp_done: Option<Instant> = None;
    let mut at_established: Option<Sample> = None;
    let mut hold_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next_sample {
            if samples.len() < SAMPLES_MAX {
                samples.push(sample(&a, start, sh));
            }
            next_sample += sample_every;
            if next_sample < now {
                next_sample = now + sample_every;
            }
        }
        let (est, failed) = (sh.established.load(Relaxed), sh.failed.load(Relaxed));
        if now >= next_progress {
            let s = sample(&a, start, sh);
            println!(
                "[{:6.1}s] established {est}/{} failed {failed} open {} pings {} pongs {} rss {} flood {}",
                s.t_s, a.conns, s.open, sh.pings.load(Relaxed), sh.pongs.load(Relaxed),
                mib(s.rss_bytes), mib(s.flood_rss_bytes)
            );
            next_progress += Duration::from_secs(1);
        }
        let signalled = SIGNALLED.load(Relaxed);
        if ramp_done.is_none() && (est + failed >= a.conns || now >= ramp_limit || signalled) {
            ramp_done = Some(now);
            hold_until = Some(now + Duration::from_secs(a.hold_s));
            let s = sample(&a, start, sh);
            println!(
                "ramp done at {:.2} s: established {est}, failed {failed}; holding {} s",
                s.t_s, a.hold_s
            );
            if let Some(p) = &a.ready_file {
                let line = json!({"established": est, "failed": failed, "t_s": s.t_s});
                std::fs::write(p, format!("{line}\n"))
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            at_established = Some(s);
        }
        if hold_until.is_some_and(|h| now >= h) || signalled {
            break;
        }
        std::thread::sleep(Duration::from_millis(20).min(sample_every));
    }
    let end = sample(&a, start, sh);
    let open_at_end = sh.open.load(Relaxed);
    let fds_at_end = procfs::self_fd_count();
    shared.stop.store(true, Relaxed);

    let mut connect_us = histogram();
    let mut auth_us = histogram();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let mut task_bytes = 0;
    for h in handles {
        let out = h
            .join()
            .map_err(|e| anyhow::anyhow!("an executor failed: {e}"))?;
        let _ = connect_us.add(&out.connect_us);
        let _ = auth_us.add(&out.auth_us);
        for (k, v) in out.failed {
            *failed.entry(k).or_insert(0) += v;
        }
        for (k, v) in out.dropped {
            *dropped.entry(k).or_insert(0) += v;
        }
        task_bytes = out.task_bytes;
    }

    let est = sh.established.load(Relaxed);
    let ramp_s = sh.last_established_us.load(Relaxed) as f64 / 1e6;
    let rate = if ramp_s > 0.0 {
        est as f64 / ramp_s
    } else {
        0.0
    };
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let lat = |h: &Histogram<u64>| {
        json!({
            "count": h.len(), "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9),
            "p99_ms": ms(h, 0.99), "max_ms": h.max() as f64 / 1000.0, "mean_ms": h.mean() / 1000.0,
        })
    };
    let failed_total: u64 = failed.values().sum();
    println!(
        "established {est}/{} in {ramp_s:.2} s ({rate:.0}/s), failed {failed_total} {failed:?}",
        a.conns
    );
    println!(
        "connect+auth ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}   (connect only: p50 {:.2} p99 {:.2})",
        ms(&auth_us, 0.5), ms(&auth_us, 0.9), ms(&auth_us, 0.99), auth_us.max() as f64 / 1000.0,
        ms(&connect_us, 0.5), ms(&connect_us, 0.99)
    );
    println!(
        "held: open at end {open_at_end}, dropped during hold {dropped:?}, pings {} pongs {}",
        sh.pings.load(Relaxed),
        sh.pongs.load(Relaxed)
    );
    println!(
        "rss of pids {:?}: at ramp end {}, at end {}; flood itself {} ({} bytes per held connection future)",
        a.pids,
        mib(at_established.as_ref().and_then(|s| s.rss_bytes)),
        mib(end.rss_bytes),
        mib(end.flood_rss_bytes),
        task_bytes
    );

    if let Some(path) = &a.json {
        let report = json!({
            "scenario": "hold",
            "target": a.target.to_string(),
            "conns_target": a.conns,
            "conns_established": est,
            "conns_failed": {"total": failed_total, "by_reason": failed},
            "conns_open_at_end": open_at_end,
            "conns_dropped_during_hold": dropped,
            "connect_auth_latency": lat(&auth_us),
            "connect_latency": lat(&connect_us),
            "ramp_s": ramp_s,
            "connect_rate_per_s": rate,
            "pings_sent": sh.pings.load(Relaxed),
            "pongs_received": sh.pongs.load(Relaxed),
            "other_frames_received": sh.other_frames.load(Relaxed),
            "interrupted": SIGNALLED.load(Relaxed),
            "rss": {
                "pids": a.pids,
                "at_ramp_end": at_established,
                "end": end,
                "samples": samples,
            },
            "flood": {"held_future_bytes": task_bytes, "fds_at_end": fds_at_end},
            "config": {
                "rate": a.rate, "cores": a.cores, "sources": a.sources,
                "source_base": a.source_base.to_string(), "heartbeat_ms": a.heartbeat_ms,
                "hold_s": a.hold_s, "timeout_ms": a.timeout_ms, "first_id": a.first_id,
                "sample_ms": a.sample_ms,
            },
        });
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
