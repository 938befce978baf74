#!/usr/bin/env bash
# Runs every check and test of domesday: formatting, clippy (warnings are errors),
# the build of every binary, and the whole test suite (unit, property, golden,
# end-to-end on fixture trees, promtool, the alert rules and dashboards against a real
# Prometheus and Alertmanager, the reports' pages in headless Chromium). Installs Debian's
# `prometheus`, `prometheus-alertmanager` and `chromium` packages when missing; the tests
# that need them fail without them.
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

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
# Headless Chromium renders the reports' HTML pages in the end-to-end tests (screenshots, rendered DOM).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  apt_install "${missing[@]}" >/dev/null || true
fi
command -v promtool >/dev/null 2>&1 || { echo "test.sh: promtool is required (apt-get install prometheus)" >&2; exit 1; }
[ -x /usr/bin/prometheus-alertmanager ] || { echo "test.sh: Alertmanager is required (apt-get install prometheus-alertmanager)" >&2; exit 1; }
command -v chromium >/dev/null 2>&1 || { echo "test.sh: chromium is required (apt-get install chromium)" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build"
cargo build --workspace --locked
echo "==> cargo test"
cargo test --workspace --locked
