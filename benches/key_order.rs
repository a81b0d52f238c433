//! Key-ordered retries (`ordering = "key"`) against the unordered default, in the same run.
//!
//! ```text
//! cargo bench --bench key_order                       # starts Apache Kafka (scripts/install-test-deps.sh)
//! KAFKA_BROKERS=host:9092 cargo bench --bench key_order
//! ```
//!
//! Workloads (Kafka: key order is kept on Kafka and in-process; each round reads the main
//! topic from the start under a fresh group, on fresh retry, held and dead-letter topics):
//!
//! 1. **failures**: `BENCH_EVENTS` (50,000) postings of `BENCH_KEYS` (5,000) accounts on 4
//!    partitions, each account's in order; 10% of the accounts fail once on their first
//!    posting (one 1 s level). The ordered handler holds each such account's later postings
//!    back until its retry succeeded; the unordered one runs them at once. Reported: the
//!    settle time (first event to every posting succeeded), CPU-µs per event over it, and per
//!    handler the accounts whose postings succeeded out of production order (the unordered
//!    twin shows what ordering prevents; the ordered handler must show 0).
//! 2. **concurrency**: `BENCH_IO_EVENTS` (5,000) postings of 1,000 accounts, no failures, a
//!    handler that waits 1 ms (I/O): `ordering = "key", concurrency = 16` against
//!    `concurrency = 1`, msg/s (different accounts in parallel, one account at a time).
//!
//! Rounds (`BENCH_ROUNDS`, 3) alternate the order of the two sides after one unmeasured
//! warm-up round; medians and the spread (min–max) are printed. `BENCH_ONLY=failures,concurrency`
//! picks workloads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use retry_kafka::app::TopicNaming;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Topic, TopicAdmin as _};
use retry_kafka::prelude::*;
use retry_kafka_suite::figures::{env_or, median, spread};
use retry_kafka_suite::{process_cpu_time, BenchKafka};
use serde::{Deserialize, Serialize};

const TOPIC: &str = "bench.postings";
const IO_TOPIC: &str = "bench.io";
const PARTITIONS: u32 = 4;
const IO_KEYS: u64 = 1_000;

static EVENTS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_EVENTS", 50_000));
static KEYS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_KEYS", 5_000));
static IO_EVENTS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_IO_EVENTS", 5_000));
static ROUNDS: LazyLock<u64> = LazyLock::new(|| env_or("BENCH_ROUNDS", 3));

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.postings", key = "account")]
struct Posting {
    account: u64,
    seq: u64,
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "bench.io", key = "account")]
struct Write {
    account: u64,
    seq: u64,
}

/// What one side of a workload saw: successes, when the first event arrived (and the
/// process's CPU time then), and per account the next posting expected.
struct Tally {
    succeeded: AtomicU64,
    started: AtomicBool,
    first: Mutex<Option<(Instant, Duration)>>,
    /// Per account: one more than the highest seq that succeeded so far.
    next_seq: Vec<AtomicU64>,
    /// Accounts with a posting that succeeded after a later one of theirs.
    out_of_order: Mutex<std::collections::HashSet<u64>>,
}

impl Tally {
    fn new(keys: u64) -> Self {
        Tally {
            succeeded: AtomicU64::new(0),
            started: AtomicBool::new(false),
            first: Mutex::new(None),
            next_seq: (0..keys).map(|_| AtomicU64::new(0)).collect(),
            out_of_order: Mutex::new(Default::default()),
        }
    }

    fn reset(&self) {
        self.succeeded.store(0, Ordering::SeqCst);
        self.started.store(false, Ordering::SeqCst);
        *self.first.lock().unwrap() = None;
        self.next_seq.iter().for_each(|n| n.store(0, Ordering::SeqCst));
        self.out_of_order.lock().unwrap().clear();
    }

    fn arrived(&self) {
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Relaxed);
            let mut first = self.first.lock().unwrap();
            if first.is_none() {
                *first = Some((Instant::now(), process_cpu_time()));
            }
        }
    }

    fn succeeded(&self, account: u64, seq: u64) {
        let before = self.next_seq[account as usize].fetch_max(seq + 1, Ordering::Relaxed);
        if before > seq + 1 {
            self.out_of_order.lock().unwrap().insert(account);
        }
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }
}

