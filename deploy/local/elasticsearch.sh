#!/usr/bin/env bash
# Single-node Elasticsearch on 127.0.0.1 with security on, from the integ-test zip on Maven Central,
# without Docker. One script for every instance: the instance settings below come from variables,
# and the defaults are the main instance (Elasticsearch 9, plain HTTP). deploy/local/elasticsearch8.sh
# sets them for the second instance (Elasticsearch 8, HTTPS, token service) and execs this script.
#
#   deploy/local/elasticsearch.sh start   start (idempotent); prints the export lines below
#   deploy/local/elasticsearch.sh stop    SIGTERM, wait, kill; keeps data, ports and the API key
#   deploy/local/elasticsearch.sh env     prints the export lines when running (exit 1 otherwise)
#   deploy/local/elasticsearch.sh clean   stop, then delete data, logs, keystore, API key, ports
#   deploy/local/elasticsearch.sh fetch   only fetch and unpack the distribution; prints its directory
#
# Instance settings (set by the wrappers; defaults in brackets):
#   SLUICE_ES_INSTANCE       name of the instance [elasticsearch]: state in $SLUICE_STATE_DIR/<name>,
#                            env file $SLUICE_STATE_DIR/<name>.env, ports remembered as <name> and
#                            <name>-transport, export names SLUICE_TEST_<NAME>_*, overrides SLUICE_<NAME>_*
#   SLUICE_ES_VERSION        version of the integ-test zip [9.2.4]
#   SLUICE_ES_PORT           first HTTP port tried [9210]; SLUICE_ES_TRANSPORT_PORT the same [9310]
#   SLUICE_ES_TLS            1: HTTPS with a certificate of the test CA (lib.sh tls_server_cert) [0]
#   SLUICE_ES_TOKEN_SERVICE  1: xpack.security.authc.token.enabled, so POST /_security/oauth2/token
#                            grants bearer tokens [0]
#
# Exports SLUICE_TEST_<NAME>_URL, _API_KEY (the `encoded` value of an API key with all privileges
# on non-restricted indices and cluster `monitor` and `manage_index_templates`), _USER (elastic),
# _PASSWORD and, with TLS, _CA (the test CA's certificate, PEM).
#
# The unpacked distribution lives in $SLUICE_CACHE_DIR/elasticsearch/elasticsearch-<version>
# (read-only for the service); config (with the keystore holding bootstrap.password and, with TLS,
# the server certificate and key), data and logs in $SLUICE_STATE_DIR/<name>, owned by
# $SLUICE_SERVICE_USER (Elasticsearch refuses to run as root). The zip is under the Elastic
# licences: it is fetched and run, never committed.
# Overrides (<NAME> as above, e.g. ELASTICSEARCH or ELASTICSEARCH8): SLUICE_<NAME>_PORT,
# SLUICE_<NAME>_TRANSPORT_PORT, SLUICE_<NAME>_VERSION, SLUICE_<NAME>_HEAP, SLUICE_<NAME>_PASSWORD,
# SLUICE_<NAME>_START_TIMEOUT (default $SLUICE_START_TIMEOUT, else 180 s).
#
# The integ-test zips (9.2.4 and 8.19.7 alike) hold only the modules apm, transport-netty4,
# x-pack-core and x-pack-security: no painless, no reindex (so no _reindex / _delete_by_query /
# _update_by_query), no ingest-common, no mapper-extras, no analysis-common. Maven Central has none
# of those for 8.x or 9.x, so they cannot be added; only three analysis components the .security
# index needs are supplied by a small plugin this script compiles (install_analysis_shim). Maven
# Central has no integ-test zip for 9.3+ (9.3.0, 9.3.1, 9.4.0, 9.5.6 refused; 9.2.2, 9.2.5, 9.2.6
# too); 9.2.4 is the newest 9.x found.
# Java: the newest JDK installed of at least 21 for 9.x, 17 for 8.x. Both run on JDK 24+ (no
# SecurityManager there: Elasticsearch 8.18+ and 9.x use their own entitlement checks instead).
# The elastic password is written to the keystore at the first start: `clean` to change it.
set -euo pipefail

ES_INSTANCE=${SLUICE_ES_INSTANCE:-elasticsearch}
SERVICE=$ES_INSTANCE
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=jvm.sh
. "$(dirname "$0")/jvm.sh"
jvm_instance "$ES_INSTANCE" SLUICE_ES_INSTANCE
ES_VAR=$JVM_VAR
ES_SELF=$JVM_SELF

