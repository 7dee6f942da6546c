#!/usr/bin/env bash
# Stops the services deploy/local/up.sh started. Data is kept unless --clean is given.
#
#   deploy/local/down.sh            # stop, keep data and ports
#   deploy/local/down.sh --clean    # stop and delete the data and the test CA (downloads stay cached)
#   deploy/local/down.sh [--clean] opensearch3 elasticsearch8   # only those
set -euo pipefail
SERVICE=down
. "$(dirname "$0")/lib.sh"

action=stop
if [ "${1:-}" = "--clean" ]; then action=clean; shift; fi
services=("$@")
all=0
if [ ${#services[@]} -eq 0 ]; then
  all=1
  services=(opensearch-secure opensearch3 elasticsearch8 elasticsearch opensearch kafka postgres)
fi

status=0
for s in "${services[@]}"; do
  "$DEPLOY_LOCAL_DIR/$s.sh" "$action" || { log "$s did not $action cleanly"; status=1; }
done
[ "$action" = clean ] && rm -f "$SLUICE_STATE_DIR/env"
if [ "$action" = clean ] && [ "$all" = 1 ]; then
  # The test CA of the TLS instances (lib.sh), now that none of them runs.
  rm -rf "$SLUICE_TLS_DIR" "$SLUICE_STATE_DIR/.tls.lock"
fi
exit $status
