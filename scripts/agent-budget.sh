#!/usr/bin/env bash
# Checks the edge agent's budgets and prints the figures:
#   - the stripped aarch64-unknown-linux-musl binary: at most 2.0 MiB;
#   - idle RSS of the x86_64-unknown-linux-musl binary after 60 s connected to a server
#     with heartbeats (every 5 s), talking to the real dockerd: at most 4 MiB.
# Exits non-zero when a budget is exceeded or cannot be measured.
#
#   scripts/agent-budget.sh            # builds both targets first
#   NO_BUILD=1 scripts/agent-budget.sh # uses dist/agent as it is
#   IDLE_SECS=60 (default)
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_BUDGET=$((2 * 1024 * 1024))
RSS_BUDGET=$((4 * 1024 * 1024))
IDLE_SECS="${IDLE_SECS:-60}"
arm=dist/agent/aarch64-unknown-linux-musl/docker-ctl-agent
x86=dist/agent/x86_64-unknown-linux-musl/docker-ctl-agent

if [ -z "${NO_BUILD:-}" ]; then
  scripts/build-agent.sh aarch64-unknown-linux-musl x86_64-unknown-linux-musl
fi
for b in "$arm" "$x86"; do
  [ -x "$b" ] || { echo "missing $b: run scripts/build-agent.sh" >&2; exit 1; }
done

status=0
size=$(stat -c %s "$arm")
printf 'aarch64-musl stripped size: %d bytes (%.2f MiB), budget 2.00 MiB: %s\n' \
  "$size" "$(echo "$size / 1048576" | bc -l)" "$([ "$size" -le "$SIZE_BUDGET" ] && echo OK || echo OVER)"
[ "$size" -le "$SIZE_BUDGET" ] || status=1

[ -S /var/run/docker.sock ] || { echo "dockerd is not running at /var/run/docker.sock (scripts/services.sh)" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
  [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build -q -p agent-lite --example test-ws-server
server_bin="${CARGO_TARGET_DIR:-target}/debug/examples/test-ws-server"
"$server_bin" 5 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/server.log" ] && break; sleep 0.1; done
url=$(head -1 "$work/server.log")
case "$url" in ws://*) ;; *) echo "test server did not start: $(cat "$work/server.log")" >&2; exit 1 ;; esac

DOCKER_CTL_TOKEN=budget-token-0123456789 DOCKER_CTL_STATE_FILE="$work/agent-state.json" "$x86" --server "$url" --agent-id budget-agent \
  --docker-socket unix:///var/run/docker.sock 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do grep -q '^authenticated' "$work/server.log" && break; sleep 0.1; done
grep -q '^authenticated' "$work/server.log" || { echo "agent did not authenticate: $(cat "$work/agent.log")" >&2; exit 1; }

# CPU time in ns, summed over the agent's threads (schedstat: time on a CPU), and the session
# thread's own (the main thread runs the session loop).
cpu_ns() { cat /proc/"$agent_pid"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
session_ns() { awk '{print $1}' /proc/"$agent_pid"/task/"$agent_pid"/schedstat; }
beats0=$(grep -c '^heartbeat' "$work/server.log" || true)
cpu0=$(cpu_ns); sess0=$(session_ns)
sleep "$IDLE_SECS"
kill -0 "$agent_pid" || { echo "agent died: $(cat "$work/agent.log")" >&2; exit 1; }
cpu1=$(cpu_ns); sess1=$(session_ns)
beats1=$(grep -c '^heartbeat' "$work/server.log" || true)
nb=$((beats1 - beats0)); [ "$nb" -ge 1 ] || nb=1
printf 'x86_64-musl CPU while idle for %ss: %.2f ms in all (%.3f%% of a core); %d heartbeats: per heartbeat interval %.1f us on the session thread (the heartbeat, pings from the server), %.1f us on all threads (also the health probe)\n' \
  "$IDLE_SECS" "$(echo "($cpu1 - $cpu0) / 1000000" | bc -l)" "$(echo "($cpu1 - $cpu0) / ($IDLE_SECS * 10000000)" | bc -l)" \
  "$nb" "$(echo "($sess1 - $sess0) / 1000 / $nb" | bc -l)" "$(echo "($cpu1 - $cpu0) / 1000 / $nb" | bc -l)"
echo "METRIC agent_cpu_us_per_heartbeat $(echo "($sess1 - $sess0) / 1000 / $nb" | bc -l)"
rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent_pid/status")
rss=$((rss_kib * 1024))
beats=$(grep -c '^heartbeat' "$work/server.log" || true)
printf 'x86_64-musl idle RSS after %ss connected (%s heartbeats): %d bytes (%.2f MiB), budget 4.00 MiB: %s\n' \
  "$IDLE_SECS" "$beats" "$rss" "$(echo "$rss / 1048576" | bc -l)" "$([ "$rss" -le "$RSS_BUDGET" ] && echo OK || echo OVER)"
[ "$rss" -le "$RSS_BUDGET" ] || status=1
[ "$beats" -ge 2 ] || { echo "too few heartbeats ($beats)" >&2; status=1; }

kill -TERM "$agent_pid"
for _ in $(seq 50); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
wait "$agent_pid" && agent_pid= || { echo "agent exited non-zero after SIGTERM" >&2; status=1; agent_pid=; }
exit "$status"
