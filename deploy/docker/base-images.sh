#!/usr/bin/env bash
# Makes the base image the Dockerfiles here start from, when no registry can be reached:
# debian:bookworm-slim, a minimal Debian bookworm made with debootstrap from Debian's packages and
# imported into the local Docker engine under the official image's name.
#
#   deploy/docker/base-images.sh          # makes what is missing (about 3 minutes the first time)
#   deploy/docker/base-images.sh --force  # makes it again
#
# An image of that name that is already there (pulled from Docker Hub, or made earlier) is kept.
set -euo pipefail
SERVICE=base-images
# shellcheck source=lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

BASE=debian:$DEBIAN_SUITE-slim
ensure_engine
# One maker at a time (the image and service builds may start together).
exec 9>"$SLUICE_STATE_DIR/.base-images.lock"
flock 9
if image_exists "$BASE" && [ "${1:-}" != --force ]; then
  log "$BASE is there"
  exit 0
fi

started=$SECONDS
root=$(mktemp -d /var/tmp/sluice-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
mirror=$(debian_mirror)
log "debootstrap --variant=minbase $DEBIAN_SUITE from $mirror"
if ! debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$mirror" >"$SLUICE_STATE_DIR/debootstrap.log" 2>&1; then
  fail_with_log "$SLUICE_STATE_DIR/debootstrap.log"
fi
# What the official slim image leaves out, now and in every later install: documentation
# (but the copyright files), manual pages, translations; package lists, caches and logs.
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CFG
printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' 'APT::Install-Recommends "false";' \
  >"$root/etc/apt/apt.conf.d/slim"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$root"/usr/share/{groff,info,lintian/overrides,locale,man}/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/cache/debconf/*-old "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/*
tar -C "$root" --numeric-owner -c . |
  docker import --change 'CMD ["bash"]' --change "LABEL org.opencontainers.image.description=\"Debian $DEBIAN_SUITE minbase, made locally with debootstrap\"" - "$BASE" >/dev/null
log "made $BASE in $((SECONDS - started))s ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
