#!/usr/bin/env bash
# Installs (when missing) and starts the services the tests need: dockerd and PostgreSQL,
# installs the tools they call (minisign, qemu-user, the cross linkers), adds the rustup
# targets for the agent's edge builds, and builds the local test image.
# Idempotent: running services are reused. Needs root on Debian.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
command -v musl-gcc >/dev/null 2>&1 || need_pkgs+=(musl-tools)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_pkgs+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need_pkgs+=(gcc-arm-linux-gnueabihf)
command -v qemu-aarch64 >/dev/null 2>&1 || need_pkgs+=(qemu-user)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v psql >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
# The release signing tests cross-check our signatures with the real minisign.
command -v minisign >/dev/null 2>&1 || need_pkgs+=(minisign)
# The replica tests put three servers behind Debian's HAProxy.
command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy)
# The web UI's browser tests (tests/browser) drive Debian's chromium through chromedriver.
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
[ -x /usr/bin/chromedriver ] || need_pkgs+=(chromium-driver)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing: ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

installed_targets=$(rustup target list --installed)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

# --- dockerd -----------------------------------------------------------------
# Besides the default unix socket, dockerd listens on a loopback TCP port so that
# tests can reach the daemon over tcp:// (direct mode over TCP).
if ! docker version >/dev/null 2>&1; then
  log "starting dockerd"
  bash "$(dirname "$0")/dockerd.sh" start
fi

# --- PostgreSQL --------------------------------------------------------------
PG_VER=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
  if ! pg_lsclusters -h | grep -q .; then
    log "creating PostgreSQL cluster"
    pg_createcluster "$PG_VER" main >/dev/null
  fi
  log "starting PostgreSQL"
  cl=$(pg_lsclusters -h | head -1)
  pg_ctlcluster "$(awk '{print $1}' <<<"$cl")" "$(awk '{print $2}' <<<"$cl")" start
fi
for _ in $(seq 1 60); do su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break; sleep 0.5; done
su postgres -c "psql -qAtc 'select 1'" >/dev/null
# A test role and database; tests create their own schema-isolated databases from it.
su postgres -c "psql -qAt" <<'SQL' >/dev/null
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dockerctl') THEN
    CREATE ROLE dockerctl LOGIN SUPERUSER PASSWORD 'dockerctl';
  END IF;
END $$;
SQL
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_database WHERE datname='dockerctl'\"" | grep -q 1 \
  || su postgres -c "createdb -O dockerctl dockerctl"

# --- test image --------------------------------------------------------------
IMAGE=docker-ctl-test/busybox:latest
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "building $IMAGE from busybox-static"
  tmp=$(mktemp -d)
  mkdir -p "$tmp/rootfs/bin" "$tmp/rootfs/tmp" "$tmp/rootfs/etc" "$tmp/rootfs/root"
  cp /bin/busybox "$tmp/rootfs/bin/busybox"
  for app in $(/bin/busybox --list); do
    [ "$app" = busybox ] || ln -sf busybox "$tmp/rootfs/bin/$app"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$tmp/rootfs/etc/passwd"
  echo 'root:x:0:' >"$tmp/rootfs/etc/group"
  tar -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
  docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' "$tmp/rootfs.tar" "$IMAGE" >/dev/null
  rm -rf "$tmp"
fi
log "ready: dockerd ($(docker version -f '{{.Server.APIVersion}}')), PostgreSQL $PG_VER, image $IMAGE"
