#!/usr/bin/env bash
# Debezium against sluice-producer on the Postgres → Kafka leg: both drain the same backlog of
# committed changes from a replication slot into a topic, one after the other, in one invocation.
#
# One run:
#   1. a fresh database with `rows(id bigint primary key, payload text)` (payload: 288 hex
#      characters, about 300 bytes per row: the table bench/producer-drain.sh uses), one
#      publication for it and two pgoutput slots, one for Debezium and one for sluice, created
#      before any write, so both readers see the same WAL;
#   2. BENCH_ROWS (default 1,000,000) single-row transactions (a PL/pgSQL loop of `INSERT …;
#      COMMIT;` with synchronous_commit=off), all written before either reader starts;
#   3. Debezium: the Postgres connector on Kafka Connect standalone (one JVM:
#      `java -cp '<jars>/*' org.apache.kafka.connect.cli.ConnectStandalone worker.properties
#      connector.properties`, under /usr/bin/time -v, heap -Xms256M -Xmx2G and the G1 flags
#      Kafka's own connect-standalone.sh sets). Connector: plugin.name=pgoutput, the slot and
#      publication from step 1 (publication.autocreate.mode=disabled), snapshot.mode=no_data,
#      max.batch.size 2048, max.queue.size 8192, poll.interval.ms 100, decimal.handling.mode
#      string; JSON converters with schemas off; its topic created with 6 partitions. Timed from
#      the JVM's start, and from its task reporting RUNNING on the REST API, until the topic's end
#      offsets add up to BENCH_ROWS (polled every 200 ms); then SIGTERM;
#   4. sluice: target/release/sluice-producer run (the other slot, 6 partitions, status_interval
#      1s) under /usr/bin/time -v, timed the same way: from its start, and from its `streaming
#      changes` log line, until its topic's end offsets add up to BENCH_ROWS; then SIGTERM;
#   5. both topics must hold exactly BENCH_ROWS messages, or no rate is reported; then the slots,
#      the publication, the database and the topics are removed (also when the run fails).
# CPU is each reader's user+system time at the moment its topic was complete (/proc), per 100k
# changes; the walsender (the Postgres backend decoding for that slot) and the Kafka broker are
# sampled too and reported apart. Peak RSS is from /usr/bin/time -v (for Debezium: the JVM).
# The rates compared are the ones after each reader started streaming; the ones from the
# process start are printed next to them.
#
#   bench/peers/debezium.sh
#
# Needs Postgres and Kafka from deploy/local (the SLUICE_TEST_* variables, from the environment
# or $SLUICE_STATE_DIR/env), Java 17+ and Maven (apt-get install maven). Builds with `cargo build
# --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins` (not timed; the topic
# counts use sluice-bulk-load). The jars come from Maven Central through
# bench/peers/debezium/pom.xml into $BENCH_PEERS_CACHE/debezium-<version>-connect-<version>.
# Kafka Connect is 4.3.1, not the broker's 4.4.0: Debezium 3.6.1's task fails on Connect 4.4.0
# (NoClassDefFoundError: org.apache.kafka.common.utils.Sanitizer, which kafka-clients 4.4 no
# longer has); a 4.3 worker talks to the 4.4 broker as any older client does.
# Knobs: BENCH_ROWS, BENCH_DEBEZIUM_VERSION (3.6.1.Final), BENCH_CONNECT_VERSION (4.3.1),
# BENCH_DEBEZIUM_BATCH (2048), BENCH_DEBEZIUM_QUEUE (8192),
# BENCH_CONNECT_HEAP ("-Xms256M -Xmx2G"), BENCH_CONNECT_PORT (REST, default 18083),
# BENCH_SSLMODE (both readers' sslmode, default verify-ca with the test CA; `disable` for plain
# TCP), BENCH_DRAIN_TIMEOUT (seconds, default 1800), BENCH_PEERS_CACHE (default
# /var/tmp/sluice-bench-cache/peers), BENCH_QUIET_TIMEOUT (see bench/lib.sh), BENCH_LOG_DIR (keep
# the logs, configs and time -v reports there).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

N=${BENCH_ROWS:-1000000}
DBZ_VERSION=${BENCH_DEBEZIUM_VERSION:-3.6.1.Final}
CONNECT_VERSION=${BENCH_CONNECT_VERSION:-4.3.1}
DBZ_BATCH=${BENCH_DEBEZIUM_BATCH:-2048}
DBZ_QUEUE=${BENCH_DEBEZIUM_QUEUE:-8192}
CONNECT_HEAP=${BENCH_CONNECT_HEAP:--Xms256M -Xmx2G}
CONNECT_PORT=${BENCH_CONNECT_PORT:-18083}
SSLMODE=${BENCH_SSLMODE:-verify-ca}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-1800}
SLUICE_CACHE_DIR=${SLUICE_CACHE_DIR:-/var/cache/sluice}
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
require_time

