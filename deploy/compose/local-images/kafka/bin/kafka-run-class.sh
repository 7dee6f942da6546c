#!/bin/bash
# kafka-run-class.sh CLASS ARGS…: what the official scripts of the same name do, reduced to
# the classpath, the heap (KAFKA_HEAP_OPTS) and logging to stdout.
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -XX:+UseSerialGC \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' "$@"
