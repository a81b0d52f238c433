//! The conformance suite on a tiered backend: main topics on Kafka (librdkafka's mock
//! cluster), retry levels and dead letters on a real `redis-server`.

mod conformance;
mod kafka_support;
mod redis_support;

use conformance::Harness;
use kafka_support::KafkaHarness;
use redis_support::{test_backend, RedisHarness};
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{Browse as _, Record, Tiered, Topic};

struct TieredHarness {
    backend: Tiered<Kafka, Redis>,
    kafka: KafkaHarness,
    redis: RedisHarness,
}

async fn tiered() -> TieredHarness {
    let redis = tokio::task::spawn_blocking(RedisHarness::start).await.unwrap();
    let kafka = KafkaHarness {
        backend: Kafka::embedded().expect("embedded cluster"),
        broker: None,
    };
    TieredHarness {
        backend: Tiered::new(kafka.backend.clone(), test_backend(&redis.server.url())),
        kafka,
        redis,
    }
}

impl Harness for TieredHarness {
    type Backend = Tiered<Kafka, Redis>;

    fn backend(&self) -> Self::Backend {
        self.backend.clone()
    }

    async fn create_topic(&self, topic: &str, partitions: u32) {
        // Only main topics are created by the cases; they live on Kafka.
        self.kafka.create_topic(topic, partitions).await;
    }

    async fn records(&self, topic: &str) -> Vec<Record> {
        if retry_kafka_suite::role_of(topic).is_derived() {
            self.redis.records(topic).await
        } else {
            self.kafka.records(topic).await
        }
    }

    async fn committed(&self, topic: &str, group: &str) -> Vec<u64> {
        if retry_kafka_suite::role_of(topic).is_derived() {
            self.redis.committed(topic, group).await
        } else {
            self.kafka.committed(topic, group).await
        }
    }

    async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        if retry_kafka_suite::role_of(topic).is_derived() {
            self.redis.end_offsets(topic).await
        } else {
            self.kafka.end_offsets(topic).await
        }
    }
}

conformance_suite!(tiered);
key_order_suite!(tiered);

#[derive(retry_kafka::Event, serde::Serialize, serde::Deserialize, Debug)]
#[event(topic = "tiered.orders", key = "id")]
struct Order {
    id: u64,
}

#[retry_kafka::retry_handler(group = "tiered", retries = ["100ms"], dlq)]
async fn rejects(_order: Order) -> Result<(), retry_kafka::HandlerError> {
    Err(retry_kafka::HandlerError::permanent("never"))
}

/// No retry or dead-letter topic is created on Kafka: they are Redis streams, and the dead
/// letter is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_dead_letter_topics_live_only_on_redis() {
    use retry_kafka::backend::{TopicAdmin, TopicRole};
    let harness = tiered().await;
    harness.create_topic("tiered.orders", 2).await;
    let app = retry_kafka::App::builder()
        .backend(harness.backend())
        .handlers(|s| s.group() == "tiered")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    app.producer().send(&Order { id: 1 }).await.unwrap();
    let dlq = "tiered.orders.tiered.dlq";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while harness.records(dlq).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing reached the DLQ");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
    for topic in ["tiered.orders.tiered.retry.1", dlq] {
        assert_eq!(
            harness
                .kafka
                .backend
                .partitions(&Topic::main(topic))
                .await
                .unwrap(),
            None,
            "{topic} on Kafka"
        );
        assert_eq!(
            harness
                .redis
                .backend
                .partitions(&Topic::main(topic))
                .await
                .unwrap(),
            Some(2),
            "{topic} on Redis"
        );
    }
    let dead_letters = Topic::new(dlq, TopicRole::DeadLetter);
    assert_eq!(
        harness
            .redis
            .backend
            .read(&dead_letters, &[])
            .await
            .unwrap()
            .len(),
        1
    );
}
