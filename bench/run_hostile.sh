# The hostile scenario of bench/run.sh (described in run.sh's header).
# Sourced by bench/run.sh, not run directly: it uses run.sh's settings and
# helpers ($TMP, $STEM, $OUT, ports, wait_health, stop_pid, forget,
# flood_run, conditions) and start_tls_gateway from run_transports.sh.
# Entry point: hostile_scenario.
# shellcheck shell=bash
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "bench/run_hostile.sh is sourced by bench/run.sh: run bench/run.sh hostile" >&2
    exit 2
fi

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# honest NAME FILE: first $H_PROBE_N sequential TLS handshakes
# (bench/tls_probe.py: one at a time, so no client-side queueing: what the
# gateway and the kernel take), then $H_CONNS honest clients connect (TLS)
# and echo at $H_RATE/s for $H_DURATION_S s (flood) against the running
# gateway; JSON to FILE. The probe goes first: under attack, the hostile
# connections the budget did not evict are closed at auth_timeout_ms (10 s)
# after they connected, so the attack is whole only in its first seconds.
honest() {
    local probe='null'
    if (( H_PROBE_N > 0 )); then
        probe=$(python3 bench/tls_probe.py "$TGW_CA" "$GW_PORT" "$H_PROBE_N" --json)
    fi
    flood_run "$1" echo --target "127.0.0.1:$GW_PORT" --conns "$H_CONNS" --msgs-per-s "$H_RATE" \
        --duration-s "$H_DURATION_S" --rate "$H_CONNECT_RATE" --inflight 64 --tls --ca "$TGW_CA" \
        --first-id 900000 --json "$STEM-$1.json"
    jq --argjson probe "$probe" '{conns_established, conns_failed: .conns_failed.total,
         connect_auth_ms: {p50: .connect_auth_latency.p50_ms, p99: .connect_auth_latency.p99_ms},
         echo_ms: {p50: .echo.rtt.p50_ms, p99: .echo.rtt.p99_ms}, replies: .echo.replies,
         tls_probe: $probe}' "$STEM-$1.json" >"$2"
}

# hostile_one KIND FILE: a fresh gateway; honest clients on a quiet node;
# then $H_N hostile connections of KIND held while the honest clients run
# again; gateway RSS before, at the peak of the attack, and after.
hostile_one() {
    local kind=$1 rss0 rss1 rss2 peak=0 r hp
    echo "== $kind: $H_N hostile connections against one gateway (--cores $GW_CORES), honest TLS clients quiet and under attack"
    TMPDIR=$TMP MIMALLOC_ALLOW_THP=$GW_ALLOW_THP "$GW_BIN_DIR/gateway" --demo --cores "$GW_CORES" --tls-self-signed \
        --node-id "hostile-$kind" --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
        >"$TMP/hostile-$kind.log" 2>&1 &
    TGW_PID=$!
    STARTED+=("$TGW_PID")
    wait_health "$ADMIN_PORT" "$TGW_PID" "$TMP/hostile-$kind.log"
    TGW_CA=$TMP/gateway-hostile-$kind-self-signed.pem
    sleep 1
    honest "quiet-$kind" "$TMP/quiet-$kind.json"
    rss0=$(rss_kb "$TGW_PID")
    rm -f "$TMP/ready"
    ./target/release/hostile --target "127.0.0.1:$GW_PORT" --kind "$kind" --conns "$H_N" \
        --rate "$H_ATTACK_RATE" --hold-s "$H_HOLD_S" --ready-file "$TMP/ready" >"$TMP/hostile-$kind.out" 2>&1 &
    hp=$!
    STARTED+=("$hp")
    while [[ ! -s $TMP/ready ]]; do
        kill -0 "$hp" 2>/dev/null || { cat "$TMP/hostile-$kind.out" >&2; exit 1; }
        r=$(rss_kb "$TGW_PID"); ((r > peak)) && peak=$r
        sleep 0.2
    done
    rss1=$(rss_kb "$TGW_PID"); ((rss1 > peak)) && peak=$rss1
    honest "attack-$kind" "$TMP/attack-$kind.json"
    r=$(rss_kb "$TGW_PID"); ((r > peak)) && peak=$r
    wait "$hp" || { cat "$TMP/hostile-$kind.out" >&2; exit 1; }
    forget "$hp"
    sleep 2
    rss2=$(rss_kb "$TGW_PID")
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/stats" >"$TMP/stats-$kind.json"
    stop_pid "$TGW_PID"
    forget "$TGW_PID"
    jq -n --arg kind "$kind" --slurpfile q "$TMP/quiet-$kind.json" --slurpfile a "$TMP/attack-$kind.json" \
        --slurpfile h "$TMP/hostile-$kind.out" --slurpfile st "$TMP/stats-$kind.json" \
        --arg r0 "$rss0" --arg r1 "$rss1" --arg r2 "$rss2" --arg pk "$peak" '
        ($q[0]) as $q | ($a[0]) as $a | ($st[0]) as $st |
        {kind: $kind, hostile: $h[0],
         gateway_rss_kb: {before: ($r0|tonumber), attack_open: ($r1|tonumber), peak: ($pk|tonumber), after: ($r2|tonumber)},
         rss_growth_mib: ((($pk|tonumber) - ($r0|tonumber)) / 1024),
         honest_quiet: $q, honest_attack: $a,
         connect_p99_ratio: (if $q.connect_auth_ms.p99 > 0 then $a.connect_auth_ms.p99 / $q.connect_auth_ms.p99 else null end),
         echo_p99_ratio: (if $q.echo_ms.p99 > 0 then $a.echo_ms.p99 / $q.echo_ms.p99 else null end),
         closes: $st.closes, preauth_evictions: $st.counters.preauth_evictions}' >"$2"
    jq -r '"  \(.kind): RSS +\(.rss_growth_mib|floor) MiB at the peak; honest connect p99 \(.honest_quiet.connect_auth_ms.p99) -> \(.honest_attack.connect_auth_ms.p99) ms, echo p99 \(.honest_quiet.echo_ms.p99) -> \(.honest_attack.echo_ms.p99) ms; evictions \(.preauth_evictions)"' "$2"
}

