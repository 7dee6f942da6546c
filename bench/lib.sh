# shellcheck shell=bash
# Shared helpers of the bench/ scripts. Sourced, never run.
#
# The machine these run on is shared: other cargo builds and test runs distort every timing.
# wait_quiet takes a lock shared by all bench scripts (bench_lock), then waits (up to
# BENCH_QUIET_TIMEOUT seconds, default 600) until no test binary
# (target/debug/deps/…) and no rustc is running; watch_start/watch_stop record whether one
# appeared during a measurement, so every result says whether it was disturbed.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
# seconds_between T0 T1 [DECIMALS]
seconds_between() { awk -v a="$1" -v b="$2" -v d="${3:-1}" 'BEGIN { printf "%.*f", d, b - a }'; }
# calc EXPRESSION [DECIMALS]: floating-point arithmetic through awk.
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }

# busy: another cargo test binary or rustc is running. Processes whose command line contains
# $OWN_MARK (set by a script for its own processes, e.g. its temporary target dir) do not count.
OWN_MARK=${OWN_MARK:-}
busy() {
  local own=$OWN_MARK pid cmd
  for pid in $(pgrep -f 'target/debug/deps/' || true) $(pgrep -x rustc || true); do
    [ "$pid" = "$$" ] && continue
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    [ -n "$cmd" ] || continue
    if [ -n "$own" ] && [[ "$cmd" == *"$own"* ]]; then continue; fi
    return 0
  done
  return 1
}

# bench_lock: takes /var/tmp/sluice-bench.lock (BENCH_LOCK) for the rest of the script, so two
# bench scripts never measure at the same time; the second waits for the first to exit. Taken
# once per script, by the first wait_quiet. Every process the script starts inherits the lock's
# descriptor (9): one left running after the script exits keeps the lock, so the watcher below
# closes it, and each script's EXIT trap stops what it started.
BENCH_LOCKED=''
bench_lock() {
  [ -n "$BENCH_LOCKED" ] && return 0
  local lock=${BENCH_LOCK:-/var/tmp/sluice-bench.lock} start=$SECONDS
  exec 9>>"$lock"
  if ! flock -n 9; then
    log "waiting for another bench script to finish (it holds $lock)"
    flock 9
    log "waited $((SECONDS - start))s for the other bench script"
  fi
  BENCH_LOCKED=yes
}

# wait_quiet: takes the bench lock, then waits until busy is false (polling every 3 s).
wait_quiet() {
  bench_lock
  local timeout=${BENCH_QUIET_TIMEOUT:-600} start=$SECONDS
  while busy; do
    if [ $((SECONDS - start)) -ge "$timeout" ]; then
      log "warning: other builds/tests still running after ${timeout}s: measuring anyway"
      return 0
    fi
    sleep 3
  done
  if [ $((SECONDS - start)) -gt 0 ]; then log "waited $((SECONDS - start))s for other builds/tests to finish"; fi
}

# watch_start / watch_stop: samples busy every 2 s in the background; watch_stop
# prints "no" or "yes (~N s)" (how long other builds/tests ran during the measurement).
watch_start() {
  WATCH_FILE=$(mktemp)
  (
    while :; do
      if busy; then echo x >>"$WATCH_FILE"; fi
      sleep 2
    done
  ) </dev/null >/dev/null 2>&1 9>&- &
  WATCH_PID=$!
}
watch_stop() {
  kill "$WATCH_PID" 2>/dev/null || true
  wait "$WATCH_PID" 2>/dev/null || true
  WATCH_PID=''
  local n
  n=$(wc -l <"$WATCH_FILE")
  rm -f "$WATCH_FILE"
  if [ "$n" -eq 0 ]; then echo no; else echo "yes (~$((n * 2)) s)"; fi
}

# watch_abort: stops a watcher left running (for EXIT traps).
WATCH_PID=''
watch_abort() {
  if [ -n "$WATCH_PID" ]; then
    kill "$WATCH_PID" 2>/dev/null || true
    rm -f "$WATCH_FILE"
  fi
}

# cpu_seconds PID: user+system CPU time the process has used so far (empty if it is gone).
cpu_seconds() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # Fields after the command name (which may contain spaces): state is $1, utime $12, stime $13.
  awk -v tck="$CLK_TCK" '{ printf "%.2f", ($12 + $13) / tck }' <<<"${stat##*) }"
}

