//! The conformance suite on the real Apache Kafka broker (4.4.0, KRaft): one broker for the
//! whole binary ([`ApacheKafka::shared`](retry_kafka_suite::ApacheKafka::shared)), since every
//! case has topics and groups of its own; its JVM dies with the test process.
//!
//! A broker process cannot fail produce requests on demand, so the fault-injection cases run
//! on the mock cluster (`tests/kafka_mock.rs`) and the in-process broker only.
//!
//! One case by hand: `cargo test --test kafka_broker success_acknowledges_and_is_not_redelivered`
//! (`RUST_LOG=retry_kafka=debug` for the framework's log, `RK_KEEP_BROKER_LOG=1` to keep the
//! broker's directory and log).

mod conformance;
mod kafka_support;

use kafka_support::KafkaHarness;

async fn apache_kafka() -> KafkaHarness {
    KafkaHarness::on_shared_broker(|settings| settings).await
}

conformance_suite!(apache_kafka);
key_order_suite!(apache_kafka);
