# shellcheck shell=bash
# What bench/peers/debezium.sh and bench/peers/pgsync.sh share, on top of bench/lib.sh. Sourced,
# never run.
#
# peers_setup SSLMODE: reads the endpoints of deploy/local (the SLUICE_TEST_* variables, from the
# environment or $SLUICE_STATE_DIR/env) and sets PSQL, BROKERS, PG_BASE, PG_USER, PG_PASSWORD,
# PG_HOST, PG_PORT (split for the clients that take them apart), LIBPQ_SSL, ADMIN_URL,
# and the release binaries PRODUCER, CONSUMER and LOADER (sluice-bulk-load).
# admin_sql SQL runs on the postgres database, db_sql [psql args] on $DB (DB_URL).

# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}
# shellcheck disable=SC2034 # used by the scripts that source this file
CACHE=${BENCH_PEERS_CACHE:-/var/tmp/sluice-bench-cache/peers}

peers_setup() {
  if [ -z "${SLUICE_TEST_PG_URL:-}" ] || [ -z "${SLUICE_TEST_KAFKA_BROKERS:-}" ] ||
    [ -z "${SLUICE_TEST_OPENSEARCH_URL:-}" ]; then
    [ -r "$SLUICE_STATE_DIR/env" ] || die "no $SLUICE_STATE_DIR/env: start the services with deploy/local/up.sh"
    set -a
    # shellcheck disable=SC1091
    . "$SLUICE_STATE_DIR/env"
    set +a
  fi
  PSQL=$SLUICE_TEST_PG_BINDIR/psql
  BROKERS=$SLUICE_TEST_KAFKA_BROKERS
  PG_BASE=${SLUICE_TEST_PG_URL%/*}
  [[ $PG_BASE =~ ^postgres(ql)?://([^:@/]+):([^@/]*)@([^:/]+):([0-9]+)$ ]] ||
    die "cannot split SLUICE_TEST_PG_URL into user, password, host and port"
  # shellcheck disable=SC2034 # used by the scripts that source this file
  PG_USER=${BASH_REMATCH[2]} PG_PASSWORD=${BASH_REMATCH[3]} PG_HOST=${BASH_REMATCH[4]} PG_PORT=${BASH_REMATCH[5]}
  LIBPQ_SSL="sslmode=$1"
  case $1 in
    verify-ca | verify-full) LIBPQ_SSL+="&sslrootcert=$SLUICE_TEST_PG_CA" ;;
  esac
  ADMIN_URL="$PG_BASE/postgres?$LIBPQ_SSL"
  local target=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release
  PRODUCER=$target/sluice-producer
  CONSUMER=$target/sluice-consumer
  LOADER=$target/sluice-bulk-load
}
admin_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "$1"; }
db_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$PG_BASE/$DB?$LIBPQ_SSL" "$@"; }

# build_sluice: the release binaries (not timed); sets SOURCE_STATE (the commit, and whether
# the sources had uncommitted changes).
build_sluice() {
  log "building: cargo build --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins (not timed)"
  (cd "$REPO_DIR" && cargo build -q --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins)
  local bin
  for bin in "$PRODUCER" "$CONSUMER" "$LOADER"; do [ -x "$bin" ] || die "no $bin"; done
  SOURCE_STATE="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
  if [ -n "$(git -C "$REPO_DIR" status --porcelain -- consumer producer common proto 2>/dev/null)" ]; then
    SOURCE_STATE+=" with uncommitted changes in consumer/producer/common/proto"
  fi
}

# end_process PID: SIGTERM, then SIGKILL if it is still there after 30 s.
end_process() {
  local deadline=$((SECONDS + 30))
  kill -TERM "$1" 2>/dev/null || return 0
  while kill -0 "$1" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -KILL "$1" 2>/dev/null || true
      return 0
    fi
    sleep 0.2
  done
}

# start_timed NAME COMMAND...: starts COMMAND in $WORK under /usr/bin/time -v, in the
# background (report $WORK/NAME.time, output $WORK/NAME.log); sets STARTED to the command's own
# process (the one to sample and to signal) and adds both processes to PIDS for the cleanup.
declare -A TIMED_OF=()
start_timed() {
  local name=$1 timed child=''
  shift
  (cd "$WORK" && exec /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.log" 2>&1) &
  timed=$!
  PIDS+=("$timed")
  while [ -z "$child" ] && kill -0 "$timed" 2>/dev/null; do
    child=$(pgrep -P "$timed" || true)
    sleep 0.02
  done
  # A command that is over before its process was seen leaves only /usr/bin/time's status.
  child=${child:-$timed}
  PIDS+=("$child")
  TIMED_OF[$child]=$timed
  # shellcheck disable=SC2034 # read by the scripts that source this file
  STARTED=$child
}
# wait_timed PID: waits until the command start_timed started as PID exits and /usr/bin/time
# has written its report; returns the command's exit status.
wait_timed() { wait "${TIMED_OF[$1]}"; }
# stop_timed PID: end_process, then wait_timed.
stop_timed() {
  end_process "$1"
  wait_timed "$1" 2>/dev/null || true
}

# ratio_row WHAT VALUE GOAL TEST: a row of the goals table; TEST is an awk comparison of the
# value (">= 2").
ratio_row() { echo "| $1 | $2 | $3 | $(if [ "$(calc "($2 $4)" 0)" = 1 ]; then echo yes; else echo no; fi) |"; }

# goal_rows WHAT SLUICE_RATE PEER_RATE SLUICE_CPU PEER_CPU SLUICE_RSS PEER_RSS: the three rows
# of the goals table (throughput, CPU per change, peak RSS) for one leg.
goal_rows() {
  ratio_row "$1: throughput" "$(calc "$2 / $3" 2)" "≥ 2" ">= 2"
  ratio_row "$1: CPU per change" "$(calc "$4 / $5" 2)" "≤ 0.5" "<= 0.5"
  ratio_row "$1: peak RSS" "$(calc "$6 / $7" 3)" "≤ 0.25" "<= 0.25"
}

# sluice_config FILE SLOT PUBLICATION TOPIC_PREFIX: the postgres and kafka sections of a sluice
# config for $DB (6 partitions); the caller appends the rest.
sluice_config() {
  local ca=''
  if [[ $LIBPQ_SSL == *sslrootcert=* ]]; then ca="  ca_file: $SLUICE_TEST_PG_CA"; fi
  printf '%s\n' postgres: "  url: $PG_BASE/$DB?${LIBPQ_SSL%%&*}" ${ca:+"$ca"} "  slot: $2" "  publication: $3" \
    kafka: "  brokers: $BROKERS" "  topic_prefix: $4" "  partitions: 6" >"$1"
}

# drop_database NAME: drops every replication slot of the database (whoever made it), then the
# database (with its tables, publications and triggers).
drop_database() {
  local tries=50
  # A slot still held by a walsender that is shutting down cannot be dropped for a moment.
  until admin_sql "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$1'" \
    >/dev/null 2>&1; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || break
    sleep 0.2
  done
  admin_sql "DROP DATABASE IF EXISTS $1 WITH (FORCE)" || log "could not drop database $1"
}

# delete_kafka topic:NAME|group:NAME...: deletes them (sluice-bulk-load), logging a failure.
delete_kafka() {
  [ $# -gt 0 ] || return 0
  "$LOADER" delete "$BROKERS" "$@" >/dev/null 2>>"$WORK/cleanup.err" ||
    log "could not delete every Kafka topic and group ($*): $(tail -n 1 "$WORK/cleanup.err")"
}

# table_head COLUMN...: a markdown table's header; the first and the last column left-aligned,
# the others (the numbers) right-aligned.
table_head() {
  local head='|' align='|' column i=0
  for column in "$@"; do
    i=$((i + 1))
    head+=" $column |"
    if [ "$i" -eq 1 ] || [ "$i" -eq $# ]; then align+='---|'; else align+='---:|'; fi
  done
  printf '%s\n' "$head" "$align"
}
