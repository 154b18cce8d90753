# The transport scenarios of bench/run.sh (idle[-T], latency[-T] with T one
# of tcp, ws, tls, wss; described in run.sh's header). Sourced by
# bench/run.sh, not run directly: it uses run.sh's settings ($TMP, $STEM,
# $OUT, ports, ...) and helpers (wait_health, stop_pid, forget, flood_run,
# conditions). Entry point: transports_scenario SCENARIO.
# shellcheck shell=bash
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "bench/run_transports.sh is sourced by bench/run.sh: run bench/run.sh idle (etc.)" >&2
    exit 2
fi

# start_tls_gateway NAME: one gateway process (--demo --cores 1
# --tls-self-signed; plain TCP and WebSocket on the same port), its
# certificate written to $TMP; sets TGW_PID and TGW_CA.
start_tls_gateway() {
    TMPDIR=$TMP MIMALLOC_ALLOW_THP=$GW_ALLOW_THP "$GW_BIN_DIR/gateway" --demo --cores 1 --tls-self-signed \
        --node-id "$1" --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
        >"$TMP/$1.log" 2>&1 &
    TGW_PID=$!
    STARTED+=("$TGW_PID")
    wait_health "$ADMIN_PORT" "$TGW_PID" "$TMP/$1.log"
    TGW_CA=$TMP/gateway-$1-self-signed.pem
    [[ -s $TGW_CA ]] || { echo "no certificate at $TGW_CA" >&2; exit 1; }
    sleep 1
}

# transport_flags T: flood flags for transport T (needs TGW_CA, except for
# the check of T's name before any gateway runs).
transport_flags() {
    case $1 in
        tcp) ;;
        ws) echo --ws ;;
        tls) printf -- '--tls\n--ca\n%s\n' "${TGW_CA:-}" ;;
        wss) printf -- '--tls\n--ca\n%s\n--ws\n' "${TGW_CA:-}" ;;
        *) echo "unknown transport $1 (tcp, ws, tls, wss)" >&2; exit 2 ;;
    esac
}

# idle_one T FILE: memory per idle connection over T (RSS slope of one
# gateway process between $MARK and $N_IDLE connections), into FILE.
idle_one() {
    local t=$1 flags
    echo "== idle over $t: $N_IDLE connections, RSS at $MARK and at $N_IDLE"
    start_tls_gateway "idle-$t"
    mapfile -t flags < <(transport_flags "$t")
    flood_run "idle-$t" hold --target "127.0.0.1:$GW_PORT" --conns "$N_IDLE" --mark "$MARK" \
        --settle-s "$SETTLE_S" --hold-s "$IDLE_HOLD_S" --rate "$RATE" --inflight "$INFLIGHT" \
        --sources "$SOURCES" --heartbeat-ms "$HEARTBEAT_MS" --pid "$TGW_PID" "${flags[@]}" \
        --json "$STEM-$t.json"
    stop_pid "$TGW_PID"
    forget "$TGW_PID"
    jq '{transport, bytes_per_conn, conns_established, conns_failed: .conns_failed.total,
         failed_by_reason: .conns_failed.by_reason, dropped: .conns_dropped,
         rss_bytes: {at_start: .rss.at_start.rss_bytes, at_mark: .rss.at_mark.rss_bytes, at_full: .rss.at_full.rss_bytes},
         mark_open: .mark.open, slab_bytes_per_conn_pair, connect_rate_per_s,
         server_cpu_us_per_conn_setup,
         connect_auth_ms: {p50: .connect_auth_latency.p50_ms, p99: .connect_auth_latency.p99_ms},
         tls_handshakes: .transport_config.tls_handshakes, flood_rss_bytes: .flood.rss_bytes_sum}' \
        "$STEM-$t.json" >"$2"
}

