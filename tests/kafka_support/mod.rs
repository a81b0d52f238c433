//! Kafka test support: the conformance harness over a `Kafka` backend, and the real Apache
//! Kafka broker (`retry_kafka_suite::ApacheKafka`): one shared by a test binary, or one of a
//! test's own.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use retry_kafka::backend::kafka::{Kafka, KafkaBuilder};
use retry_kafka::backend::{Browse as _, Record, Topic, TopicAdmin};
pub use retry_kafka_suite::ApacheKafka;

use crate::conformance::Harness;

/// The backend's settings for the tests on the broker at `bootstrap` (`tests/kafka_processes.rs`
/// gives its workers the same): a member that dies is noticed after 6 s, the smallest session
/// timeout Apache Kafka allows (`group.min.session.timeout.ms`).
pub fn test_settings(bootstrap: &str) -> KafkaBuilder {
    Kafka::builder(bootstrap)
        .consumer_property("session.timeout.ms", "6000")
        .consumer_property("heartbeat.interval.ms", "500")
        .replication_factor(1)
}

#[allow(unused_imports)]
pub use retry_kafka_suite::init_test_tracing as init_tracing;

/// The conformance harness on any Kafka cluster.
pub struct KafkaHarness {
    pub backend: Kafka,
    /// A broker of the test's own, alive as long as the harness (a shared one is never dropped).
    pub broker: Option<ApacheKafka>,
}

impl KafkaHarness {
    /// A harness on the broker this test binary shares ([`ApacheKafka::shared`]).
    pub async fn on_shared_broker(settings: impl FnOnce(KafkaBuilder) -> KafkaBuilder) -> Self {
        let broker = tokio::task::spawn_blocking(ApacheKafka::shared)
            .await
            .expect("start Apache Kafka");
        Self::on(&broker.bootstrap, None, settings)
    }

    /// A harness on a broker of its own, for a test that cannot share one.
    pub async fn on_own_broker(settings: impl FnOnce(KafkaBuilder) -> KafkaBuilder) -> Self {
        let broker = tokio::task::spawn_blocking(ApacheKafka::start)
            .await
            .expect("start Apache Kafka");
        Self::on(&broker.bootstrap.clone(), Some(broker), settings)
    }

    fn on(
        bootstrap: &str,
        broker: Option<ApacheKafka>,
        settings: impl FnOnce(KafkaBuilder) -> KafkaBuilder,
    ) -> Self {
        init_tracing();
        let backend = settings(test_settings(bootstrap)).build().expect("kafka backend");
        KafkaHarness { backend, broker }
    }

    fn client(&self, group: Option<&str>) -> BaseConsumer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.backend.brokers())
            .set("group.id", group.unwrap_or("retry-kafka-inspector"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        config.create().expect("inspection client")
    }

    fn partitions(&self, client: &BaseConsumer, topic: &str) -> u32 {
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        metadata.topics().first().map_or(0, |t| {
            if t.error().is_some() {
                0
            } else {
                t.partitions().len() as u32
            }
        })
    }

    fn blocking_end_offsets(&self, topic: &str) -> Vec<u64> {
        let client = self.client(None);
        (0..self.partitions(&client, topic))
            .map(|p| {
                until_settled(|| client.fetch_watermarks(topic, p as i32, Duration::from_secs(10)))
                    .expect("watermarks")
                    .1 as u64
            })
            .collect()
    }

    fn blocking_committed(&self, topic: &str, group: &str) -> Vec<u64> {
        let client = self.client(Some(group));
        let partitions = self.partitions(&client, topic);
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition as i32);
        }
        let committed = client
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(
                |p| match committed.find_partition(topic, p as i32).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => offset as u64,
                    _ => 0,
                },
            )
            .collect()
    }
}

/// Runs `query` again (10 s at most) while it fails: right after a topic is created, or while
/// a leader moves, Apache Kafka answers NotLeaderForPartition for a moment.
fn until_settled<T>(
    mut query: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match query() {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            result => return result,
        }
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("inspection task")
}

impl Harness for KafkaHarness {
    type Backend = Kafka;

    fn backend(&self) -> Kafka {
        self.backend.clone()
    }

    async fn create_topic(&self, topic: &str, partitions: u32) {
        TopicAdmin::create_topic(&self.backend, &Topic::main(topic), partitions)
            .await
            .expect("create topic");
        // Wait until the topic is visible, so the app's provisioning sees it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.end_offsets(topic).await.len() != partitions as usize {
            assert!(Instant::now() < deadline, "topic {topic} did not appear");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn records(&self, topic: &str) -> Vec<Record> {
        self.backend
            .read(&Topic::new(topic, retry_kafka_suite::role_of(topic)), &[])
            .await
            .expect("read topic")
    }

    async fn committed(&self, topic: &str, group: &str) -> Vec<u64> {
        let this = self.shallow();
        let (topic, group) = (topic.to_owned(), group.to_owned());
        blocking(move || this.blocking_committed(&topic, &group)).await
    }

    async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        let this = self.shallow();
        let topic = topic.to_owned();
        blocking(move || this.blocking_end_offsets(&topic)).await
    }
}

impl KafkaHarness {
    /// A harness on the same backend without the broker process, for blocking helpers.
    fn shallow(&self) -> KafkaHarness {
        KafkaHarness {
            backend: self.backend.clone(),
            broker: None,
        }
    }
}