hostile_scenario() {
    H_N=${H_N:-15000}
    H_ATTACK_RATE=${H_ATTACK_RATE:-5000}
    H_HOLD_S=${H_HOLD_S:-25}
    H_CONNS=${H_CONNS:-200}
    H_RATE=${H_RATE:-1000}
    H_CONNECT_RATE=${H_CONNECT_RATE:-200}
    H_DURATION_S=${H_DURATION_S:-10}
    H_KINDS=${H_KINDS:-partial-frame partial-tls tls-handshake partial-ws}
    H_ROUNDS=${H_ROUNDS:-3}
    H_PROBE_N=${H_PROBE_N:-1000}
    local kind r all='[]'
    # Rounds alternate the kinds, so drift on the box spreads over all of them.
    for r in $(seq "$H_ROUNDS"); do
        for kind in $H_KINDS; do
            echo "== round $r of $H_ROUNDS"
            hostile_one "$kind" "$TMP/result-$kind-$r.json"
            all=$(jq -c --slurpfile x "$TMP/result-$kind-$r.json" --arg r "$r" '. + [$x[0] + {round: ($r|tonumber)}]' <<<"$all")
        done
    done
    local cond
    cond=$(conditions "$(jq -nc --arg n "$H_N" --arg c "$GW_CORES" --arg hc "$H_CONNS" --arg hcr "$H_CONNECT_RATE" \
        --arg hr "$H_RATE" --arg hd "$H_DURATION_S" --arg rounds "$H_ROUNDS" '{gateway: ("1 process, --demo --tls-self-signed --cores " + $c),
        hostile: ("one process, " + $n + " connections of each kind, one kind per fresh gateway"),
        honest: "flood echo over TLS, \($hc) connections at \($hcr) connects/s, \($hr) echo/s for \($hd) s, quiet then during the attack",
        rounds: "\($rounds), each a fresh gateway per kind; p99 ratios are of the medians over the rounds"}')")
    # Per kind: the median over the rounds of each p99 (one round's p99 of
    # 200 logins is its 2nd-slowest login, and this box adds a 1-2% tail of
    # ~5 ms to TLS logins whether attacked or not, so one round's ratio is
    # mostly noise), and the largest RSS growth.
    jq -n --argjson runs "$all" --argjson cond "$cond" '
        def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
        def ratio(a; b): if b > 0 then a / b else null end;
        {scenario: "hostile", runs: $runs,
         kinds: ($runs | group_by(.kind) | map({kind: .[0].kind, rounds: length,
             rss_growth_mib_max: (map(.rss_growth_mib) | max),
             connect_auth_p99_ms: {quiet: map(.honest_quiet.connect_auth_ms.p99), attack: map(.honest_attack.connect_auth_ms.p99)},
             echo_p99_ms: {quiet: map(.honest_quiet.echo_ms.p99), attack: map(.honest_attack.echo_ms.p99)},
             tls_probe_p99_ms: {quiet: map(.honest_quiet.tls_probe.p99_ms // empty), attack: map(.honest_attack.tls_probe.p99_ms // empty)}}
             | .connect_p99_ratio = ratio(.connect_auth_p99_ms.attack | median; .connect_auth_p99_ms.quiet | median)
             | .echo_p99_ratio = ratio(.echo_p99_ms.attack | median; .echo_p99_ms.quiet | median)
             | .tls_probe_p99_ratio = ratio(.tls_probe_p99_ms.attack | median; .tls_probe_p99_ms.quiet | median))),
         targets: {rss_growth_mib_max: 64, honest_p99_ratio_max: 2},
         conditions: $cond}' >"$OUT"
    echo "== result ($OUT)"
    jq -r '.kinds[] | "  \(.kind): RSS growth at most \(.rss_growth_mib_max | floor) MiB; honest connect+auth p99 median \(.connect_auth_p99_ms.quiet | sort | .[(length - 1) / 2 | floor]) -> \(.connect_auth_p99_ms.attack | sort | .[(length - 1) / 2 | floor]) ms (\(.connect_p99_ratio * 100 | floor / 100)x), echo p99 \(.echo_p99_ratio * 100 | floor / 100)x, sequential TLS handshake p99 \(.tls_probe_p99_ratio // 0 | . * 100 | floor / 100)x"' "$OUT"
}
