#!/usr/bin/env bash
# Says which kernel settings and process limits are below what a
# million-connection gateway needs, and how to fix each.
#   tuning/check.sh               check the host (exit 1 when something is off)
#   tuning/check.sh --compare KEY CURRENT WANTED   (used by apply.sh)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# True when CURRENT satisfies WANTED. Most values are floors (each number
# >= wanted); timeouts and keepalive counts are ceilings; tcp_tw_reuse is
# exact; the port range's span must be at least as wide; reserved ports
# must all be reserved (others may be too).
satisfies() {
  local key="$1" cur=($2) want=($3)
  case "$key" in
    net.ipv4.ip_local_port_range)
      [ $(( ${cur[1]} - ${cur[0]} )) -ge $(( ${want[1]} - ${want[0]} )) ]
      return ;;
    net.ipv4.ip_local_reserved_ports)
      # Every wanted port inside one of the reserved ports or ranges.
      local p r lo hi ok
      for p in ${3//,/ }; do
        ok=1
        for r in ${2//,/ }; do
          lo=${r%-*}; hi=${r#*-}
          if [ "$p" -ge "$lo" ] && [ "$p" -le "$hi" ]; then ok=0; break; fi
        done
        [ $ok -eq 0 ] || return 1
      done
      return ;;
    net.ipv4.tcp_tw_reuse)
      [ "${cur[0]}" -eq "${want[0]}" ]
      return ;;
    net.ipv4.tcp_fin_timeout|net.ipv4.tcp_keepalive_*)
      [ "${cur[0]}" -le "${want[0]}" ]
      return ;;
  esac
  [ "${#cur[@]}" -eq "${#want[@]}" ] || return 1
  for i in "${!want[@]}"; do
    [ "${cur[$i]}" -ge "${want[$i]}" ] || return 1
  done
}

if [ "${1:-}" = "--compare" ]; then
  satisfies "$2" "$3" "$4"
  exit
fi

off=0
report() { printf '%-4s %s\n' "$1" "$2"; [ "$1" = "OFF" ] && off=1; return 0; }

while IFS='=' read -r key value; do
  key="$(echo "$key" | xargs)"; value="$(echo "$value" | xargs)"
  [ -z "$key" ] && continue
  path="/proc/sys/${key//./\/}"
  if [ ! -e "$path" ]; then
    report "--" "$key: not in this kernel (fine unless you expected it)"
    continue
  fi
  current="$(xargs < "$path")"
  if satisfies "$key" "$current" "$value"; then
    report "ok" "$key = $current"
  else
    report "OFF" "$key = $current, want $value: sudo sysctl -w $key=\"$value\" (or tuning/apply.sh)"
  fi
done < <(grep -v '^\s*#' "$here/gateway-sysctl.conf" | grep '=')

nofile="$(ulimit -n)"
if [ "$nofile" != "unlimited" ] && [ "$nofile" -lt 1048576 ]; then
  report "OFF" "open files of this shell = $nofile: the gateway holds about that many connections; systemd/gateway.service sets LimitNOFILE=2097152 (or: ulimit -n 1048576)"
else
  report "ok" "open files = $nofile"
fi
memlock="$(ulimit -l)"
if [ "$memlock" != "unlimited" ] && [ "$memlock" -lt 65536 ] && [ "$(id -u)" -ne 0 ]; then
  report "OFF" "locked memory = ${memlock} KiB: io_uring needs io_memory_bytes per core; LimitMEMLOCK=infinity in the unit (or ulimit -l unlimited)"
else
  report "ok" "locked memory = $memlock KiB (root has CAP_IPC_LOCK)"
fi
if [ -e /proc/sys/kernel/io_uring_disabled ] && [ "$(cat /proc/sys/kernel/io_uring_disabled)" != "0" ]; then
  report "OFF" "kernel.io_uring_disabled = $(cat /proc/sys/kernel/io_uring_disabled): sudo sysctl -w kernel.io_uring_disabled=0"
else
  report "ok" "io_uring enabled"
fi
exit $off
