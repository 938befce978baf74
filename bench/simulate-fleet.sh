#!/usr/bin/env bash
# Fleet load: `domesday-agent simulate` with HOSTS virtual agents (default 50,000)
# pushing every INTERVAL (10s) for DURATION (60s) over CONNECTIONS (64) keep-alive
# connections to a release collector on 127.0.0.1, then a per-host zero-loss check
# through the energy API (bench/check_ledger.py). Prints the simulate summary,
# the collector's CPU and peak RSS, and the check's verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-50000}; INTERVAL=${INTERVAL:-10s}; DURATION=${DURATION:-60s}; CONNECTIONS=${CONNECTIONS:-64}
SYNC=${SYNC:-full}
cargo build --release -q -p domesday-agent -p domesday-collector
dir=$(mktemp -d); trap 'kill $cpid 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/token"
cat > "$dir/c.toml" <<TOML
listen = "127.0.0.1:$port"
db = "$dir/fleet.db"
[ledger]
synchronous = "$SYNC"
[[sites]]
id = "sim"
timezone = "UTC"
token_file = "$dir/token"
TOML
DOMESDAY_LOG=info,domesday_collector::site_metrics=debug ./target/release/domesday-collector serve --config "$dir/c.toml" 2> "$dir/collector.log" & cpid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); hosts=$HOSTS interval=$INTERVAL duration=$DURATION connections=$CONNECTIONS synchronous=$SYNC"
./target/release/domesday-agent simulate --hosts "$HOSTS" --push "http://127.0.0.1:$port/api/v1/write" \
  --token-file "$dir/token" --interval "$INTERVAL" --duration "$DURATION" --connections "$CONNECTIONS" \
  --site sim --report "$dir/report.csv"
cpu=$(awk '{s+=$1} END {printf "%.1f", s/1e9}' /proc/$cpid/task/*/schedstat)
rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$cpid/status)
echo "collector: CPU ${cpu} s, peak RSS ${rss} MiB, ledger $(du -h "$dir/fleet.db" | cut -f1)"
python3 bench/check_ledger.py "$dir/report.csv" "http://127.0.0.1:$port" sim
echo "site gauge refreshes (ms): $(grep -o 'elapsed_ms=[0-9]*' "$dir/collector.log" | cut -d= -f2 | tr '\n' ' ')"
echo "ledger writer slow steps (> 200 ms): $(grep 'slow step' "$dir/collector.log" | sed 's/.*phase=//' | tr '\n' ';' )"
