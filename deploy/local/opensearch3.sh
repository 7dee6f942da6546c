#!/usr/bin/env bash
# The second OpenSearch: 3.3.2 (on JDK 21+), next to the 2.19 one of opensearch.sh, with the same
# extra modules (lang-painless, reindex, analysis-common). Same commands and overrides as
# opensearch.sh (start|stop|env|clean|fetch; SLUICE_OPENSEARCH3_PORT, _TRANSPORT_PORT, _VERSION, _HEAP,
# _START_TIMEOUT, _MODULES). State in $SLUICE_STATE_DIR/opensearch3.
#
# Exports SLUICE_TEST_OPENSEARCH3_URL (http://127.0.0.1:<port>).
set -euo pipefail
SLUICE_OS_INSTANCE=opensearch3 \
  SLUICE_OS_VERSION=3.3.2 \
  SLUICE_OS_PORT=9221 \
  SLUICE_OS_TRANSPORT_PORT=9321 \
  exec "$(dirname "$0")/opensearch.sh" "$@"
