#!/usr/bin/env bash
# End-to-end test of the image and deploy/compose/compose.yaml on a real Docker engine, run by
# deploy/local/test.sh. Installs the engine and compose (Debian's docker.io and docker-compose)
# when missing, makes the base image, the sluice image (from host-built binaries) and the local
# service images, then, in a compose project of its own (removed at the end, volumes too):
#
# The opensearch profile is on throughout: a second consumer group keeps an OpenSearch index of the
# same table, and every check of the index below is made on both clusters.
#
#   1. `up` from nothing: every service healthy, rows inserted in Postgres become searchable;
#   2. `--scale consumer=3` under a steady writer, one consumer `docker kill`ed and the producer
#      `docker restart`ed mid-load: the index equals the table (every in-stock row, every
#      indexed column), each document's version is the commit LSN of its row's last change;
#   3. `stop`: each sluice container exits 0 within its grace period, the group's offsets are
#      committed to the topic's end and the slot is confirmed past the last commit; `down` (volumes
#      kept) and `up` again: it resumes, new changes arrive, the index equals the table (nothing
#      lost, no document twice);
#   4. a bad config mounted: the container exits 2, the message names the field in `docker logs`,
#      and it stays exited (restart policy on-failure:5) instead of restarting in a loop.
#
# Published ports are free ones on 127.0.0.1. SLUICE_COMPOSE_KEEP=1 leaves the project running.
set -euo pipefail
SERVICE=compose-test
# shellcheck source=../docker/lib.sh disable=SC1091
. "$(dirname "$0")/../docker/lib.sh"
cd "$REPO_DIR"

fail() {
  log "FAILED: $*"
  exit 1
}

started=$SECONDS
apt_install jq curl
command -v psql >/dev/null || apt_install postgresql-client
ensure_engine
mkdir -p "$SLUICE_STATE_DIR/compose-test"
# The service images (network and disk) while the build uses the CPU.
images_env="$SLUICE_STATE_DIR/compose-test/images.env"
"$REPO_DIR/deploy/compose/local-images.sh" >"$images_env" &
images=$!
"$DEPLOY_DOCKER_DIR/build.sh"
wait "$images" || die "the service images could not be built (see above)"
# shellcheck disable=SC1090
. "$images_env"
# The topic reader and the group check, in the profile the image's binaries were just built in
# (most of what they need is compiled already).
case "${SLUICE_BUILD_PROFILE:-release}" in
  dev) TOOLS_DIR=target/debug ;;
  *) TOOLS_DIR=target/release ;;
esac
cargo build --profile "${SLUICE_BUILD_PROFILE:-release}" --locked -q -p sluice-tests \
  --bin sluice-dump --bin sluice-bulk-load
DUMP=$TOOLS_DIR/sluice-dump
BULK=$TOOLS_DIR/sluice-bulk-load
log "images ready after $((SECONDS - started))s"

free_port() {
  local p=$1
  while port_in_use "$p"; do p=$((p + 1)); done
  echo "$p"
}
export POSTGRES_PORT KAFKA_PORT ELASTICSEARCH_PORT OPENSEARCH_PORT SLUICE_PRODUCER_PORT
POSTGRES_PORT=$(free_port 25432)
KAFKA_PORT=$(free_port 29092)
ELASTICSEARCH_PORT=$(free_port 29200)
OPENSEARCH_PORT=$(free_port 29210)
SLUICE_PRODUCER_PORT=$(free_port 29600)
export SLUICE_IMAGE=sluice:local PG_PASSWORD=compose-test ELASTIC_PASSWORD=compose-elastic
export COMPOSE_PROFILES=opensearch
PROJECT=sluicetest$$
WORK="$SLUICE_STATE_DIR/compose-test/$PROJECT"
mkdir -p "$WORK"
dc() { docker-compose -f deploy/compose/compose.yaml -p "$PROJECT" "$@"; }

finish() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    log "failed: logs of every container in $WORK/logs"
    mkdir -p "$WORK/logs"
    local c
    for c in $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
      docker logs "$c" >"$WORK/logs/$(docker inspect -f '{{.Name}}' "$c" | tr -d /).log" 2>&1 || true
    done
    dc ps >&2 || true
  fi
  [ -n "${writer:-}" ] && touch "$WORK/stop-writer"
  if [ "${SLUICE_COMPOSE_KEEP:-}" != 1 ]; then
    dc down -v --remove-orphans -t 60 >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap finish EXIT

# The products example, with a longer limit for its filter and transform: the limit is wall-clock
# time, and on a machine whose CPU is shared with other builds the default 100 ms dead-letters
# the odd event (which the comparison below would report as missing).
for example in sluice opensearch; do
  sed 's/^    table: public.products$/&\n    transform_timeout: 5s/' "examples/products/$example.yaml" >"$WORK/$example.yaml"
  grep -q 'transform_timeout: 5s' "$WORK/$example.yaml" || fail "could not write the test's $example.yaml"
  chmod 0644 "$WORK/$example.yaml"
done
export SLUICE_CONFIG_FILE="$WORK/sluice.yaml" SLUICE_OPENSEARCH_CONFIG_FILE="$WORK/opensearch.yaml"

PG="postgres://sluice:$PG_PASSWORD@127.0.0.1:$POSTGRES_PORT/shop"
ES="http://127.0.0.1:$ELASTICSEARCH_PORT"
OS="http://127.0.0.1:$OPENSEARCH_PORT"
BROKERS="127.0.0.1:$KAFKA_PORT"
TOPIC=sluice.public.products
GROUPS_OF_SINKS=(products-elasticsearch products-opensearch)
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$PG" -c "$1"; }
es() { curl -fsS -u "elastic:$ELASTIC_PASSWORD" -H 'Content-Type: application/json' "$@"; }
os() { curl -fsS -H 'Content-Type: application/json' "$@"; }
containers() { dc ps -q "$1"; }
state() { docker inspect -f "$1" "$2"; }

# all_healthy SERVICE...: every container of each service reports healthy.
all_healthy() {
  local s c
  for s in "$@"; do
    c=$(containers "$s")
    [ -n "$c" ] || return 1
    for c in $c; do
      [ "$(state '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c")" = healthy ] || return 1
    done
  done
}
setup_done() {
  local c
  c=$(containers es-setup)
  [ -n "$c" ] && [ "$(state '{{.State.Status}} {{.State.ExitCode}}' "$c")" = "exited 0" ]
}
# sluice_exited: a sluice container has exited (waiting for health would be in vain).
sluice_exited() {
  local c
  for c in $(containers producer) $(containers consumer) $(containers consumer-opensearch); do
    [ "$(state '{{.State.Status}}' "$c")" = exited ] && return 0
  done
  return 1
}
healthy_or_exited() {
  all_healthy postgres kafka elasticsearch opensearch producer consumer consumer-opensearch || sluice_exited
}
wait_healthy() {
  local t0=$SECONDS
  wait_until 420 /dev/null "every service healthy" healthy_or_exited
  sluice_exited && fail "a sluice container exited: $(dc ps producer consumer consumer-opensearch | tail -n +3)"
  wait_until 60 /dev/null "es-setup to exit 0" setup_done
  log "every service healthy after $((SECONDS - t0))s"
}
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz"; }
consumer_port() { dc port --index="${2:-1}" "${1:-consumer}" 9601 | awk -F: '{print $NF}'; }

