#!/usr/bin/env bash
# A real PostgreSQL on 127.0.0.1 for the end-to-end tests: Debian's package, our own cluster in the
# state dir (wal_level=logical, TLS with a throwaway CA, superuser sluice/sluice).
#
#   deploy/local/postgres.sh start|stop|env|clean
#
# start prints `export NAME=value` lines on stdout (and writes them to $SLUICE_STATE_DIR/postgres.env);
# progress goes to stderr. The port is picked once and kept (override: SLUICE_POSTGRES_PORT).
set -euo pipefail

# shellcheck disable=SC2034 # read by lib.sh's log()
SERVICE=postgres
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

PG_USER=sluice
PG_PASSWORD=sluice
PG_DIR="$SLUICE_STATE_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
PG_CA="$PG_DIR/ca.crt"
PG_ENV_FILE="$SLUICE_STATE_DIR/postgres.env"
PG_OS_USER=postgres

pg_bindir() {
  local d
  d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] || return 1
  echo "$d"
}

# Runs a command as the postgres OS user, from / (root's working directory may be closed to it).
as_pg() { (cd / && runuser -u "$PG_OS_USER" -- "$@"); }

install_postgres() {
  apt_install postgresql postgresql-contrib openssl
  BINDIR=$(pg_bindir) || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
}

# The TLS material: a throwaway CA (exported as SLUICE_TEST_PG_CA, for sslmode=verify-full) and a
# server certificate it signed for IP 127.0.0.1. A separate CA rather than one self-signed server
# certificate, because rustls/webpki refuse a CA certificate presented as the server's own.
make_certs() {
  local tmp
  tmp=$(mktemp -d)
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=sluice local test CA" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >/dev/null 2>&1
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" >/dev/null 2>&1
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1" >"$tmp/ext.cnf"
  openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 3650 -extfile "$tmp/ext.cnf" -out "$tmp/server.crt" >/dev/null 2>&1
  install -m 0600 -o "$PG_OS_USER" -g "$PG_OS_USER" "$tmp/server.key" "$PG_DATA/server.key"
  install -m 0644 -o "$PG_OS_USER" -g "$PG_OS_USER" "$tmp/server.crt" "$PG_DATA/server.crt"
  install -m 0644 -o "$PG_OS_USER" -g "$PG_OS_USER" "$tmp/ca.crt" "$PG_DATA/root.crt"
  install -m 0644 "$tmp/ca.crt" "$PG_CA"
  rm -rf "$tmp"
}

init_cluster() {
  log "initdb into $PG_DATA"
  mkdir -p "$PG_DIR"
  chown "$PG_OS_USER:$PG_OS_USER" "$PG_DIR"
  chmod 0755 "$PG_DIR"
  rm -rf "$PG_DATA"
  local pwfile
  pwfile=$(mktemp "$PG_DIR/pwfile.XXXXXX")
  printf '%s\n' "$PG_PASSWORD" >"$pwfile"
  chown "$PG_OS_USER" "$pwfile"
  chmod 0600 "$pwfile"
  if ! as_pg "$BINDIR/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1; then
    rm -f "$pwfile"
    log "initdb failed"
    fail_with_log "$PG_DIR/initdb.log"
  fi
  rm -f "$pwfile"
  as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<'EOF'
# Written by deploy/local/postgres.sh. "host" covers TLS and plain TCP connections.
local   all          all                     trust
local   replication  all                     trust
host    all          all     127.0.0.1/32    scram-sha-256
host    replication  all     127.0.0.1/32    scram-sha-256
EOF
  printf '\n%s\n' "include_if_exists = 'sluice.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
  make_certs
}

# Rewritten on every start: the port may have been overridden since initdb.
write_conf() {
  as_pg tee "$PG_DATA/sluice.conf" >/dev/null <<EOF
# Written by deploy/local/postgres.sh on every start.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$PG_DIR'
max_connections = 300
wal_level = logical
max_replication_slots = 100
max_wal_senders = 100
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
EOF
}

env_lines() {
  cat <<EOF
export SLUICE_TEST_PG_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/postgres
export SLUICE_TEST_PG_CA=$PG_CA
export SLUICE_TEST_PG_BINDIR=$BINDIR
export SLUICE_TEST_PG_PORT=$PORT
EOF
}

# A real request over TCP, with the password, through TLS checked against the CA.
answers() {
  PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=3 "$BINDIR/psql" -X -q -At \
    "host=127.0.0.1 port=$PORT user=$PG_USER dbname=postgres sslmode=verify-full sslrootcert=$PG_CA" \
    -c 'select 1' 2>/dev/null | grep -qx 1
}

server_running() {
  [ -f "$PG_DATA/PG_VERSION" ] && as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

cmd_start() {
  install_postgres
  PORT=$(pick_port postgres 15432)
  if server_running; then
    if answers; then
      log "already running on 127.0.0.1:$PORT"
      env_lines | tee "$PG_ENV_FILE"
      return 0
    fi
    log "running but not answering on port $PORT: restarting it"
    cmd_stop
  fi
  [ -f "$PG_DATA/PG_VERSION" ] || init_cluster
  write_conf
  if port_in_use "$PORT"; then
    die "port $PORT is taken by another process (set SLUICE_POSTGRES_PORT, or run clean to pick anew)"
  fi
  log "starting on 127.0.0.1:$PORT (log: $PG_LOG)"
  touch "$PG_LOG"
  chown "$PG_OS_USER:$PG_OS_USER" "$PG_LOG"
  if ! as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null 2>&1; then
    log "pg_ctl start failed"
    fail_with_log "$PG_LOG"
  fi
  wait_until 30 "$PG_LOG" "postgres on 127.0.0.1:$PORT" answers
  log "ready on 127.0.0.1:$PORT"
  env_lines | tee "$PG_ENV_FILE"
}

cmd_stop() {
  BINDIR=$(pg_bindir) || return 0
  [ -f "$PG_DATA/PG_VERSION" ] || return 0
  server_running || return 0
  log "stopping"
  if ! as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null 2>&1; then
    log "fast shutdown did not finish in 60s: immediate shutdown"
    as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
}

cmd_env() {
  BINDIR=$(pg_bindir) || exit 1
  [ -s "$SLUICE_STATE_DIR/ports/postgres" ] || exit 1
  PORT=$(cat "$SLUICE_STATE_DIR/ports/postgres")
  server_running || exit 1
  env_lines
}

cmd_clean() {
  cmd_stop
  log "removing $PG_DIR"
  rm -rf "$PG_DIR" "$PG_ENV_FILE"
  forget_port postgres
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  clean) cmd_clean ;;
  *)
    echo "usage: $0 start|stop|env|clean" >&2
    exit 2
    ;;
esac
