# shellcheck shell=bash
# Shared helpers for the deploy/local service scripts. Sourced, never run.
#
# Layout (both overridable):
#   SLUICE_CACHE_DIR  downloads (jars, zips), kept between runs      default /var/cache/sluice
#   SLUICE_STATE_DIR  data dirs, logs, pid files, chosen ports       default /var/tmp/sluice-local
# Neither lives under root's home: OpenSearch and Elasticsearch refuse to run from there.

set -euo pipefail

SLUICE_CACHE_DIR=${SLUICE_CACHE_DIR:-/var/cache/sluice}
SLUICE_STATE_DIR=${SLUICE_STATE_DIR:-/var/tmp/sluice-local}
# The unprivileged OS user that runs the JVM services (they refuse to run as root).
SLUICE_SERVICE_USER=${SLUICE_SERVICE_USER:-sluice}
# shellcheck disable=SC2034 # used by the scripts that source this file
DEPLOY_LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mkdir -p "$SLUICE_CACHE_DIR" "$SLUICE_STATE_DIR"

log() { printf '[%s] %s\n' "${SERVICE:-local}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PKG...: installs the Debian packages that are missing.
apt_install() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian's packages"
  # Services start in parallel: one apt at a time, each waiting for dpkg's own lock too.
  (
    flock 8
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      -o DPkg::Lock::Timeout=600 "${missing[@]}" >&2
  ) 8>"$SLUICE_STATE_DIR/.apt.lock"
}

