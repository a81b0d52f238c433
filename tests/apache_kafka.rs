//! The real Apache Kafka broker of the tests and benchmarks (`retry_kafka_suite::ApacheKafka`,
//! installed by `scripts/install-test-deps.sh`), one shared by the tests of this binary: it
//! starts, the Kafka backend creates topics on it and can read them and their lag at once, and
//! what rdkafka produces in multi-record batches comes back whole, with watermarks that count
//! every record.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Backend as _, Browse as _, Topic, TopicAdmin};
use retry_kafka_suite::ApacheKafka;

const TOPIC: &str = "apache-kafka-roundtrip";
const PARTITIONS: u32 = 4;
const MESSAGES: usize = 1000;

/// Keeps the largest record count per produce batch that librdkafka's statistics reported.
#[derive(Clone, Default)]
struct BatchStatistics {
    largest_batch: Arc<AtomicI64>,
}

impl ClientContext for BatchStatistics {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            self.largest_batch
                .fetch_max(topic.batchcnt.max, Ordering::Relaxed);
        }
    }
}

fn payload(index: usize) -> String {
    format!("apache-kafka-message-{index:04}")
}

/// The broker this binary's tests share, and a backend on it.
async fn shared_broker() -> (&'static ApacheKafka, Kafka) {
    retry_kafka_suite::init_test_tracing();
    let broker = tokio::task::spawn_blocking(ApacheKafka::shared)
        .await
        .expect("start Apache Kafka");
    let backend = Kafka::builder(broker.bootstrap.clone())
        .replication_factor(1)
        .build()
        .expect("kafka backend");
    (broker, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_kafka_round_trip_and_watermarks_of_batched_records() {
    let (broker, backend) = shared_broker().await;
    println!(
        "Apache Kafka {} started at {} in {:.2} s",
        retry_kafka_suite::APACHE_KAFKA_VERSION,
        broker.bootstrap,
        broker.startup.as_secs_f64()
    );

    // The backend creates the topic, as an application's start does. Kafka answers CreateTopics
    // once the controller has the topic; the broker's metadata has it a moment later (measured:
    // `partitions` said None right after `create_topic` in about half the runs).
    let created = Instant::now();
    backend
        .create_topic(&Topic::main(TOPIC), PARTITIONS)
        .await
        .expect("create topic");
    let deadline = created + Duration::from_secs(10);
    loop {
        match backend.partitions(&Topic::main(TOPIC)).await.expect("partitions") {
            Some(partitions) => {
                assert_eq!(partitions, PARTITIONS);
                break;
            }
            None => assert!(
                Instant::now() < deadline,
                "{TOPIC} not in the metadata after 10 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "created {TOPIC} ({PARTITIONS} partitions), in the metadata after {:.0} ms",
        created.elapsed().as_secs_f64() * 1e3
    );

    // 1000 records sent at once with a 20 ms linger: librdkafka packs them into batches of many.
    let statistics = BatchStatistics::default();
    let producer: FutureProducer<BatchStatistics> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "20")
        .set("statistics.interval.ms", "50")
        .create_with_context(statistics.clone())
        .expect("producer");
    let produced = Instant::now();
    let deliveries = (0..MESSAGES).map(|index| {
        let (producer, key, payload) = (&producer, index.to_string(), payload(index));
        async move {
            producer
                .send(
                    FutureRecord::to(TOPIC).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(error, _)| error)
        }
    });
    let mut per_partition = [0usize; PARTITIONS as usize];
    for delivery in futures::future::join_all(deliveries).await {
        let delivery = delivery.expect("delivered");
        per_partition[delivery.partition as usize] += 1;
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    println!(
        "produced {MESSAGES} records in {:.0} ms, per partition {per_partition:?}",
        produced.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        per_partition.iter().all(|&count| count > 0),
        "keys spread over every partition: {per_partition:?}"
    );
    // Statistics come every 50 ms; wait for one after the last batch.
    let deadline = Instant::now() + Duration::from_secs(5);
    while statistics.largest_batch.load(Ordering::Relaxed) <= 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let largest_batch = statistics.largest_batch.load(Ordering::Relaxed);
    println!("largest produce batch: {largest_batch} records");
    assert!(largest_batch > 1, "records were produced in multi-record batches");

    // The high watermarks count every record of every batch.
    let bootstrap = broker.bootstrap.clone();
    let watermarks = tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("inspection client");
        (0..PARTITIONS as i32)
            .map(|partition| {
                client
                    .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
                    .expect("watermarks")
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    println!("watermarks (low, high) per partition: {watermarks:?}");
    for (partition, (low, high)) in watermarks.iter().enumerate() {
        assert_eq!(*low, 0, "partition {partition}");
        assert_eq!(*high as usize, per_partition[partition], "partition {partition}");
    }
    let total: i64 = watermarks.iter().map(|(_, high)| high).sum();
    assert_eq!(total as usize, MESSAGES, "watermarks count every record");

    // Read everything back from the beginning of each partition.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "apache-kafka-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS as i32 {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let (mut seen, mut bytes) = (BTreeSet::new(), 0usize);
    let mut records = 0usize;
    let read = Instant::now();
    while records < MESSAGES {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {records} of {MESSAGES} records came back within 20 s"))
            .expect("consume");
        let payload = message.payload().expect("a payload");
        bytes += payload.len();
        records += 1;
        seen.insert(String::from_utf8(payload.to_vec()).expect("utf-8 payload"));
    }
    println!(
        "read {records} records, {bytes} payload bytes, in {:.0} ms",
        read.elapsed().as_secs_f64() * 1e3
    );
    let expected: BTreeSet<String> = (0..MESSAGES).map(payload).collect();
    assert_eq!(records, MESSAGES, "no record twice");
    assert_eq!(seen, expected, "every record, unchanged");
    assert_eq!(bytes, expected.iter().map(String::len).sum::<usize>());
}

/// Right after a topic is in the metadata, Apache Kafka answers offset requests for its
/// partitions with NotLeaderForPartition for a moment, and a group's first offset fetch with
/// NotCoordinator while the offsets topic is created: reading the topic and its lag wait for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_is_readable_as_soon_as_it_is_created() {
    let (_, backend) = shared_broker().await;
    for index in 0..20 {
        let topic = format!("apache-kafka-new-{index}");
        backend
            .create_topic(&Topic::main(topic.as_str()), 4)
            .await
            .expect("create topic");
        let records = backend
            .read(&Topic::main(topic.as_str()), &[])
            .await
            .expect("read a new topic");
        assert!(records.is_empty(), "{topic}: {records:?}");
        let lag = backend
            .lag(&Topic::main(topic.as_str()), "apache-kafka-new")
            .await
            .expect("lag of a new topic");
        assert_eq!(lag, 0, "{topic}");
    }
}
