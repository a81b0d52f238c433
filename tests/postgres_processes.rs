//! PostgreSQL behaviour that needs real processes: `rk-worker` runs `retry_kafka::run()` with
//! `DATABASE_URL` beside `REDIS_URL` or `KAFKA_BROKERS`, so it picks `Tiered<Redis, Postgres>`
//! or `Tiered<Kafka, Postgres>` as a service would (main topic on `redis-server` or on Apache
//! Kafka, retries and dead letters in PostgreSQL). A worker killed with SIGKILL and restarted
//! loses nothing; of two workers, the survivor of a SIGKILL finishes what the other left, its
//! claimed rows included once their lease ends. Every invalid order is dead-lettered once, in
//! PostgreSQL, and nowhere on the main topic's transport.

mod conformance;
mod kafka_support;
mod postgres_support;
mod process_support;
mod redis_support;

use conformance::Harness;
use kafka_support::KafkaHarness;
use postgres_support::{assert_nothing_waiting, PostgresHarness};
use process_support::{expected_dead, order_id, Worker, DLQ, TOPIC};
use redis_support::{assert_nothing_pending_on, RedisHarness};
use retry_kafka::backend::{Backend as _, Browse as _, Topic, TopicAdmin as _, TopicRole};

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

/// A worker on Apache Kafka's main topic with the retries in PostgreSQL, with the consumer
/// settings of the Kafka process tests. Its log is named apart from the Redis tests' workers
/// of the same name: the tests of this binary run at once.
fn spawn_kafka_worker(harness: &PostgresHarness<KafkaHarness>, name: &str) -> Worker {
    Worker::spawn(
        &format!("kafka-{name}"),
        &[
            ("KAFKA_BROKERS", harness.main.backend.brokers().to_owned()),
            ("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000".into()),
            ("KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "500".into()),
            ("DATABASE_URL", harness.server.url()),
            ("POSTGRES_LEASE_MS", "1500".into()),
            ("POSTGRES_KEEP_HANDLED_MS", "3600000".into()),
        ],
    )
}

/// A broker of the test's own (the worker's topic and group are built in) and a PostgreSQL
/// server.
async fn kafka_harness() -> PostgresHarness<KafkaHarness> {
    PostgresHarness::start(KafkaHarness::on_own_broker(|settings| settings).await).await
}

/// Nothing unacknowledged on the main topic, no row of the retry level waiting (on Redis, no
/// entry pending either); the dead letters of `published` orders are rows in PostgreSQL, one
/// per invalid order, and the main topic's transport has no dead-letter topic.
async fn assert_all_settled<M: Harness>(harness: &PostgresHarness<M>, published: u64) {
    let main = harness.main.backend();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while main.lag(&Topic::main(TOPIC), "proc-workers").await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the main topic was not all acknowledged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_nothing_waiting(&harness.postgres, RETRY).await;
    let dead_letters = harness
        .postgres
        .read(&Topic::new(DLQ, TopicRole::DeadLetter), &[])
        .await
        .unwrap();
    let mut dead: Vec<u64> = dead_letters.iter().map(order_id).collect();
    dead.sort_unstable();
    let mut expected: Vec<u64> = expected_dead(published).into_iter().collect();
    expected.sort_unstable();
    assert_eq!(dead, expected, "one dead letter per invalid order, in PostgreSQL");
    let elsewhere = main
        .partitions(&Topic::new(DLQ, TopicRole::DeadLetter))
        .await
        .unwrap();
    assert_eq!(
        elsewhere, None,
        "a dead-letter topic on the main topic's transport"
    );
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
    assert_nothing_pending_on(&harness.main.backend, TOPIC, "proc-workers").await;
    assert_all_settled(&harness, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_work_and_one_finishes_what_a_killed_one_left() {
    let harness = harness().await;
    let (_workers, published) =
        process_support::a_survivor_finishes_what_a_killed_worker_left(&harness, |name| {
            spawn_worker(&harness, name)
        })
        .await;
    assert_nothing_pending_on(&harness.main.backend, TOPIC, "proc-workers").await;
    assert_all_settled(&harness, published).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_apache_kafka_a_worker_killed_mid_run_and_restarted_loses_nothing() {
    let harness = kafka_harness().await;
    // Repeats are bounded by what was in flight or not yet committed at the kill (Kafka's
    // auto-commit runs every second), as in tests/kafka_processes.rs.
    let _workers = process_support::a_killed_worker_restarted_loses_nothing(
        &harness,
        |name| spawn_kafka_worker(&harness, name),
        200,
    )
    .await;
    assert_all_settled(&harness, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_apache_kafka_two_workers_share_the_group_and_one_finishes_what_a_killed_one_left() {
    let harness = kafka_harness().await;
    let (_workers, published) =
        process_support::a_survivor_finishes_what_a_killed_worker_left(&harness, |name| {
            spawn_kafka_worker(&harness, name)
        })
        .await;
    assert_all_settled(&harness, published).await;
}
