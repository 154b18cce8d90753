#!/usr/bin/env python3
"""Checks for monitoring/ (run by monitoring/test.sh; Python 3 standard library only).

  lint.py dashboard DASHBOARD.json RULES.yml
      The dashboard is an importable Grafana dashboard (schema, template
      variables, panel ids and positions, every query on $datasource), and
      every metric name and `reason` label value used by a dashboard query or
      an alert rule is one the gateway exports (METRICS below). With
      --promtool PATH, every dashboard query is also parsed by
      `promtool check rules` (each one wrapped as a recording rule, Grafana's
      variables replaced), since promtool has no expression-only check.

  lint.py scrape METRICS.txt
      A /metrics scrape has every metric name and reason of METRICS (the
      gateway_nats_* ones only if the node runs with NATS, i.e. the scrape
      has any of them), so the dashboard and the rules find what they query.

Exit status 1 with one line per problem, 0 with a summary line.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

# The gateway's /metrics contract (issue 15). Keep in step with
# gateway/src/metrics/ and monitoring/README.md.
GAUGES_PER_CORE = [
    "gateway_connections", "gateway_sessions", "gateway_rooms", "gateway_admission_level",
    "gateway_queue_delay_seconds", "gateway_nats_subscriptions_up", "gateway_nats_requests_up",
    "gateway_hot_rooms",
]
GAUGES = [
    "gateway_draining", "gateway_ready", "gateway_heap_allocated_bytes", "gateway_build_info",
]
PROCESS = [
    "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
    "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_start_time_seconds",
]
COUNTERS_PER_CORE = ["gateway_%s_total" % n for n in (
    "accepts accept_errors conn_limit_refusals auth_ok auth_failures frames_in frames_out "
    "bytes_in bytes_out heartbeats upstreams upstream_busy upstream_timeouts pushes "
    "pushes_too_large pushes_acked pushes_waited retransmits undelivered slow_consumers "
    "preauth_evictions refreshes refresh_failures expiry_notices resyncs tls_handshakes "
    "tls_failures tls_handovers tls_key_updates_sent tls_key_updates_received ws_upgrades "
    "ws_rejected room_coalesced room_batches upstream_aggregates upstream_aggregated").split()]
NATS_COUNTERS = ["gateway_nats_%s_total" % n for n in (
    "requests request_timeouts no_responders unavailable bad_replies remote_publishes "
    "publish_errors push_unconfirmed events_dropped events_confirmed events_resent "
    "events_unconfirmed inbound_pushes inbound_refused").split()]
HISTOGRAMS = [
    "gateway_upstream_rtt_seconds", "gateway_push_ack_seconds", "gateway_tls_handshake_seconds",
    "gateway_auth_seconds", "gateway_connect_auth_seconds",
]
REASONS = {
    "gateway_rejections_total": set(
        "conn_limit accept_rate upstream_rate inflight_conn inflight_core overload_shed room_rate "
        "room_upstream_rate".split()),
    # Live rooms (PROTOCOL.md §7.5); its `priority` label is low or normal.
    "gateway_room_pushes_dropped_total": set("room_rate overload batch_full".split()),
    "gateway_closes_total": set((
        "client_closed auth_timeout auth_failed stale_heartbeat bad_frame frame_too_large "
        "slow_consumer kicked drain shutdown io_error conn_limit protocol_violation "
        "duplicate_login tls_failed http_answered node_unavailable token_expired "
        "preauth_limit unspecified").split()),
}
# `unspecified` is a valid label value but need not be exported (nothing closes with it).
REASONS_OPTIONAL = {"unspecified"}

EXPORTED = set(GAUGES_PER_CORE + GAUGES + PROCESS + COUNTERS_PER_CORE + NATS_COUNTERS + list(REASONS))
QUERYABLE = EXPORTED | {"up"} | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "bool", "offset", "inf", "nan"}


def metric_names(expr):
    """Metric names a PromQL expression selects (not functions, keywords or labels)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)         # string literals
    s = re.sub(r"\{[^}]*\}", "", s)                       # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)                      # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\(|\s+(?:by|without)\b)?", s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def reason_values(expr):
    """(metric, reason value) pairs of `metric{... reason="v" ...}` (= and =~ alternatives)."""
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr):
        for op, v in re.findall(r'\breason\s*(=~|=|!=|!~)\s*"([^"]*)"', m.group(2)):
            if op in ("=", "!="):
                out.append((m.group(1), v))
            else:
                out += [(m.group(1), x) for x in v.split("|") if re.fullmatch(r"[a-z_]+", x)]
    return out


def rule_exprs(path):
    """(alert or record name, expr) of a rules file. PyYAML when there, else a reader for
    the plain layout of gateway-alerts.yml (`expr:` inline or as a `|` block)."""
    try:
        import yaml  # noqa: PLC0415
        doc = yaml.safe_load(open(path))
        return [(r.get("alert") or r.get("record"), str(r["expr"]))
                for g in doc["groups"] for r in g["rules"]]
    except ImportError:
        pass
    out, name, lines = [], None, open(path).read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-?\s*(alert|record):\s*(\S+)", line)
        if m:
            name = m.group(2)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest in ("|", ">", "|-", ">-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                out.append((name, " ".join(body)))
                continue
            out.append((name, rest.strip("'\"")))
        i += 1
    return out


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def grafana_to_promql(expr):
    """Grafana's variables replaced by values PromQL accepts."""
    for k, v in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"),
                 ("${job}", "gateway"), ("$job", "gateway"), ("${instance}", ".*"), ("$instance", ".*")):
        expr = expr.replace(k, v)
    return expr


