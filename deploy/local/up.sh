#!/usr/bin/env bash
# Starts the real services on 127.0.0.1 and prints their endpoints as `export` lines:
#
#   eval "$(deploy/local/up.sh)"                 # all of them (ALL below)
#   eval "$(deploy/local/up.sh postgres kafka)"  # only some of them
#   eval "$(deploy/local/up.sh elasticsearch8 opensearch3)"
#
# Services: postgres, kafka, opensearch (2.19.6), elasticsearch (9.2.4, HTTP), elasticsearch8
# (8.19.7, HTTPS, token service), opensearch3 (3.3.2, HTTP), opensearch-secure (2.19.4 with the
# security plugin: HTTPS, basic auth). With no arguments all of them start, as the test suite needs
# them all: the five JVMs take about 0.8 GB of memory each (512m heap), well within the machine's
# 24 GiB; what they cost is CPU while they start on its 2 cores (see docs/development.md).
#
# Idempotent: services already running are left alone. The services start in parallel; each
# waits until it answers a real request (up to $SLUICE_START_TIMEOUT seconds when set, else each
# script's own default: 180 for the JVMs, 120 for Kafka). The lines are also written to
# $SLUICE_STATE_DIR/env.
# Stop everything with deploy/local/down.sh.
set -euo pipefail
SERVICE=up
. "$(dirname "$0")/lib.sh"

ALL=(postgres kafka opensearch elasticsearch elasticsearch8 opensearch3 opensearch-secure)
services=("$@")
[ ${#services[@]} -gt 0 ] || services=("${ALL[@]}")
for s in "${services[@]}"; do
  [ -x "$DEPLOY_LOCAL_DIR/$s.sh" ] || die "unknown service '$s' (known: ${ALL[*]})"
done

# Shared prerequisites first, so the parallel starts do not race on apt or the JVM user.
apt_install curl ca-certificates openssl
ensure_service_user

started=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -A pids
for s in "${services[@]}"; do
  "$DEPLOY_LOCAL_DIR/$s.sh" start >"$tmp/$s.env" 2>"$tmp/$s.err" &
  pids[$s]=$!
done

failed=()
for s in "${services[@]}"; do
  if wait "${pids[$s]}"; then
    sed 's/^/  /' "$tmp/$s.err" | grep -v '^  $' >&2 || true
  else
    failed+=("$s")
    log "$s failed to start:"
    sed 's/^/  /' "$tmp/$s.err" >&2
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  die "not started: ${failed[*]} (see the logs above)"
fi

# Print what was asked for; the env file lists every service that runs now, so starting a
# subset later does not hide the others.
for s in "${services[@]}"; do cat "$tmp/$s.env"; done
for s in "${ALL[@]}"; do "$DEPLOY_LOCAL_DIR/$s.sh" env 2>/dev/null || true; done >"$SLUICE_STATE_DIR/env"
log "ready in $((SECONDS - started))s: ${services[*]} (endpoints of all running services in $SLUICE_STATE_DIR/env)"
