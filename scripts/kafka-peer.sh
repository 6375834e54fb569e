#!/usr/bin/env bash
# Apache Kafka as the reference peer: a single-node KRaft broker on loopback,
# assembled from Maven Central artifacts (no tarball is needed).
#
#   scripts/kafka-peer.sh fetch                       # download the jars only
#   scripts/kafka-peer.sh start  [--port 9092] [--dir DIR]   # controller on port+1
#   scripts/kafka-peer.sh status [--port 9092] [--dir DIR]
#   scripts/kafka-peer.sh stop   [--port 9092] [--dir DIR]
#   scripts/kafka-peer.sh classpath                   # print the libs classpath
#
# Environment:
#   KAFKA_VERSION   Apache Kafka version (default 4.3.1)
#   SLUICE_CACHE    cache root (default ~/.cache/sluice); the jars live in
#                   $SLUICE_CACHE/kafka-$KAFKA_VERSION/libs and are reused.
#   KAFKA_HEAP_OPTS JVM heap (default -Xmx1g -Xms1g)
#
# The data directory (default /tmp/sluice-kafka-peer-<port>) holds
# server.properties, the KRaft log dir, kafka.log and kafka.pid. `start`
# formats it anew each time, so every run starts from an empty cluster.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
# The log4j2 backend. The slf4j binding is chosen after resolution to match the
# slf4j-api that Kafka's dependency tree brings: log4j-slf4j-impl for slf4j
# 1.7.x (Kafka 4.0-4.3), log4j-slf4j2-impl for slf4j 2.x.
LOG4J_VERSION="${LOG4J_VERSION:-2.25.3}"
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
KHOME="$CACHE/kafka-$KAFKA_VERSION"
LIBS="$KHOME/libs"

cmd="${1:-}"
[ $# -gt 0 ] && shift
PORT=9092
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
DIR="${DIR:-/tmp/sluice-kafka-peer-$PORT}"
CONTROLLER_PORT=$((PORT + 1))
PIDFILE="$DIR/kafka.pid"

log() { printf 'kafka-peer: %s\n' "$*" >&2; }

fetch() {
  if [ -f "$LIBS/.complete" ]; then
    return 0
  fi
  command -v mvn >/dev/null || { log "mvn not found (apt-get install maven)"; exit 1; }
  mkdir -p "$KHOME"
  local pom="$KHOME/pom.xml"
  cat >"$pom" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.sluice</groupId>
  <artifactId>kafka-peer-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-clients</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-streams</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS"
  mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$LIBS" -DincludeScope=runtime >"$KHOME/mvn.log" 2>&1 || {
    tail -40 "$KHOME/mvn.log" >&2
    log "maven could not fetch the jars"
    exit 1
  }
  # Exactly one slf4j binding: drop any that a transitive dependency brings,
  # then add the log4j2 one that matches the resolved slf4j-api.
  rm -f "$LIBS"/slf4j-reload4j-*.jar "$LIBS"/slf4j-log4j12-*.jar "$LIBS"/logback-classic-*.jar \
    "$LIBS"/log4j-slf4j-impl-*.jar "$LIBS"/log4j-slf4j2-impl-*.jar
  local binding=log4j-slf4j2-impl
  if ls "$LIBS"/slf4j-api-1.*.jar >/dev/null 2>&1; then binding=log4j-slf4j-impl; fi
  mvn -q -B dependency:copy -Dartifact="org.apache.logging.log4j:$binding:$LOG4J_VERSION" \
    -DoutputDirectory="$LIBS" >>"$KHOME/mvn.log" 2>&1 || {
    tail -20 "$KHOME/mvn.log" >&2
    log "maven could not fetch $binding"
    exit 1
  }
  # log4j-core reads a .properties configuration without extra jars.
  cat >"$KHOME/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
  touch "$LIBS/.complete"
  log "$(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
}

classpath() { echo "$LIBS/*"; }

java_run() {
  # shellcheck disable=SC2086
  java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g} \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KHOME/log4j2.properties" \
    -cp "$(classpath)" "$@"
}

is_running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

