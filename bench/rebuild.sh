#!/usr/bin/env bash
# Measures `sluice-consumer rebuild` of a large index while the live sink runs: the time to the
# swap, the rebuild's events/s against the consumer's own drain rate of the same topic in the same
# run, and a writer's commit → visible-through-the-alias latency with and without a rebuild.
#
# One run:
#   1. a fresh database with `items(id bigint primary key, name text, qty int, note text)`,
#      BENCH_ROWS (default 1,000,000) rows and 20 probe rows (ids -1 … -20); the release producer
#      backfills it into a fresh topic (3 partitions) and is left running;
#   2. drain: the release consumer (the sink with default settings: batch_size 500, 4 requests in
#      flight, no gzip) starts on the full topic; timed until its group has committed every
#      partition's end. Drain rate = messages ÷ that time;
#   3. a writer commits BENCH_WRITE_RATE (default 500) single-row updates/s of random rows for the
#      rest of the run; after 10 s, `sluice-alias-probe` (tests/src/bin) measures commit →
#      visible through the alias for BENCH_PROBE_SECONDS (default 30) without a rebuild;
#   4. timed: `sluice-consumer rebuild <sink>` under /usr/bin/time -v, with the probe running
#      from its start to its end. Its stderr is timestamped: fill time = start → "is
#      write-blocked", time to swap = start → "now serves". Rebuild rate = messages when it
#      started ÷ fill time; the ratio is rebuild rate ÷ drain rate;
#   5. the index must equal the alias's new index count, the slot, the database, the topic, the
#      groups and the indices are deleted, also on failure.
#
#   bench/rebuild.sh            # prints the figures for docs/benchmarks.md
#
# Needs Postgres, Kafka and Elasticsearch from deploy/local (the SLUICE_TEST_* variables, from the
# environment or $SLUICE_STATE_DIR/env). Builds with `cargo build --release -p sluice-producer
# -p sluice-consumer -p sluice-tests --bins` (not timed).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

N=${BENCH_ROWS:-1000000}
WRITE_RATE=${BENCH_WRITE_RATE:-500}
PROBE_SECONDS=${BENCH_PROBE_SECONDS:-30}
LOAD_TIMEOUT=${BENCH_LOAD_TIMEOUT:-3600}
require_time
local_services

WORK=$(mktemp -d)
ID="rebuild_$(date +%s)"
DB="sluice_$ID"
SINK="bench-${ID#rebuild_}"
TOPIC="$ID.public.items"
count_of() { es GET "$1/_count" | sed -n 's/.*"count":\([0-9]*\).*/\1/p'; }

