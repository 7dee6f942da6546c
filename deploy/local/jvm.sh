# shellcheck shell=bash
# What the JVM search services (elasticsearch.sh, opensearch.sh) share: one instance per name,
# its state dir, ports, lock, pid files and env file, the start (as the service user, in its own
# session, waiting until the cluster answers), stop, env and clean. Sourced after lib.sh.
#
# The service script calls `jvm_instance NAME VARIABLE` first (VARIABLE: where the name came from,
# for the message when it is not a valid one), then sets:
#   JVM_PRODUCT, JVM_VERSION   for messages ("Elasticsearch", "9.2.4")
#   JVM_BIN                    the start script in $JVM_HOME/bin (elasticsearch, opensearch)
#   JVM_HOME, JVM_CACHE        the unpacked distribution, and the cache dir it lives in
#   JVM_HEAP, JVM_TIMEOUT      for messages, and how long a start may take (s)
#   JVM_PORT_BASE, JVM_TRANSPORT_PORT_BASE   the first ports tried
# and defines:
#   jvm_prepare                tools, JDK and distribution; sets JVM_JAVA and JVM_ENV (the
#                              variables of the service's environment, NAME=VALUE words)
#   write_config HTTP TRANSPORT
#   base_url, answering, env_lines
#   publish_hook               (optional) runs before the env file is written
#
# and JVM_SERVER_PID (the pid file the server writes, given to it with -p). State of an instance
# NAME: $SLUICE_STATE_DIR/NAME (config, data, logs/console.log, launcher.pid: the process started),
# and, in $SLUICE_STATE_DIR, ports/NAME and ports/NAME-transport, NAME.env and .NAME.lock.

# jvm_instance NAME VARIABLE: checks the instance name and sets what follows from it.
jvm_instance() {
  JVM_INSTANCE=$1
  case $JVM_INSTANCE in
    *[!a-z0-9-]* | "" | -*) die "$2 must be lower-case letters, digits and dashes (got '$JVM_INSTANCE')" ;;
  esac
  # JVM_VAR: the instance's name in variable names (opensearch-secure -> OPENSEARCH_SECURE).
  JVM_VAR=$(echo "$JVM_INSTANCE" | tr '[:lower:]-' '[:upper:]_')
  # JVM_SELF: the command of this instance, for messages (each instance has a wrapper named after it).
  JVM_SELF=deploy/local/$JVM_INSTANCE.sh
  JVM_STATE=$SLUICE_STATE_DIR/$JVM_INSTANCE
  JVM_LOGS=$JVM_STATE/logs
  JVM_CONSOLE=$JVM_LOGS/console.log
  JVM_LAUNCHER_PID=$JVM_STATE/launcher.pid
  JVM_ENV_FILE=$SLUICE_STATE_DIR/$JVM_INSTANCE.env
  JVM_LOCK=$SLUICE_STATE_DIR/.$JVM_INSTANCE.lock
}

# override NAME DEFAULT: $SLUICE_<INSTANCE>_NAME when set, DEFAULT otherwise.
override() {
  local var="SLUICE_${JVM_VAR}_$1"
  echo "${!var:-$2}"
}

# ours PIDFILE: the pid in PIDFILE is alive and belongs to the service of this state dir.
ours() {
  pid_alive "$1" && grep -qaF -- "$JVM_STATE/" "/proc/$(cat "$1")/cmdline" 2>/dev/null
}

