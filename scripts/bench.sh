#!/usr/bin/env bash
# Every benchmark, as docs/benchmarks.md shows them: the success path against
# hand-written loops, then the failure path (failures and outage, on Kafka each against the
# hand-written rdkafka forwarding loop, its floor, storing offsets as it goes and from the
# delivery reports; lateness; the kafkajs peer), batch handlers and rate limits, key-ordered
# retries against unordered ones, a 12-partition topic on a Redis Cluster against one server.
# Installs the servers first (scripts/install-test-deps.sh). Release build; ~15 minutes on
# 2 cores. BENCH_ROUNDS (default 3), BENCH_BACKEND=kafka|redis, KAFKA_BROKERS / REDIS_URL to
# use servers of your own; see the header of each file in benches/.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh >/dev/null
command -v node >/dev/null || { echo "node is missing (the peer benchmark runs kafkajs): apt-get install -y nodejs npm" >&2; exit 1; }

echo "== machine: $(nproc) cores, $(uname -sr); $(rustc --version); node $(node --version)"
echo "== success path: cargo bench --bench throughput"
BENCH_WAITING="${BENCH_WAITING:-100000}" cargo bench --bench throughput 2>/dev/null
echo "== failure path: cargo bench --bench failures"
cargo bench --bench failures 2>/dev/null
echo "== batch handlers and rate limits: cargo bench --bench handlers"
cargo bench --bench handlers 2>/dev/null
echo "== key-ordered retries: cargo bench --bench key_order"
cargo bench --bench key_order 2>/dev/null
echo "== Redis Cluster against one server: cargo bench --bench redis_cluster"
cargo bench --bench redis_cluster 2>/dev/null
