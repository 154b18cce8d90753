# The soak scenario of bench/run.sh (described in run.sh's header). Sourced
# by bench/run.sh, not run directly: it uses run.sh's settings and helpers
# (TMP, STEM, OUT, ports, wait_health, stop_pid, forget, conditions).
# Entry point: soak_scenario.
#
# One gateway process (--demo --cores $GW_CORES --tls-self-signed) for
# $SOAK_S seconds (2400: a 10 min warm-up, then the 30 min judged) under:
# - steady traffic: `flood echo`, $SOAK_CONNS (4,000) plain connections at
#   $SOAK_RATE (1,000) requests/s for the whole run;
# - churn: `flood storm` rounds back to back, each $CHURN_CONNS (1,000) TLS
#   connections that connect, are all dropped at once and come back, then
#   leave (TLS sessions, tickets and buffers are made and freed every round);
# - a sampler: the gateway's RSS, heap allocated (/stats memory) and
#   connection count every $SAMPLE_S (10) s.
# bench/soak_report.py fits a line to RSS and to the heap after the warm-up
# ($WARMUP_S, 600) and says whether each grows beyond the noise; it writes
# $OUT and an SVG plot next to it. The warm-up is 10 min because the heap
# settles for that long: the timing wheel's slots get their first use and
# keep a little room each (BENCHMARKS.md, "Soak").
# shellcheck shell=bash
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "bench/run_soak.sh is sourced by bench/run.sh: run bench/run.sh soak" >&2
    exit 2
fi

soak_scenario() {
    SOAK_S=${SOAK_S:-2400}
    SOAK_CONNS=${SOAK_CONNS:-4000}
    SOAK_RATE=${SOAK_RATE:-1000}
    CHURN_CONNS=${CHURN_CONNS:-1000}
    SAMPLE_S=${SAMPLE_S:-10}
    WARMUP_S=${WARMUP_S:-600}
    local gw ca log=$TMP/soak-gateway.log samples=$TMP/soak-samples.csv
    echo "== soak: $SOAK_S s, $SOAK_CONNS echo connections at $SOAK_RATE/s, TLS churn of $CHURN_CONNS"
    TMPDIR=$TMP MIMALLOC_ALLOW_THP=$GW_ALLOW_THP "$GW_BIN_DIR/gateway" --demo --cores "$GW_CORES" \
        --tls-self-signed --node-id soak --listen "127.0.0.1:$GW_PORT" \
        --admin-listen "127.0.0.1:$ADMIN_PORT" >"$log" 2>&1 &
    gw=$!
    STARTED+=("$gw")
    wait_health "$ADMIN_PORT" "$gw" "$log"
    ca=$TMP/gateway-soak-self-signed.pem

    "$FLOOD" echo --target "127.0.0.1:$GW_PORT" --conns "$SOAK_CONNS" --msgs-per-s "$SOAK_RATE" \
        --duration-s "$SOAK_S" --rate 2000 --inflight "$INFLIGHT" --pid "$gw" \
        --json "$STEM-echo.json" >"$TMP/soak-echo.log" 2>&1 &
    local echo_pid=$!
    STARTED+=("$echo_pid")

    # Churn until the echo run ends.
    (
        round=0
        while kill -0 "$echo_pid" 2>/dev/null; do
            round=$((round + 1))
            "$FLOOD" storm --target "127.0.0.1:$GW_PORT" --conns "$CHURN_CONNS" --rate 500 \
                --inflight 64 --hold-s 5 --after-s 5 --tls --ca "$ca" \
                --json "$TMP/storm.json" >>"$TMP/soak-churn.log" 2>&1 || echo "round $round failed" >>"$TMP/soak-churn.log"
            echo "$round" >"$TMP/soak-rounds"
        done
    ) &
    local churn_pid=$!
    STARTED+=("$churn_pid")

    # Sample RSS and connections.
    echo "t_s,rss_bytes,connections,heap_bytes" >"$samples"
    local t0=$SECONDS conns rss heap stats
    while kill -0 "$echo_pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$gw/status" 2>/dev/null || echo 0)
        stats=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/stats" 2>/dev/null || echo '{}')
        conns=$(jq -r '.connections // 0' <<<"$stats")
        heap=$(jq -r '.memory.heap_allocated_bytes // 0' <<<"$stats")
        echo "$((SECONDS - t0)),$rss,$conns,$heap" >>"$samples"
        sleep "$SAMPLE_S"
    done
    wait "$echo_pid" || { tail -20 "$TMP/soak-echo.log" >&2; echo "flood echo failed" >&2; return 1; }
    forget "$echo_pid"
    wait "$churn_pid" 2>/dev/null || true
    forget "$churn_pid"
    local rounds failed
    rounds=$(cat "$TMP/soak-rounds" 2>/dev/null || echo 0)
    failed=$(grep -c "^round [0-9]* failed$" "$TMP/soak-churn.log" || true)
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/stats" >"$TMP/soak-stats.json"
    stop_pid "$gw"
    forget "$gw"
    cp "$samples" "$STEM-samples.csv"

    COND=$(conditions "$(jq -nc --arg s "$SOAK_S" --arg c "$SOAK_CONNS" --arg r "$SOAK_RATE" \
        --arg cc "$CHURN_CONNS" --arg cores "$GW_CORES" --arg thp "$GW_ALLOW_THP" --arg w "$WARMUP_S" \
        --arg rounds "$rounds" --arg failed "$failed" '{
          gateway: "1 process, --demo --cores \($cores) --tls-self-signed", gateway_mimalloc_allow_thp: ($thp|tonumber),
          duration_s: ($s|tonumber), echo_connections: ($c|tonumber), echo_msgs_per_s: ($r|tonumber),
          churn: "flood storm rounds back to back: \($cc) TLS connections connect, all drop, all reconnect, leave",
          churn_rounds: ($rounds|tonumber), churn_rounds_failed: ($failed|tonumber), warmup_s: ($w|tonumber),
          flood_processes: 2}')")
    python3 bench/soak_report.py --samples "$samples" --warmup-s "$WARMUP_S" \
        --echo "$STEM-echo.json" --stats "$TMP/soak-stats.json" --conditions "$COND" \
        --out "$OUT" --svg "${OUT%.json}.svg"
}
