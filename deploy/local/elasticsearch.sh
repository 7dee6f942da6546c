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
# SLUICE_<NAME>_START_TIMEOUT.
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

case $ES_INSTANCE in
  *[!a-z0-9-]* | "" | -*) die "SLUICE_ES_INSTANCE must be lower-case letters, digits and dashes (got '$ES_INSTANCE')" ;;
esac
# ES_VAR: the instance's name in variable names (elasticsearch8 -> ELASTICSEARCH8).
ES_VAR=$(echo "$ES_INSTANCE" | tr '[:lower:]-' '[:upper:]_')
# ES_SELF: the command of this instance, for messages (each instance has a wrapper named after it).
ES_SELF=deploy/local/$ES_INSTANCE.sh

# override NAME DEFAULT: $SLUICE_<INSTANCE>_NAME when set, DEFAULT otherwise.
override() {
  local var="SLUICE_${ES_VAR}_$1"
  echo "${!var:-$2}"
}

ES_VERSION=$(override VERSION "${SLUICE_ES_VERSION:-9.2.4}")
ES_HEAP=$(override HEAP 512m)
ES_TIMEOUT=$(override START_TIMEOUT 180)
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
ES_STATE=$SLUICE_STATE_DIR/$ES_INSTANCE
ES_CONF=$ES_STATE/config
ES_LOGS=$ES_STATE/logs
ES_CONSOLE=$ES_LOGS/console.log
# launcher.pid: the process we started (the CLI launcher JVM, parent of the server JVM).
# run/elasticsearch.pid: the server JVM, written by Elasticsearch (-p) once it has bootstrapped.
ES_LAUNCHER_PID=$ES_STATE/launcher.pid
ES_SERVER_PID=$ES_STATE/run/elasticsearch.pid
ES_API_KEY_FILE=$ES_STATE/api-key
ES_ENV_FILE=$SLUICE_STATE_DIR/$ES_INSTANCE.env
ES_LOCK=$SLUICE_STATE_DIR/.$ES_INSTANCE.lock
# The test CA's certificate (the same file for every TLS instance), when TLS is on.
ES_CA=$SLUICE_TLS_DIR/ca.crt

# ours PIDFILE: the pid in PIDFILE is alive and belongs to the Elasticsearch of this state dir.
ours() {
  pid_alive "$1" && grep -qaF -- "$ES_STATE/" "/proc/$(cat "$1")/cmdline" 2>/dev/null
}

require_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v unzip >/dev/null || missing+=(unzip)
  command -v jq >/dev/null || missing+=(jq)
  command -v mvn >/dev/null || missing+=(maven)
  command -v setpriv >/dev/null || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# install_distribution: the zip from Maven Central (once), unpacked in the cache (once).
