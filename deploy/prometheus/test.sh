#!/usr/bin/env bash
# Checks the alerting rules with Debian's promtool: `check rules` (syntax, expressions) and
# `test rules` (alerts.test.yaml: which alert fires when, on synthetic series). The end-to-end
# test with a real Prometheus scraping sluice is tests/tests/alerts.rs (part of cargo test).
#
#   deploy/prometheus/test.sh
set -euo pipefail
SERVICE=prometheus
. "$(dirname "$0")/../local/lib.sh"
cd "$(dirname "$0")"

command -v promtool >/dev/null || apt_install prometheus
log "promtool check rules"
promtool check rules alerts.yaml
log "promtool test rules"
promtool test rules alerts.test.yaml
