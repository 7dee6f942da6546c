#!/usr/bin/env bash
# Measures how fast sluice-consumer drains a topic into Elasticsearch (or OpenSearch), against
# L, the best raw `_bulk` rate of the same documents by a minimal loader, and the commit-to-indexed
# latency of the whole pipeline at 1,000 changes/s.
#
# One run:
#   1. pre-load: a fresh database with `items(id bigint primary key, name, email, amount
#      numeric(12,2), quantity int, active bool, created_at timestamptz, note text)` (note: 384 hex
#      characters; about 500 bytes per row, 540-byte documents). sluice-producer (release build,
#      its own topic prefix and slot, 6 partitions: the config default) is started first, so its
#      slot exists before any write; then BENCH_ROWS (default 1,000,000) rows are inserted in
#      transactions of 1,000 rows; once the topic holds BENCH_ROWS messages the producer is
#      stopped;
#   2. L: `sluice-bulk-load sweep` (tests/src/bin/sluice-bulk-load.rs) reads the whole topic into
#      memory, makes each event the document the consumer writes without a transform, and bulk-
#      indexes the first BENCH_SAMPLE (default 100,000) documents into a fresh index for each
#      batch size (500/1000/2000/5000) × concurrency (1/2/4), with plain `index` actions and no gzip
#      (as the consumer by default); then the best setting with gzip; then all documents with
#      the best setting, with and without gzip. L is the better of those two full runs. Bodies
#      are built before the clock starts; only the requests are timed;
#   3. drains: target/release/sluice-consumer run --sink S under /usr/bin/time -v, one new group
#      and fresh index per sink: `default` (batch_size 500, max_in_flight_requests 4, no gzip),
#      `tuned` (the loader's best batch size and concurrency) and `gzip` (the defaults with
#      `gzip: true`); BENCH_SINKS picks some, and may also name `tuned-gzip` (tuned, gzip), `small`
#      (the defaults with `batch_max_bytes` BENCH_SMALL_BYTES, default 1 MiB) and `other` (the defaults, drained by the binary
#      BENCH_OTHER_CONSUMER: a build of another commit or with another allocator, compared in
#      the same invocation; naming BENCH_OTHER_CONSUMER adds `other` to the sinks). Timed from
#      the process start until the group's committed offsets reach the end of every partition (polled every 200 ms; the consumer commits every second),
#      then SIGTERM (a consumer that exits before that fails the run at once, with its log's
#      tail); the index must then hold BENCH_ROWS documents (`_count` after `_refresh`);
#   4. latency: the producer and a fresh consumer process (the `default` sink, its group at the
#      end of the topic, its index recreated empty) run together; after a warm-up of 100 rows and
#      one scrape of /metrics (see below), a PL/pgSQL loop commits 100 single-row transactions
#      every 100 ms (1,000 changes/s) for BENCH_LATENCY_SECONDS (default 60); then the consumer's `sluice_consumer_commit_to_indexed_seconds` summary is read from its
#      /metrics (quantiles over the last 40–60 s: the exporter's rolling window is 3 × 20 s; the
#      mean from _sum/_count covers every event of the run but the warm-up). The consumer folds
#      buffered samples into that window every 5 s (its upkeep thread); /metrics is rendered once
#      after the warm-up and then every 2 s besides, as a Prometheus server would;
#   5. the slot, the database, the topics (with the sinks' dead-letter topics), the groups and the
#      indices are deleted, also when the run fails.
# CPU time of the consumer (time -v), of the cluster's JVM and of the Kafka broker (/proc) is
# sampled around each timed step.
#
#   bench/consumer-drain.sh               # one run, a table at the end
#
# Needs Postgres, Kafka and the cluster from deploy/local; the SLUICE_TEST_* variables are read
# from the environment or from $SLUICE_STATE_DIR/env. Builds with `cargo build --release -p
# sluice-producer -p sluice-consumer -p sluice-tests --bins` (not timed).
# Knobs: BENCH_ROWS, BENCH_TARGET (elasticsearch, the default, with its API key; or opensearch),
# BENCH_SAMPLE, BENCH_BATCHES (500,1000,2000,5000), BENCH_CONCURRENCY (1,2,4), BENCH_SINKS
# ("default tuned gzip"; also `tuned-gzip`, `small`, `other`), BENCH_SMALL_BYTES, BENCH_OTHER_CONSUMER
# (see 3.), BENCH_LATENCY_SECONDS (0 skips the latency step),
# BENCH_DRAIN_TIMEOUT (seconds, default 1800), BENCH_SCRAPE_INTERVAL (seconds; render the
# consumer's /metrics this often during the drains, as a Prometheus server would; default 0: never), BENCH_QUIET_TIMEOUT (see bench/lib.sh),
# BENCH_LOG_DIR (keep the logs and time -v reports there).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

