#!/bin/bash
# Kafka's start in compose.yaml (official apache/kafka image or sluice-local/kafka): formats the
# KRaft storage on the first start, then runs the broker with the mounted server.properties and
# the --override flags given as arguments.
set -euo pipefail
props=/etc/sluice-kafka/server.properties
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "${KAFKA_CLUSTER_ID:?}" --config "$props"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$props" "$@"
