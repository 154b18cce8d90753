#!/usr/bin/env bash
# Which heap allocations each gateway connection holds: runs the gateway
# in-process under a counting allocator (`gwmem`, mimalloc underneath),
# dumps live allocations by requested size at N1 and N2 idle authenticated
# connections, and prints the difference per added connection.
#
# Usage: bench/mem_attrib.sh   (env: PORT N1 N2 RATE SOURCES SETTLE_S OUT)
# Needs jq. Writes $OUT (default bench/results/mem_attrib.json).
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=${PORT:-7000}
HOST=127.0.0.1
N1=${N1:-1000}
N2=${N2:-15000}
RATE=${RATE:-5000}
SOURCES=${SOURCES:-8}
SETTLE_S=${SETTLE_S:-12}
OUT=${OUT:-bench/results/mem_attrib.json}
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d)

GW_PID=""
FLOOD_PIDS=()
cleanup() {
    for p in "${FLOOD_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    if [[ -n "$GW_PID" ]] && kill -TERM "$GW_PID" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

cargo build --release -p bench

wait_file() {
    local file=$1 left=$2
    until [[ -s "$file" ]]; do
        (( left-- > 0 )) || { echo "timed out waiting for $file" >&2; exit 1; }
        sleep 1
    done
}

# dump N: ask gwmem for dump N and wait for it.
dump() {
    kill -USR1 "$GW_PID"
    wait_file "$TMP/dumps/dump-$1.json" 10
    sleep 0.2
}

MIMALLOC_ALLOW_THP=0 RUST_LOG=warn ./target/release/gwmem --listen "$HOST:$PORT" \
    --dump-dir "$TMP/dumps" >"$TMP/gwmem.log" 2>&1 &
GW_PID=$!
sleep 1
kill -0 "$GW_PID" || { cat "$TMP/gwmem.log"; exit 1; }

FLOOD=(./target/release/flood hold --target "$HOST:$PORT" --rate "$RATE" --sources "$SOURCES"
       --heartbeat-ms 30000)
"${FLOOD[@]}" --conns "$N1" --hold-s 3600 --ready-file "$TMP/f1.ready" >"$TMP/f1.log" 2>&1 &
FLOOD_PIDS+=($!)
wait_file "$TMP/f1.ready" $(( N1 / RATE + 60 ))
sleep "$SETTLE_S"
dump 0
"${FLOOD[@]}" --conns $(( N2 - N1 )) --first-id "$N1" --hold-s $(( SETTLE_S + 5 )) \
    --ready-file "$TMP/f2.ready" >"$TMP/f2.log" 2>&1 &
FLOOD_PIDS+=($!)
wait_file "$TMP/f2.ready" $(( (N2 - N1) / RATE + 60 ))
sleep "$SETTLE_S"
dump 1

jq -n --slurpfile a "$TMP/dumps/dump-0.json" --slurpfile b "$TMP/dumps/dump-1.json" \
    --argjson n $(( N2 - N1 )) --argjson n1 "$N1" --argjson n2 "$N2" '
  ($a[0]) as $a | ($b[0]) as $b |
  ([$a.by_size, $b.by_size] | add | keys) as $sizes |
  [ $sizes[] as $s
    | {size: ($s | tonumber), count: (($b.by_size[$s] // 0) - ($a.by_size[$s] // 0))}
    | select(.count != 0 and .size < 4096)
    | . + {per_conn: (.count / $n), bytes_per_conn: (.count * .size / $n)} ]
  | sort_by(-.bytes_per_conn) as $rows |
  {
    conns: [$n1, $n2],
    live_heap_bytes: [$a.live_bytes, $b.live_bytes],
    rss_bytes: [$a.rss_bytes, $b.rss_bytes],
    heap_bytes_per_conn: (($b.live_bytes - $a.live_bytes) / $n),
    rss_bytes_per_conn: (($b.rss_bytes - $a.rss_bytes) / $n),
    big_allocs_bytes_per_conn: (($b.big_bytes - $a.big_bytes) / $n),
    small_allocs_per_conn: [$rows[] | select((.bytes_per_conn | fabs) >= 1)]
  }' >"$OUT"
grep '^size_of' "$TMP/gwmem.log"
cat "$OUT"
