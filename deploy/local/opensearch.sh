#!/usr/bin/env bash
# Single-node OpenSearch on 127.0.0.1, from the integ-test zip on Maven Central, without Docker.
# One script for every instance: the instance settings below come from variables, and the
# defaults are the main instance (OpenSearch 2.19.6). deploy/local/opensearch3.sh sets them for
# the second instance (OpenSearch 3.3.2) and execs this script.
#
#   deploy/local/opensearch.sh start   start (idempotent); prints `export SLUICE_TEST_OPENSEARCH_URL=…`
#   deploy/local/opensearch.sh stop    SIGTERM, wait, kill; keeps data and ports
#   deploy/local/opensearch.sh env     prints the export line when running (exit 1 otherwise)
#   deploy/local/opensearch.sh clean   stop, then delete data, logs and remembered ports
#   deploy/local/opensearch.sh fetch   only fetch the distribution and add its modules; prints its directory
#
# Instance settings (set by the wrappers; defaults in brackets):
#   SLUICE_OS_INSTANCE        name of the instance [opensearch]: state in $SLUICE_STATE_DIR/<name>,
#                             env file $SLUICE_STATE_DIR/<name>.env, ports remembered as <name> and
#                             <name>-transport, export names SLUICE_TEST_<NAME>_*, overrides SLUICE_<NAME>_*
#   SLUICE_OS_VERSION         version of the integ-test zip [2.19.6]
#   SLUICE_OS_PORT            first HTTP port tried [9200]; SLUICE_OS_TRANSPORT_PORT the same [9300]
#   SLUICE_OS_SECURITY        1: the security plugin (org.opensearch.plugin:opensearch-security:
#                             <version>.0:zip) with HTTPS and transport TLS from the test CA (lib.sh
#                             tls_server_cert), basic auth for one user `admin` and no demo
#                             certificates or users [0]. The distribution with the plugin is unpacked
#                             apart, as opensearch-<version>-security. Exports then also
#                             SLUICE_TEST_<NAME>_USER, _PASSWORD (override SLUICE_<NAME>_PASSWORD,
#                             read at the first start only: `clean` to change it) and _CA.
#
# The unpacked distribution lives in $SLUICE_CACHE_DIR/opensearch/opensearch-<version> (read-only
# for the service); config, data and logs in $SLUICE_STATE_DIR/<name>, owned by
# $SLUICE_SERVICE_USER (OpenSearch refuses to run as root). Overrides (<NAME> as above, e.g.
# OPENSEARCH or OPENSEARCH3): SLUICE_<NAME>_PORT, SLUICE_<NAME>_TRANSPORT_PORT,
# SLUICE_<NAME>_VERSION, SLUICE_<NAME>_HEAP, SLUICE_<NAME>_START_TIMEOUT
# (default $SLUICE_START_TIMEOUT, else 180 s), SLUICE_<NAME>_MODULES.
#
# The integ-test zip holds only the transport-netty4 module (3.x also transport-grpc), and no
# security plugin. This script adds lang-painless, reindex (_reindex, _delete_by_query,
# _update_by_query) and analysis-common, rebuilt from their jars on Maven Central (for 2.19.6 and
# 3.3.2 alike) into the cached distribution; SLUICE_<NAME>_MODULES (default "lang-painless reindex
# analysis-common"; reindex and analysis-common need lang-painless) chooses, and "" gives the bare zip.
# Java: 2.x needs the Java SecurityManager, which JDK 24+ no longer provides: the newest JDK 11..23
# (Debian's 17 here). 3.x needs JDK 21+ and has no SecurityManager (a Java agent checks the
# plugins' policies instead): the newest JDK 21+ (Temurin 25 here).
set -euo pipefail

OS_INSTANCE=${SLUICE_OS_INSTANCE:-opensearch}
SERVICE=$OS_INSTANCE
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=jvm.sh
. "$(dirname "$0")/jvm.sh"
jvm_instance "$OS_INSTANCE" SLUICE_OS_INSTANCE
OS_VAR=$JVM_VAR

