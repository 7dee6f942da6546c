#!/usr/bin/env bash
# The second Elasticsearch: 8.19.7 over HTTPS (a server certificate of the test CA in lib.sh), with
# the token service on, next to the 9.x one of elasticsearch.sh. Same commands and overrides as
# elasticsearch.sh (start|stop|env|clean|fetch; SLUICE_ELASTICSEARCH8_PORT, _TRANSPORT_PORT,
# _VERSION, _HEAP, _PASSWORD, _START_TIMEOUT). State in $SLUICE_STATE_DIR/elasticsearch8.
#
# Exports SLUICE_TEST_ELASTICSEARCH8_URL (https://127.0.0.1:<port>), _API_KEY, _USER, _PASSWORD
# and _CA (the test CA's certificate).
set -euo pipefail
SLUICE_ES_INSTANCE=elasticsearch8 \
  SLUICE_ES_VERSION=8.19.7 \
  SLUICE_ES_PORT=9220 \
  SLUICE_ES_TRANSPORT_PORT=9320 \
  SLUICE_ES_TLS=1 \
  SLUICE_ES_TOKEN_SERVICE=1 \
  exec "$(dirname "$0")/elasticsearch.sh" "$@"
