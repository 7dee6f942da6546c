#!/usr/bin/env bash
# A real Apache Kafka (single node, KRaft combined broker+controller) on 127.0.0.1 for the
# end-to-end tests, run from Maven Central jars (no tarball, no Docker).
#
#   deploy/local/kafka.sh start|stop|env|clean|fetch
#
# start prints `export NAME=value` lines on stdout (and writes them to $SLUICE_STATE_DIR/kafka.env);
# progress goes to stderr. Ports are picked once and kept across stop/start (overrides:
# SLUICE_KAFKA_PORT for the client listener, SLUICE_KAFKA_CONTROLLER_PORT for the controller).
# Jars are cached in $SLUICE_CACHE_DIR/kafka/<version>; data and logs live in $SLUICE_STATE_DIR/kafka.
# Readiness: a compiled admin-API probe creates, lists and deletes the topic sluice-readiness-probe.
# Other knobs: SLUICE_KAFKA_VERSION, SLUICE_KAFKA_JAVA_HOME (a JDK, 17 or newer),
# SLUICE_KAFKA_START_TIMEOUT (seconds, default $SLUICE_START_TIMEOUT or 120).
set -euo pipefail

# shellcheck disable=SC2034 # read by lib.sh's log()
SERVICE=kafka
# shellcheck source=SCRIPTDIR/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

KAFKA_VERSION=${SLUICE_KAFKA_VERSION:-4.4.0}
# Kafka's own jars use slf4j 1.7 (slf4j-api 1.7.36 in kafka_2.13's and kafka-clients' poms), so
# the log4j2 binding is log4j-slf4j-impl (slf4j 1.x), not log4j-slf4j2-impl.
LOG4J_VERSION=2.25.3
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
START_TIMEOUT=${SLUICE_KAFKA_START_TIMEOUT:-${SLUICE_START_TIMEOUT:-120}}

JARS_DIR="$SLUICE_CACHE_DIR/kafka/$KAFKA_VERSION"
LIBS="$JARS_DIR/libs"
# Bump the suffix when the readiness probe's source below changes.
PROBE_DIR="$SLUICE_CACHE_DIR/kafka/probe-v2"
KAFKA_DIR="$SLUICE_STATE_DIR/kafka"
DATA_DIR="$KAFKA_DIR/data"
LOG_FILE="$KAFKA_DIR/kafka.log"
PROBE_LOG="$KAFKA_DIR/probe.log"
PID_FILE="$KAFKA_DIR/kafka.pid"
PROPS="$KAFKA_DIR/server.properties"
ENV_FILE="$SLUICE_STATE_DIR/kafka.env"

