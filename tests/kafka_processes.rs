//! Kafka behaviour that needs real processes and a real broker (tansu): workers killed with
//! SIGKILL lose nothing, two workers share a group and one finishes what the other left, a
//! foreign client's garbage is dead-lettered byte for byte, and neither a long handler nor a
//! long retry delay makes a consumer leave its group.

mod conformance;
mod kafka_support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use conformance::Harness;
use kafka_support::{KafkaHarness, Tansu};
use retry_kafka::kafka::Kafka;
use retry_kafka::prelude::*;
use retry_kafka::{ErrorKind, FailureContext};
use serde::{Deserialize, Serialize};

const TOPIC: &str = "proc.orders";
const DLQ: &str = "proc.orders.proc-workers.dlq";

async fn broker() -> KafkaHarness {
    kafka_support::init_tracing();
    let broker = tokio::task::spawn_blocking(Tansu::start).await.unwrap();
    let backend = Kafka::builder(broker.bootstrap.clone())
        .consumer_property("session.timeout.ms", "6000")
        .consumer_property("heartbeat.interval.ms", "500")
        .build()
        .unwrap();
    KafkaHarness {
        backend,
        broker: Some(broker),
    }
}

/// A `rk-worker` process; killed with SIGKILL on drop if still running.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn spawn(harness: &KafkaHarness, name: &str) -> Self {
        let dir = std::env::temp_dir();
        let log = dir.join(format!("rk-worker-{}-{name}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let child = Command::new(env!("CARGO_BIN_EXE_rk-worker"))
            .env("KAFKA_BROKERS", harness.backend.brokers())
            .env("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000")
            .env("KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "500")
            .env("WORKER_LOG", &log)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rk-worker");
        Worker { child, log }
    }

    /// `(id, attempt, ok)` for every attempt this worker finished.
    fn attempts(&self) -> Vec<(u64, u32, bool)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let mut parts = line.split(' ');
                let id = parts.next().unwrap().parse().unwrap();
                let attempt = parts.next().unwrap().parse().unwrap();
                (id, attempt, parts.next() == Some("ok"))
            })
            .collect()
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.orders", key = "id")]
struct Order {
    id: u64,
}

async fn publish_orders(harness: &KafkaHarness, ids: std::ops::Range<u64>) {
    let producer = Producer::new(harness.backend.clone());
    for id in ids {
        producer.send(&Order { id }).await.unwrap();
    }
}