# index_matches_table CLUSTER: the index of CLUSTER (es or os) holds exactly the in-stock rows
# with the transform's four columns, and each document's version is the highest commit LSN of
# its row in the topic.
index_matches_table() {
  local cluster=$1 url
  case $cluster in es) url=$ES ;; os) url=$OS ;; esac
  sql "SELECT coalesce(json_object_agg(id, json_build_object('name', name, 'description', description,
         'price', price, 'in_stock', in_stock)), '{}') FROM products WHERE in_stock" >"$WORK/table.json"
  "$cluster" -X POST "$url/products/_refresh" >/dev/null
  "$cluster" "$url/products/_search?version=true&size=10000" -d '{"query": {"match_all": {}}}' >"$WORK/index.json"
  "$DUMP" "$BROKERS" "$TOPIC" >"$WORK/topic.jsonl"
  jq -n --slurpfile table "$WORK/table.json" --slurpfile index "$WORK/index.json" \
    --slurpfile topic <(jq -c 'select(.event != null and .event.op != "OP_TRUNCATE")
      | {id: (.event.record.id | tostring), lsn: .event.commit_lsn}' "$WORK/topic.jsonl") '
    def norm: .price |= (if . == null then null else tonumber end);
    ($table[0] | map_values(norm)) as $rows
    | ($index[0].hits.hits | map({key: ._id, value: {source: (._source | norm), version: ._version}}) | from_entries) as $docs
    | ($topic | group_by(.id) | map({key: .[0].id, value: (map(.lsn) | max)}) | from_entries) as $last
    | {
        rows: ($rows | length),
        docs: ($docs | length),
        missing: [$rows | keys[] | select($docs[.] == null)],
        extra: [$docs | keys[] | select($rows[.] == null)],
        different: [$rows | to_entries[] | select($docs[.key] != null and $docs[.key].source != .value) | .key],
        wrong_version: [$docs | to_entries[] | select(.value.version != $last[.key]) | {id: .key, version: .value.version, last_commit_lsn: $last[.key]}]
      }
    | .ok = (.missing == [] and .extra == [] and .different == [] and .wrong_version == [] and .rows > 0)
  ' >"$WORK/compare-$cluster.json"
  jq -e .ok "$WORK/compare-$cluster.json" >/dev/null
}
# wait_index_matches_table WHEN: index_matches_table on both clusters.
wait_index_matches_table() {
  local cluster name
  for cluster in es os; do
    case $cluster in es) name=Elasticsearch ;; os) name=OpenSearch ;; esac
    if ! wait_until_quiet 240 index_matches_table "$cluster"; then
      jq -c '{rows, docs, missing: .missing[:5], extra: .extra[:5], different: .different[:5], wrong_version: .wrong_version[:3]}' \
        "$WORK/compare-$cluster.json" >&2
      fail "the $name index does not match the table ($1)"
    fi
    log "$name index == table ($1): $(jq -r '"\(.rows) rows, \(.docs) documents, versions = last commit LSN"' "$WORK/compare-$cluster.json")"
  done
}
# wait_until_quiet SECONDS CMD...: like wait_until, but returns 1 instead of exiting.
wait_until_quiet() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 2
  done
}

# A steady writer on one connection, one change per transaction: inserts, price updates, items
# going out of and back into stock (leaving and re-entering the index), deletes. It stops at the
# end of its input, when stop_writer creates the stop file.
start_writer() {
  local from=$1
  rm -f "$WORK/stop-writer"
  (
    i=$from
    until [ -e "$WORK/stop-writer" ]; do
      stock=true
      [ $((i % 4)) -eq 0 ] && stock=false
      echo "INSERT INTO products (id, name, description, price, in_stock, supplier_cost)
            VALUES ($i, 'item $i', 'written at step $i', $((i % 500)).25, $stock, 1.50);"
      [ $((i % 3)) -eq 0 ] && echo "UPDATE products SET price = price + 1, in_stock = NOT in_stock WHERE id = $((i / 2));"
      [ $((i % 7)) -eq 0 ] && echo "DELETE FROM products WHERE id = $((i - 5));"
      i=$((i + 1))
      sleep 0.05
    done | psql -X -q -v ON_ERROR_STOP=1 "$PG" >"$WORK/writer.log" 2>&1
  ) &
  writer=$!
}
stop_writer() {
  touch "$WORK/stop-writer"
  wait "$writer" || fail "the writer failed: $(head -c 500 "$WORK/writer.log")"
  writer=
}

