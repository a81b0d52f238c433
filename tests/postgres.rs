//! The conformance suite with retries, dead letters and parked entries in a real PostgreSQL
//! server (Debian's `postgresql`, a cluster per test in a temp directory) and main topics on
//! librdkafka's mock cluster (`Tiered<Kafka, Postgres>`; `tests/postgres_redis.rs` runs it on
//! `Tiered<Redis, Postgres>`: the cases share handlers and their log, so one suite per test
//! binary). Then what only this store promises: a hand-off written twice is
//! one row, workers share due rows with `SKIP LOCKED` and never both get one, dead letters are
//! read like any other backend's, and a user who may not create the tables is told what to
//! grant.

mod conformance;
mod kafka_support;
mod postgres_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use postgres_support::{connect, rows_in_state, start_server, test_backend, test_settings, PostgresHarness};
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::postgres::Postgres;
use retry_kafka::backend::{
    Browse, Consumer, Fetched, HandOffId, OutboundRecord, Position, Publish, RetryStore, Topic, TopicAdmin,
    TopicRole,
};
use retry_kafka::error::BackendError;
use retry_kafka::handler::ErrorKind;
use retry_kafka::headers::{FailureContext, Headers};

mod on_kafka {
    use super::*;
    use crate::conformance;
    use crate::kafka_support::KafkaHarness;

    async fn harness() -> PostgresHarness<KafkaHarness> {
        let kafka = KafkaHarness {
            backend: Kafka::embedded().expect("embedded cluster"),
            broker: None,
        };
        PostgresHarness::start(kafka).await
    }

    crate::conformance_suite!(harness);
    crate::key_order_suite!(harness);
}

/// A retry of `order`'s first failure (partition 0, offset `offset` of `orders`), due `due_in`
/// from now.
fn retry_of(offset: u64, attempts: u32, due_in: i64) -> OutboundRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut headers = Headers::new();
    headers.insert("app-header", "kept");
    FailureContext {
        original_topic: "orders".into(),
        original_partition: 0,
        original_offset: offset,
        original_timestamp_ms: None,
        group: "billing".into(),
        attempts,
        due_at_ms: Some(now + due_in),
        first_failure_at_ms: now,
        last_failure_at_ms: now,
        error_kind: ErrorKind::Transient,
        error_message: "bank unavailable".into(),
        replays: None,
    }
    .write_to(&mut headers);
    OutboundRecord {
        partition: Some(0),
        key: Some(format!("{offset}").into()),
        payload: Some(format!("{{\"id\":{offset}}}").into()),
        headers,
    }
}

