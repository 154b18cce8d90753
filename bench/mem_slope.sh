#!/usr/bin/env bash
# Memory slope of the gateway: RSS of one gateway process (one core) with
# N1 (1,000) and then N2 (15,000) authenticated, idle connections (30 s
# heartbeats), and bytes_per_conn = (rss_N2 - rss_N1) / (N2 - N1).
#
# Two flood processes, same gateway: the first opens N1 connections and
# holds them; once they are up and settled the gateway's VmRSS is read; the
# second adds N2 - N1 more; once settled VmRSS is read again. Kernel slab
# (/proc/meminfo Slab, SUnreclaim) is read at the same points; its delta
# covers both ends of each loopback connection (client and server socket).
#
# mimalloc reserves its arena with MADV_HUGEPAGE, so with transparent huge
# pages the gateway's RSS moves in 2 MiB steps (about 150 bytes per
# connection at this scale): by default the gateway runs with
# MIMALLOC_ALLOW_THP=0 for 4 KiB resolution; GW_ALLOW_THP=1 keeps THP.
#
# Usage: bench/mem_slope.sh        (env: PORT ADMIN_PORT N1 N2 RATE SOURCES
#                                    SETTLE_S HEARTBEAT_MS GW_ALLOW_THP OUT)
# Writes $OUT (default bench/results/mem_slope.json) and the two flood
# reports next to it.
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=${PORT:-7000}
ADMIN_PORT=${ADMIN_PORT:-9100}
HOST=127.0.0.1
N1=${N1:-1000}
N2=${N2:-15000}
RATE=${RATE:-5000}
SOURCES=${SOURCES:-8}
SETTLE_S=${SETTLE_S:-12}
HEARTBEAT_MS=${HEARTBEAT_MS:-30000}
GW_ALLOW_THP=${GW_ALLOW_THP:-0}
OUT=${OUT:-bench/results/mem_slope.json}
OUT_DIR=$(dirname "$OUT")
mkdir -p "$OUT_DIR"
TMP=$(mktemp -d)

if (( N2 - N1 > 19000 || N1 > 19000 )); then
    echo "each flood process holds at most ~19,000 sockets (RLIMIT_NOFILE); keep N1 and N2-N1 below that" >&2
    exit 2
fi

