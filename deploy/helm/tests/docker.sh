#!/usr/bin/env bash
# What the chart promises about its pods that an API server cannot run, checked by running the
# rendered containers (tests/pod_to_docker.py) with the image in Docker against the local
# services (deploy/local/up.sh): the probes answer on their paths, the processes run as uid 10001
# with a read-only root filesystem, no capabilities and no privilege escalation, read their
# config from the mounted ConfigMap and their secrets from variables, index a row end to end,
# and exit 0 on SIGTERM within the grace period. Prints "ok …"/"FAILED …" per check, or one
# "SKIPPED …" line when there is no image or no services.
#
#   tests/docker.sh CHART TESTS-DIR WORK-DIR
#
# The image is sluice:local (deploy/docker/build.sh), or $SLUICE_IMAGE.
set -uo pipefail
CHART=$1
TESTS=$2
WORK=$3
REPO=$(cd "$TESTS/../../.." && pwd)
IMAGE=${SLUICE_IMAGE:-sluice:local}
ID=$(date +%s | tail -c 6)$$
NAME=sluice-helm-$ID

ok() { echo "ok $1"; }
failed() { echo "FAILED $1"; }
skip() {
  echo "SKIPPED docker checks: $1"
  exit 0
}
# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
  if [ "$2" = "$3" ]; then ok "$1"; else failed "$1: got '$2', want '$3'"; fi
}

# --- the engine, the image and the services --------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || skip "no Docker engine (Debian's docker.io)"
  dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || skip "dockerd did not start (/var/log/dockerd.log)"
fi
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  [ -x "$REPO/deploy/docker/build.sh" ] ||
    skip "no image $IMAGE and no deploy/docker/build.sh to build it"
  if ! "$REPO/deploy/docker/build.sh" >"$WORK/image-build.log" 2>&1; then
    failed "image build (deploy/docker/build.sh)"
    tail -20 "$WORK/image-build.log"
    exit 1
  fi
fi
if [ -z "${SLUICE_TEST_PG_URL:-}" ]; then
  env_file=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}/env
  [ -s "$env_file" ] || skip "the local services are not running (deploy/local/up.sh)"
  . "$env_file"
fi
for port in 9600 9601; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    failed "port $port is taken on this host: the containers share its network"
    exit 1
  fi
done