N=${BENCH_ROWS:-1000000}
TARGET=${BENCH_TARGET:-elasticsearch}
SAMPLE=${BENCH_SAMPLE:-100000}
BATCHES=${BENCH_BATCHES:-500,1000,2000,5000}
CONCURRENCY=${BENCH_CONCURRENCY:-1,2,4}
SINKS=${BENCH_SINKS:-default tuned gzip}
SMALL_BYTES=${BENCH_SMALL_BYTES:-1048576}
OTHER_CONSUMER=${BENCH_OTHER_CONSUMER:-}
if [ -n "$OTHER_CONSUMER" ]; then
  [ -x "$OTHER_CONSUMER" ] || die "BENCH_OTHER_CONSUMER: $OTHER_CONSUMER is not an executable"
  case " $SINKS " in *" other "*) ;; *) SINKS="$SINKS other" ;; esac
fi
# A sink named twice would be two sinks of one name in one config, which the consumer refuses.
# shellcheck disable=SC2086 # split into one name per line on purpose
dup=$(printf '%s\n' $SINKS | sort | uniq -d | head -1)
[ -z "$dup" ] || die "BENCH_SINKS names $dup twice; each sink drains once per invocation"
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-60}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-1800}
SCRAPE=${BENCH_SCRAPE_INTERVAL:-0}
SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}
require_time

if [ -z "${SLUICE_TEST_PG_URL:-}" ] || [ -z "${SLUICE_TEST_KAFKA_BROKERS:-}" ]; then
  [ -r "$SLUICE_STATE_DIR/env" ] || die "no $SLUICE_STATE_DIR/env: start the services with deploy/local/up.sh"
  set -a
  # shellcheck disable=SC1091
  . "$SLUICE_STATE_DIR/env"
  set +a
fi
case $TARGET in
  elasticsearch)
    ENDPOINT=${SLUICE_TEST_ELASTICSEARCH_URL:?no SLUICE_TEST_ELASTICSEARCH_URL}
    API_KEY=${SLUICE_TEST_ELASTICSEARCH_API_KEY:?no SLUICE_TEST_ELASTICSEARCH_API_KEY}
    CLUSTER_PID_FILE=$SLUICE_STATE_DIR/elasticsearch/run/elasticsearch.pid
    ;;
  opensearch)
    ENDPOINT=${SLUICE_TEST_OPENSEARCH_URL:?no SLUICE_TEST_OPENSEARCH_URL}
    API_KEY=''
    CLUSTER_PID_FILE=$SLUICE_STATE_DIR/opensearch/run/opensearch.pid
    ;;
  *) die "BENCH_TARGET must be elasticsearch or opensearch" ;;
