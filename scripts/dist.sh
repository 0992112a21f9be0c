#!/usr/bin/env bash
# Builds the release tarballs for air-gapped installs into dist/:
#   docker-ctl-agent-VERSION-TARGET.tar.gz  (one per agent target)
#   docker-ctl-server-VERSION-x86_64-unknown-linux-musl.tar.gz
#   SHA256SUMS                              (of the tarballs)
# Each agent tarball holds the static binary, agent.yaml.example, the systemd unit, the OpenWrt
# procd script, install.sh (works offline) and SHA256SUMS of its files; when signing, also
# docker-ctl-agent.minisig and, when found, release.pub.
#
#   scripts/dist.sh [--targets "T1 T2"] [--no-server] [--out DIR]
#
# Environment:
#   DOCKER_CTL_VERSION      the version built into the binaries (their --version) and used in
#                           the file names [default: the workspace version in Cargo.toml]
#   DOCKER_CTL_RELEASE_KEY  a release secret key (docker-ctl-server release keygen): sign each
#                           agent binary, with a trusted comment carrying its version and target
#                           (timestamp:... file:docker-ctl-agent version:V target:T)
#   DOCKER_CTL_RELEASE_PUB  the public key to ship in each agent tarball, for install.sh
#                           [default: release.pub next to the key, when it exists]
#   DOCKER_CTL_SIGNER       the docker-ctl-server binary that signs [default: one built for
#                           this machine with cargo build --release]
# (DOCKER_CTL_SIGNING_KEY is something else: the agent's message signing key.)
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
# Paths in the environment are relative to where the script was started.
abs() { case "$1" in /*|'') printf '%s' "$1" ;; *) printf '%s/%s' "$caller" "$1" ;; esac; }
die() { echo "dist.sh: $*" >&2; exit 2; }

targets="x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf"
server=1
out=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) targets=$2; shift 2 ;;
    --no-server) server=0; shift ;;
    --out) out=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done

# Only a version given by the caller is passed to cargo (it is built into the binaries);
# the default leaves the build environment as it is.
if [ -n "${DOCKER_CTL_VERSION:-}" ]; then
  version=$DOCKER_CTL_VERSION
  export DOCKER_CTL_VERSION
else
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
fi
case "$version" in
  ''|*[!A-Za-z0-9.+_-]*) die "DOCKER_CTL_VERSION must be one word of letters, digits and . + _ - (got '$version')" ;;
esac
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$out"
out=$(cd "$out" && pwd)
made=()

release_key=$(abs "${DOCKER_CTL_RELEASE_KEY:-}")
release_pub=""
if [ -n "$release_key" ]; then
  [ -r "$release_key" ] || die "DOCKER_CTL_RELEASE_KEY: cannot read $release_key"
  release_pub=$(abs "${DOCKER_CTL_RELEASE_PUB:-$(dirname "$release_key")/release.pub}")
  if [ ! -f "$release_pub" ]; then
    [ -z "${DOCKER_CTL_RELEASE_PUB:-}" ] || die "DOCKER_CTL_RELEASE_PUB: cannot read $release_pub"
    echo "dist.sh: no release.pub next to the key: the tarballs will not carry the public key" >&2
    release_pub=""
  fi
  signer=$(abs "${DOCKER_CTL_SIGNER:-}")
  if [ -z "$signer" ]; then
    echo "==> signer (docker-ctl-server for this machine)" >&2
    cargo build --locked --release -p server --bin docker-ctl-server
    signer="$target_dir/release/docker-ctl-server"
  fi
fi

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
  files=(docker-ctl-agent agent.yaml.example docker-ctl-agent.service docker-ctl-agent.init install.sh)
  if [ -n "$release_key" ]; then
    "$signer" release sign --key "$release_key" --file "$stage/$name/docker-ctl-agent" \
      --trusted-comment "timestamp:$(date +%s) file:docker-ctl-agent version:$version target:$t" >/dev/null
    files+=(docker-ctl-agent.minisig)
    if [ -n "$release_pub" ]; then
      cp "$release_pub" "$stage/$name/release.pub"
      files+=(release.pub)
    fi
    echo "==> signed the agent for $t (version $version)" >&2
  fi
  (cd "$stage/$name" && sha256sum "${files[@]}" >SHA256SUMS)
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
