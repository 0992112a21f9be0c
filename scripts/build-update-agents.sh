#!/usr/bin/env bash
# Builds the agents the self-update tests (tests/e2e/update.rs) install, for each target:
#
#   target/update-agents/<target>/old      DOCKER_CTL_VERSION=9.1.0-e2e.1
#   target/update-agents/<target>/new      DOCKER_CTL_VERSION=9.1.0-e2e.2
#   target/update-agents/<target>/broken   DOCKER_CTL_VERSION=9.1.0-e2e.3, feature
#                                          fault-exit-at-start (it exits at every start)
#
#   scripts/build-update-agents.sh                               # x86_64 and aarch64 musl
#   scripts/build-update-agents.sh x86_64-unknown-linux-musl     # some targets
#
# Static dev builds without debug info: each build only recompiles the protocol and the
# agent (the version is a build-time constant). Linkers come from .cargo/config.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
fi
target_dir="${CARGO_TARGET_DIR:-target}"
export CARGO_PROFILE_DEV_DEBUG=0

for t in "${targets[@]}"; do
  out="$target_dir/update-agents/$t"
  mkdir -p "$out"
  for spec in old:9.1.0-e2e.1: new:9.1.0-e2e.2: broken:9.1.0-e2e.3:fault-exit-at-start; do
    IFS=: read -r name version features <<<"$spec"
    echo "[build-update-agents] $t $name $version ${features}" >&2
    DOCKER_CTL_VERSION="$version" cargo build --locked -p agent-lite --bin docker-ctl-agent \
      --target "$t" ${features:+--features "$features"}
    cp "$target_dir/$t/debug/docker-ctl-agent" "$out/$name"
    printf '%s\n' "$version" > "$out/$name.version"
  done
done
