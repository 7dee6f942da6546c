#!/usr/bin/env bash
# The test command: installs what the build needs, starts the real services, runs formatting and
# lint checks and the whole test suite (end-to-end included), then the image and Compose test on
# a Docker engine (deploy/compose/test.sh) and the Helm chart's tests (a local Kubernetes API
# server, and the chart's container spec run with that image), then stops the services.
# Fails if a service does not come up or any check or test fails.
#
#   deploy/local/test.sh [extra cargo test arguments]
set -euo pipefail
SERVICE='test'
. "$(dirname "$0")/lib.sh"
cd "$DEPLOY_LOCAL_DIR/../.."
# Each of this script's lines says how far into the run it is, so a CI log shows where the time goes.
log() { printf '[%s +%dm%02ds] %s\n' "$SERVICE" $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

# librdkafka is built from source (cmake/make, a C/C++ compiler, OpenSSL, zlib headers).
apt_install build-essential pkg-config libssl-dev zlib1g-dev cmake
# The console's test (tests/tests/console.rs) drives headless Chromium over WebDriver.
apt_install chromium chromium-driver

cleanup() {
  local status=$?
  deploy/local/down.sh --clean || true
  exit $status
}
trap cleanup EXIT

log "cargo fmt --check"
cargo fmt --all -- --check

# Every service in parallel: Postgres, Kafka and the five search clusters (OpenSearch 2.19.6, 3.3.2
# and 2.19.4 with the security plugin; Elasticsearch 9.2.4 and 8.19.7 over HTTPS). The slowest JVM
# takes 2 to 3 minutes on 2 cores (docs/development.md): they start while clippy and the build
# run, and the tests wait for them. Their start-up waits are longer than up.sh's defaults (180 s)
# because clippy and rustc keep both cores busy meanwhile. up.sh's messages are kept aside and
# printed when the tests wait for it, so a failure's reason is not lost among cargo's lines.
export SLUICE_START_TIMEOUT=${SLUICE_START_TIMEOUT:-600}
services_env=$(mktemp)
services_log=$(mktemp)
deploy/local/up.sh >"$services_env" 2>"$services_log" &
services=$!

log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo build --bins"
# End-to-end tests run the real binaries (kill -9, SIGTERM, exit codes).
cargo build --locked --workspace --bins
# The alerting rules with promtool (and it installs the Prometheus tests/tests/alerts.rs runs).
log "alerting rules"
deploy/prometheus/test.sh

log "waiting for the services"
services_status=0
wait "$services" || services_status=$?
cat "$services_log" >&2
[ "$services_status" = 0 ] || die "the services did not start (deploy/local/up.sh's messages above)"
eval "$(cat "$services_env")"
rm -f "$services_env" "$services_log"
# The base and service images of the Compose test (debootstrap, docker builds: mostly network and
# disk) are made while the tests run, now that the distributions they copy are fetched.
deploy/compose/local-images.sh >/dev/null 2>"$SLUICE_STATE_DIR/local-images.log" &
images=$!
log "cargo test"
cargo test --locked --workspace --no-fail-fast "$@"
# The same consumer suite on the other clusters: Elasticsearch 8.19 over HTTPS with OpenSearch
# 3.3 (cargo test above ran it on Elasticsearch 9.2 and OpenSearch 2.19; cluster_access.rs covers
# TLS and every auth type, the secure OpenSearch 2.19.4 included; the suite's OpenSearch half
# passes there too: SLUICE_TEST_OPENSEARCH_INSTANCE=opensearch_secure, not run here for time).
log "consumer suite on Elasticsearch 8.19 (HTTPS) and OpenSearch 3.3"
SLUICE_TEST_ELASTICSEARCH_INSTANCE=elasticsearch8 SLUICE_TEST_OPENSEARCH_INSTANCE=opensearch3 \
  cargo test --locked -p sluice-tests --test consumer
# The image is made from the debug binaries built above: a release build would add many minutes
# on 2 cores, and these tests check behaviour, not speed (docs/decisions.md).
log "image and compose end-to-end test"
wait "$images" || log "the service images could not be made in the background (see $SLUICE_STATE_DIR/local-images.log); the compose test tries again"
export SLUICE_BUILD_PROFILE=dev
deploy/compose/test.sh
# The Helm chart against a local Kubernetes API server, and its pods' promises in Docker.
log "Helm chart"
deploy/helm/test.sh
log "every check passed"
