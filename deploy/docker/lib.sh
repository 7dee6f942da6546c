# shellcheck shell=bash
# Shared helpers for the deploy/docker scripts (sourced, never run): the Docker engine and the
# locally made base images. Builds on deploy/local/lib.sh (apt_install, log, wait_until).

# shellcheck source=../local/lib.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
DEPLOY_DOCKER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$DEPLOY_DOCKER_DIR/../.." && pwd)

# Debian's CLI of the same engine (20.10), whatever else is on PATH: no API version negotiation,
# and its classic builder without a deprecation notice.
docker() { /usr/bin/docker "$@"; }

# The Debian release every image here is made from (the official images' base too).
DEBIAN_SUITE=bookworm

# ensure_engine: Debian's docker.io (dockerd 20.10), debootstrap and docker-compose installed,
# and a Docker daemon answering. A daemon that already answers is used as it is; otherwise
# dockerd is started in the background (no systemd here), its log in $SLUICE_STATE_DIR/dockerd.log.
ensure_engine() {
  apt_install docker.io debootstrap docker-compose
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd (log: $SLUICE_STATE_DIR/dockerd.log)"
  # setsid: its own session, so the end of the calling script does not stop it.
  setsid dockerd >>"$SLUICE_STATE_DIR/dockerd.log" 2>&1 </dev/null &
  wait_until 60 "$SLUICE_STATE_DIR/dockerd.log" "dockerd" docker info
}

# debian_mirror: the Debian archive this machine's apt uses (for debootstrap).
debian_mirror() {
  local m
  m=$(grep -rhoE '^(deb|URIs:)[[:space:]]+[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    awk '{print $2}' | grep -v security | head -n 1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# image_exists NAME
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
