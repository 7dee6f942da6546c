#!/usr/bin/env bash
# Measures how fast sluice-producer backfills a table into Kafka, against reading the same table
# with `COPY (SELECT …) TO STDOUT (FORMAT binary)` to /dev/null (the read limit: Postgres's own
# fastest way out, nothing done with the bytes).
#
# One run, with no other producer on the database:
#   1. a fresh database with `rows(id bigint primary key, payload text)`, BENCH_ROWS rows
#      (default 5,000,000) of 480 hex characters (15 md5s, so compression cannot cheat): about
#      500 bytes per row on the wire; then VACUUM ANALYZE, so neither reader sets hint bits;
#   2. COPY (SELECT id, payload FROM rows ORDER BY id) TO STDOUT (FORMAT binary) > /dev/null with
#      psql, twice (the first warms the cache); the second is the read limit;
#   3. target/release/sluice-producer run with `backfill: true` on the table (the config's
#      chunk sizing unless BENCH_CHUNK sets `backfill_chunk_size` (rows, at most) or
#      BENCH_CHUNK_BYTES `backfill_chunk_bytes`; 6 partitions; no rate limit) under /usr/bin/time -v, until
#      sluice.backfills says `done` (polled every 200 ms); the backfill's rate is rows / the
#      time between the producer's start and `done`; then SIGTERM and the peak RSS;
#   4. the topic's messages are counted (they must be BENCH_ROWS), then the slot, the database
#      and the topic are dropped (also when the run fails).
# Around each timed step it also reads the CPU time of the whole Postgres server (postmaster,
# live and ended backends: `postgres_cpu` in lib.sh) and of the Kafka broker, and reports how many
# cores the reader, Postgres and Kafka kept busy together: near 2 on this machine means the run
# was bound by CPU, not by waiting.
#
#   bench/producer-backfill.sh
#
# Needs Postgres and Kafka from deploy/local (`eval "$(deploy/local/up.sh postgres kafka)"`);
# their SLUICE_TEST_* variables are read from the environment or from the running services.
# Builds the producer with `cargo build --release -p sluice-producer` (not timed).
# Knobs: BENCH_ROWS, BENCH_CHUNK, BENCH_CHUNK_BYTES, BENCH_COMPRESSION (`kafka.compression`, default lz4 as the config's), BENCH_SSLMODE (default verify-ca with the test CA; `disable` for
# plain TCP), BENCH_TIMEOUT (seconds, default 3600), BENCH_QUIET_TIMEOUT (see bench/lib.sh),
# BENCH_LOG_DIR (keep the producer log and time -v report there), BENCH_PERF (a file: record a
# `perf record -g` profile of the producer during the backfill there; the run is then not a clean
# measurement).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

N=${BENCH_ROWS:-5000000}
CHUNK=${BENCH_CHUNK:-}
CHUNK_BYTES=${BENCH_CHUNK_BYTES:-}
# What the log and the report say about the chunks: the config's defaults unless set.
CHUNKS="backfill_chunk_size ${CHUNK:-default}, backfill_chunk_bytes ${CHUNK_BYTES:-default}"
COMPRESSION=${BENCH_COMPRESSION:-lz4}
SSLMODE=${BENCH_SSLMODE:-verify-ca}
TIMEOUT=${BENCH_TIMEOUT:-3600}
SLUICE_CACHE_DIR=${SLUICE_CACHE_DIR:-/var/cache/sluice}
KAFKA_LIBS=$SLUICE_CACHE_DIR/kafka/${SLUICE_KAFKA_VERSION:-4.4.0}/libs
require_time

if [ -z "${SLUICE_TEST_PG_URL:-}" ]; then
  pg_env=$("$REPO_DIR/deploy/local/postgres.sh" env) ||
    die "Postgres is not running: eval \"\$(deploy/local/up.sh postgres kafka)\""
  eval "$pg_env"
fi
if [ -z "${SLUICE_TEST_KAFKA_BROKERS:-}" ]; then
  kafka_env=$("$REPO_DIR/deploy/local/kafka.sh" env) ||
    die "Kafka is not running: eval \"\$(deploy/local/up.sh postgres kafka)\""
  eval "$kafka_env"
fi
PSQL=$SLUICE_TEST_PG_BINDIR/psql
BROKERS=$SLUICE_TEST_KAFKA_BROKERS
[ -f "$KAFKA_LIBS/kafka-clients-${SLUICE_KAFKA_VERSION:-4.4.0}.jar" ] || die "no Kafka jars in $KAFKA_LIBS"
JAVA=java
if [ -n "${JAVA_HOME:-}" ]; then JAVA=$JAVA_HOME/bin/java; fi

