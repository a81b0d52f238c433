//! Batch handlers against one-record handlers, and what a rate limit achieves, on Apache Kafka.
//!
//! ```text
//! cargo bench --bench handlers                      # starts Apache Kafka (scripts/install-test-deps.sh)
//! KAFKA_BROKERS=host:9092 cargo bench --bench handlers
//! BENCH_MESSAGES=50000 BENCH_ROUNDS=3 BENCH_RATE_SECONDS=30 cargo bench --bench handlers
//! ```
//!
//! **Batch vs one record.** Both handlers read the same `MESSAGES` JSON events from the same
//! 4-partition topic from the beginning (each its own group), in alternating rounds, in two
//! workloads:
//! - *no I/O*: the handler only looks at each decoded event: what the runtime costs per message;
//! - *one write per call*: each call awaits one simulated downstream write of 1 ms (a database
//!   insert, an HTTP call), whatever it carries: the one-record handler runs 8 calls at once
//!   (`concurrency = 8`), the batch handler up to 500 records per call.
//!
//! Messages per second and CPU-µs per message are measured from the first message to the last,
//! and the median of each side printed with the ratio (batch / one record).
//!
//! **Rate limit.** A handler with `rate = "1000/s"` and `retries = ["1s"]` whose first attempt
//! always fails is given `BENCH_RATE_SECONDS` (default 30) seconds' worth of attempts at once:
//! the achieved attempt rate over the run is printed against the limit, with how late the
//! retries ran past their due time (the lateness the limit adds while the main topic's backlog
//! competes for the same tokens) and whether any ran early.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::ClientConfig;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Topic, TopicAdmin as _};
use retry_kafka::prelude::*;
use retry_kafka_suite::figures::{env_or, median, spread};
use retry_kafka_suite::{process_cpu_time, BenchKafka};
use serde::{Deserialize, Serialize};

const TOPIC: &str = "bench.handlers";
const RATE_TOPIC: &str = "bench.rated";
const PARTITIONS: u32 = 4;
/// The rate of the rate-limit run, attempts per second (`rate = "1000/s"` below).
const LIMIT: f64 = 1000.0;

/// Messages per round (`BENCH_MESSAGES`, default 50000), rounds (`BENCH_ROUNDS`, default 3).
static MESSAGES: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_MESSAGES", 50_000));
static ROUNDS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_ROUNDS", 3));
static RATE_SECONDS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_RATE_SECONDS", 30));

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.handlers", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
    customer: String,
}

/// Whether the handlers await a simulated 1 ms write per call.
static WRITES: AtomicU64 = AtomicU64::new(0);
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// When the first message was handled, and the process's CPU time then.
static FIRST: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);

fn handled(count: u64) {
    // The lock only until the first message is counted.
    if HANDLED.load(Ordering::Relaxed) == 0 {
        FIRST
            .lock()
            .unwrap()
            .get_or_insert_with(|| (Instant::now(), process_cpu_time()));
    }
    HANDLED.fetch_add(count, Ordering::Relaxed);
}

