//! Exactly-once hand-offs (`Kafka::builder().exactly_once(true)`): the delivery contract holds
//! with each consumer's hand-offs and offsets committed in Kafka transactions, on librdkafka's
//! mock cluster and on Apache Kafka (one broker for the binary).

mod conformance;
mod kafka_support;
mod process_support;

use kafka_support::KafkaHarness;

async fn apache_kafka_exactly_once() -> KafkaHarness {
    KafkaHarness::on_shared_broker(|settings| settings.exactly_once(true)).await
}

mod apache_kafka {
    use super::*;
    conformance_suite!(apache_kafka_exactly_once);
    key_order_suite!(apache_kafka_exactly_once);
}

// The kill -9 loop: 20,000 orders, the worker (`rk-worker`: every 7th order fails once, every
// 50th from 13 on is invalid) killed with SIGKILL five times mid-run and started again, on a
// broker of the test's own (the worker's topic and group are built in); each success emits a
// shipment (a consume, transform, produce handler). Exactly-once on: not one record twice in the
// retry level, the dead letters or the shipments (read committed here and by confluent-kafka);
// off: what a kill repeats there, counted.

mod kill_loop {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use crate::conformance::Harness;
    use crate::kafka_support::KafkaHarness;
    use crate::process_support::{order_id, wait_until_done, Order, Worker, DLQ, TOPIC};
    use retry_kafka::prelude::*;

    const ORDERS: u64 = 20_000;
    const KILLS: usize = 5;
    const RETRY: &str = "proc.orders.proc-workers.retry.1";
    /// What the worker's successful attempts emit (`WORKER_OUTPUT`).
    const SHIPMENTS: &str = "proc.shipments";

    /// How often each id is in `topic`, read committed.
    async fn copies(harness: &KafkaHarness, topic: &str) -> HashMap<u64, usize> {
        let mut copies = HashMap::new();
        for record in harness.records(topic).await {
            *copies.entry(order_id(&record)).or_default() += 1;
        }
        copies
    }

    /// What the run wrote twice or more (ids and copies past the first) and what it missed.
    struct Count {
        repeated_ids: usize,
        extra_copies: usize,
        missing: Vec<u64>,
    }

    fn count(copies: &HashMap<u64, usize>, expected: impl Iterator<Item = u64>) -> Count {
        let expected: Vec<u64> = expected.collect();
        Count {
            repeated_ids: copies.values().filter(|&&n| n > 1).count(),
            extra_copies: copies.values().map(|&n| n.saturating_sub(1)).sum(),
            missing: expected
                .into_iter()
                .filter(|id| !copies.contains_key(id))
                .collect(),
        }
    }

