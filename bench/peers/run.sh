#!/usr/bin/env bash
# Both peer benchmarks in one go: bench/peers/debezium.sh, then bench/peers/pgsync.sh, each
# printing its tables; the output of each goes to stdout and, with BENCH_OUT_DIR, into
# BENCH_OUT_DIR/debezium.md and BENCH_OUT_DIR/pgsync.md. Stops at the first that fails.
# Each script takes its own knobs (see their headers); BENCH_ROWS is not passed on here, since
# the two mean different tables by it: BENCH_DEBEZIUM_ROWS (default 1,000,000) and
# BENCH_PGSYNC_ROWS (default 5,000,000) set them.
#
#   bench/peers/run.sh
set -euo pipefail
PEERS=$(cd "$(dirname "$0")" && pwd)
unset BENCH_ROWS
out() { if [ -n "${BENCH_OUT_DIR:-}" ]; then mkdir -p "$BENCH_OUT_DIR" && tee "$BENCH_OUT_DIR/$1.md"; else cat; fi; }
BENCH_ROWS=${BENCH_DEBEZIUM_ROWS:-1000000} "$PEERS/debezium.sh" | out debezium
BENCH_ROWS=${BENCH_PGSYNC_ROWS:-5000000} "$PEERS/pgsync.sh" | out pgsync
