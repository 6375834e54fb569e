#!/usr/bin/env bash
# Installs the real Kafka clients that scripts/client-tests.sh drives. Safe to
# run again: each step is skipped when its result is already there.
#
#   kcat            Debian's kcat (librdkafka 2.0.2, the strictest old client)
#   Python venv     $SLUICE_CACHE/client-venv with confluent-kafka (bundled
#                   recent librdkafka) and kafka-python
#   Java            the Maven dependencies of broker/tests/clients/java
#                   (kafka-clients, kafka-streams, kafka-tools, JUnit) and the
#                   Apache Kafka jars that scripts/kafka-peer.sh uses
#   Go              the franz-go modules of broker/tests/clients/go
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
VENV="$CACHE/client-venv"
CONFLUENT_KAFKA_VERSION="${CONFLUENT_KAFKA_VERSION:-2.16.1}"
KAFKA_PYTHON_VERSION="${KAFKA_PYTHON_VERSION:-3.0.12}"

say() { printf '== %s\n' "$*"; }
mkdir -p "$CACHE"

say "kcat"
if ! command -v kcat >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q kcat >/dev/null
fi
kcat -V 2>&1 | grep -m1 Version

say "python clients ($VENV)"
if ! [ -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" - "$CONFLUENT_KAFKA_VERSION" "$KAFKA_PYTHON_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
assert version("confluent-kafka") == sys.argv[1]
assert version("kafka-python") == sys.argv[2]
EOF
then
  "$VENV/bin/pip" install -q "confluent-kafka==$CONFLUENT_KAFKA_VERSION" "kafka-python==$KAFKA_PYTHON_VERSION"
fi
"$VENV/bin/python" -c 'import confluent_kafka, kafka; print("confluent-kafka", confluent_kafka.version(), "librdkafka", confluent_kafka.libversion()[0]); print("kafka-python", kafka.__version__)'

say "java (maven)"
command -v mvn >/dev/null || { echo "mvn not found: apt-get install maven" >&2; exit 1; }
# Resolve every plugin and dependency the test run needs, so that the tests
# run offline (mvn -o). Compiling once pulls the build plugins; surefire's
# JUnit provider is resolved only when tests run, so it is fetched by name.
# Then surefire runs once online with no test selected: that loads the
# plugin's whole runtime (surefire-booter, plexus-utils 1.1, ...). Without
# it, a ~/.m2 holding only the poms of some of those (seen after
# `scripts/kafka-peer.sh fetch` had run first) failed the offline run.
SUREFIRE_VERSION="$(sed -n 's:.*<surefire.version>\(.*\)</surefire.version>.*:\1:p' broker/tests/clients/java/pom.xml)"
(cd broker/tests/clients/java &&
  mvn -q -B -Dstyle.color=never dependency:go-offline test-compile -DskipTests >/dev/null 2>&1 &&
  mvn -q -B -Dstyle.color=never dependency:get -Dartifact="org.apache.maven.surefire:surefire-junit-platform:$SUREFIRE_VERSION" >/dev/null 2>&1 &&
  mvn -q -B -Dstyle.color=never test -Dtest=NoSuchTest -Dsurefire.failIfNoSpecifiedTests=false >/dev/null 2>&1) || {
  (cd broker/tests/clients/java && mvn -B dependency:go-offline test-compile -DskipTests | tail -40) >&2
  exit 1
}
echo "java test project resolved"
scripts/kafka-peer.sh fetch >/dev/null
echo "apache kafka jars: $(scripts/kafka-peer.sh classpath)"

say "go (franz-go)"
(cd broker/tests/clients/go && go mod download && go vet ./... && go test -c -o /dev/null .)
(cd broker/tests/clients/go && go list -m -f "{{.Path}} {{.Version}}" github.com/twmb/franz-go github.com/twmb/franz-go/pkg/kadm)

say "clients installed"
