#!/usr/bin/env bash
# Measures how fast sluice-producer drains a replication slot's backlog, against pg_recvlogical
# reading the same WAL (the floor: Postgres's own decoding, nothing done with the output).
#
# Each run, with no producer running:
#   1. a fresh database with `rows(id bigint primary key, payload text)` (payload: 288 hex
#      characters, about 300 bytes per row), a publication for it and two pgoutput slots, one
#      for sluice and one for pg_recvlogical, created before any write, so both see the same WAL;
#   2. BENCH_ROWS (default 1,000,000) single-row transactions: a PL/pgSQL procedure looping
#      `INSERT …; COMMIT;` with synchronous_commit=off. The target LSN is taken inside the last
#      transaction, after its INSERT (pg_current_wal_insert_lsn()): a reader is done when it has
#      passed it, i.e. has read the last commit. (pg_current_wal_lsn() after the CALL would be
#      wrong twice over: with synchronous_commit=off it can lag the last commits, and on a shared
#      server it includes other databases' WAL, past which sluice's slot never moves without a
#      later commit in its own database);
#   3. pg_recvlogical --start --endpos=<target> -o proto_version=1 -o publication_names=<pub>
#      -f /dev/null, under /usr/bin/time -v, until it exits;
#   4. target/release/sluice-producer run (config: slot 1, the publication, 6 partitions, a topic
#      prefix of its own, status_interval 1s), under /usr/bin/time -v, from its start until the
#      slot's confirmed_flush_lsn >= target (polled every 200 ms), then SIGTERM;
#   5. the topic's high watermarks are summed (they must add up to BENCH_ROWS), then the slots,
#      the database and the topic are dropped (also when the run fails).
# Besides the two clients, it samples the CPU time of each one's walsender (the Postgres backend
# that decodes the WAL, from /proc/<active_pid>/stat) and its context switches (voluntary: it
# waited, e.g. for a full socket; involuntary: it was preempted, e.g. by a reader it woke; from
# /proc/<active_pid>/status), and the CPU time of the Kafka broker.
#
#   bench/producer-drain.sh               # BENCH_RUNS (default 2) runs, a table at the end
#
# Needs Postgres and Kafka from deploy/local (`eval "$(deploy/local/up.sh postgres kafka)"`);
# their SLUICE_TEST_* variables are read from the environment or from the running services.
# Builds the producer with `cargo build --release -p sluice-producer` (not timed).
# Knobs: BENCH_ROWS, BENCH_RUNS, BENCH_SSLMODE (both clients' sslmode, default verify-ca with the
# test CA, i.e. TLS; `disable` for plain TCP; sluice refuses verify-full with an IP address), BENCH_DRAIN_TIMEOUT (seconds, default 1800),
# BENCH_QUIET_TIMEOUT (see bench/lib.sh), BENCH_MAX_IN_FLIGHT (the producer's
# max_in_flight_messages, default its own default), BENCH_KAFKA_OPTIONS (a YAML map
# for kafka.options, e.g. '{linger.ms: "20"}'), BENCH_LOG_DIR (keep the producer logs and time -v
# reports there). The Kafka count and topic deletion use a few lines of
# Java against the kafka-clients jar deploy/local/kafka.sh cached ($SLUICE_CACHE_DIR/kafka).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

N=${BENCH_ROWS:-1000000}
RUNS=${BENCH_RUNS:-2}
SSLMODE=${BENCH_SSLMODE:-verify-ca}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-1800}
SLUICE_CACHE_DIR=${SLUICE_CACHE_DIR:-/var/cache/sluice}
SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}
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
RECVLOGICAL=$SLUICE_TEST_PG_BINDIR/pg_recvlogical
BROKERS=$SLUICE_TEST_KAFKA_BROKERS
[ -x "$RECVLOGICAL" ] || die "no pg_recvlogical in $SLUICE_TEST_PG_BINDIR"
[ -f "$KAFKA_LIBS/kafka-clients-${SLUICE_KAFKA_VERSION:-4.4.0}.jar" ] || die "no Kafka jars in $KAFKA_LIBS"
JAVA=java
if [ -n "${JAVA_HOME:-}" ]; then JAVA=$JAVA_HOME/bin/java; fi

