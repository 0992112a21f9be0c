#!/usr/bin/env bash
# Dependency rules that are cheap to check and expensive to lose:
# - the agent has no async runtime anywhere in its tree;
# - the protocol crate has no tokio (serde only);
# - no OpenSSL anywhere; one TLS stack (rustls with ring, no aws-lc);
# - no duplicate major versions of crypto crates;
# - no file-level import cycle, and only the wiring names AppState (scripts/check-structure.py,
#   which also prints the product functions over 100 lines).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
bad() { echo "check-deps: $*" >&2; fail=1; }

agent=$(cargo tree -p agent-lite -e normal --prefix none)
proto=$(cargo tree -p protocol -e normal --prefix none)
all=$(cargo tree --workspace -e normal --prefix none)

grep -Eq '^(tokio|async-std|smol|futures-executor|mio) v' <<<"$agent" && bad "agent-lite depends on an async runtime: $(grep -E '^(tokio|async-std|smol|futures-executor|mio) v' <<<"$agent" | sort -u | tr '\n' ' ')"
grep -Eq '^tokio v' <<<"$proto" && bad "protocol depends on tokio"
grep -Eq '^(openssl|openssl-sys|native-tls) v' <<<"$all" && bad "OpenSSL found in the dependency tree"
grep -Eq '^(aws-lc-rs|aws-lc-sys) v' <<<"$all" && bad "aws-lc found: use rustls with the ring provider only"
for c in rustls ring webpki rustls-webpki sha2 hmac; do
  majors=$( (grep -E "^$c v" <<<"$all" || true) | sed -E "s/^$c v([0-9]+)\.([0-9]+).*/\1.\2/" | sort -u)
  n=$(printf '%s' "$majors" | grep -c . || true)
  [ "$n" -le 1 ] || bad "several versions of $c: $(echo $majors)"
done
echo "check-deps: agent-lite has $(sort -u <<<"$agent" | grep -c ' v') crates, none async; protocol has no tokio; TLS is rustls+ring only"
python3 scripts/check-structure.py || fail=1
exit $fail
