#!/usr/bin/env bash
# Sustained load: sluice-producer, Kafka, sluice-consumer and Elasticsearch (or OpenSearch) under a
# writer that holds a fixed rate of changes for minutes; whether the lag stays flat, the commit →
# indexed latency, and the RSS and CPU of both processes over time.
#
# One run:
#   1. a fresh database with `items(id bigint primary key, name, email, amount numeric(12,2),
#      quantity int, active bool, created_at timestamptz, note text)` (the rows of
#      bench/consumer-drain.sh: about 480 bytes, note 384 hex characters), the release producer and
#      consumer with the config defaults (6 partitions, batch_size 500, 4 requests in flight, no gzip;
#      nothing set but the connections, names and the sink), started once for the whole run;
#   2. warm-up (not measured): BENCH_PRELOAD (default 100,000) rows in transactions of 1,000 go
#      through the pipeline until the group has committed them; /metrics of the consumer is then
#      rendered every 2 s for the rest of the run (see bench/consumer-drain.sh);
#   3. for each rate R of BENCH_RATES (default "5000 10000") changes/s, for BENCH_SECONDS (default
#      300): BENCH_WRITERS (default 5) connections each run a PL/pgSQL loop committing transactions
#      of BENCH_TX_SIZE (default 10) changes: BENCH_UPDATES (default 5) of them one UPDATE of
#      random preloaded rows (quantity + 1 and a new name; writer w of n updates only ids ≡ w mod
#      n, so writers never wait on each other's row locks), the rest one INSERT of new rows. Each
#      loop paces itself to R ÷ n changes/s from its own start (it sleeps when ahead of that
#      schedule; behind it, it commits without sleeping until it is back on it) and counts its
#      changes in `bench_progress` every 100 ms. The achieved rate is changes committed ÷ the
#      wall time from the first writer's start to the last one's end;
#   4. every BENCH_SAMPLE_INTERVAL (default 5) seconds, from the warm-up to the end: the writers'
#      committed changes, the slot's lag (current WAL − confirmed_flush_lsn), the topic's end
#      offsets and the group's committed offsets (from `sluice-consumer status`, which asks Kafka),
#      the consumer's commit → indexed summary from /metrics, the RSS (VmRSS) and CPU time of the
#      producer and the consumer, and the CPU time of Postgres (postmaster with its exited
#      children plus every live backend: the writers, the walsender), the Kafka broker and the
#      cluster's JVM;
#   5. after each window: waits until the topic holds every change and the group has committed the
#      topic's end (the drain time is reported), then checks the counts: topic messages ==
#      BENCH_PRELOAD + the changes written; index `_count` after `_refresh` == rows in the table;
#      and 1,000 sampled rows (500 updated, 500 inserted; `_mget`) have their name and quantity
#      in the index, at a version (the commit LSN) between the run's first LSN and the current one;
#   6. the slot, the database (and its publication), the topics, the group and the indices are
#      deleted, the processes stopped, also when the run fails.
#
# Per rate: "backlog" = changes committed in Postgres and not yet committed by the consumer group
# (writers' changes + preload − Σ committed offsets), the whole pipeline's lag; its parts are the
# producer's (changes − topic messages) and the group's (end − committed offsets). The backlog is
# **flat** when its least-squares slope over the window is at most BENCH_FLAT_SLOPE (default 1) %
# of R per second, and no sample of the window's last third exceeds BENCH_FLAT_SECONDS (default
# 10) seconds of changes (R × 10). A rate is **held** when the writers achieved at least 98% of
# it, the backlog was flat and every count matched. The commit → indexed quantiles come from the
# exporter's rolling window (3 × 20 s): p50 and p99 are the medians of the samples taken at least
# 60 s into the window (each covers its last 40–60 s), "p99 worst" their maximum; the mean is
# exact, from the _sum/_count deltas over the window.
#
#   bench/sustained.sh                               # 5,000 then 10,000 changes/s, 5 min each
#   BENCH_RATES="2000" BENCH_SECONDS=60 bench/sustained.sh
#
# Needs Postgres, Kafka and the cluster from deploy/local (the SLUICE_TEST_* variables, from the
# environment or $SLUICE_STATE_DIR/env). Builds with `cargo build --release -p sluice-producer -p
# sluice-consumer -p sluice-tests --bins` (not timed; sluice-bulk-load counts the topic, waits for
# the group and deletes topics and groups).
# Knobs: BENCH_RATES, BENCH_SECONDS, BENCH_TARGET (elasticsearch, the default, with its API key;
# or opensearch), BENCH_WRITERS, BENCH_TX_SIZE, BENCH_UPDATES, BENCH_PRELOAD, BENCH_SAMPLE_INTERVAL,
# BENCH_FLAT_SLOPE, BENCH_FLAT_SECONDS, BENCH_DRAIN_TIMEOUT (seconds, default 1800),
# BENCH_QUIET_TIMEOUT (see bench/lib.sh), BENCH_LOG_DIR (keep the logs and the samples there).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

