#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and helm from the Go module proxy (no image registry, no release
# downloads) and caches them outside the repository, so a second run on the same machine takes
# no time. Prints the directory holding the three binaries.
#
#   deploy/kube/build.sh            -> /var/cache/sluice/kube/bin-v1.37.2-helm-v3.22.0
#
# Overridable: SLUICE_CACHE_DIR (default /var/cache/sluice), KUBE_VERSION, HELM_VERSION.
# A cold build of kube-apiserver takes about 10 minutes on 2 cores and 2.4 GB of memory; with a
# warm Go build cache it takes seconds.
set -euo pipefail
SERVICE=${SERVICE:-kube-build}
KUBE_DIR=$(cd "$(dirname "$0")" && pwd)
. "$KUBE_DIR/lib.sh"

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
HELM_VERSION=${HELM_VERSION:-3.22.0}
# The staging modules (k8s.io/api, k8s.io/apiserver, ...) are published as v0.<minor>.<patch>.
STAGING_VERSION=v0.${KUBE_VERSION#*.}
BIN_DIR="$KUBE_CACHE_DIR/bin-v$KUBE_VERSION-helm-v$HELM_VERSION"

if [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kubectl" ] && [ -x "$BIN_DIR/helm" ]; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || die "go is needed to build kube-apiserver, kubectl and helm (Go module proxy)"
mkdir -p "$BIN_DIR"
# One build at a time per machine: a second caller waits for the first one's binaries.
exec 9>"$KUBE_CACHE_DIR/.build.lock"
flock 9
if [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kubectl" ] && [ -x "$BIN_DIR/helm" ]; then
  echo "$BIN_DIR"
  exit 0
fi

# go.mod's toolchain line must not make go fetch another toolchain: build with the one installed.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

if [ ! -x "$BIN_DIR/kube-apiserver" ] || [ ! -x "$BIN_DIR/kubectl" ]; then
  log "building kube-apiserver and kubectl v$KUBE_VERSION from the Go module proxy (cold: ~10 min)"
  mod="$KUBE_CACHE_DIR/mod-v$KUBE_VERSION"
  mkdir -p "$mod"
  kube_src=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$kube_src" ] || die "k8s.io/kubernetes@v$KUBE_VERSION did not download"
  # k8s.io/kubernetes replaces each staging module with ./staging/src/...; a module that
  # requires it must replace them with their published versions instead.
  {
    echo "module sluice.local/kube-build"
    echo
    echo "go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')"
    echo
    echo "require k8s.io/kubernetes v$KUBE_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$kube_src/go.mod" |
      sort -u | while read -r m; do echo "	$m => $m $STAGING_VERSION"; done
    echo ")"
  } >"$mod/go.mod"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=${KUBE_VERSION%%.*}"
    minor=${KUBE_VERSION#*.}
    ldflags+=" -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
  done
  (
    cd "$mod"
    go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
  )
fi

if [ ! -x "$BIN_DIR/helm" ]; then
  log "building helm v$HELM_VERSION from the Go module proxy"
  GOBIN="$BIN_DIR" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
fi

echo "$BIN_DIR"
