#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 30 s), with cargo-fuzz and
# libFuzzer. The stable toolchain is enough: RUSTC_BOOTSTRAP lets cargo-fuzz use the
# sanitizer flags it needs.
#   scripts/fuzz.sh [seconds-per-target] [target ...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
[ ${#targets[@]} -gt 0 ] || { echo "fuzz.sh: no fuzz targets found" >&2; exit 1; }
mkdir -p corpus
for t in "${targets[@]}"; do
  echo "==> fuzz $t for ${secs}s" >&2
  mkdir -p "corpus/$t"
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536
done
echo "fuzz.sh: ${#targets[@]} targets ran ${secs}s each without a crash"
