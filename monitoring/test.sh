#!/usr/bin/env bash
# Tests of monitoring/ (issue 15): the alert rules (promtool check rules,
# promtool test rules), the Grafana dashboard (JSON, structure, every query
# parsed by promtool, every metric name in the gateway's /metrics contract)
# and, when a gateway is at hand, its /metrics (promtool check metrics, and
# every metric the dashboard and rules use is exported).
#
#   monitoring/test.sh                         # starts target/debug/gateway if built
#   GATEWAY_BIN=target/release/gateway monitoring/test.sh
#   GATEWAY_METRICS_URL=http://127.0.0.1:9100/metrics monitoring/test.sh
#   MONITORING_SKIP_METRICS=1 monitoring/test.sh   # rules and dashboard only
#
# promtool: $PROMTOOL, else the one on PATH, else Debian's package
# `prometheus` is downloaded and only its promtool kept, in target/tools/
# (no root, no service started; needs apt's package lists). About 5 s once
# promtool is there; exits 1 if any check fails.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
bad() { failed=$((failed + 1)); failures+=("$1"); printf 'FAIL  %s\n' "$1"; }

# ------------------------------------------------------------------ promtool
find_promtool() {
  if [ -n "${PROMTOOL:-}" ]; then echo "$PROMTOOL"; return; fi
  if command -v promtool >/dev/null; then command -v promtool; return; fi
  if [ -x target/tools/promtool ]; then echo target/tools/promtool; return; fi
  return 1
}

install_promtool() {
  # Debian's prometheus package has promtool (a static Go binary needing
  # only libc). `apt-get install prometheus` would also install and, under
  # systemd, start a Prometheus server; the binary alone is enough.
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    return 1
  fi
  local tmp
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -q >/dev/null 2>&1 || true
      (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) || { rm -rf "$tmp"; return 1; }
    else
      rm -rf "$tmp"; return 1
    fi
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x" \
    && mkdir -p target/tools \
    && install -m 0755 "$tmp/x/usr/bin/promtool" target/tools/promtool
  local rc=$?
  rm -rf "$tmp"
  return $rc
}

if ! PROMTOOL=$(find_promtool); then
  echo "promtool not found: fetching Debian's prometheus package for its promtool (target/tools/promtool)"
  if install_promtool && PROMTOOL=$(find_promtool); then
    :
  else
    cat >&2 <<'EOF'
promtool not found and it could not be installed here.
Install it, then re-run:
  Debian/Ubuntu:  apt-get install --no-install-recommends prometheus   (provides /usr/bin/promtool)
  elsewhere:      the promtool binary of a Prometheus 2.x release on PATH, or PROMTOOL=/path/to/promtool
EOF
    exit 1
  fi
fi
echo "promtool: $("$PROMTOOL" --version 2>&1 | head -1)"

# ------------------------------------------------------------------ rules
rules=monitoring/prometheus/gateway-alerts.yml
rules_test=monitoring/prometheus/gateway-alerts_test.yml
dash=monitoring/grafana/gateway-dashboard.json

if out=$("$PROMTOOL" check rules "$rules" 2>&1); then
  ok "promtool check rules ($(grep -o '[0-9]* rules found' <<<"$out"))"
else
  echo "$out"; bad "promtool check rules $rules"
fi

if out=$("$PROMTOOL" test rules "$rules_test" 2>&1); then
  ok "promtool test rules ($(grep -c 'eval_time:' "$rules_test") evaluations)"
else
  echo "$out"; bad "promtool test rules $rules_test"
fi

# ------------------------------------------------------------------ dashboard
if python3 -m json.tool "$dash" >/dev/null; then
  ok "dashboard is JSON (python3 -m json.tool)"
else
  bad "python3 -m json.tool $dash"
fi

if out=$(python3 monitoring/lint.py dashboard "$dash" "$rules" --promtool "$PROMTOOL" 2>&1); then
  echo "$out" | sed 's/^/      /'
  ok "dashboard and rule queries: structure, names, promtool parse"
else
  echo "$out"; bad "monitoring/lint.py dashboard"
fi

