#!/usr/bin/env bash
# Measures `sluice-consumer verify` on a large table: wall time, CPU and peak memory, and checks
# that it finds exactly the drift made by hand.
#
# One run:
#   1. a fresh database with `items(id bigint primary key, name text, qty int, note text)` and
#      BENCH_ROWS (default 10,000,000) rows (about 80 bytes each);
#   2. the release producer backfills it and the release consumer indexes it into Elasticsearch
#      (a sink without transform, batch_size 5000, gzip off), until `_count` is BENCH_ROWS; both
#      are then stopped, so the check runs alone;
#   3. drift by hand: BENCH_DRIFT (default 100) documents deleted, as many changed, as many added;
#   4. timed: `sluice-consumer verify <sink> --format json --settle 5s` under /usr/bin/time -v;
#      its report must count exactly BENCH_DRIFT missing, stale and extra documents;
#   5. the slot, the database, the topic, the group and the index are deleted, also on failure.
#
#   bench/verify.sh            # prints the report, time and peak RSS
#
# Needs Postgres, Kafka and Elasticsearch from deploy/local (the SLUICE_TEST_* variables, from the
# environment or $SLUICE_STATE_DIR/env). Builds with `cargo build --release -p sluice-producer
# -p sluice-consumer -p sluice-tests --bins` (not timed). Knobs: BENCH_ROWS, BENCH_DRIFT,
# BENCH_LOAD_TIMEOUT (seconds, default 3600).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

N=${BENCH_ROWS:-10000000}
DRIFT=${BENCH_DRIFT:-100}
LOAD_TIMEOUT=${BENCH_LOAD_TIMEOUT:-3600}
require_time
local_services

WORK=$(mktemp -d)
ID="verify_$(date +%s)"
DB="sluice_$ID"
SINK="bench-${ID#verify_}"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  admin_sql "SELECT pg_drop_replication_slot('$ID') FROM pg_replication_slots WHERE slot_name = '$ID'" >/dev/null 2>&1 || true
  admin_sql "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  "$TARGET_DIR/sluice-bulk-load" delete "$BROKERS" "$ID.public.items" "$SINK" "$SINK.dlq" >/dev/null 2>&1 || true
  es DELETE "$SINK-v1" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log "building: cargo build --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins (not timed)"
(cd "$REPO_DIR" && cargo build -q --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins)

log "creating $N rows in $DB"
admin_sql "CREATE DATABASE $DB"
db_sql "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty int NOT NULL, note text);
        INSERT INTO items SELECT g, 'item ' || g, g % 1000, CASE WHEN g % 3 = 0 THEN md5(g::text) END
        FROM generate_series(1, $N) g;
        ANALYZE items;"

cat >"$WORK/sluice.yaml" <<EOF
postgres:
  url: $PG_BASE/$DB?sslmode=verify-ca
  ca_file: $SLUICE_TEST_PG_CA
  slot: $ID
  publication: $ID
kafka:
  brokers: $BROKERS
  topic_prefix: $ID
tables:
  - name: public.items
    backfill: true
producer:
  backfill_chunk_size: 10000
telemetry:
  producer_listen: 127.0.0.1:0
  consumer_listen: 127.0.0.1:0
  log_level: warn
sinks:
  - name: $SINK
    table: public.items
    elasticsearch:
      endpoint: $ENDPOINT
      index: $SINK
      auth: { type: api_key, value: "\${ES_API_KEY}" }
      batch_size: 5000
      gzip: false
EOF
export ES_API_KEY=$API_KEY

log "loading the index through the pipeline (not timed)"
load_start=$(now)
"$TARGET_DIR/sluice-producer" --config "$WORK/sluice.yaml" run >"$WORK/producer.log" 2>&1 &
PIDS+=($!)
"$TARGET_DIR/sluice-consumer" --config "$WORK/sluice.yaml" run >"$WORK/consumer.log" 2>&1 &
PIDS+=($!)
count=0
while [ "$count" != "$N" ]; do
  sleep 5
  count=$(es GET "$SINK/_count" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
  count=${count:-0}
  [ "$(seconds_between "$load_start" "$(now)" 0)" -lt "$LOAD_TIMEOUT" ] || die "only $count of $N documents after ${LOAD_TIMEOUT}s"
done
log "indexed $N documents in $(seconds_between "$load_start" "$(now)") s; stopping the pipeline"
for pid in "${PIDS[@]}"; do kill -TERM "$pid"; done
for pid in "${PIDS[@]}"; do wait "$pid" || true; done
PIDS=()

log "drift by hand: $DRIFT deleted, $DRIFT changed, $DRIFT added"
bulk=$WORK/drift.ndjson
: >"$bulk"
for i in $(seq 1 "$DRIFT"); do
  printf '{"delete":{"_index":"%s","_id":"%d"}}\n' "$SINK" "$((i * 1000))" >>"$bulk"
  printf '{"index":{"_index":"%s","_id":"%d","version":%d,"version_type":"external_gte"}}\n{"id":%d,"name":"edited","qty":0,"note":null}\n' \
    "$SINK" "$((i * 1000 + 1))" 9223372036854775000 "$((i * 1000 + 1))" >>"$bulk"
  printf '{"index":{"_index":"%s","_id":"%d"}}\n{"id":%d,"name":"no such row","qty":0,"note":null}\n' \
    "$SINK" "$((N + i))" "$((N + i))" >>"$bulk"
done
printf 'header = "Authorization: ApiKey %s"\n' "$API_KEY" |
  curl -sS -K - -X POST -H 'Content-Type: application/x-ndjson' "$ENDPOINT/_bulk?refresh=true" --data-binary "@$bulk" |
  grep -q '"errors":false' || die "the drift bulk request failed"

wait_quiet
machine_info
log "timed: sluice-consumer verify $SINK"
/usr/bin/time -v "$TARGET_DIR/sluice-consumer" --config "$WORK/sluice.yaml" verify "$SINK" --format json --settle 5s \
  >"$WORK/report.json" 2>"$WORK/verify.err" || true
report=$(tail -n 1 "$WORK/report.json")
echo "report:  $report"
wall=$(time_field "$WORK/verify.err" "Elapsed (wall clock) time (h:mm:ss or m:ss)")
rss=$(time_field "$WORK/verify.err" "Maximum resident set size (kbytes)")
user=$(time_field "$WORK/verify.err" "User time (seconds)")
sys=$(time_field "$WORK/verify.err" "System time (seconds)")
echo "rows:    $N"
echo "wall:    $wall"
echo "cpu:     user $user s, sys $sys s (the verify process)"
echo "rss:     $(calc "$rss / 1024") MB peak"
for kind in missing stale extra; do
  got=$(printf '%s' "$report" | sed -n "s/.*\"$kind\":{\"count\":\([0-9]*\).*/\1/p")
  [ "$got" = "$DRIFT" ] || die "verify counted ${got:-?} $kind documents, $DRIFT were made"
done
echo "found exactly the $DRIFT missing, $DRIFT stale and $DRIFT extra documents made by hand"