OS_VERSION=$(override VERSION "${SLUICE_OS_VERSION:-2.19.6}")
OS_HEAP=$(override HEAP 512m)
OS_TIMEOUT=$(override START_TIMEOUT "${SLUICE_START_TIMEOUT:-180}")
OS_SECURITY=${SLUICE_OS_SECURITY:-0}
case $OS_SECURITY in 0 | 1) ;; *) die "SLUICE_OS_SECURITY is 0 or 1 (got '$OS_SECURITY')" ;; esac
OS_USER='admin'
OS_PASSWORD=$(override PASSWORD sluice-opensearch-admin)
OS_PORT_BASE=${SLUICE_OS_PORT:-9200}
OS_TRANSPORT_PORT_BASE=${SLUICE_OS_TRANSPORT_PORT:-9300}
case $OS_VERSION in
  2.*) OS_JAVA_MIN=11 OS_JAVA_MAX=23 ;;
  3.*) OS_JAVA_MIN=21 OS_JAVA_MAX=99 ;;
  *) die "OpenSearch $OS_VERSION: this script knows 2.x and 3.x only" ;;
esac
OS_CLUSTER=sluice-local-$OS_INSTANCE
OS_CACHE=$SLUICE_CACHE_DIR/opensearch
OS_HOME=$OS_CACHE/opensearch-$OS_VERSION
# The security plugin goes into a distribution of its own: the plain one stays plain.
if [ "$OS_SECURITY" = 1 ]; then OS_HOME=$OS_HOME-security; fi
# The test CA's certificate (the same file for every TLS instance), when security is on.
OS_CA=$SLUICE_TLS_DIR/ca.crt
OS_STATE=$JVM_STATE
OS_CONF=$OS_STATE/config
OS_LOGS=$JVM_LOGS

# What jvm.sh runs. launcher.pid is the process started (bin/opensearch execs the JVM, so it is
# the JVM itself); run/opensearch.pid is written by OpenSearch once it has bootstrapped.
JVM_PRODUCT=OpenSearch
JVM_VERSION=$OS_VERSION
JVM_BIN=opensearch
JVM_HOME=$OS_HOME
JVM_CACHE=$OS_CACHE
JVM_HEAP=$OS_HEAP
JVM_TIMEOUT=$OS_TIMEOUT
JVM_PORT_BASE=$OS_PORT_BASE
JVM_TRANSPORT_PORT_BASE=$OS_TRANSPORT_PORT_BASE
JVM_SERVER_PID=$OS_STATE/run/opensearch.pid

# jvm_prepare: tools, the JDK, the distribution with its extra modules (and security plugin).
jvm_prepare() {
  require_commands curl unzip mvn=maven setpriv=util-linux
  if [ "$OS_JAVA_MAX" -lt 24 ]; then
    JVM_JAVA=$(java_home_between "$OS_JAVA_MIN" "$OS_JAVA_MAX") || {
      apt_install openjdk-17-jre-headless
      JVM_JAVA=$(java_home_between "$OS_JAVA_MIN" "$OS_JAVA_MAX")
    } || die "no JDK $OS_JAVA_MIN..$OS_JAVA_MAX found (OpenSearch 2.x does not run on JDK 24+)"
  else
    JVM_JAVA=$(java_home_at_least "$OS_JAVA_MIN") ||
      die "no JDK $OS_JAVA_MIN+ in /usr/lib/jvm (OpenSearch $OS_VERSION needs one; e.g. apt-get install openjdk-21-jre-headless where Debian has it)"
  fi
  JVM_ENV=(OPENSEARCH_JAVA_HOME="$JVM_JAVA" OPENSEARCH_PATH_CONF="$OS_CONF" OPENSEARCH_TMPDIR="$OS_STATE/tmp")
  install_distribution
  install_extra_modules
  if [ "$OS_SECURITY" = 1 ]; then install_security_plugin; fi
}

# install_distribution: the zip from Maven Central (once), unpacked in the cache (once).
install_distribution() {
  jvm_install_zip org.opensearch.distribution.integ-test-zip opensearch
}

