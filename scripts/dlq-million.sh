#!/usr/bin/env bash
# The `retry-kafka` tool on a million dead letters on Apache Kafka (retry-kafka-cli/tests/million.rs
# at full size): lists them with a filter and replays them all, prints the time and the tool's
# peak RSS of each, and fails if the RSS passes the test's bound. The tool runs in release (a
# debug build takes minutes); the test itself in debug, as everywhere. CI runs the same test
# at 200,000 entries in debug (scripts/test.sh). Needs what scripts/install-test-deps.sh installs.
#
#   ./scripts/dlq-million.sh            # 1,000,000
#   ./scripts/dlq-million.sh 5000000    # another size
set -euo pipefail
cd "$(dirname "$0")/.."
entries="${1:-1000000}"
cargo build --release -p retry-kafka-cli
RK_DLQ_ENTRIES="$entries" RK_TOOL="$PWD/target/release/retry-kafka" \
    cargo test -p retry-kafka-cli --test million -- --nocapture
