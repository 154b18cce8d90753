#!/usr/bin/env bash
# Builds the Debian package of the gateway with cargo-deb:
#   bash packaging/build-deb.sh [CARGO-DEB OPTIONS...]
# e.g. --no-build (package the last release build again), --fast (lighter
# compression), --output DIR. Installs cargo-deb first when it is missing
# (cargo install cargo-deb --locked, from crates.io). The package is
# target/debian/gateway_<version>-1_<arch>.deb; check it with
#   bash packaging/check-deb.sh target/debian/gateway_*.deb
# and install it with
#   sudo apt install ./target/debian/gateway_*.deb
# What goes in it: [package.metadata.deb] in gateway/Cargo.toml. Build on
# the oldest Debian/Ubuntu you deploy to: the binary needs that glibc or newer.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
command -v cargo >/dev/null || { echo "build-deb.sh: cargo not found (install Rust with rustup)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || echo "build-deb.sh: note: no dpkg-deb here; cargo-deb builds the package without it" >&2
if ! cargo deb --version >/dev/null 2>&1; then
  echo "==> installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked
fi
echo "==> cargo deb -p gateway $*  (a release build unless --no-build: minutes)"
cargo deb -p gateway "$@"
ls -l target/debian/gateway_*.deb