# latency_one T FILE: echo round trips over T ($CONNS connections,
# $ECHO_RATE requests/s for $DURATION_S s), into FILE.
latency_one() {
    local t=$1 flags
    echo "== echo over $t: $CONNS connections, $ECHO_RATE/s for $DURATION_S s"
    start_tls_gateway "lat-$t"
    mapfile -t flags < <(transport_flags "$t")
    flood_run "latency-$t" echo --target "127.0.0.1:$GW_PORT" --conns "$CONNS" \
        --msgs-per-s "$ECHO_RATE" --duration-s "$DURATION_S" --rate "$RATE" --inflight "$INFLIGHT" \
        --pid "$TGW_PID" "${flags[@]}" --json "$STEM-$t.json"
    stop_pid "$TGW_PID"
    forget "$TGW_PID"
    jq '{transport, conns_established, conns_failed: .conns_failed.total, rtt: .echo.rtt,
         ok_per_s: .echo.ok_per_s, replies: .echo.replies, gateway_cpu_pct: .window.server_cpu_pct,
         connect_auth_ms: {p50: .connect_auth_latency.p50_ms, p99: .connect_auth_latency.p99_ms},
         tls_handshakes: .transport_config.tls_handshakes}' "$STEM-$t.json" >"$2"
}

transports_scenario() {
    local kind=${1%%-*} list t all='{}'
    N_IDLE=${N_IDLE:-8000}
    IDLE_HOLD_S=${IDLE_HOLD_S:-5}
    CONNS=${CONNS:-1000}
    ECHO_RATE=${ECHO_RATE:-2000}
    DURATION_S=${DURATION_S:-20}
    if [[ $1 == *-* ]]; then list=${1#*-}; else list=${TRANSPORTS:-tcp ws tls wss}; fi
    for t in $list; do
        transport_flags "$t" >/dev/null
        if [[ $kind == idle ]]; then idle_one "$t" "$TMP/t.json"; else latency_one "$t" "$TMP/t.json"; fi
        all=$(jq -c --arg t "$t" --slurpfile j "$TMP/t.json" '. + {($t): $j[0]}' <<<"$all")
        sleep 2 # the closed connections leave the kernel
    done
    COND=$(conditions "$(jq -nc --arg k "$kind" --arg n "$N_IDLE" --arg mark "$MARK" --arg settle "$SETTLE_S" \
        --arg thp "$GW_ALLOW_THP" --arg c "$CONNS" --arg r "$ECHO_RATE" --arg d "$DURATION_S" --arg src "$SOURCES" '{
          gateway: "1 process, --demo --cores 1 --tls-self-signed (P-256 certificate; TLS 1.3), a fresh one per transport",
          gateway_mimalloc_allow_thp: ($thp|tonumber), flood_processes: 1,
          tls_client: "rustls, one session per connection, no resumption"} +
          if $k == "idle" then {connections: ($n|tonumber), mark_connections: ($mark|tonumber),
            settle_s: ($settle|tonumber), source_addresses: ($src|tonumber),
            bytes_per_conn: "gateway RSS slope between mark_connections and connections, same process"}
          else {connections: ($c|tonumber), msgs_per_s: ($r|tonumber), duration_s: ($d|tonumber)} end')")
    jq -n --arg sc "$1" --argjson t "$all" --argjson cond "$COND" \
        '{scenario: $sc, transports: $t, conditions: $cond}' >"$OUT"
    echo "== result ($OUT)"
    if [[ $kind == idle ]]; then
        jq -r '.transports | to_entries[] | "\(.key): \(.value.bytes_per_conn // "-" | if type == "number" then floor else . end) B/conn, \(.value.conns_established) established, \(.value.conns_failed) failed, connect+auth p50 \(.value.connect_auth_ms.p50) ms"' "$OUT"
    else
        jq -r '.transports | to_entries[] | "\(.key): rtt p50 \(.value.rtt.p50_ms) p99 \(.value.rtt.p99_ms) p999 \(.value.rtt.p999_ms) ms, \(.value.ok_per_s | floor) ok/s, gateway CPU \(.value.gateway_cpu_pct // "-")%"' "$OUT"
    fi
}
