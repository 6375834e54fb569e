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
# 1 KiB records, acks=all, linger.ms=1, the client's other defaults. The
# broker runs under `taskset -c 0-1` (SLUICE_CPUS) with the embedded
# defaults plus any [broker] lines in $SLUICE_EXTRA (for example
# 'shared_flush = false'). Needs a release build and Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
partitions=${1:-16}
records=${2:-1500000}
bin=${SLUICE_BIN:-target/release/sluice}
[ -x "$bin" ] || { echo "build first: cargo build --release -p sluice-broker" >&2; exit 1; }
scripts/kafka-peer.sh fetch >/dev/null
cp="$(scripts/kafka-peer.sh classpath)"
dir=$(mktemp -d /tmp/sluice-java.XXXXXX)
base=$((30000 + RANDOM % 10000))
cat > "$dir/sluice.toml" <<TOML
[broker]
metrics_addr = "127.0.0.1:$((base + 10))"
native_addr = "127.0.0.1:$base"
native_shard_port_base = $((base + 1))
kafka_addr = "127.0.0.1:$((base + 20))"
kafka_shard_port_base = $((base + 21))
${SLUICE_EXTRA:-}
TOML
taskset -c "${SLUICE_CPUS:-0-1}" "$bin" serve --config "$dir/sluice.toml" --data-dir "$dir/data" \
  >"$dir/broker.out" 2>"$dir/broker.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir/data"' EXIT
for _ in $(seq 1 100); do grep -q "sluice ready" "$dir/broker.out" && break; sleep 0.1; done
grep -q "sluice ready" "$dir/broker.out" || { cat "$dir/broker.log" >&2; exit 1; }
boot="127.0.0.1:$((base + 20))"
java -Xmx256m -cp "$cp" org.apache.kafka.tools.TopicCommand --bootstrap-server "$boot" \
  --create --topic java-producer --partitions "$partitions" --replication-factor 1 >"$dir/topic.out" 2>&1
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(cpu)
java -Xmx512m -cp "$cp" org.apache.kafka.tools.ProducerPerformance --topic java-producer \
  --num-records "$records" --record-size 1024 --throughput -1 \
  --producer-props "bootstrap.servers=$boot" acks=all linger.ms=1 >"$dir/producer.out" 2>&1
t1=$(cpu)
tail -1 "$dir/producer.out"
awk -v t0="$t0" -v t1="$t1" -v n="$records" -v hz="$(getconf CLK_TCK)" 'BEGIN {
  cpu = (t1 - t0) / hz; gb = n * 1024 / 1e9
  printf "broker cpu %.2f s, produced %.3f GB, %.3f cpu-s/GB\n", cpu, gb, cpu / gb }'
curl -s "http://127.0.0.1:$((base + 10))/metrics" |
  awk '/^sluice_(fdatasyncs|shared_flushes)_total/ { n = $1; sub(/\{.*/, "", n); t[n] += $2 }
    END { for (n in t) printf "%s %.0f\n", n, t[n] }' | sort
echo "run directory: $dir"