# postgres://user:password@host:port (the database is appended per use).
PG_BASE=${SLUICE_TEST_PG_URL%/*}
LIBPQ_SSL="sslmode=$SSLMODE"
case $SSLMODE in
  verify-ca | verify-full) LIBPQ_SSL+="&sslrootcert=$SLUICE_TEST_PG_CA" ;;
esac
ADMIN_URL="$PG_BASE/postgres?$LIBPQ_SSL"

WORK=$(mktemp -d)

# What cleanup must remove; set as soon as it exists.
CLEAN_DB='' CLEAN_SLOTS=() CLEAN_TOPIC='' PRODUCER_PID='' SAMPLER_PID=''

admin_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "$1"; }

cleanup_run() {
  watch_abort
  if [ -n "$SAMPLER_PID" ]; then
    touch "$WORK/ws-recv.stop"
    kill "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=''
  fi
  if [ -n "$PRODUCER_PID" ] && kill -0 "$PRODUCER_PID" 2>/dev/null; then
    kill -TERM "$PRODUCER_PID" 2>/dev/null || true
    sleep 2
    kill -KILL "$PRODUCER_PID" 2>/dev/null || true
  fi
  PRODUCER_PID=
  local slot
  for slot in "${CLEAN_SLOTS[@]}"; do
    # A slot still held by a walsender that is shutting down cannot be dropped for a moment.
    for _ in $(seq 1 50); do
      admin_sql "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$slot'" \
        >/dev/null 2>&1 && break
      sleep 0.2
    done
  done
  CLEAN_SLOTS=()
  if [ -n "$CLEAN_DB" ]; then
    admin_sql "DROP DATABASE IF EXISTS $CLEAN_DB WITH (FORCE)" || log "could not drop database $CLEAN_DB"
    CLEAN_DB=
  fi
  if [ -n "$CLEAN_TOPIC" ]; then
    kafka_tool delete "$CLEAN_TOPIC" >/dev/null 2>>"$WORK/kafka-tool.err" || log "could not delete topic $CLEAN_TOPIC"
    CLEAN_TOPIC=
  fi
}
trap 'cleanup_run; rm -rf "$WORK"' EXIT

build_producer

# walsender_sampler SLOT OUTFILE: while the slot is active, writes the CPU seconds of its walsender
# into OUTFILE every 200 ms; ends once the slot was active and is not any more (or on STOPFILE).
walsender_sampler() {
  local slot=$1 out=$2 pid seen=
  while read -r pid; do
    if [ "$pid" != 0 ]; then
      seen=1
      cpu_seconds "$pid" >"$out.tmp" && [ -s "$out.tmp" ] && mv -f "$out.tmp" "$out"
      context_switches "$pid" >"$out.cs.tmp" && [ -s "$out.cs.tmp" ] && mv -f "$out.cs.tmp" "$out.cs"
    elif [ -n "$seen" ] || [ -e "$out.stop" ]; then
      break
    fi
    [ -e "$out.stop" ] && break
  done < <(printf '%s\n' "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = '$slot'" \
    '\watch 0.2' | "$PSQL" -X -At "$ADMIN_URL")
}

# context_switches PID: "VOLUNTARY/INVOLUNTARY" context switches of the process so far (empty if
# it is gone).
context_switches() {
  awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 }
    END { if (v != "") print v "/" n }' "/proc/$1/status" 2>/dev/null || true
}

RESULTS=()
DETAILS=()

run_once() {
  local i=$1 id db db_url slot_s slot_r pub topic target start_lsn t0 t1 fill_s wal_mb
  id="bench_$(date +%s)_$i"
  db="sluice_$id" slot_s="${id}_sluice" slot_r="${id}_recv" pub=$id topic="$id.public.rows"
  db_url="$PG_BASE/$db?$LIBPQ_SSL"

  log "run $i: database $db, slots $slot_s and $slot_r, publication $pub"
  admin_sql "CREATE DATABASE $db"
  CLEAN_DB=$db
  "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$db_url" >/dev/null <<SQL
CREATE TABLE rows (id bigint PRIMARY KEY, payload text);
CREATE PUBLICATION $pub FOR TABLE rows;
SELECT pg_create_logical_replication_slot('$slot_s', 'pgoutput');
SELECT pg_create_logical_replication_slot('$slot_r', 'pgoutput');
$(bench_fill_sql)
SQL
  CLEAN_SLOTS=("$slot_s" "$slot_r")
  start_lsn=$(admin_sql "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$slot_s'")

  log "run $i: writing $N single-row transactions"
  t0=$(now)
  target=$(PGOPTIONS='-c synchronous_commit=off' "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$db_url" \
    -c "CALL bench_fill($N)")
  t1=$(now)
  fill_s=$(seconds_between "$t0" "$t1")
  wal_mb=$(admin_sql "SELECT round(pg_wal_lsn_diff('$target', '$start_lsn') / 1048576)")
  log "run $i: written in ${fill_s}s, ${wal_mb} MB of WAL, target LSN $target"

  # (a) pg_recvlogical
  local r_wall r_user r_sys r_rss r_ws r_wcs r_dist k0 k1 r_kafka
  wait_quiet
  log "run $i: pg_recvlogical up to $target"
  rm -f "$WORK/ws-recv" "$WORK/ws-recv.cs" "$WORK/ws-recv.stop"
  walsender_sampler "$slot_r" "$WORK/ws-recv" </dev/null >/dev/null 2>&1 &
  SAMPLER_PID=$!
  watch_start
  t0=$(now)
  /usr/bin/time -v -o "$WORK/recv.time" "$RECVLOGICAL" -d "$db_url" --slot "$slot_r" --start \
    -o proto_version=1 -o publication_names="$pub" -f /dev/null --endpos="$target" 2>"$WORK/recv.err" ||
    {
      cat "$WORK/recv.err" >&2
      die "pg_recvlogical failed"
    }
  t1=$(now)
  r_dist=$(watch_stop)
  touch "$WORK/ws-recv.stop"
  wait "$SAMPLER_PID" || true
  SAMPLER_PID=''
  r_wall=$(seconds_between "$t0" "$t1" 2)
  r_user=$(time_field "$WORK/recv.time" 'User time (seconds)')
  r_sys=$(time_field "$WORK/recv.time" 'System time (seconds)')
  r_rss=$(time_field "$WORK/recv.time" 'Maximum resident set size (kbytes)')
  r_ws=$(cat "$WORK/ws-recv" 2>/dev/null || echo '?')
  r_wcs=$(cat "$WORK/ws-recv.cs" 2>/dev/null || echo '?')
  log "run $i: pg_recvlogical ${r_wall}s"

  # (b) sluice-producer
  local s_wall s_user s_sys s_rss s_ws s_wcs s_dist s_started s_cpu_at_target ok pid timed
  cat >"$WORK/sluice.yaml" <<YAML
postgres:
  url: $PG_BASE/$db?sslmode=$SSLMODE
$(case $SSLMODE in verify-ca | verify-full) echo "  ca_file: $SLUICE_TEST_PG_CA" ;; esac)
  slot: $slot_s
  publication: $pub
kafka:
  brokers: $BROKERS
  topic_prefix: $id
  partitions: 6
$(if [ -n "${BENCH_KAFKA_OPTIONS:-}" ]; then echo "  options: $BENCH_KAFKA_OPTIONS"; fi)
tables:
  - name: public.rows
producer:
  status_interval: 1s
$(if [ -n "${BENCH_MAX_IN_FLIGHT:-}" ]; then echo "  max_in_flight_messages: $BENCH_MAX_IN_FLIGHT"; fi)
YAML
  CLEAN_TOPIC=$topic
  wait_quiet
  log "run $i: sluice-producer until $slot_s has confirmed $target"
  k0=$(kafka_cpu)
  watch_start
  t0=$(now)
  /usr/bin/time -v -o "$WORK/sluice.time" "$PRODUCER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run \
    2>"$WORK/producer-$i.log" &
  timed=$!
  while [ -z "$PRODUCER_PID" ] && kill -0 "$timed" 2>/dev/null; do
    PRODUCER_PID=$(pgrep -P "$timed" || true)
    sleep 0.02
  done
  if [ -z "$PRODUCER_PID" ]; then
    cat "$WORK/producer-$i.log" >&2
    die "the producer did not start"
  fi
  s_started='' t1='' s_ws='?' s_wcs='?'
  while IFS='|' read -r ok pid; do
    if [ -z "$s_started" ] && grep -q 'streaming changes' "$WORK/producer-$i.log"; then s_started=$(now); fi
    if [ -n "$pid" ] && [ "$pid" != 0 ]; then
      s_ws=$(cpu_seconds "$pid")
      s_ws=${s_ws:-?}
      s_wcs=$(context_switches "$pid")
      s_wcs=${s_wcs:-?}
    fi
    if [ "$ok" = t ]; then
      t1=$(now)
      s_cpu_at_target=$(cpu_seconds "$PRODUCER_PID")
      break
    fi
    if ! kill -0 "$PRODUCER_PID" 2>/dev/null; then break; fi
    if [ "$(seconds_between "$t0" "$(now)" 0)" -gt "$DRAIN_TIMEOUT" ]; then break; fi
  done < <(printf '%s\n' "SELECT coalesce(confirmed_flush_lsn >= '$target', false), coalesce(active_pid, 0)
      FROM pg_replication_slots WHERE slot_name = '$slot_s'" '\watch 0.2' | "$PSQL" -X -At "$ADMIN_URL")
  s_dist=$(watch_stop)
  k1=$(kafka_cpu)
  if [ -z "$t1" ]; then
    tail -n 30 "$WORK/producer-$i.log" >&2
    die "sluice-producer did not reach $target (exited or timed out after ${DRAIN_TIMEOUT}s)"
  fi
  kill -TERM "$PRODUCER_PID"
  wait "$timed" || log "the producer exited with status $? after SIGTERM"
  PRODUCER_PID=
  s_wall=$(seconds_between "$t0" "$t1" 2)
  s_user=$(time_field "$WORK/sluice.time" 'User time (seconds)')
  s_sys=$(time_field "$WORK/sluice.time" 'System time (seconds)')
  s_rss=$(time_field "$WORK/sluice.time" 'Maximum resident set size (kbytes)')
  r_kafka=$(calc "${k1:-0} - ${k0:-0}" 1)
  log "run $i: sluice-producer ${s_wall}s"

  local counted
  counted=$(kafka_tool count "$topic" 2>>"$WORK/kafka-tool.err") || die "could not count the messages of $topic"
  log "run $i: topic $topic: partitions and messages: $counted"
  local messages=${counted#* }
  [ "$messages" = "$N" ] || log "warning: $topic holds $messages messages, expected $N"

  local r_rate s_rate
  r_rate=$(calc "$N / $r_wall" 0)
  s_rate=$(calc "$N / $s_wall" 0)
  RESULTS+=("| $i | pg_recvlogical | $r_wall | $r_rate | | $(calc "($r_user + $r_sys) * 100000 / $N" 2) | $(calc "$r_rss / 1024" 1) | $r_ws | | $r_dist |")
  RESULTS+=("| $i | sluice-producer | $s_wall | $s_rate | $(calc "$s_rate / $r_rate" 2) | $(calc "($s_user + $s_sys) * 100000 / $N" 2) | $(calc "$s_rss / 1024" 1) | $s_ws | $r_kafka | $s_dist |")
  local r_cs s_cs
  r_cs="$(time_field "$WORK/recv.time" 'Voluntary context switches')/$(time_field "$WORK/recv.time" 'Involuntary context switches')"
  s_cs="$(time_field "$WORK/sluice.time" 'Voluntary context switches')/$(time_field "$WORK/sluice.time" 'Involuntary context switches')"
  DETAILS+=("run $i: fill ${fill_s}s ($(calc "$N / $fill_s" 0) tx/s), WAL ${wal_mb} MB, target $target;" \
    "  pg_recvlogical: user ${r_user}s, sys ${r_sys}s, context switches (voluntary/involuntary) $r_cs, its walsender's $r_wcs;" \
    "  sluice: user ${s_user}s, sys ${s_sys}s (${s_cpu_at_target}s at the target), context switches $s_cs, its walsender's $s_wcs, streaming after $(if [ -n "$s_started" ]; then seconds_between "$t0" "$s_started" 2; else echo '?'; fi)s, topic: ${counted% *} partitions, $messages messages")

  if [ -n "${BENCH_LOG_DIR:-}" ]; then
    mkdir -p "$BENCH_LOG_DIR"
    cp "$WORK/producer-$i.log" "$WORK/recv.time" "$WORK/sluice.time" "$BENCH_LOG_DIR/" 2>/dev/null || true
    mv "$BENCH_LOG_DIR/recv.time" "$BENCH_LOG_DIR/recv-$i.time" 2>/dev/null || true
    mv "$BENCH_LOG_DIR/sluice.time" "$BENCH_LOG_DIR/sluice-$i.time" 2>/dev/null || true
  fi
  cleanup_run
}

for i in $(seq 1 "$RUNS"); do
  run_once "$i"
done

echo
machine_info
echo "source:  $SOURCE_STATE"
echo "changes: $N single-row INSERT transactions, ~300-byte rows; sslmode=$SSLMODE for both clients"
echo
echo "| run | reader | wall (s) | changes/s | ÷ pg_recvlogical | CPU s per 100k changes (user+sys) | peak RSS (MB) | walsender CPU (s) | Kafka broker CPU (s) | other builds/tests running |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${RESULTS[@]}"
echo
printf '%s\n' "${DETAILS[@]}"