static ORDERED: LazyLock<Tally> = LazyLock::new(|| Tally::new(*KEYS));
static UNORDERED: LazyLock<Tally> = LazyLock::new(|| Tally::new(*KEYS));
static IO_ONE: LazyLock<Tally> = LazyLock::new(|| Tally::new(IO_KEYS));
static IO_SIXTEEN: LazyLock<Tally> = LazyLock::new(|| Tally::new(IO_KEYS));

/// 10% of the accounts fail once, on their first posting.
fn post(tally: &Tally, posting: &Posting, ctx: &Context) -> Result<(), HandlerError> {
    tally.arrived();
    if posting.account.is_multiple_of(10) && posting.seq == 0 && ctx.attempt() == 1 {
        return Err(HandlerError::transient("ledger busy"));
    }
    tally.succeeded(posting.account, posting.seq);
    Ok(())
}

#[retry_handler(group = "bench-ordered", retries = ["1s"], dlq, ordering = "key")]
async fn ordered(posting: Posting, ctx: Context) -> Result<(), HandlerError> {
    post(&ORDERED, &posting, &ctx)
}

#[retry_handler(group = "bench-unordered", retries = ["1s"], dlq)]
async fn unordered(posting: Posting, ctx: Context) -> Result<(), HandlerError> {
    post(&UNORDERED, &posting, &ctx)
}

async fn write(tally: &Tally, write: Write) -> Result<(), HandlerError> {
    tally.arrived();
    // The handler's I/O.
    tokio::time::sleep(Duration::from_millis(1)).await;
    tally.succeeded(write.account, write.seq);
    Ok(())
}

#[retry_handler(group = "bench-io-1", retries = ["1s"], dlq, ordering = "key")]
async fn io_one(event: Write) -> Result<(), HandlerError> {
    write(&IO_ONE, event).await
}

#[retry_handler(group = "bench-io-16", retries = ["1s"], dlq, ordering = "key", concurrency = 16)]
async fn io_sixteen(event: Write) -> Result<(), HandlerError> {
    write(&IO_SIXTEEN, event).await
}

/// One round of one handler (by group): first event to `events` successes.
struct Run {
    settle: Duration,
    cpu: Duration,
    out_of_order: usize,
}

async fn run(bench: &Bench, group: &'static str, tally: &Tally, events: u64, round: &str) -> Run {
    tally.reset();
    bench.rewind(group).await;
    let kafka = &bench.kafka;
    let app = App::builder()
        .backend(kafka.clone())
        .handlers(move |spec| spec.group() == group)
        .topic_naming(
            TopicNaming::new(
                format!("{{topic}}.{{group}}.{round}.retry.{{level}}"),
                format!("{{topic}}.{{group}}.{round}.dlq"),
            )
            .unwrap()
            .with_held(format!("{{topic}}.{{group}}.{round}.held"))
            .unwrap(),
        )
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let (settle, cpu) = loop {
        assert!(
            Instant::now() < deadline,
            "{group} round {round} did not settle in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        if tally.succeeded.load(Ordering::Relaxed) >= events {
            let (first, cpu_first) = tally.first.lock().unwrap().expect("an event arrived");
            break (first.elapsed(), process_cpu_time() - cpu_first);
        }
    };
    running.shutdown().await.unwrap();
    Run {
        settle,
        cpu,
        out_of_order: tally.out_of_order.lock().unwrap().len(),
    }
}

fn rate(events: u64, run: &Run) -> f64 {
    events as f64 / run.settle.as_secs_f64()
}

fn cpu_us(events: u64, run: &Run) -> f64 {
    run.cpu.as_secs_f64() * 1e6 / events as f64
}

/// The broker and its backend.
struct Bench {
    broker: BenchKafka,
    kafka: Kafka,
}

impl Bench {
    /// Makes the next round of `group` read its main topic from the start (every round's
    /// retry, held and dead-letter topics are its own).
    async fn rewind(&self, group: &str) {
        let topic = if group.starts_with("bench-io") {
            IO_TOPIC
        } else {
            TOPIC
        };
        self.broker.rewind(group, topic, PARTITIONS).await;
    }
}

/// Rounds of two sides, alternating which goes first, after a warm-up round of each.
async fn pairs(
    bench: &Bench,
    name: &str,
    sides: [(&'static str, &'static Tally); 2],
    events: u64,
) -> [Vec<Run>; 2] {
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for round in 0..=*ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let (group, tally) = sides[side];
            let run = run(bench, group, tally, events, &format!("{name}{round}")).await;
            if round > 0 {
                runs[side].push(run);
            }
        }
    }
    runs
}

