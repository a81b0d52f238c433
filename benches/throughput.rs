//! Consumer throughput: retry-kafka against hand-written loops on the same server, same
//! topic, same run: a raw rdkafka loop on Kafka, a raw XREADGROUP/XACK loop on Redis.
//!
//! ```text
//! cargo bench --bench throughput            # starts Apache Kafka and redis-server (scripts/install-test-deps.sh)
//! KAFKA_BROKERS=host:9092 REDIS_URL=redis://host:6379 cargo bench --bench throughput
//! BENCH_BACKEND=redis cargo bench --bench throughput   # one backend: kafka or redis
//! # instructions per record, librdkafka's mock cluster in this process (no JVM):
//! KAFKA_BROKERS=embedded BENCH_BACKEND=kafka BENCH_ROUNDS=1 BENCH_MESSAGES=20000 \
//!   valgrind --tool=callgrind --separate-threads=yes target/release/deps/throughput-<hash> --bench
//! ```
//!
//! Both sides read `MESSAGES` JSON events from a 4-partition topic from the beginning, decode
//! each one, and acknowledge it (at least once): on Kafka they store the offset for commit (and
//! the raw loop runs twice a round: as it is, and asking for each message's headers, as
//! retry-kafka must; librdkafka parses them only when asked); on
//! Redis the raw loop reads 256 entries per XREADGROUP and acknowledges each batch with one
//! XACK per stream, pipelined with its next read, as retry-kafka does. The clock starts at the
//! first message, so group joins are not measured. Rounds alternate, and the median of each
//! side is reported with the ratio. On Kafka a transforming handler (one output per order,
//! `ctx.emit`) runs too, at least once and exactly once, its rate counted until its outputs
//! are written.
//!
//! On an Apache Kafka broker it starts, each side's line also gives the broker's CPU-µs per message
//! meanwhile (its JVM's `/proc` times, in 10 ms ticks: coarse over a 0.2 s round).
//! `BENCH_COMMIT_RECORDS=n` gives retry-kafka's at-least-once consumers a commit count
//! (`commit_records`; none by default) to price it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::Value;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{Publish as _, Topic, TopicAdmin as _, TopicRole};
use retry_kafka::handler::Breaker;
use retry_kafka::prelude::*;
use retry_kafka_suite::figures::{env_or, median, spread};
use retry_kafka_suite::{cpu_time_of, process_cpu_time, raw_consumer_config, BenchKafka, BenchRedis};
use serde::{Deserialize, Serialize};

const TOPIC: &str = "bench.orders";
const PARTITIONS: u32 = 4;

/// Messages per round (`BENCH_MESSAGES`, default 200000) and rounds (`BENCH_ROUNDS`, default 3).
static MESSAGES: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_MESSAGES", 200_000));
static ROUNDS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_ROUNDS", 3));

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.orders", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
    customer: String,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);
/// When the first message was handled, and the process's CPU time then.
static FIRST: Mutex<Option<Start>> = Mutex::new(None);
/// The Apache Kafka broker's process, when the benchmark started one: its CPU is read beside
/// this process's (a commit or a fetch costs the broker, on the same cores).
static BROKER_PID: OnceLock<u32> = OnceLock::new();

/// Where a side's measurement starts: its first message, this process's CPU time then, and the
/// broker's.
#[derive(Clone, Copy)]
struct Start {
    at: Instant,
    cpu: Duration,
    broker_cpu: Option<Duration>,
}

impl Start {
    fn now() -> Self {
        Start {
            at: Instant::now(),
            cpu: process_cpu_time(),
            broker_cpu: BROKER_PID.get().map(|&pid| cpu_time_of(pid)),
        }
    }
}

/// One side of one round: messages per second and CPU-µs per message, both from the first
/// message to the last, and the broker's CPU-µs per message meanwhile (Apache Kafka started
/// by the benchmark; read from `/proc` in clock ticks of 10 ms, so a round's figure is coarse).
#[derive(Clone, Copy)]
struct Rate {
    per_second: f64,
    cpu_us: f64,
    broker_us: Option<f64>,
}

