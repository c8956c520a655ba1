#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests need from Debian's `kubernetes` source package
# (1.20.2), once per machine: the result is cached outside the repository in $KUBE_CACHE.
# Usage: build-kube.sh [binary...]   (default: all binaries the e2e cluster needs)
set -euo pipefail
KUBE_CACHE=${KUBE_CACHE:-/var/cache/registry-mirror/kube}
whats=("$@")
[ ${#whats[@]} -gt 0 ] || whats=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Bump when the build itself changes: binaries built at an older level are rebuilt.
PATCH_LEVEL=reflect2-1.0.2
need=()
for w in "${whats[@]}"; do
  [ -x "$KUBE_CACHE/bin/$w" ] && [ "$(cat "$KUBE_CACHE/bin/.$w.level" 2>/dev/null)" = "$PATCH_LEVEL" ] || need+=("$w")
done
[ ${#need[@]} -gt 0 ] || { echo "kube binaries cached in $KUBE_CACHE/bin"; exit 0; }

export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/registry-mirror-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -q
fi
mkdir -p "$KUBE_CACHE/src" "$KUBE_CACHE/bin"
cd "$KUBE_CACHE/src"
if ! ls -d kubernetes-*/ >/dev/null 2>&1; then
  apt-get source -q kubernetes >/dev/null
fi
tree=$(cd "$(ls -d kubernetes-*/ | head -1)" && pwd)
# Kubernetes 1.20 vendors modern-go/reflect2 v1.0.1, whose unsafe map iteration faults under
# Go >= 1.18 (bookworm has 1.19): kube-apiserver dies with SIGSEGV in mapiterinit the first
# time it JSON-encodes a map (e.g. creating a custom resource). reflect2 v1.0.2 fixed it;
# Debian packages that version, so the vendored copy is replaced by Debian's.
reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
if [ ! -d "$reflect2_src" ]; then
  apt-get install -y -q --no-install-recommends golang-github-modern-go-reflect2-dev >/dev/null
fi
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
cp "$reflect2_src"/*.go "$reflect2_src"/*.s "$tree/vendor/github.com/modern-go/reflect2/" 2>/dev/null || true
rm -f "$tree"/vendor/github.com/modern-go/reflect2/*_test.go
export GOPATH="$KUBE_CACHE/gopath"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
targets=()
for w in "${need[@]}"; do targets+=("cmd/$w"); done
export CGO_ENABLED=0 GO111MODULE=off GOFLAGS= GOCACHE="$KUBE_CACHE/gocache"
# KUBE_GIT_VERSION keeps the build from asking git for a version the source tarball lacks.
make WHAT="${targets[*]}" KUBE_GIT_VERSION=v1.20.2 KUBE_BUILD_PLATFORMS=linux/amd64 >"$KUBE_CACHE/build.log" 2>&1 \
  || { tail -40 "$KUBE_CACHE/build.log"; exit 1; }
for w in "${need[@]}"; do
  f=$(find _output -type f -name "$w" -perm -u+x | head -1)
  install -m 0755 "$f" "$KUBE_CACHE/bin/$w"
  echo "$PATCH_LEVEL" >"$KUBE_CACHE/bin/.$w.level"
done
echo "kube binaries built into $KUBE_CACHE/bin"
