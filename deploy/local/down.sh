#!/usr/bin/env bash
# Stops the services deploy/local/up.sh started. Data is kept unless --clean is given.
#
#   deploy/local/down.sh            # stop, keep data and ports
#   deploy/local/down.sh --clean    # stop and delete the data (downloads stay cached)
set -euo pipefail
SERVICE=down
. "$(dirname "$0")/lib.sh"

action=stop
if [ "${1:-}" = "--clean" ]; then action=clean; shift; fi
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(elasticsearch opensearch kafka postgres)

status=0
for s in "${services[@]}"; do
  "$DEPLOY_LOCAL_DIR/$s.sh" "$action" || { log "$s did not $action cleanly"; status=1; }
done
[ "$action" = clean ] && rm -f "$SLUICE_STATE_DIR/env"
exit $status
