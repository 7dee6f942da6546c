#!/usr/bin/env bash
# A third OpenSearch, 2.19.4 with the security plugin: HTTPS with a server certificate of the test
# CA (lib.sh), HTTP basic auth for the one user `admin`, no demo certificates or users. 2.19.4
# because opensearch-security 2.19.4.0 is the plugin Maven Central serves (none for 2.19.6 or
# 3.3.x; the plugin must match OpenSearch's version exactly). Same commands and overrides as
# opensearch.sh (start|stop|env|clean; SLUICE_OPENSEARCH_SECURE_PORT, _TRANSPORT_PORT, _HEAP,
# _PASSWORD, _START_TIMEOUT, _MODULES). State in $SLUICE_STATE_DIR/opensearch-secure.
#
# Exports SLUICE_TEST_OPENSEARCH_SECURE_URL (https://127.0.0.1:<port>), _USER, _PASSWORD, _CA.
set -euo pipefail
SLUICE_OS_INSTANCE=opensearch-secure \
  SLUICE_OS_VERSION=2.19.4 \
  SLUICE_OS_PORT=9222 \
  SLUICE_OS_TRANSPORT_PORT=9322 \
  SLUICE_OS_SECURITY=1 \
  exec "$(dirname "$0")/opensearch.sh" "$@"
