#!/usr/bin/env bash
# Installs the real components the test suite runs against (DESIGN.md §4), from Debian only.
# Idempotent: packages already present are skipped by apt itself.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(docker-registry skopeo containerd runc etcd-server golang-go rsync make git
      busybox-static containernetworking-plugins iptables conntrack curl ca-certificates jq
      unzip iproute2 tar)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
