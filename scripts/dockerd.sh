#!/usr/bin/env bash
# Starts or stops the test dockerd: the default unix socket plus a loopback TCP listener
# (direct mode over tcp://). Used by scripts/services.sh and by the fault tests, which stop
# and start the daemon for real.
#   scripts/dockerd.sh start|stop
set -euo pipefail
DOCKER_TCP=${DOCKER_CTL_TEST_DOCKER_TCP:-127.0.0.1:23750}
ping() { curl -sf --max-time 2 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1; }
case "${1:-}" in
  start)
    ping && exit 0
    mkdir -p /var/log
    setsid nohup dockerd -H unix:///var/run/docker.sock -H "tcp://${DOCKER_TCP}" >>/var/log/dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 240); do ping && exit 0; sleep 0.25; done
    echo "dockerd did not start; see /var/log/dockerd.log" >&2
    tail -20 /var/log/dockerd.log >&2
    exit 1
    ;;
  stop)
    pids=$(pidof dockerd || true)
    [ -n "$pids" ] || exit 0
    kill $pids
    for _ in $(seq 1 240); do pidof dockerd >/dev/null || exit 0; sleep 0.25; done
    echo "dockerd did not stop" >&2
    exit 1
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
