#!/usr/bin/env bash
# Installs what the tests need beyond Rust, pinned, into .tools/ (ignored by git):
#   confluent-kafka 2.16 (Python, in .tools/venv): a foreign Kafka client for the tests that
#   write bytes retry-kafka did not produce.
#   redis-server and redis-cli 7.x, Debian's package (system-wide: apt needs root, or sudo;
#   redis-server depends on redis-tools, which has redis-cli: the Redis Cluster tests create
#   their cluster with `redis-cli --cluster create`; the Sentinel tests run the sentinels as
#   `redis-server --sentinel`, so Debian's redis-sentinel package is not needed), and openssl, which makes the
#   certificates of the TLS tests' servers.
#   libssl-dev and pkg-config (Debian's), for the kafka-ssl feature the tests build with (TLS
#   and SASL/SCRAM against Apache Kafka); libsasl2-dev, for kafka-gssapi, which the
#   `cargo doc --all-features` step builds.
#   The tests start their own servers on free loopback ports; the package's own service is
#   stopped so nothing listens on 6379 behind the tests' back.
#   PostgreSQL (Debian's package `postgresql`, its server binaries in
#   /usr/lib/postgresql/<version>/bin): the tests initdb a cluster of their own in a temp
#   directory, as the `postgres` user when run as root; the package's own cluster is stopped.
#   Its server is built with OpenSSL: tests/postgres_tls.rs turns ssl on with certificates the
#   openssl CLI makes.
#   Apache Kafka 4.4.0, the real broker (KRaft), as jars from Maven Central into
#   .tools/kafka-4.4.0/libs/ (Maven resolves scripts/kafka/pom.xml, checksums strict; its
#   local repository is .tools/maven-repo). Needs Java 17+ and Maven: Debian's
#   openjdk-17-jre-headless and maven (not installed by this script).
# Idempotent: what is already there and verified is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/downloads"

# The newest 4.x release on Maven Central; its jars and their dependencies are Java 17 bytecode
# and the broker runs on OpenJDK 17 (scripts/kafka/pom.xml says more). Keep in step with
# kafka.version there and APACHE_KAFKA_VERSION in src/lib.rs.
KAFKA_VERSION="4.4.0"

install_foreign_client() {
    if [ -x "$TOOLS/venv/bin/python" ] && "$TOOLS/venv/bin/python" -c 'import confluent_kafka, sys; sys.exit(not confluent_kafka.__version__.startswith("2.16"))' 2>/dev/null; then
        return
    fi
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check "confluent-kafka==2.16.*"
    "$TOOLS/venv/bin/python" -c 'import confluent_kafka; print("confluent-kafka", confluent_kafka.__version__)'
}

install_ssl_headers() {
    if pkg-config --exists openssl libsasl2 2>/dev/null; then
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libssl-dev libsasl2-dev pkg-config >/dev/null
    echo "openssl $(pkg-config --modversion openssl) headers for rdkafka's ssl feature," \
        "libsasl2 $(pkg-config --modversion libsasl2) for its gssapi feature"
}

install_redis() {
    if command -v redis-server >/dev/null && redis-server --version | grep -q 'v=7\.' \
        && command -v redis-cli >/dev/null && command -v openssl >/dev/null; then
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools openssl >/dev/null
    # Debian starts a service on install where there is an init system; the tests do not use it.
    $sudo service redis-server stop >/dev/null 2>&1 || true
    redis-server --version
}

install_postgres() {
    if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && command -v openssl >/dev/null; then
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql openssl >/dev/null
    # The package starts its own cluster on 5432 where there is an init system; the tests
    # start theirs on free ports.
    $sudo service postgresql stop >/dev/null 2>&1 || true
    ls -d /usr/lib/postgresql/*/bin
}

require_java() {
    if ! command -v java >/dev/null; then
        echo "java is missing: the Apache Kafka $KAFKA_VERSION broker of the tests needs Java 17+;" \
            "install it with: sudo apt-get install openjdk-17-jre-headless" >&2
        exit 1
    fi
    local major
    major=$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n 1)
    if [ -z "$major" ] || [ "$major" -lt 17 ]; then
        echo "java is version ${major:-unknown}: the Apache Kafka $KAFKA_VERSION broker needs Java 17+;" \
            "install it with: sudo apt-get install openjdk-17-jre-headless" >&2
        exit 1
    fi
}

install_kafka() {
    local home="$TOOLS/kafka-$KAFKA_VERSION"
    require_java
    mkdir -p "$home/config"
    # The broker's logging configuration: the committed file, copied when it differs.
    if ! cmp -s scripts/kafka/log4j2.properties "$home/config/log4j2.properties"; then
        cp scripts/kafka/log4j2.properties "$home/config/log4j2.properties"
    fi
    if [ "$(cat "$home/.installed" 2>/dev/null)" = "$KAFKA_VERSION" ] \
        && [ -f "$home/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
        return
    fi
    if ! command -v mvn >/dev/null; then
        echo "mvn is missing: Apache Kafka $KAFKA_VERSION is installed from Maven Central with Maven;" \
            "install it with: sudo apt-get install maven" >&2
        exit 1
    fi
    rm -rf "$home/libs.part" "$home/.installed"
    # --strict-checksums: a checksum that does not match fails the download instead of warning.
    # Maven's output goes to a log (it writes terminal escapes even in batch mode), shown on failure.
    local log="$TOOLS/downloads/kafka-$KAFKA_VERSION-maven.log"
    if ! mvn --batch-mode --strict-checksums -Dstyle.color=never \
        -f scripts/kafka/pom.xml \
        -Dmaven.repo.local="$TOOLS/maven-repo" \
        -Dkafka.version="$KAFKA_VERSION" \
        -Dkafka.libs="$home/libs.part" \
        dependency:copy-dependencies >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "Maven could not install Apache Kafka $KAFKA_VERSION (log: $log)" >&2
        exit 1
    fi
    if [ ! -f "$home/libs.part/kafka_2.13-$KAFKA_VERSION.jar" ]; then
        echo "Maven did not copy kafka_2.13-$KAFKA_VERSION.jar into $home/libs.part" >&2
        exit 1
    fi
    rm -rf "$home/libs"
    mv "$home/libs.part" "$home/libs"
    echo "$KAFKA_VERSION" >"$home/.installed"
    echo "Apache Kafka $KAFKA_VERSION: $(find "$home/libs" -name '*.jar' | wc -l) jars," \
        "$(du -sh "$home/libs" | cut -f1) in $home/libs"
}

install_foreign_client
install_kafka
install_redis
install_postgres
install_ssl_headers
echo "test dependencies ready in $TOOLS"
