#!/usr/bin/env python3
"""Soak report (bench/run.sh soak): RSS and heap over time, a
least-squares line for each after the warm-up, and whether either grows
beyond the noise.

RSS is what the host pays; heap is what the gateway's allocations hold
(gateway_heap_allocated_bytes). Heap growth means something keeps more
and more; RSS growth over a flat heap means the allocator keeps freed
memory (fragmentation).

Growth counts as real when the fitted line rises, over the measured window,
by more than three standard deviations of the residuals AND by more than 1%
of the mean: a slope inside the sampling noise is not growth.
Writes the JSON result and an SVG plot (RSS, heap and connections over
time)."""

import argparse
import csv
import json
import statistics


def fit(ts, ys):
    """Least-squares line: (slope per second, intercept)."""
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var else 0.0
    return slope, my - slope * mt


def trend(ts, ys):
    """The fitted line over (ts, ys) and whether it rises beyond the noise."""
    slope, icept = fit(ts, ys)
    resid = [y - (slope * t + icept) for t, y in zip(ts, ys)]
    noise = statistics.pstdev(resid) if len(resid) > 1 else 0.0
    window = ts[-1] - ts[0] if len(ts) > 1 else 0.0
    rise = slope * window
    mean = statistics.fmean(ys)
    return {
        "window_s": window,
        "at_warmup_end_bytes": ys[0],
        "at_end_bytes": ys[-1],
        "min_bytes": min(ys),
        "max_bytes": max(ys),
        "mean_bytes": mean,
        "slope_bytes_per_hour": slope * 3600,
        "fitted_rise_over_window_bytes": rise,
        "residual_stddev_bytes": noise,
        "grows_beyond_noise": rise > 3 * noise and rise > 0.01 * mean,
        "line": (slope, icept),
    }


def describe(name, r):
    mib = lambda b: b / 2**20
    return (f"{name} after warm-up: {mib(r['at_warmup_end_bytes']):.1f} -> {mib(r['at_end_bytes']):.1f} MiB "
            f"(min {mib(r['min_bytes']):.1f}, max {mib(r['max_bytes']):.1f}); fitted {mib(r['slope_bytes_per_hour']):+.2f} MiB/h, "
            f"rise {mib(r['fitted_rise_over_window_bytes']):+.2f} MiB over {r['window_s']/60:.0f} min vs noise "
            f"{mib(r['residual_stddev_bytes']):.2f} MiB: {'GROWS beyond noise' if r['grows_beyond_noise'] else 'no growth beyond noise'}")