# postgres_cpu: CPU seconds (user+system) used so far by the local Postgres server: the
# postmaster with every backend it has reaped (cutime/cstime) and every live one; 0 when it is
# not running. The difference of two readings is what the server spent in between, walsenders
# and ended backends included (a backend's time moves into the postmaster's once it is reaped,
# so read a moment after the clients have gone).
postgres_cpu() {
  local dir=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}/postgres/data master stat
  master=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null) && stat=$(cat "/proc/$master/stat" 2>/dev/null) || {
    echo 0
    return 0
  }
  {
    awk '{ print $12 + $13 + $14 + $15 }' <<<"${stat##*) }"
    for child in $(pgrep -P "$master" || true); do
      stat=$(cat "/proc/$child/stat" 2>/dev/null) || continue
      awk '{ print $12 + $13 }' <<<"${stat##*) }"
    done
  } | awk -v tck="$CLK_TCK" '{ t += $1 } END { printf "%.2f", t / tck }'
}

# kafka_cpu: CPU seconds used so far by the local Kafka broker (empty if not running).
kafka_cpu() {
  local file=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}/kafka/kafka.pid
  if [ -s "$file" ]; then cpu_seconds "$(cat "$file")"; fi
}

# bench_fill_sql: the procedure `bench_fill(n)` that fills `rows(id bigint primary key, payload
# text)` with n single-row transactions (`INSERT …; COMMIT;`, payload 9 md5s, about 300 bytes per
# row) and returns, as `target`, the insert LSN inside the last one. The producer drain and the
# Debezium comparison both call it, so they measure the same WAL.
bench_fill_sql() {
  cat <<'SQL'
CREATE PROCEDURE bench_fill(n bigint, INOUT target pg_lsn DEFAULT NULL) LANGUAGE plpgsql AS $$
DECLARE
  s text;
BEGIN
  FOR i IN 1..n LOOP
    s := i::text;
    INSERT INTO rows VALUES (i, md5(s || 'a') || md5(s || 'b') || md5(s || 'c') || md5(s || 'd')
      || md5(s || 'e') || md5(s || 'f') || md5(s || 'g') || md5(s || 'h') || md5(s || 'i'));
    IF i = n THEN
      target := pg_current_wal_insert_lsn();
    END IF;
    COMMIT;
  END LOOP;
END
$$;
SQL
}

# time_field FILE NAME: one value from a `/usr/bin/time -v` report.
time_field() { awk -F': ' -v k="$2" '{ sub(/^[ \t]+/, "", $1) } $1 == k { print $2 }' "$1"; }

# require_time: GNU time (Debian package `time`).
require_time() {
  [ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install time"
}

# drop_slot SQL SLOT: drops the replication slot SLOT through the function SQL (which runs one
# statement as a superuser), retrying for up to 10 s while the walsender lets go of it.
drop_slot() {
  for _ in $(seq 1 50); do
    "$1" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$2'" \
      >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 0
}

# machine_info: the lines docs/benchmarks.md starts with.
machine_info() {
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu:     $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), nproc $(nproc)"
  echo "memory:  $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "kernel:  $(uname -sr)"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min)"
}