PIDS=()
cleanup() {
  watch_abort
  local pid
  touch "$WORK/probe.stop" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  drop_slot admin_sql "$ID"
  admin_sql "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  "$TARGET_DIR/sluice-bulk-load" delete "$BROKERS" "topic:$TOPIC" "topic:$SINK.dlq" \
    "group:$SINK" "group:$SINK.rebuild-v2" >/dev/null 2>&1 || true
  es DELETE "$SINK-v1" >/dev/null 2>&1 || true
  es DELETE "$SINK-v2" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log "building: cargo build --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins (not timed)"
(cd "$REPO_DIR" && cargo build -q --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins)
SOURCE_STATE="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"

log "creating $N rows in $DB"
admin_sql "CREATE DATABASE $DB"
db_sql "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty int NOT NULL, note text);
        INSERT INTO items SELECT g, 'item ' || g, g % 1000, CASE WHEN g % 3 = 0 THEN md5(g::text) END
        FROM generate_series(-20, $N) g WHERE g <> 0;
        ANALYZE items;"
# `rate` single-row updates per second of random rows, for `seconds`.
db_sql "CREATE PROCEDURE bench_write(rate int, seconds int, n bigint) LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp(); target bigint;
BEGIN
  FOR tick IN 0..seconds * 10 - 1 LOOP
    FOR k IN 1..rate / 10 LOOP
      -- The key first: random() in the WHERE clause is volatile, evaluated per row, and would
      -- turn every update into a scan of the whole table.
      target := 1 + floor(random() * n)::bigint;
      UPDATE items SET qty = qty + 1, note = 'w' || tick WHERE id = target;
      COMMIT;
    END LOOP;
    PERFORM pg_sleep(greatest(0, extract(epoch FROM
      t0 + (tick + 1) * interval '100 milliseconds' - clock_timestamp())));
  END LOOP;
END \$\$"

cat >"$WORK/sluice.yaml" <<EOF
postgres:
  url: $PG_BASE/$DB?sslmode=verify-ca
  ca_file: $SLUICE_TEST_PG_CA
  slot: $ID
  publication: $ID
kafka:
  brokers: $BROKERS
  topic_prefix: $ID
  partitions: 3
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
EOF
export ES_API_KEY=$API_KEY

log "backfilling into $TOPIC (not timed)"
"$TARGET_DIR/sluice-producer" --config "$WORK/sluice.yaml" run >"$WORK/producer.log" 2>&1 &
PIDS+=($!)
TOTAL=$((N + 20))
start=$SECONDS
while :; do
  # The topic does not exist until the producer made it: a failed count is "none yet".
  have=$({ "$TARGET_DIR/sluice-bulk-load" count "$BROKERS" "$TOPIC" 2>/dev/null || true; } | cut -d' ' -f1)
  [ "${have:-0}" -ge "$TOTAL" ] && break
  [ $((SECONDS - start)) -lt "$LOAD_TIMEOUT" ] || die "the topic holds ${have:-0} of $TOTAL messages"
  sleep 2
done
MESSAGES=$have

wait_quiet
log "drain: the consumer over $MESSAGES messages"
watch_start
t0=$(now)
"$TARGET_DIR/sluice-consumer" --config "$WORK/sluice.yaml" run >"$WORK/consumer.log" 2>&1 &
PIDS+=($!)
"$TARGET_DIR/sluice-bulk-load" wait-group "$BROKERS" "$TOPIC" "$SINK" "$LOAD_TIMEOUT"
DRAIN_S=$(seconds_between "$t0" "$(now)" 2)
DRAIN_DIST=$(watch_stop)
DRAIN_RATE=$(calc "$MESSAGES / $DRAIN_S" 0)
log "drained in ${DRAIN_S}s: $DRAIN_RATE events/s (disturbed: $DRAIN_DIST)"

log "writer: $WRITE_RATE updates/s; probe without a rebuild for ${PROBE_SECONDS}s"
PGOPTIONS='-c synchronous_commit=off' db_sql "CALL bench_write($WRITE_RATE, 36000, $N)" >/dev/null 2>&1 &
PIDS+=($!)
sleep 10
PROBE_API_KEY=$API_KEY "$TARGET_DIR/sluice-alias-probe" "$PG_BASE/$DB" "$ENDPOINT" "$SINK" "$PROBE_SECONDS" \
  >"$WORK/probe-base.out"
BASE_PROBE=$(cat "$WORK/probe-base.out")
log "without a rebuild: $BASE_PROBE"

wait_quiet
MESSAGES_AT_START=$("$TARGET_DIR/sluice-bulk-load" count "$BROKERS" "$TOPIC" | cut -d' ' -f1)
log "rebuild: $MESSAGES_AT_START messages in the topic"
PROBE_STOP_FILE="$WORK/probe.stop" PROBE_API_KEY=$API_KEY \
  "$TARGET_DIR/sluice-alias-probe" "$PG_BASE/$DB" "$ENDPOINT" "$SINK" 36000 >"$WORK/probe-rebuild.out" &
PROBE_PID=$!
PIDS+=("$PROBE_PID")
watch_start
t0=$(now)
/usr/bin/time -v -o "$WORK/rebuild.time" "$TARGET_DIR/sluice-consumer" --config "$WORK/sluice.yaml" \
  rebuild "$SINK" 2>&1 >"$WORK/rebuild.out" |
  while IFS= read -r line; do printf '%s %s\n' "$(now)" "$line"; done >"$WORK/rebuild.err"
REBUILD_S=$(seconds_between "$t0" "$(now)" 2)
REBUILD_DIST=$(watch_stop)
touch "$WORK/probe.stop"
wait "$PROBE_PID" || true
REBUILD_PROBE=$(cat "$WORK/probe-rebuild.out")
grep -q 'now serves' "$WORK/rebuild.err" || {
  cat "$WORK/rebuild.err" >&2
  die "the rebuild did not swap"
}
at() { awk -v t0="$t0" -v pat="$1" 'index($0, pat) { printf "%.2f", $1 - t0; exit }' "$WORK/rebuild.err"; }
FILL_S=$(at 'is write-blocked')
SWAP_S=$(at 'now serves')
REBUILD_RATE=$(calc "$MESSAGES_AT_START / $FILL_S" 0)
RATIO=$(calc "$REBUILD_RATE / $DRAIN_RATE" 2)
BLOCKED_S=$(calc "$SWAP_S - $FILL_S" 2)
ALIAS_COUNT=$(count_of "$SINK")
V2_COUNT=$(count_of "$SINK-v2")
[ "$ALIAS_COUNT" -ge "$TOTAL" ] || die "the alias serves $ALIAS_COUNT documents, expected $TOTAL"
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo
machine_info
echo "source:  $SOURCE_STATE"
echo "rows:    $N (+20 probe rows), topic $MESSAGES_AT_START messages when the rebuild started, 3 partitions"
echo "drain:   ${DRAIN_S}s, $DRAIN_RATE events/s (other builds/tests: $DRAIN_DIST)"
echo "rebuild: fill ${FILL_S}s ($REBUILD_RATE events/s), swap at ${SWAP_S}s (blocked ${BLOCKED_S}s), exit at ${REBUILD_S}s, peak RSS $(time_field "$WORK/rebuild.time" 'Maximum resident set size (kbytes)') kB (other builds/tests: $REBUILD_DIST)"
echo "ratio:   rebuild / consumer drain = $RATIO"
echo "latency: commit → visible through the alias at $WRITE_RATE writes/s: p99 $(field p99 "$BASE_PROBE") s without a rebuild ($BASE_PROBE), p99 $(field p99 "$REBUILD_PROBE") s during it ($REBUILD_PROBE)"
echo "counts:  alias $ALIAS_COUNT, $SINK-v2 $V2_COUNT"
echo "the rebuild's stderr, seconds from its start:"
awk -v t0="$t0" '{ t = $1; sub(/^[^ ]+ /, ""); printf "  %7.2f  %s\n", t - t0, $0 }' "$WORK/rebuild.err"
