#!/usr/bin/env bash
# The demo: Postgres, Kafka and Elasticsearch on 127.0.0.1, sluice-producer and sluice-consumer
# running the products example (examples/products/sluice.yaml), rows inserted, updated and
# deleted in Postgres, and a search showing what the index holds.
# The services keep running afterwards; stop them with deploy/local/down.sh.
set -euo pipefail
SERVICE=demo
. "$(dirname "$0")/lib.sh"
cd "$DEPLOY_LOCAL_DIR/../.."

apt_install build-essential pkg-config libssl-dev zlib1g-dev cmake jq curl
eval "$(deploy/local/up.sh postgres kafka elasticsearch)"
log "building sluice"
cargo build -q --bins -p sluice-producer -p sluice-consumer

DEMO_DIR="$SLUICE_STATE_DIR/demo"
mkdir -p "$DEMO_DIR"
sql() { psql -X -q -v ON_ERROR_STOP=1 "$1" -c "$2"; }
admin_url=$SLUICE_TEST_PG_URL
demo_url=${SLUICE_TEST_PG_URL%/*}/sluice_demo
es() { curl -fsS -H "Authorization: ApiKey $SLUICE_TEST_ELASTICSEARCH_API_KEY" -H 'Content-Type: application/json' "$@"; }

# A fresh demo each time: database (its slot goes first: a slot pins its database), index, and
# a topic prefix of its own.
sql "$admin_url" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sluice_demo'" >/dev/null
sql "$admin_url" "DROP DATABASE IF EXISTS sluice_demo WITH (FORCE)"
sql "$admin_url" "CREATE DATABASE sluice_demo"
sql "$demo_url" "CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, description text,
                 price numeric(10,2), in_stock boolean NOT NULL DEFAULT true, supplier_cost numeric(10,2))"
es -X DELETE "$SLUICE_TEST_ELASTICSEARCH_URL/products-v1?ignore_unavailable=true" >/dev/null

export SLUICE_PG_URL=$demo_url
export SLUICE_KAFKA_BROKERS=$SLUICE_TEST_KAFKA_BROKERS
export SLUICE_ES_URL=$SLUICE_TEST_ELASTICSEARCH_URL
export SLUICE_ES_API_KEY=$SLUICE_TEST_ELASTICSEARCH_API_KEY
export SLUICE_TOPIC_PREFIX="demo$(date +%s)"
SLUICE_PRODUCER_PORT=$(pick_port demo-producer 19600)
SLUICE_CONSUMER_PORT=$(pick_port demo-consumer 19601)
export SLUICE_PRODUCER_PORT SLUICE_CONSUMER_PORT
export SLUICE_CONFIG=examples/products/sluice.yaml

log "starting sluice-producer (log: $DEMO_DIR/producer.log) and sluice-consumer (log: $DEMO_DIR/consumer.log)"
target/debug/sluice-producer run >"$DEMO_DIR/producer.log" 2>&1 &
producer=$!
target/debug/sluice-consumer run >"$DEMO_DIR/consumer.log" 2>&1 &
consumer=$!
trap 'kill "$producer" "$consumer" 2>/dev/null || true' EXIT
wait_until 60 "$DEMO_DIR/producer.log" "sluice-producer" curl -fsS "http://127.0.0.1:$SLUICE_PRODUCER_PORT/readyz"
wait_until 60 "$DEMO_DIR/consumer.log" "sluice-consumer" curl -fsS "http://127.0.0.1:$SLUICE_CONSUMER_PORT/readyz"

log "writing to public.products"
sql "$demo_url" "INSERT INTO products (id, name, description, price, in_stock, supplier_cost) VALUES
  (1, 'kettle', 'stainless steel kettle, 1.7 l', 39.90, true, 12.00),
  (2, 'toaster', 'two-slot toaster', 24.50, true, 8.10),
  (3, 'lamp', 'desk lamp with a warm light', 15.00, true, 4.00),
  (4, 'blender', 'glass jug blender', 59.00, false, 21.00)"
sql "$demo_url" "UPDATE products SET price = 34.90 WHERE id = 1"
sql "$demo_url" "UPDATE products SET in_stock = false WHERE id = 2"
sql "$demo_url" "DELETE FROM products WHERE id = 3"
sql "$demo_url" "UPDATE products SET in_stock = true WHERE id = 4"

# In stock now: kettle (1) and blender (4).
index_holds_1_and_4() {
  es -X POST "$SLUICE_TEST_ELASTICSEARCH_URL/products/_refresh" >/dev/null &&
    es "$SLUICE_TEST_ELASTICSEARCH_URL/products/_search?_source=false" |
    jq -e '[.hits.hits[]._id] | sort == ["1", "4"]' >/dev/null
}
wait_until 90 "$DEMO_DIR/consumer.log" "the index to hold products 1 and 4" index_holds_1_and_4
echo
echo "GET products/_search (documents with their version = commit LSN):"
es "$SLUICE_TEST_ELASTICSEARCH_URL/products/_search?version=true" -d '{"query": {"match_all": {}}, "sort": ["_doc"]}' |
  jq -c '.hits.hits[] | {_id, _version, _source}'
echo
echo "GET products/_search?q=description:kettle:"
es "$SLUICE_TEST_ELASTICSEARCH_URL/products/_search?q=description:kettle" | jq -c '.hits.hits[] | {_id, _source}'
echo
target/debug/sluice-producer status
target/debug/sluice-consumer status
kill -TERM "$producer" "$consumer"
wait "$producer" "$consumer" || true
trap - EXIT
log "done; the services keep running (stop them with deploy/local/down.sh)"
