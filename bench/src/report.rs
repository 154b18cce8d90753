//! The flood's report: the workers' results merged (counts summed,
//! histograms added), the coordinator's figures, a human summary on stdout
//! and the JSON document, stamped ([`stamp`]) with its schema version, the
//! tool's and the gateway's versions and the time of the run.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::admin::GatewayVersion;
use crate::args::Scenario;
use crate::coord::{mib, Coord};
use crate::msg::{
    self, add_b64, add_counts, Seg, WorkerResult, PHASE_ACTION, PHASE_FULL, PHASE_MARK,
};
use crate::phases::Figures;

/// Version of the JSON report's layout. 1 (implicit: no field) until the
/// stamp fields came; 2 added `schema_version`, `tool_version`,
/// `gateway_version`, `gateway_revision`, `timestamp`, `duration_s`,
/// `sampled_latency`, `config.admin` and the `latency_*` fields of
/// `rss.samples` (BENCHMARKS.md, "Flood reports"). Raise it when a field
/// changes meaning or goes away; adding fields does not break readers.
pub const SCHEMA_VERSION: u64 = 2;

/// This tool's version (the bench crate's).
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Adds what says where a report comes from: `schema_version`,
/// `tool_version`, `gateway_version` and `gateway_revision` (null when not
/// known from the gateway itself) and `timestamp` (`started`, UTC RFC 3339).
pub fn stamp(doc: &mut Value, started: SystemTime, gw: &GatewayVersion) {
    let secs = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    doc["schema_version"] = json!(SCHEMA_VERSION);
    doc["tool_version"] = json!(TOOL_VERSION);
    doc["gateway_version"] = json!(gw.version);
    doc["gateway_revision"] = json!(gw.revision);
    doc["timestamp"] = json!(utc_rfc3339(secs));
}

