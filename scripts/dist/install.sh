#!/bin/sh
# Offline installer for the docker-ctl agent, run from the extracted release tarball.
# Needs nothing from the network. POSIX sh, so it runs on busybox (OpenWrt) too.
#
#   ./install.sh [--root DIR] [--init systemd|procd|none] [--server URL]
#                [--enrol-token-file FILE [--name NAME] | --agent-id ID --token-file FILE]
#                [--release-pub FILE]
#
#   --root DIR     install under DIR instead of / (for images, chroots and tests); services
#                  are never started when DIR is not /
#   --init KIND    which service manager files to install; default: procd on OpenWrt,
#                  systemd where /run/systemd/system exists, else none
#   --server URL   the server URL, written into agent.yaml
#   --enrol-token-file FILE
#                  the one-line way: an enrolment token (docker-ctl-server enrol-token create).
#                  It goes into /etc/docker-ctl/agent.env (mode 0600) as AGENT_ENROL_TOKEN,
#                  agent.yaml gets `enrol_token: ${AGENT_ENROL_TOKEN}` and a state file, and
#                  the agent enrols itself on first start (its credentials go to the state
#                  file, mode 0600). --name NAME sets the host name (default: the hostname)
#   --agent-id, --token-file
#                  instead: an agent an admin enrolled (POST /api/v1/agents), written into
#                  agent.env so agent.yaml's ${AGENT_ID} and ${AGENT_AUTH_TOKEN} resolve
#   --release-pub FILE
#                  the release public key (minisign format) the agent will trust for its
#                  updates, installed as /etc/docker-ctl/release.pub; without it, the
#                  tarball's release.pub is installed unless one is already there. When
#                  minisign is installed, the binary's signature is checked against it first.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=/
init=auto
server=""
agent_id=""
token_file=""
enrol_token_file=""
name=""
release_pub=""
state_file=/var/lib/docker-ctl/agent-state.json

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --init) init=${2:?--init needs systemd, procd or none}; shift 2 ;;
    --server) server=${2:?--server needs a URL}; shift 2 ;;
    --agent-id) agent_id=${2:?--agent-id needs an id}; shift 2 ;;
    --token-file) token_file=${2:?--token-file needs a file}; shift 2 ;;
    --enrol-token-file) enrol_token_file=${2:?--enrol-token-file needs a file}; shift 2 ;;
    --name) name=${2:?--name needs a host name}; shift 2 ;;
    --release-pub) release_pub=${2:?--release-pub needs a file}; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ -f "$here/docker-ctl-agent" ] || die "docker-ctl-agent not found next to install.sh"
if [ -n "$enrol_token_file" ]; then
  { [ -z "$agent_id" ] && [ -z "$token_file" ]; } || die "--enrol-token-file replaces --agent-id and --token-file: give one or the other"
  [ -r "$enrol_token_file" ] || die "cannot read $enrol_token_file"
  enrol_token=$(tr -d ' \t\r\n' <"$enrol_token_file")
  [ -n "$enrol_token" ] || die "$enrol_token_file is empty"
  case "$enrol_token" in *[!A-Za-z0-9_.-]*) die "$enrol_token_file does not hold an enrolment token" ;; esac
elif [ -n "$name" ]; then
  die "--name goes with --enrol-token-file"
fi
case "$name" in *[!A-Za-z0-9._-]*) die "--name takes letters, digits, '.', '_' and '-' here (set agent.name in agent.yaml for other names)" ;; esac

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
# OpenWrt's /var is in RAM: keep the state file (the enrolled credentials) on flash there.
if [ "$init" = procd ]; then state_file=/etc/docker-ctl/agent-state.json; fi
confdir="$root/etc/docker-ctl"

# 1b. The release public key: the one given, else the tarball's unless one is installed.
is_pub() { grep -Eqx 'RW[A-Za-z0-9+/]{54}' "$1" 2>/dev/null; }
pub_src=""
if [ -n "$release_pub" ]; then
  is_pub "$release_pub" || die "$release_pub is not a minisign public key"
  pub_src=$release_pub
elif [ -f "$confdir/release.pub" ]; then
  echo "kept existing $confdir/release.pub (pass --release-pub FILE to replace it)"
elif [ -f "$here/release.pub" ]; then
  is_pub "$here/release.pub" || die "the tarball's release.pub is not a minisign public key"
  pub_src=$here/release.pub
fi
trusted_pub=${pub_src:-$confdir/release.pub}
if [ -f "$here/docker-ctl-agent.minisig" ] && [ -f "$trusted_pub" ]; then
  if command -v minisign >/dev/null 2>&1; then
    minisign -V -H -q -p "$trusted_pub" -m "$here/docker-ctl-agent" -x "$here/docker-ctl-agent.minisig" \
      || die "docker-ctl-agent is not signed by the release key $trusted_pub"
    echo "signature verified"
  else
    echo "minisign not found: the binary's signature is not checked here (the agent checks its updates itself)"
  fi
fi

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
  if [ -n "$enrol_token_file" ] && ! grep -q '^  enrol_token: ' "$confdir/agent.yaml"; then
    echo "warning: $confdir/agent.yaml has no agent.enrol_token: set 'enrol_token: \${AGENT_ENROL_TOKEN}' (instead of id and auth_token) for the agent to enrol itself" >&2
  fi
else
  cp "$here/agent.yaml.example" "$confdir/agent.yaml.new"
  if [ -n "$server" ]; then
    sed -i "s|^  url: .*|  url: $server|" "$confdir/agent.yaml.new"
  fi
  if [ -n "$enrol_token_file" ]; then
    # The agent enrols itself: no id or token of its own yet, a state file for the ones it gets.
    sed -i -e '/^  id: /d' -e '/^  auth_token: /d' \
      -e 's|^  # enrol_token: |  enrol_token: |' \
      -e "s|^  # state_file: [^ ]*|  state_file: $state_file|" "$confdir/agent.yaml.new"
    if [ -n "$name" ]; then
      sed -i "s|^  # name: [^#]*#|  name: '$name'   #|" "$confdir/agent.yaml.new"
    fi
  fi
  chmod 0600 "$confdir/agent.yaml.new"
  mv -f "$confdir/agent.yaml.new" "$confdir/agent.yaml"
  echo "wrote $confdir/agent.yaml (mode 0600)"
fi
if [ -n "$pub_src" ]; then
  cp "$pub_src" "$confdir/release.pub.new"
  chmod 0644 "$confdir/release.pub.new"
  mv -f "$confdir/release.pub.new" "$confdir/release.pub"
  echo "installed $confdir/release.pub (the key the agent trusts for updates)"
fi
if [ -n "$enrol_token_file" ]; then
  mkdir -p "$root${state_file%/*}"
  chmod 0700 "$root${state_file%/*}"
  printf 'AGENT_ENROL_TOKEN=%s\n' "$enrol_token" >"$confdir/agent.env"
  chmod 0600 "$confdir/agent.env"
  echo "wrote $confdir/agent.env (mode 0600): the agent enrols itself on first start and keeps its credentials in $state_file"
elif [ -n "$agent_id" ] || [ -n "$token_file" ]; then
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
