//! PostgreSQL behaviour that needs real processes: `rk-worker` runs `retry_kafka::run()` with
//! `REDIS_URL` and `DATABASE_URL` set, so it picks `Tiered<Redis, Postgres>` as a service
//! would (main topic on `redis-server`, retries and dead letters in PostgreSQL). A worker
//! killed with SIGKILL and restarted loses nothing; of two workers, the survivor of a SIGKILL
//! finishes what the other left, its claimed rows included once their lease ends.

mod conformance;
mod postgres_support;
mod process_support;
mod redis_support;

use postgres_support::{assert_nothing_waiting, PostgresHarness};
use process_support::{Worker, TOPIC};
use redis_support::{assert_nothing_pending_on, RedisHarness};

/// The retry level of the worker's handler.
const RETRY: &str = "proc.orders.proc-workers.retry.1";

async fn harness() -> PostgresHarness<RedisHarness> {
    let redis = tokio::task::spawn_blocking(RedisHarness::start).await.unwrap();
    PostgresHarness::start(redis).await
}

fn spawn_worker(harness: &PostgresHarness<RedisHarness>, name: &str) -> Worker {
    Worker::spawn(
        name,
        &[
            ("REDIS_URL", harness.main.server.url()),
            ("REDIS_SESSION_TIMEOUT_MS", "1500".into()),
            ("REDIS_KEEP_ACKNOWLEDGED_MS", "3600000".into()),
            ("DATABASE_URL", harness.server.url()),
            ("POSTGRES_LEASE_MS", "1500".into()),
            ("POSTGRES_KEEP_HANDLED_MS", "3600000".into()),
        ],
    )
}

/// Nothing unacknowledged on the main topic, no row of the retry level waiting.
async fn assert_all_settled(harness: &PostgresHarness<RedisHarness>) {
    use retry_kafka::backend::{Backend, Browse, Topic, TopicRole};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while harness
        .main
        .backend
        .lag(&Topic::main(TOPIC), "proc-workers")
        .await
        .unwrap()
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the main topic was not all acknowledged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_nothing_pending_on(&harness.main.backend, TOPIC, "proc-workers").await;
    assert_nothing_waiting(&harness.postgres, RETRY).await;
    let retries = harness
        .postgres
        .read(&Topic::new(RETRY, TopicRole::Retry { level: 1 }), &[])
        .await
        .unwrap();
    assert!(!retries.is_empty(), "the retries were rows in PostgreSQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_and_restarted_loses_nothing() {
    let harness = harness().await;
    // Repeats are bounded by what was acknowledged but not yet flushed at the kill.
    let _workers = process_support::a_killed_worker_restarted_loses_nothing(
        &harness,
        |name| spawn_worker(&harness, name),
        100,
    )
    .await;
    assert_all_settled(&harness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_work_and_one_finishes_what_a_killed_one_left() {
    let harness = harness().await;
    let _workers = process_support::a_survivor_finishes_what_a_killed_worker_left(&harness, |name| {
        spawn_worker(&harness, name)
    })
    .await;
    assert_all_settled(&harness).await;
}