esac
PSQL=$SLUICE_TEST_PG_BINDIR/psql
BROKERS=$SLUICE_TEST_KAFKA_BROKERS
PG_BASE=${SLUICE_TEST_PG_URL%/*}
LIBPQ_SSL="sslmode=verify-ca&sslrootcert=$SLUICE_TEST_PG_CA"
ADMIN_URL="$PG_BASE/postgres?$LIBPQ_SSL"

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release
PRODUCER=$TARGET_DIR/sluice-producer
CONSUMER=$TARGET_DIR/sluice-consumer
LOADER=$TARGET_DIR/sluice-bulk-load

WORK=$(mktemp -d)
ID="bench_$(date +%s)"
DB="sluice_$ID" SLOT=$ID PUB=$ID PREFIX=$ID TOPIC="$ID.public.items"
DB_URL="$PG_BASE/$DB?$LIBPQ_SSL"
IDX="bench-${ID#bench_}" # prefix of the index and sink names

# What cleanup must remove; set as soon as it exists.
CLEAN_DB='' CLEAN_SLOT='' CLEAN_KAFKA=() PIDS=()

admin_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "$1"; }
db_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$DB_URL" "$@"; }

# es METHOD PATH: a request to the cluster; the API key goes through curl's config on stdin, so
# it is never on a command line.
es() {
  local auth=''
  if [ -n "$API_KEY" ]; then auth="header = \"Authorization: ApiKey $API_KEY\""; fi
  printf '%s\n' "$auth" | curl -sS -K - -X "$1" "$ENDPOINT/$2"
}

cluster_cpu() { if [ -s "$CLUSTER_PID_FILE" ]; then cpu_seconds "$(cat "$CLUSTER_PID_FILE")"; fi; }

# stop_pid PID: SIGTERM, up to 30 s, then SIGKILL.
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  watch_abort
  local pid index
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
  if [ -n "$CLEAN_SLOT" ]; then
    drop_slot admin_sql "$CLEAN_SLOT"
    CLEAN_SLOT=''
  fi
  if [ -n "$CLEAN_DB" ]; then
    admin_sql "DROP DATABASE IF EXISTS $CLEAN_DB WITH (FORCE)" || log "could not drop database $CLEAN_DB"
    CLEAN_DB=''
  fi
  if [ ${#CLEAN_KAFKA[@]} -gt 0 ]; then
    "$LOADER" delete "$BROKERS" "${CLEAN_KAFKA[@]}" >/dev/null 2>>"$WORK/cleanup.err" ||
      log "could not delete every Kafka topic and group: $(tail -n 1 "$WORK/cleanup.err")"
    CLEAN_KAFKA=()
  fi
  # Every index of this run, by name (wildcard deletes are refused by default).
  for index in $(es GET "_cat/indices/$IDX*?h=index" 2>/dev/null | grep "^$IDX" || true); do
    es DELETE "$index" >/dev/null 2>&1 || log "could not delete index $index"
  done
}
trap 'cleanup; rm -rf "$WORK"' EXIT

log "building: cargo build --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins (not timed)"
(cd "$REPO_DIR" && cargo build -q --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins)
for bin in "$PRODUCER" "$CONSUMER" "$LOADER"; do [ -x "$bin" ] || die "no $bin"; done
SOURCE_STATE="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$(git -C "$REPO_DIR" status --porcelain -- consumer producer common proto 2>/dev/null)" ]; then
  SOURCE_STATE+=" with uncommitted changes in consumer/producer/common/proto"
fi
# The version from _nodes (Elasticsearch's integ-test distribution does not serve `GET /`).
BENCH_START=$SECONDS
CLUSTER_VERSION=$(es GET "_nodes/_local?filter_path=nodes.*.version" | jq -r '.nodes[].version' 2>/dev/null || echo '?')

# ---------------------------------------------------------------------------------------------
# 1. Pre-load.
log "database $DB, slot $SLOT, topic $TOPIC, indices $IDX-*"
admin_sql "CREATE DATABASE $DB"
CLEAN_DB=$DB
items_sql | db_sql >/dev/null
db_sql >/dev/null <<'SQL'
-- n rows from id 1, in transactions of `chunk` rows.
CREATE PROCEDURE bench_fill(n bigint, chunk bigint) LANGUAGE plpgsql AS $$
BEGIN
  FOR lo IN 1..n BY chunk LOOP
    INSERT INTO items SELECT * FROM bench_rows(lo, least(lo + chunk - 1, n));
    COMMIT;
  END LOOP;
END
$$;
-- 100 single-row transactions every 100 ms (1,000 changes/s) for `seconds`, ids from `first`.
CREATE PROCEDURE bench_trickle(first bigint, seconds int) LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  i bigint := first;
BEGIN
  FOR tick IN 0..seconds * 10 - 1 LOOP
    FOR k IN 1..100 LOOP
      INSERT INTO items SELECT * FROM bench_rows(i, i);
      COMMIT;
      i := i + 1;
    END LOOP;
    PERFORM pg_sleep(greatest(0, extract(epoch FROM
      t0 + (tick + 1) * interval '100 milliseconds' - clock_timestamp())));
  END LOOP;
END
$$;
SQL
ROW_BYTES=$(db_sql -c "SELECT avg(pg_column_size(r.*))::int FROM bench_rows(1, 1000) r")

# One config for both processes; the sinks are added once the loader has found its best setting.
write_config() {
  cat >"$WORK/sluice.yaml" <<YAML
postgres:
  url: $PG_BASE/$DB?sslmode=verify-ca
  ca_file: $SLUICE_TEST_PG_CA
  slot: $SLOT
  publication: $PUB
kafka:
  brokers: $BROKERS
  topic_prefix: $PREFIX
tables:
  - name: public.items
producer:
  status_interval: 1s
YAML
  [ $# -eq 0 ] && return 0
  echo "sinks:" >>"$WORK/sluice.yaml"
  local spec name batch inflight gzip bytes
  for spec in "$@"; do
    IFS=: read -r name batch inflight gzip bytes <<<"$spec"
    cat >>"$WORK/sluice.yaml" <<YAML
  - name: $IDX-$name
    table: public.items
    elasticsearch:
      endpoint: $ENDPOINT
      index: $IDX-$name
$(if [ -n "$API_KEY" ]; then
      # The config reads the key from the environment: it is never written to the file.
      # shellcheck disable=SC2016
      echo '      auth: { type: api_key, value: "${SLUICE_TEST_ELASTICSEARCH_API_KEY}" }'
    fi)
$(if [ -n "$batch" ]; then echo "      batch_size: $batch"; fi)
$(if [ -n "$inflight" ]; then echo "      max_in_flight_requests: $inflight"; fi)
$(if [ -n "$gzip" ]; then echo "      gzip: $gzip"; fi)
$(if [ -n "$bytes" ]; then echo "      batch_max_bytes: $bytes"; fi)
YAML
  done
}

# start_producer LOG: starts sluice-producer; returns once it streams.
PRODUCER_PID=''
start_producer() {
  "$PRODUCER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run 2>"$1" &
  PRODUCER_PID=$!
  PIDS+=("$PRODUCER_PID")
  for _ in $(seq 1 300); do
    grep -q 'streaming changes' "$1" && return 0
    kill -0 "$PRODUCER_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$1" >&2
  die "the producer did not start streaming"
}
stop_producer() {
  stop_pid "$PRODUCER_PID"
  wait "$PRODUCER_PID" 2>/dev/null || true
  PRODUCER_PID=''
}

# wait_count TOTAL SECONDS: until the topic holds TOTAL messages.
wait_count() {
  local have=0 start=$SECONDS
  while [ $((SECONDS - start)) -lt "$2" ]; do
    have=$("$LOADER" count "$BROKERS" "$TOPIC" 2>/dev/null | cut -d' ' -f1)
    have=${have:-0}
    [ "$have" -ge "$1" ] && return 0
    sleep 0.5
  done
  die "the topic holds $have messages after $2 s, expected $1"
}

write_config
CLEAN_SLOT=$SLOT
CLEAN_KAFKA+=("topic:$TOPIC")
start_producer "$WORK/producer-preload.log"
log "inserting $N rows (transactions of 1,000 rows) while the producer streams them"
t0=$(now)
PGOPTIONS='-c synchronous_commit=off' db_sql -c "CALL bench_fill($N, 1000)"
FILL_S=$(seconds_between "$t0" "$(now)")
wait_count "$N" "$DRAIN_TIMEOUT"
PRELOAD_S=$(seconds_between "$t0" "$(now)")
stop_producer
PARTITIONS=$("$LOADER" count "$BROKERS" "$TOPIC" | cut -d' ' -f2)
log "inserted in ${FILL_S}s; the topic held $N messages after ${PRELOAD_S}s"

# ---------------------------------------------------------------------------------------------
# 2. L: the minimal loader.
wait_quiet
log "loader sweep: $SAMPLE documents per trial, batches $BATCHES × concurrency $CONCURRENCY; then the best over all $N"
CLUSTER_PID=$(cat "$CLUSTER_PID_FILE" 2>/dev/null || echo '')
watch_start
BULK_ENDPOINT=$ENDPOINT BULK_API_KEY=$API_KEY BULK_INDEX_PREFIX="$IDX-bulk" BULK_SAMPLE=$SAMPLE \
  BULK_BATCHES=$BATCHES BULK_CONCURRENCY=$CONCURRENCY BULK_GZIP=off BULK_FULL_GZIP=both \
  BULK_WATCH_PID=$CLUSTER_PID \
  /usr/bin/time -v -o "$WORK/loader.time" "$LOADER" sweep "$BROKERS" "$TOPIC" \
  >"$WORK/loader.out" 2>"$WORK/loader.err" || {
  cat "$WORK/loader.err" >&2
  die "the loader failed"
}
LOADER_DIST=$(watch_stop)
cat "$WORK/loader.out" >&2
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
BEST_LINE=$(grep '^best ' "$WORK/loader.out")
BEST_BATCH=$(field batch "$BEST_LINE")
BEST_CONC=$(field concurrency "$BEST_LINE")
FULL_ON=$(grep '^full gzip=on' "$WORK/loader.out")
FULL_OFF=$(grep '^full gzip=off' "$WORK/loader.out")
L_ON=$(field rate "$FULL_ON")
L_OFF=$(field rate "$FULL_OFF")
for line in "$FULL_ON" "$FULL_OFF"; do
  if [ "$(field errors "$line")" != 0 ] || [ "$(field count "$line")" != "$N" ]; then
    die "a full loader run failed: $line"
  fi
done
if [ "$(calc "($L_ON >= $L_OFF)" 0)" = 1 ]; then L=$L_ON L_MODE=gzip; else L=$L_OFF L_MODE=plain; fi
LOADER_RSS=$(time_field "$WORK/loader.time" 'Maximum resident set size (kbytes)')
DOC_BYTES=$(sed -n 's/.* \([0-9]*\) bytes of JSON.*/\1/p' "$WORK/loader.err")
log "L = $L documents/s ($L_MODE; gzip $L_ON, plain $L_OFF), best batch $BEST_BATCH × concurrency $BEST_CONC"

# ---------------------------------------------------------------------------------------------
# 3. Consumer drains.
SPECS=()
for sink in $SINKS; do
  case $sink in
    default) SPECS+=("default:::") ;;
    tuned) SPECS+=("tuned:$BEST_BATCH:$BEST_CONC:") ;;
    tuned-gzip) SPECS+=("tuned-gzip:$BEST_BATCH:$BEST_CONC:true") ;;
    gzip) SPECS+=("gzip:::true") ;;
    small) SPECS+=("small::::$SMALL_BYTES") ;;
    other)
      [ -n "$OTHER_CONSUMER" ] || die "sink other needs BENCH_OTHER_CONSUMER"
      SPECS+=("other:::")
      ;;
    *) die "unknown sink $sink in BENCH_SINKS" ;;
  esac
  CLEAN_KAFKA+=("topic:$IDX-$sink.dlq" "group:$IDX-$sink")