# A JDK of at least 17 (the readiness probe is compiled with its javac). The system default one
# first (Kafka 4.x brokers need 17+), then any newer one, then Debian's.
pick_java_home() {
  local home
  if [ -n "${SLUICE_KAFKA_JAVA_HOME:-}" ]; then
    JAVA_HOME=$SLUICE_KAFKA_JAVA_HOME
    java_major "$JAVA_HOME" || die "no java in SLUICE_KAFKA_JAVA_HOME=$JAVA_HOME"
    return
  fi
  if command -v javac >/dev/null 2>&1; then
    home=$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")
    if java_major "$home" && [ "$JAVA_MAJOR" -ge 17 ]; then
      JAVA_HOME=$home
      return
    fi
  fi
  for home in /usr/lib/jvm/*/; do
    home=${home%/}
    if [ -x "$home/bin/javac" ] && java_major "$home" && [ "$JAVA_MAJOR" -ge 17 ]; then
      JAVA_HOME=$home
      return
    fi
  done
  apt_install openjdk-17-jdk-headless
  JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
  java_major "$JAVA_HOME" || die "no JDK 17+ found"
}

java_major() {
  JAVA_MAJOR=$("$1/bin/java" -XshowSettings:properties -version 2>&1 |
    awk -F' = ' '/java.specification.version/ {print $2}')
  JAVA_MAJOR=${JAVA_MAJOR%%.*}
  [ -n "$JAVA_MAJOR" ]
}

# The broker's jars: kafka_2.13 and its runtime dependencies, plus log4j2 as the slf4j backend,
# collected once by Maven from a throwaway pom in the cache.
fetch_jars() {
  [ -f "$JARS_DIR/.complete" ] && return 0
  command -v mvn >/dev/null 2>&1 || apt_install maven
  log "collecting Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  mkdir -p "$JARS_DIR"
  cat >"$JARS_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sluice</groupId>
  <artifactId>kafka-server-jars</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIBS"
  if ! mvn -q -B -f "$JARS_DIR/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$JARS_DIR/mvn.log" 2>&1; then
    log "Maven could not collect the jars"
    fail_with_log "$JARS_DIR/mvn.log"
  fi
  [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing from $LIBS"
  touch "$JARS_DIR/.complete"
}

# The readiness probe: one JVM that, through the admin API, creates a topic, sees it listed and
# deletes it again, retrying until the deadline; it gives up early (exit 2) when the broker's
# process is gone. Compiled once into the cache.
build_probe() {
  [ -f "$PROBE_DIR/SluiceKafkaProbe.class" ] && return 0
  log "compiling the readiness probe into $PROBE_DIR"
  local tmp
  tmp=$(mktemp -d)
  cat >"$tmp/SluiceKafkaProbe.java" <<'EOF'
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;

/** args: bootstrap servers, timeout in seconds, pid of the broker (0: do not watch). */
public final class SluiceKafkaProbe {
  public static void main(String[] args) throws Exception {
    String bootstrap = args[0];
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
    long pid = Long.parseLong(args[2]);
    String topic = "sluice-readiness-probe";
    Properties p = new Properties();
    p.put("bootstrap.servers", bootstrap);
    p.put("client.id", "sluice-readiness-probe");
    p.put("request.timeout.ms", "5000");
    p.put("default.api.timeout.ms", "10000");
    p.put("socket.connection.setup.timeout.ms", "2000");
    p.put("socket.connection.setup.timeout.max.ms", "2000");
    p.put("reconnect.backoff.ms", "100");
    p.put("reconnect.backoff.max.ms", "500");
    p.put("retry.backoff.ms", "100");
    p.put("retry.backoff.max.ms", "500");
    String last = "no attempt";
    if (pid > 0) {
      var broker = ProcessHandle.of(pid);
      if (broker.isEmpty()) exitedEarly(pid);
      broker.get().onExit().thenRun(() -> exitedEarly(pid));
    }
    try (Admin admin = Admin.create(p)) {
      while (true) {
        try {
          try {
            admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get(10, TimeUnit.SECONDS);
          } catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) throw e;
          }
          Set<String> names = admin.listTopics().names().get(10, TimeUnit.SECONDS);
          if (names.contains(topic)) {
            admin.deleteTopics(List.of(topic)).all().get(10, TimeUnit.SECONDS);
            System.out.println("ready: created, listed and deleted " + topic + "; "
                + (names.size() - 1) + " other topic(s)");
            return;
          }
          last = "created " + topic + " but it is not listed yet";
        } catch (Exception e) {
          last = e.toString();
        }
        if (System.nanoTime() > deadline) {
          System.err.println("not ready: " + last);
          System.exit(1);
        }
        Thread.sleep(200);
      }
    }
  }

  private static void exitedEarly(long pid) {
    System.err.println("the broker process " + pid + " has exited");
    System.err.flush();
    Runtime.getRuntime().halt(2);
  }
}
EOF
  mkdir -p "$tmp/classes"
  "$JAVA_HOME/bin/javac" --release 17 -nowarn -cp "$LIBS/*" -d "$tmp/classes" "$tmp/SluiceKafkaProbe.java" >&2 ||
    die "could not compile the readiness probe"
  mkdir -p "$PROBE_DIR"
  cp "$tmp/classes/SluiceKafkaProbe.class" "$PROBE_DIR/"
  rm -rf "$tmp"
}

write_configs() {
  mkdir -p "$DATA_DIR"
  cat >"$PROPS" <<EOF
# Written by deploy/local/kafka.sh on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA_DIR
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
log.cleaner.enable=true
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
# Written by deploy/local/kafka.sh. Everything goes to stdout, which start sends to kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
EOF
  cat >"$KAFKA_DIR/probe-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# A Kafka cluster id: 16 random bytes, base64url without padding (what `kafka-storage random-uuid`
# prints; like Kafka, never one that starts with a dash).
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    [ "${id:0:1}" != "-" ] && break
  done
  echo "$id"
}

