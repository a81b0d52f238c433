//! `ordering = "key"` through a rebalance storm on Apache Kafka: three worker processes
//! (`rk-ordered-worker`, `retry_kafka::run()`) share a group while they join and leave every
//! 3 s for 30 s under load (stopped with SIGTERM or killed with SIGKILL in turn, and started
//! again). Postings of 24 accounts; some fail once, one always. At the end: nothing lost (every
//! posting succeeded, but the invalid one, dead-lettered), and per account the first success
//! of each posting, over every worker's log in wall-clock order, in production order: 0 order
//! violations. Repeats (at least once) are counted and printed.

mod conformance;
mod kafka_support;
mod process_support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use conformance::Harness;
use kafka_support::KafkaHarness;
use process_support::{storm, Storm, Worker};
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

const TOPIC: &str = "proc.postings";
const DLQ: &str = "proc.postings.proc-ledger.dlq";
const PARTITIONS: u32 = 6;
const ACCOUNTS: u64 = 24;
const STORM: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_secs(3);

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.postings", key = "account")]
struct Posting {
    account: u64,
    seq: u64,
}

/// One attempt as a worker logged it.
struct Attempt {
    account: u64,
    seq: u64,
    ok: bool,
    nanos: u128,
    /// `worker attempt topic/partition@offset`, for a failure's message.
    place: String,
}

fn attempts(workers: &[&Worker]) -> Vec<Attempt> {
    let mut all: Vec<Attempt> = workers
        .iter()
        .flat_map(|w| w.lines().into_iter().map(move |line| (w.name.clone(), line)))
        .map(|(worker, line)| {
            let parts: Vec<&str> = line.split(' ').collect();
            Attempt {
                account: parts[0].parse().unwrap(),
                seq: parts[1].parse().unwrap(),
                ok: parts[3] == "ok",
                nanos: parts[4].parse().unwrap(),
                place: format!(
                    "{worker} attempt {} {}/{}@{}",
                    parts[2], parts[5], parts[6], parts[7]
                ),
            }
        })
        .collect();
    all.sort_by_key(|a| a.nanos);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_through_a_rebalance_storm_with_kills() {
    let harness = KafkaHarness::on_own_broker(|kafka| kafka).await;
    harness.create_topic(TOPIC, PARTITIONS).await;
    let env = vec![
        ("KAFKA_BROKERS", harness.backend.brokers().to_owned()),
        ("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000".into()),
        ("KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "500".into()),
    ];
    let spawn = |name: &str| Worker::spawn_program(env!("CARGO_BIN_EXE_rk-ordered-worker"), name, &env);

    let started = Instant::now();
    let started_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let producer = Producer::new(harness.backend.clone());
    let publishing = tokio::spawn(async move {
        // Every account gets a posting every 250 ms, in order.
        let mut seq = 0;
        while started.elapsed() < STORM {
            for account in 0..ACCOUNTS {
                producer.send(&Posting { account, seq }).await.unwrap();
            }
            seq += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        seq
    });
    let Storm {
        workers,
        timeline,
        joins,
        leaves,
        kills,
    } = storm(spawn, started, STORM, EVERY).await;
    let per_account = publishing.await.unwrap();
    let workers: Vec<&Worker> = workers.iter().collect();
    let total = ACCOUNTS * per_account;
    let deadline = Instant::now() + Duration::from_secs(120);
    let all = loop {
        let all = attempts(&workers);
        let succeeded: HashSet<(u64, u64)> =
            all.iter().filter(|a| a.ok).map(|a| (a.account, a.seq)).collect();
        if succeeded.len() as u64 == total - 1 {
            break all;
        }
        if Instant::now() >= deadline {
            let missing: Vec<(u64, u64)> = (0..ACCOUNTS)
                .flat_map(|a| (0..per_account).map(move |s| (a, s)))
                .filter(|p| !succeeded.contains(p) && *p != (7, 3))
                .collect();
            let tried: Vec<String> = all
                .iter()
                .filter(|a| missing.iter().any(|m| m.0 == a.account && a.seq + 3 >= m.1))
                .map(|a| format!("{}/{} {}", a.account, a.seq, a.ok))
                .collect();
            panic!(
                "{} of {} postings succeeded; missing {missing:?}; their accounts' late attempts {tried:?}",
                succeeded.len(),
                total - 1
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dead = harness.records(DLQ).await;
    assert!(!dead.is_empty(), "the invalid posting is dead-lettered");

    // Per account, the first success of each posting, in wall-clock order over all workers.
    let mut firsts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut repeats = 0;
    for attempt in all.iter().filter(|a| a.ok) {
        let seen = firsts.entry(attempt.account).or_default();
        if seen.contains(&attempt.seq) {
            repeats += 1;
        } else {
            seen.push(attempt.seq);
        }
    }
    let mut violations = Vec::new();
    for (account, seqs) in &firsts {
        let want: Vec<u64> = (0..per_account)
            .filter(|&seq| (*account, seq) != (7, 3))
            .collect();
        if seqs != &want {
            violations.push(*account);
        }
    }
    eprintln!(
        "key-order storm: {total} postings of {ACCOUNTS} accounts over {:.0} s with {joins} joins, {leaves} SIGTERM \
         leaves and {kills} SIGKILLs: lost 0, {} dead-lettered, {repeats} repeated successes, {} order violations",
        STORM.as_secs_f64(),
        dead.len(),
        violations.len()
    );
    if !violations.is_empty() {
        for account in &violations {
            eprintln!(
                "account {account}: first successes {:?}; its attempts:",
                firsts[account]
            );
            for a in all.iter().filter(|a| a.account == *account) {
                eprintln!(
                    "  {:>8.3} s  seq {:>3} {:<6} {}",
                    (a.nanos as f64 - started_nanos as f64) / 1e9,
                    a.seq,
                    if a.ok { "ok" } else { "failed" },
                    a.place
                );
            }
        }
        eprintln!("the storm (since the test started): {timeline:#?}");
    }
    assert_eq!(
        violations,
        Vec::<u64>::new(),
        "accounts whose postings succeeded out of order"
    );
}
