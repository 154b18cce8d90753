#!/usr/bin/env bash
# Checks the gateway's Debian package. Used by hand (not in CI):
#
#   bash packaging/check-deb.sh [target/debian/gateway_*.deb]
#     A built package: its files, modes and owners, control fields,
#     conffiles and maintainer scripts; the units are the ones in systemd/
#     but for the paths /usr/bin and /usr/share/doc; LICENSE is the
#     repository's; the packaged binary accepts the packaged config
#     (`gateway check-config`, a throwaway token secret); systemd-analyze
#     verify on the packaged units, when systemd-analyze is there.
#     Default: the newest target/debian/gateway_*.deb.
#
#   sudo bash packaging/check-deb.sh --installed
#     The package installed on this host: dpkg's checksums (a conffile you
#     edited is reported, not failed), the user, the owners and modes of
#     /etc/gateway, `gateway check-config` run as the user gateway with
#     /etc/gateway/secrets.env (as the unit runs it), the unit; under a
#     running systemd also whether gateway.service is enabled and active.
#
# Prints one line per check and exits 1 when any failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
failed=0
ok() { printf 'ok    %s\n' "$*"; }
bad() { printf 'FAIL  %s\n' "$*"; failed=1; }
note() { printf 'note  %s\n' "$*"; }
check() { local what="$1"; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }

# Files of the package: path, mode, owner (what dpkg-deb -c shows).
expected_files() {
  cat <<'EOF'
./usr/bin/gateway -rwxr-xr-x 0/0
./etc/gateway/gateway.toml -rw-r----- 0/0
./usr/lib/systemd/system/gateway.service -rw-r--r-- 0/0
./usr/lib/systemd/system/gateway@.service -rw-r--r-- 0/0
./usr/lib/sysusers.d/gateway.conf -rw-r--r-- 0/0
./usr/lib/sysctl.d/60-gateway.conf -rw-r--r-- 0/0
./usr/share/doc/gateway/LICENSE -rw-r--r-- 0/0
./usr/share/doc/gateway/CHANGELOG.md -rw-r--r-- 0/0
./usr/share/doc/gateway/copyright -rw-r--r-- 0/0
./usr/share/doc/gateway/README.md -rw-r--r-- 0/0
./usr/share/doc/gateway/OPERATIONS.md -rw-r--r-- 0/0
./usr/share/doc/gateway/PROTOCOL.md -rw-r--r-- 0/0
./usr/share/doc/gateway/docs/operations-transports.md -rw-r--r-- 0/0
EOF
}

# A unit of systemd/ as the package must ship it: the same lines but for
# comments and the two paths.
as_packaged() {
  sed -e 's|/usr/local/bin/gateway|/usr/bin/gateway|' -e 's|/usr/local/share/doc/gateway|/usr/share/doc/gateway|' "$1" | grep -v '^#'
}

# `gateway check-config` as USER with the variables of ENVFILE
# (KEY=VALUE lines, one layer of quotes removed, as systemd reads them).
check_config_as() {
  local user="$1" bin="$2" config="$3" envfile="$4" vars=() line key value
  if [ -n "$envfile" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in ''|'#'*|';'*) continue ;; esac
      key="${line%%=*}" value="${line#*=}"
      case "$value" in \"*\") value="${value:1:-1}" ;; \'*\') value="${value:1:-1}" ;; esac
      vars+=("$key=$value")
    done < "$envfile"
  fi
  if [ -n "$user" ]; then
    setpriv --reuid="$user" --regid="$user" --init-groups -- \
      env -i PATH=/usr/bin:/bin "${vars[@]}" "$bin" check-config --config "$config"
  else
    env -i PATH=/usr/bin:/bin "${vars[@]}" "$bin" check-config --config "$config"
  fi
}

