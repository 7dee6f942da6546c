#!/usr/bin/env bash
# Measures how fast sluice-consumer dead-letters a flood of events the cluster rejects, against
# how fast the same consumer indexes the same events on the same machine, and how many log lines
# the flood writes.
#
# One run:
#   1. pre-load: a fresh database with `items(id bigint primary key, amount text, note text)`
#      (amount is 'n/a' in every row, note 200 hex characters); sluice-producer (release build,
#      its own topic prefix and slot) streams BENCH_ROWS (default 200,000) inserted rows, in
#      transactions of 1,000 rows, into the topic, then is stopped;
#   2. index: `sluice-consumer run --sink <index>` drains the topic into a fresh index with
#      dynamic mapping (every document is indexed); timed from the process start until the
#      group's committed offsets reach the end of every partition;
#   3. flood: the same for a second sink whose index maps `amount` as `long`: every document is
#      rejected (`document_parsing_exception`) and dead-lettered; timed the same way. The
#      dead-letter topic must then hold BENCH_ROWS letters, and the log's lines are counted
#      (all, WARN, and "events dead-lettered");
#   4. the slot, the database, the topics, the groups and the indices are deleted, also when the
#      run fails.
# Goal (docs/benchmarks.md): dead-letter rate ≥ 0.5 × index rate; log lines ≤ 1 per batch.
#
#   bench/consumer-flood.sh
#
# Needs Postgres, Kafka and Elasticsearch from deploy/local; the SLUICE_TEST_* variables are read
# from the environment or from $SLUICE_STATE_DIR/env. Builds with `cargo build --release -p
# sluice-producer -p sluice-consumer -p sluice-tests --bins` (not timed).
# Knobs: BENCH_ROWS, BENCH_PROFILE (release, the default, or debug: the ratio compares two runs
# of the same build), BENCH_DRAIN_TIMEOUT (seconds, default 900), BENCH_QUIET_TIMEOUT (see
# bench/lib.sh), BENCH_LOG_DIR (keep the logs there).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

N=${BENCH_ROWS:-200000}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-900}
BATCH=500 # the consumer's default batch_size
SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}

if [ -z "${SLUICE_TEST_PG_URL:-}" ] || [ -z "${SLUICE_TEST_KAFKA_BROKERS:-}" ]; then
  [ -r "$SLUICE_STATE_DIR/env" ] || die "no $SLUICE_STATE_DIR/env: start the services with deploy/local/up.sh"
  set -a
  # shellcheck disable=SC1091
  . "$SLUICE_STATE_DIR/env"
  set +a