peers_setup "$SSLMODE"
JAVA=java
if [ -n "${JAVA_HOME:-}" ]; then JAVA=$JAVA_HOME/bin/java; fi
command -v "$JAVA" >/dev/null || die "no java: apt-get install openjdk-17-jre-headless"

WORK=$(mktemp -d)
ID="bench_dbz_$(date +%s)"
DB="sluice_$ID" PUB=$ID SLOT_D="${ID}_debezium" SLOT_S="${ID}_sluice"
TOPIC_D="${ID}_debezium.public.rows" TOPIC_S="${ID}_sluice.public.rows"

# What cleanup must remove; set as soon as it exists.
CLEAN_DB='' CLEAN_KAFKA=() PIDS=()

cleanup() {
  watch_abort
  local pid
  for pid in "${PIDS[@]}"; do end_process "$pid"; done
  if [ -n "$CLEAN_DB" ]; then drop_database "$CLEAN_DB"; fi
  delete_kafka "${CLEAN_KAFKA[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

build_sluice

# The jars: once per version pair, from Maven Central.
JARS=$CACHE/debezium-$DBZ_VERSION-connect-$CONNECT_VERSION
if [ ! -f "$JARS/.complete" ]; then
  command -v mvn >/dev/null 2>&1 || die "no mvn: apt-get install maven"
  log "collecting Debezium $DBZ_VERSION and Kafka Connect $CONNECT_VERSION jars into $JARS"
  rm -rf "$JARS"
  mkdir -p "$JARS"
  mvn -q -B -f "$BENCH_DIR/peers/debezium/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
    -Ddebezium.version="$DBZ_VERSION" -Dkafka.version="$CONNECT_VERSION" \
    -DincludeScope=runtime -DoutputDirectory="$JARS/libs" >"$JARS/mvn.log" 2>&1 || {
    tail -n 30 "$JARS/mvn.log" >&2
    die "Maven could not collect the jars (log: $JARS/mvn.log)"
  }
  touch "$JARS/.complete"
fi
[ -f "$JARS/libs/debezium-connector-postgres-$DBZ_VERSION.jar" ] || die "no Debezium jar in $JARS/libs"
PG_VERSION=$(admin_sql "SHOW server_version")
KAFKA_VERSION=$(find "$SLUICE_CACHE_DIR/kafka" -name 'kafka_2.13-*.jar' 2>/dev/null | sed -n 's/.*kafka_2.13-\(.*\)\.jar$/\1/p' | head -n 1)
JAVA_VERSION=$("$JAVA" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.runtime.version/ { print $2 }')

# ---------------------------------------------------------------------------------------------
# 1–2. The backlog.
log "database $DB: publication $PUB, slots $SLOT_D and $SLOT_S"
admin_sql "CREATE DATABASE $DB"
CLEAN_DB=$DB
db_sql >/dev/null <<SQL
CREATE TABLE rows (id bigint PRIMARY KEY, payload text);
CREATE PUBLICATION $PUB FOR TABLE rows;
SELECT pg_create_logical_replication_slot('$SLOT_D', 'pgoutput');
SELECT pg_create_logical_replication_slot('$SLOT_S', 'pgoutput');
$(bench_fill_sql)
SQL
START_LSN=$(admin_sql "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$SLOT_S'")
log "writing $N single-row transactions"
t0=$(now)
PGOPTIONS='-c synchronous_commit=off' db_sql -c "CALL bench_fill($N)" >/dev/null
FILL_S=$(seconds_between "$t0" "$(now)")
WAL_MB=$(admin_sql "SELECT round(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$START_LSN') / 1048576)")
log "written in ${FILL_S}s, ~${WAL_MB} MB of WAL (all databases)"

# drain READER PID STARTED_TEST TOPIC: polls the topic every 200 ms until its end offsets add
# up to N; sets T_STARTED (when STARTED_TEST first succeeded), T_DONE, CPU_DONE (the reader's
# CPU seconds then) and WS_CPU (its walsender's). Dies when the reader exits or the time runs out.
drain() {
  local name=$1 pid=$2 started=$3 topic=$4 slot=$5 have ws_pid=''
  T_STARTED='' T_DONE='' CPU_DONE='' WS_CPU='?'
  while :; do
    if [ -z "$T_STARTED" ] && $started; then T_STARTED=$(now); fi
    if [ -z "$ws_pid" ] || [ "$ws_pid" = 0 ]; then
      ws_pid=$(admin_sql "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = '$slot'")
    fi
    have=$("$LOADER" count "$BROKERS" "$topic" 2>/dev/null | cut -d' ' -f1 || true)
    if [ "${have:-0}" -ge "$N" ]; then
      T_DONE=$(now)
      CPU_DONE=$(cpu_seconds "$pid")
      if [ "$ws_pid" != 0 ]; then WS_CPU=$(cpu_seconds "$ws_pid"); fi
      [ -n "$T_STARTED" ] || T_STARTED=$T_DONE
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "$name exited before its topic was complete (it holds ${have:-0} messages)"
    [ "$(seconds_between "$T0" "$(now)" 0)" -lt "$DRAIN_TIMEOUT" ] ||
      die "$name: its topic holds ${have:-0} messages after ${DRAIN_TIMEOUT}s, expected $N"
    sleep 0.2
  done
}

RESULTS=()

# result KEY NAME TIMEFILE T0 TOPIC K0 K1 DIST: one table row, and the figures the ratios need
# as RATE_KEY, CPU_KEY and RSS_KEY.
result() {
  local key=$1 name=$2 tf=$3 t0=$4 topic=$5 k0=$6 k1=$7 dist=$8 counted messages from_start streaming rate cpu rss
  counted=$("$LOADER" count "$BROKERS" "$topic") || die "could not count the messages of $topic"
  messages=${counted% *}
  [ "$messages" = "$N" ] || die "$topic holds $messages messages, expected exactly $N: no rate reported"
  from_start=$(seconds_between "$t0" "$T_DONE" 2)
  streaming=$(seconds_between "$T_STARTED" "$T_DONE" 2)
  rate=$(calc "$N / $streaming" 0)
  cpu=$(calc "$CPU_DONE * 100000 / $N" 2)
  rss=$(calc "$(time_field "$tf" 'Maximum resident set size (kbytes)') / 1024" 1)
  printf -v "RATE_$key" %s "$rate"
  printf -v "CPU_$key" %s "$cpu"
  printf -v "RSS_$key" %s "$rss"
  RESULTS+=("| $name | $from_start | $(calc "$N / $from_start" 0) | $streaming | **$rate** | $CPU_DONE | **$cpu** | **$rss** | $WS_CPU | $(calc "${k1:-0} - ${k0:-0}" 1) | $messages (${counted#* } partitions) | $dist |")
}

# ---------------------------------------------------------------------------------------------
# 3. Debezium.
cat >"$WORK/worker.properties" <<EOF
bootstrap.servers=$BROKERS
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
offset.storage.file.filename=$WORK/connect.offsets
offset.flush.interval.ms=10000
listeners=http://127.0.0.1:$CONNECT_PORT
plugin.discovery=only_scan
EOF
cat >"$WORK/connector.properties" <<EOF
name=$ID
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=$PG_HOST
database.port=$PG_PORT
database.user=$PG_USER
database.password=$PG_PASSWORD
database.dbname=$DB
database.sslmode=$SSLMODE
$(case $SSLMODE in verify-ca | verify-full) echo "database.sslrootcert=$SLUICE_TEST_PG_CA" ;; esac)
topic.prefix=${ID}_debezium
plugin.name=pgoutput
slot.name=$SLOT_D
publication.name=$PUB
publication.autocreate.mode=disabled
table.include.list=public.rows
snapshot.mode=no_data
decimal.handling.mode=string
max.batch.size=$DBZ_BATCH
max.queue.size=$DBZ_QUEUE
poll.interval.ms=100
topic.creation.default.partitions=6
topic.creation.default.replication.factor=1
EOF
cat >"$WORK/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$WORK/connect.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=%d{ISO8601} %p [%t] %c{1} %m%n
EOF

# dbz_running: the connector's task is RUNNING (dies when it FAILED: Connect does not restart it).
dbz_running() {
  local status
  status=$(curl -sf "http://127.0.0.1:$CONNECT_PORT/connectors/$ID/status" 2>/dev/null) || return 1
  case $(jq -r '.tasks[0].state // ""' <<<"$status") in
    RUNNING) return 0 ;;
    FAILED) die "Debezium's task failed: $(jq -r '.tasks[0].trace' <<<"$status" | head -n 3)" ;;
    *) return 1 ;;
  esac
}

