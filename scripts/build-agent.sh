#!/usr/bin/env bash
# Builds static, stripped docker-ctl-agent binaries for the edge targets with the `agent`
# size profile (opt-level z, fat LTO, one codegen unit, panic=abort, strip) and copies them
# to dist/agent/<target>/docker-ctl-agent.
#
#   scripts/build-agent.sh                 # all targets
#   scripts/build-agent.sh aarch64-unknown-linux-musl   # some targets
#
# Linkers come from .cargo/config.toml; armv7 is gnueabihf with +crt-static because the
# armv7 musl std cannot be installed here (Cross.toml covers the musl ARM targets).
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
fi
target_dir="${CARGO_TARGET_DIR:-target}"

for t in "${targets[@]}"; do
  echo "[build-agent] $t" >&2
  # log/release_max_level_info: debug and trace call sites (ours and tungstenite's) are
  # compiled out of release agents, which keeps aarch64 with enrolment and the self-updater
  # under 2.0 MiB; `logging.level: debug` logs at info in them.
  cargo build --locked --profile agent -p agent-lite --features log/release_max_level_info \
    --bin docker-ctl-agent --target "$t"
  out="dist/agent/$t"
  mkdir -p "$out"
  cp "$target_dir/$t/agent/docker-ctl-agent" "$out/docker-ctl-agent"
  # Static check: no program interpreter means no dynamic loader.
  if command -v readelf >/dev/null 2>&1 && readelf -l "$out/docker-ctl-agent" | grep -q 'Requesting program interpreter'; then
    echo "[build-agent] $t: binary is dynamically linked" >&2
    exit 1
  fi
  printf '[build-agent] %s: %s bytes\n' "$t" "$(stat -c %s "$out/docker-ctl-agent")" >&2
done