    /// A broker of the test's own with the orders on it, and the workers' environment.
    async fn orders_on_own_broker(exactly_once: bool) -> (KafkaHarness, Vec<(&'static str, String)>) {
        let harness = KafkaHarness::on_own_broker(|settings| settings).await;
        harness.create_topic(TOPIC, 4).await;
        harness.create_topic(SHIPMENTS, 4).await;
        let producer = Producer::new(harness.backend());
        let orders: Vec<Order> = (0..ORDERS).map(|id| Order { id }).collect();
        for chunk in orders.chunks(1000) {
            let sends = chunk.iter().map(|order| producer.send(order));
            for sent in futures::future::join_all(sends).await {
                sent.expect("publish an order");
            }
        }
        let env = vec![
            ("KAFKA_BROKERS", harness.backend.brokers().to_owned()),
            ("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000".into()),
            ("KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "500".into()),
            ("KAFKA_EXACTLY_ONCE", exactly_once.to_string()),
            // ~1 ms an attempt: ~20 s of work, so kills land mid-run.
            ("WORKER_HANDLER_MS", "1".into()),
            // Each success emits a shipment: a consume, transform, produce handler.
            ("WORKER_OUTPUT", "1".into()),
        ];
        (harness, env)
    }

    /// What one run wrote: the retry level, the dead letters and the handler's outputs (each read
    /// committed).
    struct Settled {
        retry: Count,
        dlq: Count,
        outputs: Count,
    }

    /// Waits until every order is done and every retry ran, then counts the retry level, the
    /// dead letters and the shipments (read committed) and checks nothing was lost.
    async fn settled(harness: &KafkaHarness, workers: &[Worker], run: &str) -> Settled {
        let all: Vec<&Worker> = workers.iter().collect();
        let (dead, repeats) = wait_until_done(harness, &all, ORDERS).await;
        let invalid = |id: &u64| id % 50 == 13;
        assert_eq!(
            dead,
            (0..ORDERS).filter(invalid).collect(),
            "exactly the invalid orders are dead-lettered"
        );
        // Every retry concluded (succeeded on its second attempt): its record is in the retry
        // level, committed, however many workers were killed on the way.
        let deadline = Instant::now() + Duration::from_secs(60);
        let retried = |id: &u64| id.is_multiple_of(7) && !invalid(id);
        while workers
            .iter()
            .flat_map(|w| w.attempts())
            .filter(|a| a.1 == 2)
            .map(|a| a.0)
            .collect::<std::collections::HashSet<_>>()
            .len()
            < (0..ORDERS).filter(retried).count()
        {
            assert!(Instant::now() < deadline, "retries never all ran");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let retry = count(&copies(harness, RETRY).await, (0..ORDERS).filter(retried));
        let dlq = count(&copies(harness, DLQ).await, (0..ORDERS).filter(invalid));
        let valid = |id: &u64| !invalid(id);
        // The last successes' shipments commit with their offsets, a moment after the log says
        // they succeeded; and a transaction a killed worker left open hides what follows it in
        // its partitions from read-committed readers until the broker aborts it (10 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        let outputs = loop {
            let outputs = count(&copies(harness, SHIPMENTS).await, (0..ORDERS).filter(valid));
            if outputs.missing.is_empty() || Instant::now() > deadline {
                break outputs;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!(
            "{run}: retry level: {} ids written more than once ({} extra copies); dead letters: {} ids more \
             than once ({} extra); outputs: {} ids more than once ({} extra); {repeats} successful attempts \
             repeated",
            retry.repeated_ids,
            retry.extra_copies,
            dlq.repeated_ids,
            dlq.extra_copies,
            outputs.repeated_ids,
            outputs.extra_copies,
        );
        assert!(retry.missing.is_empty(), "retries lost: {:?}", retry.missing);
        assert!(dlq.missing.is_empty(), "dead letters lost: {:?}", dlq.missing);
        assert!(outputs.missing.is_empty(), "outputs lost: {:?}", outputs.missing);
        // A client of another language, reading committed, sees what this one does.
        let foreign = foreign_read_committed(harness.backend.brokers(), SHIPMENTS);
        let expected = (0..ORDERS).filter(valid).count() as u64;
        assert_eq!(
            foreign,
            (expected + outputs.extra_copies as u64, expected),
            "confluent-kafka's read-committed count of {SHIPMENTS} (records, distinct ids)"
        );
        Settled { retry, dlq, outputs }
    }

    /// `topic` read from the beginning to its end by confluent-kafka (Python, librdkafka of its
    /// own) with `isolation.level = read_committed`: how many records and how many distinct ids.
    fn foreign_read_committed(brokers: &str, topic: &str) -> (u64, u64) {
        let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
        assert!(
            python.is_file(),
            "confluent-kafka is not installed: run ./scripts/install-test-deps.sh"
        );
        let script = r#"
import json, sys
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
brokers, topic = sys.argv[1], sys.argv[2]
c = Consumer({"bootstrap.servers": brokers, "group.id": "foreign-read-committed",
              "isolation.level": "read_committed", "enable.auto.commit": False,
              "enable.partition.eof": True})
partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
open_partitions, total, ids = set(partitions), 0, set()
while open_partitions:
    m = c.poll(10)
    if m is None:
        sys.exit("no message nor end of partition within 10 s")
    if m.error():
        if m.error().code() == -191:  # _PARTITION_EOF
            open_partitions.discard(m.partition())
            continue
        sys.exit(str(m.error()))
    total += 1
    ids.add(json.loads(m.value())["id"])
c.close()
print(total, len(ids))
"#;
        let output = std::process::Command::new(&python)
            .args(["-c", script, brokers, topic])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the foreign reader failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let mut counts = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        (counts.next().unwrap(), counts.next().unwrap())
    }

    /// The worker killed with SIGKILL [`KILLS`] times, each after 1,500 attempts of its own, and
    /// started again, with `KAFKA_EXACTLY_ONCE` set to `exactly_once`.
    async fn kill_loop(exactly_once: bool) -> Settled {
        let (harness, env) = orders_on_own_broker(exactly_once).await;
        let mut workers: Vec<Worker> = Vec::new();
        let started = Instant::now();
        // Names of this run's own: a worker's log is named after it, and the other runs of this
        // binary go on beside this one.
        let mode = if exactly_once {
            "exactly-once"
        } else {
            "at-least-once"
        };
        for kill in 0..KILLS {
            let mut worker = Worker::spawn(&format!("{mode}-w{kill}"), &env);
            let deadline = Instant::now() + Duration::from_secs(90);
            while worker.attempts().len() < 1500 {
                assert!(Instant::now() < deadline, "worker {kill} did not get going");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worker.kill();
            workers.push(worker);
        }
        workers.push(Worker::spawn(&format!("{mode}-last"), &env));
        let run = format!(
            "kill -9 loop, exactly-once {}: {ORDERS} orders, {KILLS} kills in {:.1?}",
            if exactly_once { "on" } else { "off" },
            started.elapsed()
        );
        settled(&harness, &workers, &run).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_five_times_exactly_once_writes_no_record_twice() {
        let run = kill_loop(true).await;
        assert_eq!(
            (
                run.retry.extra_copies,
                run.dlq.extra_copies,
                run.outputs.extra_copies
            ),
            (0, 0, 0),
            "records written twice to the retry level, the dead letters and the outputs"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_five_times_at_least_once_loses_nothing_and_counts_its_repeats() {
        // Its repeats are printed beside the exactly-once run's (README, "Exactly once").
        kill_loop(false).await;
    }

    /// The broker killed with SIGKILL 1.5 s into the run and started again on its data 20 s
    /// later, exactly-once on: the open transactions are aborted or time out, the producers
    /// fenced are made again, and the partitions are read again from what was committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_broker_killed_mid_run_exactly_once_writes_no_record_twice() {
        let (mut harness, env) = orders_on_own_broker(true).await;
        let worker = Worker::spawn("outage", &env);
        worker.wait_for_attempts(1, "the worker did not get going").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let broker = harness.broker.as_mut().expect("a broker of the test's own");
        tokio::task::block_in_place(|| broker.restart(Duration::from_secs(20)));
        let run = settled(&harness, &[worker], "broker SIGKILLed for 20 s, exactly-once on").await;
        assert_eq!(
            (
                run.retry.extra_copies,
                run.dlq.extra_copies,
                run.outputs.extra_copies
            ),
            (0, 0, 0),
            "records written twice to the retry level, the dead letters and the outputs"
        );
    }
}

// Shutting down with the broker gone, exactly-once on: the last commits cannot get through,
// and the app still stops within a bound (what it ran since its last commit runs again).

mod broker_gone {
    use std::time::{Duration, Instant};

    use crate::conformance::Harness;
    use crate::kafka_support::KafkaHarness;
    use retry_kafka::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Event, Serialize, Deserialize, Debug)]
    #[event(topic = "eos.gone", key = "id")]
    struct Parcel {
        id: u64,
    }

    /// Every other parcel fails once; each success emits itself to `eos.gone.out`.
    #[retry_handler(group = "eos-gone", retries = ["500ms"], dlq)]
    async fn forward(parcel: Parcel, ctx: Context) -> Result<(), HandlerError> {
        if parcel.id.is_multiple_of(2) && ctx.attempt() == 1 {
            return Err(HandlerError::transient("later"));
        }
        ctx.emit_to("eos.gone.out", &parcel, Default::default())?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_with_the_broker_gone_ends_within_a_bound() {
        let mut harness = KafkaHarness::on_own_broker(|settings| settings.exactly_once(true)).await;
        harness.create_topic("eos.gone", 2).await;
        harness.create_topic("eos.gone.out", 2).await;
        let app = App::builder()
            .backend(harness.backend())
            .handlers(|spec| spec.group() == "eos-gone")
            .build()
            .unwrap();
        let running = app.start().await.unwrap();
        for id in 0..200 {
            app.producer().send(&Parcel { id }).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while app.stats().handler("forward").is_none_or(|h| h.succeeded < 100) {
            assert!(Instant::now() < deadline, "the app did not get going");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let broker = harness.broker.as_mut().expect("a broker of the test's own");
        tokio::task::block_in_place(|| broker.kill());
        let stopping = Instant::now();
        let _ = running.shutdown().await;
        let took = stopping.elapsed();
        eprintln!("shutdown with the broker gone, exactly-once on, took {took:.1?}");
        assert!(
            took < Duration::from_secs(30),
            "shutdown with the broker gone took {took:?}"
        );
    }
}