def svg(rows, warmup_s, lines, title):
    w, h, left, right, top, bottom = 820, 420, 80, 80, 40, 50
    pw, ph = w - left - right, h - top - bottom
    t_max = max(r[0] for r in rows) or 1
    mib = [r[1] / 2**20 for r in rows]
    heap = [r[3] / 2**20 for r in rows]
    r_max = max(mib + heap) * 1.1 or 1
    c_max = max(r[2] for r in rows) * 1.1 or 1
    x = lambda t: left + pw * t / t_max
    y = lambda v, m: top + ph * (1 - v / m)
    pts = lambda vals, m: " ".join(f"{x(r[0]):.1f},{y(v, m):.1f}" for r, v in zip(rows, vals))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w/2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{top+ph}" x2="{left+pw}" y2="{top+ph}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top+ph}" stroke="black"/>',
           f'<line x1="{left+pw}" y1="{top}" x2="{left+pw}" y2="{top+ph}" stroke="black"/>',
           f'<rect x="{left}" y="{top}" width="{x(warmup_s)-left:.1f}" height="{ph}" fill="#eee"/>',
           f'<text x="{left+4}" y="{top+14}" fill="#777">warm-up</text>']
    for i in range(6):
        t = t_max * i / 5
        out.append(f'<text x="{x(t):.1f}" y="{top+ph+18}" text-anchor="middle">{t/60:.0f} min</text>')
        out.append(f'<text x="{left-6}" y="{y(r_max*i/5, r_max)+4:.1f}" text-anchor="end" fill="#c0392b">{r_max*i/5:.0f}</text>')
        out.append(f'<text x="{left+pw+6}" y="{y(c_max*i/5, c_max)+4:.1f}" fill="#2c7fb8">{c_max*i/5:.0f}</text>')
    out.append(f'<text x="20" y="{top+ph/2}" transform="rotate(-90 20 {top+ph/2})" text-anchor="middle"><tspan fill="#c0392b">gateway RSS</tspan> and <tspan fill="#27ae60">heap</tspan>, MiB</text>')
    out.append(f'<text x="{w-20}" y="{top+ph/2}" transform="rotate(90 {w-20} {top+ph/2})" text-anchor="middle" fill="#2c7fb8">connections</text>')
    out.append(f'<polyline fill="none" stroke="#2c7fb8" stroke-width="1" points="{pts([r[2] for r in rows], c_max)}"/>')
    out.append(f'<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{pts(mib, r_max)}"/>')
    if any(heap):
        out.append(f'<polyline fill="none" stroke="#27ae60" stroke-width="2" points="{pts(heap, r_max)}"/>')
    for slope, icept in lines:
        out.append(f'<polyline fill="none" stroke="black" stroke-dasharray="6 4" points="' +
                   " ".join(f"{x(t):.1f},{y((slope * t + icept) / 2**20, r_max):.1f}" for t in (warmup_s, t_max)) + '"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    for a in ("--samples", "--echo", "--stats", "--conditions", "--out", "--svg"):
        ap.add_argument(a, required=True)
    ap.add_argument("--warmup-s", type=float, default=300)
    a = ap.parse_args()
    with open(a.samples) as f:
        rows = [(float(r["t_s"]), float(r["rss_bytes"]), float(r["connections"]), float(r.get("heap_bytes") or 0))
                for r in csv.DictReader(f)]
    rows = [r for r in rows if r[1] > 0]
    after = [r for r in rows if r[0] >= a.warmup_s] or rows
    ts = [r[0] for r in after]
    rss = trend(ts, [r[1] for r in after])
    heap = trend(ts, [r[3] for r in after]) if all(r[3] > 0 for r in after) else None
    with open(a.echo) as f:
        echo = json.load(f)
    with open(a.stats) as f:
        stats = json.load(f)
    result = {
        "scenario": "soak",
        "warmup_s": a.warmup_s,
        "rss": {k: v for k, v in rss.items() if k != "line"} | {"samples": len(rows)},
        "heap": heap and {k: v for k, v in heap.items() if k != "line"},
        "echo": {k: echo.get("echo", {}).get(k) for k in ("rtt", "ok_per_s", "replies", "errors")},
        "echo_conns_failed": echo.get("conns_failed"),
        "echo_conns_dropped": echo.get("conns_dropped"),
        "gateway_closes": stats.get("closes"),
        "gateway_counters": stats.get("counters"),
        "conditions": json.loads(a.conditions),
        "samples": [{"t_s": t, "rss_bytes": r, "connections": c, "heap_bytes": h} for t, r, c, h in rows],
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    verdict = lambda r: "GROWS" if r["grows_beyond_noise"] else "flat"
    title = f"soak: RSS {verdict(rss)} ({rss['slope_bytes_per_hour']/2**20:+.2f} MiB/h after warm-up)"
    if heap:
        title += f", heap {verdict(heap)} ({heap['slope_bytes_per_hour']/2**20:+.2f} MiB/h)"
    with open(a.svg, "w") as f:
        f.write(svg(rows, a.warmup_s, [rss["line"]] + ([heap["line"]] if heap else []), title))
    print(describe("RSS", rss))
    if heap:
        print(describe("heap", heap))
    rtt = result["echo"]["rtt"] or {}
    print(f"echo: {result['echo']['ok_per_s']} ok/s, rtt p50 {rtt.get('p50_ms')} p99 {rtt.get('p99_ms')} ms; "
          f"churn rounds {result['conditions'].get('churn_rounds')} ({result['conditions'].get('churn_rounds_failed')} failed)")
    print(f"plot: {a.svg}")


if __name__ == "__main__":
    main()
