#!/usr/bin/env bash
# Runs inside the VM that systemd/live_test.sh boots (as root, from a unit
# started after multi-user.target), in /root/gateway: a copy of the
# checkout with the built binaries, my-gateway.toml and my-secrets.env.
# Installs the gateway with OPERATIONS.md's own install block, then checks
# start, reload, the watchdog (frozen process, one stuck core), stop with a
# connected client, and an upgrade with gateway@a -> gateway@b. Writes the
# transcript to /root/live.log; the last line is PASS or FAIL.
set -uo pipefail
cd /root/gateway
failures=0
step() { printf '\n==> %s\n' "$*"; }
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
run() { echo "# $*"; "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
main_pid() { systemctl show -p MainPID --value "$1"; }
journal() { journalctl -u "$1" --no-pager -o short-monotonic --since "@$2" | cut -c1-220; }
secret="$(sed -n 's/^GATEWAY_JWT_SECRET=//p' my-secrets.env)"
token() { GATEWAY_TOKEN_SECRET="$secret" /usr/local/bin/gateway token --sub "$1"; }
# A client that stays connected: gwcat with its stdin held open.
client() {
  local name="$1"
  rm -f "/root/$name.in"; mkfifo "/root/$name.in"
  sleep 600 > "/root/$name.in" &
  target/release/gwcat --addr 127.0.0.1:7000 --token "$(token "$name")" < "/root/$name.in" > "/root/$name.out" 2>&1 &
  sleep 1
  cat "/root/$name.out"
}
# kill -STOP 0 would stop this script's own process group.
need_pid() { [ "$1" != 0 ] || { fail "no main process"; echo "FAIL"; exit 1; }; }
wait_restart() { # unit old_pid seconds
  local t=0
  while [ $t -lt "$3" ]; do
    local p; p="$(main_pid "$1")"
    if [ "$p" != 0 ] && [ "$p" != "$2" ] && [ "$(systemctl is-active "$1")" = active ]; then return 0; fi
    sleep 1; t=$((t + 1))
  done
  return 1
}

echo "systemd $(systemctl --version | head -1 | cut -d' ' -f2), kernel $(uname -r), $(nproc) CPUs, $(. /etc/os-release; echo "$PRETTY_NAME")"

step "install: the sh block of OPERATIONS.md's \"Install with systemd\", verbatim"
awk '/^## Install with systemd/ { f = 1 } f && /^```sh/ { c = 1; next } c && /^```/ { exit } c' OPERATIONS.md > /root/install.sh
cat /root/install.sh
t0="$(now)"; since_start="$(date +%s)"
if bash -e -x /root/install.sh; then
  ok "install steps ran; enable --now returned after $(since "$t0")"
else
  fail "install steps"; echo "FAIL (the install steps; nothing else can run)"; exit 1
fi

step "start: Type=notify reached READY=1"
run systemctl show -p Type -p User -p WatchdogUSec -p ActiveState -p SubState -p StatusText -p NRestarts gateway
[ "$(systemctl is-active gateway)" = active ] && ok "active" || fail "not active"
echo "# curl 127.0.0.1:9100/readyz"; curl -s 127.0.0.1:9100/readyz
journal gateway "$since_start" | tail -n 6

step "a client logs in"
client alice
grep -q AuthOk /root/alice.out && ok "AuthOk" || fail "no AuthOk"

step "files the gateway reads: a TLS key readable by root only is caught before a restart"
install -d -m 0750 -g gateway /etc/gateway/tls
cp my-fullchain.pem /etc/gateway/tls/fullchain.pem && chmod 0644 /etc/gateway/tls/fullchain.pem
install -m 0600 my-privkey.pem /etc/gateway/tls/privkey.pem   # the mistake: root only
printf '\n[tls]\ncert_file = "/etc/gateway/tls/fullchain.pem"\nkey_file = "/etc/gateway/tls/privkey.pem"\n' >> /etc/gateway/gateway.toml
if systemd/verify.sh --installed; then fail "verify.sh did not catch the unreadable key"; else ok "verify.sh --installed refused (above)"; fi
echo "# the fix: install -m 0640 -g gateway my-privkey.pem /etc/gateway/tls/privkey.pem"
install -m 0640 -g gateway my-privkey.pem /etc/gateway/tls/privkey.pem
systemd/verify.sh --installed && ok "verify.sh --installed passes" || fail "verify.sh after the fix"
t0="$(now)"; ts="$(date +%s)"
run systemctl restart gateway && ok "restart with TLS returned after $(since "$t0")" || fail "restart with TLS"
run systemctl show -p StatusText gateway

step "systemctl reload (SIGHUP) with a renewed certificate"
install -m 0640 -g gateway my-fullchain2.pem /etc/gateway/tls/fullchain.pem
install -m 0640 -g gateway my-privkey2.pem /etc/gateway/tls/privkey.pem
ts="$(date +%s)"; pid="$(main_pid gateway)"
run systemctl reload gateway || fail "reload"
sleep 1
run systemctl show -p ActiveState -p SubState -p StatusText gateway
[ "$(main_pid gateway)" = "$pid" ] && ok "same process ($pid)" || fail "the process changed"
systemctl show -p StatusText --value gateway | grep -q "TLS certificate reloaded" && ok "STATUS says reloaded" || fail "STATUS after reload"
journal gateway "$ts"

step "watchdog: the whole process frozen (SIGSTOP)"
client bob
pid="$(main_pid gateway)"; need_pid "$pid"; ts="$(date +%s)"; t0="$(now)"
run kill -STOP "$pid"
if wait_restart gateway "$pid" 90; then ok "restarted after $(since "$t0") as pid $(main_pid gateway)"; else fail "no restart within 90 s"; fi
journal gateway "$ts" | grep -v -i "connection cap" | head -n 12
run systemctl show -p NRestarts -p StatusText gateway

step "watchdog: one core stuck, the rest of the process running"
pid="$(main_pid gateway)"; need_pid "$pid"
# glommio names a core's threads gw-core-<core>-<id> (the executor and
# its helper): stop them all.
tids=""
for t in /proc/"$pid"/task/*; do
  case "$(cat "$t/comm")" in gw-core-1-*) tids="$tids ${t##*/}" ;; esac