RATES=${BENCH_RATES:-5000 10000}
WINDOW=${BENCH_SECONDS:-300}
TARGET=${BENCH_TARGET:-elasticsearch}
WRITERS=${BENCH_WRITERS:-5}
TX=${BENCH_TX_SIZE:-10}
UPDATES=${BENCH_UPDATES:-5}
PRELOAD=${BENCH_PRELOAD:-100000}
INTERVAL=${BENCH_SAMPLE_INTERVAL:-5}
FLAT_SLOPE=${BENCH_FLAT_SLOPE:-1}
FLAT_SECONDS=${BENCH_FLAT_SECONDS:-10}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-1800}
[ "$UPDATES" -le "$TX" ] || die "BENCH_UPDATES ($UPDATES) must not exceed BENCH_TX_SIZE ($TX)"
[ "$PRELOAD" -ge "$((WRITERS * UPDATES))" ] || die "BENCH_PRELOAD is too small for the updates"

local_services
case $TARGET in
  elasticsearch) CLUSTER_PID_FILE=$SLUICE_STATE_DIR/elasticsearch/run/elasticsearch.pid ;;
  opensearch)
    ENDPOINT=${SLUICE_TEST_OPENSEARCH_URL:?no SLUICE_TEST_OPENSEARCH_URL}
    API_KEY=''
    CLUSTER_PID_FILE=$SLUICE_STATE_DIR/opensearch/run/opensearch.pid
    ;;
  *) die "BENCH_TARGET must be elasticsearch or opensearch" ;;
esac
# es METHOD PATH [BODY]: lib.sh's, without the header when the cluster takes no API key.
es() {
  local auth=''
  if [ -n "$API_KEY" ]; then auth="header = \"Authorization: ApiKey $API_KEY\""; fi
  printf '%s\n' "$auth" |
    curl -sS -K - -X "$1" -H 'Content-Type: application/json' "$ENDPOINT/$2" ${3:+--data-binary "$3"}
}
KAFKA_PID_FILE=$SLUICE_STATE_DIR/kafka/kafka.pid
PRODUCER=$TARGET_DIR/sluice-producer
CONSUMER=$TARGET_DIR/sluice-consumer
TOOL=$TARGET_DIR/sluice-bulk-load

WORK=$(mktemp -d)
ID="sustained_$(date +%s)"
DB="sluice_$ID" TOPIC="$ID.public.items" SINK="bench-${ID#sustained_}"
CONFIG=$WORK/sluice.yaml

PIDS=() SAMPLER_PID='' SCRAPER_PID=''
# stop_all PID…: SIGTERM to all at once; SIGKILL to those still there after 30 s.
stop_all() {
  local pid left
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 150); do
    left=''
    for pid in "$@"; do if kill -0 "$pid" 2>/dev/null; then left=yes; fi; done
    [ -z "$left" ] && return 0
    sleep 0.2
  done
  kill -KILL "$@" 2>/dev/null || true
}
cleanup() {
  local pid index
  watch_abort
  for pid in $SAMPLER_PID $SCRAPER_PID; do kill "$pid" 2>/dev/null || true; done
  if [ ${#PIDS[@]} -gt 0 ]; then stop_all "${PIDS[@]}"; fi
  drop_slot admin_sql "$ID"
  admin_sql "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || log "could not drop database $DB"
  "$TOOL" delete "$BROKERS" "topic:$TOPIC" "topic:$SINK.dlq" "group:$SINK" >/dev/null 2>&1 ||
    log "could not delete every Kafka topic and group of $ID"
  for index in $(es GET "_cat/indices/$SINK*?h=index" 2>/dev/null | grep "^$SINK" || true); do
    es DELETE "$index" >/dev/null 2>&1 || log "could not delete index $index"
  done
  if [ -n "${BENCH_LOG_DIR:-}" ]; then
    mkdir -p "$BENCH_LOG_DIR"
    cp "$WORK"/*.log "$WORK"/*.tsv "$BENCH_LOG_DIR/" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log "building: cargo build --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins (not timed)"
(cd "$REPO_DIR" && cargo build -q --release -p sluice-producer -p sluice-consumer -p sluice-tests --bins)
for bin in "$PRODUCER" "$CONSUMER" "$TOOL"; do [ -x "$bin" ] || die "no $bin"; done
SOURCE_STATE="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$(git -C "$REPO_DIR" status --porcelain -- consumer producer common proto 2>/dev/null)" ]; then
  SOURCE_STATE+=" with uncommitted changes in consumer/producer/common/proto"
fi
CLUSTER_VERSION=$(es GET "_nodes/_local?filter_path=nodes.*.version" | jq -r '.nodes[].version' 2>/dev/null || echo '?')
BENCH_START=$SECONDS

# ---------------------------------------------------------------------------------------------
# 1. The database, the config, the processes.
log "database $DB, slot $ID, topic $TOPIC, index $SINK"
admin_sql "CREATE DATABASE $DB"
db_sql "$(items_sql)
-- Not in the publication: the writers' own counts, one row per rate and writer.
CREATE TABLE bench_progress (
  run int, writer int, changes bigint NOT NULL, inserted bigint NOT NULL, updated bigint NOT NULL,
  PRIMARY KEY (run, writer)
);
-- Writer w of n: rate changes/s for seconds, in transactions of tx changes: one UPDATE of upd
-- random rows among ids 1..preload with id ≡ w (mod n), one INSERT of tx − upd new rows from
-- id first. Paces itself from its own start; counts into bench_progress every 100 ms.
CREATE PROCEDURE bench_write(p_run int, w int, n int, rate float8, seconds int, tx int, upd int,
    first bigint, preload bigint) LANGUAGE plpgsql AS \$\$
DECLARE
  t0 timestamptz := clock_timestamp();
  t_end timestamptz := t0 + seconds * interval '1 second';
  reported timestamptz := t0;
  ins int := tx - upd;
  next_id bigint := first;
  slots bigint := (preload - 1 - w) / n + 1;
  n_ins bigint := 0;
  n_upd bigint := 0;
  got int;
  ahead float8;
BEGIN
  INSERT INTO bench_progress VALUES (p_run, w, 0, 0, 0);
  COMMIT;
  WHILE clock_timestamp() < t_end LOOP
    IF ins > 0 THEN
      INSERT INTO items SELECT * FROM bench_rows(next_id, next_id + ins - 1);
      next_id := next_id + ins;
      n_ins := n_ins + ins;
    END IF;
    IF upd > 0 THEN
      -- The keys come from an uncorrelated subquery (evaluated once, then an index lookup per
      -- key); random() in the WHERE clause itself would be evaluated per row of the table.
      UPDATE items SET quantity = quantity + 1, name = 'customer ' || id || ' v' || (quantity + 1)
        WHERE id = ANY (ARRAY(SELECT 1 + w + n * floor(random() * slots)::bigint
                              FROM generate_series(1, upd)));
      GET DIAGNOSTICS got = ROW_COUNT;
      n_upd := n_upd + got;
    END IF;
    IF clock_timestamp() - reported >= interval '100 milliseconds' THEN
      UPDATE bench_progress SET changes = n_ins + n_upd, inserted = n_ins, updated = n_upd
        WHERE run = p_run AND writer = w;
      reported := clock_timestamp();
    END IF;
    COMMIT;
    ahead := (n_ins + n_upd) / rate - extract(epoch FROM clock_timestamp() - t0);
    IF ahead > 0.002 THEN
      PERFORM pg_sleep(ahead);
    END IF;
  END LOOP;
  UPDATE bench_progress SET changes = n_ins + n_upd, inserted = n_ins, updated = n_upd
    WHERE run = p_run AND writer = w;
  COMMIT;
END
\$\$;"
ROW_BYTES=$(db_sql "SELECT avg(pg_column_size(r.*))::int FROM bench_rows(1, 1000) r")
FIRST_LSN=$(db_sql "SELECT pg_current_wal_lsn() - '0/0'")

# The config reads the key from the environment: it is never written to the file.
export SLUICE_BENCH_API_KEY=$API_KEY
pipeline_yaml "$DB" "$ID" "$SINK" >"$CONFIG"

# start PROCESS LOG PATTERN: starts sluice-PROCESS run; returns once PATTERN is in its log.
start() {
  local bin=$PRODUCER
  [ "$1" = consumer ] && bin=$CONSUMER
  "$bin" --config "$CONFIG" --listen 127.0.0.1:0 run 2>"$2" &
  PIDS+=("$!")
  for _ in $(seq 1 600); do
    grep -q "$3" "$2" && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$2" >&2
  die "the $1 did not get to \"$3\""
}
# listen_addr LOG: where the process serves /metrics.
listen_addr() { grep -o 'addr=[0-9.:]*' "$1" | head -n 1 | cut -d= -f2; }
start producer "$WORK/producer.log" 'streaming changes'
PRODUCER_PID=${PIDS[-1]}
start consumer "$WORK/consumer.log" 'partitions assigned'
CONSUMER_PID=${PIDS[-1]}
CONSUMER_ADDR=$(listen_addr "$WORK/consumer.log")

# ---------------------------------------------------------------------------------------------
# Measurements.
cpu_of_file() { if [ -s "$1" ]; then cpu_seconds "$(head -n 1 "$1")"; else echo 0; fi; }
# cpu_now: CPU seconds of the producer, the consumer, Postgres, Kafka and the cluster.
cpu_now() {
  echo "$(cpu_seconds "$PRODUCER_PID") $(cpu_seconds "$CONSUMER_PID") $(postgres_cpu)" \
    "$(cpu_of_file "$KAFKA_PID_FILE") $(cpu_of_file "$CLUSTER_PID_FILE")"
}
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# group_offsets: "END COMMITTED" summed over the partitions, as Kafka has them.
group_offsets() {
  "$CONSUMER" --config "$CONFIG" status 2>/dev/null |
    awk '/partition [0-9]+: committed/ { c += ($4 == "none," ? 0 : $4 + 0); e += $6 + 0 } END { print e + 0, c + 0 }'
}
# metric NAME: a value from the consumer's /metrics text in $1 (quantile lines by their label).
METRIC=sluice_consumer_commit_to_indexed_seconds
summary_of() {
  awk -v m="$METRIC" '
    index($1, m "{") == 1 && $1 ~ /quantile="0.5"/ { p50 = $2 }
    index($1, m "{") == 1 && $1 ~ /quantile="0.99"/ { p99 = $2 }
    index($1, m "_sum") == 1 { s = $2 } index($1, m "_count") == 1 { c = $2 }
    END { printf "%s %s %s %s", (p50 == "" ? "nan" : p50), (p99 == "" ? "nan" : p99), s + 0, c + 0 }' <<<"$1"
}
# The phase the samples belong to: "warmup", a rate, or "drain-<rate>".
echo warmup >"$WORK/phase"
SAMPLES=$WORK/samples.tsv
printf 't\tphase\twritten\tslot_lag\ttopic\tcommitted\tp50\tp99\tsum\tcount\tprod_rss\tcons_rss\tprod_cpu\tcons_cpu\tpg_cpu\tkafka_cpu\tcluster_cpu\n' >"$SAMPLES"
sample() {
  local t pg offsets metrics
  t=$(now)
  pg=$(db_sql "SELECT (SELECT coalesce(sum(changes), 0) FROM bench_progress),
    (SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
       FROM pg_replication_slots WHERE slot_name = '$ID')" 2>/dev/null || echo '0|0')
  offsets=$(group_offsets)
  metrics=$(curl -s "http://$CONSUMER_ADDR/metrics" || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$(seconds_between "$T_START" "$t" 1)" "$(cat "$WORK/phase")" \
    "$(($(cut -d'|' -f1 <<<"$pg") + PRELOAD))" "$(cut -d'|' -f2 <<<"$pg")" \
    "${offsets% *}" "${offsets#* }" "$(summary_of "$metrics" | tr ' ' '\t')" \
    "$(rss_kb "$PRODUCER_PID")" "$(rss_kb "$CONSUMER_PID")" \
    "$(cpu_seconds "$PRODUCER_PID")" "$(cpu_seconds "$CONSUMER_PID")" "$(postgres_cpu)" \
    "$(cpu_of_file "$KAFKA_PID_FILE")" "$(cpu_of_file "$CLUSTER_PID_FILE")" >>"$SAMPLES"
}
sampler() {
  while :; do
    sample
    sleep "$INTERVAL"
  done
}
# scraper: renders the consumer's /metrics every 2 s, as a Prometheus server would.
scraper() {
  while :; do
    curl -s -o /dev/null "http://$CONSUMER_ADDR/metrics" || true
    sleep 2
  done
}

# wait_drained TOTAL: until the topic holds TOTAL messages and the group committed its end.
wait_drained() {
  local have=0 start=$SECONDS
  while :; do
    have=$("$TOOL" count "$BROKERS" "$TOPIC" 2>/dev/null | cut -d' ' -f1)
    [ "${have:-0}" -ge "$1" ] && break
    [ $((SECONDS - start)) -lt "$DRAIN_TIMEOUT" ] || die "the topic holds ${have:-0} messages, expected $1"
    sleep 0.5
  done
  "$TOOL" wait-group "$BROKERS" "$TOPIC" "$SINK" "$DRAIN_TIMEOUT" 2>>"$WORK/wait.log" ||
    die "the group did not commit the topic's end: $(tail -n 1 "$WORK/wait.log")"
}

# ---------------------------------------------------------------------------------------------
# 2. Warm-up.
T_START=$(now)
sampler </dev/null >/dev/null 2>&1 &
SAMPLER_PID=$!
log "warm-up: $PRELOAD rows through the pipeline (not measured)"
PGOPTIONS='-c synchronous_commit=off' db_sql "DO \$\$ BEGIN
  FOR lo IN 1..$PRELOAD BY 1000 LOOP
    INSERT INTO items SELECT * FROM bench_rows(lo, least(lo + 999, $PRELOAD));
    COMMIT;
  END LOOP;
END \$\$"
wait_drained "$PRELOAD"
scraper </dev/null >/dev/null 2>&1 &
SCRAPER_PID=$!

# ---------------------------------------------------------------------------------------------
# 3–5. The rates.
WRITTEN=$PRELOAD # changes in the table's history so far (the preload's inserts included)
RUN=0
FAILED=0
RESULTS=() LATENCY=() MEMORY=() CPU=() CHECKS=() WINDOWS=()
for RATE in $RATES; do
  RUN=$((RUN + 1))
  wait_quiet
  FIRST_ID=$(($(db_sql "SELECT max(id) FROM items") + 1))
  log "rate $RATE changes/s for ${WINDOW}s: $WRITERS writers, transactions of $TX ($UPDATES updated rows, $((TX - UPDATES)) new)"
  watch_start
  echo "$RATE" >"$WORK/phase"
  sleep 0.5 # a sample inside the phase before the writers start
  cpu0=$(cpu_now)
  w0=$(now)
  WRITER_PIDS=()
  for w in $(seq 0 $((WRITERS - 1))); do
    db_sql "CALL bench_write($RUN, $w, $WRITERS, $RATE.0 / $WRITERS, $WINDOW, $TX, $UPDATES,
      $((FIRST_ID + w * 1000000000)), $PRELOAD)" >/dev/null 2>"$WORK/writer-$RUN-$w.log" &
    WRITER_PIDS+=("$!")
    PIDS+=("$!")
  done
  writer_failed=0
  for pid in "${WRITER_PIDS[@]}"; do wait "$pid" || writer_failed=1; done
  w1=$(now)
  cpu1=$(cpu_now)
  echo "drain-$RATE" >"$WORK/phase"
  dist=$(watch_stop)
  [ "$writer_failed" = 0 ] || die "a writer failed: $(cat "$WORK"/writer-"$RUN"-*.log)"
  changes=$(db_sql "SELECT sum(changes) FROM bench_progress WHERE run = $RUN")
  inserted=$(db_sql "SELECT sum(inserted) FROM bench_progress WHERE run = $RUN")
  WRITTEN=$((WRITTEN + changes))
  wall=$(seconds_between "$w0" "$w1" 2)
  achieved=$(calc "$changes / $wall" 0)
  log "rate $RATE: $changes changes in ${wall}s ($achieved/s); waiting for the pipeline to drain"
  wait_drained "$WRITTEN"
  drain_s=$(seconds_between "$w1" "$(now)" 1)
  # The exporter folds new samples into the summary every 5 s: one sample after that.
  sleep 6
  sample

  # Counts.
  topic=$("$TOOL" count "$BROKERS" "$TOPIC" | cut -d' ' -f1)
  es POST "$SINK/_refresh" >/dev/null
  indexed=$(es GET "$SINK/_count" | jq -r .count)
  rows=$(db_sql "SELECT count(*) FROM items")
  db_sql "SELECT id, name, quantity FROM (
      (SELECT id, name, quantity FROM items WHERE id <= $PRELOAD ORDER BY random() LIMIT 500)
      UNION ALL
      (SELECT id, name, quantity FROM items WHERE id >= $FIRST_ID ORDER BY random() LIMIT 500)) s
    ORDER BY id" | tr '|' '\t' >"$WORK/rows.tsv"
  ids=$(cut -f1 "$WORK/rows.tsv" | jq -R . | jq -sc '{ids: .}')
  es POST "$SINK/_mget?_source_includes=name,quantity" "$ids" |
    jq -r '.docs[] | [._id, (._source.name // "-"), (._source.quantity // "-"), (._version // 0)] | @tsv' |
    sort -n >"$WORK/docs.tsv"
  last_lsn=$(db_sql "SELECT pg_current_wal_lsn() - '0/0'")
  sample_bad=$(cut -f1-3 "$WORK/docs.tsv" | diff - "$WORK/rows.tsv" | grep -c '^>' || true)
  version_bad=$(awk -F'\t' -v lo="$FIRST_LSN" -v hi="$last_lsn" '$4 < lo || $4 > hi' "$WORK/docs.tsv" | wc -l)
  check=ok
  if [ "$topic" != "$WRITTEN" ] || [ "$indexed" != "$rows" ] || [ "$sample_bad" != 0 ] ||
    [ "$version_bad" != 0 ] || [ "$(wc -l <"$WORK/docs.tsv")" != "$(wc -l <"$WORK/rows.tsv")" ]; then
    check='**failed**'
    FAILED=1
  fi
  CHECKS+=("rate $RATE: topic $topic messages, changes written $WRITTEN (preload included); index $indexed documents, table $rows rows; sample: $(wc -l <"$WORK/rows.tsv") rows, $sample_bad name/quantity mismatches, $version_bad versions outside the run's LSNs: $check")

  # The window's samples: t0 and t1 in seconds since T_START.
  t0=$(seconds_between "$T_START" "$w0" 1)
  t1=$(seconds_between "$T_START" "$w1" 1)
  WINDOWS+=("$RATE $t0 $t1")
  awk -F'\t' -v r="$RATE" 'NR > 1 && $2 == r' "$SAMPLES" >"$WORK/window.tsv"
  # Backlog = written − committed; its slope (least squares), the means of the three thirds,
  # the largest in the last third, the largest overall.
  read -r slope lag1 lag2 lag3 last_max lag_max prod_max group_max < <(awk -F'\t' -v t0="$t0" -v t1="$t1" '
    $1 >= t0 && $1 <= t1 {
      x = $1 - t0; y = $3 - $6; n++; sx += x; sy += y; sxx += x * x; sxy += x * y
      third = int(3 * x / (t1 - t0)); if (third > 2) third = 2
      s[third] += y; c[third]++
      if (third == 2 && y > lm) lm = y
      if (y > m) m = y
      if ($3 - $5 > pm) pm = $3 - $5
      if ($5 - $6 > gm) gm = $5 - $6
    }
    END {
      d = n * sxx - sx * sx
      printf "%.1f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n", (d > 0 ? (n * sxy - sx * sy) / d : 0),
        (c[0] ? s[0] / c[0] : 0), (c[1] ? s[1] / c[1] : 0), (c[2] ? s[2] / c[2] : 0), lm, m, pm, gm
    }' "$WORK/window.tsv")
  flat=yes
  if [ "$(calc "($slope > $RATE * $FLAT_SLOPE / 100)" 0)" = 1 ] ||
    [ "$last_max" -gt "$((RATE * FLAT_SECONDS))" ]; then flat=no; fi
  held=yes
  if [ "$flat" = no ] || [ "$check" != ok ] || [ "$(calc "($achieved < 0.98 * $RATE)" 0)" = 1 ]; then held=no; fi
  [ "$held" = yes ] && HELD=$RATE
  RESULTS+=("| $RATE | $achieved | $changes ($inserted inserted) | $lag1 / $lag2 / $lag3 | $lag_max | $slope | $prod_max | $group_max | **$flat** | $drain_s | $check | **$held** | $dist |")

  # Latency: quantile samples at least 60 s into the window (or the last one in a shorter
  # window); the mean from the _sum/_count deltas between the samples around the window.
  read -r p50 p99 p99w < <(awk -F'\t' -v t0="$t0" -v t1="$t1" '
    $1 >= t0 && $1 <= t1 && $7 != "nan" { last50 = $7; last99 = $8
      if ($1 - t0 >= 60) { n++; a[n] = $7; b[n] = $8; if ($8 > w) w = $8 } }
    function median(v, n,   i, j, t) {
      for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j > 0 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
      return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END {
      if (n == 0) printf "%.3f %.3f %.3f\n", last50, last99, last99
      else printf "%.3f %.3f %.3f\n", median(a, n), median(b, n), w
    }' "$WORK/window.tsv")
  read -r mean events < <(awk -F'\t' -v t0="$t0" -v r="drain-$RATE" '
    NR > 1 && $1 < t0 { s0 = $9; c0 = $10 }
    NR > 1 && ($2 == r) { s1 = $9; c1 = $10 }
    END { printf "%.3f %d\n", (c1 > c0 ? (s1 - s0) / (c1 - c0) : 0), c1 - c0 }' "$SAMPLES")
  LATENCY+=("| $RATE | $events | $p50 | $p99 | $p99w | $mean |")

  # RSS (MB) at the window's first, middle and last samples, and the largest.
  mem=$(awk -F'\t' -v t0="$t0" -v t1="$t1" '
    $1 >= t0 && $1 <= t1 { n++; pr[n] = $11; cr[n] = $12; if ($11 > pm) pm = $11; if ($12 > cm) cm = $12 }
    END {
      mid = int((n + 1) / 2)
      printf "%.1f / %.1f / %.1f / %.1f | %.1f / %.1f / %.1f / %.1f", pr[1] / 1024, pr[mid] / 1024,
        pr[n] / 1024, pm / 1024, cr[1] / 1024, cr[mid] / 1024, cr[n] / 1024, cm / 1024
    }' "$WORK/window.tsv")
  MEMORY+=("| $RATE | $mem |")
  # CPU-seconds per 100,000 changes and the share of a core, over the writers' wall time.
  CPU+=("| $RATE | $(awk -v ch="$changes" -v wall="$wall" -v a="$cpu0" -v b="$cpu1" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    for (k = 1; k <= 5; k++) printf "%s%.1f (%.0f%%)", (k > 1 ? " | " : ""), (y[k] - x[k]) / ch * 100000, (y[k] - x[k]) / wall * 100
  }') |")
  log "rate $RATE: achieved $achieved/s, backlog $lag1/$lag2/$lag3 (slope $slope/s), flat $flat, counts $check, p50 ${p50}s p99 ${p99}s"
done
kill "$SAMPLER_PID" "$SCRAPER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" "$SCRAPER_PID" 2>/dev/null || true
SAMPLER_PID='' SCRAPER_PID=''
BENCH_WALL=$((SECONDS - BENCH_START))
WARNINGS=$(grep -c 'WARN\|ERROR' "$WORK/producer.log" "$WORK/consumer.log" | tr '\n' ' ' || true)

echo
machine_info
echo "source:  $SOURCE_STATE"
echo "cluster: $TARGET $CLUSTER_VERSION at $ENDPOINT"
echo "rows:    ~$ROW_BYTES bytes (pg_column_size); preload $PRELOAD rows; topic $TOPIC, $("$TOOL" count "$BROKERS" "$TOPIC" | cut -d' ' -f2) partitions"
echo "writer:  $WRITERS connections, transactions of $TX changes ($UPDATES updated rows in one UPDATE, $((TX - UPDATES)) new rows in one INSERT), ${WINDOW}s per rate, synchronous_commit on"
echo "flat:    backlog slope ≤ $FLAT_SLOPE% of the rate per second, last third ≤ ${FLAT_SECONDS}s of changes; held: flat, ≥ 98% of the rate written, counts match"
echo "held:    highest rate held with flat lag: $(if [ -n "$HELD" ]; then echo "$HELD changes/s"; else echo "none of the rates tried"; fi)"
echo
echo "| target changes/s | achieved changes/s | changes | backlog, mean of each third | backlog max | backlog slope (/s) | producer part max | group lag max | flat | drain after the window (s) | counts | held | other builds/tests running |"
echo "|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---|---|---|"
printf '%s\n' "${RESULTS[@]}"
echo
echo "| changes/s | events | commit → indexed p50 (s) | p99 (s) | p99 worst minute (s) | mean (s) |"
echo "|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${LATENCY[@]}"
echo
echo "| changes/s | producer RSS start/middle/end/max (MB) | consumer RSS start/middle/end/max (MB) |"
echo "|---:|---|---|"
printf '%s\n' "${MEMORY[@]}"
echo
echo "| changes/s | producer | consumer | Postgres | Kafka | cluster |"
echo "|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${CPU[@]}"
echo "(CPU-seconds per 100,000 changes, and the share of one core over the window)"
echo
printf '%s\n' "${CHECKS[@]}"
echo
echo "Every 30 s (t from the warm-up's start; backlog = written − committed by the group):"
echo
echo "| t (s) | phase | written | backlog | group lag | slot lag (kB) | p99 (s) | producer RSS (MB) | consumer RSS (MB) |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' -v step=30 'NR > 1 && $1 >= next_t {
    printf "| %.0f | %s | %d | %d | %d | %.0f | %.3f | %.1f | %.1f |\n", $1, $2, $3, $3 - $6, $5 - $6, $4 / 1024, $8, $11 / 1024, $12 / 1024
    next_t = $1 - ($1 % step) + step
  }' "$SAMPLES"
echo
echo "log lines with WARN or ERROR (producer, consumer): $WARNINGS"
echo "benchmark wall time: ${BENCH_WALL} s (after the build, before the cleanup)"
[ "$FAILED" = 0 ] || die "a count check failed (above)"
