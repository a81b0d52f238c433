//! The conformance suite on a real `redis-server` process, started per test on a free loopback
//! port and stopped after.
//!
//! A server process cannot fail writes on demand, so the fault-injection cases run on the
//! in-process broker and librdkafka's mock cluster only.

mod conformance;
mod redis_support;

use redis_support::RedisHarness;

async fn redis() -> RedisHarness {
    tokio::task::spawn_blocking(RedisHarness::start)
        .await
        .expect("start redis-server")
}

conformance_suite!(redis);
key_order_suite!(redis);
