//! The failure path, measured against the success path in the same run.
//!
//! ```text
//! cargo bench --bench failures                        # starts Apache Kafka and redis-server (scripts/install-test-deps.sh)
//! BENCH_BACKEND=kafka cargo bench --bench failures    # one backend: kafka or redis
//! KAFKA_BROKERS=host:9092 REDIS_URL=redis://host:6379 cargo bench --bench failures
//! # instructions per event, librdkafka's mock cluster in this process (no JVM):
//! KAFKA_BROKERS=embedded BENCH_BACKEND=kafka BENCH_ONLY=outage BENCH_ROUNDS=1 BENCH_WARMUP=0 \
//!   BENCH_EVENTS=20000 valgrind --tool=callgrind --separate-threads=yes target/release/deps/failures-<hash> --bench
//! ```
//!
//! Workloads (each round on fresh retry and dead-letter topics; the main topic is written once
//! and read again from the start by each round):
//!
//! 1. **failures**: `BENCH_EVENTS` (200,000) events on 4 partitions; 10% fail once (one 1 s
//!    level), 1% always fail (dead-lettered after the retry). Beside it the same run with no
//!    failures. Reported: the main topic's drain rate (events/s until every first attempt has
//!    concluded: handled, or handed off and acknowledged by the broker), CPU-µs per event
//!    while draining, and the settle time (first event to every event succeeded or
//!    dead-lettered).
//! 2. **outage**: every event of the first half fails once, the second half succeeds: hand-offs
//!    per second from the main topic to level 1 (first event to the last hand-off of the failing
//!    half acknowledged), and, as an extra line, producing the same number of records (payload
//!    and failure headers) with a plain client on the same server, 1,024 in flight.
//!
//! The floor of both (Kafka): the same work written by hand with rdkafka (`failures/floor.rs`):
//! a `BaseConsumer` reads the main topic, decodes each event, decides by `charge`'s rule and
//! forwards each failure (same key, payload and `rk-*` headers) to one retry topic through an
//! idempotent `acks=all` producer, storing offsets either as it goes or from the delivery
//! reports (a contiguous prefix per partition). Its drain, like retry-kafka's, ends when every
//! first attempt has concluded, the last forward acknowledged by the broker; retry-kafka's is
//! read from `App::stats`, whose `retried` counts a hand-off once the broker acknowledged it.
//! Rounds alternate the order of retry-kafka and the floors; the ratios are retry-kafka's msg/s
//! over the floor's (higher is better) and its CPU per event over the floor's (lower is better).
//! 3. **lateness**: every event fails once into a 2 s level, produced at 1,000/s for 5 s, then
//!    20,000 in one burst: attempt start − `rk-due-at`, p50 / p99 / max, and how many were early.
//! 4. **peer** (Kafka): kafkajs-async-retry 1.0.0 on kafkajs 2.2.4 (Node.js, from npm) against
//!    retry-kafka on the same broker and main topic: 10% fail once, one 1 s level.
//!
//! 5. **idle** (Kafka): CPU of an app whose consumers have nothing to do for 10 s (group join
//!    included) against bare rdkafka consumers.
//! 6. **outage-rss** (Kafka): the outage workload's peak RSS with each side (retry-kafka, both
//!    floors) in a process of its own: this binary started again with `BENCH_FRESH_SIDE`, one
//!    run each, the sides' order rotating per round. In one process a run inherits what the
//!    runs before it left resident, so the outage lines' RSS only compare within a round.
//! 7. **exactly-once** (Kafka, not the mock cluster): the failures workload at least once and
//!    with `exactly_once(true)`, alternating which goes first: exactly-once's drain rate, CPU per
//!    event and settle time over at-least-once's.
//!
//! Rounds (`BENCH_ROUNDS`, 3) alternate, after `BENCH_WARMUP` (1) unmeasured rounds of the
//! failures workload that warm the broker up; medians and the spread (min–max) are printed.
//! `BENCH_ONLY=failures,outage,outage-rss,lateness,idle,peer,exactly-once` picks workloads; `BENCH_WINDOW` sets the
//! hand-off window (and the plain producer's), `BENCH_FETCH_WAIT_MS` the consumers'
//! `fetch.wait.max.ms`, `BENCH_RETRY_FETCH_WAIT_MS` the retry levels' (`retry_fetch_wait`), `BENCH_COMMIT_INTERVAL_MS`, `BENCH_COMMIT_RECORDS` and
//! `BENCH_AT_RISK_RECORDS` the Kafka builder's settings of those names, `BENCH_PRODUCER=linger.ms=20,...` producer properties (the app's and the
//! plain producer's), `BENCH_PROFILE_FAILURES=1` runs only the failing rounds (for `perf`).

#[path = "failures/floor.rs"]
mod floor;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redis::Value;
use retry_kafka::app::TopicNaming;
use retry_kafka::backend::kafka::{Kafka, KafkaBuilder};
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{Backend, OutboundRecord, Publish as _, Topic, TopicAdmin as _};
use retry_kafka::handler::ErrorKind;
use retry_kafka::headers::{FailureContext, Headers};
use retry_kafka::prelude::*;
use retry_kafka_suite::figures::{env_or, median, spread};
use retry_kafka_suite::{peak_rss_mib, process_cpu_time, reset_peak_rss, BenchKafka, BenchRedis};
use serde::{Deserialize, Serialize};

use floor::Stores;

const TOPIC: &str = "bench.fail";
const LATE_TOPIC: &str = "bench.late";
const PARTITIONS: u32 = 4;

static EVENTS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_EVENTS", 200_000));
static ROUNDS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_ROUNDS", 3));
/// Hand-offs in flight per consumer (`App::hand_off_window`), and the plain producer's window
/// in the outage comparison: `BENCH_WINDOW`, default the app's default.
static WINDOW: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_WINDOW", 1024));
/// Unmeasured rounds of each mode before the measured ones (`BENCH_WARMUP`, default 1): a
/// freshly started broker compiles its produce and fetch paths (JIT) during its first minute,
/// on the same two cores, and would charge that to whichever run came first.
static WARMUP: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_WARMUP", 1));

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.fail", key = "order_id")]
struct OrderPlaced {
    order_id: u64,
    amount_cents: u64,
    customer: String,
}