psql() { "$SLUICE_TEST_PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
es() { curl -s -H "Authorization: ApiKey $SLUICE_TEST_ELASTICSEARCH_API_KEY" "$@"; }
DB=helm_$ID
INDEX=helm-$ID-products

cleanup() {
  docker rm -f "$NAME-consumer" "$NAME-producer" >/dev/null 2>&1
  psql "$SLUICE_TEST_PG_URL" -c "SELECT pg_drop_replication_slot('helm_$ID') FROM pg_replication_slots WHERE slot_name = 'helm_$ID'" >/dev/null 2>&1
  psql "$SLUICE_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  es -X DELETE "$SLUICE_TEST_ELASTICSEARCH_URL/$INDEX-v1" >/dev/null 2>&1
}
trap cleanup EXIT

psql "$SLUICE_TEST_PG_URL" -c "CREATE DATABASE $DB" >/dev/null
psql "${SLUICE_TEST_PG_URL%/*}/$DB" -c "CREATE TABLE products (id int PRIMARY KEY, name text);
  INSERT INTO products VALUES (1, 'kettle')" >/dev/null

# --- render the chart and turn its pods into docker run ----------------------------------------
sed -e "s/@ID@/$ID/g" -e "s|@KAFKA@|$SLUICE_TEST_KAFKA_BROKERS|" -e "s|@ES@|$SLUICE_TEST_ELASTICSEARCH_URL|" \
  "$TESTS/docker-values.yaml" >"$WORK/docker-values.yaml"
if ! helm template sluice "$CHART" -f "$WORK/docker-values.yaml" --kube-version "${KUBE_VERSION:-1.37.2}" \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" >"$WORK/docker.yaml" 2>"$WORK/docker.err"; then
  failed "render the Docker values"
  cat "$WORK/docker.err"
  exit 1
fi
export SECRET_SLUICE_POSTGRES_URL=${SLUICE_TEST_PG_URL%/*}/$DB
export SECRET_SLUICE_ELASTICSEARCH_API_KEY=$SLUICE_TEST_ELASTICSEARCH_API_KEY

# start PROCESS DEPLOYMENT: runs the container as the pod would; sets $spec to its JSON.
start() {
  local process=$1 deployment=$2 args
  spec=$WORK/$process.json
  python3 "$TESTS/pod_to_docker.py" "$WORK/docker.yaml" "$deployment" "$WORK/$process-config" \
    "$NAME-$process" >"$spec" || return 1
  chmod 755 "$WORK/$process-config"
  mapfile -d '' args < <(python3 -c 'import json,sys; sys.stdout.write("\0".join(json.load(open(sys.argv[1]))["run"]))' "$spec")
  docker run -d "${args[@]}" >/dev/null
}
# probe_budget SPEC PROBE: seconds the kubelet gives that probe (failureThreshold × period).
probe_budget() {
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["probes"].get(sys.argv[2]) or {}; print(p.get("failureThreshold",3)*p.get("periodSeconds",10))' "$1" "$2"
}
probe_path() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["probes"][sys.argv[2]]["httpGet"]["path"])' "$1" "$2"; }
# wait_http URL SECONDS: waits for a 200; prints the seconds it took, fails after SECONDS.
wait_http() {
  local started=$SECONDS
  while [ $((SECONDS - started)) -lt "$2" ]; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1")" = 200 ]; then
      echo $((SECONDS - started))
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# check_pod PROCESS: probes, user, read-only root, capabilities of a running container.
check_pod() {
  local process=$1 port path budget took first container=$NAME-$1
  port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$spec")
  first=livenessProbe
  grep -q '"startupProbe"' "$spec" && first=startupProbe
  path=$(probe_path "$spec" $first)
  budget=$(probe_budget "$spec" $first)
  if took=$(wait_http "http://127.0.0.1:$port$path" "$budget"); then
    ok "$process: $first $path answers 200 after ${took}s (budget ${budget}s)"
  else
    failed "$process: $first $path did not answer 200 within ${budget}s"
    docker logs "$container" 2>&1 | tail -20
    return 1
  fi
  path=$(probe_path "$spec" readinessProbe)
  if took=$(wait_http "http://127.0.0.1:$port$path" 90); then
    ok "$process: readinessProbe $path answers 200 after ${took}s"
  else
    failed "$process: readinessProbe $path not 200 within 90s: $(curl -s "http://127.0.0.1:$port$path")"
    docker logs "$container" 2>&1 | tail -20
  fi
  echo "$process memory: $(docker stats --no-stream --format '{{.MemUsage}}' "$container")"
  expect_eq "$process: runs as uid 10001" "$(docker top "$container" -o pid,uid | awk 'NR == 2 {print $2}')" 10001
  if docker exec "$container" sh -c true 2>/dev/null; then
    if docker exec "$container" sh -c 'echo x >/written' 2>"$WORK/ro.err"; then
      failed "$process: the root filesystem is writable"
    elif grep -q "Read-only file system" "$WORK/ro.err"; then
      ok "$process: root filesystem is read-only"
    else
      failed "$process: writing / failed, but not as read-only: $(cat "$WORK/ro.err")"
    fi
    if docker exec "$container" sh -c 'echo x >/tmp/written'; then
      ok "$process: /tmp is writable"
    else
      failed "$process: /tmp is not writable"
    fi
    docker exec "$container" cat /proc/1/status >"$WORK/status"
    expect_eq "$process: gid 10001" "$(awk '/^Gid:/ {print $2}' "$WORK/status")" 10001
    # The bounding set: a non-root process has no effective capabilities anyway.
    expect_eq "$process: no capabilities" "$(awk '/^CapBnd/ {print $2}' "$WORK/status")" 0000000000000000
    expect_eq "$process: no privilege escalation" "$(awk '/^NoNewPrivs/ {print $2}' "$WORK/status")" 1
  else
    echo "the image has no shell: read-only root and capabilities not inspected"
  fi
}

# stop_pod PROCESS: SIGTERM as the kubelet sends it; exit 0 well within the grace period.
stop_pod() {
  local process=$1 grace started elapsed code
  grace=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grace"])' "$WORK/$process.json")
  started=$(date +%s.%N)
  docker stop "$NAME-$process" >/dev/null
  elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME-$process")
  if [ "$code" = 0 ] && awk -v e="$elapsed" -v g="$grace" 'BEGIN { exit !(e < g) }'; then
    ok "$process: SIGTERM → exit 0 after ${elapsed}s (grace ${grace}s)"
  else
    failed "$process: SIGTERM → exit $code after ${elapsed}s (grace ${grace}s)"
    docker logs "$NAME-$process" 2>&1 | tail -10
  fi
}

if ! start producer sluice-producer; then
  failed "producer: docker run"
  exit 1
fi
check_pod producer
slot=$(psql "$SLUICE_TEST_PG_URL" -At -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'helm_$ID'")
expect_eq "producer: streams from the slot named in the mounted config" "$slot" t

if ! start consumer sluice-consumer-helm-$ID-products; then
  failed "consumer: docker run"
  exit 1
fi
check_pod consumer
name=""
for _ in $(seq 1 120); do
  name=$(es "$SLUICE_TEST_ELASTICSEARCH_URL/$INDEX/_doc/1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("_source",{}).get("name",""))' 2>/dev/null)
  [ -n "$name" ] && break
  sleep 0.5
done
expect_eq "row indexed through the pods (config transform, API key from the Secret's variable)" "$name" kettle
psql "${SLUICE_TEST_PG_URL%/*}/$DB" -c "UPDATE products SET name = 'teapot' WHERE id = 1" >/dev/null
for _ in $(seq 1 60); do
  name=$(es "$SLUICE_TEST_ELASTICSEARCH_URL/$INDEX/_doc/1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("_source",{}).get("name",""))' 2>/dev/null)
  [ "$name" = teapot ] && break
  sleep 0.5
done
expect_eq "live update indexed through the pods" "$name" teapot

stop_pod consumer
stop_pod producer