format_storage() {
  [ -f "$DATA_DIR/meta.properties" ] && return 0
  local id
  id=$(new_cluster_id)
  log "formatting $DATA_DIR (cluster id $id)"
  if ! "$JAVA_HOME/bin/java" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$KAFKA_DIR/probe-log4j2.properties" -cp "$LIBS/*" \
    kafka.tools.StorageTool format --cluster-id "$id" --config "$PROPS" >>"$LOG_FILE" 2>&1; then
    log "formatting the storage failed"
    fail_with_log "$LOG_FILE"
  fi
}

# True when the pid file names a live Kafka broker (not a recycled pid).
kafka_alive() {
  pid_alive "$PID_FILE" && grep -qa 'kafka\.Kafka' "/proc/$(cat "$PID_FILE")/cmdline" 2>/dev/null
}

probe() {
  local timeout=$1 pid=$2
  "$JAVA_HOME/bin/java" -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$KAFKA_DIR/probe-log4j2.properties" \
    -cp "$PROBE_DIR:$LIBS/*" SluiceKafkaProbe "127.0.0.1:$PORT" "$timeout" "$pid" >"$PROBE_LOG" 2>&1
}

env_lines() {
  cat <<EOF
export SLUICE_TEST_KAFKA_BROKERS=127.0.0.1:$PORT
export SLUICE_TEST_KAFKA_PORT=$PORT
EOF
}

pick_ports() {
  PORT=$(pick_port kafka 19092)
  CONTROLLER_PORT=$(pick_port kafka-controller 19192)
  [ "$PORT" != "$CONTROLLER_PORT" ] ||
    die "client and controller port are both $PORT (set SLUICE_KAFKA_PORT / SLUICE_KAFKA_CONTROLLER_PORT)"
}

cmd_start() {
  pick_java_home
  fetch_jars
  mkdir -p "$KAFKA_DIR"
  pick_ports
  if kafka_alive && [ "$(cat "$KAFKA_DIR/running-ports" 2>/dev/null)" != "$PORT $CONTROLLER_PORT" ]; then
    log "running on other ports than $PORT/$CONTROLLER_PORT: restarting it"
    cmd_stop
  fi
  write_configs
  build_probe
  if kafka_alive; then
    log "already running (pid $(cat "$PID_FILE")): checking it answers on 127.0.0.1:$PORT"
    if ! probe "$START_TIMEOUT" "$(cat "$PID_FILE")"; then
      log "Kafka is not ready: $(tail -n 1 "$PROBE_LOG")"
      fail_with_log "$LOG_FILE"
    fi
    env_lines | tee "$ENV_FILE"
    return 0
  fi
  rm -f "$PID_FILE"
  local p
  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_in_use "$p" && die "port $p is taken by another process (set SLUICE_KAFKA_PORT / SLUICE_KAFKA_CONTROLLER_PORT, or run clean to pick anew)"
  done
  [ -f "$LOG_FILE" ] && mv -f "$LOG_FILE" "$LOG_FILE.1"
  format_storage
  log "starting Kafka $KAFKA_VERSION (Java $JAVA_MAJOR) on 127.0.0.1:$PORT, controller on :$CONTROLLER_PORT (log: $LOG_FILE)"
  # setsid: the broker leaves the caller's process group, so a Ctrl-C there does not reach it.
  nohup setsid "$JAVA_HOME/bin/java" -Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$PROPS" >>"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  echo "$PORT $CONTROLLER_PORT" >"$KAFKA_DIR/running-ports"
  if ! probe "$START_TIMEOUT" "$(cat "$PID_FILE")"; then
    log "Kafka is not ready: $(tail -n 1 "$PROBE_LOG")"
    fail_with_log "$LOG_FILE"
  fi
  log "ready on 127.0.0.1:$PORT"
  env_lines | tee "$ENV_FILE"
}

cmd_stop() {
  if [ -f "$PID_FILE" ] && ! kafka_alive; then
    rm -f "$PID_FILE"
  fi
  # A controlled shutdown of a single combined node takes a few seconds.
  stop_pid "$PID_FILE" kafka 60
}

cmd_env() {
  kafka_alive || exit 1
  [ -s "$KAFKA_DIR/running-ports" ] || exit 1
  read -r PORT _ <"$KAFKA_DIR/running-ports"
  env_lines
}

cmd_clean() {
  cmd_stop
  log "removing $KAFKA_DIR"
  rm -rf "$KAFKA_DIR" "$ENV_FILE"
  forget_port kafka
  forget_port kafka-controller
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  clean) cmd_clean ;;
  fetch)
    # Only the jars (for the local container image): prints their directory.
    fetch_jars
    echo "$LIBS"
    ;;
  *)
    echo "usage: $0 start|stop|env|clean|fetch" >&2
    exit 2
    ;;
esac
