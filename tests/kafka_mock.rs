//! The conformance suite on librdkafka's in-process mock cluster: the full Kafka path,
//! nothing installed. Each test gets a cluster of its own.

mod conformance;
mod kafka_support;

use conformance::FaultInjection;
use kafka_support::KafkaHarness;
use retry_kafka::backend::kafka::Kafka;

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
key_order_suite!(mock);
fault_injection_suite!(mock);

// Provisioning, on the mock cluster (its topics are created through the mock's own API).

use conformance::Harness;
use retry_kafka::app::Provisioning;
use retry_kafka::App;

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

// Retry and dead-letter topics on another cluster (`retry_brokers`), as KafkaConsumerRetry
// allows; and keys partitioned as on every other client.

use retry_kafka::backend::kafka::EmbeddedKafka;
use std::sync::Arc;

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "mock.split", key = "id")]
struct Transfer {
    id: u64,
}

#[retry_handler(group = "mock-split", retries = ["200ms"], dlq)]
async fn transfer(transfer: Transfer) -> Result<(), HandlerError> {
    Err(HandlerError::transient(format!(
        "transfer {} refused",
        transfer.id
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_topics_may_live_on_another_cluster() {
    kafka_support::init_tracing();
    let main = Arc::new(EmbeddedKafka::start(1).unwrap());
    let retry = Arc::new(EmbeddedKafka::start(1).unwrap());
    main.create_topic("mock.split", 2).unwrap();
    // The mock cluster cannot create topics over the protocol: make them on the retry cluster.
    retry.create_topic("mock.split.mock-split.retry.1", 2).unwrap();
    retry.create_topic("mock.split.mock-split.dlq", 2).unwrap();
    retry.create_topic("mock.split.mock-split.parked", 2).unwrap();
    let backend = Kafka::builder(main.bootstrap_servers())
        .retry_brokers(retry.bootstrap_servers())
        .consumer_property("session.timeout.ms", "1500")
        .consumer_property("heartbeat.interval.ms", "300")
        .build()
        .unwrap();
    let app = App::builder()
        .backend(backend.clone())
        .handlers(|spec| spec.group() == "mock-split")
        .provisioning(Provisioning::Verify)
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    app.producer().send(&Transfer { id: 9 }).await.unwrap();

    let on_retry_cluster = KafkaHarness {
        backend: Kafka::builder(retry.bootstrap_servers()).build().unwrap(),
        broker: None,
    };
    let on_main_cluster = KafkaHarness {
        backend: Kafka::builder(main.bootstrap_servers()).build().unwrap(),
        broker: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_retry_cluster
        .records("mock.split.mock-split.dlq")
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the message never reached the DLQ on the retry cluster"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await.unwrap();
    assert_eq!(
        on_retry_cluster
            .records("mock.split.mock-split.retry.1")
            .await
            .len(),
        1
    );
    let dead = on_retry_cluster.records("mock.split.mock-split.dlq").await;
    assert_eq!(dead[0].headers.get_str("rk-attempts"), Some("2"));
    assert_eq!(dead[0].headers.get_str("rk-original-topic"), Some("mock.split"));
    // Nothing of the retry path exists on the main cluster.
    assert!(on_main_cluster
        .end_offsets("mock.split.mock-split.dlq")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_same_partition_as_with_java_producers() {
    let harness = mock().await;
    harness.create_topic("mock.keys", 5).await;
    let memory = retry_kafka::backend::memory::InMemory::new();
    memory.create_topic("mock.keys", 5);
    let kafka_producer = retry_kafka::Producer::new(harness.backend());
    let memory_producer = retry_kafka::Producer::new(memory);
    for id in 0..50 {
        let event = Transfer { id };
        let on_kafka = kafka_producer
            .send_to("mock.keys", &event, retry_kafka::headers::Headers::new())
            .await
            .unwrap();
        let in_memory = memory_producer
            .send_to("mock.keys", &event, retry_kafka::headers::Headers::new())
            .await
            .unwrap();
        assert_eq!(on_kafka.partition, in_memory.partition, "key {id}");
    }
}

#[test]
fn security_properties_pass_through_and_unknown_ones_are_named() {
    // SASL PLAIN is built into the default build (TLS needs the `kafka-ssl` feature).
    Kafka::builder("127.0.0.1:1")
        .property("security.protocol", "SASL_PLAINTEXT")
        .property("sasl.mechanism", "PLAIN")
        .property("sasl.username", "billing")
        .property("sasl.password", "secret")
        .build()
        .expect("SASL PLAIN settings are accepted");
    let error = Kafka::builder("127.0.0.1:1")
        .consumer_property("sesion.timeout.ms", "1000")
        .build()
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(message.starts_with("invalid consumer property"), "{message}");
    assert!(
        message.contains("sesion.timeout.ms"),
        "the message names the property: {message}"
    );
    let error = Kafka::builder("127.0.0.1:1")
        .producer_property("acks", "most")
        .build()
        .err()
        .unwrap();
    assert!(error.to_string().contains("acks"), "{error}");
}
