//! `ordering = "key"` on Apache Kafka, with two instances of the app: the retry levels and the
//! held topic of each instance read, partition for partition, what its main consumer is
//! assigned (`Backend::subscribe_together`), so each key's holds live in one process. The
//! second instance joins while records are failing and waiting (a rebalance moves partitions
//! with their held keys), both settle everything together (a retry level's partition consumed
//! away from its main partition would wait for a count that never comes: the test would time
//! out), and the first leaves before the last records (another rebalance). Per key, the first
//! successes come in production order; every record succeeds or is dead-lettered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;

use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Topic, TopicAdmin as _};
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

const KEYS: u64 = 24;
const PER_KEY: u64 = 12;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "kko.accounts", key = "account")]
struct Posting {
    account: u64,
    seq: u64,
}

/// Every success, in the order it happened over both instances: (account, seq).
static SUCCESSES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
/// Attempts so far of each (account, seq).
static ATTEMPTS: Mutex<Option<HashMap<(u64, u64), u32>>> = Mutex::new(None);

/// Seq 2, 6 and 9 of every account fail once; account 5's seq 0 always fails (dead letter).
fn fails(account: u64, seq: u64) -> u32 {
    match (account, seq) {
        (5, 0) => u32::MAX,
        (_, 2) | (_, 6) | (_, 9) => 1,
        _ => 0,
    }
}

/// Waits until `count` distinct records have succeeded.
async fn succeeded(count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let distinct: std::collections::BTreeSet<(u64, u64)> =
            SUCCESSES.lock().unwrap().iter().copied().collect();
        if distinct.len() as u64 == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} records succeeded",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[retry_handler(group = "kko-ledger", retries = ["1s"], dlq, ordering = "key")]
async fn post(posting: Posting) -> Result<(), HandlerError> {
    let failed_before = {
        let mut attempts = ATTEMPTS.lock().unwrap();
        let count = attempts
            .get_or_insert_with(HashMap::new)
            .entry((posting.account, posting.seq))
            .or_default();
        *count += 1;
        *count - 1
    };
    if failed_before < fails(posting.account, posting.seq) {
        return Err(HandlerError::transient("ledger busy"));
    }
    SUCCESSES.lock().unwrap().push((posting.account, posting.seq));
    Ok(())
}

fn app(broker: &retry_kafka_suite::ApacheKafka) -> App<Kafka> {
    let kafka = Kafka::builder(broker.bootstrap.clone())
        .replication_factor(1)
        .build()
        .expect("kafka backend");
    App::builder()
        .backend(kafka)
        .handlers(|spec| spec.group() == "kko-ledger")
        .build()
        .expect("valid handlers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keys_order_holds_on_kafka_through_rebalances() {
    retry_kafka_suite::init_test_tracing();
    let broker = tokio::task::spawn_blocking(retry_kafka_suite::ApacheKafka::shared)
        .await
        .expect("start Apache Kafka");
    let first = app(broker);
    first
        .backend()
        .create_topic(&Topic::main("kko.accounts"), 4)
        .await
        .unwrap();
    let running_first = first.start().await.expect("first instance starts");
    let producer = first.producer();
    let publish = |seqs: std::ops::Range<u64>| {
        let producer = producer.clone();
        async move {
            for seq in seqs {
                for account in 0..KEYS {
                    producer.send(&Posting { account, seq }).await.unwrap();
                }
            }
        }
    };
    publish(0..4).await;
    // Failures are waiting on the retry level and records are held when the second joins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = app(broker);
    let running_second = second.start().await.expect("second instance starts");
    publish(4..8).await;
    succeeded(KEYS * 8 - 1).await;
    // The levels follow the main members: only the main group has members.
    let members = |group: &str| {
        let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()
            .unwrap();
        let groups = client
            .fetch_group_list(Some(group), Duration::from_secs(10))
            .unwrap();
        groups.groups().iter().map(|g| g.members().len()).sum::<usize>()
    };
    assert_eq!(members("kko-ledger"), 2, "two main members");
    assert_eq!(
        members("kko.accounts.kko-ledger.retry.1"),
        0,
        "the retry level follows"
    );
    assert_eq!(
        members("kko.accounts.kko-ledger.held"),
        0,
        "the held topic follows"
    );
    // The first leaves: its partitions, with their holds, move to the second.
    running_first.shutdown().await.expect("first instance stops");
    publish(8..PER_KEY).await;
    succeeded(KEYS * PER_KEY - 1).await;
    // Settled: committed too (commits trail acknowledgements by up to 100 ms or so).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let backlog = second.backlog().await.unwrap();
        if backlog == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{backlog} records not committed 10 s after the last success"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running_second.shutdown().await.expect("second instance stops");

    let successes = SUCCESSES.lock().unwrap().clone();
    // Per key, the first success of each record, in the order they happened.
    let mut firsts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut repeats = 0;
    for &(account, seq) in &successes {
        let seen = firsts.entry(account).or_default();
        if seen.contains(&seq) {
            repeats += 1;
        } else {
            seen.push(seq);
        }
    }
    println!(
        "{} successes, {repeats} repeated (at least once, at a rebalance)",
        successes.len()
    );
    for (account, seqs) in &firsts {
        let want: Vec<u64> = (0..PER_KEY)
            .filter(|&seq| fails(*account, seq) != u32::MAX)
            .collect();
        assert_eq!(
            seqs, &want,
            "account {account}: first successes in production order"
        );
    }
}
