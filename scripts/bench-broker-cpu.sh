#!/usr/bin/env bash
# One sluice-bench workload against a fresh release Sluice broker, reporting
# the broker's CPU seconds per GB moved (utime+stime from /proc/PID/stat):
# the hand-run A/B measurements in docs/benchmarks.md.
#
#   scripts/bench-broker-cpu.sh [--perf] -- produce --protocol kafka --partitions 8 \
#       --record-bytes 100 --acks 1
#
# The broker runs under `taskset -c 0-1` (SLUICE_CPUS) with the embedded
# defaults, group_initial_rebalance_delay_ms = 0, and any extra [broker]
# lines in $SLUICE_EXTRA (for example 'spin_before_park_us = 50'), so two
# settings are compared on one binary (SLUICE_BIN names another build). 3 s
# (SLUICE_WARM_S) of unmeasured load on another topic, then 8 s measured
# (SLUICE_MEASURE_S). SLUICE_DATA puts the data
# directory elsewhere (it is deleted afterwards); SLUICE_BENCH names another
# sluice-bench (the generator). --perf records the broker
# with `perf record -g` into the run directory. Needs a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
perf=0
if [ "${1:-}" = "--perf" ]; then perf=1; shift; fi
[ "${1:-}" = "--" ] && shift
bin=${SLUICE_BIN:-target/release/sluice}
bench=${SLUICE_BENCH:-target/release/sluice-bench}
[ -x "$bin" ] && [ -x "$bench" ] || { echo "build first: cargo build --release -p sluice-broker -p sluice-bench-harness" >&2; exit 1; }
dir=$(mktemp -d /tmp/sluice-cpu.XXXXXX)
. scripts/sluice-broker.sh
start_sluice "$dir" "${SLUICE_DATA:-$dir/data}"
"$bench" "$@" --bootstrap "$boot" --topic warm --duration-s "${SLUICE_WARM_S:-3}" >/dev/null
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# Busy ticks of the whole machine (everything but idle and iowait): work the
# kernel does for the broker outside its threads (kworkers, softirqs on other
# threads) shows here, with the generator's own CPU.
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
t0=$(cpu)
m0=$(machine)
secs=${SLUICE_MEASURE_S:-8}
perf_pid=""
if [ "$perf" = 1 ]; then
  ${SLUICE_PERF_CMD:-perf record -F 2000 -g} -p "$pid" -o "$dir/perf.data" -- sleep $((secs - 1)) >/dev/null 2>&1 &
  perf_pid=$!
fi
"$bench" "$@" --bootstrap "$boot" --topic measured --duration-s "$secs" >"$dir/bench.out"
t1=$(cpu)
m1=$(machine)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
# The broker's counters after the run (both topics), summed over shards.
curl -s "$metrics" >"$dir/metrics.txt" 2>/dev/null || true
[ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null || true
# Bytes moved: each throughput row's MB/s times its window (produced and consumed).
awk -v t0="$t0" -v t1="$t1" -v m0="$m0" -v m1="$m1" -v hwm="$hwm" -v hz="$(getconf CLK_TCK)" '
  ($1 == "produced" || $1 == "consumed") && NF >= 5 { gb += $4 * $5 / 1000 }
  { print }
  END { cpu = (t1 - t0) / hz; printf "broker cpu %.2f s, moved %.3f GB, %.3f cpu-s/GB\n", cpu, gb, (gb > 0 ? cpu / gb : 0); printf "machine busy %.2f CPU-s (broker, generator and kernel threads)\n", (m1 - m0) / hz; printf "broker peak RSS %.0f MiB\n", hwm / 1024 }
' "$dir/bench.out"
flush_counters <"$dir/metrics.txt"
echo "run directory: $dir"
