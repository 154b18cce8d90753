#!/usr/bin/env bash
# Applies tuning/gateway-sysctl.conf to the running kernel (root needed).
#   tuning/apply.sh            apply now
#   tuning/apply.sh --persist  also install as /etc/sysctl.d/60-gateway.conf
# Keys the kernel does not have (e.g. conntrack without the module) are
# reported and skipped; values already larger are kept.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
conf="$here/gateway-sysctl.conf"
[ "$(id -u)" -eq 0 ] || { echo "apply.sh: run as root (sysctl -w needs it)" >&2; exit 1; }

failed=0
while IFS='=' read -r key value; do
  key="$(echo "$key" | xargs)"; value="$(echo "$value" | xargs)"
  [ -z "$key" ] && continue
  case "$key" in \#*) continue ;; esac
  path="/proc/sys/${key//./\/}"
  if [ ! -e "$path" ]; then
    echo "skip  $key (not in this kernel)"
    continue
  fi
  current="$(xargs < "$path")"
  if "$here/check.sh" --compare "$key" "$current" "$value" >/dev/null; then
    echo "keep  $key = $current"
    continue
  fi
  # Reserved ports add to what the host already reserves.
  if [ "$key" = net.ipv4.ip_local_reserved_ports ] && [ -n "$current" ]; then
    value="$current,$value"
  fi
  if sysctl -q -w "$key=$value" >/dev/null 2>&1; then
    echo "set   $key = $value (was $current)"
  else
    echo "FAIL  $key = $value (is $current)" >&2
    failed=1
  fi
done < <(grep -v '^\s*#' "$conf" | grep '=')

if [ "${1:-}" = "--persist" ]; then
  install -m 0644 "$conf" /etc/sysctl.d/60-gateway.conf && echo "installed /etc/sysctl.d/60-gateway.conf"
fi
exit $failed
