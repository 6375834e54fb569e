#!/usr/bin/env bash
# Runs real Kafka clients against a broker and checks what they read back:
# content, order per partition, offsets and group progress.
#
#   scripts/client-tests.sh [--bootstrap HOST:PORT] [--only SUITE[/PATTERN]]
#
# Suites: java (kafka-clients, kafka-streams, perf tools), python-confluent
# (confluent-kafka with a recent librdkafka), python-kafka-python, kcat
# (librdkafka 2.0.2), go (franz-go). --only python runs both Python suites;
# a PATTERN picks checks inside a suite (java: a surefire -Dtest pattern such
# as 'C_*'; go: a -run regexp; others: a substring of the check name).
#
# CLIENT_TESTS_BROKER=sluice (scripts/test sets it) adds checks of Sluice's own
# texts, such as the reasons in refused produces; without it the suites pass
# against Apache Kafka too.
#
# The bootstrap defaults to $KAFKA_BOOTSTRAP, else 127.0.0.1:9092. Install the
# clients first with scripts/install-clients.sh. Prints one line per check and
# ends with "N passed, M failed"; exits non-zero when anything failed. Full
# client output goes to $CLIENT_TEST_LOGS (default a fresh /tmp folder).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap) BOOTSTRAP="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
export KAFKA_BOOTSTRAP="$BOOTSTRAP"

CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
export SLUICE_CACHE="$CACHE"
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
export KAFKA_VERSION
export KAFKA_LIBS="${KAFKA_LIBS:-$CACHE/kafka-$KAFKA_VERSION/libs}"
PY="$CACHE/client-venv/bin/python"
export CLIENT_PYTHON="$PY"
LOGS="${CLIENT_TEST_LOGS:-$(mktemp -d /tmp/sluice-client-tests.XXXXXX)}"
mkdir -p "$LOGS"
# Per-suite wall-clock bound (seconds).
SUITE_TIMEOUT="${SUITE_TIMEOUT:-420}"

PASSED=0
FAILED=0
SUITE_START=0

# A suite is selected by --only SUITE or SUITE/PATTERN; "python" selects both
# Python suites.
pattern_for() {
  local suite="$1" sel="${ONLY%%/*}" pat=""
  [[ "$ONLY" == */* ]] && pat="${ONLY#*/}"
  if [ -z "$ONLY" ] || [ "$sel" = "$suite" ] || { [ "$sel" = python ] && [[ "$suite" == python-* ]]; }; then
    echo "+$pat"
  fi
}

# run_suite NAME CMD...: runs the suite, echoes its PASS/FAIL lines, counts them.
run_suite() {
  local name="$1"; shift
  local log="$LOGS/$name.log"
  SUITE_START=$SECONDS
  echo "== $name (log: $log)"
  # bash -c so that exported shell functions (java_suite, go_suite) run too.
  timeout --kill-after=10 "$SUITE_TIMEOUT" bash -c '"$@"' _ "$@" >"$log" 2>&1
  local rc=$?
  local p f
  # Drop terminal colour codes so that check lines start the line.
  sed -i -E 's/\x1b\[[0-9;]*m//g' "$log"
  grep -E '^(PASS|FAIL|SKIP) ' "$log" | sed 's/^/  /'
  p=$(grep -cE '^PASS ' "$log")
  f=$(grep -cE '^FAIL ' "$log")
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "  FAIL $name: suite timed out after ${SUITE_TIMEOUT}s (checks not listed did not run)"
    f=$((f + 1))
  elif [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "  FAIL $name: suite exited $rc without a failed check; last lines:"
    tail -15 "$log" | sed 's/^/      /'
    f=1
  fi
  if [ $rc -eq 0 ] && [ "$p" -eq 0 ]; then
    echo "  FAIL $name: no check ran"
    f=1
  fi
  echo "  ($name: $p passed, $f failed, $((SECONDS - SUITE_START))s)"
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
}

need() {
  if ! [ -e "$1" ] && ! command -v "$1" >/dev/null 2>&1; then
    echo "  FAIL $2: $1 missing: run scripts/install-clients.sh"
    FAILED=$((FAILED + 1))
    return 1
  fi
}

java_suite() {
  local pat="$1"
  local args=(-q -o -B -Dstyle.color=never test)
  [ -n "$pat" ] && args+=("-Dtest=$pat" -Dsurefire.failIfNoSpecifiedTests=false)
  cd "$ROOT/broker/tests/clients/java" && mvn "${args[@]}"
}

go_suite() {
  local pat="$1"
  local args=(test -count=1 -v -timeout 300s)
  [ -n "$pat" ] && args+=(-run "$pat")
  cd "$ROOT/broker/tests/clients/go" &&
    go "${args[@]}" . 2>&1 | sed -E 's/^--- (PASS|FAIL): ([A-Za-z0-9_]+).*/\1 go\/\2/'
}

export ROOT
export -f java_suite go_suite

echo "client tests against $BOOTSTRAP"
T0=$SECONDS

if pat="$(pattern_for java)" && [ -n "$pat" ]; then
  need mvn java && need "$KAFKA_LIBS" java && run_suite java java_suite "${pat#+}"
fi
if pat="$(pattern_for python-confluent)" && [ -n "$pat" ]; then
  need "$PY" python-confluent &&
    run_suite python-confluent "$PY" "$ROOT/broker/tests/clients/python/test_confluent.py" ${pat#+}
fi
if pat="$(pattern_for python-kafka-python)" && [ -n "$pat" ]; then
  need "$PY" python-kafka-python &&
    run_suite python-kafka-python "$PY" "$ROOT/broker/tests/clients/python/test_kafka_python.py" ${pat#+}
fi
if pat="$(pattern_for kcat)" && [ -n "$pat" ]; then
  need kcat kcat && need "$PY" kcat &&
    run_suite kcat "$ROOT/broker/tests/clients/kcat/kcat-tests.sh" ${pat#+}
fi
if pat="$(pattern_for go)" && [ -n "$pat" ]; then
  need go go && run_suite go go_suite "${pat#+}"
fi

echo "client tests against $BOOTSTRAP took $((SECONDS - T0))s; logs in $LOGS"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
