#!/usr/bin/env bash
# Runs systemd-analyze verify on systemd/gateway.service. verify wants the
# ExecStart binary to exist, so a copy pointing at a built binary is checked.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../target/release/gateway}"
[ -x "$bin" ] || { echo "verify.sh: build first (cargo build --release -p gateway) or pass the binary path" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/local/bin/gateway|ExecStart=$(readlink -f "$bin")|" "$here/gateway.service" > "$tmp/gateway.service"
# verify exits 0 on unknown keys and bad values; any message is a failure.
out="$(systemd-analyze verify "$tmp/gateway.service" 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "systemd-analyze verify: warnings above" >&2
  exit 1
fi
echo "systemd-analyze verify: ok"