def check_names(where, expr, problems):
    for n in sorted(metric_names(expr) - QUERYABLE):
        problems.append("%s: unknown metric %s in: %s" % (where, n, expr))
    for metric, v in reason_values(expr):
        if metric in REASONS and v not in REASONS[metric]:
            problems.append('%s: %s has no reason="%s"' % (where, metric, v))


def dashboard(dash_path, rules_path, promtool):
    problems, exprs = [], []
    with open(dash_path) as f:
        d = json.load(f)
    if not 36 <= d.get("schemaVersion", 0) <= 41:
        problems.append("schemaVersion %s: expected 36-41 (Grafana 9.4-11)" % d.get("schemaVersion"))
    if not d.get("uid") or not d.get("title"):
        problems.append("the dashboard needs a uid and a title")
    if d.get("id") is not None:
        problems.append("id must be null in an importable dashboard")
    tv = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = tv.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("needs a template variable `datasource` of type datasource, query prometheus")
    for name in ("job", "instance"):
        v = tv.get(name)
        if not v or v.get("type") != "query" or v.get("datasource", {}).get("uid") != "${datasource}":
            problems.append("needs a query variable `%s` on ${datasource}" % name)
    ids = set()
    count = 0
    for p in walk_panels(d.get("panels", [])):
        where = "panel %s %r" % (p.get("id"), p.get("title"))
        if p.get("id") in ids:
            problems.append("%s: duplicate id" % where)
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            problems.append("%s: bad gridPos %s" % (where, g))
        if p.get("type") == "row":
            continue
        count += 1
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append("%s: datasource is not ${datasource}" % where)
        if not p.get("targets"):
            problems.append("%s: no query" % where)
        for t in p.get("targets", []):
            e = t.get("expr", "")
            if not e:
                problems.append("%s: target %s has no expr" % (where, t.get("refId")))
                continue
            if t.get("datasource", {}).get("uid", "${datasource}") != "${datasource}":
                problems.append("%s: target %s not on ${datasource}" % (where, t.get("refId")))
            check_names(where, e, problems)
            exprs.append((where, e))
    used = set()
    for _, e in exprs:
        used |= metric_names(e)
    rules = rule_exprs(rules_path)
    if not rules:
        problems.append("%s: no rules found" % rules_path)
    for name, e in rules:
        check_names("%s %s" % (os.path.basename(rules_path), name), e, problems)
    if promtool:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "dashboard-queries.yml")
            with open(path, "w") as f:
                f.write("groups:\n  - name: dashboard\n    rules:\n")
                for i, (_, e) in enumerate(exprs):
                    f.write("      - record: dashboard_query_%d\n        expr: %s\n"
                            % (i, json.dumps(grafana_to_promql(e))))
            r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
            if r.returncode != 0:
                problems.append("promtool rejects a dashboard query:\n" + r.stdout + r.stderr)
    unused = sorted(n for n in EXPORTED if n not in used and n != "gateway_build_info")
    for p in problems:
        print("FAIL: " + p)
    if not problems:
        print("dashboard: %d panels, %d queries%s; %d rules; every metric name and reason is in the contract"
              % (count, len(exprs), " (all parsed by promtool)" if promtool else "", len(rules)))
        if unused:
            print("  (exported but not on the dashboard: %s)" % ", ".join(unused))
    return 1 if problems else 0


def scrape(path):
    names, reasons = set(), {m: set() for m in REASONS}
    for line in open(path):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?", line)
        if not m:
            continue
        names.add(m.group(1))
        if m.group(1) in reasons and m.group(2):
            r = re.search(r'reason="([^"]*)"', m.group(2))
            if r:
                reasons[m.group(1)].add(r.group(1))
    nats = any(n.startswith("gateway_nats_") for n in names)
    want = sorted(QUERYABLE - {"up"})
    missing = [n for n in want if n not in names and (nats or not n.startswith("gateway_nats_"))]
    problems = ["missing metric %s" % n for n in missing]
    for metric, values in REASONS.items():
        got = reasons[metric]
        upper = sorted(v for v in got - values if v.lower() in values)
        if upper:
            problems.append("%s has upper-case reasons (%s, ...): the contract is lower-case (%s, ...)"
                            % (metric, upper[0], upper[0].lower()))
            got = got | {v.lower() for v in upper}
        for v in sorted(values - got - REASONS_OPTIONAL):
            problems.append('missing %s{reason="%s"}' % (metric, v))
        for v in sorted(got - values - set(upper)):
            problems.append('%s{reason="%s"} is not in the contract' % (metric, v))
    for p in problems:
        print("FAIL: " + p)
    if not problems:
        print("scrape: every metric the dashboard and the rules use is there%s"
              % ("" if nats else " (no NATS on this node: gateway_nats_* not checked)"))
    return 1 if problems else 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "dashboard":
        promtool = None
        if "--promtool" in argv:
            promtool = argv[argv.index("--promtool") + 1]
        return dashboard(argv[1], argv[2], promtool)
    if len(argv) == 2 and argv[0] == "scrape":
        return scrape(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
