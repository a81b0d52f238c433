#!/usr/bin/env bash
# The soak (not in CI; tests/soak.rs, ignored by `cargo test`): a million events through Apache
# Kafka with the retries and dead letters on redis-server (or in PostgreSQL), three worker
# processes, 20 SIGKILLs of a worker at random moments and one broker restart; at the end 0 lost
# (read without retry-kafka: the workers' logs, and redis-cli or psql), the repeats counted
# against their bound, every worker's RSS sampled. Debug build, as the tests. Needs what
# scripts/install-test-deps.sh installs.
#
#   ./scripts/soak.sh                                 # 1,000,000 events, 20 kills
#   SOAK_EVENTS=200000 SOAK_KILLS=10 ./scripts/soak.sh
#   SOAK_STORE=postgres ./scripts/soak.sh             # retries and dead letters in PostgreSQL
#   SOAK_SEED=42 ./scripts/soak.sh                    # the same kill moments and victims again
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_EVENTS="${SOAK_EVENTS:-1000000}" SOAK_KILLS="${SOAK_KILLS:-20}"
cargo test --test soak -- --ignored --nocapture