CLEAN_KAFKA+=("topic:$TOPIC_D")
wait_quiet
log "Debezium $DBZ_VERSION on Connect $CONNECT_VERSION: draining $SLOT_D into $TOPIC_D"
k0=$(kafka_cpu)
watch_start
T0=$(now)
# shellcheck disable=SC2086 # CONNECT_HEAP is a list of JVM flags
start_timed debezium "$JAVA" $CONNECT_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$WORK/log4j2.properties" -cp "$JARS/libs/*" \
  org.apache.kafka.connect.cli.ConnectStandalone "$WORK/worker.properties" "$WORK/connector.properties"
DBZ_PID=$STARTED
drain Debezium "$DBZ_PID" dbz_running "$TOPIC_D" "$SLOT_D"
dbz_dist=$(watch_stop)
k1=$(kafka_cpu)
DBZ_T0=$T0
stop_timed "$DBZ_PID"
result D Debezium "$WORK/debezium.time" "$DBZ_T0" "$TOPIC_D" "$k0" "$k1" "$dbz_dist"
DBZ_STARTED=$(seconds_between "$DBZ_T0" "$T_STARTED" 2)
log "Debezium: $RATE_D changes/s after its task started (${DBZ_STARTED}s after the JVM)"

# ---------------------------------------------------------------------------------------------
# 4. sluice-producer.
sluice_config "$WORK/sluice.yaml" "$SLOT_S" "$PUB" "${ID}_sluice"
cat >>"$WORK/sluice.yaml" <<YAML
tables:
  - name: public.rows
producer:
  status_interval: 1s
YAML
sluice_streaming() { grep -q 'streaming changes' "$WORK/producer.log"; }

CLEAN_KAFKA+=("topic:$TOPIC_S")
wait_quiet
log "sluice-producer: draining $SLOT_S into $TOPIC_S"
k0=$(kafka_cpu)
watch_start
T0=$(now)
start_timed producer "$PRODUCER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run
S_PID=$STARTED
drain sluice-producer "$S_PID" sluice_streaming "$TOPIC_S" "$SLOT_S"
s_dist=$(watch_stop)
k1=$(kafka_cpu)
S_T0=$T0
stop_timed "$S_PID"
result S sluice-producer "$WORK/producer.time" "$S_T0" "$TOPIC_S" "$k0" "$k1" "$s_dist"
S_STARTED=$(seconds_between "$S_T0" "$T_STARTED" 2)
log "sluice-producer: $RATE_S changes/s after it started streaming (${S_STARTED}s after its start)"

if [ -n "${BENCH_LOG_DIR:-}" ]; then
  mkdir -p "$BENCH_LOG_DIR"
  cp "$WORK"/*.log "$WORK"/*.time "$WORK"/*.properties "$WORK/sluice.yaml" "$BENCH_LOG_DIR/" 2>/dev/null || true
  sed -i '/^database.password=/d' "$BENCH_LOG_DIR/connector.properties" 2>/dev/null || true
fi

echo
machine_info
echo "source:   $SOURCE_STATE"
echo "versions: Debezium $DBZ_VERSION (Postgres connector, pgoutput) on Kafka Connect $CONNECT_VERSION standalone, $JAVA_VERSION ($CONNECT_HEAP); broker Kafka ${KAFKA_VERSION:-?}; PostgreSQL $PG_VERSION"
echo "debezium: max.batch.size $DBZ_BATCH, max.queue.size $DBZ_QUEUE, poll.interval.ms 100, snapshot.mode no_data, JSON converters without schemas, worker producer defaults (no compression)"
echo "sluice:   6 partitions, status_interval 1s, otherwise defaults"
echo "changes:  $N single-row INSERT transactions of ~300-byte rows, written in ${FILL_S}s before either reader started ($(calc "$N / $FILL_S" 0) tx/s, ~$WAL_MB MB of WAL); sslmode=$SSLMODE for both"
echo
table_head "reader" "from process start (s)" "changes/s from start" "after streaming started (s)" "changes/s" "CPU s at the end" "CPU s per 100k changes" "peak RSS (MB)" "walsender CPU (s)" "Kafka broker CPU (s)" "messages on the topic" "other builds/tests running"
printf '%s\n' "${RESULTS[@]}"
echo
echo "Debezium's task was RUNNING ${DBZ_STARTED}s after the JVM started; sluice-producer was streaming ${S_STARTED}s after its start."
echo
table_head "sluice ÷ Debezium (throughput: changes/s after streaming started)" "value" "goal" "met"
goal_rows "Postgres → Kafka" "$RATE_S" "$RATE_D" "$CPU_S" "$CPU_D" "$RSS_S" "$RSS_D"
