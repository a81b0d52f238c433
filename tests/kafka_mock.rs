//! The conformance suite on librdkafka's in-process mock cluster: the full Kafka path,
//! nothing installed. Each test gets a cluster of its own.

mod conformance;
mod kafka_support;

use conformance::FaultInjection;
use kafka_support::KafkaHarness;
use retry_kafka::kafka::Kafka;

async fn mock() -> KafkaHarness {
    kafka_support::init_tracing();
    KafkaHarness {
        backend: Kafka::embedded().expect("embedded cluster"),
        broker: None,
    }
}

impl FaultInjection for KafkaHarness {
    async fn fail_next_sends(&self, _topic: &str, count: u32) {
        // The mock fails produce requests cluster-wide; the test arms it when the only
        // produce left to happen is the hand-off.
        let cluster = self
            .backend
            .embedded_cluster()
            .expect("only the mock injects faults");
        cluster.fail_next_produces(count as usize);
    }
}

conformance_suite!(mock);
fault_injection_suite!(mock);

// Provisioning, on the mock cluster (its topics are created through the mock's own API).

use conformance::Harness;
use retry_kafka::{App, Provisioning};

async fn start_error(harness: &KafkaHarness, provisioning: Provisioning) -> String {
    let app = App::builder()
        .backend(harness.backend())
        .handlers(|spec| spec.group() == "conf-permanent")
        .provisioning(provisioning)
        .build()
        .unwrap();
    match app.start().await {
        Ok(_) => panic!("start should fail"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_main_topic_fails_start_naming_it() {
    let harness = mock().await;
    assert_eq!(
        start_error(&harness, Provisioning::Create).await,
        "topic \"conf.permanent\" does not exist; create it first: its retry and dead-letter topics copy its \
         partition count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_mode_names_the_missing_retry_topic() {
    let harness = mock().await;
    harness.create_topic("conf.permanent", 3).await;
    assert_eq!(
        start_error(&harness, Provisioning::Verify).await,
        "topic \"conf.permanent.conf-permanent.retry.1\" does not exist and topic creation is off \
         (Provisioning::Verify)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_mode_copies_the_partition_count_and_rejects_smaller_topics() {
    let harness = mock().await;
    harness.create_topic("conf.permanent", 3).await;
    harness
        .create_topic("conf.permanent.conf-permanent.retry.2", 2)
        .await;
    assert_eq!(
        start_error(&harness, Provisioning::Create).await,
        "topic \"conf.permanent.conf-permanent.retry.2\" has 2 partitions but needs at least 3 (as many as \
         \"conf.permanent\")"
    );
    // Level 1 was created before level 2 was found too small, with the main topic's count.
    assert_eq!(
        harness
            .end_offsets("conf.permanent.conf-permanent.retry.1")
            .await
            .len(),
        3
    );
}

// A broker outage mid-run: fetches, hand-offs and commits fail for a while; nothing is lost.

use retry_kafka::prelude::{retry_handler, Context, Event, HandlerError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "mock.outage", key = "id")]
struct Payment {
    id: u64,
}

static SUCCEEDED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[retry_handler(group = "mock-outage", retries = ["300ms"], dlq)]
async fn settle_payment(payment: Payment, ctx: Context) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    if payment.id.is_multiple_of(5) && ctx.attempt() == 1 {
        return Err(HandlerError::transient("bank busy"));
    }
    SUCCEEDED.lock().unwrap().push(payment.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_run_loses_nothing() {
    let harness = mock().await;
    harness.create_topic("mock.outage", 2).await;
    let app = App::builder()
        .backend(harness.backend())
        .handlers(|spec| spec.group() == "mock-outage")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let producer = app.producer();
    for id in 0..200 {
        producer.send(&Payment { id }).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while SUCCEEDED.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "processing never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cluster = harness.backend.embedded_cluster().unwrap().clone();
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.broker_up(1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done: HashSet<u64> = SUCCEEDED.lock().unwrap().iter().copied().collect();
        if done.len() == 200 && app.backlog().await.unwrap_or(1) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 200 done after the outage",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await.unwrap();
    assert!(harness.records("mock.outage.mock-outage.dlq").await.is_empty());
    let stats = app.stats();
    let stats = stats.handler("settle_payment").unwrap();
    assert!(
        stats.retried[0] >= 40,
        "every 5th payment went through the retry level"
    );
    eprintln!(
        "outage of 3 s: 200 payments done, {} successful attempts in all ({} repeats)",
        stats.succeeded,
        stats.succeeded - 200
    );
}
