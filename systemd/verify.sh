#!/usr/bin/env bash
# Checks the systemd units. Any message from systemd-analyze is a failure.
#
#   systemd/verify.sh [BINARY]
#     Before installing (CI, a build machine): systemd-analyze verify on
#     gateway.service and gateway@.service, with ExecStart pointing at a
#     built binary (verify wants it to exist; default target/release/gateway,
#     else target/debug/gateway); and the template's settings match the
#     unit's but for its instance lines.
#
#   sudo systemd/verify.sh --installed [UNIT]
#     On the host, after the install steps (OPERATIONS.md): systemd-analyze
#     verify on /etc/systemd/system/UNIT (default gateway.service), then
#     `gateway check-config` run as the unit's User= with its
#     EnvironmentFile=: the config parses, every file it names (TLS and JWT
#     keys, NATS credentials) is readable by that user, the keys load, and
#     the secrets the config names are set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }

# systemd-analyze verify exits 0 on unknown keys and bad values: any output fails.
analyze() {
  local out
  out="$(systemd-analyze verify "$@" 2>&1)" || { echo "$out" >&2; return 1; }
  if [ -n "$out" ]; then
    echo "$out" >&2
    echo "systemd-analyze verify $*: warnings above" >&2
    return 1
  fi
  echo "systemd-analyze verify $(basename "${@: -1}"): ok"
}

# The value of KEY= in a unit file (last one wins, as in systemd).
unit_value() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

if [ "${1:-}" != "--installed" ]; then
  bin="${1:-}"
  if [ -z "$bin" ]; then
    for b in "$here/../target/release/gateway" "$here/../target/debug/gateway"; do
      [ -x "$b" ] && { bin="$b"; break; }
    done
  fi
  [ -n "$bin" ] && [ -x "$bin" ] || { echo "verify.sh: build first (cargo build -p gateway) or pass the binary path" >&2; exit 1; }
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  for u in gateway.service gateway@.service; do
    sed "s|^ExecStart=/usr/local/bin/gateway|ExecStart=$(readlink -f "$bin")|" "$here/$u" > "$tmp/$u"
  done
  # The template is checked as an instance of itself.
  cp "$tmp/gateway@.service" "$tmp/gateway@a.service"
  analyze "$tmp/gateway.service"
  analyze "$tmp/gateway@a.service"
  # The two files must not drift apart: same settings but for comments,
  # the description and the instance's ExecStart and GATEWAY_NODE.
  settings() { grep -v -e '^#' -e '^Description=' -e '^ExecStart=' -e '^Environment=GATEWAY_NODE=' "$1"; }
  if ! diff <(settings "$here/gateway.service") <(settings "$here/gateway@.service") >&2; then
    echo "verify.sh: gateway@.service differs from gateway.service beyond its instance lines (above): keep them in step" >&2
    exit 1
  fi
  echo "gateway@.service matches gateway.service: ok"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "verify.sh --installed: run as root (it runs the gateway as the unit's user)" >&2; exit 1; }
unit_name="${2:-gateway.service}"
unit="/etc/systemd/system/$unit_name"
case "$unit_name" in *@*.service) unit="/etc/systemd/system/${unit_name%%@*}@.service" ;; esac
[ -f "$unit" ] || { echo "verify.sh: $unit not found: install the unit first (OPERATIONS.md, \"Install with systemd\")" >&2; exit 1; }
analyze "$unit"

user="$(unit_value "$unit" User)"
group="$(unit_value "$unit" Group)"
[ -n "$user" ] || { echo "verify.sh: $unit sets no User=" >&2; exit 1; }
id "$user" >/dev/null 2>&1 || { echo "verify.sh: user $user does not exist: install systemd/gateway.sysusers and run systemd-sysusers (OPERATIONS.md)" >&2; exit 1; }
group="${group:-$(id -gn "$user")}"
envfile="$(unit_value "$unit" EnvironmentFile)"
optional=no
case "$envfile" in -*) optional=yes; envfile="${envfile#-}" ;; esac
read -r -a exec <<< "$(unit_value "$unit" ExecStart)"
bin="${exec[0]}" config=""
for ((i = 1; i < ${#exec[@]}; i++)); do
  case "${exec[$i]}" in
    --config|-c) config="${exec[$((i + 1))]:-}" ;;
    --config=*) config="${exec[$i]#--config=}" ;;
  esac
done
[ -x "$bin" ] || { echo "verify.sh: ExecStart binary $bin is missing or not executable" >&2; exit 1; }
[ -n "$config" ] || { echo "verify.sh: ExecStart of $unit has no --config FILE" >&2; exit 1; }
if [ -n "$envfile" ] && [ ! -f "$envfile" ] && [ "$optional" = no ]; then
  echo "verify.sh: EnvironmentFile $envfile is missing" >&2; exit 1
fi

echo "gateway check-config as $user:$group (config $config${envfile:+, environment $envfile}):"
if [ -d /run/systemd/system ]; then
  # systemd itself reads the environment file and switches user, as it
  # will for the service.
  props=(-p "User=$user" -p "Group=$group")
  [ -n "$envfile" ] && props+=(-p "EnvironmentFile=-$envfile")
  systemd-run --quiet --wait --pipe --collect "${props[@]}" -- "$bin" check-config --config "$config"
else
  # No systemd running (a container, an image build): the same by hand.
  # EnvironmentFile lines are KEY=VALUE, values taken literally (one layer
  # of quotes removed, as systemd does).
  vars=()
  if [ -n "$envfile" ] && [ -f "$envfile" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in ''|'#'*|';'*) continue ;; esac
      key="${line%%=*}" value="${line#*=}"
      case "$value" in \"*\") value="${value:1:-1}" ;; \'*\') value="${value:1:-1}" ;; esac
      vars+=("$key=$value")
    done < "$envfile"
  fi
  setpriv --reuid="$user" --regid="$group" --init-groups -- \
    env -i PATH=/usr/bin:/bin "${vars[@]}" "$bin" check-config --config "$config"
fi
