//! A small hand-written SVG: connections established (left axis) and the
//! RSS of the --pid processes (right axis) over time; under it, when the
//! scenario measured any, its latency (median and 99th percentile per
//! sample interval, log scale). The time axis ends at the run's duration.

use std::fmt::Write as _;

use crate::coord::Sample;

const W: f64 = 800.0;
/// Height of the connections and RSS panel, with the title and time labels.
const H: f64 = 420.0;
/// Height added by the latency panel, with its time labels.
const LAT_PANEL: f64 = 240.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const BLUE: &str = "#1f77b4";
const RED: &str = "#d62728";
const GREEN: &str = "#2ca02c";
const PURPLE: &str = "#9467bd";

/// A round axis maximum at or above `v` (1, 2 or 5 times a power of ten).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// Time ticks for an axis from 0 to `end` seconds: a round step (1, 2 or
/// 5 times a power of ten) giving at most 7 ticks, none past `end`; and
/// the decimals their labels need.
fn time_ticks(end: f64) -> (Vec<f64>, usize) {
    let step = nice_max(end / 6.0);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let ticks = (0..)
        .map(|i| i as f64 * step)
        .take_while(|t| *t <= end * (1.0 + 1e-9))
        .collect();
    (ticks, decimals)
}

/// Decades from below `lo` to above `hi` (both > 0): the log axis' ends
/// as powers of ten.
fn decades(lo: f64, hi: f64) -> (i32, i32) {
    let a = lo.log10().floor() as i32;
    let b = (hi.log10().ceil() as i32).max(a + 1);
    (a, b)
}

/// 10^k written plainly (0.01, 1, 1000).
fn decade_label(k: i32) -> String {
    let v = 10f64.powi(k);
    if k < 0 {
        format!("{:.*}", (-k) as usize, v)
    } else {
        format!("{v:.0}")
    }
}

fn polyline(out: &mut String, pts: &[(f64, f64)], colour: &str) {
    if pts.is_empty() {
        return;
    }
    let mut d = String::with_capacity(pts.len() * 16);
    for (x, y) in pts {
        let _ = write!(d, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        d.trim_end()
    );
}

/// The SVG document for `samples` of a run of `duration_s` seconds (at
/// most a few thousand points are drawn); `latency` names what the
/// samples' `latency_*` fields measure.
pub fn svg(title: &str, samples: &[Sample], duration_s: f64, latency: &str) -> String {
    let step = samples.len().div_ceil(4000).max(1);
    let pts: Vec<&Sample> = samples.iter().step_by(step).collect();
    let t_end = pts
        .iter()
        .map(|s| s.t_s)
        .fold(duration_s, f64::max)
        .max(1e-3);
    let c_max = nice_max(pts.iter().map(|s| s.established).max().unwrap_or(0) as f64);
    let mib = |s: &Sample| s.rss_bytes.map(|b| b as f64 / (1u64 << 20) as f64);
    let r_max = nice_max(pts.iter().filter_map(|s| mib(s)).fold(0.0, f64::max));
    let has_rss = pts.iter().any(|s| s.rss_bytes.is_some());
    // Latency points from every sample (they are few: one a sample_ms).
    let lat: Vec<(f64, f64, f64)> = samples
        .iter()
        .filter_map(|s| Some((s.t_s, s.latency_p50_ms?, s.latency_p99_ms?)))
        .collect();
    let height = if lat.is_empty() { H } else { H + LAT_PANEL };
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + pw * t.min(t_end) / t_end;
    let y = |v: f64, max: f64| TOP + ph * (1.0 - v / max);
    let (ticks, decimals) = time_ticks(t_end);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let gy = TOP + ph * (1.0 - f);
        grid_line(&mut out, gy, &(c_max * f).round().to_string(), Some(BLUE));
        if has_rss {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" fill="{RED}">{:.0}</text>"##,
                W - RIGHT + 6.0,
                gy + 4.0,
                r_max * f
            );
        }
    }
    time_axis(&mut out, &ticks, decimals, t_end, TOP, ph);
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s); the run took {t_end:.1} s</text>"#,
        LEFT + pw / 2.0,
        height - 12.0
    );
    vertical_label(
        &mut out,
        16.0,
        TOP + ph / 2.0,
        BLUE,
        -90,
        "connections established",
    );
    if has_rss {
        let mid = TOP + ph / 2.0;
        vertical_label(&mut out, W - 16.0, mid, RED, 90, "server RSS (MiB)");
    }
    let conns: Vec<(f64, f64)> = pts
        .iter()
        .map(|s| (x(s.t_s), y(s.established as f64, c_max)))
        .collect();
    let rss: Vec<(f64, f64)> = pts
        .iter()
        .filter_map(|s| mib(s).map(|m| (x(s.t_s), y(m, r_max))))
        .collect();
    polyline(&mut out, &conns, BLUE);
    polyline(&mut out, &rss, RED);
    if !lat.is_empty() {
        latency_panel(&mut out, &lat, latency, (&ticks, decimals), t_end);
    }
    out.push_str("</svg>\n");
    out
}

/// Vertical grid lines and labels at `ticks` for a panel from `top`, `ph` high.
fn time_axis(out: &mut String, ticks: &[f64], decimals: usize, t_end: f64, top: f64, ph: f64) {
    let pw = W - LEFT - RIGHT;
    for &t in ticks {
        let gx = LEFT + pw * t / t_end;
        let _ = writeln!(
            out,
            r##"<line x1="{gx:.1}" y1="{top:.1}" x2="{gx:.1}" y2="{:.1}" stroke="#eee"/>"##,
            top + ph
        );
        let _ = writeln!(
            out,
            r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{t:.decimals$}</text>"#,
            top + ph + 18.0
        );
    }
}