install_distribution() {
  [ -x "$ES_HOME/bin/elasticsearch" ] && return 0
  local zip=$ES_CACHE/elasticsearch-$ES_VERSION.zip tmp
  if [ ! -s "$zip" ]; then
    log "fetching org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip from Maven Central"
    maven_fetch "org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" "$ES_CACHE"
  fi
  log "unpacking $zip"
  tmp=$(mktemp -d "$ES_CACHE/.unpack.XXXXXX")
  unzip -q "$zip" -d "$tmp"
  chmod -R a+rX "$tmp"
  rm -rf "$ES_HOME"
  mv "$tmp/elasticsearch-$ES_VERSION" "$ES_HOME"
  rm -rf "$tmp"
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
  [ -x "$ES_JAVA/bin/javac" ] || die "$ES_JAVA has no javac: a full JDK $ES_JAVA_MIN+ is needed to build the analysis shim"
  log "building the analysis shim plugin (uax_url_email, pattern_capture, unique)"
  local build
  build=$(mktemp -d)
  mkdir -p "$build/src/sluice/esshim" "$build/classes"
  cat >"$build/src/sluice/esshim/AnalysisShimPlugin.java" <<'JAVA'
package sluice.esshim;

import java.io.IOException;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import org.apache.lucene.analysis.CharArraySet;
import org.apache.lucene.analysis.TokenFilter;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.Tokenizer;
import org.apache.lucene.analysis.email.UAX29URLEmailTokenizer;
import org.apache.lucene.analysis.pattern.PatternCaptureGroupTokenFilter;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;
import org.elasticsearch.index.analysis.TokenFilterFactory;
import org.elasticsearch.index.analysis.TokenizerFactory;
import org.elasticsearch.indices.analysis.AnalysisModule.AnalysisProvider;
import org.elasticsearch.plugins.AnalysisPlugin;
import org.elasticsearch.plugins.Plugin;

/** The three analysis components of analysis-common that the .security index mapping uses. */
public class AnalysisShimPlugin extends Plugin implements AnalysisPlugin {
    @Override
    public Map<String, AnalysisProvider<TokenizerFactory>> getTokenizers() {
        return Map.of("uax_url_email", (indexSettings, env, name, settings) -> {
            int maxTokenLength = settings.getAsInt("max_token_length", 255);
            return TokenizerFactory.newFactory(name, () -> {
                UAX29URLEmailTokenizer tokenizer = new UAX29URLEmailTokenizer();
                tokenizer.setMaxTokenLength(maxTokenLength);
                return tokenizer;
            });
        });
    }

    @Override
    public Map<String, AnalysisProvider<TokenFilterFactory>> getTokenFilters() {
        return Map.of("pattern_capture", AnalysisPlugin.requiresAnalysisSettings((indexSettings, env, name, settings) -> {
            List<String> regexes = settings.getAsList("patterns");
            if (regexes.isEmpty()) {
                throw new IllegalArgumentException("required setting 'patterns' is missing for token filter [" + name + "]");
            }
            Pattern[] patterns = regexes.stream().map(Pattern::compile).toArray(Pattern[]::new);
            boolean preserveOriginal = settings.getAsBoolean("preserve_original", true);
            return filter(name, in -> new PatternCaptureGroupTokenFilter(in, preserveOriginal, patterns));
        }), "unique", (indexSettings, env, name, settings) -> filter(name, UniqueFilter::new));
    }

    private static TokenFilterFactory filter(String name, java.util.function.UnaryOperator<TokenStream> create) {
        return new TokenFilterFactory() {
            @Override
            public String name() {
                return name;
            }

            @Override
            public TokenStream create(TokenStream in) {
                return create.apply(in);
            }
        };
    }

    /** Drops every term already seen in the stream (analysis-common's `unique`, without options). */
    static final class UniqueFilter extends TokenFilter {
        private final CharTermAttribute term = addAttribute(CharTermAttribute.class);
        private final CharArraySet seen = new CharArraySet(8, false);

        UniqueFilter(TokenStream in) {
            super(in);
        }

        @Override
        public boolean incrementToken() throws IOException {
            while (input.incrementToken()) {
                if (!seen.contains(term.buffer(), 0, term.length())) {
                    seen.add(Arrays.copyOf(term.buffer(), term.length()));
                    return true;
                }
            }
            return false;
        }

        @Override
        public void reset() throws IOException {
            super.reset();
            seen.clear();
        }
    }
}
JAVA
  "$ES_JAVA/bin/javac" -nowarn --release "$ES_JAVA_MIN" -cp "$ES_HOME/lib/*" -d "$build/classes" \
    "$build/src/sluice/esshim/AnalysisShimPlugin.java" >&2
  mkdir -p "$build/plugin"
  "$ES_JAVA/bin/jar" --create --file "$build/plugin/sluice-analysis-shim.jar" -C "$build/classes" . >&2
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

# as_service CMD...: runs CMD as the service user with a clean environment.
as_service() {
  setpriv --reuid="$SLUICE_SERVICE_USER" --regid="$(id -g "$SLUICE_SERVICE_USER")" --init-groups \
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$ES_STATE" LANG=C.UTF-8 \
    ES_JAVA_HOME="$ES_JAVA" ES_PATH_CONF="$ES_CONF" ES_TMPDIR="$ES_STATE/tmp" \
    "$@"
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

http_port() { cat "$SLUICE_STATE_DIR/ports/$ES_INSTANCE"; }
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

# up_or_dead: stops the wait when Elasticsearch answers or when its process is gone.
up_or_dead() { answering || ! pid_alive "$ES_LAUNCHER_PID"; }

wait_ready() {
  wait_until "$ES_TIMEOUT" "$ES_CONSOLE" "$ES_INSTANCE" up_or_dead
  if ! answering; then
    log "$ES_INSTANCE exited during startup"
    fail_with_log "$ES_CONSOLE"
  fi
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
    fail_with_log "$ES_CONSOLE"
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

publish_env() {
  ensure_api_key
  check_token_service
  (umask 077 && env_lines >"$ES_ENV_FILE")
  env_lines
}

cmd_start() {
  exec 9>"$ES_LOCK"
  flock 9
  START_OK=0
  if ours "$ES_LAUNCHER_PID"; then
    trap stop_unless_started EXIT
    if ! answering; then
      log "$ES_INSTANCE (pid $(cat "$ES_LAUNCHER_PID")) is starting: waiting"
      wait_ready
    fi
    log "$ES_INSTANCE already running on $(base_url)"
    publish_env
    START_OK=1
    return 0
  fi
  rm -f "$ES_LAUNCHER_PID" "$ES_SERVER_PID" "$ES_ENV_FILE"

  require_tools
  ensure_service_user
  ES_JAVA=$(java_home_at_least "$ES_JAVA_MIN") || die "no JDK $ES_JAVA_MIN+ in /usr/lib/jvm (Elasticsearch $ES_VERSION needs one)"
  install_distribution
  install_analysis_shim

  local http transport p
  http=$(pick_port "$ES_INSTANCE" "$ES_PORT_BASE")
  transport=$(pick_port "$ES_INSTANCE-transport" "$ES_TRANSPORT_PORT_BASE")
  for p in "$http" "$transport"; do
    port_in_use "$p" && die "port $p is taken by another process (set SLUICE_${ES_VAR}_PORT / SLUICE_${ES_VAR}_TRANSPORT_PORT, or run '$ES_SELF clean' to pick new ports)"
  done
  # The service user must reach the distribution and its state dir whatever root's umask was.
  chmod o+x "$SLUICE_STATE_DIR" "$SLUICE_CACHE_DIR" "$ES_CACHE"
  write_config "$http" "$transport"

  log "starting Elasticsearch $ES_VERSION on $(base_url) (transport $transport, heap $ES_HEAP, java $ES_JAVA)"
  echo "=== start $(date -u +%FT%TZ) ===" >>"$ES_CONSOLE"
  chown "$SLUICE_SERVICE_USER:" "$ES_CONSOLE"
  # setsid: own session, so a Ctrl-C or hangup of the caller does not reach the JVMs. The subshell
  # is not a process group leader, so setsid does not fork and $! is the CLI launcher JVM.
  (
    cd "$ES_STATE"
    exec setsid setpriv --reuid="$SLUICE_SERVICE_USER" --regid="$(id -g "$SLUICE_SERVICE_USER")" --init-groups \
      env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$ES_STATE" LANG=C.UTF-8 \
      ES_JAVA_HOME="$ES_JAVA" ES_PATH_CONF="$ES_CONF" ES_TMPDIR="$ES_STATE/tmp" \
      "$ES_HOME/bin/elasticsearch" -p "$ES_SERVER_PID"
  ) </dev/null >>"$ES_CONSOLE" 2>&1 9>&- &
  echo $! >"$ES_LAUNCHER_PID"
  trap stop_unless_started EXIT
  local t0=$SECONDS
  wait_ready
  log "$ES_INSTANCE answered after $((SECONDS - t0))s"
  publish_env
  START_OK=1
}

# stop_processes: the stop itself (the caller holds the lock).
stop_processes() {
  rm -f "$ES_ENV_FILE"
  if ours "$ES_SERVER_PID"; then stop_pid "$ES_SERVER_PID" elasticsearch 60; fi
  # The launcher exits by itself once the server is gone; on its own it forwards the stop.
  if ours "$ES_LAUNCHER_PID"; then stop_pid "$ES_LAUNCHER_PID" elasticsearch-launcher 60; fi
  rm -f "$ES_SERVER_PID" "$ES_LAUNCHER_PID"
}

cmd_stop() {
  exec 9>"$ES_LOCK"
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
  if ! ours "$ES_LAUNCHER_PID" || [ ! -s "$ES_ENV_FILE" ]; then
    log "$ES_INSTANCE is not running"
    exit 1
  fi
  cat "$ES_ENV_FILE"
}

# cmd_fetch: the distribution with the analysis shim, for the local container image.
cmd_fetch() {
  require_tools
  ES_JAVA=$(java_home_at_least "$ES_JAVA_MIN") || die "no JDK $ES_JAVA_MIN+ in /usr/lib/jvm (Elasticsearch $ES_VERSION needs one)"
  install_distribution
  install_analysis_shim
  echo "$ES_HOME"
}

cmd_clean() {
  cmd_stop
  log "deleting $ES_STATE"
  rm -rf "$ES_STATE" "$ES_ENV_FILE" "$ES_LOCK"
  forget_port "$ES_INSTANCE"
  forget_port "$ES_INSTANCE-transport"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  clean) cmd_clean ;;
  fetch) cmd_fetch ;;
  *)
    echo "usage: $ES_SELF start|stop|env|clean|fetch" >&2
    exit 2
    ;;
esac