async fn failures(bench: &Bench) {
    let events = *EVENTS;
    let [ordered, unordered] = pairs(
        bench,
        "f",
        [("bench-ordered", &ORDERED), ("bench-unordered", &UNORDERED)],
        events,
    )
    .await;
    let settle = |runs: &[Run]| runs.iter().map(|r| r.settle.as_secs_f64()).collect::<Vec<_>>();
    let cpu = |runs: &[Run]| runs.iter().map(|r| cpu_us(events, r)).collect::<Vec<_>>();
    let ratios: Vec<f64> = ordered
        .iter()
        .zip(&unordered)
        .map(|(o, u)| o.settle.as_secs_f64() / u.settle.as_secs_f64())
        .collect();
    let cpu_ratios: Vec<f64> = ordered
        .iter()
        .zip(&unordered)
        .map(|(o, u)| o.cpu.as_secs_f64() / u.cpu.as_secs_f64())
        .collect();
    println!(
        "failures ({events} postings of {} accounts, 10% of accounts fail once, one 1 s level):",
        *KEYS
    );
    for (name, runs) in [("ordering = \"key\"", &ordered), ("unordered       ", &unordered)] {
        println!(
            "  {name}: settled in {:.2} s ({} s), {:.2} CPU-µs/event ({}), accounts out of order: {:?}",
            median(&settle(runs)),
            spread(&settle(runs)),
            median(&cpu(runs)),
            spread(&cpu(runs)),
            runs.iter().map(|r| r.out_of_order).collect::<Vec<_>>()
        );
    }
    println!(
        "  ordered vs unordered: settle {:.2}× ({}), CPU {:.2}× ({})",
        median(&ratios),
        spread(&ratios),
        median(&cpu_ratios),
        spread(&cpu_ratios)
    );
    assert!(
        ordered.iter().all(|r| r.out_of_order == 0),
        "the key-ordered handler ran an account's postings out of order"
    );
}

async fn concurrency(bench: &Bench) {
    let events = *IO_EVENTS;
    let [one, sixteen] = pairs(
        bench,
        "c",
        [("bench-io-1", &IO_ONE), ("bench-io-16", &IO_SIXTEEN)],
        events,
    )
    .await;
    let rates = |runs: &[Run]| runs.iter().map(|r| rate(events, r)).collect::<Vec<_>>();
    let ratios: Vec<f64> = sixteen
        .iter()
        .zip(&one)
        .map(|(s, o)| rate(events, s) / rate(events, o))
        .collect();
    println!("concurrency ({events} postings of {IO_KEYS} accounts, 1 ms of I/O each, ordering = \"key\"):");
    println!(
        "  concurrency = 1: {:.0} msg/s ({}); concurrency = 16: {:.0} msg/s ({}); 16 vs 1: {:.1}× ({})",
        median(&rates(&one)),
        spread(&rates(&one)),
        median(&rates(&sixteen)),
        spread(&rates(&sixteen)),
        median(&ratios),
        spread(&ratios)
    );
    assert!(
        sixteen.iter().chain(&one).all(|r| r.out_of_order == 0),
        "an account's writes ran out of order"
    );
}

#[tokio::main]
async fn main() {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |what: &str| only.is_empty() || only.split(',').any(|o| o == what);
    let broker = tokio::task::spawn_blocking(BenchKafka::start).await.unwrap();
    let kafka = broker.backend();
    println!(
        "kafka: {} at {}; {} rounds; {} cores",
        broker.description,
        broker.bootstrap,
        *ROUNDS,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for topic in [TOPIC, IO_TOPIC] {
        kafka.create_topic(&Topic::main(topic), PARTITIONS).await.unwrap();
    }
    let broker = tokio::task::spawn_blocking(move || {
        // Each account's postings in order; a `Write` reads the same fields.
        for (topic, events, keys) in [(TOPIC, *EVENTS, *KEYS), (IO_TOPIC, *IO_EVENTS, IO_KEYS)] {
            broker.produce(topic, events, |id| {
                let (account, seq) = (id % keys, id / keys);
                (
                    account.to_string(),
                    Posting { account, seq }.encode().unwrap().to_vec(),
                )
            });
        }
        broker
    })
    .await
    .unwrap();
    let bench = Bench { broker, kafka };
    if wants("failures") {
        failures(&bench).await;
    }
    if wants("concurrency") {
        concurrency(&bench).await;
    }
}
