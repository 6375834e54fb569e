#!/usr/bin/env bash
# kcat (Debian's 1.7.1 with librdkafka 2.0.2, the strictest old client)
# against KAFKA_BOOTSTRAP. kcat has no admin API: topics are created and
# offsets read with ../python/admin_tool.py (confluent-kafka).
# Prints "PASS kcat/NAME" or "FAIL kcat/NAME: why" per check.
set -uo pipefail
cd "$(dirname "$0")"
B="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
PY="${CLIENT_PYTHON:-${SLUICE_CACHE:-$HOME/.cache/sluice}/client-venv/bin/python}"
ONLY="${1:-}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
TOPIC="kcat-$(date +%s%3N)-$RANDOM"
GROUP="$TOPIC-g"
FAILED=0

admin() { KAFKA_BOOTSTRAP="$B" "$PY" ../python/admin_tool.py "$@"; }
# Every kcat call is bounded in time.
kc() { timeout 60 kcat -b "$B" -X socket.timeout.ms=10000 "$@"; }

check() {
  local name="$1"; shift
  [ -n "$ONLY" ] && [[ "kcat/$name" != *"$ONLY"* ]] && return 0
  local start=$SECONDS out
  if out="$("$@" 2>&1)"; then
    echo "PASS kcat/$name ($((SECONDS - start))s)"
  else
    echo "FAIL kcat/$name: $(echo "$out" | tail -5 | tr '\n' ' ' | cut -c1-600)"
    FAILED=1
  fi
}

# Checks run in a subshell (see check): exit ends just the failing check.
fail() { echo "$*"; exit 1; }

setup() {
  admin create "$TOPIC" 3
}

metadata() {
  kc -L -t "$TOPIC" -J >"$WORK/md.json" || fail "kcat -L failed"
  "$PY" - "$WORK/md.json" "$TOPIC" "${B%:*}" <<'PYEOF'
import json, sys
md = json.load(open(sys.argv[1]))
topic, host = sys.argv[2], sys.argv[3]
assert md["brokers"], f"no brokers in {md}"
for b in md["brokers"]:
    assert b["name"].startswith(host + ":"), f"broker advertised as {b['name']}, want {host}:PORT"
ts = [t for t in md["topics"] if t["topic"] == topic]
assert len(ts) == 1, f"topic missing: {md['topics']}"
t = ts[0]
assert "error" not in t or not t["error"], t
ps = sorted(p["partition"] for p in t["partitions"])
assert ps == [0, 1, 2], f"partitions {ps}"
for p in t["partitions"]:
    assert p["leader"] >= 0 and p["replicas"] and p["isrs"], p
PYEOF
}

# Keyed records in 5 runs of kcat -P: 200 with the idempotent producer, then
# 100 each compressed with gzip, snappy, lz4 and zstd (librdkafka 2.0.2 turns
# a codec off unless the broker advertises Produce 0, and zstd needs Produce 7
# and Fetch 10).
produce() {
  : >"$WORK/sent"
  local i n=0 codec
  for codec in idempotent gzip snappy lz4 zstd; do
    local count=100
    [ $codec = idempotent ] && count=200
    for i in $(seq $n $((n + count - 1))); do echo "k$((i % 10)):v$i"; done >"$WORK/b-$codec"
    n=$((n + count))
    if [ $codec = idempotent ]; then
      kc -P -t "$TOPIC" -K: -X enable.idempotence=true -X acks=all <"$WORK/b-$codec" || fail "produce ($codec)"
    else
      kc -P -t "$TOPIC" -K: -z $codec <"$WORK/b-$codec" || fail "produce ($codec)"
    fi
    cat "$WORK/b-$codec" >>"$WORK/sent"
  done
  cat "$WORK/sent0" >>"$WORK/sent" 2>/dev/null || true
  local total
  total="$(admin ends "$TOPIC" | awk '{s += $2} END {print s}')"
  [ "$total" = "$(wc -l <"$WORK/sent")" ] || fail "sum of high watermarks $total, want $(wc -l <"$WORK/sent")"
}

# The protocol features librdkafka 2.0.2 enables from the broker's ApiVersions
# (it derives them from exact API versions inside the advertised ranges).
features() {
  # (-d broker too: the full feature line is logged at that debug level)
  echo "k:v" | kc -P -t "$TOPIC" -K: -p 0 -d feature,broker 2>"$WORK/feat" >/dev/null ||
    fail "kcat -P -d feature failed"
  echo "k:v" >"$WORK/sent0"
  local line f
  line="$(grep 'Updated enabled protocol features to' "$WORK/feat" | tail -1 | sed 's/.*features to //')"
  for f in ApiVersion BrokerBalancedConsumer BrokerGroupCoordinator LZ4 OffsetTime MsgVer2 IdempotentProducer ZSTD; do
    [[ ",$line," == *",$f,"* ]] || fail "feature $f not enabled; librdkafka enabled: $line"
  done
}