/// `unix_s` as UTC RFC 3339 (`2026-12-08T09:30:00Z`).
pub fn utc_rfc3339(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let rem = unix_s % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian; H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// All workers' results added up.
#[derive(Default)]
struct Merged {
    established: u64,
    failed: BTreeMap<String, u64>,
    retried: BTreeMap<String, u64>,
    dropped: BTreeMap<String, u64>,
    tls_sessions: BTreeMap<String, u64>,
    open_at_end: u64,
    pings: u64,
    pongs: u64,
    other_frames: u64,
    echo_sent: u64,
    echo_status: BTreeMap<String, u64>,
    echo_window_ns: (u64, u64),
    sends_ns: Vec<u64>,
    sender_error: Option<String>,
    sender_replies: BTreeMap<String, u64>,
    held_future_bytes: usize,
    fds_at_end: usize,
    flood_rss_bytes: u64,
}

fn merge(results: &[&WorkerResult], rounds: u32) -> (Merged, Hists, Vec<RoundM>) {
    let mut m = Merged {
        echo_window_ns: (u64::MAX, 0),
        ..Default::default()
    };
    let mut h = Hists::default();
    let mut rs: Vec<RoundM> = (0..rounds).map(|_| RoundM::default()).collect();
    for r in results {
        m.established += r.established;
        add_counts(&mut m.failed, &r.failed);
        add_counts(&mut m.retried, &r.retried);
        add_counts(&mut m.dropped, &r.dropped);
        add_counts(&mut m.tls_sessions, &r.tls_sessions);
        add_counts(&mut m.echo_status, &r.echo_status);
        add_counts(&mut m.sender_replies, &r.sender_replies);
        m.open_at_end += r.open_at_end;
        m.pings += r.pings;
        m.pongs += r.pongs;
        m.other_frames += r.other_frames;
        m.echo_sent += r.echo_sent;
        m.echo_window_ns.0 = m.echo_window_ns.0.min(r.echo_window_ns.0);
        m.echo_window_ns.1 = m.echo_window_ns.1.max(r.echo_window_ns.1);
        m.sends_ns.extend(&r.sends_ns);
        m.sender_error = m.sender_error.take().or(r.sender_error.clone());
        m.held_future_bytes = r.held_future_bytes;
        m.fds_at_end = m.fds_at_end.max(r.fds_at_end);
        m.flood_rss_bytes += r.flood_rss_bytes;
        add_b64(&mut h.connect, &r.connect_us);
        add_b64(&mut h.transport, &r.transport_us);
        add_b64(&mut h.ready, &r.ready_us);
        add_b64(&mut h.join, &r.join_us);
        add_b64(&mut h.reconnect, &r.reconnect_us);
        add_b64(&mut h.rtt, &r.echo_rtt_us);
        for ro in &r.rounds {
            if let Some(into) = rs.get_mut(ro.round as usize) {
                into.count += ro.count;
                into.last_ns = into.last_ns.max(ro.last_ns);
                add_b64(&mut into.lat, &ro.lat_us);
            }
        }
    }
    (m, h, rs)
}

struct Hists {
    connect: Histogram<u64>,
    transport: Histogram<u64>,
    ready: Histogram<u64>,
    join: Histogram<u64>,
    reconnect: Histogram<u64>,
    rtt: Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Hists {
        Hists {
            connect: msg::histogram(),
            transport: msg::histogram(),
            ready: msg::histogram(),
            join: msg::histogram(),
            reconnect: msg::histogram(),
            rtt: msg::histogram(),
        }
    }
}

struct RoundM {
    count: u64,
    last_ns: u64,
    lat: Histogram<u64>,
}

impl Default for RoundM {
    fn default() -> RoundM {
        RoundM {
            count: 0,
            last_ns: 0,
            lat: msg::round_histogram(),
        }
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Percentiles of a microsecond histogram, in ms.
pub fn lat(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(), "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9), "p99_ms": ms(h, 0.99),
        "p999_ms": ms(h, 0.999),
        "max_ms": h.max() as f64 / 1000.0, "mean_ms": h.mean() / 1000.0,
    })
}

fn lat_line(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} p90 {:.2} p99 {:.2} p999 {:.2} max {:.2} ms (n={})",
        ms(h, 0.5),
        ms(h, 0.9),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

fn seg_json(s: &Seg) -> Value {
    let secs = s.last_ns.saturating_sub(s.start_ns) as f64 / 1e9;
    let rate = if secs > 0.0 && s.start_ns != u64::MAX {
        s.established as f64 / secs
    } else {
        0.0
    };
    json!({"established": s.established, "seconds": secs, "rate_per_s": rate})
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// Builds the JSON report and prints the human summary.
pub fn build(co: &Coord, f: &Figures) -> Value {
    let c = &co.c;
    let results: Vec<&WorkerResult> = co.results.iter().flatten().collect();
    let rounds = match &co.sc {
        Scenario::Broadcast(b) => b.rounds,
        _ => 0,
    };
    let (m, h, rs) = merge(&results, rounds);
    let full = co.ready_sum(PHASE_FULL);
    let fseg = seg_json(&full.seg);
    let failed_total: u64 = m.failed.values().sum();
    println!(
        "established {}/{} ({:.0}/s over {:.2} s), failed {failed_total} {:?}{}",
        full.established,
        c.conns,
        fseg["rate_per_s"].as_f64().unwrap_or(0.0),
        fseg["seconds"].as_f64().unwrap_or(0.0),
        m.failed,
        if m.retried.is_empty() {
            String::new()
        } else {
            format!(", retried {:?}", m.retried)
        }
    );
    let t = &c.transport;
    println!(
        "transport: {}{}",
        t.name(),
        if m.tls_sessions.is_empty() {
            String::new()
        } else {
            format!(", TLS handshakes {:?}", m.tls_sessions)
        }
    );
    println!("connect+handshake: {}", lat_line(&h.ready));
    println!("connect only:      {}", lat_line(&h.connect));
    if !h.transport.is_empty() {
        println!(
            "connect+{:<11}{}",
            format!("{}:", t.name()),
            lat_line(&h.transport)
        );
    }
    if !h.join.is_empty() {
        println!("join/subscribe:    {}", lat_line(&h.join));
    }
    let mut doc = json!({
        "scenario": co.sc.name(),
        "protocol": c.protocol,
        "transport": t.name(),
        "transport_config": {
            "tls": t.tls, "ws": t.ws,
            "tls_ca": t.ca.as_ref().map(|p| p.display().to_string()),
            "tls_server_name": t.tls.then_some(&t.tls_server_name),
            "tls_resume": t.tls.then_some(t.tls_resume),
            "ws_path": t.ws.then_some(&t.ws_path),
            "tls_handshakes": m.tls_sessions,
        },
        "target": c.target.to_string(),
        "conns_target": c.conns,
        "conns_established": full.established,
        "conns_failed": {"total": failed_total, "by_reason": m.failed},
        "conns_retried": m.retried,
        "conns_open_at_end": m.open_at_end,
        "conns_dropped": m.dropped,
        "connect_auth_latency": lat(&h.ready),
        "connect_latency": lat(&h.connect),
        "ramp": fseg,
        "ramp_s": fseg["seconds"],
        "connect_rate_per_s": fseg["rate_per_s"],
        "deliveries_received": co.total().deliveries,
        "pings_sent": m.pings,
        "pongs_received": m.pongs,
        "other_frames_received": m.other_frames,
        "interrupted": co.interrupted,
        "notes": co.notes,
        "duration_s": co.duration_s,
        "sampled_latency": {
            "kind": co.latency.name(), "what": co.latency.label(),
            "whole_run": lat(&co.live_all),
        },
        "rss": {
            "pids": c.pids, "at_start": f.at_start, "at_mark": f.at_mark,
            "at_full": f.at_full, "at_end": f.at_end, "samples": co.samples,
        },
        "flood": {
            "procs": c.procs, "cores_per_proc": c.cores, "held_future_bytes": m.held_future_bytes,
            "fds_at_stop_max": m.fds_at_end, "rss_bytes_sum": m.flood_rss_bytes,
        },
        "config": {
            "rate": c.rate, "inflight": c.inflight, "sources_per_proc": c.sources,
            "source_base": c.source_base.to_string(), "heartbeat_ms": c.heartbeat_ms,
            "timeout_ms": c.timeout_ms, "retries": c.retries, "first_id": c.first_id,
            "mark": c.mark, "settle_s": c.settle_s, "sample_ms": c.sample_ms,
            "admin": c.admin.map(|a| a.to_string()),
        },
    });
    if !h.join.is_empty() {
        doc["join_latency"] = lat(&h.join);
    }
    if !h.transport.is_empty() {
        doc["connect_transport_latency"] = lat(&h.transport);
    }
    // Memory slope between the --mark reading and the full ramp.
    if let (Some(a), Some(b)) = (&f.at_mark, &f.at_full) {
        let mk = co.ready_sum(PHASE_MARK);
        let added = full.open.saturating_sub(mk.open);
        doc["mark"] = json!({"open": mk.open, "ramp": seg_json(&mk.seg)});
        if added > 0 {
            let per = |x: Option<u64>, y: Option<u64>| {
                x.zip(y).map(|(x, y)| (y as f64 - x as f64) / added as f64)
            };
            let bpc = per(a.rss_bytes, b.rss_bytes);
            let slab = per(Some(a.slab_bytes), Some(b.slab_bytes));
            let sunr = per(Some(a.sunreclaim_bytes), Some(b.sunreclaim_bytes));
            doc["bytes_per_conn"] = json!(bpc);
            doc["slab_bytes_per_conn_pair"] = json!(slab);
            doc["sunreclaim_bytes_per_conn_pair"] = json!(sunr);
            println!(
                "memory: {} -> {} for {} -> {} connections: {:.0} bytes/conn (server RSS), {:.0} bytes/conn pair (kernel slab)",
                mib(a.rss_bytes), mib(b.rss_bytes), mk.open, full.open,
                bpc.unwrap_or(f64::NAN), slab.unwrap_or(f64::NAN)
            );
        }
    }
    if let Some((ticks, n)) = f.ramp_cpu.filter(|r| r.1 > 0) {
        let us = ticks as f64 * 1e6 / crate::procfs::clk_tck() as f64 / n as f64;
        doc["server_cpu_us_per_conn_setup"] = json!(us);
        println!("server CPU per connection set up: {us:.1} us (over the ramp of {n})");
    }
    if let Some(b) = &f.at_full {
        let d = |x: u64, y: u64| y as i64 - x as i64;
        doc["kernel_slab_delta_bytes"] = json!(d(f.at_start.slab_bytes, b.slab_bytes));
        doc["server_rss_delta_bytes"] =
            json!(f.at_start.rss_bytes.zip(b.rss_bytes).map(|(x, y)| d(x, y)));
    }
    if let Some(w) = &f.window {
        let per_s = |n: u64| {
            if w.wall_s > 0.0 {
                n as f64 / w.wall_s
            } else {
                0.0
            }
        };
        doc["window"] = json!({
            "wall_s": w.wall_s, "server_cpu_pct": w.cpu_pct(), "pings": w.pings, "pongs": w.pongs,
            "heartbeats_per_s": per_s(w.pings), "pongs_per_s": per_s(w.pongs),
            "deliveries": w.deliveries, "deliveries_per_s": per_s(w.deliveries),
        });
        println!(
            "window {:.1} s: server CPU {} of one core, {:.0} heartbeats/s, {:.0} pongs/s, {:.0} deliveries/s",
            w.wall_s,
            w.cpu_pct().map_or("-".into(), |p| format!("{p:.2}%")),
            per_s(w.pings),
            per_s(w.pongs),
            per_s(w.deliveries)
        );
    }
    println!(
        "held: open at end {}, dropped {:?}, pings {} pongs {}; server rss {} at start, {} at end; flood rss {}",
        m.open_at_end, m.dropped, m.pings, m.pongs, mib(f.at_start.rss_bytes), mib(f.at_end.rss_bytes),
        mib(Some(m.flood_rss_bytes))
    );
    if matches!(co.sc, Scenario::Hold(_) | Scenario::Storm(_)) && !co.live_all.is_empty() {
        println!(
            "{} (whole run): {}",
            co.latency.label(),
            lat_line(&co.live_all)
        );
    }
    match &co.sc {
        Scenario::Echo(e) => {
            let (a, b) = m.echo_window_ns;
            let secs = if b > a { (b - a) as f64 / 1e9 } else { 0.0 };
            let ok = m.echo_status.get("OK").copied().unwrap_or(0);
            let rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
            println!(
                "echo: {} sent, replies {:?}, {rate:.0} ok/s (target {}/s); rtt {}",
                m.echo_sent,
                m.echo_status,
                e.msgs_per_s,
                lat_line(&h.rtt)
            );
            doc["echo"] = json!({
                "msgs_per_s_target": e.msgs_per_s, "window_s": secs, "sent": m.echo_sent,
                "replies": m.echo_status, "ok_per_s": rate, "rtt": lat(&h.rtt),
            });
        }
        Scenario::Chat(e) => {
            let (a, b) = m.echo_window_ns;
            let secs = if b > a { (b - a) as f64 / 1e9 } else { 0.0 };
            let got = h.rtt.len();
            let rate = if secs > 0.0 { got as f64 / secs } else { 0.0 };
            println!(
                "chat: {} sent, replies {:?}, {got} pushes received ({rate:.0}/s, target {}/s, {} not (yet) received at the end); send -> push {}",
                m.echo_sent,
                m.echo_status,
                e.msgs_per_s,
                m.echo_sent.saturating_sub(got),
                lat_line(&h.rtt)
            );
            doc["chat"] = json!({
                "msgs_per_s_target": e.msgs_per_s, "window_s": secs, "sent": m.echo_sent,
                "replies": m.echo_status, "pushes_received": got, "pushes_per_s": rate,
                "not_received_at_end": m.echo_sent.saturating_sub(got),
                "send_to_push": lat(&h.rtt),
            });
        }
        Scenario::Broadcast(b) => doc["broadcast"] = broadcast(b, f.receivers, &m, rs),
        Scenario::Storm(_) => {
            let s = co.ready_sum(PHASE_ACTION);
            let sj = seg_json(&s.seg);
            let storm_failed: BTreeMap<&String, &u64> = m
                .failed
                .iter()
                .filter(|(k, _)| k.starts_with("storm:"))
                .collect();
            println!(
                "storm: {} dropped, {} back in {:.2} s ({:.0}/s), failed {:?}; reconnect {}",
                full.open,
                s.seg.established,
                sj["seconds"].as_f64().unwrap_or(0.0),
                sj["rate_per_s"].as_f64().unwrap_or(0.0),
                storm_failed,
                lat_line(&h.reconnect)
            );
            doc["storm"] = json!({
                "dropped": full.open, "back": s.seg.established,
                "all_back": s.seg.established >= full.open && full.open > 0,
                "time_all_back_s": sj["seconds"], "reconnect_rate_per_s": sj["rate_per_s"],
                "reconnect_latency": lat(&h.reconnect), "failed": storm_failed,
            });
        }
        Scenario::Hold(_) => {}
    }
    for n in &co.notes {
        println!("note: {n}");
    }
    doc
}

fn broadcast(b: &crate::args::BroadcastArgs, receivers: u64, m: &Merged, rs: Vec<RoundM>) -> Value {
    let mut all = msg::round_histogram();
    let mut per_round = Vec::with_capacity(rs.len());
    let (mut delivered, mut missing, mut last, mut busy_s) = (0u64, 0u64, 0u64, 0f64);
    for (i, r) in rs.iter().enumerate() {
        let Some(&sent) = m.sends_ns.get(i) else {
            continue;
        };
        let _ = all.add(&r.lat);
        delivered += r.count;
        let miss = receivers.saturating_sub(r.count);
        missing += miss;
        last = last.max(r.last_ns);
        let all_ms = r.last_ns.saturating_sub(sent) as f64 / 1e6;
        busy_s += all_ms / 1000.0;
        let rate = if all_ms > 0.0 {
            r.count as f64 / (all_ms / 1000.0)
        } else {
            0.0
        };
        println!(
            "round {i}: {} delivered, {miss} missing, all delivered in {all_ms:.1} ms ({rate:.0}/s); {}",
            r.count,
            lat_line(&r.lat)
        );
        per_round.push(json!({
            "round": i, "delivered": r.count, "missing": miss, "all_delivered_ms": all_ms,
            "deliveries_per_s": rate, "p50_ms": ms(&r.lat, 0.5), "p90_ms": ms(&r.lat, 0.9),
            "p99_ms": ms(&r.lat, 0.99), "max_ms": r.lat.max() as f64 / 1000.0,
        }));
    }
    let pick = |k: &str| {
        per_round
            .iter()
            .filter_map(|r| r[k].as_f64())
            .collect::<Vec<f64>>()
    };
    let first = m.sends_ns.first().copied().unwrap_or(0);
    let span_s = last.saturating_sub(first) as f64 / 1e9;
    let overall = if span_s > 0.0 {
        delivered as f64 / span_s
    } else {
        0.0
    };
    let busy = if busy_s > 0.0 {
        delivered as f64 / busy_s
    } else {
        0.0
    };
    let med_all = median(pick("all_delivered_ms"));
    let med_p99 = median(pick("p99_ms"));
    println!(
        "broadcast: {} receivers, {} rounds sent, {delivered} delivered, {missing} missing; median round: all delivered {} ms, p99 {} ms; {busy:.0} deliveries/s while delivering, {overall:.0}/s from first send to last receipt{}",
        receivers,
        m.sends_ns.len(),
        med_all.map_or("-".into(), |v| format!("{v:.1}")),
        med_p99.map_or("-".into(), |v| format!("{v:.1}")),
        m.sender_error.as_ref().map_or(String::new(), |e| format!("; sender error: {e}"))
    );
    json!({
        "receivers": receivers, "rounds": b.rounds, "rounds_sent": m.sends_ns.len(),
        "interval_ms": b.interval_ms, "room": b.room,
        "per_round": per_round, "all_rounds": lat(&all),
        "all_delivered_ms_median": med_all, "p99_ms_median": med_p99,
        "deliveries_total": delivered, "missing_total": missing,
        "deliveries_per_s": busy, "deliveries_per_s_span": overall, "span_s": span_s,
        "sender_error": m.sender_error, "sender_replies": m.sender_replies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        // Checked with `date -u -d @N +%Y-%m-%dT%H:%M:%SZ`.
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(utc_rfc3339(1_796_729_545), "2026-12-08T11:32:25Z");
        assert_eq!(utc_rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn stamps() {
        let mut doc = json!({"scenario": "hold"});
        let gw = GatewayVersion {
            version: Some("0.1.0".into()),
            revision: None,
        };
        stamp(&mut doc, UNIX_EPOCH, &gw);
        assert_eq!(doc["schema_version"], 2);
        assert_eq!(doc["gateway_version"], "0.1.0");
        assert!(doc["gateway_revision"].is_null());
        assert_eq!(doc["timestamp"], "1970-01-01T00:00:00Z");
        assert_eq!(doc["tool_version"], TOOL_VERSION);
    }
}
