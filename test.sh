#!/usr/bin/env bash
# Runs every check and test of domesday: formatting, clippy (warnings are errors),
# the build of every binary, and the whole test suite (unit, property, golden,
# end-to-end on fixture trees, promtool, the alert rules and dashboards against a real
# Prometheus and Alertmanager, the reports' pages in headless Chromium), then the
# ledger-bearing end-to-end suites again on PostgreSQL. Installs Debian's
# `prometheus`, `prometheus-alertmanager`, `victoria-metrics`, `chromium`, `lintian` and `buildah` packages and cargo-deb when missing; the tests
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
# A real VictoriaMetrics receives what [forward] passes on (tests/tests/forward_e2e.rs).
[ -x /usr/bin/victoria-metrics ] || missing+=(victoria-metrics)
# PostgreSQL's server binaries run a throwaway cluster for the PostgreSQL ledger's tests (tests/src/pg.rs); the
# package's own cluster is not used.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# Headless Chromium renders the reports' HTML pages in the end-to-end tests (screenshots, rendered DOM).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# lintian checks the Debian packages built by tests/tests/packaging.rs; buildah builds the container images there.
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
# libfaketime runs an agent whose clock is hours ahead in tests/tests/clocks_e2e.rs.
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || missing+=(faketime)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  apt_install "${missing[@]}" >/dev/null || true
fi
command -v promtool >/dev/null 2>&1 || { echo "test.sh: promtool is required (apt-get install prometheus)" >&2; exit 1; }
[ -x /usr/bin/prometheus-alertmanager ] || { echo "test.sh: Alertmanager is required (apt-get install prometheus-alertmanager)" >&2; exit 1; }
[ -x /usr/bin/victoria-metrics ] || { echo "test.sh: VictoriaMetrics is required (apt-get install victoria-metrics)" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "test.sh: PostgreSQL is required (apt-get install postgresql)" >&2; exit 1; }
command -v chromium >/dev/null 2>&1 || { echo "test.sh: chromium is required (apt-get install chromium)" >&2; exit 1; }
command -v lintian >/dev/null 2>&1 || { echo "test.sh: lintian is required (apt-get install lintian)" >&2; exit 1; }
command -v buildah >/dev/null 2>&1 || { echo "test.sh: buildah is required (apt-get install buildah)" >&2; exit 1; }
# cargo-deb builds the Debian packages (about 3.5 minutes to install on 2 cores, once).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "==> installing cargo-deb"
  cargo install cargo-deb --version 3.8.0 --locked
fi

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build"
cargo build --workspace --locked
echo "==> cargo test"
cargo test --workspace --locked
# The end-to-end suites whose collectors book or answer ledger data, again with every collector on PostgreSQL: one
# throwaway cluster per test binary, a fresh database per ledger (tests/src/store.rs). docs/testing.md says which
# suites are left out and why.
pg_suites=(agent_collector_e2e clocks_e2e collector_e2e faults_e2e forward_e2e hostile_input_e2e indicators_e2e
  ingest_versions_e2e inventory_e2e meter_readers_e2e meters_e2e prometheus_e2e push_failover_e2e reports_e2e
  shutdown_e2e site_accounting_e2e site_e2e thresholds_e2e ups_power_e2e)
echo "==> cargo test on PostgreSQL (${#pg_suites[@]} end-to-end suites, DOMESDAY_TEST_LEDGER=postgres)"
DOMESDAY_TEST_LEDGER=postgres cargo test --locked -p domesday-tests "${pg_suites[@]/#/--test=}"
