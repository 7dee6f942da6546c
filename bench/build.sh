#!/usr/bin/env bash
# Measures a clean debug build of the whole workspace:
#
#   CARGO_TARGET_DIR=<new empty dir> cargo build --workspace --all-targets --locked
#
# under /usr/bin/time -v (wall time, and user+system CPU of cargo and every rustc, build script
# and C compiler it waited for: librdkafka is built from source). The crates are downloaded
# first (`cargo fetch --locked`, not timed), so the figure excludes downloads. The temporary
# target dir is deleted afterwards.
#
#   bench/build.sh
#
# Knobs: BENCH_RUNS (default 1), BENCH_WORK_DIR (parent of the target dir, default /var/tmp),
# BENCH_QUIET_TIMEOUT (see bench/lib.sh). Rust's own incremental/sccache settings from the
# environment apply; RUSTC_WRAPPER is cleared so a compiler cache cannot hide the work.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

RUNS=${BENCH_RUNS:-1}
WORK_PARENT=${BENCH_WORK_DIR:-/var/tmp}
require_time
cd "$REPO_DIR"
unset RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER

log "cargo fetch --locked (not timed)"
cargo fetch --locked -q

WORK=$(mktemp -d "$WORK_PARENT/sluice-bench-build.XXXXXX")
trap 'watch_abort; rm -rf "$WORK"' EXIT
# Our own rustc processes (their command lines name our target dir) do not count as other builds.
OWN_MARK=$WORK

ROWS=()
for i in $(seq 1 "$RUNS"); do
  target=$WORK/target-$i
  wait_quiet
  log "run $i: clean debug build into $target"
  watch_start
  t0=$(now)
  if ! CARGO_TARGET_DIR=$target /usr/bin/time -v -o "$WORK/time-$i" \
    cargo build --workspace --all-targets --locked >"$WORK/build-$i.log" 2>&1; then
    watch_stop >/dev/null
    tail -n 40 "$WORK/build-$i.log" >&2
    die "the build failed"
  fi
  t1=$(now)
  disturbed=$(watch_stop)
  user=$(time_field "$WORK/time-$i" 'User time (seconds)')
  sys=$(time_field "$WORK/time-$i" 'System time (seconds)')
  wall=$(seconds_between "$t0" "$t1")
  units=$(grep -c '^ *Compiling ' "$WORK/build-$i.log" || true)
  size=$(du -sm "$target" | cut -f1)
  ROWS+=("| $i | $wall | $user | $sys | $(calc "($user + $sys) / $wall * 100" 0)% | $units | $size | $disturbed |")
  log "run $i: ${wall}s wall, ${user}s user, ${sys}s system"
  rm -rf "$target"
done

echo
machine_info
echo "rustc:   $(rustc --version)"
echo "cargo:   $(cargo --version)"
echo
echo "| run | wall (s) | user CPU (s) | system CPU (s) | CPU use (of one core) | crates compiled | target dir (MB) | other builds/tests running |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
printf '%s\n' "${ROWS[@]}"