GW_PID=""
FLOOD_PIDS=()
cleanup() {
    for p in "${FLOOD_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    if [[ -n "$GW_PID" ]] && kill -TERM "$GW_PID" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

cargo build --release -p gateway -p bench

rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }
thp() { awk '/^AnonHugePages:/ {print $2 * 1024}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
meminfo() { awk -v k="$1:" '$1 == k {print $2 * 1024}' /proc/meminfo; }
gw_conns() { curl -fsS "http://$HOST:$ADMIN_PORT/metrics" 2>/dev/null | awk '/^gateway_sessions(\{| )/ {s += $NF} END {print s + 0}'; }

# wait_ready FILE PID TIMEOUT_S: until the flood writes its ready file.
wait_ready() {
    local file=$1 pid=$2 left=$3
    while [[ ! -s "$file" ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "flood $pid exited before its connections were up" >&2
            exit 1
        fi
        (( left-- > 0 )) || { echo "timed out waiting for $file" >&2; exit 1; }
        sleep 1
    done
    cat "$file"
}

# established COUNT from a ready file.
established() { sed -n 's/.*"established":\([0-9]*\).*/\1/p' "$1"; }

# settle_rss PID: VmRSS after SETTLE_S seconds (last of one sample a second).
# The default 12 s lets every connection's auth deadline (auth_timeout_ms,
# 10 s) fire and its idle deadline be placed on the timing wheel, so both
# readings see the wheel in the same steady state.
settle_rss() {
    local v=0
    for _ in $(seq "$SETTLE_S"); do sleep 1; v=$(rss "$1"); done
    echo "$v"
}

echo "== gateway: 1 core, $HOST:$PORT, MIMALLOC_ALLOW_THP=$GW_ALLOW_THP"
MIMALLOC_ALLOW_THP=$GW_ALLOW_THP ./target/release/gateway --demo --cores 1 --listen "$HOST:$PORT" \
    --admin-listen "$HOST:$ADMIN_PORT" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 50); do
    curl -fsS "http://$HOST:$ADMIN_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://$HOST:$ADMIN_PORT/healthz" >/dev/null || { cat "$TMP/gateway.log"; exit 1; }
sleep 1
RSS_0=$(rss "$GW_PID")
SLAB_0=$(meminfo Slab)
echo "gateway pid $GW_PID, idle rss $RSS_0"

FLOOD=(./target/release/flood hold --target "$HOST:$PORT" --rate "$RATE" --sources "$SOURCES"
       --heartbeat-ms "$HEARTBEAT_MS" --pid "$GW_PID" --sample-ms 1000)

# sample K READY_FILE: sets EST_K RSS_K THP_K SLAB_K SUNR_K GWC_K once the
# connections of flood K are up and the gateway's RSS has settled.
sample() {
    local k=$1
    printf -v "EST_$k" '%s' "$(established "$2")"
    printf -v "RSS_$k" '%s' "$(settle_rss "$GW_PID")"
    printf -v "THP_$k" '%s' "$(thp "$GW_PID")"
    printf -v "SLAB_$k" '%s' "$(meminfo Slab)"
    printf -v "SUNR_$k" '%s' "$(meminfo SUnreclaim)"
    printf -v "GWC_$k" '%s' "$(gw_conns)"
}

echo "== flood 1: $N1 connections"
"${FLOOD[@]}" --conns "$N1" --first-id 0 --hold-s 3600 \
    --ready-file "$TMP/f1.ready" --json "$OUT_DIR/mem_slope_flood1.json" >"$TMP/flood1.log" 2>&1 &
F1=$!
FLOOD_PIDS+=("$F1")
wait_ready "$TMP/f1.ready" "$F1" $(( N1 / RATE + 60 ))
sample 1 "$TMP/f1.ready"
echo "established $EST_1 (gateway reports $GWC_1), gateway rss $RSS_1"

N_ADD=$(( N2 - N1 ))
echo "== flood 2: $N_ADD more connections"
"${FLOOD[@]}" --conns "$N_ADD" --first-id "$N1" --hold-s $(( SETTLE_S + 2 )) \
    --ready-file "$TMP/f2.ready" --json "$OUT_DIR/mem_slope_flood2.json" >"$TMP/flood2.log" 2>&1 &
F2=$!
FLOOD_PIDS+=("$F2")
wait_ready "$TMP/f2.ready" "$F2" $(( N_ADD / RATE + 60 ))
sample 2 "$TMP/f2.ready"
echo "established $EST_2 more (gateway reports $GWC_2), gateway rss $RSS_2"

wait "$F2" || true
kill -TERM "$F1" 2>/dev/null || true
wait "$F1" || true
FLOOD_PIDS=()
echo "--- flood 1"; tail -4 "$TMP/flood1.log"
echo "--- flood 2"; tail -4 "$TMP/flood2.log"

HELD_1=$EST_1
HELD_2=$(( EST_1 + EST_2 ))
DELTA=$(( HELD_2 - HELD_1 ))
if (( DELTA <= 0 )); then echo "no connections added" >&2; exit 1; fi
BPC=$(awk -v a="$RSS_1" -v b="$RSS_2" -v n="$DELTA" 'BEGIN {printf "%.0f", (b - a) / n}')
SLAB_BPC=$(awk -v a="$SLAB_1" -v b="$SLAB_2" -v n="$DELTA" 'BEGIN {printf "%.0f", (b - a) / n}')
SUNR_BPC=$(awk -v a="$SUNR_1" -v b="$SUNR_2" -v n="$DELTA" 'BEGIN {printf "%.0f", (b - a) / n}')
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain 2>/dev/null | grep -q . && echo true || echo false)

cat >"$OUT" <<EOF
{
  "conditions": {
    "gateway_cores": 1,
    "gateway_processes": 1,
    "flood_processes": 2,
    "flood_conns": [$N1, $N_ADD],
    "heartbeat_ms": $HEARTBEAT_MS,
    "gateway_mimalloc_allow_thp": $GW_ALLOW_THP,
    "rate_per_s": $RATE,
    "source_addresses": $SOURCES,
    "settle_s": $SETTLE_S,
    "clients_on_same_host": true,
    "machine_cpus": $(nproc),
    "kernel": "$(uname -r)",
    "git_rev": "$REV",
    "git_dirty": $DIRTY,
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  },
  "conns_1k": $HELD_1,
  "conns_15k": $HELD_2,
  "gateway_reported_conns": [${GWC_1:-0}, ${GWC_2:-0}],
  "rss_idle_bytes": $RSS_0,
  "rss_1k_bytes": $RSS_1,
  "rss_15k_bytes": $RSS_2,
  "bytes_per_conn": $BPC,
  "anon_huge_pages_bytes": [${THP_1:-0}, ${THP_2:-0}],
  "slab_0_bytes": $SLAB_0,
  "slab_1k_bytes": $SLAB_1,
  "slab_15k_bytes": $SLAB_2,
  "slab_bytes_per_conn_pair": $SLAB_BPC,
  "sunreclaim_bytes_per_conn_pair": $SUNR_BPC
}
EOF
echo "== result ($OUT)"
cat "$OUT"
echo "gateway: $BPC bytes/conn of RSS between $HELD_1 and $HELD_2 connections (1 core, 1 process);"
echo "kernel slab: $SLAB_BPC bytes per loopback connection pair (client + server socket)"
