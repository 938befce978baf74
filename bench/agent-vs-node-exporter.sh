#!/usr/bin/env bash
# Benchmark: domesday-agent against prometheus-node-exporter on the same fixture
# tree (see docs/performance.md). Not a test: it prints figures, it does not judge
# them, apart from the three targets the table marks PASS or FAIL.
#
# Builds the release binaries, installs Debian's prometheus-node-exporter when it
# is missing, records the machine, then runs domesday-bench.
#
#   bench/agent-vs-node-exporter.sh                  # 300 s steady phase
#   DURATION=120s bench/agent-vs-node-exporter.sh    # shorter
#
# Environment: DURATION (phase 1, default 300s), BURST (phase 2 scrapes per
# target, default 2000), FIXTURE (default intel-2s), ENCODING (gzip|identity,
# default gzip), NODE_EXPORTER (default /usr/bin/prometheus-node-exporter),
# JSON (a path: also write every figure and raw latency there).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-300s}"
AGENT_INTERVAL="${AGENT_INTERVAL:-1s}"
BURST="${BURST:-2000}"
FIXTURE="${FIXTURE:-intel-2s}"
ENCODING="${ENCODING:-gzip}"
NODE_EXPORTER="${NODE_EXPORTER:-/usr/bin/prometheus-node-exporter}"

if [ ! -x "$NODE_EXPORTER" ]; then
  echo "==> installing prometheus-node-exporter (Debian)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter >&2
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter >&2
  else
    echo "agent-vs-node-exporter.sh: $NODE_EXPORTER is missing and there is no root or sudo to install it" >&2
    exit 1
  fi
  # The package starts a system service on :9100; it does not disturb the
  # benchmark (other ports), but it does use CPU: stop it if it runs.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus-node-exporter 2>/dev/null || true; fi
fi

echo "==> cargo build --release (domesday-agent, domesday-bench)" >&2
cargo build --release --locked -p domesday-agent -p domesday-tests --bin domesday-agent --bin domesday-bench >&2

AGENT=target/release/domesday-agent
BENCH=target/release/domesday-bench

echo "## Machine"
echo
echo "* date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "* nproc: $(nproc); kernel: $(uname -srm)"
echo "* CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "* memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "* TMPDIR filesystem: $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
echo "* agent: $("$AGENT" --version 2>&1 | head -1)"
echo "* node_exporter: $("$NODE_EXPORTER" --version 2>&1 | head -1)"
echo "* loadavg before: $(cat /proc/loadavg)"
echo
echo "Command: DURATION=$DURATION BURST=$BURST FIXTURE=$FIXTURE ENCODING=$ENCODING AGENT_INTERVAL=$AGENT_INTERVAL bench/agent-vs-node-exporter.sh"
echo

args=(--agent "$AGENT" --node-exporter "$NODE_EXPORTER" --fixture "$FIXTURE"
      --duration "$DURATION" --burst "$BURST" --encoding "$ENCODING" --agent-interval "$AGENT_INTERVAL")
if [ -n "${JSON:-}" ]; then args+=(--json "$JSON"); fi
"$BENCH" "${args[@]}"

echo
echo "* loadavg after: $(cat /proc/loadavg)"
