//! A small hand-written SVG: connections established (left axis) and the
//! RSS of the --pid processes (right axis) over time.

use std::fmt::Write as _;

use crate::coord::Sample;

const W: f64 = 800.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

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

/// The SVG document for `samples` (at most a few thousand points are drawn).
pub fn svg(title: &str, samples: &[Sample]) -> String {
    let step = samples.len().div_ceil(4000).max(1);
    let pts: Vec<&Sample> = samples.iter().step_by(step).collect();
    let t_max = nice_max(pts.last().map_or(1.0, |s| s.t_s));
    let c_max = nice_max(pts.iter().map(|s| s.established).max().unwrap_or(0) as f64);
    let mib = |s: &Sample| s.rss_bytes.map(|b| b as f64 / (1u64 << 20) as f64);
    let r_max = nice_max(pts.iter().filter_map(|s| mib(s)).fold(0.0, f64::max));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + pw * t / t_max;
    let y = |v: f64, max: f64| TOP + ph * (1.0 - v / max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let gy = TOP + ph * (1.0 - f);
        let gx = LEFT + pw * f;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#1f77b4">{}</text>"##,
            LEFT - 6.0,
            gy + 4.0,
            (c_max * f).round()
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728">{:.0}</text>"##,
            W - RIGHT + 6.0,
            gy + 4.0,
            r_max * f
        );
        let _ = writeln!(
            out,
            r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"#,
            H - BOTTOM + 18.0,
            t_max * f
        );
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
        LEFT + pw / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        out,
        r##"<text x="16" y="{:.1}" fill="#1f77b4" transform="rotate(-90 16 {:.1})" text-anchor="middle">connections established</text>"##,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" fill="#d62728" transform="rotate(90 {:.1} {:.1})" text-anchor="middle">server RSS (MiB)</text>"##,
        W - 16.0,
        TOP + ph / 2.0,
        W - 16.0,
        TOP + ph / 2.0
    );
    let conns: Vec<(f64, f64)> = pts
        .iter()
        .map(|s| (x(s.t_s), y(s.established as f64, c_max)))
        .collect();
    let rss: Vec<(f64, f64)> = pts
        .iter()
        .filter_map(|s| mib(s).map(|m| (x(s.t_s), y(m, r_max))))
        .collect();
    polyline(&mut out, &conns, "#1f77b4");
    polyline(&mut out, &rss, "#d62728");
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
        let doc = svg("a < b", &s);
        assert!(doc.starts_with("<svg") && doc.ends_with("</svg>\n"));
        assert_eq!(doc.matches("<polyline").count(), 2);
        assert!(doc.contains("a &lt; b"));
    }
}