fi
ENDPOINT=${SLUICE_TEST_ELASTICSEARCH_URL:?no SLUICE_TEST_ELASTICSEARCH_URL}
API_KEY=${SLUICE_TEST_ELASTICSEARCH_API_KEY:?no SLUICE_TEST_ELASTICSEARCH_API_KEY}
PSQL=$SLUICE_TEST_PG_BINDIR/psql
BROKERS=$SLUICE_TEST_KAFKA_BROKERS
PG_BASE=${SLUICE_TEST_PG_URL%/*}
LIBPQ_SSL="sslmode=verify-ca&sslrootcert=$SLUICE_TEST_PG_CA"
ADMIN_URL="$PG_BASE/postgres?$LIBPQ_SSL"

PROFILE=${BENCH_PROFILE:-release}
case $PROFILE in
  release) BUILD_FLAGS=(--release) ;;
  debug) BUILD_FLAGS=() ;;
  *) die "BENCH_PROFILE must be release or debug" ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/$PROFILE
PRODUCER=$TARGET_DIR/sluice-producer
CONSUMER=$TARGET_DIR/sluice-consumer
LOADER=$TARGET_DIR/sluice-bulk-load

WORK=$(mktemp -d)
ID="flood_$(date +%s)"
DB="sluice_$ID" SLOT=$ID PREFIX=$ID TOPIC="$ID.public.items"
IDX="flood-${ID#flood_}"
CLEAN_DB='' CLEAN_SLOT='' PIDS=()

admin_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "$1"; }
db_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$PG_BASE/$DB?$LIBPQ_SSL" "$@"; }
es() { printf 'header = "Authorization: ApiKey %s"\n' "$API_KEY" | curl -sS -K - -X "$1" "$ENDPOINT/$2"; }

cleanup() {
  local pid index
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$CLEAN_SLOT" ]; then
    drop_slot admin_sql "$CLEAN_SLOT"
  fi
  if [ -n "$CLEAN_DB" ]; then admin_sql "DROP DATABASE IF EXISTS $CLEAN_DB WITH (FORCE)" || true; fi
  "$LOADER" delete "$BROKERS" "topic:$TOPIC" "topic:$IDX-index.dlq" "topic:$IDX-flood.dlq" \
    "group:$IDX-index" "group:$IDX-flood" >/dev/null 2>&1 || log "could not delete the topics and groups"
  for index in $(es GET "_cat/indices/$IDX*?h=index" 2>/dev/null | grep "^$IDX" || true); do
    es DELETE "$index" >/dev/null 2>&1 || log "could not delete index $index"
  done
}
trap 'cleanup; rm -rf "$WORK"' EXIT

log "building: cargo build ${BUILD_FLAGS[*]} -p sluice-producer -p sluice-consumer -p sluice-tests --bins (not timed)"
(cd "$REPO_DIR" && cargo build -q "${BUILD_FLAGS[@]}" -p sluice-producer -p sluice-consumer -p sluice-tests --bins)
SOURCE_STATE="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$(git -C "$REPO_DIR" status --porcelain -- consumer common proto 2>/dev/null)" ]; then
  SOURCE_STATE+=" with uncommitted changes"
fi

admin_sql "CREATE DATABASE $DB"
CLEAN_DB=$DB
db_sql -c "CREATE TABLE items (id bigint PRIMARY KEY, amount text NOT NULL, note text NOT NULL)"
cat >"$WORK/sluice.yaml" <<YAML
postgres:
  url: $PG_BASE/$DB?sslmode=verify-ca
  ca_file: $SLUICE_TEST_PG_CA
  slot: $SLOT
  publication: $ID
kafka:
  brokers: $BROKERS
  topic_prefix: $PREFIX
tables:
  - name: public.items
sinks:
  - name: $IDX-index
    table: public.items
    elasticsearch:
      endpoint: $ENDPOINT
      index: $IDX-index
      auth: { type: api_key, value: "\${SLUICE_TEST_ELASTICSEARCH_API_KEY}" }
  - name: $IDX-flood
    table: public.items
    elasticsearch:
      endpoint: $ENDPOINT
      index: $IDX-flood
      auth: { type: api_key, value: "\${SLUICE_TEST_ELASTICSEARCH_API_KEY}" }
      mappings: { properties: { amount: { type: long } } }
YAML

# 1. Pre-load.
CLEAN_SLOT=$SLOT
"$PRODUCER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run 2>"$WORK/producer.log" &
producer=$!
PIDS+=("$producer")
for _ in $(seq 1 300); do
  grep -q 'streaming changes' "$WORK/producer.log" && break
  sleep 0.1
done
grep -q 'streaming changes' "$WORK/producer.log" || die "the producer did not start: $(tail -n 5 "$WORK/producer.log")"
log "inserting $N rows"
db_sql -c "INSERT INTO items SELECT g, 'n/a', repeat(md5(g::text), 6) || substr(md5(g::text), 1, 8) FROM generate_series(1, $N) g"
for _ in $(seq 1 600); do
  have=$("$LOADER" count "$BROKERS" "$TOPIC" 2>/dev/null | cut -d' ' -f1)
  [ "${have:-0}" -ge "$N" ] && break
  sleep 0.5
done
[ "${have:-0}" -ge "$N" ] || die "the topic holds ${have:-0} messages, expected $N"
kill -TERM "$producer"
wait "$producer" 2>/dev/null || true

# drain SINK: runs the consumer for SINK until its group committed the whole topic; prints the
# seconds it took.
drain() {
  local sink=$IDX-$1 t0 t1 pid
  wait_quiet
  watch_start
  t0=$(now)
  "$CONSUMER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run --sink "$sink" 2>"$WORK/consumer-$1.log" &
  pid=$!
  PIDS+=("$pid")
  "$LOADER" wait-group "$BROKERS" "$TOPIC" "$sink" "$DRAIN_TIMEOUT" 2>"$WORK/wait-$1.err" ||
    die "sink $sink did not commit the whole topic: $(tail -n 1 "$WORK/wait-$1.err")"
  t1=$(now)
  echo "$(watch_stop)" >"$WORK/disturbed-$1"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  seconds_between "$t0" "$t1" 2
}

# 2. and 3.
log "index: sink $IDX-index"
INDEX_S=$(drain index)
es POST "$IDX-index/_refresh" >/dev/null
INDEXED=$(es GET "$IDX-index/_count" | jq -r .count)
log "flood: sink $IDX-flood"
FLOOD_S=$(drain flood)
LETTERS=$("$LOADER" count "$BROKERS" "$IDX-flood.dlq" | cut -d' ' -f1)
es POST "$IDX-flood/_refresh" >/dev/null
FLOOD_DOCS=$(es GET "$IDX-flood/_count" | jq -r .count)
LINES=$(wc -l <"$WORK/consumer-flood.log")
WARNS=$(grep -c 'WARN' "$WORK/consumer-flood.log" || true)
LETTER_LINES=$(grep -c 'events dead-lettered' "$WORK/consumer-flood.log" || true)
# Each "events dead-lettered" line carries its batch's count (events=N): their sum must be every
# event, and none may exceed the batch size.
read -r LETTER_SUM LETTER_MAX < <(sed 's/\x1b\[[0-9;]*m//g' "$WORK/consumer-flood.log" |
  grep 'events dead-lettered' | grep -o 'events=[0-9]*' | cut -d= -f2 |
  awk '{ s += $1; if ($1 > m) m = $1 } END { print s + 0, m + 0 }')
[ "$INDEXED" = "$N" ] || log "warning: index $IDX-index holds $INDEXED documents, expected $N"
[ "$LETTERS" = "$N" ] || log "warning: the dead-letter topic holds $LETTERS letters, expected $N"

if [ -n "${BENCH_LOG_DIR:-}" ]; then
  mkdir -p "$BENCH_LOG_DIR"
  cp "$WORK"/*.log "$BENCH_LOG_DIR/"
fi

INDEX_RATE=$(calc "$N / $INDEX_S" 0)
FLOOD_RATE=$(calc "$N / $FLOOD_S" 0)
BATCHES=$(((N + BATCH - 1) / BATCH))
echo
machine_info
echo "source:  $SOURCE_STATE ($PROFILE build)"
echo "data:    $N rows; every document's \`amount\` ('n/a') conflicts with the flood index's long mapping"
echo
echo "| run | wall (s) | events/s | result | log lines (WARN, \"events dead-lettered\") | other builds/tests running |"
echo "|---|---:|---:|---|---|---|"
echo "| index (dynamic mapping) | $INDEX_S | $INDEX_RATE | $INDEXED documents | $(wc -l <"$WORK/consumer-index.log") | $(cat "$WORK/disturbed-index") |"
echo "| flood (every document rejected) | $FLOOD_S | $FLOOD_RATE | $LETTERS dead letters, $FLOOD_DOCS documents | $LINES ($WARNS, $LETTER_LINES) | $(cat "$WORK/disturbed-flood") |"
echo
echo "dead-letter rate / index rate: $(calc "$FLOOD_RATE / $INDEX_RATE" 2) (goal ≥ 0.5)"
echo "\"events dead-lettered\" lines: $LETTER_LINES, counting $LETTER_SUM events (at most $LETTER_MAX per line, batch_size $BATCH): one line per batch sent"
echo "log lines: $LINES in all, $(calc "$LINES / $LETTER_LINES" 3) per batch sent, $(calc "$LINES / $BATCHES" 3) per $BATCH events (goal ≤ 1 per batch)"
