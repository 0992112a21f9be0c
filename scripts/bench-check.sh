#!/usr/bin/env bash
# Quick benchmark regression guard (not run by CI: these machines are noisy). Runs the quick
# versions of the benchmarks in docs/benchmarks.md and exits non-zero when a target is missed:
#   - agent: stripped aarch64-musl size <= 2.0 MiB, idle RSS <= 4 MiB (scripts/agent-budget.sh)
#   - latency: both paths through server + static x86_64-musl agent (the Docker API
#     passthrough GET .../docker/v1.41/containers/json?all=1, and POST .../operations with
#     container.list) add <= 0.30 ms at p50 and <= 1.0 ms at p99 over the direct Docker
#     socket (the better of two interleaved rounds of 1,000 calls, 6 containers); the
#     `floor` path (a minimal tunnel built from the same crates, tests/loadgen/floor.rs) is
#     printed beside them, as what the machine allows
#   - capacity: 1,000 simulated agents, <= 25 KiB server RSS per agent, p99 <= 10 ms at
#     1,000 commands/s
#   - TLS: 1,000 simulated agents over wss:// to the server's own TLS listener, <= 20 KiB
#     server RSS per agent, and a 1,000-agent TLS reconnect storm back in <= 30 s with no
#     failed handshake (needs the openssl CLI for the test CA; the storm prints its failed
#     handshakes by step and cause)
# Needs dockerd (scripts/services.sh). Builds release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release -p server -p agent-lite -p docker-ctl-tests --bins
lg=./target/release/docker-ctl-loadgen
fail=0
check() { # name value op limit
  if awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN { exit !((op == "<=") ? (v <= l) : (v >= l)) }'; then
    printf 'PASS %-32s %10s (target %s %s)\n' "$1" "$2" "$3" "$4"
  else
    printf 'FAIL %-32s %10s (target %s %s)\n' "$1" "$2" "$3" "$4"; fail=1
  fi
}
metric() { grep "^METRIC $1 " <<<"$2" | awk '{print $3}' | tail -1; }

echo "== agent size and idle RSS"
IDLE_SECS=${IDLE_SECS:-60} bash scripts/agent-budget.sh || fail=1   # builds dist/agent/

echo "== latency overhead (2 interleaved rounds of 1,000 calls per path)"
out=$("$lg" latency --calls 1000 --rounds 2 --containers 6 \
  --agent dist/agent/x86_64-unknown-linux-musl/docker-ctl-agent | tee >(cat >&2))
for path in passthrough operation; do
  check "${path}_added_p50_ms" "$(metric "${path}_added_p50_ms" "$out")" "<=" 0.30
  check "${path}_added_p99_ms" "$(metric "${path}_added_p99_ms" "$out")" "<=" 1.0
done
printf 'INFO %-32s %10s (the stack alone, no target)\n' floor_added_p50_ms \
  "$(metric floor_added_p50_ms "$out")"

echo "== capacity (1,000 agents, 1,000 commands/s)"
out=$("$lg" capacity --agents 1000 --rate 1000 --duration 10 --heartbeat 5 | tee >(cat >&2))
check server_rss_per_agent_kib "$(metric server_rss_per_agent_kib "$out")" "<=" 25
check command_p99_ms "$(metric command_p99_ms "$out")" "<=" 10
check command_errors "$(metric command_errors "$out")" "<=" 0

echo "== TLS capacity and reconnect storm (1,000 agents, wss://)"
out=$("$lg" capacity --tls --agents 1000 --rate 1000 --duration 10 --heartbeat 5 | tee >(cat >&2))
check tls_server_rss_per_agent_kib "$(metric server_rss_per_agent_kib "$out")" "<=" 20
check tls_command_errors "$(metric command_errors "$out")" "<=" 0
out=$("$lg" storm --tls --agents 1000 | tee >(cat >&2))
check tls_storm_all_online_secs "$(metric storm_all_online_secs "$out")" "<=" 30
check tls_storm_failed_handshakes "$(metric storm_failed_handshakes "$out")" "<=" 0

[ "$fail" = 0 ] && echo "bench-check: all targets met" || echo "bench-check: targets missed" >&2
exit "$fail"