PG_BASE=${SLUICE_TEST_PG_URL%/*}
LIBPQ_SSL="sslmode=$SSLMODE"
case $SSLMODE in
  verify-ca | verify-full) LIBPQ_SSL+="&sslrootcert=$SLUICE_TEST_PG_CA" ;;
esac
ADMIN_URL="$PG_BASE/postgres?$LIBPQ_SSL"
WORK=$(mktemp -d)

CLEAN_DB='' CLEAN_SLOT='' CLEAN_TOPIC='' PRODUCER_PID=''
admin_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "$1"; }

cleanup() {
  watch_abort
  if [ -n "$PRODUCER_PID" ] && kill -0 "$PRODUCER_PID" 2>/dev/null; then
    kill -TERM "$PRODUCER_PID" 2>/dev/null || true
    sleep 2
    kill -KILL "$PRODUCER_PID" 2>/dev/null || true
  fi
  if [ -n "$CLEAN_SLOT" ]; then
    drop_slot admin_sql "$CLEAN_SLOT"
  fi
  if [ -n "$CLEAN_DB" ]; then
    admin_sql "DROP DATABASE IF EXISTS $CLEAN_DB WITH (FORCE)" || log "could not drop database $CLEAN_DB"
  fi
  if [ -n "$CLEAN_TOPIC" ]; then
    kafka_tool delete "$CLEAN_TOPIC" >/dev/null 2>>"$WORK/kafka-tool.err" || log "could not delete topic $CLEAN_TOPIC"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

build_producer

id="bench_bf_$(date +%s)"
db="sluice_$id" slot="${id}" topic="$id.public.rows"
db_url="$PG_BASE/$db?$LIBPQ_SSL"

log "database $db: filling $N rows of ~500 bytes"
admin_sql "CREATE DATABASE $db"
CLEAN_DB=$db
t0=$(now)
"$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$db_url" >/dev/null <<SQL
CREATE TABLE rows (id bigint PRIMARY KEY, payload text);
INSERT INTO rows SELECT g, md5(g || 'a') || md5(g || 'b') || md5(g || 'c') || md5(g || 'd')
  || md5(g || 'e') || md5(g || 'f') || md5(g || 'g') || md5(g || 'h') || md5(g || 'i')
  || md5(g || 'j') || md5(g || 'k') || md5(g || 'l') || md5(g || 'm') || md5(g || 'n') || md5(g || 'o')
  FROM generate_series(1, $N) g;
VACUUM ANALYZE rows;
SQL
fill_s=$(seconds_between "$t0" "$(now)")
table_mb=$("$PSQL" -X -At "$db_url" -c "SELECT round(pg_table_size('rows') / 1048576.0)")
log "filled in ${fill_s}s: table $table_mb MB"

# (a) COPY … (FORMAT binary) to /dev/null: warm-up, then timed.
copy_sql="COPY (SELECT id, payload FROM rows ORDER BY id) TO STDOUT (FORMAT binary)"
"$PSQL" -X -q "$db_url" -c "$copy_sql" >/dev/null
wait_quiet
log "COPY (FORMAT binary) to /dev/null"
watch_start
c_pg0=$(postgres_cpu)
t0=$(now)
"$PSQL" -X -q "$db_url" -c "$copy_sql" >/dev/null
t1=$(now)
# The backend ends just after psql; once the postmaster has reaped it, its time is in there.
sleep 1
c_pg1=$(postgres_cpu)
c_dist=$(watch_stop)
c_wall=$(seconds_between "$t0" "$t1" 2)
log "COPY: ${c_wall}s"

# (b) sluice-producer backfill.
cat >"$WORK/sluice.yaml" <<YAML
postgres:
  url: $PG_BASE/$db?sslmode=$SSLMODE
$(case $SSLMODE in verify-ca | verify-full) echo "  ca_file: $SLUICE_TEST_PG_CA" ;; esac)
  slot: $slot
  publication: $id
kafka:
  brokers: $BROKERS
  topic_prefix: $id
  partitions: 6
  compression: $COMPRESSION
tables:
  - name: public.rows
    backfill: true
producer:
$([ -z "$CHUNK" ] || echo "  backfill_chunk_size: $CHUNK")
$([ -z "$CHUNK_BYTES" ] || echo "  backfill_chunk_bytes: $CHUNK_BYTES")
  status_interval: 1s
YAML
CLEAN_SLOT=$slot CLEAN_TOPIC=$topic
wait_quiet
log "sluice-producer: backfill of $N rows, $CHUNKS"
watch_start
s_pg0=$(postgres_cpu) s_kafka0=$(kafka_cpu)
t0=$(now)
/usr/bin/time -v -o "$WORK/sluice.time" "$PRODUCER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run \
  2>"$WORK/producer.log" &
timed=$!
while [ -z "$PRODUCER_PID" ] && kill -0 "$timed" 2>/dev/null; do
  PRODUCER_PID=$(pgrep -P "$timed" || true)
  sleep 0.02
done
[ -n "$PRODUCER_PID" ] || {
  cat "$WORK/producer.log" >&2
  die "the producer did not start"
}
PERF_PID=''
if [ -n "${BENCH_PERF:-}" ]; then
  perf record -q -F 499 -g -o "$BENCH_PERF" -p "$PRODUCER_PID" 2>"$WORK/perf.err" &
  PERF_PID=$!
fi
# The producer creates the control table at setup; \watch stops at the first error.
until [ "$("$PSQL" -X -At "$db_url" -c "SELECT to_regclass('sluice.backfills') IS NOT NULL" 2>/dev/null)" = t ]; do
  kill -0 "$PRODUCER_PID" 2>/dev/null || break
  sleep 0.1
done
t1='' s_started=''
while read -r state; do
  if [ -z "$s_started" ] && [ -n "$state" ]; then s_started=$(now); fi
  if [ "$state" = "done" ]; then
    t1=$(now)
    s_kafka1=$(kafka_cpu)
    break
  fi
  if ! kill -0 "$PRODUCER_PID" 2>/dev/null; then break; fi
  if [ "$(seconds_between "$t0" "$(now)" 0)" -gt "$TIMEOUT" ]; then break; fi
done < <(printf '%s\n' "SELECT coalesce((SELECT state FROM sluice.backfills LIMIT 1), '')" '\watch 0.2' |
  "$PSQL" -X -At "$db_url" 2>/dev/null)
s_dist=$(watch_stop)
if [ -n "$PERF_PID" ]; then
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  log "profile of the producer during the backfill: perf report -i $BENCH_PERF"
fi
if [ -z "$t1" ]; then
  tail -n 30 "$WORK/producer.log" >&2
  die "the backfill did not finish (the producer exited or ${TIMEOUT}s passed)"
fi
"$PRODUCER" --config "$WORK/sluice.yaml" status >"$WORK/status.txt" 2>&1 || true
kill -TERM "$PRODUCER_PID"
wait "$timed" || log "the producer exited with status $? after SIGTERM"
PRODUCER_PID=
# The producer's backends end with it; their time counts once the postmaster has reaped them
# (so Postgres's figure includes the producer's shutdown).
sleep 1
s_pg1=$(postgres_cpu)
s_wall=$(seconds_between "$t0" "$t1" 2)
in_pg=$("$PSQL" -X -At "$db_url" -c "SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 2) FROM sluice.backfills")
s_user=$(time_field "$WORK/sluice.time" 'User time (seconds)')
s_sys=$(time_field "$WORK/sluice.time" 'System time (seconds)')
s_rss=$(time_field "$WORK/sluice.time" 'Maximum resident set size (kbytes)')
counted=$(kafka_tool count "$topic" 2>>"$WORK/kafka-tool.err") || die "could not count the messages of $topic"
messages=${counted#* }
[ "$messages" = "$N" ] || log "warning: $topic holds $messages messages, expected $N"

c_rate=$(calc "$N / $c_wall" 0)
s_rate=$(calc "$N / $s_wall" 0)
if [ -n "${BENCH_LOG_DIR:-}" ]; then
  mkdir -p "$BENCH_LOG_DIR"
  cp "$WORK/producer.log" "$WORK/sluice.time" "$WORK/status.txt" "$BENCH_LOG_DIR/" 2>/dev/null || true
fi

echo
machine_info
echo "source:  $SOURCE_STATE"
echo "table:   $N rows of ~500 bytes ($table_mb MB), filled in ${fill_s}s; sslmode=$SSLMODE; $CHUNKS; compression $COMPRESSION"
echo
echo "| reader | wall (s) | rows/s | ÷ COPY | CPU s (user+sys) | peak RSS (MB) | Postgres CPU (s) | Kafka broker CPU (s) | cores busy (reader + Postgres + Kafka) | other builds/tests running |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
c_pg=$(calc "${c_pg1:-0} - ${c_pg0:-0}" 1)
s_pg=$(calc "${s_pg1:-0} - ${s_pg0:-0}" 1)
s_kafka=$(calc "${s_kafka1:-0} - ${s_kafka0:-0}" 1)
echo "| COPY (FORMAT binary) > /dev/null | $c_wall | $c_rate | | | | $c_pg | | $(calc "$c_pg / $c_wall" 2) (psql not counted) | $c_dist |"
echo "| sluice-producer backfill | $s_wall | $s_rate | $(calc "$s_rate / $c_rate" 2) | $(calc "$s_user + $s_sys" 1) | $(calc "$s_rss / 1024" 1) | $s_pg | $s_kafka | $(calc "($s_user + $s_sys + $s_pg + $s_kafka) / $s_wall" 2) | $s_dist |"
echo
echo "producer start to backfill done ${s_wall}s (started_at to finished_at in sluice.backfills: ${in_pg}s); topic: ${counted% *} partitions, $messages messages"
echo "status just before the end:"
sed 's/^/    /' "$WORK/status.txt"