# ensure_service_user: creates the unprivileged user the JVM services run as.
ensure_service_user() {
  if ! id -u "$SLUICE_SERVICE_USER" >/dev/null 2>&1; then
    as_root useradd --system --no-create-home --shell /usr/sbin/nologin "$SLUICE_SERVICE_USER"
  fi
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pick_port NAME DEFAULT: the port for NAME. An explicit environment override wins, then the
# port chosen on an earlier start (kept in the state dir so restarts keep their address), then
# the first free port from DEFAULT upwards.
pick_port() {
  local name=$1 default=$2 override_var file p
  override_var="SLUICE_$(echo "$name" | tr '[:lower:]-' '[:upper:]_')_PORT"
  file="$SLUICE_STATE_DIR/ports/$name"
  mkdir -p "$SLUICE_STATE_DIR/ports"
  if [ -n "${!override_var:-}" ]; then
    echo "${!override_var}" >"$file"
    echo "${!override_var}"
    return
  fi
  if [ -s "$file" ]; then
    cat "$file"
    return
  fi
  p=$default
  while port_in_use "$p"; do p=$((p + 1)); done
  echo "$p" >"$file"
  echo "$p"
}

# forget_port NAME: drops a remembered port (after a clean stop, a fresh start may pick again).
forget_port() { rm -f "$SLUICE_STATE_DIR/ports/$1"; }

# pid_alive PIDFILE
pid_alive() {
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# wait_until TIMEOUT_SECONDS LOGFILE DESCRIPTION CMD...: polls CMD until it succeeds. On timeout,
# prints where the log is and its last lines, and fails.
wait_until() {
  local timeout=$1 logfile=$2 what=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$what did not answer within ${timeout}s"
      fail_with_log "$logfile"
    fi
    sleep 0.5
  done
}

fail_with_log() {
  local logfile=$1
  log "log: $logfile (last 40 lines below)"
  if [ -f "$logfile" ]; then tail -n 40 "$logfile" >&2; fi
  exit 1
}

# stop_pid PIDFILE NAME [TIMEOUT]: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pidfile=$1 name=$2 timeout=${3:-60} pid
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name did not stop within ${timeout}s: killing it"
      kill -9 "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
}

# maven_fetch GROUP:ARTIFACT:VERSION[:PACKAGING[:CLASSIFIER]] DEST_DIR: copies one artifact from
# Maven Central into the cache (once). One fetch at a time: the services start in parallel, and
# Maven 3.8's local repository is not safe for concurrent writers (two first runs resolving the
# dependency plugin into an empty ~/.m2 at once). A failed fetch is tried once more after 10 s, for
# a dropped connection; an artifact Central does not have fails twice, then the caller's error.
maven_fetch() {
  local coords=$1 dest=$2
  mkdir -p "$dest"
  (
    exec 8>"$SLUICE_CACHE_DIR/.maven.lock"
    flock 8
    mvn -q -B dependency:copy -Dartifact="$coords" -DoutputDirectory="$dest" >&2 && exit 0
    log "fetching $coords failed: trying again in 10 s"
    sleep 10
    mvn -q -B dependency:copy -Dartifact="$coords" -DoutputDirectory="$dest" >&2
  )
}

# java_home_between MIN MAX: prints the home of the newest JDK installed whose major version is
# within [MIN, MAX] (OpenSearch 2.x needs the Java SecurityManager, gone in JDK 24+).
java_home_between() {
  local min=$1 max=$2 dir ver major
  for dir in $(printf '%s\n' /usr/lib/jvm/*/ | sort -rV); do
    [ -x "$dir/bin/java" ] || continue
    ver=$("$dir/bin/java" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
    major=${ver%%.*}
    if [ -n "$major" ] && [ "$major" -ge "$min" ] && [ "$major" -le "$max" ]; then
      echo "${dir%/}"
      return 0
    fi
  done
  return 1
}

# java_home_at_least MAJOR: prints a JDK home of at least that major version, preferring the
# newest one installed.
java_home_at_least() { java_home_between "$1" 999; }

# The test CA of the TLS clusters, in $SLUICE_STATE_DIR/tls (made once, shared by every instance
# that serves TLS): ca.crt is what a client trusts (SLUICE_TEST_*_CA). The server certificates it
# issues name IP:127.0.0.1 and DNS:$SLUICE_TLS_DNS_NAME only, never `localhost`, so a test reaches a
# wrong-host-name case with https://localhost:PORT. The CA is a CA only and each server has its own
# leaf certificate (rustls/webpki refuse a CA certificate presented as the server's own), with the
# basicConstraints, keyUsage, extendedKeyUsage=serverAuth and subjectAltName that webpki checks.
SLUICE_TLS_DIR=$SLUICE_STATE_DIR/tls
SLUICE_TLS_DNS_NAME=sluice-local.test

# tls_ca: makes the CA once; prints the path of its certificate (PEM).
tls_ca() {
  (
    flock 7
    tls_ca_locked
  ) 7>"$SLUICE_STATE_DIR/.tls.lock"
  echo "$SLUICE_TLS_DIR/ca.crt"
}

tls_ca_locked() {
  [ -s "$SLUICE_TLS_DIR/ca.crt" ] && [ -s "$SLUICE_TLS_DIR/ca.key" ] && return 0
  command -v openssl >/dev/null || apt_install openssl
  log "making the test CA in $SLUICE_TLS_DIR"
  mkdir -p "$SLUICE_TLS_DIR"
  chmod 755 "$SLUICE_TLS_DIR"
  # A new CA invalidates every certificate the old one issued.
  rm -f "$SLUICE_TLS_DIR"/*.crt "$SLUICE_TLS_DIR"/*.key "$SLUICE_TLS_DIR"/*.srl
  local tmp
  tmp=$(mktemp -d "$SLUICE_TLS_DIR/.ca.XXXXXX")
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=sluice local clusters test CA" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" >"$tmp/openssl.log" 2>&1 ||
    { cat "$tmp/openssl.log" >&2; rm -rf "$tmp"; die "openssl could not make the test CA"; }
  chmod 600 "$tmp/ca.key"
  chmod 644 "$tmp/ca.crt"
  mv "$tmp/ca.key" "$SLUICE_TLS_DIR/ca.key"
  mv "$tmp/ca.crt" "$SLUICE_TLS_DIR/ca.crt"
  rm -rf "$tmp"
}

# tls_server_cert NAME [EKU]: issues (once) the server certificate NAME.crt (leaf, PEM) and its key
# NAME.key (unencrypted PKCS#8 PEM, mode 600) in $SLUICE_TLS_DIR, signed by the test CA. EKU is the
# extendedKeyUsage (default serverAuth; "serverAuth,clientAuth" for a node-to-node transport
# certificate).
tls_server_cert() {
  local name=$1 eku=${2:-serverAuth}
  tls_ca >/dev/null
  (
    flock 7
    [ -s "$SLUICE_TLS_DIR/$name.crt" ] && [ -s "$SLUICE_TLS_DIR/$name.key" ] && exit 0
    log "issuing the server certificate $SLUICE_TLS_DIR/$name.crt (IP:127.0.0.1, DNS:$SLUICE_TLS_DNS_NAME)"
    local tmp
    tmp=$(mktemp -d "$SLUICE_TLS_DIR/.$name.XXXXXX")
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=$eku" \
      "subjectAltName=IP:127.0.0.1,DNS:$SLUICE_TLS_DNS_NAME" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$tmp/ext.cnf"
    if ! {
      openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$SLUICE_TLS_DNS_NAME" \
        -keyout "$tmp/server.key" -out "$tmp/server.csr" &&
        openssl x509 -req -in "$tmp/server.csr" -CA "$SLUICE_TLS_DIR/ca.crt" \
          -CAkey "$SLUICE_TLS_DIR/ca.key" -set_serial "0x$(openssl rand -hex 16)" -days 3650 \
          -extfile "$tmp/ext.cnf" -out "$tmp/server.crt"
    } >"$tmp/openssl.log" 2>&1; then
      cat "$tmp/openssl.log" >&2
      rm -rf "$tmp"
      die "openssl could not issue the server certificate $name"
    fi
    chmod 600 "$tmp/server.key"
    chmod 644 "$tmp/server.crt"
    mv "$tmp/server.key" "$SLUICE_TLS_DIR/$name.key"
    mv "$tmp/server.crt" "$SLUICE_TLS_DIR/$name.crt"
    rm -rf "$tmp"
  ) 7>"$SLUICE_STATE_DIR/.tls.lock"
}
