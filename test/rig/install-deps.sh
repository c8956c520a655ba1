#!/usr/bin/env bash
# Installs the real components the test suite runs against (DESIGN.md §4), from Debian only.
# Idempotent: packages already present are skipped by apt itself.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(docker-registry skopeo containerd runc etcd-server golang-go rsync make git
      busybox-static containernetworking-plugins iptables conntrack curl ca-certificates jq
      unzip iproute2 tar docker.io podman
      ceph-mon ceph-mgr ceph-osd radosgw ceph-common prometheus chromium)
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
# Ceph 16.2 (Pacific: ceph-mon, ceph-mgr, ceph-osd, radosgw, ceph-common; tools/launch/ceph.ts runs
# a throwaway cluster with its own conf, keyrings, data, sockets and logs in a temp dir, never
# /etc/ceph or /var/lib/ceph). Its packages enable ceph.target and the per-daemon targets and
# units, ceph-crash.service, rbdmap.service and (pulled in by ceph-osd) smartmontools.service
# (smartd): none of them may run, so they get the same treatment too.
fresh_docker=false
[[ " ${missing[*]} " == *" docker.io "* ]] && fresh_docker=true
fresh_podman=false
[[ " ${missing[*]} " == *" podman "* ]] && fresh_podman=true
fresh_ceph=false
[[ " ${missing[*]} " == *" ceph-"* || " ${missing[*]} " == *" radosgw "* ]] && fresh_ceph=true
fresh_prometheus=false
[[ " ${missing[*]} " == *" prometheus "* ]] && fresh_prometheus=true
fresh_smartd=false
dpkg -s smartmontools >/dev/null 2>&1 || fresh_smartd=$fresh_ceph
own_policy=false
if { $fresh_docker || $fresh_podman || $fresh_ceph || $fresh_prometheus; } && [ ! -e /usr/sbin/policy-rc.d ]; then
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

if $fresh_ceph; then
  units=(ceph.target ceph-mon.target ceph-mgr.target ceph-osd.target ceph-radosgw.target
         ceph-crash.service rbdmap.service)
  $fresh_smartd && units+=(smartmontools.service smartd.service)
  if [ -d /run/systemd/system ]; then
    systemctl stop "${units[@]}" >/dev/null 2>&1 || true
  fi
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable "${units[@]}" >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1; then
    for s in ceph ceph-crash rbdmap smartmontools; do
      if [ -e "/etc/init.d/$s" ] && { [ "$s" != smartmontools ] || $fresh_smartd; }; then
        update-rc.d "$s" disable >/dev/null 2>&1 || true
      fi
    done
  fi
fi

if $fresh_prometheus; then
  if [ -d /run/systemd/system ]; then
    systemctl stop prometheus.service >/dev/null 2>&1 || true
  fi
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable prometheus.service >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/prometheus ]; then
    update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi
