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
