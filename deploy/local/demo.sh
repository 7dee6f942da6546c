#!/usr/bin/env bash
# The demo: Postgres and Kafka on 127.0.0.1, sluice-producer streaming a `products` table, a few
# rows inserted, updated and deleted, and the change events they became printed from Kafka.
# The services keep running afterwards; stop them with deploy/local/down.sh.
set -euo pipefail
SERVICE=demo
. "$(dirname "$0")/lib.sh"
cd "$DEPLOY_LOCAL_DIR/../.."

apt_install build-essential pkg-config libssl-dev zlib1g-dev cmake jq
eval "$(deploy/local/up.sh postgres kafka)"
log "building sluice"
cargo build -q --bins -p sluice-producer -p sluice-tests

DEMO_DIR="$SLUICE_STATE_DIR/demo"
mkdir -p "$DEMO_DIR"
sql() { psql -X -q -v ON_ERROR_STOP=1 "$1" -c "$2"; }
admin_url=$SLUICE_TEST_PG_URL
demo_url=${SLUICE_TEST_PG_URL%/*}/sluice_demo

# A fresh demo database each time (its slot goes first: a slot pins its database).
sql "$admin_url" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sluice_demo'" >/dev/null
sql "$admin_url" "DROP DATABASE IF EXISTS sluice_demo WITH (FORCE)"
sql "$admin_url" "CREATE DATABASE sluice_demo"
sql "$demo_url" "CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, description text,
                 price numeric(10,2), in_stock boolean NOT NULL DEFAULT true, tags text[])"

listen_port=$(pick_port demo-producer 19600)
topic_prefix="demo$(date +%s)"
cat >"$DEMO_DIR/sluice.yaml" <<YAML
postgres:
  url: $demo_url
  slot: sluice_demo
  publication: sluice_demo
kafka:
  brokers: $SLUICE_TEST_KAFKA_BROKERS
  topic_prefix: $topic_prefix
  partitions: 3
tables:
  - name: public.products
telemetry:
  producer_listen: 127.0.0.1:$listen_port
YAML

log "starting sluice-producer (log: $DEMO_DIR/producer.log)"
target/debug/sluice-producer --config "$DEMO_DIR/sluice.yaml" run >"$DEMO_DIR/producer.log" 2>&1 &
producer=$!
trap 'kill "$producer" 2>/dev/null || true' EXIT
wait_until 60 "$DEMO_DIR/producer.log" "sluice-producer" curl -fsS "http://127.0.0.1:$listen_port/readyz"

log "writing to public.products"
sql "$demo_url" "INSERT INTO products (id, name, description, price, tags) VALUES
  (1, 'kettle', 'stainless steel, 1.7 l', 39.90, '{kitchen}'),
  (2, 'toaster', 'two slots', 24.50, '{kitchen,breakfast}'),
  (3, 'lamp', NULL, 15.00, '{}')"
sql "$demo_url" "UPDATE products SET price = 34.90, in_stock = false WHERE id = 1"
sql "$demo_url" "DELETE FROM products WHERE id = 3"

topic="$topic_prefix.public.products"
wait_until 60 "$DEMO_DIR/producer.log" "the change events" \
  bash -c "[ \"\$(target/debug/sluice-dump $SLUICE_TEST_KAFKA_BROKERS $topic | wc -l)\" -ge 6 ]"
echo
echo "Change events on Kafka topic $topic (key, op, record):"
target/debug/sluice-dump "$SLUICE_TEST_KAFKA_BROKERS" "$topic" |
  jq -c '{key, op: .event.op, record: .event.record}'
echo
target/debug/sluice-producer --config "$DEMO_DIR/sluice.yaml" status
kill -TERM "$producer"
wait "$producer" || true
trap - EXIT
log "done; the services keep running (stop them with deploy/local/down.sh)"
