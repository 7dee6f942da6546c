#!/bin/bash
# `eswrapper` or `elasticsearch` followed by -E flags starts Elasticsearch with them (anything else
# runs as given). ELASTIC_PASSWORD becomes bootstrap.password in the keystore.
set -euo pipefail
case "${1:-}" in
  eswrapper | elasticsearch | */elasticsearch) shift ;;
  *) exec "$@" ;;
esac
if [ -n "${ELASTIC_PASSWORD:-}" ]; then
  [ -f config/elasticsearch.keystore ] || elasticsearch-keystore create >/dev/null
  printf '%s' "$ELASTIC_PASSWORD" | elasticsearch-keystore add -x -f bootstrap.password
fi
exec elasticsearch "$@"
