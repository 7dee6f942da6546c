#!/usr/bin/env bash
# Measures how long `deploy/local/up.sh` takes until the four main services (Postgres, Kafka,
# OpenSearch, Elasticsearch) answer a real request, in three situations:
#
#   cold     empty download cache, empty Maven local repository, fresh state: the Kafka jars and
#            the OpenSearch/Elasticsearch zips come from Maven Central, are unpacked, the Kafka
#            probe and the Elasticsearch analysis shim are compiled. Debian packages are assumed
#            installed already, so apt downloads are NOT part of this figure.
#   warm     the same cache and Maven repository, clean state (`down.sh --clean`, then `up.sh`):
#            initdb and TLS certificates, Kafka storage format, keystore and API key creation.
#   restart  stop and start again with the data kept (`down.sh`, then `up.sh`).
#
# It runs a separate set of services with its own cache, state dir, Maven repository
# (MAVEN_OPTS=-Dmaven.repo.local=…) and ports (the defaults plus BENCH_PORT_OFFSET), so services
# already running on the default dirs and ports are not touched; everything it created is
# stopped and deleted at the end, also when it fails.
#
#   bench/services-startup.sh
#
# Knobs: BENCH_RUNS (warm and restart repetitions, default 2), BENCH_PORT_OFFSET (default 10000),
# BENCH_WORK_DIR (parent of the temporary dirs, default /var/tmp; not under root's home, which
# OpenSearch and Elasticsearch refuse), BENCH_QUIET_TIMEOUT (see bench/lib.sh).
# Per-service times are the modification times of the env files each service script writes
# once it answers, relative to the start of up.sh (the services start in parallel).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

RUNS=${BENCH_RUNS:-2}
OFFSET=${BENCH_PORT_OFFSET:-10000}
WORK_PARENT=${BENCH_WORK_DIR:-/var/tmp}
SERVICES=(postgres kafka opensearch elasticsearch)

export SLUICE_POSTGRES_PORT=$((15432 + OFFSET))
export SLUICE_KAFKA_PORT=$((19092 + OFFSET))
export SLUICE_KAFKA_CONTROLLER_PORT=$((19192 + OFFSET))
export SLUICE_OPENSEARCH_PORT=$((9200 + OFFSET))
export SLUICE_OPENSEARCH_TRANSPORT_PORT=$((9300 + OFFSET))
export SLUICE_ELASTICSEARCH_PORT=$((9210 + OFFSET))
export SLUICE_ELASTICSEARCH_TRANSPORT_PORT=$((9310 + OFFSET))
for p in "$SLUICE_POSTGRES_PORT" "$SLUICE_KAFKA_PORT" "$SLUICE_KAFKA_CONTROLLER_PORT" \
  "$SLUICE_OPENSEARCH_PORT" "$SLUICE_OPENSEARCH_TRANSPORT_PORT" \
  "$SLUICE_ELASTICSEARCH_PORT" "$SLUICE_ELASTICSEARCH_TRANSPORT_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "port $p is in use: set BENCH_PORT_OFFSET to another value"
  fi
done

WORK=$(mktemp -d "$WORK_PARENT/sluice-bench-startup.XXXXXX")
# The services run as other users (postgres, sluice): the dirs must be traversable, as the
# default /var/tmp/sluice-local and /var/cache/sluice are.
chmod 755 "$WORK"
export SLUICE_CACHE_DIR=$WORK/cache SLUICE_STATE_DIR=$WORK/state
M2_REPO=$WORK/m2-repository
mkdir -p "$SLUICE_CACHE_DIR" "$SLUICE_STATE_DIR" "$M2_REPO"
chmod 755 "$SLUICE_CACHE_DIR" "$SLUICE_STATE_DIR"
export MAVEN_OPTS="${MAVEN_OPTS:+$MAVEN_OPTS }-Dmaven.repo.local=$M2_REPO"

cleanup() {
  watch_abort
  log "stopping and deleting the benchmark services ($WORK)"
  "$REPO_DIR/deploy/local/down.sh" --clean >/dev/null 2>"$WORK/down-final.err" || {
    log "down.sh --clean reported a problem:"
    cat "$WORK/down-final.err" >&2
  }
  rm -rf "$WORK"
}
trap cleanup EXIT

RESULTS=()

# measure LABEL: runs up.sh, checks it succeeded, appends a result row.
measure() {
  local label=$1 t0 t1 s f ts row disturbed
  wait_quiet
  log "$label: deploy/local/up.sh (cache $SLUICE_CACHE_DIR, state $SLUICE_STATE_DIR)"
  watch_start
  t0=$(now)
  if ! "$REPO_DIR/deploy/local/up.sh" "${SERVICES[@]}" >"$WORK/up-$label.out" 2>"$WORK/up-$label.err"; then
    watch_stop >/dev/null
    cat "$WORK/up-$label.err" >&2
    die "$label: up.sh failed"
  fi
  t1=$(now)
  disturbed=$(watch_stop)
  row="| $label | $(seconds_between "$t0" "$t1")"
  for s in "${SERVICES[@]}"; do
    f=$SLUICE_STATE_DIR/$s.env
    if [ -s "$f" ]; then
      ts=$(stat -c '%.3Y' "$f")
      row+=" | $(seconds_between "$t0" "$ts")"
    else
      row+=" | ?"
    fi
  done
  row+=" | $disturbed |"
  RESULTS+=("$row")
  log "$label: ready in $(seconds_between "$t0" "$t1")s"
}

# timed_down LABEL ARGS...: runs down.sh, prints its duration.
timed_down() {
  local label=$1 t0
  shift
  t0=$(now)
  "$REPO_DIR/deploy/local/down.sh" "$@" >/dev/null 2>"$WORK/down-$label.err" || {
    cat "$WORK/down-$label.err" >&2
    die "$label: down.sh $* failed"
  }
  seconds_between "$t0" "$(now)"
}

marker=$WORK/marker
touch "$marker"

measure cold
cache_mb=$(du -sm "$SLUICE_CACHE_DIR" | cut -f1)
m2_mb=$(du -sm "$M2_REPO" | cut -f1)
default_m2_touched=no
if [ -d "$HOME/.m2/repository" ] && [ -n "$(find "$HOME/.m2/repository" -newer "$marker" -print -quit)" ]; then
  default_m2_touched=yes
fi

DOWN=()
for i in $(seq 1 "$RUNS"); do
  DOWN+=("clean stop (down.sh --clean) before warm-$i: $(timed_down "clean-$i" --clean)s")
  measure "warm-$i"
done
for i in $(seq 1 "$RUNS"); do
  DOWN+=("stop (down.sh) before restart-$i: $(timed_down "stop-$i")s")
  measure "restart-$i"
done

echo
machine_info
echo
echo "| run | all four ready (s) | postgres (s) | kafka (s) | opensearch (s) | elasticsearch (s) | other builds/tests running |"
echo "|---|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${RESULTS[@]}"
echo
echo "cold downloads: ${cache_mb} MB in the download cache, ${m2_mb} MB in the Maven repository"
echo "default Maven repository (~/.m2/repository) written during the cold run: $default_m2_touched"
printf '%s\n' "${DOWN[@]}"
