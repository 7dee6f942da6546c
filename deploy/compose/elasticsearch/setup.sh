#!/bin/bash
# The one-shot setup of compose.yaml: an API key for sluice-consumer, made with the elastic
# user's password and written (readable by uid 10001 only) to the secrets volume, where the
# consumer reads it into SLUICE_ES_API_KEY. A key that still authenticates is kept.
set -euo pipefail
url=${ES_URL:-http://elasticsearch:9200}
file=/run/sluice-secrets/elasticsearch-api-key
if [ -s "$file" ] &&
  curl -fsS -o /dev/null -H "Authorization: ApiKey $(cat "$file")" "$url/_security/_authenticate"; then
  echo "the API key in $file is valid"
  exit 0
fi
body='{"name":"sluice-consumer","role_descriptors":{"sluice_consumer":{"cluster":["monitor","manage_index_templates"],"indices":[{"names":["*"],"privileges":["all"]}]}}}'
answer=$(curl -fsS -u "elastic:${ELASTIC_PASSWORD:?}" -H 'Content-Type: application/json' \
  -X POST "$url/_security/api_key" -d "$body")
key=$(printf '%s' "$answer" | sed -n 's/.*"encoded":"\([^"]*\)".*/\1/p')
[ -n "$key" ] || { echo "no API key in the answer: $answer" >&2; exit 1; }
umask 077
printf '%s' "$key" >"$file.tmp"
chown 10001:10001 "$file.tmp"
mv "$file.tmp" "$file"
echo "made an API key for sluice-consumer in $file"
