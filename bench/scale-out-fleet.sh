#!/usr/bin/env bash
# Fleet on PostgreSQL with a collector killed: HOSTS virtual agents (default 50,000) split over two release
# collectors sharing one PostgreSQL database, each agent listing both collectors (`simulate --push A --push B`:
# half the workers start on A, half on B, and fail over as agents with a push.url list do). KILL_AT into the run
# the collector that does the site-wide work (the leader; A when the collectors do not say) gets SIGKILL; its
# agents move to the survivor. Then the per-host zero-loss check through the survivor's energy API
# (bench/check_ledger.py), and the takeover time: from the SIGKILL to the survivor's
# `domesday_collector_leader 1` (when the collectors export that gauge; said so when they do not).
#
# PostgreSQL: a throwaway cluster in a temporary directory, on 127.0.0.1 only, password (SCRAM) authentication,
# fsync and synchronous commit on (a real server's durability); run as `nobody` under root.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-50000}; INTERVAL=${INTERVAL:-10s}; DURATION=${DURATION:-60s}; CONNECTIONS=${CONNECTIONS:-64}
KILL_AT=${KILL_AT:-30}
PG_STATS=${PG_STATS:-}  # set: also print the ten statements that took PostgreSQL the most time (pg_stat_statements)
# PG_ARGS: more server settings (e.g. "-c log_lock_waits=on"); KEEP=1: copy the logs to /tmp/speed-fleet-logs/.
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -q -p domesday-agent -p domesday-collector
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=$(mktemp -d); chmod 711 "$dir"  # the server (nobody under root) reaches $dir/pg only
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${pgpid:-}" ] && kill -INT "$pgpid" 2>/dev/null && sleep 2
  [ -z "${KEEP:-}" ] || { mkdir -p /tmp/speed-fleet-logs && cp "$dir"/*.log /tmp/speed-fleet-logs/; }
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u nobody --); fi

# The PostgreSQL cluster.
mkdir "$dir/pg"; [ ${#as_pg[@]} -eq 0 ] || chown nobody "$dir/pg"
super=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'); app=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$super" > "$dir/pg/pw"; [ ${#as_pg[@]} -eq 0 ] || chown nobody "$dir/pg/pw"
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg/data" -U postgres -E UTF8 --locale=C --auth=scram-sha-256 \
  --pwfile="$dir/pg/pw" > "$dir/initdb.log"
rm "$dir/pg/pw"
echo "host all all 127.0.0.1/32 scram-sha-256" > "$dir/pg/data/pg_hba.conf"
pgport=$(free_port)
"${as_pg[@]}" "$pgbin/postgres" -D "$dir/pg/data" -p "$pgport" -k "$dir/pg" -c listen_addresses=127.0.0.1 \
  -c shared_buffers=256MB -c max_connections=40 ${PG_STATS:+-c shared_preload_libraries=pg_stat_statements} ${PG_ARGS:-} \
  > "$dir/postgres.log" 2>&1 &
for _ in $(seq 100); do PGPASSWORD=$super "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pgport" && break; sleep 0.2; done
pgpid=$(head -1 "$dir/pg/data/postmaster.pid")  # the server itself, not runuser
PGPASSWORD=$super "$pgbin/psql" -q -h 127.0.0.1 -p "$pgport" -U postgres -d postgres \
  -c "CREATE ROLE domesday LOGIN PASSWORD '$app'" -c "CREATE DATABASE ledger OWNER domesday"
[ -z "$PG_STATS" ] || PGPASSWORD=$super "$pgbin/psql" -q -h 127.0.0.1 -p "$pgport" -U postgres -d ledger \
  -c "CREATE EXTENSION pg_stat_statements"
(umask 077; echo "$app" > "$dir/pg.password")

# Two collectors on it.
(umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/token")
ports=()
for name in a b; do
  port=$(free_port); ports+=("$port")
  cat > "$dir/$name.toml" <<TOML
listen = "127.0.0.1:$port"
db = "postgres://domesday@127.0.0.1:$pgport/ledger"
db_password_file = "$dir/pg.password"
[[sites]]
id = "sim"
timezone = "UTC"
token_file = "$dir/token"
TOML
  ./target/release/domesday-collector serve --config "$dir/$name.toml" 2> "$dir/$name.log" & pids+=($!)
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
leader_of() { curl -sf "http://127.0.0.1:$1/metrics" | awk '$1 == "domesday_collector_leader" {print $2}'; }
victim=0
if [ "$(leader_of "${ports[1]}")" = "1" ]; then victim=1; fi
survivor=$((1 - victim))
echo "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); hosts=$HOSTS interval=$INTERVAL duration=$DURATION connections=$CONNECTIONS kill at ${KILL_AT}s"
echo "leader gauge before the kill: a=$(leader_of "${ports[0]}" || true) b=$(leader_of "${ports[1]}" || true) (empty: not exported); SIGKILL goes to $( [ $victim = 0 ] && echo a || echo b)"

pg_cpu() { # the server's CPU seconds, its exited children's, its live backends' (clock ticks / 100)
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v pm="$pgpid" '{ pid = substr($0, 1, index($0, " (") - 1);
    split(substr($0, index($0, ") ") + 2), f, " ");
    if (pid == pm) s += f[12] + f[13] + f[14] + f[15]; else if (f[2] == pm) s += f[12] + f[13] }
    END { printf "%.1f", s / 100 }'
}
cpu_of() { awk '{s+=$1} END {printf "%.1f", s/1e9}' /proc/"$1"/task/*/schedstat 2>/dev/null || echo "?"; }
pg0=$(pg_cpu)
./target/release/domesday-agent simulate --hosts "$HOSTS" \
  --push "http://127.0.0.1:${ports[0]}/api/v1/write" --push "http://127.0.0.1:${ports[1]}/api/v1/write" \
  --token-file "$dir/token" --interval "$INTERVAL" --duration "$DURATION" --connections "$CONNECTIONS" \
  --site sim --report "$dir/report.csv" > "$dir/simulate.out" 2> "$dir/simulate.log" & sim=$!