if [ "${1:-}" = "--installed" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "check-deb.sh --installed: run as root (it runs the gateway as the user gateway)" >&2; exit 1; }
  status="$(dpkg-query -W -f='${Status} ${Version}' gateway 2>/dev/null)"
  case "$status" in
    "install ok installed "*) ok "dpkg: gateway ${status##* } installed" ;;
    *) bad "dpkg: gateway is not installed (${status:-unknown})"; exit 1 ;;
  esac
  # dpkg -V: one line per file that differs from the package.
  verify="$(dpkg -V gateway 2>&1)"
  changed_conf="$(grep -E '^\S+ +c /' <<<"$verify" || true)"
  other="$(grep -vE '^\S+ +c /' <<<"$verify" | grep . || true)"
  [ -z "$other" ] && ok "dpkg -V: the package's files are as shipped" || bad "dpkg -V: $other"
  [ -n "$changed_conf" ] && note "conffiles edited here (fine): ${changed_conf//$'\n'/, }"
  while read -r path _; do
    path="${path#.}"
    [ -e "$path" ] && ok "installed: $path" || bad "missing: $path"
  done < <(expected_files)
  check "user gateway exists, with no login shell" sh -c 'getent passwd gateway | grep -q ":/usr/sbin/nologin$"'
  perm() { [ "$(stat -c '%U:%G %a' "$1" 2>/dev/null)" = "$2" ]; }
  check "/etc/gateway is root:gateway 750" perm /etc/gateway "root:gateway 750"
  check "/etc/gateway/gateway.toml is root:gateway 640" perm /etc/gateway/gateway.toml "root:gateway 640"
  check "/etc/gateway/secrets.env is root:root 600" perm /etc/gateway/secrets.env "root:root 600"
  check "secrets.env sets GATEWAY_JWT_SECRET (64 hex digits when generated)" grep -q '^GATEWAY_JWT_SECRET=.' /etc/gateway/secrets.env
  if out="$(check_config_as gateway /usr/bin/gateway /etc/gateway/gateway.toml /etc/gateway/secrets.env 2>&1)"; then
    ok "gateway check-config as user gateway with secrets.env: $out"
  else
    bad "gateway check-config as user gateway with secrets.env: $out"
  fi
  if command -v systemd-analyze >/dev/null; then
    out="$(systemd-analyze verify /usr/lib/systemd/system/gateway.service 2>&1)"
    [ -z "$out" ] && ok "systemd-analyze verify gateway.service" || bad "systemd-analyze verify gateway.service: $out"
  fi
  if [ -d /run/systemd/system ]; then
    check "gateway.service is enabled" systemctl is-enabled --quiet gateway.service
    if systemctl is-active --quiet gateway.service; then
      ok "gateway.service is active ($(systemctl show -p StatusText --value gateway.service))"
    else
      bad "gateway.service is not active: systemctl status gateway; journalctl -u gateway"
    fi
  else
    note "no systemd running here: the unit's state is not checked"
  fi
  [ $failed -eq 0 ] && echo "PASS" || echo "FAIL"
  exit $failed
fi

deb="${1:-}"
if [ -z "$deb" ]; then
  deb="$(ls -t "$repo"/target/debian/gateway_*.deb 2>/dev/null | head -n 1)"
  [ -n "$deb" ] || { echo "check-deb.sh: no target/debian/gateway_*.deb: bash packaging/build-deb.sh first, or pass the file" >&2; exit 1; }
fi
[ -f "$deb" ] || { echo "check-deb.sh: $deb not found" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "check-deb.sh: dpkg-deb not found (apt-get install dpkg)" >&2; exit 1; }
echo "checking $deb"

listing="$(dpkg-deb -c "$deb")"
while read -r path mode owner; do
  # Owner root as 0/0 (cargo-deb) or root/root (dpkg-deb -b).
  line="$(awk -v p="$path" '$6 == p { o = $2; if (o == "root/root") o = "0/0"; print $1, o }' <<<"$listing")"
  if [ "$line" = "$mode $owner" ]; then ok "$path $mode $owner"; else bad "$path: want $mode $owner, have ${line:-nothing}"; fi
done < <(expected_files)
extra="$(awk '$1 !~ /^d/ { print $6 }' <<<"$listing" | grep -vxF -f <(expected_files | awk '{ print $1 }') || true)"
[ -z "$extra" ] && ok "no other files" || bad "files not expected: ${extra//$'\n'/ }"

field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = gateway ] && ok "Package: gateway" || bad "Package: $(field Package)"
ok "Version: $(field Version), Architecture: $(field Architecture)"
depends="$(field Depends)"
case "$depends" in
  *libc6*systemd-sysusers*) ok "Depends: $depends" ;;
  *) bad "Depends lacks libc6 or systemd-sysusers: $depends" ;;
esac
[ -n "$(field Maintainer)" ] && ok "Maintainer: $(field Maintainer)" || bad "no Maintainer"

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
dpkg-deb -e "$deb" "$tmp/DEBIAN"
dpkg-deb -x "$deb" "$tmp/root"
[ "$(cat "$tmp/DEBIAN/conffiles" 2>/dev/null)" = /etc/gateway/gateway.toml ] \
  && ok "conffiles: /etc/gateway/gateway.toml" || bad "conffiles: $(cat "$tmp/DEBIAN/conffiles" 2>/dev/null)"
for s in postinst prerm postrm; do
  if [ -x "$tmp/DEBIAN/$s" ] && sh -n "$tmp/DEBIAN/$s"; then ok "$s: present, executable, parses"; else bad "$s: missing, not executable or not sh"; fi
