# The limit scenario of bench/run.sh (described in run.sh's header): the
# gateway against two minimal C servers that answer the same protocol
# (bench/ref: epoll_pong and uring_pong), under the same `flood hold` load,
# and the gateway-to-reference ratios. Sourced by bench/run.sh, not run
# directly: it uses run.sh's settings ($TMP, $STEM, $OUT, $N, $GW_PORT,
# $ADMIN_PORT, $FLOOD, ...) and helpers (wait_port, wait_health, stop_pid,
# forget, conditions). Entry point: limit_scenario.
#
# Per system, one server process pinned to $SERVER_CPU, one flood process
# pinned to $LOAD_CPU, $N connections, six holds one after the other:
#   setup-cpu, setup-sys   heartbeat $SETUP_HB_MS (10 min: almost no ping
#                          during the ramp): server CPU over the ramp (time
#                          on CPU of all its threads, /proc/PID/task/*/schedstat)
#                          and its syscalls over the ramp, per connection set up;
#   cpu-HB, sys-HB         for each heartbeat interval HB of $LIMIT_HB_MS
#                          (30000 1000: 500 and 15,000 pings/s over 15,000
#                          connections): server CPU over $CPU_WINDOW_S, and
#                          syscalls over $SYS_WINDOW_S, per ping answered
#                          (pings = the Pongs/s flood counted in its window,
#                          which contains ours, times our window).
# CPU is never measured while syscalls are counted. Syscalls are counted
# with perf stat on the syscall tracepoints (enabled only over the window,
# through perf's control fifo), or with strace -c when perf cannot
# ($SYSCALL_TOOL auto|perf|strace; strace slows the server down, so its
# counts per event come out lower under load).
# shellcheck shell=bash
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "bench/run_limit.sh is sourced by bench/run.sh: run bench/run.sh limit" >&2
    exit 2
fi

# Syscalls counted by name (perf); the rest are in the total as "other".
LIMIT_SYSCALLS="io_uring_enter io_uring_register epoll_wait epoll_pwait epoll_pwait2 epoll_ctl
recvfrom recvmsg recvmmsg sendto sendmsg sendmmsg read write readv writev accept accept4 close
shutdown setsockopt getsockopt fcntl ioctl membarrier futex sched_yield nanosleep clock_nanosleep
timerfd_settime eventfd2 getrandom mmap munmap madvise mprotect brk rt_sigprocmask getsockname
getpeername"

lim_now() { date +%s.%N; }
# cpu_ns PID: time on CPU of all the threads of PID, ns (exact, unlike the
# 10 ms ticks of /proc/PID/stat).
cpu_ns() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.6f\n", b - a}'; }
# cpu_jiffies: "busy total steal" of $SERVER_CPU, then of $LOAD_CPU, from
# /proc/stat (busy: user, nice, system, irq, softirq): how busy the two
# CPUs were over a window, so a run disturbed by other work shows.
cpu_jiffies() {
    awk -v s="cpu$SERVER_CPU" -v l="cpu$LOAD_CPU" '$1 == s || $1 == l {
        j[$1] = ($2 + $3 + $4 + $7 + $8) " " ($2 + $3 + $4 + $5 + $6 + $7 + $8 + $9) " " $9 }
        END {print j[s] " " j[l]}' /proc/stat
}
# box_json BEFORE AFTER (two cpu_jiffies lines): busy and steal % per CPU.
box_json() {
    jq -nc --arg a "$1" --arg b "$2" '($a | split(" ") | map(tonumber)) as $a | ($b | split(" ") | map(tonumber)) as $b |
        def pct(i; k): if $b[i + 1] > $a[i + 1] then ($b[i + k] - $a[i + k]) * 100 / ($b[i + 1] - $a[i + 1]) else null end;
        {server_cpu_busy_pct: pct(0; 0), server_cpu_steal_pct: pct(0; 2),
         load_cpu_busy_pct: pct(3; 0), load_cpu_steal_pct: pct(3; 2)}'
}