/// Waits until every order is done: succeeded (by any worker) or dead-lettered. Returns the
/// dead-lettered ids and how many successful attempts were repeats.
async fn wait_until_done(harness: &KafkaHarness, workers: &[&Worker], count: u64) -> (HashSet<u64>, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let attempts: Vec<(u64, u32, bool)> = workers.iter().flat_map(|w| w.attempts()).collect();
        let succeeded: HashSet<u64> = attempts.iter().filter(|a| a.2).map(|a| a.0).collect();
        let dead: HashSet<u64> = harness
            .records(DLQ)
            .await
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(r.payload.as_deref().unwrap()).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        let missing: Vec<u64> = (0..count)
            .filter(|id| !succeeded.contains(id) && !dead.contains(id))
            .collect();
        if missing.is_empty() {
            let successes = attempts.iter().filter(|a| a.2).count();
            return (dead, successes - succeeded.len());
        }
        assert!(Instant::now() < deadline, "orders never finished: {missing:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn expected_dead(count: u64) -> HashSet<u64> {
    (0..count).filter(|id| id % 50 == 13).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_and_restarted_loses_nothing() {
    let harness = broker().await;
    harness.create_topic(TOPIC, 4).await;
    publish_orders(&harness, 0..400).await;
    let mut first = Worker::spawn(&harness, "first");
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.attempts().len() < 100 {
        assert!(Instant::now() < deadline, "the first worker did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let done_before_kill = first.attempts().len();

    let second = Worker::spawn(&harness, "second");
    let (dead, repeats) = wait_until_done(&harness, &[&first, &second], 400).await;
    assert_eq!(
        dead,
        expected_dead(400),
        "exactly the invalid orders are dead-lettered"
    );
    eprintln!(
        "SIGKILL after {done_before_kill} attempts: every order done; {repeats} successful attempts were repeats, {} \
         dead letters for {} invalid orders",
        harness.records(DLQ).await.len(),
        dead.len()
    );
    // Repeats are bounded by what was in flight or not yet committed at the kill (1 s of auto-commit).
    assert!(repeats < 200, "{repeats} repeats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_group_and_one_finishes_what_a_killed_one_left() {
    let harness = broker().await;
    harness.create_topic(TOPIC, 4).await;
    let mut first = Worker::spawn(&harness, "a");
    let second = Worker::spawn(&harness, "b");
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.attempts().is_empty() || second.attempts().is_empty() {
        assert!(Instant::now() < deadline, "both workers never got partitions");
        publish_orders(&harness, published..published + 20).await;
        published += 20;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let partitions_of = |worker: &Worker| -> usize {
        worker
            .attempts()
            .iter()
            .map(|a| a.0)
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(partitions_of(&first) > 0 && partitions_of(&second) > 0);

    first.kill();
    publish_orders(&harness, published..published + 200).await;
    published += 200;
    let (dead, repeats) = wait_until_done(&harness, &[&first, &second], published).await;
    assert_eq!(dead, expected_dead(published));
    let by_survivor: HashSet<u64> = second.attempts().iter().map(|a| a.0).collect();
    let after_kill: HashSet<u64> = (published - 200..published).collect();
    assert!(
        after_kill.is_subset(&by_survivor),
        "the survivor did all the work after the kill"
    );
    eprintln!("two workers, one killed: {published} orders done, {repeats} repeated successes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_foreign_client_is_dead_lettered_byte_for_byte() {
    let harness = broker().await;
    harness.create_topic(TOPIC, 1).await;
    let worker = Worker::spawn(&harness, "garbage");
    // confluent-kafka (Python, librdkafka of its own) writes bytes no codec can read.
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "confluent-kafka is not installed: run ./scripts/install-test-deps.sh"
    );
    let script = r#"
import sys
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1]})
p.produce("proc.orders", key=b"\xfe\xffkey", value=b"\x00\x01\x02garbage\xff{",
          headers=[("origin", b"legacy-billing"), ("binary", b"\x00\xff")])
assert p.flush(10) == 0
"#;
    let status = Command::new(&python)
        .args(["-c", script, harness.backend.brokers()])
        .status()
        .unwrap();
    assert!(status.success(), "the foreign producer failed");
    // A valid order after the garbage: the consumer carries on.
    publish_orders(&harness, 1..2).await;

    let dead = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let records = harness.records(DLQ).await;
            if !records.is_empty() && worker.attempts().iter().any(|a| a.0 == 1 && a.2) {
                break records;
            }
            assert!(
                Instant::now() < deadline,
                "garbage never reached the DLQ, or order 1 was never handled"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(dead.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead.payload.as_deref(), Some(&b"\x00\x01\x02garbage\xff{"[..]));
    assert_eq!(dead.key.as_deref(), Some(&b"\xfe\xffkey"[..]));
    assert_eq!(dead.headers.get("origin"), Some(&b"legacy-billing"[..]));
    assert_eq!(dead.headers.get("binary"), Some(&b"\x00\xff"[..]));
    let context = FailureContext::from_headers(&dead.headers).unwrap();
    assert_eq!(
        (context.error_kind, context.attempts, context.original_offset),
        (ErrorKind::Decode, 1, 0)
    );
    assert_eq!(context.original_topic, TOPIC);
}

// A long handler and a long delay, in this process, with max.poll.interval.ms at its minimum.

static SLOW_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.slow", key = "id")]
struct Slow {
    id: u64,
}

#[retry_handler(group = "proc-slow", retries = ["8s"], dlq)]
async fn slower_than_max_poll(slow: Slow, ctx: Context) -> Result<(), HandlerError> {
    SLOW_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    match (slow.id, ctx.attempt()) {
        // Runs longer than max.poll.interval.ms.
        (0, _) => tokio::time::sleep(Duration::from_secs(8)).await,
        // Waits on the retry level longer than max.poll.interval.ms.
        (1, 1) => return Err(HandlerError::transient("later")),
        _ => {}
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_a_long_handler_nor_a_long_delay_leaves_the_group() {
    let broker = tokio::task::spawn_blocking(Tansu::start).await.unwrap();
    let backend = Kafka::builder(broker.bootstrap.clone())
        .consumer_property("session.timeout.ms", "6000")
        .consumer_property("heartbeat.interval.ms", "500")
        // librdkafka's smallest allowed value: not below the session timeout.
        .consumer_property("max.poll.interval.ms", "6000")
        .build()
        .unwrap();
    let harness = KafkaHarness {
        backend,
        broker: Some(broker),
    };
    harness.create_topic("proc.slow", 2).await;
    let app = App::builder()
        .backend(harness.backend())
        .handlers(|s| s.group() == "proc-slow")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let producer = app.producer();
    let sent = producer.send(&Slow { id: 0 }).await.unwrap();
    producer.send(&Slow { id: 1 }).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while app.stats().handler("slower_than_max_poll").unwrap().succeeded < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow handler or the long retry did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give a member that had left the group time to show it: a redelivered message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = SLOW_ATTEMPTS.load(Ordering::SeqCst);
    assert_eq!(
        attempts, 3,
        "order 0 once, order 1 twice; more means a member left and work was redelivered"
    );
    running.shutdown().await.unwrap();
    let committed = harness.committed("proc.slow", "proc-slow").await;
    assert_eq!(
        committed[sent.partition as usize],
        harness.end_offsets("proc.slow").await[sent.partition as usize]
    );
    let retry = "proc.slow.proc-slow.retry.1";
    let retried = harness.records(retry).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(
        harness.committed(retry, retry).await,
        harness.end_offsets(retry).await
    );
}
