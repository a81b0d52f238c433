//! The conformance suite on a Redis Cluster (three masters, three replicas) with every member
//! reading every partition (`RedisBuilder::unordered`): claims of idle entries span the shards.
//! A binary of its own: the suite's handlers and what they saw are global to a process.

mod conformance;
mod redis_support;

use redis_support::RedisClusterHarness;

async fn unordered_cluster() -> RedisClusterHarness {
    tokio::task::spawn_blocking(RedisClusterHarness::start_cluster_unordered)
        .await
        .expect("start the redis cluster")
}

conformance_suite!(unordered_cluster);