fn vertical_label(out: &mut String, x: f64, y: f64, colour: &str, angle: i32, text: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" fill="{colour}" transform="rotate({angle} {x:.1} {y:.1})" text-anchor="middle">{}</text>"#,
        escape(text)
    );
}

/// The latency panel under the main one: p50 and p99 per sample (ms, log
/// scale), same time axis.
fn latency_panel(
    out: &mut String,
    lat: &[(f64, f64, f64)],
    what: &str,
    (ticks, decimals): (&[f64], usize),
    t_end: f64,
) {
    let (pw, top) = (W - LEFT - RIGHT, H + 10.0);
    let ph = LAT_PANEL - 10.0 - BOTTOM;
    let positive = lat
        .iter()
        .flat_map(|&(_, a, b)| [a, b])
        .filter(|v| *v > 0.0);
    let lo = positive.clone().fold(f64::INFINITY, f64::min);
    let hi = positive.fold(0.0, f64::max);
    let (a, b) = if lo.is_finite() && hi > 0.0 {
        decades(lo, hi)
    } else {
        (-3, 0)
    };
    let (lo_l, span) = (a as f64, (b - a) as f64);
    let x = |t: f64| LEFT + pw * t.min(t_end) / t_end;
    let y = |v: f64| {
        let l = v.max(10f64.powi(a)).log10();
        top + ph * (1.0 - (l - lo_l) / span)
    };
    for k in a..=b {
        let gy = top + ph * (1.0 - (k - a) as f64 / span);
        grid_line(out, gy, &decade_label(k), None);
    }
    time_axis(out, ticks, decimals, t_end, top, ph);
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{top:.1}" width="{pw}" height="{ph:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}">{} per sample: <tspan fill="{GREEN}">p50</tspan>, <tspan fill="{PURPLE}">p99</tspan></text>"##,
        LEFT + 8.0,
        top + 16.0,
        escape(what)
    );
    vertical_label(out, 16.0, top + ph / 2.0, "black", -90, "latency (ms, log)");
    let p50: Vec<(f64, f64)> = lat.iter().map(|&(t, v, _)| (x(t), y(v))).collect();
    let p99: Vec<(f64, f64)> = lat.iter().map(|&(t, _, v)| (x(t), y(v))).collect();
    polyline(out, &p50, GREEN);
    polyline(out, &p99, PURPLE);
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal grid line at `gy` with its label left of the plot
/// (in `color`, or the default).
fn grid_line(out: &mut String, gy: f64, label: &str, color: Option<&str>) {
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/>"##,
        W - RIGHT
    );
    let fill = color.map(|c| format!(r#" fill="{c}""#)).unwrap_or_default();
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end"{fill}>{label}</text>"#,
        LEFT - 6.0,
        gy + 4.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_something() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(15_000.0), 20_000.0);
        assert_eq!(nice_max(3.0), 5.0);
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t_s: i as f64,
                established: i * 100,
                rss_bytes: Some(i << 20),
                ..Default::default()
            })
            .collect();
        let doc = svg("a < b", &s, 9.5, "echo round trip");
        assert!(doc.starts_with("<svg") && doc.ends_with("</svg>\n"));
        assert_eq!(doc.matches("<polyline").count(), 2);
        assert!(doc.contains("a &lt; b"));
        assert!(
            doc.contains(r#"height="420""#),
            "no latency: no latency panel"
        );
        assert!(doc.contains("the run took 9.5 s"));
        assert!(doc.contains("server RSS (MiB)"));
    }

    #[test]
    fn time_axis_ends_at_the_run() {
        // A 22 s run: ticks 0, 5, .. 20 and the axis ends at 22 (not 50).
        let (t, d) = time_ticks(22.0);
        assert_eq!(t, vec![0.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(d, 0);
        let (t, d) = time_ticks(0.8);
        assert_eq!(t.last().copied(), Some(0.8));
        assert_eq!(d, 1);
        let s: Vec<Sample> = (0..=22)
            .map(|i| Sample {
                t_s: i as f64,
                established: 1000,
                ..Default::default()
            })
            .collect();
        let doc = svg("hold", &s, 22.4, "heartbeat round trip");
        // The last sample (22 s) sits at 22/22.4 of the width, not 22/50.
        let x22 = LEFT + (W - LEFT - RIGHT) * 22.0 / 22.4;
        assert!(doc.contains(&format!("{x22:.1},")), "{doc}");
        assert!(!doc.contains(">50</text>"));
        assert!(!doc.contains("server RSS"), "no --pid: no RSS axis");
    }

    #[test]
    fn draws_latency_when_measured() {
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t_s: i as f64,
                established: 100,
                latency_p50_ms: (i > 0).then_some(0.2 + i as f64 / 100.0),
                latency_p99_ms: (i > 0).then_some(3.0 * i as f64),
                latency_count: (i > 0).then_some(1000),
                ..Default::default()
            })
            .collect();
        let doc = svg("echo", &s, 10.0, "echo round trip");
        assert_eq!(doc.matches("<polyline").count(), 3, "conns, p50, p99");
        assert!(doc.contains(&format!(r#"height="{}""#, H + LAT_PANEL)));
        assert!(doc.contains("echo round trip per sample"));
        // Log axis from 0.1 ms (below 0.21) to 100 ms (above 27).
        assert!(doc.contains(">0.1</text>") && doc.contains(">100</text>"));
        assert_eq!(decades(0.21, 27.0), (-1, 2));
        assert_eq!(decade_label(-2), "0.01");
    }
}