done
write_config "${SPECS[@]}"

# start_consumer SINK LOG [time -v report]: starts the consumer (under time -v when a report file
# is given); CONSUMER_PID is the consumer itself.
CONSUMER_PID='' TIMED_PID=''
start_consumer() {
  local bin=$CONSUMER
  if [ "$1" = other ]; then bin=$OTHER_CONSUMER; fi
  if [ -n "${3:-}" ]; then
    /usr/bin/time -v -o "$3" "$bin" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run --sink "$IDX-$1" 2>"$2" &
    TIMED_PID=$!
    PIDS+=("$TIMED_PID")
    CONSUMER_PID=''
    while [ -z "$CONSUMER_PID" ] && kill -0 "$TIMED_PID" 2>/dev/null; do
      CONSUMER_PID=$(pgrep -P "$TIMED_PID" || true)
      sleep 0.01
    done
  else
    "$bin" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run --sink "$IDX-$1" 2>"$2" &
    CONSUMER_PID=$! TIMED_PID=$!
  fi
  [ -n "$CONSUMER_PID" ] || die "the consumer did not start: $(tail -n 5 "$2")"
  PIDS+=("$CONSUMER_PID")
}

# scraper LOG INTERVAL: renders the consumer's /metrics every INTERVAL seconds, as a Prometheus
# server would (rendering is also what drains the exporter's buffered histogram samples); runs
# until killed.
scraper() {
  local addr=''
  while [ -z "$addr" ]; do
    addr=$(grep -o 'addr=[0-9.:]*' "$1" 2>/dev/null | head -n 1 | cut -d= -f2 || true)
    sleep 0.05
  done
  while :; do
    curl -s -o /dev/null "http://$addr/metrics" || true
    sleep "$2"
  done
}

