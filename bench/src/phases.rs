//! The phases of each scenario as the coordinator drives them: ramp (with
//! the optional `--mark` pause and RSS reading), settle, then the hold
//! window, the echo window, the broadcast rounds or the storm, then stop.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::args::Scenario;
use crate::coord::{Coord, Sample, Window};
use crate::msg::{PHASE_ACTION, PHASE_FULL, PHASE_MARK};

/// What the coordinator measured, besides the workers' results.
#[derive(Default, Debug)]
pub struct Figures {
    pub at_start: Sample,
    pub at_mark: Option<Sample>,
    pub at_full: Option<Sample>,
    /// Server CPU ticks spent on the last ramp segment (after --mark), and
    /// the connections it opened.
    pub ramp_cpu: Option<(u64, u64)>,
    pub at_end: Sample,
    pub window: Option<Window>,
    /// Broadcast: receivers connected when the sender started.
    pub receivers: u64,
}

fn window(c: &mut Coord, d: Duration) -> Window {
    let (s0, p0, t0) = (c.sample(), c.total(), Instant::now());
    c.wait(d);
    let (s1, p1) = (c.sample(), c.total());
    Window {
        wall_s: t0.elapsed().as_secs_f64(),
        cpu_ticks: s0
            .cpu_ticks
            .zip(s1.cpu_ticks)
            .map(|(a, b)| b.saturating_sub(a)),
        pings: p1.pings.saturating_sub(p0.pings),
        pongs: p1.pongs.saturating_sub(p0.pongs),
        deliveries: p1.deliveries.saturating_sub(p0.deliveries),
    }
}

/// Runs the scenario end to end; the caller builds the report.
pub fn run(sc: Scenario, signalled: &'static AtomicBool) -> anyhow::Result<(Coord, Figures)> {
    let c = sc.common().clone();
    let mut co = Coord::spawn(sc.clone(), signalled)?;
    let mut f = Figures {
        at_start: co.sample(),
        ..Default::default()
    };
    let per_conn = Duration::from_millis(c.timeout_ms) * (c.retries + 1);
    let ramp_for = |n: u64| {
        if c.ramp_timeout_s > 0 {
            return Duration::from_secs(c.ramp_timeout_s);
        }
        Duration::from_secs_f64(n as f64 / c.rate) + per_conn * 2 + Duration::from_secs(60)
    };
    let settle = Duration::from_secs(c.settle_s);
    let mut ok = true;
    let mut ramp_from = (f.at_start.cpu_ticks, 0u64);
    if let Some(m) = c.mark {
        ok = co.pump(Instant::now() + ramp_for(m), &|c| c.all_ready(PHASE_MARK));
        if ok {
            co.wait(settle);
            let s = co.sample();
            ramp_from = (s.cpu_ticks, co.ready_sum(PHASE_MARK).open);
            f.at_mark = Some(s);
            co.tell("go");
        }
    }
    ok = ok
        && co.pump(Instant::now() + ramp_for(c.conns), &|c| {
            c.all_ready(PHASE_FULL)
        });
    if ok {
        let r = co.ready_sum(PHASE_FULL);
        if let (Some(a), Some(b)) = (ramp_from.0, co.sample().cpu_ticks) {
            f.ramp_cpu = Some((b.saturating_sub(a), r.open.saturating_sub(ramp_from.1)));
        }
        println!(
            "ramp done at {:.2} s: established {}, failed {}, open {}",
            co.start.elapsed().as_secs_f64(),
            r.established,
            r.failed,
            r.open
        );
        if let Some(p) = &c.ready_file {
            let line = serde_json::json!({"established": r.established, "failed": r.failed,
                "open": r.open, "t_s": co.start.elapsed().as_secs_f64()});
            std::fs::write(p, format!("{line}\n"))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        co.wait(settle);
        f.at_full = Some(co.sample());
        f.receivers = r.open;
        match &sc {
            Scenario::Hold(h) => {
                f.window = Some(window(&mut co, Duration::from_secs(h.hold_s)));
            }
            Scenario::Echo(e) | Scenario::Chat(e) => {
                co.tell("go");
                f.window = Some(window(&mut co, Duration::from_secs(e.duration_s)));
            }
            Scenario::Broadcast(b) => {
                let (s0, t0) = (co.sample(), Instant::now());
                co.tell("go");
                let send_for =
                    Duration::from_millis(b.interval_ms) * b.rounds + Duration::from_secs(60);
                if co.pump(Instant::now() + send_for, &|c| c.all_ready(PHASE_ACTION)) {
                    let want = f.receivers * b.rounds as u64;
                    co.pump(Instant::now() + Duration::from_millis(b.drain_ms), &|c| {
                        c.total().deliveries >= want
                    });
                }
                let s1 = co.sample();
                f.window = Some(Window {
                    wall_s: t0.elapsed().as_secs_f64(),
                    cpu_ticks: s0
                        .cpu_ticks
                        .zip(s1.cpu_ticks)
                        .map(|(a, b)| b.saturating_sub(a)),
                    ..Default::default()
                });
            }
            Scenario::Storm(s) => {
                co.wait(Duration::from_secs(s.hold_s));
                co.tell("go");
                if co.pump(Instant::now() + ramp_for(c.conns), &|c| {
                    c.all_ready(PHASE_ACTION)
                }) {
                    let r = co.ready_sum(PHASE_ACTION);
                    println!(
                        "storm: {} of {} back in {:.2} s",
                        r.seg.established,
                        c.conns,
                        r.seg.last_ns.saturating_sub(r.seg.start_ns) as f64 / 1e9
                    );
                    co.wait(Duration::from_secs(s.after_s));
                }
            }
        }
    } else if !co.interrupted {
        co.notes.push("the ramp did not finish in time".into());
    }
    f.at_end = co.sample();
    co.finish();
    Ok((co, f))
}
