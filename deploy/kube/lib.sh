# shellcheck shell=bash
# Shared functions of the deploy/kube scripts (a local Kubernetes API server for the chart's
# tests). Sourced, never run. Reuses deploy/local's functions (log, die, apt_install, pick_port).
KUBE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$KUBE_LIB_DIR/../local/lib.sh"

# Built binaries, kept between runs (outside the repository).
KUBE_CACHE_DIR=${KUBE_CACHE_DIR:-$SLUICE_CACHE_DIR/kube}
# The API server's data (etcd), certificates, token file, logs and pid files.
KUBE_STATE_DIR=${KUBE_STATE_DIR:-$SLUICE_STATE_DIR/kube}
mkdir -p "$KUBE_CACHE_DIR" "$KUBE_STATE_DIR"