done
grep -q '^\s*systemd-sysusers' "$tmp/DEBIAN/postinst" && ok "postinst makes the user" || bad "postinst does not run systemd-sysusers"
grep -q 'deb-systemd-helper enable gateway.service' "$tmp/DEBIAN/postinst" && ok "postinst enables gateway.service" || bad "postinst does not enable gateway.service"
grep -q 'deb-systemd-invoke start gateway.service' "$tmp/DEBIAN/postinst" && ok "postinst starts gateway.service" || bad "postinst does not start gateway.service"
if grep -q 'deb-systemd-invoke restart' "$tmp/DEBIAN/postinst"; then bad "postinst restarts the service on upgrade (a drain of every connection)"; else ok "an upgrade does not restart the service"; fi
grep -q '#DEBHELPER#' "$tmp/DEBIAN/postinst" "$tmp/DEBIAN/postrm" && bad "a maintainer script still holds the debhelper token" || ok "debhelper snippets inserted"

# The units: systemd/'s but for the paths.
if [ -d "$repo/systemd" ]; then
  for u in gateway.service gateway@.service; do
    if diff <(as_packaged "$repo/systemd/$u") <(grep -v '^#' "$tmp/root/usr/lib/systemd/system/$u") >"$tmp/diff" 2>&1; then
      ok "$u = systemd/$u but for /usr/bin and /usr/share/doc"
    else
      bad "$u differs from systemd/$u beyond the paths (packaging/$u: keep in step):"; cat "$tmp/diff"
    fi
  done
  cmp -s "$repo/LICENSE" "$tmp/root/usr/share/doc/gateway/LICENSE" && ok "LICENSE is the repository's" || bad "LICENSE differs from the repository's"
  cmp -s "$repo/tuning/gateway-sysctl.conf" "$tmp/root/usr/lib/sysctl.d/60-gateway.conf" && ok "60-gateway.conf = tuning/gateway-sysctl.conf" || bad "60-gateway.conf differs from tuning/gateway-sysctl.conf"
  cmp -s "$repo/packaging/gateway.toml" "$tmp/root/etc/gateway/gateway.toml" && ok "gateway.toml = packaging/gateway.toml" || bad "gateway.toml differs from packaging/gateway.toml"
fi
grep -q 'Apache License' "$tmp/root/usr/share/doc/gateway/LICENSE" && grep -q 'Version 2.0, January 2004' "$tmp/root/usr/share/doc/gateway/LICENSE" \
  && ok "LICENSE is the Apache License 2.0" || bad "LICENSE is not the Apache License 2.0"
grep -q '^ExecStart=/usr/bin/gateway --config /etc/gateway/gateway.toml' "$tmp/root/usr/lib/systemd/system/gateway.service" \
  && ok "gateway.service runs /usr/bin/gateway --config /etc/gateway/gateway.toml" || bad "gateway.service ExecStart"

# The packaged binary and config, as the unit would run them.
bin="$tmp/root/usr/bin/gateway"
if version="$("$bin" --version 2>&1)"; then ok "binary runs: $version"; else bad "binary does not run: $version"; fi
printf 'GATEWAY_JWT_SECRET=%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" > "$tmp/secrets.env"
if out="$(check_config_as "" "$bin" "$tmp/root/etc/gateway/gateway.toml" "$tmp/secrets.env" 2>&1)"; then
  ok "check-config of the packaged gateway.toml: $out"
else
  bad "check-config of the packaged gateway.toml: $out"
fi
if out="$(check_config_as "" "$bin" "$tmp/root/etc/gateway/gateway.toml" "" 2>&1)"; then
  bad "the packaged config starts without GATEWAY_JWT_SECRET (it should need the secret)"
else
  ok "without the secret the config is refused: ${out%%$'\n'*}"
fi
if command -v systemd-analyze >/dev/null; then
  for u in gateway.service gateway@.service; do
    sed "s|^ExecStart=/usr/bin/gateway|ExecStart=$bin|" "$tmp/root/usr/lib/systemd/system/$u" > "$tmp/$u"
  done
  cp "$tmp/gateway@.service" "$tmp/gateway@a.service"
  for u in gateway.service gateway@a.service; do
    out="$(systemd-analyze verify "$tmp/$u" 2>&1)"
    [ -z "$out" ] && ok "systemd-analyze verify $u" || bad "systemd-analyze verify $u: $out"
  done
else
  note "no systemd-analyze: the units are not verified"
fi
[ $failed -eq 0 ] && echo "PASS" || echo "FAIL"
exit $failed