ES_VERSION=$(override VERSION "${SLUICE_ES_VERSION:-9.2.4}")
ES_HEAP=$(override HEAP 512m)
ES_TIMEOUT=$(override START_TIMEOUT "${SLUICE_START_TIMEOUT:-180}")
ES_USER=elastic
ES_PASSWORD=$(override PASSWORD sluice-elastic)
ES_PORT_BASE=${SLUICE_ES_PORT:-9210}
ES_TRANSPORT_PORT_BASE=${SLUICE_ES_TRANSPORT_PORT:-9310}
ES_TLS=${SLUICE_ES_TLS:-0}
ES_TOKEN_SERVICE=${SLUICE_ES_TOKEN_SERVICE:-0}
case "$ES_TLS$ES_TOKEN_SERVICE" in
  [01][01]) ;;
  *) die "SLUICE_ES_TLS and SLUICE_ES_TOKEN_SERVICE are 0 or 1 (got '$ES_TLS', '$ES_TOKEN_SERVICE')" ;;
esac
case $ES_VERSION in
  8.*) ES_JAVA_MIN=17 ;;
  9.*) ES_JAVA_MIN=21 ;;
  *) die "Elasticsearch $ES_VERSION: this script knows 8.x and 9.x only" ;;
esac
# The token service is a paid feature: the basic licence answers "Security tokens are not available
# under the current [basic] license". With it on, the cluster generates a 30-day trial licence when
# its data dir is created (`clean` starts a new 30 days; a start checks that it is still active).
if [ "$ES_TOKEN_SERVICE" = 1 ]; then ES_LICENSE=trial; else ES_LICENSE=basic; fi
ES_CLUSTER=sluice-local-$ES_INSTANCE
ES_CACHE=$SLUICE_CACHE_DIR/elasticsearch
ES_HOME=$ES_CACHE/elasticsearch-$ES_VERSION
ES_STATE=$JVM_STATE
ES_CONF=$ES_STATE/config
ES_LOGS=$JVM_LOGS
ES_API_KEY_FILE=$ES_STATE/api-key
# The test CA's certificate (the same file for every TLS instance), when TLS is on.
ES_CA=$SLUICE_TLS_DIR/ca.crt
# The analysis shim's source (see install_analysis_shim).
ES_SHIM_SOURCE=$(cd "$(dirname "$0")" && pwd)/analysis-shim/AnalysisShimPlugin.java

# What jvm.sh runs. launcher.pid is the process started (the CLI launcher JVM, parent of the
# server JVM); run/elasticsearch.pid the server JVM, written by Elasticsearch once it has
# bootstrapped.
JVM_PRODUCT=Elasticsearch
JVM_VERSION=$ES_VERSION
JVM_BIN=elasticsearch
JVM_HOME=$ES_HOME
JVM_CACHE=$ES_CACHE
JVM_HEAP=$ES_HEAP
JVM_TIMEOUT=$ES_TIMEOUT
JVM_PORT_BASE=$ES_PORT_BASE
JVM_TRANSPORT_PORT_BASE=$ES_TRANSPORT_PORT_BASE
JVM_SERVER_PID=$ES_STATE/run/elasticsearch.pid

# es_java: the JDK Elasticsearch runs on, and the environment it runs with.
es_java() {
  JVM_JAVA=$(java_home_at_least "$ES_JAVA_MIN") || die "no JDK $ES_JAVA_MIN+ in /usr/lib/jvm (Elasticsearch $ES_VERSION needs one)"
  JVM_ENV=(ES_JAVA_HOME="$JVM_JAVA" ES_PATH_CONF="$ES_CONF" ES_TMPDIR="$ES_STATE/tmp")
}

# jvm_prepare: tools, the JDK, the distribution and the analysis shim.
jvm_prepare() {
  require_commands curl unzip jq mvn=maven setpriv=util-linux
  es_java
  jvm_install_zip org.elasticsearch.distribution.integ-test-zip elasticsearch
  install_analysis_shim
}

