#!/usr/bin/env bash
# Apache Kafka's own Java producer (ProducerPerformance, from the jars that
# scripts/kafka-peer.sh fetches) against a fresh release Sluice broker:
# the broker's CPU seconds per GB produced and its flush counters. Unlike
# sluice-bench, whose produce requests each carry one partition, the Java
# client puts every ready batch for the broker into one request, so this
# is how shared flushes (the shard crate's `flush` module) get measured.
#
#   scripts/bench-java-producer.sh [PARTITIONS] [RECORDS]     # 16, 1500000
#
# 1 KiB records, acks=all, linger.ms=1, the client's other defaults, plus
# any producer properties in $SLUICE_PRODUCER_PROPS (space-separated;
# 'batch.size=262144' is what sluice-bench compare adds). The
# broker runs under `taskset -c 0-1` (SLUICE_CPUS) with the embedded
# defaults plus any [broker] lines in $SLUICE_EXTRA (for example
# 'shared_flush = false'; see scripts/sluice-broker.sh). Needs a release
# build and Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
partitions=${1:-16}
records=${2:-1500000}
bin=${SLUICE_BIN:-target/release/sluice}
[ -x "$bin" ] || { echo "build first: cargo build --release -p sluice-broker" >&2; exit 1; }
scripts/kafka-peer.sh fetch >/dev/null
cp="$(scripts/kafka-peer.sh classpath)"
dir=$(mktemp -d /tmp/sluice-java.XXXXXX)
. scripts/sluice-broker.sh
start_sluice "$dir" "$dir/data"
java -Xmx256m -cp "$cp" org.apache.kafka.tools.TopicCommand --bootstrap-server "$boot" \
  --create --topic java-producer --partitions "$partitions" --replication-factor 1 >"$dir/topic.out" 2>&1
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(cpu)
java -Xmx512m -cp "$cp" org.apache.kafka.tools.ProducerPerformance --topic java-producer \
  --num-records "$records" --record-size 1024 --throughput -1 \
  --producer-props "bootstrap.servers=$boot" acks=all linger.ms=1 ${SLUICE_PRODUCER_PROPS:-} >"$dir/producer.out" 2>&1
t1=$(cpu)
tail -1 "$dir/producer.out"
awk -v t0="$t0" -v t1="$t1" -v n="$records" -v hz="$(getconf CLK_TCK)" 'BEGIN {
  cpu = (t1 - t0) / hz; gb = n * 1024 / 1e9
  printf "broker cpu %.2f s, produced %.3f GB, %.3f cpu-s/GB\n", cpu, gb, cpu / gb }'
curl -s "$metrics" | flush_counters
echo "run directory: $dir"