const LEVEL: TopicRole = TopicRole::Retry { level: 1 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_written_again_after_a_crash_is_one_row() {
    let server = start_server().await;
    let postgres = test_backend(&server.url());
    let topic = "orders.billing.retry.1";
    postgres.create_topic(&Topic::new(topic, LEVEL), 1).await.unwrap();
    // The main topic's consumer wrote the retry, then crashed before committing its offset:
    // the message comes again, fails again, and the same retry is written again.
    let first = postgres
        .send(&Topic::new(topic, LEVEL), retry_of(7, 1, 60_000))
        .await
        .unwrap();
    let again = postgres
        .send(&Topic::new(topic, LEVEL), retry_of(7, 1, 60_000))
        .await
        .unwrap();
    assert_eq!(first, again, "the second write finds the first row");
    // Another failure of the same message (a later attempt) is a row of its own.
    let later = postgres
        .send(&Topic::new(topic, LEVEL), retry_of(7, 2, 60_000))
        .await
        .unwrap();
    assert_ne!(later, first);
    assert_eq!(rows_in_state(&server, topic, "waiting").await, 2);
    assert_eq!(
        postgres.end_offsets_of(&Topic::new(topic, LEVEL)).await.unwrap(),
        [2],
        "no offset was spent on the repeat"
    );

    // A level's hand-off repeated: the next hop is written once, its source marked handled.
    postgres
        .create_topic(
            &Topic::new("orders.billing.retry.2", TopicRole::Retry { level: 2 }),
            1,
        )
        .await
        .unwrap();
    let mut worker = postgres.consume(Topic::new(topic, LEVEL)).await.unwrap();
    let next = "orders.billing.retry.2";
    let hop = retry_of(7, 2, 60_000);
    let from = Position {
        partition: 0,
        offset: first.offset,
    };
    let to = Topic::new(next, TopicRole::Retry { level: 2 });
    worker.hand_off(HandOffId(0), from, to.clone(), hop.clone());
    let a = handed_off(&worker).await;
    worker.hand_off(HandOffId(1), from, to, hop);
    let b = handed_off(&worker).await;
    assert_eq!(a, b);
    assert_eq!(
        postgres
            .read(&Topic::new(next, TopicRole::Retry { level: 2 }), &[])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(rows_in_state(&server, topic, "handled").await, 1);
    worker.close().await.unwrap();
}

/// The one hand-off the worker reports next, durable.
async fn handed_off(worker: &impl Consumer) -> Position {
    let mut finished = Vec::new();
    worker.hand_off_reports().wait(&mut finished).await;
    assert_eq!(finished.len(), 1);
    finished.pop().unwrap().result.unwrap()
}

/// Everything a worker gets until nothing is left, acknowledging as it goes.
async fn drain(worker: impl Consumer, pause: Duration) -> Vec<u64> {
    drain_until_idle(worker, pause, Duration::from_millis(1500)).await
}

/// [`drain`], ending after `idle` without a record.
async fn drain_until_idle(mut worker: impl Consumer, pause: Duration, idle: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(idle, worker.next()).await {
            Ok(Ok(Fetched::Record(record))) => {
                got.push(record.offset);
                tokio::time::sleep(pause).await;
                worker.ack(record.partition, record.offset).await.unwrap();
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("{error}"),
            Err(_) => break,
        }
    }
    worker.close().await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_due_rows_and_never_both_get_one() {
    const ROWS: u64 = 200;
    let server = start_server().await;
    let postgres = test_settings(&server.url()).batch(8).build().unwrap();
    let topic = "orders.billing.retry.1";
    postgres.create_topic(&Topic::new(topic, LEVEL), 1).await.unwrap();
    for offset in 0..ROWS {
        postgres
            .send(&Topic::new(topic, LEVEL), retry_of(offset, 1, -1))
            .await
            .unwrap();
    }
    // One not due yet: neither worker may take it.
    postgres
        .send(&Topic::new(topic, LEVEL), retry_of(ROWS, 1, 600_000))
        .await
        .unwrap();
    let level = Topic::new(topic, LEVEL);
    let a = postgres.consume(level.clone()).await.unwrap();
    let b = postgres.consume(level).await.unwrap();
    let (a, b) = tokio::join!(
        tokio::spawn(drain(a, Duration::from_millis(2))),
        tokio::spawn(drain(b, Duration::from_millis(2)))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (set_a, set_b): (HashSet<u64>, HashSet<u64>) =
        (a.iter().copied().collect(), b.iter().copied().collect());
    assert!(set_a.is_disjoint(&set_b), "a row went to both workers");
    assert_eq!(
        a.len() + b.len(),
        ROWS as usize,
        "every due row once, the one not due never"
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "one worker did everything: {} and {}",
        a.len(),
        b.len()
    );
    assert_eq!(rows_in_state(&server, topic, "handled").await, ROWS as i64);
    assert_eq!(rows_in_state(&server, topic, "waiting").await, 1);
    eprintln!(
        "{ROWS} due rows: {} by one worker, {} by the other",
        a.len(),
        b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_rows_come_back_when_its_lease_ends() {
    let server = start_server().await;
    let postgres = test_backend(&server.url());
    let topic = "orders.billing.retry.1";
    postgres.create_topic(&Topic::new(topic, LEVEL), 1).await.unwrap();
    postgres
        .send(&Topic::new(topic, LEVEL), retry_of(1, 1, -1))
        .await
        .unwrap();
    let level = Topic::new(topic, LEVEL);
    // A worker that took the row and died (its process gone): its lease is all that is left.
    let client = connect(&server.url()).await;
    client
        .execute(
            "UPDATE retry_kafka_records SET claimed_by = 'dead-worker', claimed_until_ms = $1",
            &[&(now_ms() + 1500)],
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Idle for longer than the lease has left: the row comes once it ends (an idle wait of
    // the lease's own length ended, now and then, just before the claim).
    let got = drain_until_idle(
        postgres.consume(level).await.unwrap(),
        Duration::ZERO,
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(got, [0]);
    assert!(rows_in_state(&server, topic, "handled").await == 1);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "taken before the lease ended"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_rows_read_like_any_dead_letter_queue() {
    let server = start_server().await;
    let postgres = test_backend(&server.url());
    let dlq = "orders.billing.dlq";
    postgres
        .create_topic(&Topic::new(dlq, TopicRole::DeadLetter), 2)
        .await
        .unwrap();
    for offset in 0..3 {
        let mut record = retry_of(offset, 4, 0);
        record.headers.retain(|name| name != "rk-due-at");
        postgres
            .send(&Topic::new(dlq, TopicRole::DeadLetter), record)
            .await
            .unwrap();
    }
    assert_eq!(rows_in_state(&server, dlq, "dead_letter").await, 3);
    let letters = retry_kafka::dead_letters::read(&postgres, &Topic::new(dlq, TopicRole::DeadLetter))
        .await
        .unwrap();
    assert_eq!(letters.len(), 3);
    for (n, letter) in letters.iter().enumerate() {
        let context = letter.context.as_ref().expect("a full failure context");
        assert_eq!(context.original_offset, n as u64);
        assert_eq!(context.attempts, 4);
        assert_eq!(letter.record.headers.get_str("app-header"), Some("kept"));
        assert_eq!(letter.record.offset, n as u64);
    }
    // The error columns are there for SQL too.
    let client = connect(&server.url()).await;
    let row = client
        .query_one(
            "SELECT error_kind, error_message, attempts, \"group\" FROM retry_kafka_records WHERE topic = $1 LIMIT 1",
            &[&dlq],
        )
        .await
        .unwrap();
    let (kind, message, attempts, group): (String, String, i32, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (kind.as_str(), message.as_str(), attempts, group.as_str()),
        ("transient", "bank unavailable", 4, "billing")
    );
    // Nothing is ever swept from a dead-letter queue, and end offsets are as Browse promises.
    assert_eq!(
        postgres
            .end_offsets_of(&Topic::new(dlq, TopicRole::DeadLetter))
            .await
            .unwrap(),
        [3, 0]
    );
    assert_eq!(
        postgres
            .read(&Topic::new(dlq, TopicRole::DeadLetter), &[2])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_create_the_tables_is_told_what_to_grant() {
    let server = start_server().await;
    let owner = connect(&server.url()).await;
    owner.batch_execute("CREATE ROLE app LOGIN").await.unwrap();
    // PostgreSQL 15 and later give no one but the owner CREATE on schema public; say so for
    // older servers too.
    owner
        .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .await
        .unwrap();

    let app = test_backend(&server.url_as("app"));
    let error = app
        .partitions(&Topic::new("orders.billing.retry.1", LEVEL))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, BackendError::Refused { .. }), "{message}");
    assert!(
        message.contains("GRANT CREATE ON SCHEMA public TO app"),
        "{message}"
    );
    assert!(message.contains("sql/postgres.sql"), "{message}");
    eprintln!("{message}");

    // The owner runs the migration (what psql -f sql/postgres.sql does) and grants the rows:
    // the app needs no CREATE from then on.
    test_backend(&server.url()).migrate().await.unwrap();
    let error = Postgres::builder(server.url_as("app"))
        .build()
        .unwrap()
        .partitions(&Topic::new("orders.billing.retry.1", LEVEL))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("GRANT") || error.contains("grant"), "{error}");
    owner
        .batch_execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON retry_kafka_schema, retry_kafka_partitions, \
             retry_kafka_records TO app",
        )
        .await
        .unwrap();
    let app = Arc::new(test_backend(&server.url_as("app")));
    app.create_topic(&Topic::new("orders.billing.retry.1", LEVEL), 1)
        .await
        .unwrap();
    app.send(&Topic::new("orders.billing.retry.1", LEVEL), retry_of(1, 1, 0))
        .await
        .unwrap();
    assert_eq!(
        app.read(&Topic::new("orders.billing.retry.1", LEVEL), &[])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_file_is_the_schema_the_backend_creates() {
    let server = start_server().await;
    let client = connect(&server.url()).await;
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/retry-kafka/sql/postgres.sql"
    ))
    .unwrap();
    client.batch_execute(&sql).await.unwrap();
    // Applied twice (idempotent), then the backend finds it and creates nothing.
    client.batch_execute(&sql).await.unwrap();
    let postgres = test_backend(&server.url());
    postgres.migrate().await.unwrap();
    postgres
        .create_topic(&Topic::new("t.g.retry.1", LEVEL), 1)
        .await
        .unwrap();
    assert_eq!(
        postgres
            .partitions(&Topic::new("t.g.retry.1", LEVEL))
            .await
            .unwrap(),
        Some(1)
    );
}