# install_analysis_shim: the integ-test zip lacks the analysis-common module, but the mapping of
# the .security index (where API keys live) needs its `uax_url_email` tokenizer and its
# `pattern_capture` and `unique` token filters: without them every API key request fails with
# "Unknown filter type [pattern_capture] for [email]". Maven Central has no analysis-common for
# Elasticsearch 8 or 9, so this compiles a tiny plugin that registers those three from Lucene classes
# already in lib/ (once, into the cached distribution).
install_analysis_shim() {
  local dir=$ES_HOME/plugins/sluice-analysis-shim
  [ -s "$dir/sluice-analysis-shim.jar" ] && return 0
  [ -x "$JVM_JAVA/bin/javac" ] || die "$JVM_JAVA has no javac: a full JDK $ES_JAVA_MIN+ is needed to build the analysis shim"
  log "building the analysis shim plugin (uax_url_email, pattern_capture, unique)"
  local build
  build=$(mktemp -d)
  mkdir -p "$build/classes"
  "$JVM_JAVA/bin/javac" -nowarn --release "$ES_JAVA_MIN" -cp "$ES_HOME/lib/*" -d "$build/classes" \
    "$ES_SHIM_SOURCE" >&2
  mkdir -p "$build/plugin"
  "$JVM_JAVA/bin/jar" --create --file "$build/plugin/sluice-analysis-shim.jar" -C "$build/classes" . >&2
  cat >"$build/plugin/plugin-descriptor.properties" <<EOF
description=sluice local tests: uax_url_email, pattern_capture and unique for the .security index
version=$ES_VERSION
name=sluice-analysis-shim
classname=sluice.esshim.AnalysisShimPlugin
java.version=$ES_JAVA_MIN
elasticsearch.version=$ES_VERSION
EOF
  chmod -R a+rX "$build/plugin"
  rm -rf "$dir"
  mv "$build/plugin" "$dir"
  rm -rf "$build"
}

# write_config HTTP_PORT TRANSPORT_PORT: config dir in the state dir (rewritten on every start so
# port changes take effect; data and keystore are untouched).
write_config() {
  local http_port=$1 transport_port=$2 f
  mkdir -p "$ES_CONF/jvm.options.d" "$ES_STATE/data" "$ES_LOGS" "$ES_STATE/run" "$ES_STATE/tmp"
  for f in log4j2.properties roles.yml role_mapping.yml users users_roles; do
    cp "$ES_HOME/config/$f" "$ES_CONF/"
  done
  # The stock jvm.options writes GC logs and crash files relative to the working dir.
  sed -e "s|ErrorFile=hs_err|ErrorFile=$ES_LOGS/hs_err|" \
    -e "s|file=gc.log|file=$ES_LOGS/gc.log|" \
    "$ES_HOME/config/jvm.options" >"$ES_CONF/jvm.options"
  # An explicit heap also turns off Elasticsearch's automatic sizing (half the RAM).
  printf -- '-Xms%s\n-Xmx%s\n-XX:HeapDumpPath=%s\n' "$ES_HEAP" "$ES_HEAP" "$ES_STATE/data" \
    >"$ES_CONF/jvm.options.d/heap.options"
  cat >"$ES_CONF/elasticsearch.yml" <<EOF
# Written by deploy/local/elasticsearch.sh ($ES_INSTANCE) on every start: edit the script, not this file.
cluster.name: $ES_CLUSTER
node.name: sluice-local
discovery.type: single-node
network.host: 127.0.0.1
http.port: $http_port
transport.port: $transport_port
path.data: $ES_STATE/data
path.logs: $ES_LOGS
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
xpack.license.self_generated.type: $ES_LICENSE
xpack.security.enabled: true
xpack.security.transport.ssl.enabled: false
xpack.security.authc.api_key.enabled: true
EOF
  if [ "$ES_TLS" = 1 ]; then
    # The server certificate of the test CA (lib.sh), copied into the config dir: Elasticsearch
    # reads key material from there only.
    tls_server_cert "$ES_INSTANCE"
    mkdir -p "$ES_CONF/certs"
    cp "$SLUICE_TLS_DIR/$ES_INSTANCE.crt" "$ES_CONF/certs/http.crt"
    cp "$SLUICE_TLS_DIR/$ES_INSTANCE.key" "$ES_CONF/certs/http.key"
    cp "$ES_CA" "$ES_CONF/certs/ca.crt"
    cat >>"$ES_CONF/elasticsearch.yml" <<EOF
xpack.security.http.ssl.enabled: true
xpack.security.http.ssl.certificate: certs/http.crt
xpack.security.http.ssl.key: certs/http.key
xpack.security.http.ssl.certificate_authorities: certs/ca.crt
xpack.security.http.ssl.client_authentication: none
EOF
  else
    echo "xpack.security.http.ssl.enabled: false" >>"$ES_CONF/elasticsearch.yml"
  fi
  if [ "$ES_TOKEN_SERVICE" = 1 ]; then
    echo "xpack.security.authc.token.enabled: true" >>"$ES_CONF/elasticsearch.yml"
  fi
  chown -R "$SLUICE_SERVICE_USER:" "$ES_STATE"
  chmod 700 "$ES_STATE"
  if [ -d "$ES_CONF/certs" ]; then chmod 600 "$ES_CONF/certs/http.key"; fi
  # The elastic user's password comes from bootstrap.password (reserved realm) while no other
  # password was set through the API.
  if [ ! -s "$ES_CONF/elasticsearch.keystore" ]; then
    log "creating the keystore with bootstrap.password"
    as_service "$ES_HOME/bin/elasticsearch-keystore" create >&2
    printf '%s' "$ES_PASSWORD" | as_service "$ES_HOME/bin/elasticsearch-keystore" add -x bootstrap.password >&2
  fi
}

