# The hot-room scenario of bench/run.sh (described in run.sh's header).
# Sourced by bench/run.sh through nats_scenario (bench/run_nats.sh), whose
# helpers it uses (start_nats_mon, start_cb, start_gws, pid_flags, now,
# cpu_ticks); not run directly.
# shellcheck shell=bash
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "bench/run_rooms.sh is sourced by bench/run.sh: run bench/run.sh hot-room" >&2
    exit 2
fi

# box_ticks: busy and total jiffies of the whole machine (/proc/stat).
box_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
# gw_sum REGEX: the sum over every gateway of the /metrics samples whose
# name (with labels) matches REGEX; "NA" when a gateway did not answer
# (three tries of 10 s: a saturated box can be slow to scrape).
gw_sum() {
    local i total=0 v try
    for i in "${!GW_PIDS[@]}"; do
        v=
        for try in 1 2 3; do
            v=$(curl -fsS --max-time 10 "http://127.0.0.1:$((ADMIN_PORT + i))/metrics" 2>/dev/null |
                awk -v re="$1" '$1 ~ re {s += $2} END {if (NR > 0) printf "%d", s}') && [[ -n $v ]] && break
            v=
        done
        [[ -n $v ]] || { echo NA; return; }
        total=$(( total + v ))
    done
    echo "$total"
}
# delta A B: B - A, or -1 when either is NA (written as null in the JSON).
delta() { if [[ $1 == NA || $2 == NA ]]; then echo -1; else echo $(( $2 - $1 )); fi; }
gw_ticks() { local p t=0; for p in "${GW_PIDS[@]}"; do t=$(( t + $(cpu_ticks "$p") )); done; echo "$t"; }
# gw_uticks: the gateways' user-space jiffies alone. On loopback the kernel
# time of a write includes the receiving socket's TCP work and the reader's
# wake-up, which a real network puts on another machine.
gw_uticks() { local p t=0 u; for p in "${GW_PIDS[@]}"; do u=$(awk '{print $14}' "/proc/$p/stat" 2>/dev/null); t=$(( t + ${u:-0} )); done; echo "$t"; }
# PERF_SPLIT=1: perf samples the gateways over each phase, and the share of
# their samples inside the kernel's loopback receive path (`net_rx_action`:
# the receiving socket's TCP work and the reader's wake-up, run in the
# writer's context on loopback and on the client's machine on a network)
# is written per phase, with the CPU left without it ("sender side").
# PERF_KEEP=DIR keeps each phase's perf.data there.
perf_start() { # NAME
    PERF_PID=""
    [[ ${PERF_SPLIT:-0} == 1 ]] || return 0
    command -v perf >/dev/null || { echo "PERF_SPLIT=1 needs perf" >&2; exit 1; }
    perf record -q -g -F "${PERF_HZ:-999}" -p "$(IFS=,; echo "${GW_PIDS[*]}")" -o "$TMP/$1.perf" >/dev/null 2>&1 &
    PERF_PID=$!
    STARTED+=("$PERF_PID")
    sleep 0.5
}
# perf_stop NAME: sets RX_SHARE to the share (0..1) of the samples in
# net_rx_action, or to null without PERF_SPLIT. (Not in a subshell: it
# must wait for perf to finish writing.)
perf_stop() {
    RX_SHARE=null
    [[ -n ${PERF_PID:-} ]] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    forget "$PERF_PID"
    if [[ -n ${PERF_KEEP:-} ]]; then mkdir -p "$PERF_KEEP" && cp "$TMP/$1.perf" "$PERF_KEEP/"; fi
    RX_SHARE=$(perf report -i "$TMP/$1.perf" --children --sort sym -g none --stdio 2>/dev/null |
        awk '$NF == "net_rx_action" {gsub("%", "", $1); v = $1 / 100} END {printf "%s", (v == "" ? 0 : v)}')
}
# drain: waits (at most DRAIN_MAX_S) until the gateways are idle: less than
# 5% of one core each over a second, i.e. everything published was written.
drain() {
    local end=$(( SECONDS + DRAIN_MAX_S )) a b hz idle
    hz=$(getconf CLK_TCK)
    idle=$(( hz * ${#GW_PIDS[@]} / 20 ))
    while (( SECONDS < end )); do
        a=$(gw_ticks); sleep 1; b=$(gw_ticks)
        (( b - a <= idle )) && return 0
    done
    echo "  (not idle after $DRAIN_MAX_S s)" >&2
}

# One phase: publishers at RATE/s for PHASE_S s with the priority mix, then
# until the gateways are idle again (what fell behind is written in the
# phase that published it: its CPU and its deliveries count there). Appends a JSON line to
# $TMP/phases.jsonl with the wall times (to cut flood's samples), the CPU of
# the gateways and of the box, and the gateways' counters over the phase.
room_phase() { # MODE RATE SECONDS
    local mode=$1 rate=$2 secs=$3 t0 t1 g0 g1 u0 u1 b0 b1 f0 f1 c0 c1 k0 k1 d0 d1 s0 s1
    t0=$(date +%s%3N); g0=$(gw_ticks); u0=$(gw_uticks); read -r b0 bt0 < <(box_ticks)
    f0=$(gw_sum '^gateway_pushes_total'); c0=$(gw_sum '^gateway_room_coalesced_total')
    k0=$(gw_sum '^gateway_room_batches_total'); d0=$(gw_sum '^gateway_room_pushes_dropped_total')
    s0=$(gw_sum '^gateway_closes_total[{]reason="(slow_consumer|stale_heartbeat)"')
    perf_start "$mode-$rate"
    ./target/release/natspub --url "nats://127.0.0.1:$NATS_PORT" --subject gw.room.bench --rate "$rate" \
        --duration-s "$secs" --payload-bytes "$PAYLOAD" --priority-mix "$MIX" >"$TMP/pub.json" 2>"$TMP/pub.err" ||
        { cat "$TMP/pub.err" >&2; exit 1; }
    sleep "$TAIL_S"
    drain
    perf_stop "$mode-$rate"
    t1=$(date +%s%3N); g1=$(gw_ticks); u1=$(gw_uticks); read -r b1 bt1 < <(box_ticks)
    f1=$(gw_sum '^gateway_pushes_total'); c1=$(gw_sum '^gateway_room_coalesced_total')
    k1=$(gw_sum '^gateway_room_batches_total'); d1=$(gw_sum '^gateway_room_pushes_dropped_total')
    s1=$(gw_sum '^gateway_closes_total[{]reason="(slow_consumer|stale_heartbeat)"')
    jq -c --arg m "$mode" --arg r "$rate" --arg t0 "$t0" --arg t1 "$t1" --arg g "$(( g1 - g0 ))" --arg u "$(( u1 - u0 ))" \
        --arg bb "$(( b1 - b0 ))" --arg bt "$(( bt1 - bt0 ))" --arg f "$(delta "$f0" "$f1")" --arg c "$(delta "$c0" "$c1")" \
        --arg k "$(delta "$k0" "$k1")" --arg d "$(delta "$d0" "$d1")" --arg sc "$(delta "$s0" "$s1")" --arg hz "$(getconf CLK_TCK)" \
        --argjson rx "$RX_SHARE" '{mode: $m, rate: ($r|tonumber), t0_ms: ($t0|tonumber), t1_ms: ($t1|tonumber),
          gateway_cpu_s: (($g|tonumber) / ($hz|tonumber)), loopback_rx_share: $rx, gateway_user_cpu_s: (($u|tonumber) / ($hz|tonumber)), box_cpu_pct: (($bb|tonumber) / ([($bt|tonumber), 1] | max) * 100),
          frames_out: ($f|tonumber|if . < 0 then null else . end), coalesced: ($c|tonumber|if . < 0 then null else . end),
          batches: ($k|tonumber|if . < 0 then null else . end), dropped: ($d|tonumber|if . < 0 then null else . end),
          closed_slow_or_stale: ($sc|tonumber|if . < 0 then null else . end),
          publisher: .}' "$TMP/pub.json" >>"$TMP/phases.jsonl"
    echo "  [$mode $rate/s] $(jq -c '{published, published_high}' "$TMP/pub.json"), gateway CPU $(( g1 - g0 )) ticks, frames $(delta "$f0" "$f1"), dropped $(delta "$d0" "$d1") (-1 = a gateway did not answer its scrape)"
}

hot_room() {
    GW_PROCS=${GW_PROCS:-6}
    N=${N_ROOM:-100000}
    FP=${FLOOD_PROCS:-$(( (N + 17999) / 18000 ))}
    read -r -a RATES <<<"${ROOM_RATES:-10 100}"
    PHASE_S=${PHASE_S:-10}
    TAIL_S=${TAIL_S:-2}
    LONG_S=${LONG_S:-60}
    LONG_RATE=${LONG_RATE:-100}
    MIX=${PRIORITY_MIX:-low=60,normal=39,high=1}
    DRAIN_MAX_S=${DRAIN_MAX_S:-120}
    # Without coalescing, a phase whose deliveries (rate x members x
    # seconds) exceed this is left out: the box would need minutes to write
    # them, and the same rates are run with coalescing on.
    OFF_DELIVERIES_MAX=${OFF_DELIVERIES_MAX:-20000000}
    WINDOW_MS=${WINDOW_MS:-100}
    PAYLOAD=${PAYLOAD:-64}
    # Coalescing only when the room is marked (not by rate), and no room
    # rate limit: the two modes differ in the mark alone.
    # ROOM_FLAGS: more gateway flags (e.g. --rooms-frames-per-s-max N),
    # recorded in the conditions.
    read -r -a ROOM_FLAGS_A <<<"${ROOM_FLAGS:-}"
    GW_EXTRA=(--rooms-hot-rate-per-s 0 --rooms-coalesce-window-ms "$WINDOW_MS" --overload-room-broadcast-rate-per-s 0 "${ROOM_FLAGS_A[@]}")
    local phases=$(( 2 * ${#RATES[@]} ))
    local hold=$(( phases * (PHASE_S + TAIL_S + DRAIN_MAX_S + 3) + LONG_S + TAIL_S + 60 ))
    start_nats_mon
    start_cb # room.join is a backend route
    start_gws gwr "$GW_PROCS" 1 yes
    mapfile -t PF < <(pid_flags)
    echo "== hot room: $N members of room bench over $GW_PROCS gateway processes (--cores 1) and $FP flood processes; rates ${RATES[*]}/s, mix $MIX, window $WINDOW_MS ms"
    "$FLOOD" hold --target "127.0.0.1:$GW_PORT" --conns "$N" --procs "$FP" --sources "$SOURCES" --rate "$RATE" \
        --inflight "$INFLIGHT" --room bench --settle-s 2 --sample-ms 500 --hold-s "$hold" --ready-file "$TMP/ready" \
        "${PF[@]}" --json "$STEM-flood.json" >"$TMP/flood.log" 2>&1 &
    FPID=$!
    STARTED+=("$FPID")
    while [[ ! -s $TMP/ready ]]; do kill -0 "$FPID" 2>/dev/null || { tail "$TMP/flood.log" >&2; exit 1; }; sleep 0.2; done
    sleep 2
    : >"$TMP/phases.jsonl"
    local mode rate
    # Coalescing on first (with the long hold), then off: an uncoalesced
    # phase the box cannot keep up with closes slow consumers, which must
    # not leave the on phases fewer members.
    for mode in on off; do
        local mark=normal
        [[ $mode == on ]] && mark=hot
        ./target/release/natspub --url "nats://127.0.0.1:$NATS_PORT" --subject gw.room.bench --room-mode "$mark" >/dev/null
        sleep 1
        for rate in "${RATES[@]}"; do
            if [[ $mode == off ]] && (( rate * N * PHASE_S > OFF_DELIVERIES_MAX )); then
                echo "  [off $rate/s] left out: $(( rate * N * PHASE_S )) deliveries > OFF_DELIVERIES_MAX"
                jq -nc --arg r "$rate" '{mode: "off", rate: ($r|tonumber), skipped: true}' >>"$TMP/phases.jsonl"
                continue
            fi
            room_phase "$mode" "$rate" "$PHASE_S"
        done
        # The long hold: coalescing on, LONG_RATE/s for LONG_S s.
        if [[ $mode == on ]] && (( LONG_S > 0 )); then room_phase on-long "$LONG_RATE" "$LONG_S"; fi
    done
    kill -INT "$FPID" 2>/dev/null || true
    wait "$FPID" || true
    forget "$FPID"
    grep -v '^\[' "$TMP/flood.log" | tail -5 | sed 's/^/  [flood] /'
    [[ -s $STEM-flood.json ]] || { echo "flood wrote no report" >&2; exit 1; }
    COND=$(conditions "$(jq -nc --arg gp "$GW_PROCS" --arg fp "$FP" --arg v "$NATS_VERSION" --arg w "$WINDOW_MS" --arg mix "$MIX" --arg rf "${ROOM_FLAGS:-}" '{
        gateway_processes: ($gp|tonumber), gateway_cores_per_process: 1, flood_processes: ($fp|tonumber),
        nats_server: $v, coalesce_window_ms: ($w|tonumber), priority_mix: $mix, gateway_room_flags: $rf,
        note: "gateways, flood, nats-server, chat-backend and natspub share the 2 vCPUs"}')")
    # Per phase, from flood's samples between its wall times: deliveries
    # (all and HIGH), latency (p50: median of the samples, p99: their max).
    jq -s --slurpfile f "$STEM-flood.json" --argjson cond "$COND" '
        ($f[0]) as $f | ($f.conns_established) as $members |
        ($f.rss.samples // []) as $s |
        def at($ms): ([$s[] | select(.unix_ms <= $ms)] | last) // {deliveries: 0, deliveries_high: 0};
        def median: sort | if length == 0 then null else .[length / 2 | floor] end;
        ([.[] | select(.skipped)] | map({mode, rate, skipped})) as $skipped |
        [.[] | select(.skipped | not) | . as $p |
          ([$s[] | select(.unix_ms > $p.t0_ms and .unix_ms <= $p.t1_ms)]) as $in |
          (at($p.t1_ms).deliveries - at($p.t0_ms).deliveries) as $del |
          (at($p.t1_ms).deliveries_high - at($p.t0_ms).deliveries_high) as $high |
          (($p.t1_ms - $p.t0_ms) / 1000) as $secs |
          {mode, rate, seconds: $secs, published: $p.publisher.published,
           published_by_priority: {low: $p.publisher.published_low, normal: $p.publisher.published_normal, high: $p.publisher.published_high},
           deliveries: $del, deliveries_per_s: ($del / $secs),
           frames_out: $p.frames_out, frames_per_s: (if $p.frames_out == null then null else $p.frames_out / $secs end),
           gateway_cpu_s: $p.gateway_cpu_s,
           deliveries_per_gateway_cpu_s: (if $p.gateway_cpu_s > 0 then $del / $p.gateway_cpu_s else null end),
           gateway_cpu_us_per_delivery: (if $del > 0 then $p.gateway_cpu_s * 1e6 / $del else null end),
           gateway_user_cpu_s: $p.gateway_user_cpu_s,
           gateway_user_cpu_us_per_delivery: (if $del > 0 then $p.gateway_user_cpu_s * 1e6 / $del else null end),
           loopback_rx_share: $p.loopback_rx_share,
           gateway_sender_cpu_us_per_delivery: (if $del > 0 and $p.loopback_rx_share != null
               then $p.gateway_cpu_s * (1 - $p.loopback_rx_share) * 1e6 / $del else null end),
           gateway_cpu_us_per_frame: (if ($p.frames_out // 0) > 0 then $p.gateway_cpu_s * 1e6 / $p.frames_out else null end),
           box_cpu_pct: $p.box_cpu_pct,
           latency_p50_ms: ([$in[] | .latency_p50_ms // empty] | median),
           latency_p99_ms: ([$in[] | .latency_p99_ms // empty] | max),
           coalesced: $p.coalesced, batches: $p.batches, dropped: $p.dropped,
           closed_slow_or_stale: $p.closed_slow_or_stale,
           members_open_at_start: (at($p.t0_ms).open // null), members_open_at_end: (at($p.t1_ms).open // null),
           high_expected: ($p.publisher.published_high * $members), high_received: $high,
           high_lost: ($p.publisher.published_high * $members - $high)}] as $ph |
        ($s | last // {deliveries_high: 0}) as $final |
        {scenario: "hot-room", members: $members, phases: $ph, skipped: $skipped,
         high_expected_total: ([$ph[].high_expected] | add), high_received_total: $final.deliveries_high,
         high_lost_total: (([$ph[].high_expected] | add) - $final.deliveries_high),
         ratio_on_off: [ $ph[] | select(.mode == "on") | . as $on |
            ($ph[] | select(.mode == "off" and .rate == $on.rate)) as $off |
            {rate: $on.rate, deliveries_per_cpu_s: (if ($off.deliveries_per_gateway_cpu_s // 0) > 0 and $on.deliveries_per_gateway_cpu_s != null
               then $on.deliveries_per_gateway_cpu_s / $off.deliveries_per_gateway_cpu_s else null end),
             deliveries_per_user_cpu_s: (if ($on.gateway_user_cpu_us_per_delivery // 0) > 0 and $off.gateway_user_cpu_us_per_delivery != null
               then $off.gateway_user_cpu_us_per_delivery / $on.gateway_user_cpu_us_per_delivery else null end),
             deliveries_per_sender_cpu_s: (if ($on.gateway_sender_cpu_us_per_delivery // 0) > 0 and $off.gateway_sender_cpu_us_per_delivery != null
               then $off.gateway_sender_cpu_us_per_delivery / $on.gateway_sender_cpu_us_per_delivery else null end)} ],
         flood_schema_version: $f.schema_version, gateway_version: $f.gateway_version,
         conns_dropped: $f.conns_dropped, conditions: $cond}' "$TMP/phases.jsonl" >"$OUT"
    echo "== result ($OUT)"
    jq -r '.phases[] | "\(.mode) \(.rate)/s (members \(.members_open_at_start) -> \(.members_open_at_end), closed \(.closed_slow_or_stale)): \(.deliveries_per_s|floor) deliveries/s, \(.frames_per_s // -1 | floor) frames/s, \(.gateway_cpu_us_per_delivery // 0 | . * 100 | floor / 100) us gateway CPU per delivery (user \(.gateway_user_cpu_us_per_delivery // 0 | . * 1000 | floor / 1000)), \(.gateway_cpu_us_per_frame // 0 | . * 10 | floor / 10) us per frame, p50 \(.latency_p50_ms) p99 \(.latency_p99_ms) ms, dropped \(.dropped),\(if .loopback_rx_share != null then " loopback receive path \(.loopback_rx_share * 100 | floor)% of gateway samples (sender side \(.gateway_sender_cpu_us_per_delivery // 0 | . * 1000 | floor / 1000) us per delivery)," else "" end) HIGH lost \(.high_lost), box CPU \(.box_cpu_pct|floor)%"' "$OUT"
    jq -r '.ratio_on_off[] | "rate \(.rate)/s: deliveries per gateway CPU-second, on / off = \(.deliveries_per_cpu_s // 0 | . * 10 | floor / 10)x (user-space CPU alone: \(.deliveries_per_user_cpu_s // 0 | . * 10 | floor / 10)x)\(if .deliveries_per_sender_cpu_s then "; without the loopback receive path (perf): \(.deliveries_per_sender_cpu_s | . * 10 | floor / 10)x" else "" end)"' "$OUT"
    jq -r '"HIGH over the run: \(.high_received_total) of \(.high_expected_total) received (lost \(.high_lost_total))"' "$OUT"
}
