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
