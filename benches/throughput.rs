//! Consumer throughput: retry-kafka against a hand-written rdkafka loop, same broker, same
//! topic, same run.
//!
//! ```text
//! cargo bench --bench throughput            # starts tansu from .tools/ (scripts/install-test-deps.sh)
//! KAFKA_BROKERS=host:9092 cargo bench --bench throughput
//! ```
//!
//! Both sides read `MESSAGES` JSON events from a 4-partition topic from the beginning, decode
//! each one, and store its offset for commit (at least once). The clock starts at the first
//! message, so group joins are not measured. Rounds alternate, and the median of each side is
//! reported with the ratio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use retry_kafka::backend::Backend as _;
use retry_kafka::kafka::Kafka;
use retry_kafka::prelude::*;
use retry_kafka_suite::Tansu;
use serde::{Deserialize, Serialize};

const TOPIC: &str = "bench.orders";
const PARTITIONS: u32 = 4;

/// Messages per round (`BENCH_MESSAGES`, default 200000) and rounds (`BENCH_ROUNDS`, default 3).
static MESSAGES: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_MESSAGES", 200_000));
static ROUNDS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_ROUNDS", 3));

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
    customer: String,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);
static FIRST: Mutex<Option<Instant>> = Mutex::new(None);

#[retry_handler(group = "bench-rk", retries = ["1s"], dlq)]
async fn charge(order: OrderPlaced) -> Result<(), HandlerError> {
    if HANDLED.fetch_add(1, Ordering::Relaxed) == 0 {
        *FIRST.lock().unwrap() = Some(Instant::now());
    }
    std::hint::black_box(order);
    Ok(())
}

/// The cluster named by `KAFKA_BROKERS`, or a tansu broker started for the benchmark.
struct Broker {
    _tansu: Option<Tansu>,
    bootstrap: String,
}

impl Broker {
    fn start() -> Self {
        match std::env::var("KAFKA_BROKERS") {
            Ok(bootstrap) => Broker {
                _tansu: None,
                bootstrap,
            },
            Err(_) => {
                let tansu = Tansu::start();
                Broker {
                    bootstrap: tansu.bootstrap.clone(),
                    _tansu: Some(tansu),
                }
            }
        }
    }
}

fn produce(bootstrap: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for order_id in 0..*MESSAGES {
        let event = OrderPlaced {
            order_id,
            amount_cents: 500 + order_id % 1000,
            customer: format!("customer-{}", order_id % 97),
        };
        let payload = event.encode().unwrap();
        let key = order_id.to_string();
        loop {
            match producer.send(BaseRecord::to(TOPIC).key(&key).payload(&payload)) {
                Ok(()) => break,
                Err((_, _)) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The hand-written loop: poll, decode, store the offset.
fn raw_round(bootstrap: &str, group: &str) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // As retry-kafka sets it: with librdkafka's default (1 s) a full local queue stalls
        // fetching, and this loop drops to ~175k msg/s in some rounds.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut first = None;
    let mut seen = 0;
    while seen < *MESSAGES {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        first.get_or_insert_with(Instant::now);
        let order = OrderPlaced::decode(message.payload().unwrap()).unwrap();
        std::hint::black_box(order);
        consumer.store_offset_from_message(&message).unwrap();
        seen += 1;
    }
    let elapsed = first.unwrap().elapsed();
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    *MESSAGES as f64 / elapsed.as_secs_f64()
}

/// retry-kafka: one registered handler, run by the app until it has handled every message.
async fn retry_kafka_round(kafka: &Kafka) -> f64 {
    reset_group(kafka.brokers(), "bench-rk");
    HANDLED.store(0, Ordering::SeqCst);
    *FIRST.lock().unwrap() = None;
    let app = App::builder().backend(kafka.clone()).build().unwrap();
    let running = app.start().await.unwrap();
    while HANDLED.load(Ordering::Relaxed) < *MESSAGES {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = FIRST.lock().unwrap().unwrap().elapsed();
    running.shutdown().await.unwrap();
    *MESSAGES as f64 / elapsed.as_secs_f64()
}

/// Sets the group's committed offsets back to the start, so every round reads everything.
fn reset_group(bootstrap: &str, group: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS as i32 {
        list.add_partition_offset(TOPIC, partition, Offset::Offset(0))
            .unwrap();
    }
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let broker = Broker::start();
    let kafka = Kafka::builder(broker.bootstrap.clone()).build().unwrap();
    kafka.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&bootstrap))
        .await
        .unwrap();
    println!(
        "{} messages of ~70 bytes on {PARTITIONS} partitions at {}",
        *MESSAGES, broker.bootstrap
    );

    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for round in 0..*ROUNDS {
        let bootstrap = broker.bootstrap.clone();
        let group = format!("bench-raw-{round}");
        let rate = tokio::task::spawn_blocking(move || raw_round(&bootstrap, &group))
            .await
            .unwrap();
        println!("round {round}: raw rdkafka loop  {:>9.0} msg/s", rate);
        raw.push(rate);
        let rate = retry_kafka_round(&kafka).await;
        println!("round {round}: retry-kafka       {:>9.0} msg/s", rate);
        ours.push(rate);
    }
    let (raw, ours) = (median(raw), median(ours));
    println!(
        "median: raw {raw:.0} msg/s, retry-kafka {ours:.0} msg/s, ratio {:.2}",
        ours / raw
    );
}
