#!/usr/bin/env bash
# Apache Kafka's ConsumerPerformance (from the jars scripts/kafka-peer.sh
# fetches) reading a topic back from a fresh release Sluice broker, as
# `sluice-bench compare` runs it: ProducerPerformance first writes RECORDS
# x 1 KiB (acks=all) to 8 partitions (PARTITIONS), then ConsumerPerformance reads them
# all with the client's defaults (one fetch in flight, 1 MiB a partition).
# The tail cache holds only the newest part of the topic, so most fetches
# read segment files: this is how the read-ahead (the shard crate's
# `readahead` module) gets measured. Prints the consumer's MB/s, the
# broker's CPU seconds per GB read and its read-ahead counters.
#
#   scripts/bench-kafka-consumer.sh [RECORDS]     # 1000000
#
# SLUICE_PERF_OUT=FILE records the broker with `perf record -g` while the
# consumer reads. SLUICE_EXTRA adds [broker] lines (for example 'read_ahead = false'; see
# scripts/sluice-broker.sh). Needs a release build and Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
bin=${SLUICE_BIN:-target/release/sluice}
[ -x "$bin" ] || { echo "build first: cargo build --release -p sluice-broker" >&2; exit 1; }
scripts/kafka-peer.sh fetch >/dev/null
cp="$(scripts/kafka-peer.sh classpath)"
dir=$(mktemp -d /tmp/sluice-kcons.XXXXXX)
. scripts/sluice-broker.sh
start_sluice "$dir" "$dir/data"
java -Xmx256m -cp "$cp" org.apache.kafka.tools.TopicCommand --bootstrap-server "$boot" \
  --create --topic perf --partitions "${PARTITIONS:-8}" --replication-factor 1 >"$dir/topic.out" 2>&1
java -Xmx512m -cp "$cp" org.apache.kafka.tools.ProducerPerformance --topic perf \
  --num-records "$records" --record-size 1024 --throughput -1 \
  --producer-props "bootstrap.servers=$boot" acks=all linger.ms=1 batch.size=262144 >"$dir/producer.out" 2>&1
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
counter() { curl -s "$metrics" | awk -v n="$1" '$1 ~ "^"n {s += $2} END {print s + 0}'; }
t0=$(cpu)
read0=$(counter sluice_bytes_read_total)
perf_pid=""
if [ -n "${SLUICE_PERF_OUT:-}" ]; then
  perf record -F 2000 -g -p "$pid" -o "$SLUICE_PERF_OUT" >/dev/null 2>&1 &
  perf_pid=$!
fi
java -Xmx512m -cp "$cp" org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$boot" \
  --topic perf --num-records "$records" --timeout 60000 --group perf-group >"$dir/consumer.out" 2>&1
t1=$(cpu)
[ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; }
read=$(( $(counter sluice_bytes_read_total) - read0 ))
hits=$(counter sluice_read_ahead_hits_total)
refused=$(counter sluice_read_ahead_refused_total)
cache=$(counter sluice_cache_reads_total)
line=$(grep -E '^[0-9]{4}-' "$dir/consumer.out" | tail -1)
# ConsumerPerformance's fields: start, end, MB, MB/s, records, records/s, ...
mbs=$(echo "$line" | awk -F', ' '{print $4}')
awk -v t0="$t0" -v t1="$t1" -v read="$read" -v hz="$(getconf CLK_TCK)" -v mbs="$mbs" -v hits="$hits" -v refused="$refused" -v cache="$cache" 'BEGIN {
  cpu = (t1 - t0) / hz; gb = read / 1e9
  printf "ConsumerPerformance %.1f MB/s; broker read %.3f GB with %.2f s of CPU = %.3f cpu-s/GB; fetches served by read-ahead %d (refused %d), tail-cache reads %d\n", mbs, gb, cpu, (gb > 0 ? cpu / gb : 0), hits, refused, cache
}'
