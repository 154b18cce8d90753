#!/usr/bin/env bash
# Does the gateway's heap grow under connection churn? A compressed soak:
# the gateway in-process under a counting allocator (`gwmem`, one core,
# TLS with a self-signed certificate), steady echo traffic, and back-to-back
# TLS storm rounds. The live heap is dumped after chosen rounds; the output
# lists live bytes per dump and, between the first and the last dump, which
# allocation sizes changed. A flat heap after the first horizon (102 s of
# wheel entries) is the expected result; growth names its sizes.
#
# Usage: bench/churn_heap.sh   (env: PORT ADMIN_PORT CORES ROUNDS DUMPS
#          ECHO_CONNS ECHO_RATE CHURN_CONNS CHURN_RATE HOLD_S AFTER_S OUT)
# The soak's own pace: CORES=2 CHURN_RATE=500 HOLD_S=5 AFTER_S=5.
# Needs jq. Writes $OUT (default bench/results/churn_heap.json).
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=${PORT:-7400}
ADMIN_PORT=${ADMIN_PORT:-9400}
ROUNDS=${ROUNDS:-80}
DUMPS=${DUMPS:-"5 20 40 60 80"}
ECHO_CONNS=${ECHO_CONNS:-4000}
ECHO_RATE=${ECHO_RATE:-1000}
CHURN_CONNS=${CHURN_CONNS:-1000}
CHURN_RATE=${CHURN_RATE:-2000}
HOLD_S=${HOLD_S:-1}
AFTER_S=${AFTER_S:-1}
CORES=${CORES:-1}
OUT=${OUT:-bench/results/churn_heap.json}
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d)

GW_PID=""
ECHO_PID=""
cleanup() {
    [[ -n "$ECHO_PID" ]] && kill -TERM "$ECHO_PID" 2>/dev/null || true
    if [[ -n "$GW_PID" ]] && kill -TERM "$GW_PID" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GW_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release -p bench

TMPDIR=$TMP MIMALLOC_ALLOW_THP=0 RUST_LOG=warn ./target/release/gwmem --listen "127.0.0.1:$PORT" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --cores "$CORES" --tls-self-signed --node-id churn \
    --dump-dir "$TMP/dumps" >"$TMP/gwmem.log" 2>&1 &
GW_PID=$!
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
kill -0 "$GW_PID" || { cat "$TMP/gwmem.log"; exit 1; }

./target/release/flood echo --target "127.0.0.1:$PORT" --conns "$ECHO_CONNS" \
    --msgs-per-s "$ECHO_RATE" --duration-s 86400 --rate 2000 >"$TMP/echo.log" 2>&1 &
ECHO_PID=$!
sleep 5

n=0
failed=0
for r in $(seq "$ROUNDS"); do
    ./target/release/flood storm --target "127.0.0.1:$PORT" --conns "$CHURN_CONNS" --rate "$CHURN_RATE" \
        --inflight 64 --hold-s "$HOLD_S" --after-s "$AFTER_S" --tls --ca "$TMP/gateway-churn-self-signed.pem" \
        >>"$TMP/churn.log" 2>&1 || failed=$((failed + 1))
    if [[ " $DUMPS " == *" $r "* ]]; then
        sleep 3
        kill -USR1 "$GW_PID"
        for _ in $(seq 50); do [[ -s "$TMP/dumps/dump-$n.json" ]] && break; sleep 0.1; done
        sleep 0.2
        jq -c --argjson r "$r" '{round: $r, live_bytes, rss_bytes}' "$TMP/dumps/dump-$n.json" | tee -a "$TMP/rounds.jsonl"
        cp "$TMP/dumps/dump-$n.json" "$TMP/last.json"
        [[ $n == 0 ]] && cp "$TMP/dumps/dump-0.json" "$TMP/first.json"
        n=$((n + 1))
    fi
done
[[ -s "$TMP/first.json" && -s "$TMP/last.json" ]] || { echo "no dumps taken (DUMPS=$DUMPS, ROUNDS=$ROUNDS)" >&2; exit 1; }

# Sizes whose live count changed between the first and the last dump; sizes
# of 4096 bytes and up are grouped by power of two (big_by_pow2_floor).
jq -n --slurpfile a "$TMP/first.json" --slurpfile b "$TMP/last.json" --slurpfile rounds <(jq -s . "$TMP/rounds.jsonl") \
    --argjson failed "$failed" --arg cond "gwmem, $CORES core(s), TLS self-signed; flood echo $ECHO_CONNS conns at $ECHO_RATE/s; storm rounds of $CHURN_CONNS TLS conns at $CHURN_RATE/s ($HOLD_S s hold, $AFTER_S s after)" '
  ($a[0]) as $a | ($b[0]) as $b |
  def delta($x; $y): ([$x, $y] | add | keys) as $k
    | [ $k[] as $s | {size: ($s | tonumber), count: (($y[$s] // 0) - ($x[$s] // 0))} | select(.count != 0) ]
    | sort_by(-(.size * (if .count < 0 then -.count else .count end)));
  { scenario: "churn_heap", conditions: $cond, rounds_failed: $failed, dumps: $rounds[0],
    live_bytes_change: ($b.live_bytes - $a.live_bytes),
    small_sizes_changed: [delta($a.by_size; $b.by_size)[] | select(.size < 4096)],
    big_sizes_changed: delta($a.big_by_pow2_floor; $b.big_by_pow2_floor) }' >"$OUT"
jq -r '"live heap change from the first to the last dump: \(.live_bytes_change) bytes; churn rounds failed: \(.rounds_failed)",
       "big allocations (by power of two): \(.big_sizes_changed | map("\(.count)x\(.size)") | join(" "))",
       "small allocations (top 10): \(.small_sizes_changed[:10] | map("\(.count)x\(.size)B") | join(" "))"' "$OUT"
echo "wrote $OUT"