impl Rate {
    fn since(start: Start) -> Self {
        let elapsed = start.at.elapsed();
        let per_message = |cpu: Duration| cpu.as_secs_f64() * 1e6 / *MESSAGES as f64;
        Rate {
            per_second: *MESSAGES as f64 / elapsed.as_secs_f64(),
            cpu_us: per_message(process_cpu_time() - start.cpu),
            broker_us: start
                .broker_cpu
                .zip(BROKER_PID.get())
                .map(|(before, &pid)| per_message(cpu_time_of(pid) - before)),
        }
    }
}

#[retry_handler(group = "bench-rk", retries = ["1s"], dlq)]
async fn charge(order: OrderPlaced) -> Result<(), HandlerError> {
    if HANDLED.fetch_add(1, Ordering::Relaxed) == 0 {
        *FIRST.lock().unwrap() = Some(Start::now());
    }
    std::hint::black_box(order);
    Ok(())
}

/// What the transforming handler emits per order.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.invoices", key = "order_id")]
struct InvoiceDue {
    order_id: u64,
    amount_cents: u64,
}

const INVOICES: &str = "bench.invoices";

/// A consume, transform, produce handler: one output per order (`ctx.emit`).
#[retry_handler(topic = "bench.orders", group = "bench-emit", retries = ["1s"], dlq)]
async fn invoice(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    if HANDLED.fetch_add(1, Ordering::Relaxed) == 0 {
        *FIRST.lock().unwrap() = Some(Start::now());
    }
    ctx.emit(&InvoiceDue {
        order_id: order.order_id,
        amount_cents: order.amount_cents,
    })?;
    Ok(())
}

/// Message `order_id` of the input: its key and payload.
fn message(order_id: u64) -> (String, Vec<u8>) {
    let event = OrderPlaced {
        order_id,
        amount_cents: 500 + order_id % 1000,
        customer: format!("customer-{}", order_id % 97),
    };
    (order_id.to_string(), event.encode().unwrap().to_vec())
}

/// The hand-written loop: poll, decode, store the offset; with `read_headers`, it also looks
/// at each message's headers, as any consumer that honours `traceparent` does (and as
/// retry-kafka must, for `rk-*` and `Context::headers`): librdkafka parses them only when
/// asked, and asking costs about a thousand instructions even on a message without headers.
fn raw_round(bootstrap: &str, group: &str, read_headers: bool) -> Rate {
    let consumer: BaseConsumer = raw_consumer_config(bootstrap, group).create().unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut first = None;
    let mut seen = 0;
    while seen < *MESSAGES {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        first.get_or_insert_with(Start::now);
        if read_headers {
            if let Some(headers) = message.headers() {
                std::hint::black_box(headers.count());
            }
        }
        let order = OrderPlaced::decode(message.payload().unwrap()).unwrap();
        std::hint::black_box(order);
        consumer.store_offset_from_message(&message).unwrap();
        seen += 1;
    }
    let rate = Rate::since(first.unwrap());
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    rate
}

/// retry-kafka: one registered handler, run by the app until it has handled every message.
/// `fresh`: nothing committed for its group yet (the mock cluster's first round; the mock
/// refuses a commit from outside the group).
/// `breaker`: the handler behind a circuit breaker (set in code; closed all along).
async fn retry_kafka_round(kafka: &Kafka, fresh: bool, breaker: bool) -> Rate {
    if !fresh {
        reset_group(kafka.brokers(), "bench-rk");
    }
    app_round(kafka.clone(), "bench-rk", breaker).await
}

/// The transforming handler (`invoice`, one output per order) on `kafka`, its rate counted
/// until every output is written (the outputs topic's high watermarks grew by `MESSAGES`).
async fn transform_round(kafka: &Kafka) -> Rate {
    reset_group(kafka.brokers(), "bench-emit");
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .create()
        .unwrap();
    let before = tokio::task::block_in_place(|| invoices_written(&client));
    let (_app, running) = start_app(kafka.clone(), "bench-emit", false).await;
    wait_until_handled().await;
    let rate = tokio::task::block_in_place(|| loop {
        if invoices_written(&client) >= before + *MESSAGES {
            break Rate::since(FIRST.lock().unwrap().unwrap());
        }
        std::thread::sleep(Duration::from_millis(2));
    });
    running.shutdown().await.unwrap();
    rate
}

