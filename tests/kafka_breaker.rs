//! The circuit breaker on Apache Kafka 4.4.0, in a worker process (`rk-outage-worker`): the
//! dependency two handlers call is down for 60 s under 1,000 events/s, with
//! `retries = ["1s", "2s"]`. The handler without a breaker walks what fails through its levels
//! into the dead letters; the one behind a breaker dead-letters nothing, and once the dependency
//! is back it is running again within its longest cool-down plus one probe.

mod conformance;
mod kafka_support;
mod process_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use conformance::Harness;
use kafka_support::KafkaHarness;
use process_support::Worker;
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

/// The worker's event (the same definition as in `src/bin/rk-outage-worker.rs`).
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.payments", key = "id")]
struct Payment {
    id: u64,
}

const RATE_PER_SECOND: u64 = 1_000;
const BEFORE: Duration = Duration::from_secs(5);
const OUTAGE: Duration = Duration::from_secs(60);
const AFTER: Duration = Duration::from_secs(10);
/// The guarded handler's `max_cool_down` (the worker's attribute).
const MAX_COOL_DOWN: Duration = Duration::from_secs(10);

/// Per handler: the ids that succeeded, and how many attempts failed.
fn outcomes(worker: &Worker, handler: &str) -> (HashSet<u64>, usize) {
    let (mut succeeded, mut failed) = (HashSet::new(), 0);
    for line in worker.lines() {
        let mut parts = line.split(' ');
        if parts.next() != Some(handler) {
            continue;
        }
        let id: u64 = parts.next().unwrap().parse().unwrap();
        match parts.nth(1) {
            Some("ok") => {
                succeeded.insert(id);
            }
            _ => failed += 1,
        }
    }
    (succeeded, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_long_outage_fills_no_dead_letters_behind_a_breaker() {
    let harness = KafkaHarness::on_own_broker(|settings| settings).await;
    harness.create_topic("proc.payments", 4).await;
    let flag = std::env::temp_dir().join(format!("rk-outage-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let worker = Worker::spawn_program(
        env!("CARGO_BIN_EXE_rk-outage-worker"),
        "breaker",
        &[
            ("KAFKA_BROKERS", harness.backend.brokers().to_owned()),
            ("OUTAGE_FLAG", flag.display().to_string()),
        ],
    );

    // 1,000 events a second, 100 every 100 ms; the dependency goes down after BEFORE and comes
    // back OUTAGE later.
    let producer = Producer::new(harness.backend());
    let start = Instant::now();
    let total = RATE_PER_SECOND * (BEFORE + OUTAGE + AFTER).as_secs();
    let (mut down, mut back) = (false, None);
    let mut recovery = None;
    let mut guarded_ok_at_back = 0;
    for batch in 0..total / 100 {
        let due = start + Duration::from_millis(batch * 100);
        tokio::time::sleep_until(due.into()).await;
        let payments: Vec<Payment> = (batch * 100..(batch + 1) * 100)
            .map(|id| Payment { id })
            .collect();
        let sends = payments.iter().map(|payment| producer.send(payment));
        for sent in futures::future::join_all(sends).await {
            sent.unwrap();
        }
        if !down && start.elapsed() >= BEFORE {
            std::fs::write(&flag, b"down").unwrap();
            down = true;
        }
        if back.is_none() && start.elapsed() >= BEFORE + OUTAGE {
            std::fs::remove_file(&flag).unwrap();
            back = Some(Instant::now());
            guarded_ok_at_back = outcomes(&worker, "guarded").0.len();
        }
        if let Some(back) = back {
            if recovery.is_none() && outcomes(&worker, "guarded").0.len() > guarded_ok_at_back {
                recovery = Some(back.elapsed());
            }
        }
    }
    let back = back.expect("the dependency came back");

    // Until every payment succeeded behind the breaker, and the other handler settled each one.
    let unguarded_dlq = "proc.payments.proc-unguarded.dlq";
    let deadline = Instant::now() + Duration::from_secs(180);
    let caught_up = loop {
        let (guarded, _) = outcomes(&worker, "guarded");
        if recovery.is_none() && guarded.len() > guarded_ok_at_back {
            recovery = Some(back.elapsed());
        }
        let (unguarded, _) = outcomes(&worker, "unguarded");
        let dead = harness.records(unguarded_dlq).await.len();
        if guarded.len() as u64 == total && (unguarded.len() + dead) as u64 >= total {
            break back.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {} of {total} succeeded behind the breaker; {} + {dead} dead-lettered without",
            guarded.len(),
            unguarded.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovery = recovery.expect("succeeded again");
    let guarded_dead = harness.records("proc.payments.proc-guarded.dlq").await.len();
    let unguarded_dead = harness.records(unguarded_dlq).await.len();
    let (_, guarded_failed) = outcomes(&worker, "guarded");
    let (_, unguarded_failed) = outcomes(&worker, "unguarded");
    eprintln!(
        "{total} events at {RATE_PER_SECOND}/s, dependency down {} s: without a breaker {unguarded_dead} dead \
         letters ({unguarded_failed} failed attempts); behind a breaker {guarded_dead} dead letters \
         ({guarded_failed} failed attempts), first success {:.1} s after the dependency came back, every \
         payment succeeded {:.1} s after",
        OUTAGE.as_secs(),
        recovery.as_secs_f64(),
        caught_up.as_secs_f64(),
    );
    assert_eq!(guarded_dead, 0, "nothing dead-lettered behind the breaker");
    // Without one, what failed its last attempt during the outage: every event of it but the
    // last few seconds' (still on a level when the dependency came back).
    assert!(
        unguarded_dead as u64 >= RATE_PER_SECOND * (OUTAGE.as_secs() - 10),
        "{unguarded_dead} dead letters without a breaker"
    );
    // Behind the breaker: the failures that opened it (half of its last 100 attempts, some
    // 50 ms of the outage), a probe per cool-down (at most one per 5 s of the outage) and the
    // attempts under way when it opened (one per level). Those before it opened went to level 1
    // and waited there, none to the dead letters. Slack for a debug worker on 2 cores.
    assert!(
        guarded_failed <= 100 + 12 + 3 + 50,
        "{guarded_failed} failed attempts behind the breaker"
    );
    // Running again within the longest cool-down plus one probe (and the test's 100 ms polling).
    assert!(
        recovery <= MAX_COOL_DOWN + Duration::from_secs(2),
        "first success {recovery:?} after the dependency came back"
    );
}
