#!/usr/bin/env bash
# Installs the real components the test suite runs against (DESIGN.md §4), from Debian only.
# Idempotent: packages already present are skipped by apt itself.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(docker-registry skopeo containerd runc etcd-server golang-go rsync make git
      busybox-static containernetworking-plugins iptables conntrack curl ca-certificates jq
      unzip iproute2 tar docker.io podman)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

# docker.io (dockerd 20.10) is only a client of the tests (test/rig/docker.ts starts its own
# dockerd with its own data-root, exec-root, socket and containerd). Its maintainer scripts
# would start and enable the system service (docker.service/docker.socket or
# /etc/init.d/docker): a policy-rc.d that refuses every start keeps it from running during
# the install, and the service is disabled afterwards, but only when this run is what
# installed the package (a docker.io the machine already had is left exactly as it was).
# podman (4.3, the CRI-O drop-in test's client, test/integration/crio-podman.test.ts) is run
# by the tests with their own storage and config; its package enables podman.socket,
# podman.service, podman-restart.service and podman-auto-update.{service,timer}: the same
# treatment applies.
fresh_docker=false
[[ " ${missing[*]} " == *" docker.io "* ]] && fresh_docker=true
fresh_podman=false
[[ " ${missing[*]} " == *" podman "* ]] && fresh_podman=true
own_policy=false
if { $fresh_docker || $fresh_podman; } && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# registry-mirror test/rig/install-deps.sh: no service starts while installing\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  own_policy=true
fi
cleanup() { if $own_policy; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

if $fresh_docker; then
  # Belt and braces: should anything have started it anyway, stop it (by the service
  # manager, which knows its own pid), then make sure it does not start at boot.
  if [ -d /run/systemd/system ]; then
    systemctl stop docker.socket docker.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/docker ] && [ -s /var/run/docker.pid ]; then
    /etc/init.d/docker stop >/dev/null 2>&1 || true
  fi
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable docker.service docker.socket >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/docker ]; then
    update-rc.d docker disable >/dev/null 2>&1 || true
  fi
fi

if $fresh_podman; then
  units=(podman.socket podman.service podman-restart.service podman-auto-update.timer podman-auto-update.service)
  if [ -d /run/systemd/system ]; then
    systemctl stop "${units[@]}" >/dev/null 2>&1 || true
  fi
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable "${units[@]}" >/dev/null 2>&1 || true
  fi
fi
