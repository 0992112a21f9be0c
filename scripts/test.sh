#!/usr/bin/env bash
# The project's test command. On a fresh Debian machine, as root, it installs and starts what
# the tests need (dockerd, PostgreSQL, cross linkers, qemu-user, the test image), then runs
# formatting, lints, dependency checks and every test of the workspace against the real
# services. Idempotent: running services are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "services"
bash scripts/services.sh

export DOCKER_CTL_TEST_DATABASE_URL=${DOCKER_CTL_TEST_DATABASE_URL:-postgres://dockerctl:dockerctl@127.0.0.1:5432/dockerctl}
export DOCKER_CTL_TEST_DOCKER_TCP=${DOCKER_CTL_TEST_DOCKER_TCP:-127.0.0.1:23750}
export CARGO_TERM_COLOR=never

installed=$(rustup component list --installed 2>/dev/null || true)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$installed" || rustup component add "$c"
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "dependency checks"
bash scripts/check-deps.sh

step "agent edge builds (static; the ARM ones run under qemu in the tests)"
bash scripts/build-agent.sh

step "cargo test (tests/browser: the web UI in chromium against a real server, agent and dockerd)"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
echo "screenshots (artifacts): $(ls target/browser-screenshots/*.png | tr '\n' ' ')" >&2

step "fuzz targets (a bounded run of each)"
bash scripts/fuzz.sh "${FUZZ_SECS:-15}"