# The modules a real OpenSearch ships and the integ-test zip leaves out, rebuilt from their jars on
# Maven Central: NAME ARTIFACT CLASSNAME_2X CLASSNAME_3X EXTENDED_PLUGINS (3.x renamed the
# modules' plugin classes to *ModulePlugin).
OS_EXTRA_MODULES="
lang-painless lang-painless org.opensearch.painless.PainlessPlugin org.opensearch.painless.PainlessModulePlugin -
reindex reindex-client org.opensearch.index.reindex.ReindexPlugin org.opensearch.index.reindex.ReindexModulePlugin lang-painless
analysis-common analysis-common org.opensearch.analysis.common.CommonAnalysisPlugin org.opensearch.analysis.common.CommonAnalysisModulePlugin lang-painless
"
OS_MODULES_VAR=SLUICE_${OS_VAR}_MODULES
OS_WANTED_MODULES=${!OS_MODULES_VAR-lang-painless reindex analysis-common}

# jar_name FILE: a jar's name without version (asm-util-9.7.jar -> asm-util).
jar_name() { basename "$1" | sed -E 's/-[0-9][^/]*\.jar$//'; }

# install_module NAME ARTIFACT CLASSNAME EXTENDED: org.opensearch.plugin:ARTIFACT:$OS_VERSION and
# its dependencies, less the jars already in lib/ (OpenSearch refuses duplicate classes), as
# modules/NAME with the descriptor and security policy the real module has.
install_module() {
  local name=$1 artifact=$2 classname=$3 extended=$4 build
  [ "$extended" = - ] && extended=
  build=$(mktemp -d)
  cat >"$build/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sluice</groupId><artifactId>opensearch-module-$name</artifactId><version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.opensearch.plugin</groupId><artifactId>$artifact</artifactId><version>$OS_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.opensearch</groupId><artifactId>opensearch</artifactId></exclusion>
      </exclusions>
    </dependency>
  </dependencies>
</project>
EOF
  mvn -q -B -f "$build/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$build/$name" >&2
  local jar in_lib
  in_lib=$(for jar in "$OS_HOME"/lib/*.jar; do jar_name "$jar"; done)
  for jar in "$build/$name"/*.jar; do
    if grep -qxF "$(jar_name "$jar")" <<<"$in_lib"; then rm -f "$jar"; fi
  done
  cat >"$build/$name/plugin-descriptor.properties" <<EOF
description=$name module, assembled by deploy/local/opensearch.sh from Maven Central jars
version=$OS_VERSION
name=$name
classname=$classname
java.version=$OS_JAVA_MIN
opensearch.version=$OS_VERSION
custom.foldername=
extended.plugins=$extended
has.native.controller=false
EOF
  case $name in
    lang-painless)
      cat >"$build/$name/plugin-security.policy" <<'EOF'
grant {
  // needed to generate runtime classes
  permission java.lang.RuntimePermission "createClassLoader";
  // needed to find the classloader to load allowlisted classes from
  permission java.lang.RuntimePermission "getClassLoader";
};
EOF
      ;;
    reindex)
      cat >"$build/$name/plugin-security.policy" <<'EOF'
grant {
  // reindex from a remote cluster opens socket connections with the rest client
  permission java.net.SocketPermission "*", "connect";
  permission java.net.NetPermission "getProxySelector";
};
EOF
      ;;
  esac
  chmod -R a+rX "$build/$name"
  rm -rf "$OS_HOME/modules/$name"
  mv "$build/$name" "$OS_HOME/modules/$name"
  rm -rf "$build"
}

# install_extra_modules: the wanted extra modules present (once), the unwanted ones removed.
install_extra_modules() {
  local name artifact class2 class3 classname extended
  while read -r name artifact class2 class3 extended; do
    [ -n "$name" ] || continue
    case $OS_VERSION in 2.*) classname=$class2 ;; *) classname=$class3 ;; esac
    if [[ " $OS_WANTED_MODULES " == *" $name "* ]]; then
      [ -s "$OS_HOME/modules/$name/plugin-descriptor.properties" ] && continue
      log "adding the $name module (org.opensearch.plugin:$artifact:$OS_VERSION from Maven Central)"
      install_module "$name" "$artifact" "$classname" "$extended"
    elif [ -d "$OS_HOME/modules/$name" ]; then
      log "removing the $name module (not in $OS_MODULES_VAR)"
      rm -rf "${OS_HOME:?}/modules/$name"
    fi
  done <<<"$OS_EXTRA_MODULES"
}

# install_security_plugin: org.opensearch.plugin:opensearch-security:<version>.0:zip from Maven
# Central (once), installed with opensearch-plugin into the -security distribution (once).
install_security_plugin() {
  [ -s "$OS_HOME/plugins/opensearch-security/plugin-descriptor.properties" ] && return 0
  local coords="org.opensearch.plugin:opensearch-security:$OS_VERSION.0:zip"
  local zip=$OS_CACHE/opensearch-security-$OS_VERSION.0.zip
  if [ ! -s "$zip" ]; then
    log "fetching $coords from Maven Central"
    maven_fetch "$coords" "$OS_CACHE" ||
      die "Maven Central has no $coords (the security plugin must match OpenSearch's version exactly)"
  fi
  log "installing the security plugin into $OS_HOME"
  OPENSEARCH_JAVA_HOME=$JVM_JAVA OPENSEARCH_PATH_CONF=$OS_HOME/config \
    "$OS_HOME/bin/opensearch-plugin" install --batch "file://$zip" >&2 ||
    die "opensearch-plugin could not install $zip"
  chmod -R a+rX "$OS_HOME"
}

# write_security_config: TLS material and the security plugin's settings and configuration
# (loaded into its index at the first start, by plugins.security.allow_default_init_securityindex).
write_security_config() {
  local hash
  tls_server_cert "$OS_INSTANCE"
  # Node-to-node TLS is mandatory with the plugin; that certificate is a client's one too.
  tls_server_cert "$OS_INSTANCE-transport" serverAuth,clientAuth
  mkdir -p "$OS_CONF/certs" "$OS_CONF/opensearch-security"
  cp "$SLUICE_TLS_DIR/$OS_INSTANCE.crt" "$OS_CONF/certs/http.crt"
  cp "$SLUICE_TLS_DIR/$OS_INSTANCE.key" "$OS_CONF/certs/http.key"
  cp "$SLUICE_TLS_DIR/$OS_INSTANCE-transport.crt" "$OS_CONF/certs/transport.crt"
  cp "$SLUICE_TLS_DIR/$OS_INSTANCE-transport.key" "$OS_CONF/certs/transport.key"
  cp "$OS_CA" "$OS_CONF/certs/ca.crt"
  cat >>"$OS_CONF/opensearch.yml" <<EOF
plugins.security.ssl.transport.pemcert_filepath: certs/transport.crt
plugins.security.ssl.transport.pemkey_filepath: certs/transport.key
plugins.security.ssl.transport.pemtrustedcas_filepath: certs/ca.crt
plugins.security.ssl.transport.enforce_hostname_verification: false
plugins.security.ssl.http.enabled: true
plugins.security.ssl.http.pemcert_filepath: certs/http.crt
plugins.security.ssl.http.pemkey_filepath: certs/http.key
plugins.security.ssl.http.pemtrustedcas_filepath: certs/ca.crt
plugins.security.ssl.http.clientauth_mode: NONE
plugins.security.nodes_dn: ["CN=$SLUICE_TLS_DNS_NAME"]
plugins.security.allow_default_init_securityindex: true
plugins.security.restapi.roles_enabled: ["all_access"]
plugins.security.system_indices.enabled: true
plugins.security.disabled: false
plugins.security.audit.type: noop
EOF
  # The plugin's own files (action groups, built-in roles, …) less its demo users, then ours.
  cp -r "$OS_HOME/config/opensearch-security/." "$OS_CONF/opensearch-security/"
  hash=$(OPENSEARCH_JAVA_HOME=$JVM_JAVA JAVA_HOME=$JVM_JAVA \
    bash "$OS_HOME/plugins/opensearch-security/tools/hash.sh" -p "$OS_PASSWORD" 2>/dev/null | tail -n 1)
  case $hash in \$2*) ;; *) die "the security plugin's tools/hash.sh gave no bcrypt hash" ;; esac
  cat >"$OS_CONF/opensearch-security/internal_users.yml" <<EOF
# Written by deploy/local/opensearch.sh ($OS_INSTANCE): the only user, no demo users.
_meta:
  type: "internalusers"
  config_version: 2
$OS_USER:
  hash: "$hash"
  reserved: true
  backend_roles: ["admin"]
  description: "sluice local tests"
EOF
  cat >"$OS_CONF/opensearch-security/roles_mapping.yml" <<EOF
# Written by deploy/local/opensearch.sh ($OS_INSTANCE).
_meta:
  type: "rolesmapping"
  config_version: 2
all_access:
  reserved: false
  backend_roles: ["admin"]
  users: ["$OS_USER"]
EOF
  cat >"$OS_CONF/opensearch-security/config.yml" <<'EOF'
# Written by deploy/local/opensearch.sh: HTTP basic auth against the internal users, nothing else.
_meta:
  type: "config"
  config_version: 2
config:
  dynamic:
    http:
      anonymous_auth_enabled: false
    authc:
      basic_internal_auth_domain:
        description: "HTTP basic auth against the internal users"
        http_enabled: true
        transport_enabled: true
        order: 0
        http_authenticator:
          type: basic
          challenge: true
        authentication_backend:
          type: intern
EOF
}

# write_config HTTP_PORT TRANSPORT_PORT: config dir in the state dir (rewritten on every start so
# port changes take effect; data is untouched).
write_config() {
  local http_port=$1 transport_port=$2
  mkdir -p "$OS_CONF/jvm.options.d" "$OS_STATE/data" "$OS_LOGS" "$OS_STATE/run" "$OS_STATE/tmp"
  cp "$OS_HOME/config/log4j2.properties" "$OS_CONF/"
  # The stock jvm.options writes heap dumps, GC logs and crash files relative to the working dir,
  # and 3.x loads its Java agent from there too.
  sed -e "s|HeapDumpPath=data|HeapDumpPath=$OS_STATE/data|" \
    -e "s|ErrorFile=logs/|ErrorFile=$OS_LOGS/|" \
    -e "s|file=logs/gc.log|file=$OS_LOGS/gc.log|" \
    -e "s|-javaagent:agent/|-javaagent:$OS_HOME/agent/|" \
    "$OS_HOME/config/jvm.options" >"$OS_CONF/jvm.options"
  printf -- '-Xms%s\n-Xmx%s\n' "$OS_HEAP" "$OS_HEAP" >"$OS_CONF/jvm.options.d/heap.options"
  cat >"$OS_CONF/opensearch.yml" <<EOF
# Written by deploy/local/opensearch.sh ($OS_INSTANCE) on every start: edit the script, not this file.
cluster.name: $OS_CLUSTER
node.name: sluice-local
discovery.type: single-node
network.host: 127.0.0.1
http.port: $http_port
transport.port: $transport_port
path.data: $OS_STATE/data
path.logs: $OS_LOGS
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
EOF
  if [ "$OS_SECURITY" = 1 ]; then write_security_config; fi
  chown -R "$SLUICE_SERVICE_USER:" "$OS_STATE"
  chmod 700 "$OS_STATE"
  # The security plugin warns about every config file others could read.
  if [ "$OS_SECURITY" = 1 ]; then chmod -R u=rwX,go= "$OS_CONF"; fi
}

base_url() {
  if [ "$OS_SECURITY" = 1 ]; then echo "https://127.0.0.1:$(http_port)"; else echo "http://127.0.0.1:$(http_port)"; fi
}

# os_curl ARGS...: curl that, with security on, trusts the test CA and logs in as the admin user.
os_curl() {
  if [ "$OS_SECURITY" = 1 ]; then curl --cacert "$OS_CA" -u "$OS_USER:$OS_PASSWORD" "$@"; else curl "$@"; fi
}

env_lines() {
  local p="SLUICE_TEST_${OS_VAR}"
  echo "export ${p}_URL=$(base_url)"
  if [ "$OS_SECURITY" = 1 ]; then
    echo "export ${p}_USER=$OS_USER"
    echo "export ${p}_PASSWORD=$OS_PASSWORD"
    echo "export ${p}_CA=$OS_CA"
  fi
}

# answering: cluster health of *our* cluster is at least yellow.
answering() {
  os_curl -fsS --max-time 5 "$(base_url)/_cluster/health?wait_for_status=yellow&timeout=2s" 2>/dev/null |
    grep -q "\"cluster_name\":\"$OS_CLUSTER\""
}

# cmd_fetch: the distribution with the extra modules, for the local container image.
cmd_fetch() {
  jvm_prepare
  echo "$OS_HOME"
}

jvm_main "${1:-}" fetch
