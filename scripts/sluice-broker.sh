# Sourced by the benchmark scripts (not run): starts one release Sluice
# broker for a measurement and stops it when the script exits.
#
#   start_sluice DIR DATA_DIR
#
# writes DIR/sluice.toml (the embedded defaults, ports from a random free
# base below the ephemeral range, group_initial_rebalance_delay_ms = 0, plus
# the [broker] lines in $SLUICE_EXTRA), starts $SLUICE_BIN (default target/release/sluice) under
# `taskset -c ${SLUICE_CPUS:-0-1}` with its output in DIR/broker.{out,log},
# waits until it is ready and sets `pid`, `base`, `boot` (its Kafka
# listener) and `metrics` (its metrics URL). DATA_DIR is deleted at exit.

start_sluice() {
  local dir=$1 data=$2
  # Ports below the kernel's ephemeral range, free now.
  base=$(python3 scripts/free-ports.py 30)
  [ -n "$base" ] || { echo "no free ports below the ephemeral range" >&2; exit 1; }
  cat > "$dir/sluice.toml" <<TOML
[broker]
metrics_addr = "127.0.0.1:$((base + 10))"
native_addr = "127.0.0.1:$base"
native_shard_port_base = $((base + 1))
kafka_addr = "127.0.0.1:$((base + 20))"
kafka_shard_port_base = $((base + 21))
group_initial_rebalance_delay_ms = 0
${SLUICE_EXTRA:-}
TOML
  taskset -c "${SLUICE_CPUS:-0-1}" "${SLUICE_BIN:-target/release/sluice}" serve \
    --config "$dir/sluice.toml" --data-dir "$data" >"$dir/broker.out" 2>"$dir/broker.log" &
  pid=$!
  _sluice_data=$data
  trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$_sluice_data"' EXIT
  for _ in $(seq 1 100); do grep -q "sluice ready" "$dir/broker.out" && break; sleep 0.1; done
  grep -q "sluice ready" "$dir/broker.out" || { cat "$dir/broker.log" >&2; exit 1; }
  boot="127.0.0.1:$((base + 20))"
  metrics="http://127.0.0.1:$((base + 10))/metrics"
}

# The broker's fdatasync and shared-flush counters (and zeros filled),
# summed over shards, then its latency histograms (writes, flushes, and
# Produce and Fetch requests in the broker; count,
# mean, and the bucket bounds that hold the median and the 99th
# percentile), from the metrics text on stdin.
flush_counters() {
  awk '/^sluice_(fdatasyncs|shared_flushes|anchored_flushes|linked_flushes|registered_writes|zeros_filled_bytes)_total/ { n = $1; sub(/\{.*/, "", n); t[n] += $2 }
    function kind(s) { sub(/^sluice_/, "", s); sub(/_latency.*/, "", s); return s }
    /^sluice_(write|flush|produce|fetch)_latency_seconds_bucket/ {
      h = kind($1); le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
      if (!((h, le) in c)) { k[h]++; order[h, k[h]] = le }
      c[h, le] += $2 }
    /^sluice_(write|flush|produce|fetch)_latency_seconds_sum/ { sum[kind($1)] += $2 }
    /^sluice_(write|flush|produce|fetch)_latency_seconds_count/ { cnt[kind($1)] += $2 }
    function at(h, q,   i, le) { for (i = 1; i <= k[h]; i++) { le = order[h, i]; if (c[h, le] >= q * cnt[h]) return le == "+Inf" ? ">1s" : "<=" le * 1e3 " ms" } return "?" }
    END {
      for (n in t) printf "%s %.0f\n", n, t[n]
      for (h in cnt) if (cnt[h] > 0) printf "~%s latency: %d, mean %.3f ms, p50 %s, p99 %s\n", h, cnt[h], sum[h] / cnt[h] * 1e3, at(h, 0.5), at(h, 0.99)
    }' | sort
}
