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

# librdkafka is built from source (cmake/make, a C/C++ compiler, OpenSSL, zlib headers).
apt_install build-essential pkg-config libssl-dev zlib1g-dev cmake

cleanup() {
  local status=$?
  deploy/local/down.sh --clean || true
  exit $status
}
trap cleanup EXIT

# Every service in parallel: Postgres, Kafka and the five search clusters (OpenSearch 2.19.6, 3.3.2
# and 2.19.4 with the security plugin; Elasticsearch 9.2.4 and 8.19.7 over HTTPS). The slowest JVM
# sets the time, about 2 to 3 minutes on 2 cores (docs/development.md).
eval "$(deploy/local/up.sh)"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo build --bins"
# End-to-end tests run the real binaries (kill -9, SIGTERM, exit codes).
cargo build --locked --workspace --bins
log "cargo test"
cargo test --locked --workspace --no-fail-fast "$@"
# The second clusters (SLUICE_TEST_ELASTICSEARCH8_*, SLUICE_TEST_OPENSEARCH3_URL,
# SLUICE_TEST_OPENSEARCH_SECURE_*) are exported above: test runs that need only them go here.
log "image and compose end-to-end test"
deploy/compose/test.sh
# The Helm chart against a local Kubernetes API server, and its pods' promises in Docker.
log "Helm chart"
deploy/helm/test.sh
