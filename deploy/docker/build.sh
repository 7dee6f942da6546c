#!/usr/bin/env bash
# Builds the sluice image (tag sluice:local, or $SLUICE_IMAGE) from binaries built on this host:
# `cargo build --release`, the binaries stripped into a small build context, and the `prebuilt`
# target of deploy/docker/Dockerfile on the locally made debian:bookworm-slim
# (deploy/docker/base-images.sh). Prints the image size and the build time.
#
#   deploy/docker/build.sh
#
# SLUICE_BUILD_PROFILE=dev takes the debug binaries instead (what the test command builds
# anyway): the same image, slower binaries, and no release build of many minutes in CI. Image
# sizes and benchmarks are of the release profile.
#
# The default target (`runtime`, a Rust builder stage) needs the official rust image; build it
# with `docker build -f deploy/docker/Dockerfile .` where Docker Hub is reachable.
set -euo pipefail
SERVICE=image
# shellcheck source=lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

IMAGE=${SLUICE_IMAGE:-sluice:local}
PROFILE=${SLUICE_BUILD_PROFILE:-release}
case "$PROFILE" in
  release) TARGET_DIR=target/release ;;
  dev) TARGET_DIR=target/debug ;;
  *) die "SLUICE_BUILD_PROFILE must be release or dev, not '$PROFILE'" ;;
esac
started=$SECONDS
log "cargo build --profile $PROFILE (sluice-producer, sluice-consumer)"
cargo build --profile "$PROFILE" --locked -q -p sluice-producer -p sluice-consumer
context="$SLUICE_STATE_DIR/docker-context"
rm -rf "$context"
mkdir -p "$context/dist"
for bin in sluice-producer sluice-consumer; do
  strip -o "$context/dist/$bin" "$TARGET_DIR/$bin"
done
cargo_seconds=$((SECONDS - started))
"$DEPLOY_DOCKER_DIR/base-images.sh"

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)
log "docker build --target prebuilt -t $IMAGE"
t0=$SECONDS
docker build -q -f "$DEPLOY_DOCKER_DIR/Dockerfile" --target prebuilt \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  -t "$IMAGE" "$context" >/dev/null
rm -rf "$context"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE: $(awk -v s="$size" 'BEGIN {printf "%.1f MB", s / 1e6}'), docker build $((SECONDS - t0))s, cargo build and strip ${cargo_seconds}s"
