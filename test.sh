#!/usr/bin/env bash
# Runs every check and test of domesday: formatting, clippy (warnings are errors),
# the build of every binary, and the whole test suite (unit, property, golden,
# end-to-end on fixture trees, promtool, headless Chromium). Installs Debian's
# `prometheus` package (for promtool) and `chromium` (renders the HTML reports)
# when they are missing; the tests that need them fail without them.
set -euo pipefail
cd "$(dirname "$0")"

apt_install() {
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  else
    echo "test.sh: missing Debian packages ($*) and no root or sudo to install them" >&2
    return 1
  fi
}

if ! command -v promtool >/dev/null 2>&1; then
  echo "==> installing promtool (Debian package prometheus)"
  apt_install prometheus >/dev/null || true
fi
command -v promtool >/dev/null 2>&1 || { echo "test.sh: promtool is required (apt-get install prometheus)" >&2; exit 1; }

if ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing headless Chromium (Debian package chromium)"
  apt_install chromium >/dev/null || true
fi
command -v chromium >/dev/null 2>&1 || { echo "test.sh: chromium is required (apt-get install chromium)" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build"
cargo build --workspace --locked
echo "==> cargo test"
cargo test --workspace --locked