write_properties() {
  cat >"$DIR/server.properties" <<EOF
# Single-node KRaft: this process is both broker and controller.
process.roles=broker,controller
node.id=1
# The controller quorum is this node alone (formatted with --standalone).
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
# Loopback only: clients on PLAINTEXT, the quorum on CONTROLLER.
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/logs

# Threads sized for a small (2-core) machine; Kafka's defaults are 3 and 8.
num.network.threads=3
num.io.threads=4
socket.send.buffer.bytes=102400
socket.receive.buffer.bytes=102400
socket.request.max.bytes=104857600

# New topics: one partition unless the client asks; single replica.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
num.recovery.threads.per.data.dir=1

# Internal topics need replication factor 1 on a single node, or they are
# never created (the offsets topic would block every consumer group).
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Groups: no 3 s wait for more members before the first rebalance, so tests
# with one consumer start at once.
group.initial.rebalance.delay.ms=0

# Flushing: Kafka's defaults (log.flush.interval.messages and
# log.flush.interval.ms unset): the OS page cache decides when data reaches
# disk; durability comes from replication. Kept as default on purpose so that
# comparisons use Kafka as people run it.

# Retention: Kafka's defaults (7 days, 1 GiB segments).
log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000

# Topic deletion is allowed (the admin tests delete their topics). A deleted
# topic's files go after 1 s instead of Kafka's default 60 s, as Sluice's go
# at once: sluice-bench compare deletes each workload's topic, waits until its
# files are gone, and only then starts the next. The broker setting is
# log.segment.delete.delay.ms (file.delete.delay.ms is its per-topic name,
# and in this file it did nothing: deleted files stayed 60 s and were
# unlinked, with their page cache, during a later workload). Kafka's first
# pass over deleted logs waits log.initial.task.delay.ms (30 s by default)
# after the start, so that is 1 s too.
delete.topic.enable=true
log.segment.delete.delay.ms=1000
log.initial.task.delay.ms=1000
auto.create.topics.enable=true
EOF
}

start() {
  fetch
  if is_running; then
    log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    return 0
  fi
  if port_open "$PORT"; then
    log "port $PORT is already in use by another process"
    exit 1
  fi
  # The data directory is recreated on every start; refuse to wipe a folder
  # that this script did not make.
  if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && ! [ -f "$DIR/.sluice-kafka-peer" ]; then
    log "$DIR is not empty and was not made by this script: choose another --dir"
    exit 1
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR/logs"
  touch "$DIR/.sluice-kafka-peer"
  write_properties
  local cluster_id
  cluster_id="$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  java_run kafka.tools.StorageTool format -t "$cluster_id" \
    -c "$DIR/server.properties" --standalone >"$DIR/format.log" 2>&1 || {
    cat "$DIR/format.log" >&2
    exit 1
  }
  log "starting Apache Kafka $KAFKA_VERSION (cluster $cluster_id) on 127.0.0.1:$PORT, data in $DIR"
  # shellcheck disable=SC2086
  nohup java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g} \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KHOME/log4j2.properties" \
    -cp "$(classpath)" kafka.Kafka "$DIR/server.properties" \
    >"$DIR/kafka.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + 90))
  # The PLAINTEXT listener accepts only once the broker has caught up with the
  # metadata log and is ready to serve, so an open port means ready.
  until port_open "$PORT"; do
    if ! is_running; then
      tail -40 "$DIR/kafka.log" >&2
      log "Kafka exited during start-up"
      rm -f "$PIDFILE"
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -40 "$DIR/kafka.log" >&2
      log "Kafka did not start within 90 s"
      stop
      exit 1
    fi
    sleep 0.5
  done
  log "ready (pid $(cat "$PIDFILE"))"
}

stop() {
  if ! [ -f "$PIDFILE" ]; then
    log "not running (no $PIDFILE)"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then
        log "no exit after 30 s; killing pid $pid"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.3
    done
  fi
  rm -f "$PIDFILE"
  log "stopped"
}

status() {
  if is_running; then
    echo "running pid $(cat "$PIDFILE") on 127.0.0.1:$PORT (data $DIR)"
  else
    echo "not running"
    return 1
  fi
}

case "$cmd" in
  fetch) fetch; echo "$LIBS" ;;
  classpath) fetch; classpath ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 fetch|start|stop|status|classpath [--port 9092] [--dir DIR]" >&2; exit 2 ;;
esac