base_url() {
  if [ "$ES_TLS" = 1 ]; then echo "https://127.0.0.1:$(http_port)"; else echo "http://127.0.0.1:$(http_port)"; fi
}

# es_curl ARGS...: curl that trusts the test CA when the instance serves TLS.
es_curl() {
  if [ "$ES_TLS" = 1 ]; then curl --cacert "$ES_CA" "$@"; else curl "$@"; fi
}

env_lines() {
  local p="SLUICE_TEST_${ES_VAR}"
  echo "export ${p}_URL=$(base_url)"
  echo "export ${p}_API_KEY=$(jq -r .encoded "$ES_API_KEY_FILE")"
  echo "export ${p}_USER=$ES_USER"
  echo "export ${p}_PASSWORD=$ES_PASSWORD"
  if [ "$ES_TLS" = 1 ]; then echo "export ${p}_CA=$ES_CA"; fi
}

# answering: cluster health of *our* cluster, as elastic, is at least yellow.
answering() {
  es_curl -fsS --max-time 5 -u "$ES_USER:$ES_PASSWORD" \
    "$(base_url)/_cluster/health?wait_for_status=yellow&timeout=2s" 2>/dev/null |
    grep -q "\"cluster_name\":\"$ES_CLUSTER\""
}

# The key's name says which privileges it was made with; a key from an older script is replaced.
API_KEY_NAME=sluice-tests-2

api_key_valid() {
  [ -s "$ES_API_KEY_FILE" ] || return 1
  [ "$(jq -r .name "$ES_API_KEY_FILE")" = "$API_KEY_NAME" ] || return 1
  local code
  code=$(es_curl -sS --max-time 10 -o /dev/null -w '%{http_code}' \
    -H "Authorization: ApiKey $(jq -r .encoded "$ES_API_KEY_FILE")" "$(base_url)/_security/_authenticate")
  [ "$code" = 200 ]
}

# ensure_api_key: reuses the stored API key when Elasticsearch still accepts it, else makes one.
ensure_api_key() {
  api_key_valid && return 0
  log "creating the test API key"
  local body tmp
  body='{"name":"'"$API_KEY_NAME"'","role_descriptors":{"sluice_tests":{"cluster":["monitor","manage_index_templates"],"indices":[{"names":["*"],"privileges":["all"]}]}}}'
  tmp=$(mktemp "$ES_STATE/.api-key.XXXXXX")
  if ! es_curl -fsS --max-time 30 -u "$ES_USER:$ES_PASSWORD" -H 'Content-Type: application/json' \
    -X POST "$(base_url)/_security/api_key" -d "$body" >"$tmp"; then
    rm -f "$tmp"
    log "could not create the API key"
    fail_with_log "$JVM_CONSOLE"
  fi
  chmod 600 "$tmp"
  mv "$tmp" "$ES_API_KEY_FILE"
  api_key_valid || die "the new API key is refused by _security/_authenticate"
}

# check_token_service: the token service grants a bearer token for the elastic user's password
# (grant_type password), and that token authenticates. Each start makes one token (20 min).
check_token_service() {
  [ "$ES_TOKEN_SERVICE" = 1 ] || return 0
  local token licence
  licence=$(es_curl -fsS --max-time 10 -u "$ES_USER:$ES_PASSWORD" "$(base_url)/_license" |
    jq -r '.license.type + " " + .license.status') || die "could not read the licence (GET /_license)"
  [ "$licence" = "trial active" ] ||
    die "the licence is '$licence', not an active trial, so the token service is off: '$ES_SELF clean' and start again (a new 30-day trial)"
  token=$(es_curl -fsS --max-time 30 -u "$ES_USER:$ES_PASSWORD" -H 'Content-Type: application/json' \
    -X POST "$(base_url)/_security/oauth2/token" \
    -d '{"grant_type":"password","username":"'"$ES_USER"'","password":"'"$ES_PASSWORD"'"}' |
    jq -r .access_token) || die "the token service refused a password grant for $ES_USER"
  es_curl -fsS --max-time 10 -o /dev/null -H "Authorization: Bearer $token" "$(base_url)/_security/_authenticate" ||
    die "a bearer token from _security/oauth2/token is refused by _security/_authenticate"
}

publish_hook() {
  ensure_api_key
  check_token_service
}

# cmd_fetch: the distribution with the analysis shim, for the local container image.
cmd_fetch() {
  jvm_prepare
  echo "$ES_HOME"
}

jvm_main "${1:-}" fetch