# ------------------------------------------------------------------ /metrics
scrape=$(mktemp)
gw_pid=
nats_pid=
cleanup() {
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -INT "$gw_pid" 2>/dev/null
    wait "$gw_pid" 2>/dev/null
  fi
  if [ -n "$nats_pid" ] && kill -0 "$nats_pid" 2>/dev/null; then
    kill -TERM "$nats_pid" 2>/dev/null
    wait "$nats_pid" 2>/dev/null
  fi
  gw_pid= nats_pid=
  rm -f "$scrape" "${gw_log:-}" "${nats_log:-}"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

check_scrape() {
  local from=$1 out rc
  out=$("$PROMTOOL" check metrics <"$scrape" 2>&1)
  rc=$?
  if [ $rc = 0 ]; then
    ok "promtool check metrics ($from)"
  else
    printf '%s\n' "$out" | sed 's/^/      /'
    bad "promtool check metrics ($from): /metrics fails promtool's checks (above)"
  fi
  if out=$(python3 monitoring/lint.py scrape "$scrape" 2>&1); then
    echo "$out" | sed 's/^/      /'
    ok "every metric the dashboard and rules use is exported ($from)"
  else
    printf '%s\n' "$out" | sed 's/^/      /'
    bad "metrics the dashboard and rules use are missing from /metrics ($from): see monitoring/README.md, Metrics"
  fi
}

if [ -n "${MONITORING_SKIP_METRICS:-}" ]; then
  echo "skip  /metrics checks (MONITORING_SKIP_METRICS is set)"
elif [ -n "${GATEWAY_METRICS_URL:-}" ]; then
  if curl -sf --max-time 10 "$GATEWAY_METRICS_URL" -o "$scrape"; then
    check_scrape "$GATEWAY_METRICS_URL"
  else
    bad "cannot fetch $GATEWAY_METRICS_URL"
  fi
else
  bin=${GATEWAY_BIN:-target/debug/gateway}
  if [ ! -x "$bin" ]; then
    echo "skip  /metrics checks: no gateway binary at $bin (cargo build -p gateway, or set GATEWAY_BIN or GATEWAY_METRICS_URL)"
  else
    port=$(free_port)
    admin=$(free_port)
    gw_log=$(mktemp)
    # Demo mode (no keys needed), one core, loopback ports of its own; with
    # a nats-server on PATH (.ci/run installs one) also NATS, so that the
    # gateway_nats_* metrics are there to check.
    nats_args=()
    what="$bin --demo"
    if command -v "${NATS_SERVER_BIN:-nats-server}" >/dev/null; then
      nats_port=$(free_port)
      nats_log=$(mktemp)
      "${NATS_SERVER_BIN:-nats-server}" -a 127.0.0.1 -p "$nats_port" >"$nats_log" 2>&1 &
      nats_pid=$!
      nats_args=(--nats-urls "nats://127.0.0.1:$nats_port")
      what="$what --nats-urls (nats-server on $nats_port)"
    fi
    "$bin" --demo --cores 1 --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
      "${nats_args[@]}" >"$gw_log" 2>&1 &
    gw_pid=$!
    up=
    # /readyz: with NATS, ready once the subscriptions are in place.
    for _ in $(seq 150); do
      if curl -sf --max-time 2 "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then up=1; break; fi
      kill -0 "$gw_pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$up" ]; then
      tail -20 "$gw_log"
      bad "$what did not get ready on 127.0.0.1:$admin within 15 s"
    elif curl -sf --max-time 10 "http://127.0.0.1:$admin/metrics" -o "$scrape"; then
      check_scrape "$what"
    else
      bad "cannot fetch http://127.0.0.1:$admin/metrics"
    fi
    # SIGTERM drains (no connections: it exits at once); cleanup sends
    # SIGINT to one still running after 10 s.
    kill -TERM "$gw_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    cleanup
  fi
fi

echo
if [ "$failed" -gt 0 ]; then
  echo "failed:"
  printf '  %s\n' "${failures[@]}"
fi
echo "monitoring: $passed passed, $failed failed"
[ "$failed" = 0 ]
