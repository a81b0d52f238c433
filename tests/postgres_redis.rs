//! The conformance suite on `Tiered<Redis, Postgres>`: main topics on a real `redis-server`,
//! retries, dead letters and parked entries in a real PostgreSQL server, each started per test
//! on a free loopback port and stopped after.

mod conformance;
mod postgres_support;
mod redis_support;

use postgres_support::PostgresHarness;
use redis_support::RedisHarness;

async fn harness() -> PostgresHarness<RedisHarness> {
    let redis = tokio::task::spawn_blocking(RedisHarness::start).await.unwrap();
    PostgresHarness::start(redis).await
}

conformance_suite!(harness);
key_order_suite!(harness);