sleep "$KILL_AT"
victim_cpu=$(cpu_of "${pids[$victim]}")
kill -KILL "${pids[$victim]}"; t_kill=$(date +%s.%N)
echo "SIGKILL at $(date -u +%T.%N | cut -c1-12) UTC; victim's CPU until then ${victim_cpu} s"
takeover=""
for _ in $(seq 1200); do
  if [ "$(leader_of "${ports[$survivor]}")" = "1" ]; then takeover=$(echo "$(date +%s.%N) - $t_kill" | bc); break; fi
  [ -n "$(curl -sf "http://127.0.0.1:${ports[$survivor]}/metrics" | grep -m1 '^domesday_collector_leader ')" ] || break
  sleep 0.1
done
wait "$sim"
cat "$dir/simulate.out"
echo "survivor: CPU $(cpu_of "${pids[$survivor]}") s, peak RSS $(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/"${pids[$survivor]}"/status) MiB; PostgreSQL CPU $(echo "$(pg_cpu) - $pg0" | bc) s"
if [ -n "$takeover" ]; then
  echo "takeover: the survivor reported domesday_collector_leader 1 ${takeover} s after the SIGKILL"
else
  echo "takeover: not measured (the survivor exports no domesday_collector_leader gauge, or it stayed 0 for 120 s)"
fi
python3 bench/check_ledger.py "$dir/report.csv" "http://127.0.0.1:${ports[$survivor]}" sim
echo "ledger writer slow steps (> 200 ms) on the survivor: $(grep -c 'slow step' "$dir/$( [ $survivor = 0 ] && echo a || echo b).log" || true)"
if [ -n "$PG_STATS" ]; then
  PGPASSWORD=$super "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d ledger -c "SELECT calls, \
    round(total_exec_time::numeric / 1000, 1) AS total_s, round((total_exec_time / calls)::numeric, 3) AS mean_ms, \
    rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query FROM pg_stat_statements \
    ORDER BY total_exec_time DESC LIMIT 10"
fi