async fn downstream_write() {
    if WRITES.load(Ordering::Relaxed) == 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[retry_handler(group = "bench-one", retries = ["1s"], dlq, concurrency = 8)]
async fn one(order: OrderPlaced) -> Result<(), HandlerError> {
    std::hint::black_box(order.amount_cents);
    downstream_write().await;
    handled(1);
    Ok(())
}

#[retry_handler(group = "bench-batch", batch(max = 500, linger = "5ms"), retries = ["1s"], dlq)]
async fn batched(orders: Vec<OrderPlaced>) -> Result<(), BatchError> {
    std::hint::black_box(orders.iter().map(|o| o.amount_cents).sum::<u64>());
    downstream_write().await;
    handled(orders.len() as u64);
    Ok(())
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.rated", key = "id")]
struct Paced {
    id: u64,
}

/// Each attempt's time (epoch ms) and, for a retry, its due time.
static PACED: Mutex<Vec<(i64, Option<i64>)>> = Mutex::new(Vec::new());

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[retry_handler(group = "bench-rate", retries = ["1s"], dlq, rate = "1000/s", concurrency = 16)]
async fn paced(event: Paced, ctx: Context) -> Result<(), HandlerError> {
    let due = ctx.headers().get_str("rk-due-at").and_then(|d| d.parse().ok());
    PACED.lock().unwrap().push((now_ms(), due));
    std::hint::black_box(event.id);
    if ctx.attempt() == 1 {
        return Err(HandlerError::transient("first attempt fails"));
    }
    Ok(())
}

/// One side of one round.
#[derive(Clone, Copy)]
struct Figures {
    per_second: f64,
    cpu_us: f64,
}

async fn round(kafka: &Kafka, handler: &'static str, messages: u64) -> Figures {
    HANDLED.store(0, Ordering::SeqCst);
    *FIRST.lock().unwrap() = None;
    let app = App::builder()
        .backend(kafka.clone())
        .handlers(move |spec| spec.function() == handler)
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    while HANDLED.load(Ordering::Relaxed) < messages {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (first, cpu_first) = FIRST.lock().unwrap().unwrap();
    let elapsed = first.elapsed().as_secs_f64();
    let cpu = (process_cpu_time() - cpu_first).as_secs_f64();
    running.shutdown().await.unwrap();
    Figures {
        per_second: messages as f64 / elapsed,
        cpu_us: cpu * 1e6 / messages as f64,
    }
}

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .create()
        .unwrap()
}

/// Writes events `ids` (keyed by id) and waits until the broker has them all.
fn produce(producer: &BaseProducer, topic: &str, ids: std::ops::Range<u64>, payload: impl Fn(u64) -> String) {
    for n in ids {
        let key = n.to_string();
        let body = payload(n);
        loop {
            match producer.send(BaseRecord::to(topic).key(&key).payload(&body)) {
                Ok(()) => break,
                Err((error, _)) => {
                    assert!(format!("{error}").contains("Queue full"), "{error}");
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

#[tokio::main]
async fn main() {
    let broker = tokio::task::spawn_blocking(BenchKafka::start).await.unwrap();
    let kafka = Kafka::builder(broker.bootstrap.clone()).build().unwrap();
    println!("== {}", broker.description);
    batch_against_one(&kafka, &broker.bootstrap).await;
    rate_limit(&kafka, &broker.bootstrap).await;
}

async fn batch_against_one(kafka: &Kafka, bootstrap: &str) {
    kafka.create_topic(&Topic::main(TOPIC), PARTITIONS).await.unwrap();
    let messages = *MESSAGES;
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        produce(&producer(&bootstrap), TOPIC, 0..messages, |n| {
            format!(
                r#"{{"order_id":{n},"amount_cents":{},"customer":"c-{}"}}"#,
                n * 7 % 10_000,
                n % 977
            )
        })
    })
    .await
    .unwrap();
    println!(
        "== batch handler (max 500, linger 5ms) against a one-record handler (concurrency 8): \
         {messages} messages of ~70 bytes on {PARTITIONS} partitions, {} rounds",
        *ROUNDS
    );
    for (workload, writes) in [("no I/O", 0), ("one 1 ms write per call", 1)] {
        WRITES.store(writes, Ordering::SeqCst);
        let (mut ones, mut batches) = (Vec::new(), Vec::new());
        for _ in 0..*ROUNDS {
            // Each round reads the topic from the start: a fresh group per round.
            reset(kafka, "bench-one").await;
            ones.push(round(kafka, "one", messages).await);
            reset(kafka, "bench-batch").await;
            batches.push(round(kafka, "batched", messages).await);
        }
        let rate = |side: &[Figures]| side.iter().map(|f| f.per_second).collect::<Vec<_>>();
        let cpu = |side: &[Figures]| side.iter().map(|f| f.cpu_us).collect::<Vec<_>>();
        let ratios: Vec<f64> = batches
            .iter()
            .zip(&ones)
            .map(|(b, o)| b.per_second / o.per_second)
            .collect();
        println!(
            "{workload:>24}: one record {:>9.0} msg/s {:>6.2} CPU-µs/msg | batch {:>9.0} msg/s {:>6.2} CPU-µs/msg | batch/one {:.2}× msg/s ({}), {:.2}× CPU/msg",
            median(&rate(&ones)),
            median(&cpu(&ones)),
            median(&rate(&batches)),
            median(&cpu(&batches)),
            median(&ratios),
            spread(&ratios),
            median(&cpu(&batches)) / median(&cpu(&ones)),
        );
    }
}

/// Commits offset 0 for `group` on every partition of the topic, so the next round reads
/// everything again.
async fn reset(kafka: &Kafka, group: &str) {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..PARTITIONS as i32 {
        list.add_partition_offset(TOPIC, partition, rdkafka::Offset::Offset(0))
            .unwrap();
    }
    // Apache Kafka answers NotCoordinator while it creates its offsets topic: ask again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) =
        rdkafka::consumer::Consumer::commit(&consumer, &list, rdkafka::consumer::CommitMode::Sync)
    {
        assert!(Instant::now() < deadline, "resetting {group}: {error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rate_limit(kafka: &Kafka, bootstrap: &str) {
    kafka
        .create_topic(&Topic::main(RATE_TOPIC), PARTITIONS)
        .await
        .unwrap();
    // Saturated: two attempts each, all waiting at the start: the run takes RATE_SECONDS.
    let events = (LIMIT as u64 * *RATE_SECONDS) / 2;
    let brokers = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        produce(&producer(&brokers), RATE_TOPIC, 0..events, |n| {
            format!(r#"{{"id":{n}}}"#)
        })
    })
    .await
    .unwrap();
    let attempts = paced_run(kafka, events).await;
    let (first, last) = (attempts[0].0, attempts[attempts.len() - 1].0);
    let seconds = (last - first) as f64 / 1000.0;
    let achieved = (attempts.len() as f64 - 1.0) / seconds;
    println!(
        "== rate = \"1000/s\", retries = [\"1s\"], every first attempt fails: {events} events at once, {} attempts over {seconds:.1} s",
        attempts.len()
    );
    println!(
        "achieved {achieved:.0} attempts/s = {:.3}× the limit | retries late by {} (the main topic's backlog takes tokens too)",
        achieved / LIMIT,
        lateness(&attempts),
    );

    // Below the limit: 400 events a second (800 attempts a second) for half as long.
    let paced = 400 * *RATE_SECONDS / 2;
    let brokers = bootstrap.to_owned();
    let writer = tokio::task::spawn_blocking(move || {
        let producer = producer(&brokers);
        let start = Instant::now();
        for chunk in 0..paced / 10 {
            // 10 events every 25 ms.
            let at = start + Duration::from_millis(25 * chunk);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            produce(&producer, RATE_TOPIC, chunk * 10..chunk * 10 + 10, |n| {
                format!(r#"{{"id":{n}}}"#)
            });
        }
    });
    let attempts = paced_run(kafka, paced).await;
    writer.await.unwrap();
    println!(
        "== same handler, {paced} events arriving at 400/s (800 attempts/s, below the limit): retries late by {}",
        lateness(&attempts)
    );
}

/// Runs `paced` until its `events` have had both attempts; the attempts in time order.
async fn paced_run(kafka: &Kafka, events: u64) -> Vec<(i64, Option<i64>)> {
    PACED.lock().unwrap().clear();
    let app = App::builder()
        .backend(kafka.clone())
        .handlers(|spec| spec.function() == "paced")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    while PACED.lock().unwrap().len() < (events * 2) as usize {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
    let mut attempts = PACED.lock().unwrap().clone();
    attempts.sort();
    attempts
}

/// How late the retries among `attempts` ran past their due time.
fn lateness(attempts: &[(i64, Option<i64>)]) -> String {
    let mut late: Vec<i64> = attempts
        .iter()
        .filter_map(|(at, due)| due.map(|due| at - due))
        .collect();
    late.sort();
    let early = late.iter().filter(|&&l| l < 0).count();
    let percentile = |p: f64| late[((late.len() - 1) as f64 * p) as usize];
    format!(
        "p50 {} ms, p99 {} ms, max {} ms; {early} early",
        percentile(0.5),
        percentile(0.99),
        late[late.len() - 1]
    )
}