# kafka_tool count|delete TOPIC: "PARTITIONS MESSAGES" (high minus low watermarks), or deletes
# the topic (bench/KafkaTool.java). Needs JAVA, KAFKA_LIBS and BROKERS.
kafka_tool() {
  "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -cp "$KAFKA_LIBS/*" "$BENCH_DIR/KafkaTool.java" "$1" "$BROKERS" "$2"
}

# build_producer: the release producer (not timed); sets PRODUCER and SOURCE_STATE (the commit,
# and whether the producer's sources had uncommitted changes).
build_producer() {
  log "building the producer: cargo build --release -p sluice-producer (not timed)"
  (cd "$REPO_DIR" && cargo build -q --release -p sluice-producer)
  PRODUCER=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/sluice-producer
  [ -x "$PRODUCER" ] || die "no $PRODUCER"
  SOURCE_STATE="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
  if [ -n "$(git -C "$REPO_DIR" status --porcelain -- producer common proto 2>/dev/null)" ]; then
    SOURCE_STATE+=" with uncommitted changes in producer/common/proto"
  fi
}

# local_services: the endpoints of deploy/local (the SLUICE_TEST_* variables, from the
# environment or $SLUICE_STATE_DIR/env) as ENDPOINT, API_KEY, PSQL, BROKERS, PG_BASE, SSL and
# TARGET_DIR (the release binaries), and admin_sql SQL, db_sql SQL (on database $DB) and
# es METHOD PATH [BODY] to use them.
local_services() {
  SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}
  if [ -z "${SLUICE_TEST_PG_URL:-}" ] || [ -z "${SLUICE_TEST_ELASTICSEARCH_URL:-}" ]; then
    [ -r "$SLUICE_STATE_DIR/env" ] || die "no $SLUICE_STATE_DIR/env: start the services with deploy/local/up.sh"
    set -a
    # shellcheck disable=SC1091
    . "$SLUICE_STATE_DIR/env"
    set +a
  fi
  ENDPOINT=${SLUICE_TEST_ELASTICSEARCH_URL:?}
  API_KEY=${SLUICE_TEST_ELASTICSEARCH_API_KEY:?}
  PSQL=$SLUICE_TEST_PG_BINDIR/psql
  BROKERS=$SLUICE_TEST_KAFKA_BROKERS
  PG_BASE=${SLUICE_TEST_PG_URL%/*}
  SSL="sslmode=verify-ca&sslrootcert=$SLUICE_TEST_PG_CA"
  # shellcheck disable=SC2034 # used by the scripts that call this
  TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release
  # shellcheck disable=SC2317 # called by the scripts
  admin_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$PG_BASE/postgres?$SSL" -c "$1"; }
  # shellcheck disable=SC2317
  db_sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$PG_BASE/$DB?$SSL" -c "$1"; }
  # es METHOD PATH [BODY]: the API key goes to curl on stdin, never on a command line.
  es() {
    printf 'header = "Authorization: ApiKey %s"\n' "$API_KEY" |
      curl -sS -K - -X "$1" -H 'Content-Type: application/json' "$ENDPOINT/$2" ${3:+--data-binary "$3"}
  }
}

# items_sql: the table of bench/consumer-drain.sh, `items(id bigint primary key, name, email,
# amount numeric(12,2), quantity int, active bool, created_at timestamptz, note text)` (note: 384
# hex characters; about 480 bytes a row), and `bench_rows(lo, hi)`, its rows for ids lo..hi.
items_sql() {
  cat <<'SQL'
CREATE TABLE items (
  id bigint PRIMARY KEY,
  name text NOT NULL,
  email text NOT NULL,
  amount numeric(12, 2) NOT NULL,
  quantity integer NOT NULL,
  active boolean NOT NULL,
  created_at timestamptz NOT NULL,
  note text NOT NULL
);
CREATE FUNCTION bench_rows(lo bigint, hi bigint) RETURNS SETOF items LANGUAGE sql AS $$
  SELECT g, 'customer ' || g, 'user' || g || '@example.com', (g % 1000000) / 100.0, (g % 50)::int,
    g % 3 <> 0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
    md5(g || 'a') || md5(g || 'b') || md5(g || 'c') || md5(g || 'd') || md5(g || 'e') || md5(g || 'f')
      || md5(g || 'g') || md5(g || 'h') || md5(g || 'i') || md5(g || 'j') || md5(g || 'k') || md5(g || 'l')
  FROM generate_series(lo, hi) AS g
$$;
SQL
}

# pipeline_yaml DB NAME [SINK]: a config streaming public.items of database DB, with NAME as slot,
# publication and topic prefix, and the sink SINK (index SINK on $ENDPOINT, with the API key from
# $SLUICE_BENCH_API_KEY when API_KEY is set); every other setting is the default. After
# local_services.
pipeline_yaml() {
  cat <<YAML
postgres:
  url: $PG_BASE/$1?sslmode=verify-ca
  ca_file: $SLUICE_TEST_PG_CA
  slot: $2
  publication: $2
kafka:
  brokers: $BROKERS
  topic_prefix: $2
tables:
  - name: public.items
YAML
  [ -n "${3:-}" ] || return 0
  printf 'sinks:\n  - name: %s\n    table: public.items\n    elasticsearch:\n      endpoint: %s\n      index: %s\n' \
    "$3" "$ENDPOINT" "$3"
  # shellcheck disable=SC2016 # the config expands it
  if [ -n "$API_KEY" ]; then echo '      auth: { type: api_key, value: "${SLUICE_BENCH_API_KEY}" }'; fi
}
