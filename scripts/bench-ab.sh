#!/usr/bin/env bash
# Alternated A/B of two Sluice builds on one workload, read as paired ratios:
# on these machines throughput swings by ±12% from one 8-s run to the next,
# so only pairs run back to back say anything.
#
#   scripts/bench-ab.sh PAIRS BUILD_A BUILD_B -- e2e --protocol kafka \
#       --partitions 8 --record-bytes 1024 --acks all --coordinated-groups
#
# Each run is one scripts/bench-broker-cpu.sh (a fresh broker, 3 s of
# unmeasured load, SLUICE_MEASURE_S measured), PAIRS pairs: A then B in odd
# pairs, B then A in even ones, so neither side always runs first (in one
# A/A test of 8 pairs with A always first, the first run of each pair cost
# 3.7% more, standard error 1.4%: drift that a fixed order would book to
# one side; docs/benchmarks.md, "A/B runs alternate their order"). Prints
# a row per run (MB/s produced, broker CPU-s per GB moved, produce-ack p50/p99,
# end-to-end p99/p99.9, broker peak RSS in MiB), then the means and the paired MB/s and CPU ratios
# A/B with their standard errors. Rows also go to a TSV in /tmp. Needs a
# release build of sluice-bench (the generator, the same for both).
# SLUICE_EXTRA_A and SLUICE_EXTRA_B add [broker] lines to one side's
# configuration (see scripts/sluice-broker.sh), so one build can be compared
# with itself under two settings: scripts/bench-ab.sh 5 BIN BIN -- ... with
# SLUICE_EXTRA_B='pin_shards = false'.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] && [ "$4" = "--" ] || { sed -n '2,22p' "$0" >&2; exit 2; }
pairs=$1 a=$2 b=$3
shift 4
out=$(mktemp /tmp/sluice-ab.XXXXXX.tsv)
for i in $(seq 1 "$pairs"); do
  order="A B"
  [ $((i % 2)) = 0 ] && order="B A"
  for side in $order; do
    if [ $side = A ]; then bin=$a extra=${SLUICE_EXTRA_A:-}; else bin=$b extra=${SLUICE_EXTRA_B:-}; fi
    r=$(SLUICE_BIN=$bin SLUICE_EXTRA=$extra scripts/bench-broker-cpu.sh -- "$@" 2>&1) || { echo "run $i of $side ($bin) failed:" >&2; echo "$r" | tail -5 >&2; continue; }
    mbs=$(echo "$r" | awk '/^produced/ {print $4; exit}')
    cpu=$(echo "$r" | awk '/cpu-s\/GB/ {print $(NF-1); exit}')
    ack=$(echo "$r" | awk '/^produce_ack/ {print $3 "/" $5; exit}')
    e2e=$(echo "$r" | awk '/^end_to_end/ {print $5 "/" $6; exit}')
    rss=$(echo "$r" | awk '/^broker peak RSS/ {print $4; exit}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$side" "$mbs" "$cpu" "$ack" "${e2e:--}" "${rss:--}" | tee -a "$out"
  done
done
echo "A: $a ${SLUICE_EXTRA_A:-}"; echo "B: $b ${SLUICE_EXTRA_B:-}"
awk -F'\t' -v a=A -v b=B '
  { mbs[$2] += $3; cpu[$2] += $4; n[$2]++; if ($7 > rss[$2]) rss[$2] = $7 }
  $2 == a { am[$1] = $3; ac[$1] = $4 }
  $2 == b { bm[$1] = $3; bc[$1] = $4 }
  function paired(x, y, what,   i, r, s, s2, k, m, sd) {
    for (i in x) if ((i in y) && y[i] > 0) { r = x[i] / y[i]; s += r; s2 += r * r; k++ }
    if (k < 2) { printf "paired %s ratio: fewer than 2 pairs\n", what; return }
    m = s / k; sd = sqrt((s2 - k * m * m) / (k - 1))
    printf "paired %s ratio A/B: %.3f (standard error %.3f, %d pairs)\n", what, m, sd / sqrt(k), k
  }
  END {
    for (x in n) printf "%s: %.1f MB/s, %.3f CPU-s/GB (mean of %d), peak RSS %d MiB\n", x, mbs[x] / n[x], cpu[x] / n[x], n[x], rss[x]
    paired(am, bm, "MB/s"); paired(ac, bc, "CPU-s/GB")
  }' "$out"
echo "rows: $out"
