#!/bin/sh
# Offline installer for the docker-ctl agent, run from the extracted release tarball.
# Needs nothing from the network. POSIX sh, so it runs on busybox (OpenWrt) too.
#
#   ./install.sh [--root DIR] [--init systemd|procd|none] [--server URL] [--agent-id ID] [--token-file FILE]
#
#   --root DIR     install under DIR instead of / (for images, chroots and tests); services
#                  are never started when DIR is not /
#   --init KIND    which service manager files to install; default: procd on OpenWrt,
#                  systemd where /run/systemd/system exists, else none
#   --server, --agent-id, --token-file
#                  write these into /etc/docker-ctl/agent.env (mode 0600) so agent.yaml's
#                  ${AGENT_ID} and ${AGENT_AUTH_TOKEN} resolve; the URL goes into agent.yaml
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=/
init=auto
server=""
agent_id=""
token_file=""

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --init) init=${2:?--init needs systemd, procd or none}; shift 2 ;;
    --server) server=${2:?--server needs a URL}; shift 2 ;;
    --agent-id) agent_id=${2:?--agent-id needs an id}; shift 2 ;;
    --token-file) token_file=${2:?--token-file needs a file}; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ -f "$here/docker-ctl-agent" ] || die "docker-ctl-agent not found next to install.sh"

# 1. Verify the tarball's checksums.
if [ -f "$here/SHA256SUMS" ]; then
  if command -v sha256sum >/dev/null 2>&1; then
    (cd "$here" && sha256sum -c SHA256SUMS >/dev/null) || die "checksum mismatch: the tarball is damaged"
    echo "checksums verified"
  else
    echo "warning: sha256sum not found; checksums not verified" >&2
  fi
fi

if [ "$init" = auto ]; then
  if [ -f "$root/etc/openwrt_release" ]; then init=procd
  elif [ "$root" = / ] && [ -d /run/systemd/system ]; then init=systemd
  else init=none
  fi
fi

root=${root%/}
if [ "$init" = procd ]; then bindir="$root/usr/bin"; else bindir="$root/usr/local/bin"; fi
confdir="$root/etc/docker-ctl"

# 2. The binary.
mkdir -p "$bindir" "$confdir"
cp "$here/docker-ctl-agent" "$bindir/docker-ctl-agent.new"
chmod 0755 "$bindir/docker-ctl-agent.new"
mv -f "$bindir/docker-ctl-agent.new" "$bindir/docker-ctl-agent"
echo "installed $bindir/docker-ctl-agent"

# 3. The config: never overwrite an existing one.
umask 077
if [ -f "$confdir/agent.yaml" ]; then
  echo "kept existing $confdir/agent.yaml"
else
  if [ -n "$server" ]; then
    sed "s|^  url: .*|  url: $server|" "$here/agent.yaml.example" >"$confdir/agent.yaml"
  else
    cp "$here/agent.yaml.example" "$confdir/agent.yaml"
  fi
  chmod 0600 "$confdir/agent.yaml"
  echo "wrote $confdir/agent.yaml (mode 0600)"
fi
if [ -n "$agent_id" ] || [ -n "$token_file" ]; then
  : >"$confdir/agent.env"
  if [ -n "$agent_id" ]; then echo "AGENT_ID=$agent_id" >>"$confdir/agent.env"; fi
  if [ -n "$token_file" ]; then printf 'AGENT_AUTH_TOKEN=%s\n' "$(cat "$token_file")" >>"$confdir/agent.env"; fi
  chmod 0600 "$confdir/agent.env"
  echo "wrote $confdir/agent.env (mode 0600)"
fi

# 4. The service.
case "$init" in
  systemd)
    mkdir -p "$root/etc/systemd/system"
    cp "$here/docker-ctl-agent.service" "$root/etc/systemd/system/docker-ctl-agent.service"
    chmod 0644 "$root/etc/systemd/system/docker-ctl-agent.service"
    echo "installed $root/etc/systemd/system/docker-ctl-agent.service"
    if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; then
      systemctl daemon-reload
      echo "start it with: systemctl enable --now docker-ctl-agent"
    fi
    ;;
  procd)
    mkdir -p "$root/etc/init.d"
    cp "$here/docker-ctl-agent.init" "$root/etc/init.d/docker-ctl-agent"
    chmod 0755 "$root/etc/init.d/docker-ctl-agent"
    echo "installed $root/etc/init.d/docker-ctl-agent"
    if [ -z "$root" ]; then echo "start it with: /etc/init.d/docker-ctl-agent enable && /etc/init.d/docker-ctl-agent start"; fi
    ;;
  none) echo "no service manager files installed (--init none)" ;;
  *) die "unknown --init $init (systemd, procd or none)" ;;
esac

echo "check the configuration with: $bindir/docker-ctl-agent --config $confdir/agent.yaml --check-config"
