#!/usr/bin/env bash
# Builds the release tarballs for air-gapped installs into dist/:
#   docker-ctl-agent-VERSION-TARGET.tar.gz  (one per agent target)
#   docker-ctl-server-VERSION-x86_64-unknown-linux-musl.tar.gz
#   SHA256SUMS                              (of the tarballs)
# Each agent tarball holds the static binary, agent.yaml.example, the systemd unit, the OpenWrt
# procd script, install.sh (works offline) and SHA256SUMS of its files.
#
#   scripts/dist.sh [--targets "T1 T2"] [--no-server] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

targets="x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf"
server=1
out=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) targets=$2; shift 2 ;;
    --no-server) server=0; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "dist.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$out"
out=$(cd "$out" && pwd)
made=()

for t in $targets; do
  echo "==> agent for $t" >&2
  cargo build --locked --profile agent -p agent-lite --target "$t"
  name="docker-ctl-agent-$version-$t"
  stage=$(mktemp -d)
  mkdir -p "$stage/$name"
  cp "$target_dir/$t/agent/docker-ctl-agent" "$stage/$name/"
  cp agent-lite/agent.yaml.example scripts/dist/docker-ctl-agent.service scripts/dist/install.sh "$stage/$name/"
  cp scripts/dist/docker-ctl-agent.init "$stage/$name/docker-ctl-agent.init"
  chmod 0755 "$stage/$name/docker-ctl-agent" "$stage/$name/install.sh" "$stage/$name/docker-ctl-agent.init"
  (cd "$stage/$name" && sha256sum docker-ctl-agent agent.yaml.example docker-ctl-agent.service docker-ctl-agent.init install.sh >SHA256SUMS)
  tar -C "$stage" --owner=0 --group=0 -czf "$out/$name.tar.gz" "$name"
  rm -rf "$stage"
  made+=("$name.tar.gz")
done

if [ "$server" = 1 ]; then
  t=x86_64-unknown-linux-musl
  echo "==> server for $t" >&2
  cargo build --locked --release -p server --target "$t"
  name="docker-ctl-server-$version-$t"
  stage=$(mktemp -d)
  mkdir -p "$stage/$name"
  cp "$target_dir/$t/release/docker-ctl-server" "$stage/$name/"
  cp scripts/dist/docker-ctl-server.service "$stage/$name/"
  (cd "$stage/$name" && sha256sum docker-ctl-server docker-ctl-server.service >SHA256SUMS)
  tar -C "$stage" --owner=0 --group=0 -czf "$out/$name.tar.gz" "$name"
  rm -rf "$stage"
  made+=("$name.tar.gz")
fi

(cd "$out" && sha256sum "${made[@]}" >SHA256SUMS)
for f in "${made[@]}"; do
  printf '%s\t%s bytes\n' "$out/$f" "$(stat -c %s "$out/$f")"
done