# bulk_requests LOG: how many bulk requests the consumer logging to LOG has sent so far (from
# its /metrics; empty if it does not answer).
bulk_requests() {
  local addr
  addr=$(grep -o 'addr=[0-9.:]*' "$1" 2>/dev/null | head -n 1 | cut -d= -f2 || true)
  [ -n "$addr" ] || return 0
  curl -s "http://$addr/metrics" | awk '$1 ~ /^sluice_consumer_bulk_duration_seconds_count/ { n += $2 } END { if (NR) printf "%d", n }'
}

# first_seen FILE PATTERN OUT: writes the time PATTERN first appears in FILE into OUT (waits up
# to 120 s).
first_seen() {
  for _ in $(seq 1 2400); do
    if grep -q "$2" "$1" 2>/dev/null; then
      now >"$3"
      return 0
    fi
    sleep 0.05
  done
  return 1
}

RESULTS=()
DETAILS=()
for spec in "${SPECS[@]}"; do
  sink=${spec%%:*}
  wait_quiet
  log "consumer drain: sink $IDX-$sink ($spec)"
  e0=$(cluster_cpu) k0=$(kafka_cpu)
  rm -f "$WORK/assigned"
  watch_start
  t0=$(now)
  start_consumer "$sink" "$WORK/consumer-$sink.log" "$WORK/consumer-$sink.time"
  first_seen "$WORK/consumer-$sink.log" 'partitions assigned' "$WORK/assigned" &
  seen_pid=$!
  scrape_pid=''
  if [ "$SCRAPE" != 0 ]; then
    scraper "$WORK/consumer-$sink.log" "$SCRAPE" </dev/null >/dev/null 2>&1 &
    scrape_pid=$!
  fi
  "$LOADER" wait-group "$BROKERS" "$TOPIC" "$IDX-$sink" "$DRAIN_TIMEOUT" 2>"$WORK/wait-$sink.err" &
  waiter=$!
  PIDS+=("$waiter")
  # A consumer that exits (a config it refuses, a crash) ends the wait at once, not at the timeout.
  while kill -0 "$waiter" 2>/dev/null; do
    if ! kill -0 "$TIMED_PID" 2>/dev/null; then
      status=0
      wait "$TIMED_PID" 2>/dev/null || status=$?
      tail -n 20 "$WORK/consumer-$sink.log" >&2
      die "sink $sink: the consumer exited (status $status) before it committed the whole topic; its log is above"
    fi
    sleep 0.2
  done
  wait "$waiter" || {
    tail -n 20 "$WORK/consumer-$sink.log" >&2
    die "sink $sink did not commit the whole topic: $(tail -n 1 "$WORK/wait-$sink.err")"
  }
  t1=$(now)
  c_cpu=$(cpu_seconds "$CONSUMER_PID")
  e1=$(cluster_cpu) k1=$(kafka_cpu)
  dist=$(watch_stop)
  # Bulk requests the drain took (the count of the bulk-duration summary), read before the stop.
  requests=$(bulk_requests "$WORK/consumer-$sink.log")
  stop_pid "$CONSUMER_PID"
  wait "$TIMED_PID" 2>/dev/null || log "the consumer exited with status $? after SIGTERM"
  kill "$seen_pid" 2>/dev/null || true
  if [ -n "$scrape_pid" ]; then kill "$scrape_pid" 2>/dev/null || true; fi
  wall=$(seconds_between "$t0" "$t1" 2)
  assigned=$(if [ -s "$WORK/assigned" ]; then seconds_between "$t0" "$(cat "$WORK/assigned")" 2; else echo '?'; fi)
  es POST "$IDX-$sink/_refresh" >/dev/null
  counted=$(es GET "$IDX-$sink/_count" | jq -r .count)
  [ "$counted" = "$N" ] || log "warning: index $IDX-$sink holds $counted documents, expected $N"
  user=$(time_field "$WORK/consumer-$sink.time" 'User time (seconds)')
  sys=$(time_field "$WORK/consumer-$sink.time" 'System time (seconds)')
  rss=$(time_field "$WORK/consumer-$sink.time" 'Maximum resident set size (kbytes)')
  rate=$(calc "$N / $wall" 0)
  IFS=: read -r _ b f g m <<<"$spec"
  RESULTS+=("| sluice-consumer \`$sink\` | ${b:-500}${m:+ (≤ $m bytes)} | ${f:-4} | ${g:-false} | $wall | $rate | **$(calc "$rate / $L" 2)** | $(calc "$rss / 1024" 1) | $(calc "$user + $sys" 1) | $(calc "${e1:-0} - ${e0:-0}" 1) | $(calc "${k1:-0} - ${k0:-0}" 1) | $dist |")
  DETAILS+=("sink $sink: $requests bulk requests ($(if [ "${requests:-0}" -gt 0 ] 2>/dev/null; then calc "$N / $requests" 0; else echo '?'; fi) documents each on average); partitions assigned after ${assigned}s; consumer CPU at the end ${c_cpu}s (user ${user}s, sys ${sys}s over its life); index count $counted; $(grep -c 'WARN' "$WORK/consumer-$sink.log" || true) warnings in its log")
  es DELETE "$IDX-$sink-v1" >/dev/null || log "could not delete index $IDX-$sink-v1"
  log "sink $sink: ${wall}s, $rate documents/s, peak RSS $(calc "$rss / 1024" 1) MB"
