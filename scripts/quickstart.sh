#!/usr/bin/env bash
# One command for a newcomer: builds the server and the agent (release), then runs
# `docker-ctl-server quickstart`: the server on its embedded SQLite default under ./data, an
# admin token, and, when /var/run/docker.sock exists, a local agent connected to it.
# Arguments are passed to `quickstart` (see `docker-ctl-server quickstart --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p server -p agent-lite --bins
exec ./target/release/docker-ctl-server quickstart "$@"