# --- 1. up from nothing ------------------------------------------------------------------------
log "1. up (project $PROJECT; postgres :$POSTGRES_PORT, kafka :$KAFKA_PORT, elasticsearch :$ELASTICSEARCH_PORT, opensearch :$OPENSEARCH_PORT, producer :$SLUICE_PRODUCER_PORT)"
t0=$SECONDS
dc up -d --no-build >"$WORK/up.log" 2>&1 || {
  cat "$WORK/up.log" >&2
  fail "docker-compose up"
}
wait_healthy
wait_until 120 /dev/null "producer /readyz" ready "$SLUICE_PRODUCER_PORT"
wait_until 120 /dev/null "consumer /readyz" ready "$(consumer_port consumer 1)"
wait_until 120 /dev/null "OpenSearch consumer /readyz" ready "$(consumer_port consumer-opensearch 1)"
log "up from nothing to ready in $((SECONDS - t0))s"
sql "INSERT INTO products (id, name, description, price, in_stock) VALUES
  (1, 'kettle', 'stainless steel kettle', 39.90, true), (2, 'toaster', 'two-slot toaster', 24.50, true)"
searchable() { "$1" "$2/products/_search?q=description:kettle" | jq -e '.hits.hits[0]._id == "1"'; }
wait_until_quiet 120 searchable es "$ES" || fail "the inserted row did not become searchable in Elasticsearch"
wait_until_quiet 120 searchable os "$OS" || fail "the inserted row did not become searchable in OpenSearch"
log "a row inserted in Postgres is searchable in Elasticsearch and OpenSearch"

# --- 2. three consumers under load, one killed, the producer restarted -------------------------
log "2. --scale consumer=3 under a steady writer"
dc up -d --no-build --no-recreate --scale consumer=3 >>"$WORK/up.log" 2>&1
start_writer 100
wait_until 180 /dev/null "three healthy consumers" all_healthy consumer
[ "$(containers consumer | wc -l)" -eq 3 ] || fail "expected 3 consumer containers"
sleep 5
victim=$(containers consumer)
victim=${victim%%$'\n'*}
log "docker kill $(state '{{.Name}}' "$victim")"
docker kill "$victim" >/dev/null
sleep 5
producer=$(containers producer)
log "docker restart the producer"
docker restart -t 45 "$producer" >/dev/null
# The first run's end, from its log (a running container reports no earlier exit code): it got
# SIGTERM and stopped without an error.
# (Whole outputs in variables: with pipefail, `… | grep -q` fails when grep stops reading early.)
logs=$(docker logs "$producer" 2>&1)
grep -q 'shutting down.*SIGTERM' <<<"$logs" || fail "the producer did not log a SIGTERM shutdown"
if grep -q 'sluice-producer failed' <<<"$logs"; then
  fail "the producer failed on restart: $(tail -n 5 <<<"$logs")"
fi
wait_until 120 /dev/null "producer /readyz after the restart" ready "$SLUICE_PRODUCER_PORT"
sleep 10
stop_writer
log "writer stopped at $(sql 'SELECT count(*) FROM products') rows"
wait_index_matches_table "three consumers, one killed, producer restarted"

# --- 3. stop, down (volumes kept), up again ----------------------------------------------------
log "3. stop"
# The running ones (the consumer killed in step 2 stays exited: `docker kill` counts as a stop).
sluice_containers=$(for c in $(containers producer) $(containers consumer) $(containers consumer-opensearch); do
  [ "$(state '{{.State.Status}}' "$c")" = running ] && echo "$c"
done)
t0=$SECONDS
dc stop -t 45 producer consumer consumer-opensearch >/dev/null 2>&1
stop_seconds=$((SECONDS - t0))
for c in $sluice_containers; do
  s=$(state '{{.Name}} {{.State.Status}} {{.State.ExitCode}}' "$c")
  [ "${s#* }" = "exited 0" ] || fail "after stop: $s (expected exited 0)"
done
[ "$stop_seconds" -lt 45 ] || fail "stop took ${stop_seconds}s, more than the 45 s grace period"
log "every sluice container exited 0 (stop took ${stop_seconds}s)"
for group in "${GROUPS_OF_SINKS[@]}"; do
  "$BULK" wait-group "$BROKERS" "$TOPIC" "$group" 5 || fail "$group: offsets not committed to the end of $TOPIC"