fn event(order_id: u64) -> OrderPlaced {
    OrderPlaced {
        order_id,
        amount_cents: 1000 + order_id,
        customer: format!("customer-{}", order_id % 1000),
    }
}

/// What `charge` does with an event, by workload.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    NoFailures = 0,
    /// 10% fail once, 1% always.
    Failures = 1,
    /// The first half fails once.
    Outage = 2,
    /// 10% fail once (the peer's workload).
    Peer = 3,
}

static MODE: AtomicU8 = AtomicU8::new(0);
/// First attempts that succeeded.
static FIRST_OK: AtomicU64 = AtomicU64::new(0);
/// When the first event arrived, and the process's CPU time then.
static FIRST: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);
static STARTED: AtomicBool = AtomicBool::new(false);

fn mark_first() {
    STARTED.store(true, Ordering::Relaxed);
    let mut first = FIRST.lock().unwrap();
    if first.is_none() {
        *first = Some((Instant::now(), process_cpu_time()));
    }
}

#[retry_handler(group = "bench-fail", retries = ["1s"], dlq)]
async fn charge(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    if !STARTED.load(Ordering::Relaxed) {
        // Once per run: the lock is not on the measured path.
        mark_first();
    }
    let id = order.order_id;
    let fails = match Mode::from(MODE.load(Ordering::Relaxed)) {
        Mode::NoFailures => false,
        Mode::Failures => id % 100 == 1 || (id.is_multiple_of(10) && ctx.attempt() == 1),
        Mode::Outage => id < *EVENTS / 2 && ctx.attempt() == 1,
        Mode::Peer => id.is_multiple_of(10) && ctx.attempt() == 1,
    };
    if fails {
        return Err(HandlerError::transient("payment gateway unavailable"));
    }
    if ctx.attempt() == 1 {
        FIRST_OK.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

impl From<u8> for Mode {
    fn from(value: u8) -> Self {
        match value {
            1 => Mode::Failures,
            2 => Mode::Outage,
            3 => Mode::Peer,
            _ => Mode::NoFailures,
        }
    }
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.late", key = "order_id")]
struct Late {
    order_id: u64,
}

/// Attempt start − rk-due-at of each retry, ms.
static LATENESS: Mutex<Vec<i64>> = Mutex::new(Vec::new());
/// Each retry's due time and lateness, ms, for `BENCH_LATE_TRACE=1`: where in the burst the
/// late ones are.
static LATE_TRACE: Mutex<Vec<(i64, i64)>> = Mutex::new(Vec::new());
static LATE_RETRIED: AtomicU64 = AtomicU64::new(0);

#[retry_handler(group = "bench-late", retries = ["2s"], dlq)]
async fn late(_event: Late, ctx: Context) -> Result<(), HandlerError> {
    if ctx.attempt() == 1 {
        return Err(HandlerError::transient("fails once"));
    }
    let due: i64 = ctx
        .headers()
        .get_str("rk-due-at")
        .and_then(|v| v.parse().ok())
        .expect("a retry carries rk-due-at");
    let late = epoch_ms() - due;
    LATENESS.lock().unwrap().push(late);
    LATE_TRACE.lock().unwrap().push((due, late));
    LATE_RETRIED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.idle", key = "order_id")]
struct Idle {
    order_id: u64,
}

#[retry_handler(group = "bench-idle", retries = ["1s"], dlq)]
async fn idle(_event: Idle) -> Result<(), HandlerError> {
    Ok(())
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One run of `charge` on `backend`, from a fresh start of its group on the main topic.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// First event to every first attempt concluded on the main topic: handled, or handed off
    /// and the hand-off acknowledged by the broker (`retried` counts a hand-off then).
    drain: Duration,
    /// CPU time of this process over `drain`.
    drain_cpu: Duration,
    /// First event to every event settled (not measured for a floor: zero).
    settle: Duration,
    /// First event to the last hand-off of the outage's failing half acknowledged.
    hand_offs: Duration,
    /// The process's peak RSS over the run, MiB (reset at its start).
    peak_rss_mib: f64,
    /// The process's RSS at the run's start, MiB: what earlier runs left resident.
    start_rss_mib: f64,
}

impl Run {
    fn drain_rate(&self) -> f64 {
        *EVENTS as f64 / self.drain.as_secs_f64()
    }

    fn cpu_us(&self) -> f64 {
        self.drain_cpu.as_secs_f64() * 1e6 / *EVENTS as f64
    }

    /// The outage's hand-offs (the first half of the events) per second.
    fn hand_off_rate(&self) -> f64 {
        (*EVENTS / 2) as f64 / self.hand_offs.as_secs_f64()
    }
}

async fn run_charge<B: Backend>(backend: B, mode: Mode, round: u64) -> Run {
    MODE.store(mode as u8, Ordering::SeqCst);
    FIRST_OK.store(0, Ordering::SeqCst);
    *FIRST.lock().unwrap() = None;
    STARTED.store(false, Ordering::SeqCst);
    let start_rss_mib = reset_peak_rss();
    let suffix = format!("{mode:?}-{round}").to_lowercase();
    let app = App::builder()
        .backend(backend)
        .hand_off_window(*WINDOW as usize)
        .handlers(|spec| spec.group() == "bench-fail")
        .topic_naming(
            TopicNaming::new(
                format!("{{topic}}.{{group}}.{suffix}.retry.{{level}}"),
                format!("{{topic}}.{{group}}.{suffix}.dlq"),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let events = *EVENTS;
    let half = events / 2;
    let (mut drain, mut drain_cpu, mut hand_offs) = (None, Duration::ZERO, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    let settle = loop {
        assert!(
            Instant::now() < deadline,
            "{mode:?} round {round} did not settle in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        let Some((first, cpu_first)) = *FIRST.lock().unwrap() else {
            continue;
        };
        let stats = app.stats();
        let stats = stats.handler("charge").unwrap();
        let retried = stats.retried[0];
        if drain.is_none() && FIRST_OK.load(Ordering::Relaxed) + retried >= events {
            drain = Some(first.elapsed());
            drain_cpu = process_cpu_time() - cpu_first;
        }
        if mode == Mode::Outage && hand_offs.is_none() && retried >= half {
            hand_offs = Some(first.elapsed());
        }
        if drain.is_some() && stats.succeeded + stats.dead_lettered >= events {
            break first.elapsed();
        }
    };
    let peak_rss_mib = peak_rss_mib();
    running.shutdown().await.unwrap();
    Run {
        drain: drain.unwrap(),
        drain_cpu,
        settle,
        hand_offs: hand_offs.unwrap_or_default(),
        peak_rss_mib,
        start_rss_mib,
    }
}

/// Where the rounds run: the main topic reset between rounds and a plain producer to compare.
trait Bench {
    type B: Backend;
    fn name(&self) -> &'static str;
    fn backend(&self) -> Self::B;
    /// Makes the next round of group `group` read the main topic from the start.
    async fn reset(&self, group: &str);
    /// Produces `count` copies of `record` to a fresh topic with a plain client, `window` in
    /// flight; returns the time taken.
    async fn raw_produce(&self, topic: &str, record: &OutboundRecord, count: u64) -> Duration;
    /// The hand-written floor of `mode` (`floor::run`), on a fresh group and retry topic;
    /// `None` where there is none (Redis, in-process).
    async fn floor(&self, _mode: Mode, _stores: Stores, _round: u64) -> Option<Run> {
        None
    }
}

/// Producer properties for experiments, on both the app and the plain producer:
/// `BENCH_PRODUCER=linger.ms=5,batch.size=65536`.
fn producer_properties() -> Vec<(String, String)> {
    std::env::var("BENCH_PRODUCER")
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The app's Kafka backend on `bootstrap`, with the experiments' settings from the
/// environment.
fn kafka_backend(bootstrap: &str) -> Kafka {
    kafka_builder(bootstrap).build().unwrap()
}

/// [`kafka_backend`]'s settings, to build on.
fn kafka_builder(bootstrap: &str) -> KafkaBuilder {
    let mut kafka = Kafka::builder(bootstrap.to_owned());
    if let Ok(wait) = std::env::var("BENCH_FETCH_WAIT_MS") {
        kafka = kafka.consumer_property("fetch.wait.max.ms", wait);
    }
    if let Ok(ms) = std::env::var("BENCH_RETRY_FETCH_WAIT_MS") {
        kafka = kafka.retry_fetch_wait(Duration::from_millis(ms.parse().unwrap()));
    }
    // Experiments on the poll thread's commits and the work-at-risk bound.
    if let Ok(ms) = std::env::var("BENCH_COMMIT_INTERVAL_MS") {
        kafka = kafka.commit_interval(Duration::from_millis(ms.parse().unwrap()));
    }
    if let Ok(records) = std::env::var("BENCH_COMMIT_RECORDS") {
        kafka = kafka.commit_records(records.parse().unwrap());
    }
    if let Ok(records) = std::env::var("BENCH_AT_RISK_RECORDS") {
        kafka = kafka.at_risk_records(records.parse().unwrap());
    }
    for (key, value) in producer_properties() {
        kafka = kafka.producer_property(key, value);
    }
    kafka
}

struct KafkaBench {
    broker: BenchKafka,
    bootstrap: String,
    kafka: Kafka,
}

impl KafkaBench {
    async fn start() -> Self {
        let broker = tokio::task::spawn_blocking(BenchKafka::start).await.unwrap();
        let bootstrap = broker.bootstrap.clone();
        let kafka = if broker.is_embedded() {
            // The mock cluster in this process (for callgrind): topics made through it.
            broker.backend()
        } else {
            kafka_backend(&bootstrap)
        };
        for topic in [TOPIC, LATE_TOPIC] {
            kafka.create_topic(&Topic::main(topic), PARTITIONS).await.unwrap();
        }
        let bench = KafkaBench {
            broker,
            bootstrap,
            kafka,
        };
        tokio::task::spawn_blocking(move || {
            bench.broker.produce(TOPIC, *EVENTS, |order_id| {
                (order_id.to_string(), event(order_id).encode().unwrap().to_vec())
            });
            bench
        })
        .await
        .unwrap()
    }
}

impl Bench for KafkaBench {
    type B = Kafka;

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn backend(&self) -> Kafka {
        self.kafka.clone()
    }

    async fn reset(&self, group: &str) {
        self.broker.rewind(group, TOPIC, PARTITIONS).await;
    }

    async fn raw_produce(&self, topic: &str, record: &OutboundRecord, count: u64) -> Duration {
        self.kafka
            .create_topic(&Topic::main(topic), PARTITIONS)
            .await
            .unwrap();
        // The backend's producer settings, on a plain client.
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2");
        for (key, value) in producer_properties() {
            config.set(key, value);
        }
        let producer: FutureProducer = config.create().unwrap();
        let headers = {
            let mut headers = rdkafka::message::OwnedHeaders::new();
            for (name, value) in record.headers.iter() {
                headers = headers.insert(rdkafka::message::Header {
                    key: name,
                    value: Some(value),
                });
            }
            headers
        };
        let started = Instant::now();
        let mut sends = futures::stream::FuturesUnordered::new();
        for i in 0..count {
            let partition = (i % PARTITIONS as u64) as i32;
            let delivery = producer
                .send_result(
                    FutureRecord::to(topic)
                        .partition(partition)
                        .key(record.key.as_deref().unwrap())
                        .payload(record.payload.as_deref().unwrap())
                        .headers(headers.clone()),
                )
                .map_err(|(e, _)| e)
                .unwrap();
            sends.push(delivery);
            if sends.len() as u64 >= *WINDOW {
                sends.next().await.unwrap().unwrap().unwrap();
            }
        }
        while let Some(delivery) = sends.next().await {
            delivery.unwrap().unwrap();
        }
        started.elapsed()
    }

    async fn floor(&self, mode: Mode, stores: Stores, round: u64) -> Option<Run> {
        let (group, retry_topic) = self.floor_topics(mode, stores, round).await;
        let bootstrap = self.bootstrap.clone();
        let run =
            tokio::task::spawn_blocking(move || floor::run(&bootstrap, &group, &retry_topic, mode, stores));
        Some(run.await.unwrap())
    }
}

impl KafkaBench {
    /// A floor run's group and retry topic (created here), fresh for each `round`.
    async fn floor_topics(&self, mode: Mode, stores: Stores, round: u64) -> (String, String) {
        let (group, retry_topic) = floor_names(mode, stores, round);
        self.kafka
            .create_topic(&Topic::main(retry_topic.as_str()), PARTITIONS)
            .await
            .unwrap();
        (group, retry_topic)
    }
}

/// A floor run's group and retry topic, fresh for each `round`.
fn floor_names(mode: Mode, stores: Stores, round: u64) -> (String, String) {
    let name = format!("{mode:?}-{}-{round}", stores.slug()).to_lowercase();
    (
        format!("bench-floor-{name}"),
        format!("{TOPIC}.floor.{name}.retry.1"),
    )
}

struct RedisBench {
    _server: BenchRedis,
    url: String,
    redis: Redis,
}

impl RedisBench {
    async fn start() -> Self {
        let server = BenchRedis::start();
        let url = server.url.clone();
        // Acknowledged entries stay, so every round reads the same main streams.
        let redis = Redis::builder(url.clone())
            .keep_acknowledged(Duration::from_secs(86_400))
            .build()
            .unwrap();
        for topic in [TOPIC, LATE_TOPIC] {
            redis.create_topic(&Topic::main(topic), PARTITIONS).await.unwrap();
        }
        let producer = Producer::new(redis.clone());
        let mut sends = futures::stream::FuturesUnordered::new();
        for order_id in 0..*EVENTS {
            let producer = producer.clone();
            sends.push(async move { producer.send(&event(order_id)).await.unwrap() });
            if sends.len() >= 1024 {
                sends.next().await;
            }
        }
        while sends.next().await.is_some() {}
        RedisBench {
            _server: server,
            url,
            redis,
        }
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Bench for RedisBench {
    type B = Redis;

    fn name(&self) -> &'static str {
        "redis"
    }

    fn backend(&self) -> Redis {
        self.redis.clone()
    }

    async fn reset(&self, group: &str) {
        let mut conn = self.connection().await;
        for p in 0..PARTITIONS {
            let _: Value = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(format!("{{{TOPIC}}}:{p}"))
                .arg(group)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    /// XADD of the same fields (payload, key, one per header), 1,024 in flight on one
    /// multiplexed connection.
    async fn raw_produce(&self, topic: &str, record: &OutboundRecord, count: u64) -> Duration {
        let conn = self.connection().await;
        let started = Instant::now();
        let mut sends = futures::stream::FuturesUnordered::new();
        for i in 0..count {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(format!("{{{topic}}}:{}", i % PARTITIONS as u64))
                .arg("*")
                .arg("payload")
                .arg(record.payload.as_deref().unwrap())
                .arg("key")
                .arg(record.key.as_deref().unwrap());
            for (name, value) in record.headers.iter() {
                cmd.arg(name).arg(value);
            }
            let mut conn = conn.clone();
            sends.push(async move {
                let _: Value = cmd.query_async(&mut conn).await.unwrap();
            });
            if sends.len() as u64 >= *WINDOW {
                sends.next().await;
            }
        }
        while sends.next().await.is_some() {}
        started.elapsed()
    }
}

/// The in-process broker: what the runtime itself costs, with no network and no broker.
struct MemoryBench {
    broker: Mutex<retry_kafka::backend::memory::InMemory>,
}

impl MemoryBench {
    async fn fresh() -> retry_kafka::backend::memory::InMemory {
        let broker = retry_kafka::backend::memory::InMemory::new();
        broker.create_topic(TOPIC, PARTITIONS);
        broker.create_topic(LATE_TOPIC, PARTITIONS);
        let producer = Producer::new(broker.clone());
        for order_id in 0..*EVENTS {
            producer.send(&event(order_id)).await.unwrap();
        }
        broker
    }
}

impl Bench for MemoryBench {
    type B = retry_kafka::backend::memory::InMemory;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn backend(&self) -> retry_kafka::backend::memory::InMemory {
        self.broker.lock().unwrap().clone()
    }

    /// A new broker with the events, so the group starts from nothing.
    async fn reset(&self, _group: &str) {
        let fresh = Self::fresh().await;
        *self.broker.lock().unwrap() = fresh;
    }

    async fn raw_produce(&self, topic: &str, record: &OutboundRecord, count: u64) -> Duration {
        let broker = self.backend();
        broker.create_topic(topic, PARTITIONS);
        let started = Instant::now();
        for _ in 0..count {
            broker.send(&Topic::main(topic), record.clone()).await.unwrap();
        }
        started.elapsed()
    }
}

/// A failed event as the runtime hands it on: the event with a first failure's headers.
fn failed_record() -> OutboundRecord {
    let now = epoch_ms();
    let mut headers = Headers::new();
    FailureContext {
        original_topic: TOPIC.into(),
        original_partition: 1,
        original_offset: 12_345,
        original_timestamp_ms: Some(now),
        group: "bench-fail".into(),
        attempts: 1,
        due_at_ms: Some(now + 1000),
        first_failure_at_ms: now,
        last_failure_at_ms: now,
        error_kind: ErrorKind::Transient,
        error_message: "payment gateway unavailable".into(),
        replays: None,
    }
    .write_to(&mut headers);
    OutboundRecord {
        partition: None,
        key: Some("12345".into()),
        payload: Some(event(12_345).encode().unwrap().into()),
        headers,
    }
}

async fn failures<X: Bench>(bench: &X) -> (Vec<Run>, Vec<Run>) {
    let (mut clean, mut failing) = (Vec::new(), Vec::new());
    for round in 0..*WARMUP {
        for mode in [Mode::NoFailures, Mode::Failures] {
            bench.reset("bench-fail").await;
            let run = run_charge(bench.backend(), mode, 1000 + round).await;
            println!(
                "{} warm-up {round}: {mode:?}: drain {:>8.0} ev/s, not counted",
                bench.name(),
                run.drain_rate()
            );
        }
    }
    let mut floors = [Vec::new(), Vec::new()];
    for round in 0..*ROUNDS {
        bench.reset("bench-fail").await;
        if std::env::var_os("BENCH_PROFILE_FAILURES").is_some() {
            // Only the failing run, for a profiler: `perf record -- .../failures --bench`.
            run_charge(bench.backend(), Mode::Failures, round).await;
            continue;
        }
        if round % 2 == 1 {
            run_floors(bench, Mode::Failures, round, &mut floors).await;
        }
        let run = run_charge(bench.backend(), Mode::NoFailures, round).await;
        println!(
            "{} round {round}: no failures     drain {:>8.0} ev/s  {:>5.2} CPU-µs/ev  settle {:>6.2} s",
            bench.name(),
            run.drain_rate(),
            run.cpu_us(),
            run.settle.as_secs_f64()
        );
        clean.push(run);
        bench.reset("bench-fail").await;
        let run = run_charge(bench.backend(), Mode::Failures, round).await;
        println!(
            "{} round {round}: 10% once + 1%   drain {:>8.0} ev/s  {:>5.2} CPU-µs/ev  settle {:>6.2} s",
            bench.name(),
            run.drain_rate(),
            run.cpu_us(),
            run.settle.as_secs_f64()
        );
        failing.push(run);
        if round % 2 == 0 {
            run_floors(bench, Mode::Failures, round, &mut floors).await;
        }
    }
    if clean.is_empty() {
        return (clean, failing);
    }
    let ratios: Vec<f64> = clean
        .iter()
        .zip(&failing)
        .map(|(c, f)| f.drain_rate() / c.drain_rate())
        .collect();
    let settle_ratios: Vec<f64> = clean
        .iter()
        .zip(&failing)
        .map(|(c, f)| f.settle.as_secs_f64() / (c.settle.as_secs_f64() + 1.0))
        .collect();
    let m = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!(
        "median ({}) failures: drain {:.0} ev/s ({:.2} CPU-µs/ev) vs no failures {:.0} ev/s ({:.2} CPU-µs/ev): \
         ratio {:.2} (spread {}; target ≥ 0.85); settle {:.2} s vs no-failure settle + 1 s delay {:.2} s: \
         ratio {:.2} (spread {}; target ≤ 1.1)",
        bench.name(),
        m(&failing, Run::drain_rate),
        m(&failing, Run::cpu_us),
        m(&clean, Run::drain_rate),
        m(&clean, Run::cpu_us),
        median(&ratios),
        spread(&ratios),
        m(&failing, |r| r.settle.as_secs_f64()),
        m(&clean, |r| r.settle.as_secs_f64()) + 1.0,
        median(&settle_ratios),
        spread(&settle_ratios),
    );
    print_floor_medians(
        bench.name(),
        "failures",
        "ev/s drained",
        &failing,
        &floors,
        Run::drain_rate,
        "target ≥ 0.9",
    );
    (clean, failing)
}

/// Runs the floor of `mode` once per way of storing offsets, prints each and adds it to
/// `floors` (in `Stores::BOTH`'s order); nothing where the backend has no floor.
async fn run_floors<X: Bench>(bench: &X, mode: Mode, round: u64, floors: &mut [Vec<Run>; 2]) {
    for (runs, stores) in floors.iter_mut().zip(Stores::BOTH) {
        let Some(run) = bench.floor(mode, stores, round).await else {
            return;
        };
        let name = bench.name();
        let label = stores.label();
        if mode == Mode::Outage {
            println!(
                "{name} round {round}: outage: {} hand-offs at {:>8.0}/s, {label}; main drained in {:.2} s ({:.1} CPU-µs/event), peak RSS {:.0} MiB ({:.0} at its start)",
                *EVENTS / 2,
                run.hand_off_rate(),
                run.drain.as_secs_f64(),
                run.cpu_us(),
                run.peak_rss_mib,
                run.start_rss_mib,
            );
        } else {
            println!(
                "{name} round {round}: 10% once + 1%   drain {:>8.0} ev/s  {:>5.2} CPU-µs/ev  {label}",
                run.drain_rate(),
                run.cpu_us(),
            );
        }
        runs.push(run);
    }
}

/// One line per floor: retry-kafka's `rate` (in `unit`) and CPU per event against the floor's,
/// medians and the per-round ratios' spread.
fn print_floor_medians(
    name: &str,
    what: &str,
    unit: &str,
    ours: &[Run],
    floors: &[Vec<Run>; 2],
    rate: fn(&Run) -> f64,
    target: &str,
) {
    for (runs, stores) in floors.iter().zip(Stores::BOTH) {
        if runs.is_empty() {
            return;
        }
        let of = |runs: &[Run], f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let rates: Vec<f64> = ours.iter().zip(runs).map(|(o, f)| rate(o) / rate(f)).collect();
        let cpus: Vec<f64> = ours
            .iter()
            .zip(runs)
            .map(|(o, f)| o.cpu_us() / f.cpu_us())
            .collect();
        println!(
            "median ({name}) {what}, retry-kafka vs {}: {:.0} vs {:.0} {unit}, ratio {:.2} (spread {}); \
             {:.2} vs {:.2} CPU-µs/ev, {:.2}× (spread {}) ({target})",
            stores.label(),
            of(ours, &rate),
            of(runs, &rate),
            median(&rates),
            spread(&rates),
            of(ours, &Run::cpu_us),
            of(runs, &Run::cpu_us),
            median(&cpus),
            spread(&cpus),
        );
    }
}

async fn outage<X: Bench>(bench: &X) {
    let half = *EVENTS / 2;
    let record = failed_record();
    let (mut ours, mut raw, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut floors = [Vec::new(), Vec::new()];
    for round in 0..*ROUNDS {
        if round % 2 == 1 {
            run_floors(bench, Mode::Outage, round, &mut floors).await;
        }
        let cpu_before = process_cpu_time();
        let took = bench
            .raw_produce(&format!("bench.raw-produce.{round}"), &record, half)
            .await;
        let raw_cpu = (process_cpu_time() - cpu_before).as_secs_f64() * 1e6 / half as f64;
        let raw_rate = half as f64 / took.as_secs_f64();
        bench.reset("bench-fail").await;
        let run = run_charge(bench.backend(), Mode::Outage, round).await;
        let rate = half as f64 / run.hand_offs.as_secs_f64();
        println!(
            "{} round {round}: outage: {half} hand-offs at {rate:>8.0}/s, plain produce {raw_rate:>8.0}/s \
             ({raw_cpu:.1} CPU-µs each), ratio {:.2}; main drained in {:.2} s ({:.1} CPU-µs/event), settled in {:.2} s, peak RSS {:.0} MiB ({:.0} at its start)",
            bench.name(),
            rate / raw_rate,
            run.drain.as_secs_f64(),
            run.cpu_us(),
            run.settle.as_secs_f64(),
            run.peak_rss_mib,
            run.start_rss_mib,
        );
        ours.push(rate);
        raw.push(raw_rate);
        runs.push(run);
        if round % 2 == 0 {
            run_floors(bench, Mode::Outage, round, &mut floors).await;
        }
    }
    let ratios: Vec<f64> = ours.iter().zip(&raw).map(|(o, r)| o / r).collect();
    println!(
        "median ({}) outage: hand-offs {:.0}/s vs plain produce {:.0}/s: ratio {:.2} (spread {}; target ≥ 0.5)",
        bench.name(),
        median(&ours),
        median(&raw),
        median(&ratios),
        spread(&ratios)
    );
    let rss = |runs: &[Run]| median(&runs.iter().map(|r| r.peak_rss_mib).collect::<Vec<_>>());
    if floors[1].is_empty() {
        println!("median ({}) outage: peak RSS {:.0} MiB", bench.name(), rss(&runs));
    } else {
        println!(
            "median ({}) outage: peak RSS {:.0} MiB vs the floors' {:.0} (as it goes) and {:.0} MiB (from reports) (target ≤ 100 MiB; \
             a run inherits what earlier ones left resident: round 0 runs retry-kafka first, in a fresh process)",
            bench.name(),
            rss(&runs),
            rss(&floors[0]),
            rss(&floors[1]),
        );
    }
    print_floor_medians(
        bench.name(),
        "outage",
        "hand-offs/s",
        &runs,
        &floors,
        Run::hand_off_rate,
        "target ≥ 0.7; ≤ 1.5×",
    );
}

/// One side of the fresh-process outage runs, by the name the parent gives its child.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    RetryKafka,
    Floor(Stores),
}

impl Side {
    const ALL: [Side; 3] = [
        Side::RetryKafka,
        Side::Floor(Stores::AsItGoes),
        Side::Floor(Stores::FromReports),
    ];

    fn slug(self) -> &'static str {
        match self {
            Side::RetryKafka => "retry-kafka",
            Side::Floor(stores) => stores.slug(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Side::RetryKafka => "retry-kafka",
            Side::Floor(stores) => stores.label(),
        }
    }
}

/// Rounds of the fresh-process runs are numbered from here: their topics and groups never
/// meet the in-process rounds' (`outage` may run in the same invocation).
const FRESH_ROUNDS: u64 = 2000;
/// The line a child prints for its parent: peak RSS, RSS at the run's start (MiB), hand-offs/s.
const FRESH_LINE: &str = "fresh-process-run:";

/// The outage workload's memory, each side in a process of its own (this binary, started
/// again with `BENCH_FRESH_SIDE`): in one process a run inherits what the runs before it left
/// resident (glibc keeps freed memory), so only a fresh process's peak is a figure.
async fn outage_fresh(bench: &KafkaBench) {
    let mut peaks: Vec<Vec<f64>> = vec![Vec::new(); Side::ALL.len()];
    for round in 0..*ROUNDS {
        // Alternate which side goes first: the broker's state is not charged to one side.
        let mut order: Vec<(usize, Side)> = Side::ALL.into_iter().enumerate().collect();
        order.rotate_left(round as usize % Side::ALL.len());
        for (at, side) in order {
            let numbered = FRESH_ROUNDS + round;
            match side {
                Side::RetryKafka => bench.reset("bench-fail").await,
                Side::Floor(stores) => {
                    bench.floor_topics(Mode::Outage, stores, numbered).await;
                }
            }
            let output = tokio::process::Command::new(std::env::current_exe().unwrap())
                .arg("--bench")
                .env("BENCH_FRESH_SIDE", side.slug())
                .env("BENCH_FRESH_ROUND", numbered.to_string())
                .env("KAFKA_BROKERS", &bench.bootstrap)
                .env("BENCH_EVENTS", EVENTS.to_string())
                .output()
                .await
                .expect("starting the benchmark again for a fresh-process run");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let figures: Vec<f64> = stdout
                .lines()
                .find_map(|line| line.strip_prefix(FRESH_LINE))
                .map(|rest| rest.split_whitespace().map(|v| v.parse().unwrap()).collect())
                .unwrap_or_else(|| {
                    panic!(
                        "the fresh-process run of {} printed no figures ({}): {stdout}{}",
                        side.label(),
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    )
                });
            let [peak, start, rate] = figures[..] else {
                panic!("{FRESH_LINE} {figures:?}: expected three figures");
            };
            println!(
                "kafka round {round}: outage in a fresh process: {}: peak RSS {peak:.0} MiB ({start:.0} at the run's start), {rate:.0} hand-offs/s",
                side.label()
            );
            peaks[at].push(peak);
        }
    }
    println!(
        "median (kafka) outage, a fresh process per run: peak RSS retry-kafka {:.0} MiB (spread {}) vs the floors' {:.0} (as it goes) and {:.0} MiB (from reports); \
         ratio {:.2} to the floor from reports (target ≤ 100 MiB)",
        median(&peaks[0]),
        spread(&peaks[0]),
        median(&peaks[1]),
        median(&peaks[2]),
        median(&peaks[0]) / median(&peaks[2]),
    );
}

/// A fresh-process run (see [`outage_fresh`]): one outage run of `side` against the parent's
/// broker (`KAFKA_BROKERS`), its figures printed on one line.
async fn outage_fresh_child(side: &str) {
    let round: u64 = env_or("BENCH_FRESH_ROUND", FRESH_ROUNDS);
    let bootstrap = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS: the parent's broker");
    let side = Side::ALL
        .into_iter()
        .find(|s| s.slug() == side)
        .unwrap_or_else(|| panic!("BENCH_FRESH_SIDE={side}: not a side"));
    let run = match side {
        Side::RetryKafka => run_charge(kafka_backend(&bootstrap), Mode::Outage, round).await,
        Side::Floor(stores) => {
            let (group, retry_topic) = floor_names(Mode::Outage, stores, round);
            tokio::task::spawn_blocking(move || {
                floor::run(&bootstrap, &group, &retry_topic, Mode::Outage, stores)
            })
            .await
            .unwrap()
        }
    };
    println!(
        "{FRESH_LINE} {} {} {}",
        run.peak_rss_mib,
        run.start_rss_mib,
        run.hand_off_rate()
    );
}

/// Runs `late` while `count` events are produced `every` apart (or all at once when zero);
/// prints the lateness of their retries.
async fn lateness<X: Bench>(bench: &X, what: &str, count: u64, every: Duration) {
    LATENESS.lock().unwrap().clear();
    LATE_RETRIED.store(0, Ordering::SeqCst);
    let app = App::builder()
        .backend(bench.backend())
        .handlers(|spec| spec.group() == "bench-late")
        .topic_naming(
            TopicNaming::new(
                format!("{{topic}}.{{group}}.{what}.retry.{{level}}"),
                format!("{{topic}}.{{group}}.{what}.dlq"),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    // One event through both levels first, so both consumers have joined before measuring.
    app.producer().send(&Late { order_id: u64::MAX }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while LATE_RETRIED.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the warm-up retry did not run in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    LATENESS.lock().unwrap().clear();
    LATE_TRACE.lock().unwrap().clear();
    LATE_RETRIED.store(0, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    // Each send its own task, so pacing never waits for an acknowledgement.
    let mut sends = tokio::task::JoinSet::new();
    for order_id in 0..count {
        if !every.is_zero() {
            tokio::time::sleep_until(started + every * order_id as u32).await;
        }
        let producer = app.producer();
        sends.spawn(async move { producer.send(&Late { order_id }).await.unwrap() });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while LATE_RETRIED.load(Ordering::SeqCst) < count {
        assert!(Instant::now() < deadline, "{what}: retries missing after 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.shutdown().await.unwrap();
    let mut late = LATENESS.lock().unwrap().clone();
    late.sort_unstable();
    let at = |q: f64| late[((late.len() - 1) as f64 * q).round() as usize];
    let early = late.iter().filter(|&&l| l < 0).count();
    if std::env::var_os("BENCH_LATE_TRACE").is_some() {
        // Per 20 ms of due time: how many were due, and the worst lateness among them.
        let mut trace = LATE_TRACE.lock().unwrap().clone();
        trace.sort_unstable();
        let first = trace.first().map_or(0, |&(due, _)| due);
        let mut buckets = std::collections::BTreeMap::<i64, (u32, i64)>::new();
        for (due, late) in trace {
            let bucket = buckets.entry((due - first) / 20 * 20).or_default();
            bucket.0 += 1;
            bucket.1 = bucket.1.max(late);
        }
        for (at, (count, worst)) in buckets {
            println!("  {what}: due +{at:>5} ms: {count:>5} due, worst {worst:>4} ms late");
        }
    }
    println!(
        "{} lateness, {what} ({count} events, 2 s level): p50 {} ms, p99 {} ms, max {} ms, early {early} (target p99 ≤ 15 ms, 0 early: issue 21)",
        bench.name(),
        at(0.5),
        at(0.99),
        late.last().unwrap(),
    );
}

/// kafkajs-async-retry on the same main topic, against retry-kafka's run of the same workload.
async fn peer(bench: &KafkaBench) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer/kafkajs-async-retry");
    let installed = std::process::Command::new("npm")
        .args(["ci", "--silent", "--no-audit", "--no-fund", "--prefix", dir])
        .status();
    if !matches!(installed, Ok(status) if status.success()) {
        println!("peer: not run: `npm ci --prefix {dir}` failed (Node.js 20 and npm are needed)");
        return;
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..*ROUNDS {
        bench.reset("bench-fail").await;
        let run = run_charge(bench.backend(), Mode::Peer, round).await;
        println!(
            "kafka round {round}: retry-kafka, 10% fail once: drain {:>8.0} ev/s, settle {:.2} s",
            run.drain_rate(),
            run.settle.as_secs_f64()
        );
        let output = tokio::process::Command::new("node")
            .arg(format!("{dir}/bench.js"))
            .env("KAFKA_BROKERS", &bench.bootstrap)
            .env("BENCH_TOPIC", TOPIC)
            .env("BENCH_EVENTS", EVENTS.to_string())
            .env("BENCH_GROUP", format!("peer-kafkajs-{round}"))
            .env("BENCH_RETRY_DELAY_MS", "1000")
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .expect("run node");
        let text = String::from_utf8_lossy(&output.stdout);
        let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) else {
            println!(
                "peer: kafkajs-async-retry printed no result ({}); output: {text}",
                output.status
            );
            return;
        };
        let result: serde_json::Value = serde_json::from_str(line).unwrap();
        let (drain, settle) = (
            result["drain_s"].as_f64().unwrap(),
            result["settle_s"].as_f64().unwrap(),
        );
        println!(
            "kafka round {round}: kafkajs-async-retry:        drain {:>8.0} ev/s, settle {settle:.2} s, group join {} ms",
            *EVENTS as f64 / drain,
            result["join_ms"]
        );
        ours.push(run);
        theirs.push((drain, settle));
    }
    let ratio: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(o, t)| o.drain_rate() / (*EVENTS as f64 / t.0))
        .collect();
    let settle: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(o, t)| t.1 / o.settle.as_secs_f64())
        .collect();
    println!(
        "median (kafka) vs kafkajs-async-retry: drain rate ratio {:.1}× (spread {}; target ≥ 30×), \
         settle time {:.1}× shorter (spread {})",
        median(&ratio),
        spread(&ratio),
        median(&settle),
        spread(&settle)
    );
}

/// CPU used over `IDLE_FOR` by an app whose two consumers (main topic and one retry level)
/// have nothing to read, from its start (so the group join is included), against two bare
/// rdkafka consumers subscribed to the same kind of topics, polling, for as long.
async fn idle_cpu(bench: &KafkaBench) {
    const IDLE_FOR: Duration = Duration::from_secs(10);
    for topic in ["bench.idle", "bench.idle.bare.0", "bench.idle.bare.1"] {
        bench
            .kafka
            .create_topic(&Topic::main(topic), PARTITIONS)
            .await
            .unwrap();
    }
    let idle_app = |backend: Kafka| async move {
        let before = process_cpu_time();
        let app = App::builder()
            .backend(backend)
            .handlers(|spec| spec.group() == "bench-idle")
            .build()
            .unwrap();
        let running = app.start().await.unwrap();
        tokio::time::sleep(IDLE_FOR).await;
        let cpu = process_cpu_time() - before;
        running.shutdown().await.unwrap();
        cpu
    };
    let ours = idle_app(bench.backend()).await;
    // What a shorter retry-level fetch wait costs an idle app (it buys burst lateness).
    let short_wait = Duration::from_millis(5);
    let short = idle_app(
        kafka_builder(&bench.bootstrap)
            .retry_fetch_wait(short_wait)
            .build()
            .unwrap(),
    )
    .await;

    let bootstrap = bench.bootstrap.clone();
    let before = process_cpu_time();
    let bare = tokio::task::spawn_blocking(move || {
        let consumers: Vec<BaseConsumer> = (0..2)
            .map(|i| {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", format!("bench-idle-bare-{i}"))
                    .set("enable.auto.offset.store", "false")
                    .create()
                    .unwrap();
                consumer.subscribe(&[&format!("bench.idle.bare.{i}")]).unwrap();
                consumer
            })
            .collect();
        let started = Instant::now();
        while started.elapsed() < IDLE_FOR {
            for consumer in &consumers {
                let _ = consumer.poll(Duration::from_millis(50));
            }
        }
        process_cpu_time()
    })
    .await
    .unwrap()
        - before;
    println!(
        "kafka idle for {IDLE_FOR:?} from start (group join included), 2 consumers: retry-kafka {:.3} CPU-s, \
         bare rdkafka consumers {:.3} CPU-s: ratio {:.2} (target ≤ 2); retry-kafka with retry levels fetching \
         every {short_wait:?} (retry_fetch_wait) {:.3} CPU-s: ratio {:.2}",
        ours.as_secs_f64(),
        bare.as_secs_f64(),
        ours.as_secs_f64() / bare.as_secs_f64(),
        short.as_secs_f64(),
        short.as_secs_f64() / bare.as_secs_f64(),
    );
}

async fn lateness_runs<X: Bench>(bench: &X) {
    lateness(bench, "paced", 5_000, Duration::from_millis(1)).await;
    lateness(bench, "burst", 20_000, Duration::ZERO).await;
}

/// Workload 7: the failures workload at least once and exactly once, alternating.
async fn exactly_once(bench: &KafkaBench) {
    let transactional = kafka_builder(&bench.bootstrap)
        .exactly_once(true)
        .build()
        .unwrap();
    let (mut plain, mut exact) = (Vec::new(), Vec::new());
    for round in 0..*ROUNDS {
        for exactly in [round % 2 == 1, round % 2 == 0] {
            bench.reset("bench-fail").await;
            let (backend, runs, name, offset) = match exactly {
                true => (transactional.clone(), &mut exact, "exactly once ", 3000),
                false => (bench.backend(), &mut plain, "at least once", 2000),
            };
            let run = run_charge(backend, Mode::Failures, offset + round).await;
            println!(
                "kafka round {round}: {name}  drain {:>8.0} ev/s  {:>5.2} CPU-µs/ev  settle {:>6.2} s",
                run.drain_rate(),
                run.cpu_us(),
                run.settle.as_secs_f64()
            );
            runs.push(run);
        }
    }
    let ratios = |f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
        exact.iter().zip(&plain).map(|(e, p)| f(e) / f(p)).collect()
    };
    let (drain, cpu, settle) = (
        ratios(&Run::drain_rate),
        ratios(&Run::cpu_us),
        ratios(&|run: &Run| run.settle.as_secs_f64()),
    );
    println!(
        "median (kafka) exactly once vs at least once, 10% once + 1% always: drain {:.2}× (spread {}), CPU per \
         event {:.2}× ({}), settle {:.2}× ({})",
        median(&drain),
        spread(&drain),
        median(&cpu),
        spread(&cpu),
        median(&settle),
        spread(&settle)
    );
}

#[tokio::main]
async fn main() {
    if let Ok(side) = std::env::var("BENCH_FRESH_SIDE") {
        return outage_fresh_child(&side).await;
    }
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_default();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |what: &str| only.is_empty() || only.split(',').any(|o| o == what);
    println!(
        "{} events of ~70 bytes on {PARTITIONS} partitions, {} rounds; {} cores",
        *EVENTS,
        *ROUNDS,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if backend != "redis" {
        let bench = KafkaBench::start().await;
        println!("kafka: {} at {}", bench.broker.description, bench.bootstrap);
        if wants("failures") {
            failures(&bench).await;
        }
        if wants("outage") {
            outage(&bench).await;
        }
        if wants("outage-rss") && !bench.broker.is_embedded() {
            outage_fresh(&bench).await;
        }
        if wants("lateness") {
            lateness_runs(&bench).await;
        }
        if wants("idle") {
            idle_cpu(&bench).await;
        }
        if wants("peer") {
            peer(&bench).await;
        }
        if wants("exactly-once") && !bench.broker.is_embedded() {
            exactly_once(&bench).await;
        }
    }
    if backend == "memory" {
        let bench = MemoryBench {
            broker: Mutex::new(MemoryBench::fresh().await),
        };
        if wants("failures") {
            failures(&bench).await;
        }
        if wants("outage") {
            outage(&bench).await;
        }
        return;
    }
    if backend != "kafka" {
        let bench = RedisBench::start().await;
        println!("redis: redis-server at {}", bench.url);
        if wants("failures") {
            failures(&bench).await;
        }
        if wants("outage") {
            outage(&bench).await;
        }
        if wants("lateness") {
            lateness_runs(&bench).await;
        }
    }
}
