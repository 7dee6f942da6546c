#!/usr/bin/env bash
# PGSync against sluice end to end (Postgres → OpenSearch), one system at a time on one table,
# in one invocation: (a) the initial sync of a table, (b) a stream of single-row updates.
#
# One run:
#   1. a fresh database with `rows(id bigint primary key, payload text, rev int)` (payload: 288
#      hex characters; about 330 bytes per row), BENCH_ROWS rows (default 5,000,000), then
#      VACUUM ANALYZE;
#   2. PGSync (pip install pgsync==7.3.0 into a venv in the cache; Redis from Debian's
#      redis-server, a private instance on 127.0.0.1:BENCH_REDIS_PORT without persistence),
#      schema: the table's three columns into one index; OPENSEARCH=True, ELASTICSEARCH=False,
#      otherwise its defaults:
#      (a) `bootstrap --config schema.json` (its triggers, functions and replication slot), then
#          `pgsync --config schema.json` until it exits, each under /usr/bin/time -v; the index
#          must then hold BENCH_ROWS documents (`_count` after `_refresh`);
#      (b) `pgsync --config schema.json --daemon` under /usr/bin/time -v; once it LISTENs, the
#          writer (below) sets rev = 1 on rows 1..BENCH_CHANGES; timed until `_count` of
#          rev = 1 reaches BENCH_CHANGES (polled every 500 ms; the index refreshes every second),
#          then `_count` must still be BENCH_ROWS; then SIGTERM, `bootstrap --teardown` and the
#          index is deleted;
#   3. sluice (release builds), 6 partitions, otherwise their defaults (backfill chunks of 2 MiB,
#      at most 10,000 rows; sink batch 500, 4 requests in flight, no gzip):
#      (a) sluice-producer run with `backfill: true` and sluice-consumer run, both started at
#          once under /usr/bin/time -v, timed until the index's `_count` reaches BENCH_ROWS
#          (polled every 500 ms), checked after `_refresh`; then both get SIGTERM;
#      (b) both started again; once the producer streams and the consumer has its partitions, the
#          same writer sets rev = 2 on rows 1..BENCH_CHANGES; timed until `_count` of rev = 2
#          reaches BENCH_CHANGES, then `_count` must still be BENCH_ROWS;
#   4. the slots, the publication, PGSync's triggers (with the database), the topic, the group,
#      the indices, Redis and every process are removed or stopped, also when the run fails.
# The writer: BENCH_WRITERS (default 2) sessions at once, each a PL/pgSQL loop over its share
# of the ids of `UPDATE rows SET rev = …, payload = … WHERE id = i; COMMIT;` with
# synchronous_commit=off, as fast as Postgres takes them, so the rate each system reaches is its
# own ceiling (the writer's rate is printed: where a system keeps up with it, the writer is the
# limit). Reported for (b): the writer's rate, the time from the writer's last commit until the
# index reflects every change ("behind"), and changes / (first commit → all visible).
# CPU is user+system seconds over each timed step from /proc: PGSync (with its threads), Redis,
# sluice-producer, sluice-consumer; the cluster's JVM and the Kafka broker apart. Peak RSS from
# /usr/bin/time -v (Redis: VmHWM). Postgres's own backends are not counted for either system.
#
#   bench/peers/pgsync.sh
#
# Needs Postgres, Kafka and OpenSearch from deploy/local (the SLUICE_TEST_* variables, from the
# environment or $SLUICE_STATE_DIR/env), python3 with venv, and redis-server (installed with
# apt-get when missing and run as root). Builds with `cargo build --release -p sluice-producer
# -p sluice-consumer -p sluice-tests --bins` (not timed; sluice-bulk-load deletes the topic).
# Knobs: BENCH_ROWS, BENCH_CHANGES (default 1,000,000; at most BENCH_ROWS), BENCH_WRITERS,
# BENCH_PGSYNC_VERSION (7.3.0), BENCH_REDIS_PORT (16379), BENCH_TIMEOUT (seconds per step,
# default 3600), BENCH_PEERS_CACHE (default /var/tmp/sluice-bench-cache/peers),
# BENCH_QUIET_TIMEOUT (see bench/lib.sh), BENCH_LOG_DIR (keep the logs and time -v reports).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