# Each record comes back in a batch with the codec it was produced with
# (read with franz-go, which exposes the batch attributes).
compression_kept() {
  (cd ../go && go build -o "$WORK/codecs" ./cmd/codecs) || fail "building the codecs reader failed"
  KAFKA_BOOTSTRAP="$B" timeout 60 "$WORK/codecs" -topic "$TOPIC" -n 601 >"$WORK/codecs.out" || fail "codecs reader failed"
  "$PY" - "$WORK/codecs.out" <<'PYEOF'
import sys
want = {}
for line in open(sys.argv[1]):
    p, o, codec, value = line.split()
    if value == "v":
        continue  # the features probe record
    i = int(value[1:])
    expect = "none" if i < 200 else ["gzip", "snappy", "lz4", "zstd"][(i - 200) // 100]
    assert codec == expect, f"record {value} at {p}:{o} came in a {codec} batch, produced as {expect}"
    want[i] = 1
assert len(want) == 600, f"{len(want)} records read"
PYEOF
}

# -o -5: the last 5 records of partition 0 (ListOffsets latest, then Fetch).
tail_offsets() {
  local end
  end="$(admin ends "$TOPIC" | awk '$1 == 0 {print $2}')"
  [ "${end:-0}" -ge 5 ] || fail "partition 0 has ${end:-0} records, want >= 5"
  kc -C -t "$TOPIC" -p 0 -o -5 -e -q -f '%o\n' >"$WORK/tail" || fail "kcat -C -o -5 failed"
  local want
  want="$(seq $((end - 5)) $((end - 1)) | tr '\n' ' ')"
  [ "$(tr '\n' ' ' <"$WORK/tail")" = "$want" ] || fail "offsets $(tr '\n' ' ' <"$WORK/tail"), want $want"
}

# Reads everything back; checks content, per-partition offsets and per-key order.
verify_dump() {
  "$PY" - "$WORK/sent" "$1" <<'PYEOF'
import sys
sent = [l.rstrip("\n").split(":", 1) for l in open(sys.argv[1])]
got = [l.rstrip("\n").split(" ", 3) for l in open(sys.argv[2]) if l.strip()]
assert len(got) == len(sent), f"read {len(got)} records, want {len(sent)}"
next_off, key_part, per_key = {}, {}, {}
for p, o, k, v in got:
    p, o = int(p), int(o)
    assert o == next_off.get(p, 0), f"partition {p}: offset {o}, want {next_off.get(p, 0)}"
    next_off[p] = o + 1
    assert key_part.setdefault(k, p) == p, f"key {k} in partitions {key_part[k]} and {p}"
    per_key.setdefault(k, []).append(v)
want = {}
for k, v in sent:
    want.setdefault(k, []).append(v)
assert per_key == want, "values per key differ from what was sent, in order"
PYEOF
}

consume() {
  kc -C -t "$TOPIC" -o beginning -e -q -f '%p %o %k %s\n' >"$WORK/dump" || fail "kcat -C failed"
  verify_dump "$WORK/dump"
}

group() {
  # One balanced-consumer member reads all, commits on close.
  kc -G "$GROUP" -X auto.offset.reset=earliest -e -q -f '%p %o %k %s\n' \
    -X session.timeout.ms=10000 "$TOPIC" >"$WORK/gdump" || fail "kcat -G failed"
  verify_dump "$WORK/gdump" || return 1
  admin ends "$TOPIC" | sort >"$WORK/ends"
  admin committed "$GROUP" "$TOPIC" | sort >"$WORK/committed"
  diff "$WORK/ends" "$WORK/committed" >/dev/null ||
    fail "committed offsets ($(tr '\n' ' ' <"$WORK/committed")) != ends ($(tr '\n' ' ' <"$WORK/ends"))"
  # A second run of the group resumes at the committed end: nothing to read.
  # (No -o here: in -G mode kcat applies -o to every assigned partition,
  # overriding the committed offsets.)
  kc -G "$GROUP" -X auto.offset.reset=earliest -e -q -f '%p %o %k %s\n' -X session.timeout.ms=10000 "$TOPIC" >"$WORK/gdump2" ||
    fail "second kcat -G failed"
  [ ! -s "$WORK/gdump2" ] || fail "second group run read $(wc -l <"$WORK/gdump2") records, want 0"
}

check setup setup
check metadata metadata
check features features
check produce produce
check consume consume
check tail_offsets tail_offsets
check compression_kept compression_kept
check balanced_group group
admin delete "$TOPIC" >/dev/null 2>&1 || true
exit $FAILED