# --- syscall counting: sc_open NAME (before the load), sc_on NAME,
# sc_off NAME (around the window), sc_close NAME (writes $TMP/NAME.sc.json:
# {tool, window_s, total, by_name}).
declare -A SC_PID SC_CTL SC_ACK SC_T0 SC_T1 SC_TASKS
tasks_of() { local t=(/proc/"$1"/task/*); echo "${#t[@]}"; }
sc_events() {
    local s ev=(-e raw_syscalls:sys_enter)
    for s in $LIMIT_SYSCALLS; do
        [[ -d /sys/kernel/tracing/events/syscalls/sys_enter_$s ]] && ev+=(-e "syscalls:sys_enter_$s")
    done
    printf '%s\n' "${ev[@]}"
}
sc_tool() {
    case $SYSCALL_TOOL in
        perf | strace) echo "$SYSCALL_TOOL"; return ;;
    esac
    if command -v perf >/dev/null && [[ -d /sys/kernel/tracing/events/syscalls ]] &&
        perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
        echo perf
    elif command -v strace >/dev/null; then
        echo strace
    else
        echo "limit: counting syscalls needs perf (with tracepoints) or strace" >&2
        return 1
    fi
}
sc_cmd() { # NAME enable|disable|ping: perf's control fifo, waits for the ack
    local a=""
    echo "$2" >&"${SC_CTL[$1]}"
    read -r -t 60 a <&"${SC_ACK[$1]}" || true
    [[ $a == ack ]] || { echo "perf stat ($1) did not acknowledge '$2'" >&2; exit 1; }
}
sc_open() {
    local name=$1 ctl ack
    [[ $SC_TOOL == perf ]] || return 0
    rm -f "$TMP/$name.ctl" "$TMP/$name.ack"
    mkfifo "$TMP/$name.ctl" "$TMP/$name.ack"
    SC_TASKS[$name]=$(tasks_of "$SERVER_PID")
    perf stat --no-big-num -D -1 --control "fifo:$TMP/$name.ctl,$TMP/$name.ack" -o "$TMP/$name.perf" \
        "${SC_EVENTS[@]}" -p "$SERVER_PID" >"$TMP/$name.perf.out" 2>&1 &
    SC_PID[$name]=$!
    STARTED+=("$!")
    # Read-write opens of a fifo do not block, even if perf failed to start
    # (then the ack below times out).
    exec {ctl}<>"$TMP/$name.ctl" {ack}<>"$TMP/$name.ack"
    SC_CTL[$name]=$ctl
    SC_ACK[$name]=$ack
    sc_cmd "$name" ping # set up (tracepoints opened) and counting nothing yet
}
sc_on() {
    if [[ $SC_TOOL == perf ]]; then
        sc_cmd "$1" enable
    else
        SC_TASKS[$1]=$(tasks_of "$SERVER_PID")
        strace -c -f -p "$SERVER_PID" -o "$TMP/$1.strace" 2>"$TMP/$1.strace.err" &
        SC_PID[$1]=$!
        STARTED+=("$!")
        sleep 0.5 # attached to every thread
    fi
    SC_T0[$1]=$(lim_now)
}
sc_off() {
    SC_T1[$1]=$(lim_now)
    if [[ $SC_TOOL == perf ]]; then
        sc_cmd "$1" disable
    else
        kill -INT "${SC_PID[$1]}" 2>/dev/null || true
        wait "${SC_PID[$1]}" 2>/dev/null || true
        forget "${SC_PID[$1]}"
    fi
}
sc_close() {
    local name=$1 win ctl=${SC_CTL[$1]:-} ack=${SC_ACK[$1]:-}
    win=$(fsub "${SC_T0[$name]}" "${SC_T1[$name]}")
    if [[ $SC_TOOL == perf ]]; then # (not in the pipeline below: a subshell cannot wait for perf)
        kill -INT "${SC_PID[$name]}" 2>/dev/null || true
        wait "${SC_PID[$name]}" 2>/dev/null || true # perf stat ends by re-raising SIGINT
        forget "${SC_PID[$name]}"
        exec {ctl}>&- {ack}<&-
    fi
    if [[ $SC_TOOL == perf ]]; then
        # "  12345      syscalls:sys_enter_recvfrom" ("<not counted>": 0)
        awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(raw_)?syscalls:sys_enter/) {
                 n = ($1 ~ /^[0-9]+$/) ? $1 : 0; sub(/^syscalls:sys_enter_/, "", $i); print $i "\t" n } }' \
            "$TMP/$name.perf"
    else
        # strace -c: % time, seconds, usecs/call, calls, [errors,] syscall
        awk '$1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 {print $NF "\t" $4}' "$TMP/$name.strace"
    fi | jq -Rn --arg tool "$SC_TOOL" --arg w "$win" --arg t0 "${SC_TASKS[$name]}" --arg t1 "$(tasks_of "$SERVER_PID")" '
        [inputs | split("\t") | {(.[0]): (.[1]|tonumber)}] | add // {} |
        (if $tool == "perf" then .["raw_syscalls:sys_enter"] else ([.[]] | add) end) as $t |
        {tool: $tool, window_s: ($w|tonumber), total: ($t // 0),
         threads: {counted: ($t0|tonumber), at_end: ($t1|tonumber)},
         by_name: (del(.["raw_syscalls:sys_enter"]) | with_entries(select(.value > 0)) |
                   . + (if $tool == "perf" then {other: (($t // 0) - ([.[]] | add // 0))} else {} end))}' \
        >"$TMP/$name.sc.json"
}

# --- one flood hold at a time, pinned to $LOAD_CPU.
lim_flood_start() { # RUN HEARTBEAT_MS SETTLE_S HOLD_S
    rm -f "$TMP/$1.ready"
    taskset -c "$LOAD_CPU" "$FLOOD" hold --protocol "$LIM_PROTO" --target "127.0.0.1:$GW_PORT" --conns "$N" --rate "$RATE" \
        --inflight "$INFLIGHT" --sources "$LIMIT_SOURCES" --heartbeat-ms "$2" --settle-s "$3" \
        --hold-s "$4" --pid "$SERVER_PID" --ready-file "$TMP/$1.ready" \
        --json "$STEM-$SYS-$1.json" >"$TMP/$SYS-$1.log" 2>&1 &
    FLOOD_PID=$!
    STARTED+=("$FLOOD_PID")
}
lim_flood_ready() { # RUN: waits for the end of the ramp
    local end=$((SECONDS + 300))
    while [[ ! -s $TMP/$1.ready ]]; do
        if ! kill -0 "$FLOOD_PID" 2>/dev/null || ((SECONDS > end)); then
            tail -20 "$TMP/$SYS-$1.log" >&2
            echo "flood $SYS-$1: the ramp did not finish" >&2
            exit 1
        fi
        sleep 0.02
    done
}
lim_flood_wait() { # RUN
    if ! wait "$FLOOD_PID"; then
        tail -20 "$TMP/$SYS-$1.log" >&2
        echo "flood $SYS-$1 failed" >&2
        exit 1
    fi
    forget "$FLOOD_PID"
    grep -E '^(ramp done|server CPU per|window)' "$TMP/$SYS-$1.log" | sed "s/^/  [$SYS-$1] /" || true
    sleep "$LIMIT_GAP_S" # the server closes the connections
}

# setup_runs: CPU, then syscalls, over the ramp of $N connections.
setup_runs() {
    local c0 c1 t0 t1 j0 j1
    c0=$(cpu_ns "$SERVER_PID")
    t0=$(lim_now)
    j0=$(cpu_jiffies)
    lim_flood_start setup-cpu "$SETUP_HB_MS" 0 1
    lim_flood_ready setup-cpu
    c1=$(cpu_ns "$SERVER_PID")
    t1=$(lim_now)
    j1=$(cpu_jiffies)
    lim_flood_wait setup-cpu
    jq -n --arg c0 "$c0" --arg c1 "$c1" --arg w "$(fsub "$t0" "$t1")" --argjson box "$(box_json "$j0" "$j1")" \
        '{cpu_ns: (($c1|tonumber) - ($c0|tonumber)), wall_s: ($w|tonumber), box: $box}' >"$TMP/setup-cpu.json"
    sc_open setup-sys
    sc_on setup-sys
    lim_flood_start setup-sys "$SETUP_HB_MS" 0 1
    lim_flood_ready setup-sys
    sc_off setup-sys
    lim_flood_wait setup-sys
    sc_close setup-sys
}
# rate_runs HB: CPU over $CPU_WINDOW_S, then syscalls over $SYS_WINDOW_S,
# each inside a hold at heartbeat HB (flood's window is 2 s longer, so the
# closes at its end stay out of ours).
rate_runs() {
    local hb=$1 c0 c1 t0 t1 j0 j1
    lim_flood_start "cpu-$hb" "$hb" "$LIMIT_SETTLE_S" $((CPU_WINDOW_S + 2))
    lim_flood_ready "cpu-$hb"
    sleep "$LIMIT_SETTLE_S"
    c0=$(cpu_ns "$SERVER_PID")
    t0=$(lim_now)
    j0=$(cpu_jiffies)
    sleep "$CPU_WINDOW_S"
    c1=$(cpu_ns "$SERVER_PID")
    t1=$(lim_now)
    j1=$(cpu_jiffies)
    lim_flood_wait "cpu-$hb"
    jq -n --arg c0 "$c0" --arg c1 "$c1" --arg w "$(fsub "$t0" "$t1")" --argjson box "$(box_json "$j0" "$j1")" \
        '{cpu_ns: (($c1|tonumber) - ($c0|tonumber)), window_s: ($w|tonumber), box: $box}' >"$TMP/cpu-$hb.json"
    sc_open "sys-$hb"
    lim_flood_start "sys-$hb" "$hb" "$LIMIT_SETTLE_S" $((SYS_WINDOW_S + 2))
    lim_flood_ready "sys-$hb"
    sleep "$LIMIT_SETTLE_S"
    sc_on "sys-$hb"
    sleep "$SYS_WINDOW_S"
    sc_off "sys-$hb"
    lim_flood_wait "sys-$hb"
    sc_close "sys-$hb"
}

# --- the servers
REF_DIR=target/ref
build_refs() {
    command -v gcc >/dev/null || { echo "limit: the reference servers need gcc (apt-get install -y gcc)" >&2; exit 1; }
    mkdir -p "$REF_DIR"
    local s
    for s in epoll_pong uring_pong; do
        gcc -Wall -Wextra -O2 -o "$REF_DIR/$s" "bench/ref/$s.c"
    done
}
start_limit_server() { # SYSTEM
    local log=$TMP/$1.server.log
    LIM_PROTO=gw
    case $1 in
        c-epoll | c-uring)
            local bin=$REF_DIR/epoll_pong
            [[ $1 == c-uring ]] && bin=$REF_DIR/uring_pong
            taskset -c "$SERVER_CPU" "$bin" "$GW_PORT" 127.0.0.1 >"$log" 2>&1 &
            SERVER_PID=$!
            STARTED+=("$SERVER_PID")
            wait_port "$GW_PORT" "$SERVER_PID" "$log"
            SERVER_INFO=$(jq -nc --arg b "$bin" --arg src "bench/ref/$(basename "$bin").c" \
                '{processes: 1, threads: 1, binary: $b, source: $src, jwt: "none (any Auth gets the canned AuthOk)",
                  build: "gcc -Wall -Wextra -O2"}')
            ;;
        gateway*)
            local drv=()
            [[ $1 == gateway-* ]] && drv=(--io-driver "${1#gateway-}")
            MIMALLOC_ALLOW_THP=$GW_ALLOW_THP taskset -c "$SERVER_CPU" "$GW_BIN_DIR/gateway" --demo --cores 1 \
                "${drv[@]}" --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$log" 2>&1 &
            SERVER_PID=$!
            STARTED+=("$SERVER_PID")
            wait_health "$ADMIN_PORT" "$SERVER_PID" "$log"
            SERVER_INFO=$(jq -nc --arg f "--demo --cores 1 ${drv[*]}" --arg thp "$GW_ALLOW_THP" \
                --arg t "$(tasks_of "$SERVER_PID")" \
                '{processes: 1, threads: ($t|tonumber), flags: $f, mimalloc_allow_thp: ($thp|tonumber),
                  jwt: "HS256 verified per connection (demo key)",
                  io_driver: (if ($f | test("--io-driver")) then ($f | sub(".*--io-driver "; "")) else "epoll (no --io-driver flag in this build)" end)}')
            ;;
        mosquitto)
            # At its best for this comparison, as in `peers` (../shared/DESIGN.md section 7);
            # MQTT PINGREQ/PINGRESP where the others answer the gateway's Ping.
            chmod 1777 "$TMP" # mosquitto drops to its own user and logs here
            printf '%s\n' "listener $GW_PORT 127.0.0.1" "allow_anonymous true" "max_connections -1" \
                "persistence false" "set_tcp_nodelay true" "log_dest file $TMP/mosquitto.log" \
                "log_type error" "log_type warning" >"$TMP/mosquitto.conf"
            taskset -c "$SERVER_CPU" mosquitto -c "$TMP/mosquitto.conf" >"$log" 2>&1 &
            SERVER_PID=$!
            STARTED+=("$SERVER_PID")
            wait_port "$GW_PORT" "$SERVER_PID" "$log"
            LIM_PROTO=mqtt
            SERVER_INFO=$(jq -nc --arg v "$(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version //p')" \
                --rawfile conf "$TMP/mosquitto.conf" \
                '{processes: 1, threads: 1, version: $v, config: $conf, protocol: "MQTT 3.1.1 (PINGREQ/PINGRESP)",
                  jwt: "none (anonymous CONNECT)"}')
            ;;
        *) echo "limit: unknown system $1 (c-epoll c-uring gateway-epoll gateway-uring gateway mosquitto)" >&2; exit 2 ;;
    esac
}

# measure_limit SYSTEM: every run against one fresh server; writes
# $TMP/limit-SYSTEM.json.
measure_limit() {
    SYS=$1
    local hb files=()
    echo "== $SYS (server on CPU $SERVER_CPU, flood on CPU $LOAD_CPU, $N connections)"
    start_limit_server "$SYS"
    setup_runs
    for hb in $LIMIT_HB_MS; do rate_runs "$hb"; done
    stop_pid "$SERVER_PID"
    forget "$SERVER_PID"
    for hb in $LIMIT_HB_MS; do
        jq -n --arg hb "$hb" --arg n "$N" --slurpfile c "$TMP/cpu-$hb.json" --slurpfile fc "$STEM-$SYS-cpu-$hb.json" \
            --slurpfile s "$TMP/sys-$hb.sc.json" --slurpfile fs "$STEM-$SYS-sys-$hb.json" '
            ($c[0]) as $c | ($fc[0]) as $fc | ($s[0]) as $s | ($fs[0]) as $fs |
            ($fc.window.pongs_per_s) as $pps | ($fs.window.pongs_per_s) as $spps |
            ($pps * $c.window_s) as $pings | ($spps * $s.window_s) as $spings |
            def per(x; n): if n > 0 then x / n else null end;
            {(($n|tonumber) * 1000 / ($hb|tonumber) | floor | tostring): {
              heartbeat_ms: ($hb|tonumber), pongs_per_s: $pps,
              us_per_ping: per($c.cpu_ns / 1000; $pings),
              cpu_pct_of_one_core: ($c.cpu_ns / 1e7 / $c.window_s),
              cpu_window_s: $c.window_s,
              cpus_in_cpu_window: ($c.box + {others_on_server_cpu_pct:
                  (if $c.box.server_cpu_busy_pct then $c.box.server_cpu_busy_pct - $c.cpu_ns / 1e7 / $c.window_s else null end)}),
              us_per_ping_flood_ticks: per($fc.window.server_cpu_pct * $fc.window.wall_s * 1e4; $fc.window.pongs),
              syscalls_per_ping: per($s.total; $spings),
              socket_syscalls_per_ping: per([$s.by_name | to_entries[] | select(.key | test("^(recv|send|epoll_)")) | .value] | add // 0; $spings),
              syscalls_per_ping_by_name: ($s.by_name | map_values(per(.; $spings))),
              syscall_window: ($s + {pongs_per_s: $spps, pings: $spings}),
              conns: {cpu_run: $fc.conns_established, sys_run: $fs.conns_established,
                      failed: ($fc.conns_failed.total + $fs.conns_failed.total),
                      dropped: {cpu_run: $fc.conns_dropped, sys_run: $fs.conns_dropped}},
              pings_sent_vs_pongs_in_window: {pings: $fc.window.pings, pongs: $fc.window.pongs}}}' >"$TMP/rate-$hb.json"
        files+=("$TMP/rate-$hb.json")
    done
    jq -n --arg n "$N" --argjson srv "$SERVER_INFO" --slurpfile c "$TMP/setup-cpu.json" \
        --slurpfile fc "$STEM-$SYS-setup-cpu.json" --slurpfile s "$TMP/setup-sys.sc.json" \
        --slurpfile fs "$STEM-$SYS-setup-sys.json" --rawfile log "$TMP/$SYS.server.log" \
        --slurpfile rates <(jq -s 'add' "${files[@]}") '
        ($c[0]) as $c | ($fc[0]) as $fc | ($s[0]) as $s | ($fs[0]) as $fs | ($rates[0]) as $r |
        ($fc.conns_established) as $est | ($fs.conns_established) as $sest |
        def per(x; n): if n > 0 then x / n else null end;
        {us_per_conn_setup: per($c.cpu_ns / 1000; $est),
         syscalls_per_conn_setup: per($s.total; $sest),
         us_per_ping: ($r | map_values(.us_per_ping)),
         syscalls_per_ping: ($r | map_values(.syscalls_per_ping)),
         socket_syscalls_per_ping: ($r | map_values(.socket_syscalls_per_ping)),
         syscalls_per_ping_by_name: ($r | map_values(.syscalls_per_ping_by_name)),
         syscalls_per_conn_setup_by_name: ($s.by_name | map_values(per(.; $sest))),
         conn_setup: {conns: $est, conns_failed: ($fc.conns_failed.total + $fs.conns_failed.total),
                      ramp_s: $fc.ramp_s, connect_rate_per_s: $fc.connect_rate_per_s,
                      cpu_ns: $c.cpu_ns, measured_over_s: $c.wall_s,
                      cpus_over_ramp: ($c.box + {others_on_server_cpu_pct:
                          (if $c.box.server_cpu_busy_pct then $c.box.server_cpu_busy_pct - $c.cpu_ns / 1e7 / $c.wall_s else null end)}),
                      us_per_conn_flood_ticks: $fc.server_cpu_us_per_conn_setup,
                      syscall_window: $s, syscall_run_conns: $sest},
         rates: $r, server: $srv,
         server_log_tail: ($log | split("\n") | map(select(length > 0)) | .[-3:])}' >"$TMP/limit-$SYS.json"
    jq -r --arg s "$SYS" '"  \($s): setup \(.us_per_conn_setup * 10 | round / 10) us, \(.syscalls_per_conn_setup * 100 | round / 100) syscalls; " +
        ([.rates | to_entries[] | "\(.key)/s: \(.value.us_per_ping * 10 | round / 10) us, \(.value.syscalls_per_ping * 100 | round / 100) syscalls (socket \(.value.socket_syscalls_per_ping * 100 | round / 100)) per ping"] | join("; ")) +
        "; other work on the server CPU: \([.conn_setup.cpus_over_ramp, .rates[].cpus_in_cpu_window | .others_on_server_cpu_pct // 0 | round] | map("\(.)%") | join(", ")) (ramp, CPU windows)"' \
        "$TMP/limit-$SYS.json"
}

limit_scenario() {
    local with_mq=""
    command -v mosquitto >/dev/null && with_mq=" mosquitto"
    LIMIT_SYSTEMS=${LIMIT_SYSTEMS:-c-epoll c-uring gateway-epoll gateway-uring$with_mq}
    if [[ " $LIMIT_SYSTEMS " == *" mosquitto "* ]] && ! command -v mosquitto >/dev/null; then
        echo "limit: mosquitto is missing: apt-get install -y mosquitto (or leave it out of LIMIT_SYSTEMS)" >&2
        exit 1
    fi
    LIMIT_HB_MS=${LIMIT_HB_MS:-30000 1000}
    SETUP_HB_MS=${SETUP_HB_MS:-600000}
    SERVER_CPU=${SERVER_CPU:-0}
    LOAD_CPU=${LOAD_CPU:-1}
    LIMIT_SETTLE_S=${LIMIT_SETTLE_S:-3}
    CPU_WINDOW_S=${CPU_WINDOW_S:-30}
    SYS_WINDOW_S=${SYS_WINDOW_S:-10}
    LIMIT_SOURCES=${LIMIT_SOURCES:-4}
    LIMIT_GAP_S=${LIMIT_GAP_S:-3}
    SYSCALL_TOOL=${SYSCALL_TOOL:-auto}
    command -v taskset >/dev/null || { echo "limit: needs taskset (util-linux)" >&2; exit 1; }
    (($(nproc) >= 2)) || echo "limit: only $(nproc) CPU: server and load share it" >&2
    SC_TOOL=$(sc_tool)
    mapfile -t SC_EVENTS < <(sc_events)
    build_refs
    # gateway-epoll / gateway-uring need a gateway with --io-driver; an
    # older one runs once, as "gateway" (its only driver, epoll).
    local systems=() s note=""
    for s in $LIMIT_SYSTEMS; do
        if [[ $s == gateway-* ]] && ! "$GW_BIN_DIR/gateway" --help 2>/dev/null | grep -q -- '--io-driver'; then
            note="this gateway has no --io-driver flag: it ran once, as \"gateway\" (epoll driver), in place of the gateway-* systems asked for"
            [[ " ${systems[*]} " == *" gateway "* ]] || systems+=(gateway)
        else
            systems+=("$s")
        fi
    done
    [[ -z $note ]] || echo "  note: $note"
    LIMIT_ROUNDS=${LIMIT_ROUNDS:-1}
    ((LIMIT_ROUNDS >= 1)) || { echo "limit: LIMIT_ROUNDS must be at least 1" >&2; exit 2; }
    echo "== limit: ${systems[*]}; $LIMIT_ROUNDS round(s); syscalls counted with $SC_TOOL"
    # Round r starts with system r (modulo): each takes its turn first, so
    # drift on the box over the rounds hits every system alike.
    local r i k stem=$STEM round_json round_files=()
    for r in $(seq "$LIMIT_ROUNDS"); do
        ((LIMIT_ROUNDS == 1)) || { STEM="$stem-r$r"; echo "== round $r of $LIMIT_ROUNDS"; }
        round_json='{}'
        for ((i = 0; i < ${#systems[@]}; i++)); do
            k=$(((i + r - 1) % ${#systems[@]}))
            s=${systems[$k]}
            measure_limit "$s"
            round_json=$(jq -c --arg s "$s" --slurpfile j "$TMP/limit-$s.json" '. + {($s): $j[0]}' <<<"$round_json")
        done
        printf '%s\n' "$round_json" >"$TMP/limit-round-$r.json"
        round_files+=("$TMP/limit-round-$r.json")
    done
    jq -s '.' "${round_files[@]}" >"$TMP/limit-rounds.json"
    STEM=$stem
    # Each system's figures: the median over the rounds (one round: its
    # figures); every round's figures stay in .rounds.
    local sys_json
    sys_json=$(jq -c '
        def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
            else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        . as $rs | $rs[0] | with_entries(.key as $s | .value |= (
            . + {us_per_conn_setup: ([$rs[][$s].us_per_conn_setup] | median),
                 syscalls_per_conn_setup: ([$rs[][$s].syscalls_per_conn_setup] | median),
                 us_per_ping: (.us_per_ping | with_entries(.key as $h | .value = ([$rs[][$s].us_per_ping[$h]] | median))),
                 syscalls_per_ping: (.syscalls_per_ping | with_entries(.key as $h | .value = ([$rs[][$s].syscalls_per_ping[$h]] | median))),
                 socket_syscalls_per_ping: (.socket_syscalls_per_ping | with_entries(.key as $h |
                     .value = ([$rs[][$s].socket_syscalls_per_ping[$h]] | median))),
                 rounds: ($rs | length)}
            | if ($rs | length) > 1 then del(.rates, .conn_setup, .server_log_tail, .syscalls_per_ping_by_name,
                  .syscalls_per_conn_setup_by_name) + {figures_are: "medians over the rounds (each round in .rounds)"}
              else . end))' "$TMP/limit-rounds.json")
    COND=$(conditions "$(jq -nc --arg sc "$SERVER_CPU" --arg lc "$LOAD_CPU" --arg hb "$LIMIT_HB_MS" \
        --arg shb "$SETUP_HB_MS" --arg cw "$CPU_WINDOW_S" --arg sw "$SYS_WINDOW_S" --arg st "$LIMIT_SETTLE_S" \
        --arg src "$LIMIT_SOURCES" --arg tool "$SC_TOOL" --arg gcc "$(gcc --version | head -1)" \
        --arg perf "$(perf --version 2>/dev/null || echo none)" --arg thp "$GW_ALLOW_THP" --arg note "$note" \
        --arg rounds "$LIMIT_ROUNDS" '{
          pinning: {server_cpu: ($sc|tonumber), load_cpu: ($lc|tonumber), how: "taskset -c; one server process, one flood process"},
          processes: {server: 1, flood: 1}, heartbeat_ms: ($hb | split(" ") | map(select(length > 0) | tonumber)),
          setup_heartbeat_ms: ($shb|tonumber), cpu_window_s: ($cw|tonumber), syscall_window_s: ($sw|tonumber),
          settle_s: ($st|tonumber), source_addresses: ($src|tonumber), syscall_tool: $tool, perf: $perf, gcc: $gcc,
          rounds: ($rounds|tonumber), order: "round r starts with system r (modulo), then the others in turn",
          gateway_mimalloc_allow_thp: ($thp|tonumber),
          cpu: "time on CPU of all server threads (/proc/PID/task/*/schedstat), over a window inside the hold; loopback: the server is also charged the client side of what it sends",
          pings: "Pongs/s counted by flood over its window (which contains ours) times our window",
          socket_syscalls: "recv*, send*, epoll_*",
          note: (if $note == "" then null else $note end)}')")
    jq -n --arg n "$N" --argjson sys "$sys_json" --argjson cond "$COND" --slurpfile rounds "$TMP/limit-rounds.json" '
        def r(a; b): if (a|type) == "number" and (b|type) == "number" and b > 0 then a / b else null end;
        ($rounds[0]) as $rounds |
        def ratios(g; ref): {
            us_per_conn_setup: r(g.us_per_conn_setup; ref.us_per_conn_setup),
            syscalls_per_conn_setup: r(g.syscalls_per_conn_setup; ref.syscalls_per_conn_setup),
            us_per_ping: (g.us_per_ping | with_entries(.value = r(.value; ref.us_per_ping[.key]))),
            syscalls_per_ping: (g.syscalls_per_ping | with_entries(.value = r(.value; ref.syscalls_per_ping[.key])))};
        ($sys | keys | map(select(startswith("gateway")))) as $gws |
        {scenario: "limit", connections: ($n|tonumber), systems: $sys,
         ratios: ([$gws[] as $g | ("c-uring", "c-epoll", "mosquitto") as $ref | select($sys[$ref]) |
                   {key: "\($g) / \($ref)", value: ratios($sys[$g]; $sys[$ref])}] | from_entries),
         targets: [$gws[] as $g | select($sys["c-uring"]) | $sys[$g] as $x | $sys["c-uring"] as $u |
                   ($x.us_per_ping | to_entries[] | {system: $g, figure: "us_per_ping at \(.key)/s", vs: "c-uring",
                        ratio: r(.value; $u.us_per_ping[.key]), limit: 1.1}),
                   {system: $g, figure: "us_per_conn_setup", vs: "c-uring",
                    ratio: r($x.us_per_conn_setup; $u.us_per_conn_setup), limit: 1.25},
                   (select($sys.mosquitto) | $sys.mosquitto as $m | $x.us_per_ping | to_entries[] |
                    select(.key == "500") | {system: $g, figure: "us_per_ping at \(.key)/s", vs: "mosquitto",
                        ratio: r(.value; $m.us_per_ping[.key]), limit: 0.8}),
                   (select($g == "gateway-uring") | $x.socket_syscalls_per_ping | to_entries[] |
                    {system: $g, figure: "socket syscalls per ping at \(.key)/s", value: .value, limit: 0.05,
                     means: "about 0 (recv*, send*, epoll_*)"})]
                  | map(. + {met: ((.ratio // .value) != null and (.ratio // .value) <= .limit)}),
         rounds: (if ($rounds | length) > 1 then $rounds else null end),
         paired_ratios: (if ($rounds | length) > 1 then
             [$rounds[] as $x | [$x | keys[] | select(startswith("gateway"))][] as $g |
              ("c-uring", "mosquitto") as $ref | select($x[$ref]) |
              {key: "\($g) / \($ref)", value: ratios($x[$g]; $x[$ref])}]
             | group_by(.key) | map({key: .[0].key, value: map(.value)}) | from_entries
           else null end),
         conditions: $cond}' >"$OUT"
    echo "== result ($OUT)"
    jq -r '
        def f(x; d): if x == null then "-" else (x * d | round / d | tostring) end;
        (.systems | to_entries[0].value.us_per_ping | keys_unsorted) as $rates |
        "system            us/setup  sc/setup" + ([$rates[] | "  us/ping@\(.)  sc/ping@\(.)"] | join("")),
        (.systems | to_entries[] | .value as $v |
         "\(.key | . + " " * (16 - length))  \(f($v.us_per_conn_setup; 10))  \(f($v.syscalls_per_conn_setup; 100))" +
         ([$rates[] as $k | "  \(f($v.us_per_ping[$k]; 10))  \(f($v.syscalls_per_ping[$k]; 100)) (socket \(f($v.socket_syscalls_per_ping[$k]; 100)))"] | join(""))),
        (.ratios | to_entries[] | "\(.key): setup \(f(.value.us_per_conn_setup; 100))x CPU, \(f(.value.syscalls_per_conn_setup; 100))x syscalls; " +
         ([.value.us_per_ping | to_entries[] | "per ping at \(.key)/s \(f(.value; 100))x CPU"] | join(", ")) + "; " +
         ([.value.syscalls_per_ping | to_entries[] | "\(f(.value; 100))x syscalls at \(.key)/s"] | join(", "))),
        (.paired_ratios // {} | to_entries[] | .value as $v | "\(.key) per round: setup " +
         ([$v[].us_per_conn_setup | f(.; 100)] | join(" ")) + "x; " +
         ([$v[0].us_per_ping | keys_unsorted[] as $k | "per ping at \($k)/s " +
           ([$v[].us_per_ping[$k] | f(.; 100)] | join(" ")) + "x"] | join("; "))),
        (.targets[] | "target \(.system) \(.figure)\(if .vs then " / " + .vs else "" end): \(f(.ratio // .value; 100)) (limit \(.limit)): \(if .met then "met" else "MISSED" end)")' "$OUT"
}

# The slab scenario: kernel memory per connection on each socket driver.
# For each of $SLAB_RUNS (3) rounds, for each driver of $SLAB_DRIVERS
# [uring epoll] (alternating, so drift on the box hits both): drop the
# page cache and reclaimable slab, settle $SLAB_SETTLE_S (8) s, start one
# gateway (--demo --cores 1 --io-driver D), hold $N connections from one
# flood process, and read the kernel slab and its unreclaimable part
# (/proc/meminfo) before the ramp and at full. Per connection pair
# (the client socket is in the figure too, the same for both drivers).
slab_scenario() {
    [[ $(id -u) -eq 0 ]] || { echo "slab: run as root (drops the page cache between runs)" >&2; exit 1; }
    local runs=${SLAB_RUNS:-3} drivers=${SLAB_DRIVERS:-uring epoll} settle=${SLAB_SETTLE_S:-8} r d gw rows=()
    for r in $(seq "$runs"); do
        for d in $drivers; do
            sync; echo 2 >/proc/sys/vm/drop_caches; sleep "$settle"
            ./target/release/gateway --demo --cores 1 --io-driver "$d" --listen "127.0.0.1:$GW_PORT" \
                --admin-listen "127.0.0.1:$ADMIN_PORT" >"$TMP/slab-gw-$d-$r.log" 2>&1 &
            gw=$!
            STARTED+=("$gw")
            wait_health "$ADMIN_PORT" "$gw" "$TMP/slab-gw-$d-$r.log"
            "$FLOOD" hold --target "127.0.0.1:$GW_PORT" --conns "$N" --procs 1 --rate "$RATE" \
                --settle-s 5 --hold-s 5 --pid "$gw" --json "$STEM-$d-$r.json" >"$TMP/slab-flood-$d-$r.log" 2>&1 ||
                { tail "$TMP/slab-flood-$d-$r.log" >&2; exit 1; }
            stop_pid "$gw"; forget "$gw"
            rows+=("$(jq -c --arg d "$d" --arg r "$r" '{driver: $d, run: ($r|tonumber), established: .conns_established,
                slab_bytes_per_pair: (.kernel_slab_delta_bytes / .conns_established),
                sunreclaim_bytes_per_pair: ((.rss.at_full.sunreclaim_bytes - .rss.at_start.sunreclaim_bytes) / .conns_established),
                gateway_rss_bytes_per_conn: (.server_rss_delta_bytes / .conns_established)}' "$STEM-$d-$r.json")")
            echo "  ${rows[-1]}"
        done
    done
    printf '%s\n' "${rows[@]}" | jq -s --argjson cond "$(conditions '{"gateway": "1 process, --demo --cores 1", "flood_processes": 1}')" '
        def mean(k): map(.[k]) | add / length;
        (group_by(.driver) | map({key: .[0].driver, value: {slab_bytes_per_pair: mean("slab_bytes_per_pair"),
            sunreclaim_bytes_per_pair: mean("sunreclaim_bytes_per_pair"),
            gateway_rss_bytes_per_conn: mean("gateway_rss_bytes_per_conn"), runs: length}}) | from_entries) as $m |
        {scenario: "slab", runs: ., mean: $m,
         uring_over_epoll: (if $m.uring and $m.epoll then {slab: ($m.uring.slab_bytes_per_pair / $m.epoll.slab_bytes_per_pair),
             sunreclaim: ($m.uring.sunreclaim_bytes_per_pair / $m.epoll.sunreclaim_bytes_per_pair)} else null end),
         conditions: $cond}' >"$OUT"
    echo "== result ($OUT)"
    jq -r '.mean | to_entries[] | "\(.key): slab \(.value.slab_bytes_per_pair|floor) B per connection pair (unreclaimable \(.value.sunreclaim_bytes_per_pair|floor)), gateway RSS \(.value.gateway_rss_bytes_per_conn|floor) B/conn"' "$OUT"
    jq -r '.uring_over_epoll // empty | "uring / epoll: slab \(.slab * 1000 | floor / 1000)x, unreclaimable \(.sunreclaim * 1000 | floor / 1000)x (issue 14 target: at most 1.05x)"' "$OUT"
}
