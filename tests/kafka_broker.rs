//! The conformance suite on a real Kafka-protocol broker process: tansu (Apache Kafka
//! compatible, memory storage), started per test on a free loopback port and stopped after.
//!
//! A broker process cannot fail produce requests on demand, so the fault-injection cases run
//! on the mock cluster (`tests/kafka_mock.rs`) and the in-process broker only.

mod conformance;
mod kafka_support;

use kafka_support::{KafkaHarness, Tansu};
use retry_kafka::kafka::Kafka;

async fn tansu() -> KafkaHarness {
    kafka_support::init_tracing();
    let broker = tokio::task::spawn_blocking(Tansu::start)
        .await
        .expect("start tansu");
    let backend = Kafka::builder(broker.bootstrap.clone())
        .consumer_property("session.timeout.ms", "6000")
        .consumer_property("heartbeat.interval.ms", "500")
        .consumer_property("topic.metadata.refresh.interval.ms", "1000")
        // tansu 0.6 reports a partition's high watermark as the last batch's base offset + 1,
        // so a batch of several records looks shorter than it is to the inspection client
        // (measured: 20 records in two batches, watermark 11). One record per batch keeps its
        // watermarks right; consumers read every record either way.
        .producer_property("batch.num.messages", "1")
        .replication_factor(1)
        .build()
        .expect("kafka backend");
    KafkaHarness {
        backend,
        broker: Some(broker),
    }
}

conformance_suite!(tansu);
