#!/usr/bin/env bash
# The units under a live systemd: boots a fresh Debian 12 VM (qemu)
# whose root is made by debootstrap
# from Debian's package mirror, and runs systemd/live_test_vm.sh in it:
# OPERATIONS.md's install steps verbatim, start (READY=1), reload, the
# watchdog (a frozen process, one stuck core), stop (drain, GoAway to a
# connected client) and an upgrade with gateway@a -> gateway@b.
#
#   sudo systemd/live_test.sh [BIN_DIR]
#
# BIN_DIR holds the built `gateway` and `gwcat` (default target/release,
# else target/debug: cargo build -p gateway -p bench --bins). Needs root,
# debootstrap, qemu-system-x86, e2fsprogs and openssl (apt-get install
# debootstrap qemu-system-x86 e2fsprogs openssl). Takes several minutes
# (the first run also downloads the Debian root, about 400 MB); not part
# of CI. The root is cached in $LIVE_DIR (default
# /var/tmp/gateway-live); every run boots a new disk image made from it.
# The transcript is $LIVE_DIR/live.log; the exit status says PASS or FAIL.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
work="${LIVE_DIR:-/var/tmp/gateway-live}"
[ "$(id -u)" -eq 0 ] || { echo "live_test.sh: run as root (debootstrap, disk image)" >&2; exit 1; }
for c in debootstrap qemu-system-x86_64 mkfs.ext4 debugfs openssl; do
  command -v "$c" >/dev/null || { echo "live_test.sh: $c not found: apt-get install debootstrap qemu-system-x86 e2fsprogs openssl" >&2; exit 1; }
done
bin="${1:-}"
if [ -z "$bin" ]; then
  for d in "$repo/target/release" "$repo/target/debug"; do
    [ -x "$d/gateway" ] && [ -x "$d/gwcat" ] && { bin="$d"; break; }
  done
fi
[ -n "$bin" ] && [ -x "$bin/gateway" ] && [ -x "$bin/gwcat" ] \
  || { echo "live_test.sh: build first: cargo build --release -p gateway -p bench --bins (or pass the directory)" >&2; exit 1; }
mkdir -p "$work"
root="$work/root"

if [ ! -e "$root/.complete" ]; then
  echo "==> debootstrap Debian 12 into $root"
  rm -rf "$root"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,udev,kmod,sudo,curl,procps,iproute2,ca-certificates,linux-image-amd64 \
    bookworm "$root" http://deb.debian.org/debian > "$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; echo "live_test.sh: debootstrap failed (log: $work/debootstrap.log)" >&2; exit 1; }
  touch "$root/.complete"
fi

echo "==> the VM's files"
echo gwlive > "$root/etc/hostname"
echo "127.0.1.1 gwlive" >> "$root/etc/hosts"
# The serial console carries the test's transcript, not a login prompt.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
tree="$root/root/gateway"
rm -rf "$tree" "$root/root/live.log"
mkdir -p "$tree/target/release"
cp -r "$repo/systemd" "$repo/tuning" "$repo/README.md" "$repo/OPERATIONS.md" "$repo/PROTOCOL.md" "$tree/"
# The binaries stand where the install steps expect them (cargo build --release).
cp "$bin/gateway" "$bin/gwcat" "$tree/target/release/"
cat > "$tree/my-gateway.toml" <<'EOF'
node_id = "gw-live"
listen = "0.0.0.0:7000"
cores = 2
drain_spread_ms = 1000
drain_deadline_ms = 8000
goaway_retry_after_ms = 500
goaway_retry_jitter_ms = 500

[[auth.keys]]
kid = "live"
alg = "HS256"
secret_env = "GATEWAY_JWT_SECRET"
EOF
echo "GATEWAY_JWT_SECRET=$(openssl rand -hex 32)" > "$tree/my-secrets.env"
for n in "" 2; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=localhost \
    -keyout "$tree/my-privkey$n.pem" -out "$tree/my-fullchain$n.pem" 2>/dev/null
done
install -m 0755 "$here/live_test_vm.sh" "$root/root/live_test_vm.sh"
cat > "$root/etc/systemd/system/live-test.service" <<'EOF'
[Unit]
Description=gateway live test (systemd/live_test_vm.sh)
# No default dependencies: the After= below would otherwise loop with the
# target's own After= on what it wants.
DefaultDependencies=no
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c '/root/live_test_vm.sh > /root/live.log 2>&1; cat /root/live.log > /dev/ttyS0; sync'
ExecStartPost=/bin/systemctl poweroff --no-block
TimeoutStartSec=20min
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/live-test.service "$root/etc/systemd/system/multi-user.target.wants/live-test.service"

echo "==> disk image"
img="$work/disk.img"
rm -f "$img"
truncate -s 4G "$img"
mkfs.ext4 -q -F -L gwlive -d "$root" "$img"

# Emulation by default: it boots anywhere (slowly). LIVE_ACCEL=kvm uses
# KVM, which is faster where it boots a stock Debian kernel (it did not on
# the development VM, whose /dev/kvm is a PVM that needs a PVM guest).
if [ "${LIVE_ACCEL:-tcg}" = kvm ]; then accel=(-accel kvm -cpu host); else accel=(-accel tcg -cpu max); fi
kernel="$(ls "$root"/boot/vmlinuz-* | tail -n 1)"
initrd="$(ls "$root"/boot/initrd.img-* | tail -n 1)"
echo "==> booting $(basename "$kernel") with ${accel[*]} (console: $work/console.log)"
timeout 30m qemu-system-x86_64 "${accel[@]}" -m 2048 -smp 2 -nographic -no-reboot \
  -kernel "$kernel" -initrd "$initrd" \
  -append "root=/dev/vda rw console=ttyS0 systemd.show_status=0 net.ifnames=0" \
  -drive "file=$img,format=raw,if=virtio" -nic none > "$work/console.log" 2>&1 \
  || echo "qemu exited with $? (see $work/console.log)"

debugfs -R "cat /root/live.log" "$img" > "$work/live.log" 2>/dev/null || true
if [ ! -s "$work/live.log" ]; then
  tail -n 40 "$work/console.log" >&2
  echo "live_test.sh: no transcript from the VM (console above: $work/console.log)" >&2
  exit 1
fi
cat "$work/live.log"
tail -n 1 "$work/live.log" | grep -qx PASS