N=${BENCH_ROWS:-5000000}
M=${BENCH_CHANGES:-1000000}
WRITERS=${BENCH_WRITERS:-2}
PGSYNC_VERSION=${BENCH_PGSYNC_VERSION:-7.3.0}
REDIS_PORT=${BENCH_REDIS_PORT:-16379}
TIMEOUT=${BENCH_TIMEOUT:-3600}
[ "$M" -le "$N" ] || die "BENCH_CHANGES ($M) must not exceed BENCH_ROWS ($N): the writer updates existing rows"
require_time

peers_setup verify-ca
ENDPOINT=${SLUICE_TEST_OPENSEARCH_URL:?no SLUICE_TEST_OPENSEARCH_URL}
CLUSTER_PID_FILE=$SLUICE_STATE_DIR/opensearch/run/opensearch.pid
[[ $ENDPOINT =~ ^(https?)://([^:/]+):([0-9]+)/?$ ]] || die "cannot split $ENDPOINT into scheme, host and port"
OS_SCHEME=${BASH_REMATCH[1]} OS_HOST=${BASH_REMATCH[2]} OS_PORT=${BASH_REMATCH[3]}

WORK=$(mktemp -d)
ID="bench_pgs_$(date +%s)"
DB="sluice_$ID" TOPIC="$ID.public.rows"
IDX_P="bench-pgsync-${ID#bench_pgs_}" IDX_S="bench-sluice-${ID#bench_pgs_}"
VENV=$CACHE/pgsync-$PGSYNC_VERSION

# What cleanup must remove; set as soon as it exists.
CLEAN_DB='' CLEAN_KAFKA=() PIDS=() REDIS_PID='' PGSYNC_BOOTSTRAPPED=''

# os METHOD PATH [BODY]: a request to the cluster (no auth on the local OpenSearch).
os() { curl -sS -X "$1" -H 'Content-Type: application/json' "$ENDPOINT/$2" ${3:+--data-binary "$3"}; }
# count INDEX [REV]: documents in INDEX (with rev = REV), 0 while it does not exist.
count() {
  local body=''
  if [ -n "${2:-}" ]; then body="{\"query\":{\"term\":{\"rev\":$2}}}"; fi
  os POST "$1/_count" "$body" 2>/dev/null | jq -r '.count // 0' 2>/dev/null || echo 0
}
pid_cpu() { if [ -s "$1" ]; then cpu_seconds "$(cat "$1")"; fi; }
cluster_cpu() { pid_cpu "$CLUSTER_PID_FILE"; }
# tree_cpu PID: CPU seconds of PID and its descendants.
tree_cpu() {
  local total=0 p c
  for p in $1 $(pgrep -P "$1" || true); do
    c=$(cpu_seconds "$p")
    total=$(calc "$total + ${c:-0}" 2)
  done
  echo "$total"
}
hwm_mb() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo '?'; }

# PGSYNC_ENV: PGSync's settings, put before its commands (it would also read a .env from the
# current directory: its commands run in $WORK, which has none).
PGSYNC_ENV=(env PG_HOST="$PG_HOST" PG_PORT="$PG_PORT" PG_USER="$PG_USER" PG_PASSWORD="$PG_PASSWORD"
  PG_SSLMODE=verify-ca PG_SSLROOTCERT="$SLUICE_TEST_PG_CA"
  ELASTICSEARCH=False OPENSEARCH=True ELASTICSEARCH_SCHEME="$OS_SCHEME" ELASTICSEARCH_HOST="$OS_HOST"
  ELASTICSEARCH_PORT="$OS_PORT" REDIS_HOST=127.0.0.1 REDIS_PORT="$REDIS_PORT" CHECKPOINT_PATH="$WORK/pgsync")

cleanup() {
  watch_abort
  local pid index
  for pid in "${PIDS[@]}"; do end_process "$pid"; done
  PIDS=()
  if [ -n "$PGSYNC_BOOTSTRAPPED" ]; then
    (cd "$WORK" && "${PGSYNC_ENV[@]}" "$VENV/bin/bootstrap" --teardown --config "$WORK/schema.json") \
      >>"$WORK/teardown.log" 2>&1 || log "PGSync's teardown failed (the database is dropped anyway)"
    PGSYNC_BOOTSTRAPPED=''
  fi
  if [ -n "$REDIS_PID" ]; then end_process "$REDIS_PID"; fi
  if [ -n "$CLEAN_DB" ]; then drop_database "$CLEAN_DB"; fi
  delete_kafka "${CLEAN_KAFKA[@]}"
  for index in $(os GET "_cat/indices/bench-*-${ID#bench_pgs_}*?h=index" 2>/dev/null | grep -- "-${ID#bench_pgs_}" || true); do
    os DELETE "$index" >/dev/null 2>&1 || log "could not delete index $index"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

build_sluice

# PGSync and Redis, from the registries.
if [ ! -x "$VENV/bin/pgsync" ]; then
  log "installing pgsync==$PGSYNC_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV" || die "python3 -m venv failed: apt-get install python3-venv"
  "$VENV/bin/pip" install -q "pgsync==$PGSYNC_VERSION" >"$WORK/pip.log" 2>&1 || {
    tail -n 20 "$WORK/pip.log" >&2
    die "pip install pgsync==$PGSYNC_VERSION failed"
  }
fi
if ! command -v redis-server >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "no redis-server: apt-get install redis-server"
  log "installing Debian's redis-server"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >"$WORK/apt.log" 2>&1 || {
    tail -n 20 "$WORK/apt.log" >&2
    die "apt-get install redis-server failed"
  }
fi
PGSYNC_REPORTED=$("$VENV/bin/pip" show pgsync 2>/dev/null | awk '/^Version:/ { print $2 }')
OS_CLIENT=$("$VENV/bin/pip" show opensearch-py 2>/dev/null | awk '/^Version:/ { print $2 }')
REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
PY_VERSION=$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')
PG_VERSION=$(admin_sql "SHOW server_version")
CLUSTER_VERSION=$(os GET '' | jq -r '.version.number' 2>/dev/null || echo '?')

# ---------------------------------------------------------------------------------------------
# 1. The table.
log "database $DB: $N rows of ~330 bytes"
admin_sql "CREATE DATABASE $DB"
CLEAN_DB=$DB
t0=$(now)
db_sql >/dev/null <<SQL
CREATE TABLE rows (id bigint PRIMARY KEY, payload text NOT NULL, rev int NOT NULL);
INSERT INTO rows SELECT g, md5(g || 'a') || md5(g || 'b') || md5(g || 'c') || md5(g || 'd')
  || md5(g || 'e') || md5(g || 'f') || md5(g || 'g') || md5(g || 'h') || md5(g || 'i'), 0
  FROM generate_series(1, $N) g;
VACUUM ANALYZE rows;
-- The writer: rows lo..hi, one transaction each.
CREATE PROCEDURE bench_update(lo bigint, hi bigint, r int) LANGUAGE plpgsql AS \$\$
BEGIN
  FOR i IN lo..hi LOOP
    UPDATE rows SET rev = r, payload = md5(i || 'r' || r) || substr(payload, 33) WHERE id = i;
    COMMIT;
  END LOOP;
END
\$\$;
SQL
FILL_S=$(seconds_between "$t0" "$(now)")
ROW_BYTES=$(db_sql -c "SELECT avg(pg_column_size(r.*))::int FROM (SELECT * FROM rows LIMIT 1000) r")
TABLE_MB=$(db_sql -c "SELECT round(pg_table_size('rows') / 1048576.0)")
log "filled in ${FILL_S}s: $TABLE_MB MB, ~$ROW_BYTES bytes per row"

# write REV: the writer, run in the background; writes the times before its first and after its
# last commit into $WORK/w0 and $WORK/w1 (read_writer sets W0 and W1 from them).
write() {
  local per=$(((M + WRITERS - 1) / WRITERS)) lo hi pids=()
  now >"$WORK/w0"
  for ((lo = 1; lo <= M; lo += per)); do
    hi=$((lo + per - 1))
    if [ "$hi" -gt "$M" ]; then hi=$M; fi
    PGOPTIONS='-c synchronous_commit=off' db_sql -c "CALL bench_update($lo, $hi, $1)" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || die "a writer session failed"; done
  now >"$WORK/w1"
}
read_writer() { W0=$(cat "$WORK/w0") W1=$(cat "$WORK/w1"); }

# wait_docs INDEX TOTAL [REV] [PID...]: polls until INDEX counts TOTAL documents (with rev =
# REV); sets T_DONE. Dies when one of the PIDs exits or the time runs out.
wait_docs() {
  local index=$1 total=$2 rev=${3:-} have=0 start=$SECONDS pid
  shift 3
  while :; do
    have=$(count "$index" "$rev")
    if [ "${have:-0}" -ge "$total" ]; then
      T_DONE=$(now)
      return 0
    fi
    for pid in "$@"; do
      kill -0 "$pid" 2>/dev/null || die "process $pid exited while $index counted $have of $total documents${rev:+ with rev $rev}"
    done
    [ $((SECONDS - start)) -lt "$TIMEOUT" ] || die "$index counts $have of $total documents${rev:+ with rev $rev} after ${TIMEOUT}s"
    sleep 0.5
  done
}

# check_docs INDEX: `_count` after `_refresh` must be N.
check_docs() {
  local have
  os POST "$1/_refresh" >/dev/null
  have=$(count "$1")
  [ "$have" = "$N" ] || die "$1 holds $have documents, expected exactly $N: no result reported"
  echo "$have"
}

rss_of() { calc "$(time_field "$1" 'Maximum resident set size (kbytes)') / 1024" 1; }
cpu_of() { calc "$(time_field "$1" 'User time (seconds)') + $(time_field "$1" 'System time (seconds)')" 1; }

# ---------------------------------------------------------------------------------------------
# 2. PGSync.
mkdir -p "$WORK/pgsync" "$WORK/redis"
cat >"$WORK/schema.json" <<EOF
[
  {
    "database": "$DB",
    "index": "$IDX_P",
    "nodes": { "table": "rows", "schema": "public", "columns": ["id", "payload", "rev"] }
  }
]
EOF
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK/redis" \
  --protected-mode yes >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 50); do
  grep -q 'Ready to accept connections' "$WORK/redis.log" && break
  kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server did not start: $(tail -n 5 "$WORK/redis.log")"
  sleep 0.1
done
redis_cpu() { cpu_seconds "$REDIS_PID"; }

# (a) bootstrap + initial sync.
wait_quiet
log "PGSync (a): bootstrap, then the initial sync of $N rows into $IDX_P"
e0=$(cluster_cpu) r0=$(redis_cpu)
watch_start
t0=$(now)
PGSYNC_BOOTSTRAPPED=yes
start_timed bootstrap "${PGSYNC_ENV[@]}" "$VENV/bin/bootstrap" --config "$WORK/schema.json"
wait_timed "$STARTED" || die "PGSync's bootstrap failed: $(tail -n 20 "$WORK/bootstrap.log")"
t_boot=$(now)
start_timed pgsync-sync "${PGSYNC_ENV[@]}" "$VENV/bin/pgsync" --config "$WORK/schema.json"
wait_timed "$STARTED" || die "PGSync's initial sync failed: $(tail -n 20 "$WORK/pgsync-sync.log")"
t1=$(now)
P_A_DIST=$(watch_stop)
e1=$(cluster_cpu) r1=$(redis_cpu)
P_A_DOCS=$(check_docs "$IDX_P")
P_A_BOOT=$(seconds_between "$t0" "$t_boot" 2)
P_A_WALL=$(seconds_between "$t0" "$t1" 2)
P_A_CPU=$(calc "$(cpu_of "$WORK/bootstrap.time") + $(cpu_of "$WORK/pgsync-sync.time")" 1)
P_A_RSS=$(rss_of "$WORK/pgsync-sync.time")
P_A_REDIS=$(calc "${r1:-0} - ${r0:-0}" 1)
P_A_CLUSTER=$(calc "${e1:-0} - ${e0:-0}" 1)
log "PGSync (a): ${P_A_WALL}s (bootstrap ${P_A_BOOT}s), $P_A_DOCS documents"

# (b) the daemon and the writer.
wait_quiet
log "PGSync (b): --daemon, then $M single-row updates by $WRITERS writer sessions"
start_timed pgsync-daemon "${PGSYNC_ENV[@]}" "$VENV/bin/pgsync" --config "$WORK/schema.json" --daemon
PGSYNC_PID=$STARTED
# Ready once it LISTENs on the database (its triggers NOTIFY).
for _ in $(seq 1 600); do
  [ "$(admin_sql "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB' AND query ILIKE 'LISTEN%'")" -gt 0 ] && break
  kill -0 "$PGSYNC_PID" 2>/dev/null || die "pgsync --daemon exited: $(tail -n 20 "$WORK/pgsync-daemon.log")"
  sleep 0.1
done
sleep 2
e0=$(cluster_cpu) r0=$(redis_cpu) p0=$(tree_cpu "$PGSYNC_PID")
watch_start
write 1 &
writer=$!
wait_docs "$IDX_P" "$M" 1 "$PGSYNC_PID"
wait "$writer" || die "the writer failed"
read_writer
P_B_DIST=$(watch_stop)
e1=$(cluster_cpu) r1=$(redis_cpu) p1=$(tree_cpu "$PGSYNC_PID")
P_B_DOCS=$(check_docs "$IDX_P")
stop_timed "$PGSYNC_PID"
(cd "$WORK" && "${PGSYNC_ENV[@]}" "$VENV/bin/bootstrap" --teardown --config "$WORK/schema.json") >"$WORK/teardown.log" 2>&1 ||
  die "PGSync's teardown failed: $(tail -n 5 "$WORK/teardown.log")"
PGSYNC_BOOTSTRAPPED=''
P_REDIS_RSS=$(hwm_mb "$REDIS_PID")
end_process "$REDIS_PID"
REDIS_PID=''
os DELETE "$IDX_P" >/dev/null
P_B_WRITER=$(calc "$M / $(seconds_between "$W0" "$W1" 3)" 0)
P_B_BEHIND=$(seconds_between "$W1" "$T_DONE" 2)
P_B_WALL=$(seconds_between "$W0" "$T_DONE" 2)
P_B_RATE=$(calc "$M / $P_B_WALL" 0)
P_B_CPU=$(calc "$p1 - $p0" 1)
P_B_RSS=$(rss_of "$WORK/pgsync-daemon.time")
P_B_REDIS=$(calc "${r1:-0} - ${r0:-0}" 1)
P_B_CLUSTER=$(calc "${e1:-0} - ${e0:-0}" 1)
log "PGSync (b): writer $P_B_WRITER/s, all visible ${P_B_BEHIND}s after the last commit, $P_B_RATE changes/s"

# ---------------------------------------------------------------------------------------------
# 3. sluice.
sluice_config "$WORK/sluice.yaml" "$ID" "$ID" "$ID"
cat >>"$WORK/sluice.yaml" <<YAML
tables:
  - name: public.rows
    backfill: true
sinks:
  - name: $IDX_S
    table: public.rows
    elasticsearch:
      endpoint: $ENDPOINT
      index: $IDX_S
YAML
CLEAN_KAFKA+=("topic:$TOPIC" "topic:$IDX_S.dlq" "group:$IDX_S")

# start_sluice PHASE: both processes under /usr/bin/time -v; sets S_PROD and S_CONS.
start_sluice() {
  start_timed "producer-$1" "$PRODUCER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run
  S_PROD=$STARTED
  start_timed "consumer-$1" "$CONSUMER" --config "$WORK/sluice.yaml" --listen 127.0.0.1:0 run --sink "$IDX_S"
  S_CONS=$STARTED
}
stop_sluice() {
  stop_timed "$S_PROD"
  stop_timed "$S_CONS"
}

# (a) backfill.
wait_quiet
log "sluice (a): producer (backfill) + consumer until $IDX_S holds $N documents"
e0=$(cluster_cpu) k0=$(kafka_cpu)
watch_start
t0=$(now)
start_sluice a
wait_docs "$IDX_S" "$N" '' "$S_PROD" "$S_CONS"
t1=$T_DONE
S_A_DIST=$(watch_stop)
e1=$(cluster_cpu) k1=$(kafka_cpu)
S_A_PCPU=$(cpu_seconds "$S_PROD") S_A_CCPU=$(cpu_seconds "$S_CONS")
S_A_DOCS=$(check_docs "$IDX_S")
stop_sluice
S_A_WALL=$(seconds_between "$t0" "$t1" 2)
S_A_PRSS=$(rss_of "$WORK/producer-a.time") S_A_CRSS=$(rss_of "$WORK/consumer-a.time")
S_A_CLUSTER=$(calc "${e1:-0} - ${e0:-0}" 1) S_A_KAFKA=$(calc "${k1:-0} - ${k0:-0}" 1)
S_A_BF=$(db_sql -c "SELECT state || ' in ' || round(extract(epoch FROM finished_at - started_at)::numeric, 2) || ' s' FROM sluice.backfills" 2>/dev/null || echo '?')
log "sluice (a): ${S_A_WALL}s, $S_A_DOCS documents (backfill $S_A_BF)"

# (b) the pipeline and the writer.
wait_quiet
log "sluice (b): producer + consumer, then $M single-row updates by $WRITERS writer sessions"
start_sluice b
for _ in $(seq 1 600); do
  grep -q 'streaming changes' "$WORK/producer-b.log" && grep -q 'partitions assigned' "$WORK/consumer-b.log" && break
  kill -0 "$S_PROD" 2>/dev/null || die "the producer exited: $(tail -n 20 "$WORK/producer-b.log")"
  kill -0 "$S_CONS" 2>/dev/null || die "the consumer exited: $(tail -n 20 "$WORK/consumer-b.log")"
  sleep 0.1
done
sleep 2
e0=$(cluster_cpu) k0=$(kafka_cpu) sp0=$(cpu_seconds "$S_PROD") sc0=$(cpu_seconds "$S_CONS")
watch_start
write 2 &
writer=$!
wait_docs "$IDX_S" "$M" 2 "$S_PROD" "$S_CONS"
wait "$writer" || die "the writer failed"
read_writer
S_B_DIST=$(watch_stop)
e1=$(cluster_cpu) k1=$(kafka_cpu) sp1=$(cpu_seconds "$S_PROD") sc1=$(cpu_seconds "$S_CONS")
S_B_DOCS=$(check_docs "$IDX_S")
stop_sluice
S_B_WRITER=$(calc "$M / $(seconds_between "$W0" "$W1" 3)" 0)
S_B_BEHIND=$(seconds_between "$W1" "$T_DONE" 2)
S_B_WALL=$(seconds_between "$W0" "$T_DONE" 2)
S_B_RATE=$(calc "$M / $S_B_WALL" 0)
S_B_PCPU=$(calc "$sp1 - $sp0" 1) S_B_CCPU=$(calc "$sc1 - $sc0" 1)
S_B_PRSS=$(rss_of "$WORK/producer-b.time") S_B_CRSS=$(rss_of "$WORK/consumer-b.time")
S_B_CLUSTER=$(calc "${e1:-0} - ${e0:-0}" 1) S_B_KAFKA=$(calc "${k1:-0} - ${k0:-0}" 1)
log "sluice (b): writer $S_B_WRITER/s, all visible ${S_B_BEHIND}s after the last commit, $S_B_RATE changes/s"

if [ -n "${BENCH_LOG_DIR:-}" ]; then
  mkdir -p "$BENCH_LOG_DIR"
  cp "$WORK"/*.log "$WORK"/*.time "$WORK"/schema.json "$WORK"/sluice.yaml "$BENCH_LOG_DIR/" 2>/dev/null || true
fi

# ---------------------------------------------------------------------------------------------
P_A_RATE=$(calc "$N / $P_A_WALL" 0)
S_A_RATE=$(calc "$N / $S_A_WALL" 0)
S_A_CPU=$(calc "$S_A_PCPU + $S_A_CCPU" 1)
S_B_CPU=$(calc "$S_B_PCPU + $S_B_CCPU" 1)
S_A_RSS=$(calc "$S_A_PRSS + $S_A_CRSS" 1)
S_B_RSS=$(calc "$S_B_PRSS + $S_B_CRSS" 1)
# The peer's memory includes its Redis (a queue of its own); sluice's Kafka is a shared broker.
P_B_RSS_ALL=$(calc "$P_B_RSS + $P_REDIS_RSS" 1)

echo
machine_info
echo "source:   $SOURCE_STATE"
echo "versions: PGSync $PGSYNC_REPORTED (Python $PY_VERSION, opensearch-py $OS_CLIENT), Redis $REDIS_VERSION; OpenSearch $CLUSTER_VERSION; PostgreSQL $PG_VERSION"
echo "settings: PGSync defaults (OPENSEARCH=True; 2 workers, query chunks of 10,000, bulk chunks of 5,000); sluice defaults (backfill chunks of 2 MiB, at most 10,000 rows; sink batch 500, 4 in flight, no gzip), 6 partitions; TLS verify-ca to Postgres for both"
echo "table:    $N rows of ~$ROW_BYTES bytes ($TABLE_MB MB), filled in ${FILL_S}s; changes: $M single-row UPDATE transactions by $WRITERS writer sessions (synchronous_commit=off)"
echo
echo "(a) initial sync, until the index holds every row"
echo
table_head "system" "wall (s)" "rows/s" "documents (\`_count\`)" "CPU s: PGSync / producer + consumer" "CPU s per 100k rows" "Redis CPU (s)" "cluster CPU (s)" "Kafka CPU (s)" "peak RSS (MB)" "other builds/tests running"
echo "| PGSync (bootstrap ${P_A_BOOT}s + sync) | $P_A_WALL | $P_A_RATE | $P_A_DOCS | $P_A_CPU | $(calc "$P_A_CPU * 100000 / $N" 2) | $P_A_REDIS | $P_A_CLUSTER | | $P_A_RSS | $P_A_DIST |"
echo "| sluice (backfill) | $S_A_WALL | $S_A_RATE | $S_A_DOCS | $S_A_PCPU + $S_A_CCPU | $(calc "$S_A_CPU * 100000 / $N" 2) | | $S_A_CLUSTER | $S_A_KAFKA | $S_A_PRSS + $S_A_CRSS | $S_A_DIST |"
echo
echo "(b) $M changes, from the writer's first commit until the index reflects every change"
echo
table_head "system" "writer (changes/s)" "behind the last commit (s)" "wall (s)" "changes/s" "documents (\`_count\`)" "CPU s: PGSync / producer + consumer" "CPU s per 100k changes" "Redis CPU (s)" "cluster CPU (s)" "Kafka CPU (s)" "peak RSS (MB)" "other builds/tests running"
echo "| PGSync \`--daemon\` | $P_B_WRITER | $P_B_BEHIND | $P_B_WALL | $P_B_RATE | $P_B_DOCS | $P_B_CPU | $(calc "$P_B_CPU * 100000 / $M" 2) | $P_B_REDIS | $P_B_CLUSTER | | $P_B_RSS (+ Redis $P_REDIS_RSS) | $P_B_DIST |"
echo "| sluice producer + consumer | $S_B_WRITER | $S_B_BEHIND | $S_B_WALL | $S_B_RATE | $S_B_DOCS | $S_B_PCPU + $S_B_CCPU | $(calc "$S_B_CPU * 100000 / $M" 2) | | $S_B_CLUSTER | $S_B_KAFKA | $S_B_PRSS + $S_B_CRSS | $S_B_DIST |"
echo
table_head "sluice ÷ PGSync (sluice: producer + consumer; PGSync in (b): with its Redis)" "value" "goal" "met"
goal_rows "(a) initial sync" "$S_A_RATE" "$P_A_RATE" "$S_A_CPU" "$P_A_CPU" "$S_A_RSS" "$P_A_RSS"
goal_rows "(b) stream, end to end" "$S_B_RATE" "$P_B_RATE" "$S_B_CPU" "$(calc "$P_B_CPU + $P_B_REDIS" 1)" "$S_B_RSS" "$P_B_RSS_ALL"
echo
echo "sluice's backfill in sluice.backfills: $S_A_BF; PGSync's index was deleted before sluice ran; Postgres's own CPU is counted for neither"
