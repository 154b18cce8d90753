#!/usr/bin/env bash
# Tests of the Python client against a real gateway binary. Builds nothing:
# the binary comes from $GATEWAY_BIN (default target/debug/gateway, relative
# to the repository root). Installs the package from this directory into a
# throwaway venv (or, without the venv module, a throwaway --target dir),
# then runs tests/ with unittest from outside the source tree, so the tests
# import the installed package. Exits non-zero when a test fails.
#
#   bash clients/python/test.sh                       # after cargo build -p gateway --bin gateway
#   GATEWAY_BIN=/path/to/gateway PYTHON=python3.9 bash clients/python/test.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

bin="${GATEWAY_BIN:-target/debug/gateway}"
case "$bin" in /*) ;; *) bin="$repo/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "no gateway binary at $bin: run cargo build -p gateway --bin gateway, or set GATEWAY_BIN" >&2
  exit 1
fi
export GATEWAY_BIN="$bin"

py="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip_opts=(--quiet --disable-pip-version-check --no-input)
if "$py" -m venv "$work/venv" >/dev/null 2>&1; then
  run_py="$work/venv/bin/python"
  "$run_py" -m pip install "${pip_opts[@]}" "$here"
else
  # No venv module (Debian without python3-venv): pip into a private
  # directory. --target installs outside the system site-packages, so no
  # --break-system-packages is needed.
  run_py="$py"
  "$py" -m pip install "${pip_opts[@]}" --target "$work/site" "$here"
  export PYTHONPATH="$work/site"
fi

cd "$work" # not the source directory: import the installed package
where="$("$run_py" -c 'import gateway_client as g; print(g.__file__)')"
case "$where" in
  "$here"/*) echo "imported the source tree ($where), not the installed package" >&2; exit 1 ;;
esac
echo "gateway-client installed at ${where%/__init__.py}; gateway: $GATEWAY_BIN"
# A last guard against a hang; each test has its own, shorter, timeout.
timeout --kill-after=10 "${TEST_TIMEOUT_S:-240}" \
  "$run_py" -m unittest discover --start-directory "$here/tests" --top-level-directory "$here/tests" -v