/// How many invoices the outputs topic holds: the sum of its high watermarks.
fn invoices_written(client: &BaseConsumer) -> u64 {
    (0..PARTITIONS as i32)
        .map(|p| {
            client
                .fetch_watermarks(INVOICES, p, Duration::from_secs(10))
                .unwrap()
                .1 as u64
        })
        .sum()
}

/// Starts the handlers of `group` on `backend`, the counters reset.
async fn start_app<B: retry_kafka::backend::Backend>(
    backend: B,
    group: &'static str,
    breaker: bool,
) -> (App<B>, retry_kafka::app::Running) {
    HANDLED.store(0, Ordering::SeqCst);
    *FIRST.lock().unwrap() = None;
    let mut app = App::builder()
        .backend(backend)
        .handlers(move |spec| spec.group() == group);
    if breaker {
        app = app.breaker("charge", Breaker::default());
    }
    let app = app.build().unwrap();
    let running = app.start().await.unwrap();
    (app, running)
}

async fn wait_until_handled() {
    while HANDLED.load(Ordering::Relaxed) < *MESSAGES {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the handler of `group` on `backend` until it has handled every message; its rate.
async fn app_round<B: retry_kafka::backend::Backend>(backend: B, group: &'static str, breaker: bool) -> Rate {
    let (_app, running) = start_app(backend, group, breaker).await;
    wait_until_handled().await;
    let rate = Rate::since(FIRST.lock().unwrap().unwrap());
    running.shutdown().await.unwrap();
    rate
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

fn redis_stream(p: u32) -> String {
    format!("{{{TOPIC}}}:{p}")
}

/// Writes the events to Redis through the backend's own producer path, pipelined.
async fn redis_produce(redis: &Redis) {
    let producer = Producer::new(redis.clone());
    let mut sends = futures::stream::FuturesUnordered::new();
    for order_id in 0..*MESSAGES {
        let producer = producer.clone();
        sends.push(async move {
            let event = OrderPlaced {
                order_id,
                amount_cents: 500 + order_id % 1000,
                customer: format!("customer-{}", order_id % 97),
            };
            producer.send(&event).await.unwrap();
        });
        if sends.len() >= 256 {
            futures::StreamExt::next(&mut sends).await;
        }
    }
    futures::StreamExt::collect::<Vec<()>>(sends).await;
}

/// The hand-written Redis loop: XREADGROUP a batch from every stream, decode, XACK the batch with
/// the next read.
async fn redis_raw_round(url: &str, group: &str) -> Rate {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for p in 0..PARTITIONS {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(redis_stream(p))
            .arg(group)
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut first = None;
    let mut seen = 0u64;
    let mut acks: Vec<(u32, Vec<String>)> = Vec::new();
    while seen < *MESSAGES {
        let mut pipe = redis::pipe();
        for (p, ids) in acks.drain(..) {
            pipe.cmd("XACK").arg(redis_stream(p)).arg(group).arg(ids).ignore();
        }
        let read = pipe.cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(group)
            .arg("raw")
            .arg("COUNT")
            .arg(256 / PARTITIONS as usize)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS");
        for p in 0..PARTITIONS {
            read.arg(redis_stream(p));
        }
        for _ in 0..PARTITIONS {
            read.arg(">");
        }
        let (reply,): (Value,) = pipe.query_async(&mut conn).await.unwrap();
        let Value::Array(streams) = reply else { continue };
        for entry in streams {
            let Value::Array(pair) = entry else { continue };
            let Value::BulkString(key) = &pair[0] else {
                continue;
            };
            let p: u32 = std::str::from_utf8(key)
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let Value::Array(entries) = &pair[1] else { continue };
            let mut ids = Vec::with_capacity(entries.len());
            for entry in entries {
                let Value::Array(parts) = entry else { continue };
                let Value::BulkString(id) = &parts[0] else {
                    continue;
                };
                let Value::Array(fields) = &parts[1] else { continue };
                let payload = fields
                    .chunks(2)
                    .find(|f| matches!(&f[0], Value::BulkString(n) if n == b"payload"))
                    .map(|f| match &f[1] {
                        Value::BulkString(v) => v.as_slice(),
                        _ => &[],
                    })
                    .unwrap();
                first.get_or_insert_with(Start::now);
                let order = OrderPlaced::decode(payload).unwrap();
                std::hint::black_box(order);
                ids.push(String::from_utf8(id.clone()).unwrap());
                seen += 1;
            }
            acks.push((p, ids));
        }
    }
    Rate::since(first.unwrap())
}

/// retry-kafka on Redis: the same handler, run by the app until it has handled every message.
async fn redis_retry_kafka_round(redis: &Redis, url: &str) -> Rate {
    // A fresh group each round, so every round reads everything.
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for p in 0..PARTITIONS {
        let _: Value = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(redis_stream(p))
            .arg("bench-rk")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    app_round(redis.clone(), "bench-rk", false).await
}

/// Prints one round of both sides.
fn print_round(backend: &str, round: u64, raw_name: &str, raw: Rate, ours: Rate) {
    print_pair(backend, round, (raw_name, raw), ("retry-kafka", ours));
}

/// One round's two sides, each with its name.
fn print_pair(backend: &str, round: u64, (left_name, left): (&str, Rate), (right_name, right): (&str, Rate)) {
    let broker = |rate: Rate| {
        rate.broker_us
            .map(|us| format!(" (broker {us:.2})"))
            .unwrap_or_default()
    };
    println!(
        "{backend} round {round}: {left_name:<20} {:>9.0} msg/s {:>5.2} CPU-µs/msg{} | {right_name} {:>9.0} msg/s {:>5.2} CPU-µs/msg{}",
        left.per_second,
        left.cpu_us,
        broker(left),
        right.per_second,
        right.cpu_us,
        broker(right)
    );
}

/// Medians of both sides, the ratios of each round and their spread.
fn print_medians(backend: &str, raw: &[Rate], ours: &[Rate]) {
    let rate = |r: &[Rate]| median(&r.iter().map(|r| r.per_second).collect::<Vec<_>>());
    let cpu = |r: &[Rate]| median(&r.iter().map(|r| r.cpu_us).collect::<Vec<_>>());
    let rate_ratios: Vec<f64> = raw
        .iter()
        .zip(ours)
        .map(|(r, o)| o.per_second / r.per_second)
        .collect();
    let cpu_ratios: Vec<f64> = raw.iter().zip(ours).map(|(r, o)| o.cpu_us / r.cpu_us).collect();
    println!(
        "median ({backend}): raw {:.0} msg/s {:.2} CPU-µs/msg, retry-kafka {:.0} msg/s {:.2} CPU-µs/msg; \
         msg/s ratio {:.2} (spread {}), CPU-µs ratio {:.2} (spread {})",
        rate(raw),
        cpu(raw),
        rate(ours),
        cpu(ours),
        median(&rate_ratios),
        spread(&rate_ratios),
        median(&cpu_ratios),
        spread(&cpu_ratios),
    );
    let broker = |r: &[Rate]| {
        let us: Vec<f64> = r.iter().filter_map(|r| r.broker_us).collect();
        (us.len() == r.len() && !us.is_empty()).then(|| median(&us))
    };
    if let (Some(raw_broker), Some(our_broker)) = (broker(raw), broker(ours)) {
        println!(
            "median ({backend}): the broker's CPU-µs per message meanwhile: raw {raw_broker:.2}, retry-kafka {our_broker:.2}"
        );
    }
}

#[tokio::main]
async fn main() {
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_default();
    if backend != "redis" {
        kafka_rounds().await;
    }
    if backend != "kafka" {
        redis_rounds().await;
    }
}

async fn kafka_rounds() {
    let broker = tokio::task::spawn_blocking(BenchKafka::start).await.unwrap();
    if let Some(pid) = broker.broker_pid() {
        BROKER_PID.set(pid).expect("one broker per run");
    }
    let kafka = match std::env::var("BENCH_COMMIT_RECORDS") {
        // A commit count (at least once), to price it against the interval alone.
        Ok(records) if !broker.is_embedded() => Kafka::builder(broker.bootstrap.clone())
            .commit_records(records.parse().expect("BENCH_COMMIT_RECORDS: a number"))
            .build()
            .expect("a Kafka backend on the benchmark's broker"),
        _ => broker.backend(),
    };
    kafka.create_topic(&Topic::main(TOPIC), PARTITIONS).await.unwrap();
    let broker = tokio::task::spawn_blocking(move || {
        broker.produce(TOPIC, *MESSAGES, message);
        broker
    })
    .await
    .unwrap();
    println!(
        "{} messages of ~70 bytes on {PARTITIONS} partitions, {} at {}",
        *MESSAGES, broker.description, broker.bootstrap
    );

    let (mut raw, mut raw_headers, mut ours, mut guarded) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Exactly-once hand-offs (issue 25) on a real broker: the mock keeps no transactional offsets.
    let exactly_once = (!broker.is_embedded()).then(|| {
        Kafka::builder(broker.bootstrap.clone())
            .exactly_once(true)
            .build()
            .expect("an exactly-once backend on the benchmark's broker")
    });
    let mut transactional = Vec::new();
    kafka
        .create_topic(&Topic::main(INVOICES), PARTITIONS)
        .await
        .unwrap();
    let (mut transforming, mut transforming_once) = (Vec::new(), Vec::new());
    for round in 0..*ROUNDS {
        let raw_side = |read_headers: bool| {
            let bootstrap = broker.bootstrap.clone();
            let group = format!("bench-raw-{round}-{read_headers}");
            tokio::task::spawn_blocking(move || raw_round(&bootstrap, &group, read_headers))
        };
        let raw_rate = raw_side(false).await.unwrap();
        let raw_headers_rate = raw_side(true).await.unwrap();
        // With and without a breaker, alternating which goes first.
        let fresh = broker.is_embedded() && round == 0;
        let (our_rate, guarded_rate) = if round % 2 == 0 {
            let ours = retry_kafka_round(&kafka, fresh, false).await;
            (ours, retry_kafka_round(&kafka, false, true).await)
        } else {
            let guarded = retry_kafka_round(&kafka, fresh, true).await;
            (retry_kafka_round(&kafka, false, false).await, guarded)
        };
        if let Some(exactly_once) = &exactly_once {
            let rate = retry_kafka_round(exactly_once, false, false).await;
            print_pair("kafka", round, ("retry-kafka", our_rate), ("exactly-once", rate));
            transactional.push(rate);
        }
        // A transforming handler (one output per order), at least once and exactly once.
        let transform = transform_round(&kafka).await;
        print_pair(
            "kafka",
            round,
            ("retry-kafka", our_rate),
            ("transform", transform),
        );
        transforming.push(transform);
        if let Some(exactly_once) = &exactly_once {
            let rate = transform_round(exactly_once).await;
            print_pair(
                "kafka",
                round,
                ("transform", transform),
                ("transform, exactly-once", rate),
            );
            transforming_once.push(rate);
        }
        print_round("kafka", round, "raw rdkafka loop", raw_rate, our_rate);
        print_round("kafka", round, "raw loop + headers()", raw_headers_rate, our_rate);
        print_pair(
            "kafka",
            round,
            ("retry-kafka", our_rate),
            ("with a breaker", guarded_rate),
        );
        raw.push(raw_rate);
        raw_headers.push(raw_headers_rate);
        ours.push(our_rate);
        guarded.push(guarded_rate);
    }
    print_medians("kafka", &raw, &ours);
    print_medians("kafka, the raw loop reading headers", &raw_headers, &ours);
    // "raw" is retry-kafka without a breaker here, "retry-kafka" the same handler behind one
    // (closed all along): the CPU-µs ratio is the breaker's cost per message.
    print_medians(
        "kafka, a breaker's cost: \"raw\" = without, \"retry-kafka\" = with",
        &ours,
        &guarded,
    );
    print_medians(
        "kafka, a transforming handler's cost: \"raw\" = no output, \"retry-kafka\" = one output per order, counted until written",
        &ours,
        &transforming,
    );
    if !transforming_once.is_empty() {
        print_medians(
            "kafka, exactly-once's cost with outputs: \"raw\" = transform at least once, \"retry-kafka\" = exactly once",
            &transforming,
            &transforming_once,
        );
    }
    if !transactional.is_empty() {
        print_medians(
            "kafka, exactly-once's cost: \"raw\" = at least once, \"retry-kafka\" = exactly once",
            &ours,
            &transactional,
        );
    }
}

async fn redis_rounds() {
    let server = BenchRedis::start();
    let url = server.url.clone();
    // Acknowledged entries stay, so every round reads the same streams.
    let redis = Redis::builder(url.clone())
        .keep_acknowledged(Duration::from_secs(86_400))
        .build()
        .unwrap();
    redis.create_topic(&Topic::main(TOPIC), PARTITIONS).await.unwrap();
    redis_produce(&redis).await;
    println!(
        "{} messages of ~70 bytes on {PARTITIONS} Redis streams at {url}",
        *MESSAGES
    );

    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for round in 0..*ROUNDS {
        let raw_rate = redis_raw_round(&url, &format!("bench-raw-{round}")).await;
        let our_rate = redis_retry_kafka_round(&redis, &url).await;
        print_round("redis", round, "raw XREADGROUP loop", raw_rate, our_rate);
        raw.push(raw_rate);
        ours.push(our_rate);
    }
    print_medians("redis", &raw, &ours);
    redis_waiting_memory(&redis, &url).await;
    drop(server);
}

/// What waiting retries cost in Redis memory: `BENCH_WAITING` (default 1,000,000) of the
/// bench's events, each with the failure context of a first retry, handed to a retry level's
/// delay set through the backend, as the runtime does.
async fn redis_waiting_memory(redis: &Redis, url: &str) {
    use retry_kafka::backend::OutboundRecord;
    use retry_kafka::handler::ErrorKind;
    use retry_kafka::headers::{FailureContext, Headers};
    let waiting = env_or("BENCH_WAITING", 1_000_000);
    let topic = "bench.orders.bench-rk.retry.1";
    redis
        .create_topic(&Topic::new(topic, TopicRole::Retry { level: 1 }), PARTITIONS)
        .await
        .unwrap();
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let used = |info: String| -> u64 {
        let line = info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap();
        line.trim().parse().unwrap()
    };
    let before = used(
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let due = now.as_millis() as i64 + 3_600_000;
    let started = Instant::now();
    let mut sends = futures::stream::FuturesUnordered::new();
    for order_id in 0..waiting {
        let redis = redis.clone();
        sends.push(async move {
            let event = OrderPlaced {
                order_id,
                amount_cents: 500 + order_id % 1000,
                customer: format!("customer-{}", order_id % 97),
            };
            let mut headers = Headers::new();
            FailureContext {
                original_topic: TOPIC.into(),
                original_partition: (order_id % 4) as u32,
                original_offset: order_id,
                original_timestamp_ms: Some(due - 3_600_000),
                group: "bench-rk".into(),
                attempts: 1,
                due_at_ms: Some(due),
                first_failure_at_ms: due - 3_600_000,
                last_failure_at_ms: due - 3_600_000,
                error_kind: ErrorKind::Transient,
                error_message: format!("gateway unavailable for order {order_id}"),
                replays: None,
            }
            .write_to(&mut headers);
            let record = OutboundRecord {
                partition: Some((order_id % 4) as u32),
                key: Some(order_id.to_string().into()),
                payload: Some(event.encode().unwrap().into()),
                headers,
            };
            redis
                .send(&Topic::new(topic, TopicRole::Retry { level: 1 }), record)
                .await
                .unwrap();
        });
        if sends.len() >= 256 {
            futures::StreamExt::next(&mut sends).await;
        }
    }
    futures::StreamExt::collect::<Vec<()>>(sends).await;
    let after = used(
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap(),
    );
    let set: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(format!("{{{topic}}}:delayed"))
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    println!(
        "{waiting} waiting retries (~70-byte event + failure context) written in {:.1} s: used_memory +{:.1} MiB \
         ({} bytes each; the delay set alone {:.1} MiB)",
        started.elapsed().as_secs_f64(),
        (after - before) as f64 / 1048576.0,
        (after - before) / waiting,
        set as f64 / 1048576.0
    );
    let _: () = redis::cmd("DEL")
        .arg(format!("{{{topic}}}:delayed"))
        .query_async(&mut conn)
        .await
        .unwrap();
}