# require_commands COMMAND[=PACKAGE]...: installs the Debian packages of the commands missing.
require_commands() {
  local missing=() want
  for want in "$@"; do
    command -v "${want%%=*}" >/dev/null || missing+=("${want#*=}")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# jvm_install_zip GROUP ARTIFACT: the integ-test zip GROUP:ARTIFACT:$JVM_VERSION:zip from Maven
# Central (once), unpacked as $JVM_HOME (once).
jvm_install_zip() {
  [ -x "$JVM_HOME/bin/$JVM_BIN" ] && return 0
  local top=$2-$JVM_VERSION tmp
  local zip=$JVM_CACHE/$top.zip
  if [ ! -s "$zip" ]; then
    log "fetching $1:$2:$JVM_VERSION:zip from Maven Central"
    maven_fetch "$1:$2:$JVM_VERSION:zip" "$JVM_CACHE"
  fi
  log "unpacking $zip"
  tmp=$(mktemp -d "$JVM_CACHE/.unpack.XXXXXX")
  unzip -q "$zip" -d "$tmp"
  chmod -R a+rX "$tmp"
  rm -rf "$JVM_HOME"
  mv "$tmp/$top" "$JVM_HOME"
  rm -rf "$tmp"
}

# as_service CMD...: runs CMD as the service user with a clean environment (plus $JVM_ENV).
as_service() {
  setpriv --reuid="$SLUICE_SERVICE_USER" --regid="$(id -g "$SLUICE_SERVICE_USER")" --init-groups \
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$JVM_STATE" LANG=C.UTF-8 "${JVM_ENV[@]}" \
    "$@"
}

http_port() { cat "$SLUICE_STATE_DIR/ports/$JVM_INSTANCE"; }

# up_or_dead: stops the wait when the cluster answers or when its process is gone.
up_or_dead() { answering || ! pid_alive "$JVM_LAUNCHER_PID"; }

wait_ready() {
  wait_until "$JVM_TIMEOUT" "$JVM_CONSOLE" "$JVM_INSTANCE" up_or_dead
  if ! answering; then
    log "$JVM_INSTANCE exited during startup"
    fail_with_log "$JVM_CONSOLE"
  fi
}

publish_env() {
  if declare -F publish_hook >/dev/null; then publish_hook; fi
  (umask 077 && env_lines >"$JVM_ENV_FILE")
  env_lines
}

cmd_start() {
  exec 9>"$JVM_LOCK"
  flock 9
  START_OK=0
  if ours "$JVM_LAUNCHER_PID"; then
    trap stop_unless_started EXIT
    if ! answering; then
      log "$JVM_INSTANCE (pid $(cat "$JVM_LAUNCHER_PID")) is starting: waiting"
      wait_ready
    fi
    log "$JVM_INSTANCE already running on $(base_url)"
    publish_env
    START_OK=1
    return 0
  fi
  rm -f "$JVM_LAUNCHER_PID" "$JVM_SERVER_PID" "$JVM_ENV_FILE"

  ensure_service_user
  jvm_prepare

  local http transport p
  http=$(pick_port "$JVM_INSTANCE" "$JVM_PORT_BASE")
  transport=$(pick_port "$JVM_INSTANCE-transport" "$JVM_TRANSPORT_PORT_BASE")
  for p in "$http" "$transport"; do
    port_in_use "$p" && die "port $p is taken by another process (set SLUICE_${JVM_VAR}_PORT / SLUICE_${JVM_VAR}_TRANSPORT_PORT, or run '$JVM_SELF clean' to pick new ports)"
  done
  # The service user must reach the distribution and its state dir whatever root's umask was.
  chmod o+x "$SLUICE_STATE_DIR" "$SLUICE_CACHE_DIR" "$JVM_CACHE"
  write_config "$http" "$transport"

  log "starting $JVM_PRODUCT $JVM_VERSION on $(base_url) (transport $transport, heap $JVM_HEAP, java $JVM_JAVA)"
  echo "=== start $(date -u +%FT%TZ) ===" >>"$JVM_CONSOLE"
  chown "$SLUICE_SERVICE_USER:" "$JVM_CONSOLE"
  # setsid: own session, so a Ctrl-C or hangup of the caller does not reach the JVMs. The subshell
  # is not a process group leader, so setsid does not fork and $! is the process bin/ starts
  # (Elasticsearch: its CLI launcher JVM, parent of the server JVM; OpenSearch: the JVM itself).
  (
    cd "$JVM_STATE" || exit 1
    exec setsid setpriv --reuid="$SLUICE_SERVICE_USER" --regid="$(id -g "$SLUICE_SERVICE_USER")" --init-groups \
      env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$JVM_STATE" LANG=C.UTF-8 "${JVM_ENV[@]}" \
      "$JVM_HOME/bin/$JVM_BIN" -p "$JVM_SERVER_PID"
  ) </dev/null >>"$JVM_CONSOLE" 2>&1 9>&- &
  echo $! >"$JVM_LAUNCHER_PID"
  trap stop_unless_started EXIT
  local t0=$SECONDS
  wait_ready
  log "$JVM_INSTANCE answered after $((SECONDS - t0))s"
  publish_env
  START_OK=1
}

# stop_processes: the stop itself (the caller holds the lock).
stop_processes() {
  rm -f "$JVM_ENV_FILE"
  if ours "$JVM_SERVER_PID"; then stop_pid "$JVM_SERVER_PID" "$JVM_INSTANCE" 60; fi
  # An Elasticsearch launcher exits by itself once the server is gone; on its own it forwards
  # the stop.
  if ours "$JVM_LAUNCHER_PID"; then stop_pid "$JVM_LAUNCHER_PID" "$JVM_INSTANCE-launcher" 60; fi
  rm -f "$JVM_SERVER_PID" "$JVM_LAUNCHER_PID"
}

cmd_stop() {
  exec 9>"$JVM_LOCK"
  flock 9
  stop_processes
}

# stop_unless_started: EXIT trap of a start; a start that failed stops what it left running, so
# no half-started JVM keeps the ports.
stop_unless_started() {
  if [ "$START_OK" != 1 ]; then
    log "start failed: stopping what it left running"
    stop_processes
  fi
}

cmd_env() {
  if ! ours "$JVM_LAUNCHER_PID" || [ ! -s "$JVM_ENV_FILE" ]; then
    log "$JVM_INSTANCE is not running"
    exit 1
  fi
  cat "$JVM_ENV_FILE"
}

cmd_clean() {
  cmd_stop
  log "deleting $JVM_STATE"
  rm -rf "$JVM_STATE" "$JVM_ENV_FILE" "$JVM_LOCK"
  forget_port "$JVM_INSTANCE"
  forget_port "$JVM_INSTANCE-transport"
}

# jvm_main COMMAND [EXTRA_COMMAND]: runs start, stop, env, clean (or the extra command, a function
# cmd_EXTRA of the service script).
jvm_main() {
  local extra=${2:-}
  case "${1:-}" in
    start | stop | env | clean) "cmd_$1" ;;
    *)
      if [ -n "$extra" ] && [ "${1:-}" = "$extra" ]; then
        "cmd_$extra"
      else
        echo "usage: $JVM_SELF start|stop|env|clean${extra:+|$extra}" >&2
        exit 2
      fi
      ;;
  esac
}
