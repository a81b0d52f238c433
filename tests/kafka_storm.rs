//! A rebalance storm on Apache Kafka: three worker processes (`rk-worker`, `retry_kafka::run()`)
//! share a group while they join and leave every 3 s for a minute under load (stopped with
//! SIGTERM or killed with SIGKILL in turn, and started again). At the end every order is handled
//! or dead-lettered (exactly the invalid ones dead-lettered), the orders published last are
//! handled on every partition (none was left paused) and the group's lag on the main and the
//! retry topic is 0. Repeats (at least once) are counted and printed.
//!
//! Run once with the classic group protocol (cooperative-sticky assignment), once with the
//! consumer group protocol of KIP-848 (`group.protocol=consumer`), which librdkafka 2.12 and
//! Apache Kafka 4 support, and once with the classic protocol and exactly-once hand-offs
//! (`KAFKA_EXACTLY_ONCE`), where no record may be in the retry level or the dead letters twice,
//! nor a success's output (each success emits a shipment: none may be lost in any run); each
//! test on a broker of its own, one after the other.

mod conformance;
mod kafka_support;
mod process_support;

use std::time::{Duration, Instant};

use conformance::Harness;
use kafka_support::KafkaHarness;
use process_support::{
    expected_dead, order_id, publish_orders, storm as storm_workers, wait_until_done, Storm, Worker, DLQ,
    TOPIC,
};
use retry_kafka::backend::kafka::Kafka;
use retry_kafka_suite::ApacheKafka;

const RETRY_TOPIC: &str = "proc.orders.proc-workers.retry.1";
/// What the workers' successes emit (`WORKER_OUTPUT`).
const SHIPMENTS: &str = "proc.shipments";
const PARTITIONS: u32 = 6;
/// How long the storm lasts, and how often a worker joins or leaves.
const STORM: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(3);
/// Orders published per second during the storm.
const PER_SECOND: u64 = 100;

/// One broker (and storm) at a time: three workers and a JVM already fill two cores.
static ONE_STORM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

enum Protocol {
    Classic,
    Consumer,
}

async fn storm(protocol: Protocol, exactly_once: bool) {
    let _turn = ONE_STORM.lock().await;
    kafka_support::init_tracing();
    // The consumer protocol's session and heartbeat are the broker's (45 s and 5 s by
    // default); the classic protocol's are the client's. Both as short for the test.
    let broker_properties = match protocol {
        Protocol::Classic => "",
        Protocol::Consumer => {
            "group.consumer.session.timeout.ms=6000\n\
             group.consumer.min.session.timeout.ms=6000\n\
             group.consumer.heartbeat.interval.ms=500\n\
             group.consumer.min.heartbeat.interval.ms=500"
        }
    };
    let broker = tokio::task::spawn_blocking(move || ApacheKafka::start_with(broker_properties))
        .await
        .unwrap();
    let harness = KafkaHarness {
        backend: Kafka::builder(broker.bootstrap.clone())
            .replication_factor(1)
            .build()
            .unwrap(),
        broker: None,
    };
    harness.create_topic(TOPIC, PARTITIONS).await;
    harness.create_topic(SHIPMENTS, PARTITIONS).await;
    // Each success emits a shipment (`ctx.emit`): the outputs are counted too.
    let mut env = vec![
        ("KAFKA_BROKERS", broker.bootstrap.clone()),
        ("WORKER_OUTPUT", "1".into()),
    ];
    match protocol {
        Protocol::Classic => {
            env.push(("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000".into()));
            env.push(("KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "500".into()));
        }
        Protocol::Consumer => env.push(("KAFKA_CONSUMER_GROUP_PROTOCOL", "consumer".into())),
    }
    env.push(("KAFKA_EXACTLY_ONCE", exactly_once.to_string()));
    let spawn = |name: &str| Worker::spawn(name, &env);

    let started = Instant::now();
    let publishing = {
        let harness = KafkaHarness {
            backend: harness.backend.clone(),
            broker: None,
        };
        tokio::spawn(async move {
            let mut next = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while started.elapsed() < STORM {
                tick.tick().await;
                publish_orders(&harness, next..next + PER_SECOND).await;
                next += PER_SECOND;
            }
            next
        })
    };
    let Storm {
        workers,
        joins,
        leaves,
        kills,
        ..
    } = storm_workers(spawn, started, STORM, EVERY).await;
    let published = publishing.await.unwrap();
    // Published after the storm, on every partition: a partition left paused would keep some.
    let total = published + 120;
    publish_orders(&harness, published..total).await;

    let workers: Vec<&Worker> = workers.iter().collect();
    let (dead, repeats) = wait_until_done(&harness, &workers, total).await;
    assert_eq!(
        dead,
        expected_dead(total),
        "exactly the invalid orders are dead-lettered"
    );
    // A retry level reads in a group of its own, named after its topic.
    for (topic, group) in [(TOPIC, "proc-workers"), (RETRY_TOPIC, RETRY_TOPIC)] {
        assert_lag_is_zero(&harness, topic, group).await;
    }
    // Records written more than once: a hand-off (or a success's output) repeated after a kill
    // or a revoke.
    let copies = |records: Vec<retry_kafka::backend::Record>| {
        let mut ids = std::collections::HashMap::<u64, usize>::new();
        for record in records {
            *ids.entry(order_id(&record)).or_default() += 1;
        }
        ids
    };
    let mut twice = 0;
    for topic in [RETRY_TOPIC, DLQ] {
        twice += copies(harness.records(topic).await)
            .values()
            .map(|&n| n - 1)
            .sum::<usize>();
    }
    // Read committed: a transaction a killed worker left open hides what follows it in its
    // partitions until the broker aborts it (`transaction.timeout.ms`, 10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (shipments, lost) = loop {
        let shipments = copies(harness.records(SHIPMENTS).await);
        let lost: Vec<u64> = (0..total)
            .filter(|id| !dead.contains(id) && !shipments.contains_key(id))
            .collect();
        if lost.is_empty() || Instant::now() > deadline {
            break (shipments, lost);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(lost.is_empty(), "successes whose output was lost: {lost:?}");
    let outputs_twice: usize = shipments.values().map(|&n| n - 1).sum();
    eprintln!(
        "rebalance storm ({}{}): {total} orders over {:.0} s with {joins} joins, {leaves} SIGTERM leaves and \
         {kills} SIGKILLs: lost 0, {} dead-lettered as expected, {repeats} repeated successes, {twice} records \
         written twice to the retry level and the dead letters, {outputs_twice} outputs twice; lag 0",
        match protocol {
            Protocol::Classic => "classic protocol",
            Protocol::Consumer => "consumer protocol, KIP-848",
        },
        if exactly_once { ", exactly-once" } else { "" },
        STORM.as_secs_f64(),
        dead.len()
    );
    if exactly_once {
        assert_eq!(
            (twice, outputs_twice),
            (0, 0),
            "records and outputs written twice with exactly-once on"
        );
    }
}

/// Waits (30 s at most) until `group` has committed every partition of `topic` to its end.
async fn assert_lag_is_zero(harness: &KafkaHarness, topic: &str, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let end = harness.end_offsets(topic).await;
        let committed = harness.committed(topic, group).await;
        if end == committed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: the lag of group {group} is not 0 after 30 s: committed {committed:?}, end {end:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_storm_on_the_classic_protocol_loses_nothing() {
    storm(Protocol::Classic, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_storm_with_exactly_once_writes_no_record_twice() {
    storm(Protocol::Classic, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_storm_on_the_consumer_protocol_loses_nothing() {
    storm(Protocol::Consumer, false).await;
}
