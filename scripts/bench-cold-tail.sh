#!/usr/bin/env bash
# Broker CPU per GB for a consumer reading ~1 GB: cold (segments) vs tail (cache),
# with the side ring on and off. Prints one line per case. Needs a release build
# (cargo build --release -p sluice-broker) and curl; uses ports 29400-29644.
# READ_AHEAD=false turns off the broker's read-ahead for cold consumers;
# PARTITIONS (default 8) spreads the records over more partitions; SLUICE_BIN
# picks another broker binary.
set -u
cd "$(dirname "$0")/.."
S=${SLUICE_BIN:-target/release/sluice}
run_case() { # name cache_bytes side_ring
  local name=$1 cache=$2 ring=$3 dir; dir=$(mktemp -d /tmp/coldtail.XXXXXX)
  # The memory budget must hold the 768 MiB-per-shard tail cache of the tail case.
  printf '[broker]\nmemory_budget_bytes = 2147483648\ntail_cache_bytes = %s\nio_memory_bytes = 10485760\nread_ahead = %s\nmetrics_addr = "127.0.0.1:29644"\n' "$cache" "${READ_AHEAD:-true}" > $dir/c.toml
  SLUICE_SIDE_RING=$ring $S serve --config $dir/c.toml --data-dir $dir/d --native-addr 127.0.0.1:29400 --kafka-addr 127.0.0.1:29490 > $dir/out 2> $dir/log &
  local pid=$!
  for _ in $(seq 50); do grep -q ready $dir/out 2>/dev/null && break; sleep 0.2; done
  if ! grep -q ready $dir/out 2>/dev/null; then
    echo "$name: the broker did not start:" >&2; tail -3 $dir/log >&2; rm -rf $dir; return 1
  fi
  $S topic create t --partitions ${PARTITIONS:-8} --bootstrap 127.0.0.1:29400 >/dev/null
  $S produce t --acks 1 --bootstrap 127.0.0.1:29400 < ${INPUT:-/tmp/sluice-input-1g.txt} 2>/dev/null
  local m=127.0.0.1:29644/metrics
  local copies0; copies0=$(curl -s $m | awk '/^sluice_payload_copies_total/{s+=$2} END{print s}')
  local c0; c0=$(awk '{print $14+$15}' /proc/$pid/stat)
  local t0; t0=$(date +%s.%N)
  $S consume t --count 1000000 --bootstrap 127.0.0.1:29400 > /dev/null
  local t1; t1=$(date +%s.%N)
  local c1; c1=$(awk '{print $14+$15}' /proc/$pid/stat)
  local read copies
  read=$(curl -s $m | awk '/^sluice_bytes_read_total/{s+=$2} END{print s}')
  copies=$(curl -s $m | awk '/^sluice_payload_copies_total/{s+=$2} END{print s}')
  local cache_reads; cache_reads=$(curl -s $m | awk '/^sluice_cache_reads_total/{s+=$2} END{print s}')
  local ahead; ahead=$(curl -s $m | awk '/^sluice_read_ahead_hits_total/{s+=$2} END{print s}')
  local ahead_bytes; ahead_bytes=$(curl -s $m | awk '/^sluice_read_ahead_bytes_total/{s+=$2} END{print s}')
  local disk; disk=$(curl -s $m | awk '/^sluice_segment_read_bytes_total/{s+=$2} END{print s+0}')
  kill -TERM $pid; wait $pid
  python3 -c "
ticks=$c1-$c0; secs=ticks/100; gb=$read/1e9
print(f'$name: read {gb:.2f} GB in {$t1-$t0:.2f} s ({gb/($t1-$t0):.2f} GB/s), broker CPU {secs:.2f} s = {secs/gb:.2f} CPU-s/GB, payload copies while consuming {$copies-$copies0}, cache reads $cache_reads, fetches served by read-ahead $ahead ({$ahead_bytes/1e9:.2f} GB read ahead), {$disk/1e9:.3f} GB read from segment files for {$read/1e9:.3f} GB sent')"
  rm -rf $dir
}
[ -f ${INPUT:-/tmp/sluice-input-1g.txt} ] || python3 -c "
import sys
pad=b'x'*1015
out=sys.stdout.buffer
for i in range(1000000): out.write(b'%08d'%i + pad + b'\n')
" > ${INPUT:-/tmp/sluice-input-1g.txt}
run_case "cold, side ring   " 1048576 1
run_case "cold, copying read" 1048576 0
run_case "tail (cache)      " 805306368 1