done
echo "core 1 is threads$tids of $pid"
ts="$(date +%s)"; t0="$(now)"
# PTRACE_SEIZE (0x4206) then PTRACE_INTERRUPT (0x4207) stop those threads
# only; the control thread and core 0 keep running.
# shellcheck disable=SC2086
perl -e 'for $t (@ARGV) { syscall(101, 0x4206, $t + 0, 0, 0) == 0 or die "seize $t: $!"; syscall(101, 0x4207, $t + 0, 0, 0) == 0 or die "interrupt $t: $!"; } print "stopped threads @ARGV\n"; sleep 120' $tids &
tracer=$!
sleep 3
echo "# curl 127.0.0.1:9100/healthz (the control thread still answers)"; curl -s -m 5 127.0.0.1:9100/healthz
# systemd's SIGABRT cannot finish off threads held by a tracer (a real
# stuck core has none): once the watchdog has fired, let go of them.
for _ in $(seq 90); do
  [ "$(systemctl show -p SubState --value gateway)" = running ] || break
  sleep 1
done
echo "watchdog fired after $(since "$t0") (SubState=$(systemctl show -p SubState --value gateway))"
kill "$tracer" 2>/dev/null; wait "$tracer" 2>/dev/null
if wait_restart gateway "$pid" 90; then ok "restarted after $(since "$t0")"; else fail "no restart within 90 s"; fi
journal gateway "$ts" | grep -v -i "connection cap" | head -n 10

step "systemctl stop: drain, the connected client gets GoAway"
client carol
ts="$(date +%s)"; t0="$(now)"
run systemctl stop --no-block gateway
sleep 1
run systemctl show -p ActiveState -p SubState -p StatusText gateway
while [ "$(systemctl is-active gateway)" != inactive ] && [ "$(systemctl is-active gateway)" != failed ]; do sleep 0.2; done
ok "stopped after $(since "$t0")"
cat /root/carol.out
grep -q "server going away: drain" /root/carol.out && ok "carol got GoAway" || fail "no GoAway"
journal gateway "$ts"
run systemctl show -p ActiveState -p Result gateway

step "upgrade: gateway@a serves, gateway@b starts beside it, gateway@a drains"
run systemctl disable gateway
ts="$(date +%s)"
run systemctl enable --now gateway@a
client dave
grep -q "node=$(hostname)-a" /root/dave.out && ok "dave on $(hostname)-a" || fail "dave not on instance a"
echo "# the upgrade block of OPERATIONS.md (\"With systemd: gateway@a and gateway@b\"), a new binary in place"
t0="$(now)"
run install -m 0755 target/release/gateway /usr/local/bin/gateway || fail "install over the running binary"
run systemctl enable --now gateway@b && ok "gateway@b ready after $(since "$t0"), beside gateway@a"
systemctl is-active gateway@a >/dev/null && ok "gateway@a still active" || fail "gateway@a stopped"
t0="$(now)"
run systemctl disable --now gateway@a && ok "gateway@a drained and stopped after $(since "$t0")"
cat /root/dave.out
grep -q "server going away: drain" /root/dave.out && ok "dave got GoAway from a" || fail "no GoAway for dave"
client erin
grep -q "node=$(hostname)-b" /root/erin.out && ok "a new login lands on $(hostname)-b" || fail "erin not on b"
journal gateway@a "$ts" | tail -n 5
journal gateway@b "$ts" | tail -n 3
run systemctl show -p StatusText gateway@b

echo
if [ "$failures" = 0 ]; then echo "PASS"; else echo "FAIL ($failures)"; fi
