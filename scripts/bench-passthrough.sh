#!/usr/bin/env bash
# Passthrough benchmark (docs/benchmarks.md): the official docker CLI through server + agent
# versus straight to the Docker socket, on the same machine in the same run.
#   - `docker logs` of a container that wrote LOG_MB (default 100) MB;
#   - `docker save` of an image of SAVE_MB (default 256) MB (built locally FROM scratch).
# Prints wall times, the ratio, and the peak RSS (VmHWM) of agent and server.
# Needs dockerd (scripts/services.sh) and the docker CLI 28.x at /usr/local/bin/docker.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_MB=${LOG_MB:-100}
SAVE_MB=${SAVE_MB:-256}
DOCKER=${DOCKER_CLI:-/usr/local/bin/docker}
IMAGE=docker-ctl-test/busybox:latest

cargo build --release -p server -p agent-lite --bins
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  DOCKER_HOST=unix:///var/run/docker.sock "$DOCKER" rm -f bench-logs >/dev/null 2>&1 || true
  DOCKER_HOST=unix:///var/run/docker.sock "$DOCKER" rmi -f bench-save:big >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

srv=./target/release/docker-ctl-server
agent=${AGENT_BIN:-./target/release/docker-ctl-agent}
token=$("$srv" token create --name bench --role admin --data-dir "$work/data")
"$srv" serve --listen 127.0.0.1:0 --data-dir "$work/data" --log-format json >"$work/server.log" 2>&1 &
srv_pid=$!; pids+=("$srv_pid")
for _ in $(seq 200); do grep -q '"listening"' "$work/server.log" && break; sleep 0.05; done
addr=$(grep '"listening"' "$work/server.log" | sed -E 's/.*"addr":"([^"]+)".*/\1/' | head -1)
[ -n "$addr" ] || { echo "server did not start"; cat "$work/server.log"; exit 1; }
api() { curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@"; }
host=$(api -d '{"name":"bench","connection_mode":"agent"}' "http://$addr/api/v1/hosts" | sed -E 's/.*"id":"([^"]+)".*/\1/')
atoken=$(api -d "{\"agent_id\":\"bench-agent\",\"host_id\":\"$host\"}" "http://$addr/api/v1/agents" | sed -E 's/.*"token":"([^"]+)".*/\1/')
DOCKER_CTL_SERVER="ws://$addr" DOCKER_CTL_AGENT_ID=bench-agent DOCKER_CTL_TOKEN="$atoken" DOCKER_CTL_STATE_FILE="$work/state.json" \
  "$agent" --docker-socket unix:///var/run/docker.sock >"$work/agent.log" 2>&1 &
agent_pid=$!; pids+=("$agent_pid")
for _ in $(seq 200); do api "http://$addr/api/v1/hosts/$host" | grep -q '"status":"online"' && break; sleep 0.05; done

mkdir -p "$work/cli"
printf '{"HttpHeaders":{"Authorization":"Bearer %s"}}' "$token" >"$work/cli/config.json"
tunnel() { DOCKER_HOST="tcp://$addr/api/v1/hosts/$host/docker" "$DOCKER" --config "$work/cli" "$@"; }
direct() { DOCKER_HOST=unix:///var/run/docker.sock "$DOCKER" "$@"; }
hwm() { awk '/^VmHWM:/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
# CPU seconds (user + system) a process used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

echo "== preparing: a container that wrote ${LOG_MB} MB of logs, an image of ${SAVE_MB} MB"
direct rm -f bench-logs >/dev/null 2>&1 || true
direct run -d --name bench-logs "$IMAGE" sh -c \
  "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklm | head -c $((LOG_MB * 1024 * 1024)); sleep 3600" >/dev/null
for _ in $(seq 600); do
  n=$(direct logs bench-logs 2>/dev/null | wc -c)
  # the last partial line stays in the log driver until a newline comes
  [ "$n" -ge $((LOG_MB * 1024 * 1024 - 4096)) ] && break; sleep 1
done
mkdir -p "$work/ctx"
head -c $((SAVE_MB * 1024 * 1024)) /dev/urandom >"$work/ctx/blob"
printf 'FROM scratch\nCOPY blob /blob\n' >"$work/ctx/Dockerfile"
DOCKER_BUILDKIT=0 direct build -q -t bench-save:big "$work/ctx" >/dev/null
rm -f "$work/ctx/blob"

echo "agent RSS before: $(hwm "$agent_pid"), server RSS before: $(hwm "$srv_pid")"
d_logs=$(secs direct logs bench-logs)
a0=$(cpu "$agent_pid"); s0=$(cpu "$srv_pid")
t_logs=$(secs tunnel logs bench-logs)
echo "CPU during the tunnel's docker logs: agent $(echo "$(cpu "$agent_pid") - $a0" | bc) s, server $(echo "$(cpu "$srv_pid") - $s0" | bc) s"
printf 'docker logs (%d MB): direct %.2f s, tunnel %.2f s, ratio %.2fx\n' "$LOG_MB" "$d_logs" "$t_logs" "$(echo "$t_logs / $d_logs" | bc -l)"
echo "peak RSS after logs: agent $(hwm "$agent_pid"), server $(hwm "$srv_pid")"
d_save=$(secs direct save -o "$work/d.tar" bench-save:big)
a0=$(cpu "$agent_pid"); s0=$(cpu "$srv_pid")
t_save=$(secs tunnel save -o "$work/t.tar" bench-save:big)
echo "CPU during the tunnel's docker save: agent $(echo "$(cpu "$agent_pid") - $a0" | bc) s, server $(echo "$(cpu "$srv_pid") - $s0" | bc) s"
printf 'docker save (%s bytes): direct %.2f s, tunnel %.2f s, ratio %.2fx\n' "$(stat -c %s "$work/t.tar")" "$d_save" "$t_save" "$(echo "$t_save / $d_save" | bc -l)"
cmp -s "$work/d.tar" "$work/t.tar" && echo "the tunnel's tar is identical to the direct one" || { echo "TAR MISMATCH"; exit 1; }
echo "peak RSS after save: agent $(hwm "$agent_pid"), server $(hwm "$srv_pid")"