done
"$DUMP" "$BROKERS" "$TOPIC" >"$WORK/topic-at-stop.jsonl"
last_lsn=$(jq -s 'map(.event.commit_lsn // 0) | max' "$WORK/topic-at-stop.jsonl")
confirmed=$(sql "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'sluice_demo'")
[ "$confirmed" -ge "$last_lsn" ] || fail "slot confirmed at $confirmed, before the last commit in the topic $last_lsn"
log "offsets committed to the end; slot confirmed at $confirmed >= last commit $last_lsn"
jq -s 'group_by(.partition) | map({key: (.[0].partition | tostring), value: (map(.offset) | max)}) | from_entries' \
  "$WORK/topic-at-stop.jsonl" >"$WORK/ends-at-stop.json"
dc stop -t 60 >/dev/null 2>&1
log "down (volumes kept), up again"
dc down >/dev/null 2>&1
dc up -d --no-build >>"$WORK/up.log" 2>&1
wait_healthy
wait_until 120 /dev/null "producer /readyz" ready "$SLUICE_PRODUCER_PORT"
sql "INSERT INTO products (id, name, description, price, in_stock) VALUES (100000, 'after down', 'written after up', 1.00, true)"
sql "UPDATE products SET price = price + 100 WHERE id IN (1, 2)"
sql "DELETE FROM products WHERE id IN (SELECT id FROM products WHERE id BETWEEN 100 AND 99999 ORDER BY id LIMIT 3)"
wait_index_matches_table "after down and up"
"$DUMP" "$BROKERS" "$TOPIC" >"$WORK/topic-after.jsonl"
new=$(jq -s --slurpfile ends "$WORK/ends-at-stop.json" '[.[] | select(.offset > ($ends[0][.partition | tostring] // -1))] | length' "$WORK/topic-after.jsonl")
[ "$new" -ge 4 ] || fail "only $new new events after up"
# Events confirmed before the stop and sent again: Postgres 15 does not save a logical slot's
# confirmed position at shutdown when nothing else about the slot changed (Postgres 17 does), so
# after its restart the producer is sent the last transactions again. Harmless to the index (the
# versions make them no-ops, checked above); reported, not failed.
resent=$(jq -s --slurpfile ends "$WORK/ends-at-stop.json" --argjson confirmed "$confirmed" \
  '[.[] | select(.offset > ($ends[0][.partition | tostring] // -1)) | select(.event != null and .event.commit_lsn <= $confirmed)] | length' \
  "$WORK/topic-after.jsonl")
log "resumed: $new new events on the topic ($resent of them sent before the stop too); no document lost or doubled"

# --- 4. a bad config ---------------------------------------------------------------------------
log "4. a bad config"
sed 's/^  partitions: 3$/  partitions: many/' "$WORK/sluice.yaml" >"$WORK/bad.yaml"
grep -q 'partitions: many' "$WORK/bad.yaml" || fail "could not make the bad config"
chmod 0644 "$WORK/bad.yaml"
SLUICE_CONFIG_FILE="$WORK/bad.yaml" dc up -d --no-build --no-deps producer >>"$WORK/up.log" 2>&1
producer=$(containers producer)
exited_for_good() {
  [ "$(state '{{.State.Status}} {{.State.Restarting}}' "$producer")" = "exited false" ] &&
    [ "$(state '{{.RestartCount}}' "$producer")" -ge 5 ]
}
wait_until 60 /dev/null "the producer with a bad config to stop restarting" exited_for_good
sleep 5
s=$(state '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$producer")
[ "$s" = "exited 2 5" ] || fail "with a bad config: $s (expected exited 2 after 5 restarts)"
logs=$(docker logs "$producer" 2>&1)
grep -q 'kafka.partitions' <<<"$logs" || fail "docker logs do not name kafka.partitions: $(tail -n 5 <<<"$logs")"
ps_line=$(dc ps producer)
grep -q 'Exit 2' <<<"$ps_line" || fail "docker-compose ps does not show Exit 2: $ps_line"
log "bad config: exit 2, 'kafka.partitions' in docker logs, stays exited after 5 restarts"

log "passed in $((SECONDS - started))s"