done

# The loader's rows, for the same table.
while read -r kind rest; do
  case $kind in
    trial | full)
      line="$kind $rest"
      RESULTS+=("| loader $kind ($(field docs "$line") docs) | $(field batch "$line") | $(field concurrency "$line") | $(field gzip "$line") | $(field seconds "$line") | $(field rate "$line") | | $(if [ "$kind" = full ]; then calc "$LOADER_RSS / 1024" 1; fi) | $(field loader_cpu "$line") | $(field watched_cpu "$line") | | $LOADER_DIST |")
      ;;
  esac
done <"$WORK/loader.out"

# ---------------------------------------------------------------------------------------------
# 4. Latency at 1,000 changes/s.
LATENCY=''
if [ "$LAT_SECONDS" -gt 0 ]; then
  wait_quiet
  log "latency: producer + consumer (sink default), 1,000 changes/s for ${LAT_SECONDS}s"
  start_producer "$WORK/producer-latency.log"
  start_consumer default "$WORK/consumer-latency.log"
  first_seen "$WORK/consumer-latency.log" 'partitions assigned' "$WORK/assigned-latency" ||
    die "the consumer got no partitions: $(tail -n 5 "$WORK/consumer-latency.log")"
  METRICS=$(grep -o 'addr=[0-9.:]*' "$WORK/consumer-latency.log" | head -n 1 | cut -d= -f2)
  # Warm-up: 100 rows, then one scrape. The exporter files samples into its rolling window only
  # when /metrics is rendered, newest first, and drops those older than the first sample it
  # files; so the first render must happen before the measured run, or most of it is lost.
  db_sql -c "INSERT INTO items SELECT * FROM bench_rows($((N + 1)), $((N + 100)))"
  wait_count "$((N + 100))" 60
  "$LOADER" wait-group "$BROKERS" "$TOPIC" "$IDX-default" 60 2>"$WORK/wait-latency.err" ||
    die "the latency warm-up did not finish: $(tail -n 1 "$WORK/wait-latency.err")"
  scraper "$WORK/consumer-latency.log" 2 </dev/null >/dev/null 2>&1 &
  scrape_pid=$!
  warm_mean=$(curl -sS "http://$METRICS/metrics" | awk -v m=sluice_consumer_commit_to_indexed_seconds '
    $1 ~ "^"m"_sum" { s = $2 } $1 ~ "^"m"_count" { c = $2 } END { if (c > 0) printf "%.6f", s / c }')
  sleep 1
  e0=$(cluster_cpu)
  c0=$(cpu_seconds "$CONSUMER_PID") p0=$(cpu_seconds "$PRODUCER_PID")
  watch_start
  t0=$(now)
  db_sql -c "CALL bench_trickle($((N + 101)), $LAT_SECONDS)"
  t1=$(now)
  wait_count "$((N + 100 + LAT_SECONDS * 1000))" 120
  "$LOADER" wait-group "$BROKERS" "$TOPIC" "$IDX-default" 120 2>"$WORK/wait-latency.err" ||
    die "the latency run did not finish: $(tail -n 1 "$WORK/wait-latency.err")"
  lat_dist=$(watch_stop)
  c1=$(cpu_seconds "$CONSUMER_PID") p1=$(cpu_seconds "$PRODUCER_PID")
  e1=$(cluster_cpu)
  kill "$scrape_pid" 2>/dev/null || true
  curl -sS "http://$METRICS/metrics" >"$WORK/metrics.txt"
  rss_now=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$CONSUMER_PID/status")
  stop_pid "$CONSUMER_PID"
  stop_producer
  metric=sluice_consumer_commit_to_indexed_seconds
  q() { awk -v m="$metric" -v q="$1" '$1 ~ "^"m"\\{" && $1 ~ "quantile=\""q"\"" { printf "%.3f", $2 }' "$WORK/metrics.txt"; }
  # _sum and _count cover every event of the process; take the warm-up's out of the mean.
  total=$(awk -v m="${metric}_count" '$1 ~ "^"m { print $2 }' "$WORK/metrics.txt")
  sum=$(awk -v m="${metric}_sum" '$1 ~ "^"m { print $2 }' "$WORK/metrics.txt")
  total=$((${total:-100} - 100))
  sum=$(calc "${sum:-0} - 100 * ${warm_mean:-0}" 6)
  writer_s=$(seconds_between "$t0" "$t1" 2)
  LATENCY="| $(calc "$LAT_SECONDS * 1000 / $writer_s" 0) | ${total:-?} | $(q 0.5) | $(q 0.9) | $(q 0.99) | $(q 1) | $(calc "${sum:-0} / ${total:-1}" 3) | $(calc "($c1 - $c0) / $writer_s * 100" 0)% | $(calc "($p1 - $p0) / $writer_s * 100" 0)% | $(calc "(${e1:-0} - ${e0:-0}) / $writer_s * 100" 0)% | $rss_now | $lat_dist |"
  log "latency: p50 $(q 0.5)s, p99 $(q 0.99)s"
  grep "^$metric" "$WORK/metrics.txt" >&2 || true
fi

if [ -n "${BENCH_LOG_DIR:-}" ]; then
  mkdir -p "$BENCH_LOG_DIR"
  cp "$WORK"/*.log "$WORK"/*.time "$WORK"/loader.out "$WORK"/loader.err "$BENCH_LOG_DIR/" 2>/dev/null || true
  cp "$WORK/metrics.txt" "$BENCH_LOG_DIR/" 2>/dev/null || true
fi

echo
machine_info
echo "source:  $SOURCE_STATE"
echo "cluster: $TARGET $CLUSTER_VERSION at $ENDPOINT"
echo "data:    $N rows of ~$ROW_BYTES bytes (pg_column_size), documents $(calc "${DOC_BYTES:-0} / $N" 0) bytes of JSON on average; topic $TOPIC, $PARTITIONS partitions"
echo "preload: inserted in ${FILL_S}s (1,000-row transactions), all in the topic after ${PRELOAD_S}s"
echo "scrape:  consumer /metrics rendered during the drains: $(if [ "$SCRAPE" = 0 ]; then echo never; else echo "every ${SCRAPE}s"; fi)"
echo "L:       $L documents/s ($L_MODE; full runs: gzip $L_ON, plain $L_OFF), best setting batch $BEST_BATCH × concurrency $BEST_CONC"
echo
echo "| writer | batch | in flight | gzip | wall (s) | documents/s | ÷ L | peak RSS (MB) | writer CPU (s) | cluster CPU (s) | Kafka CPU (s) | other builds/tests running |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${RESULTS[@]}"
echo
printf '%s\n' "${DETAILS[@]}"
if [ -n "$LATENCY" ]; then
  echo
  echo "| changes/s | events measured | p50 (s) | p90 (s) | p99 (s) | max (s) | mean (s) | consumer CPU | producer CPU | cluster CPU | consumer peak RSS (MB) | other builds/tests running |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  echo "$LATENCY"
fi
echo
echo "benchmark wall time: $((SECONDS - BENCH_START)) s (after the build, before the cleanup)"
