//! Broker failures on a three-node Apache Kafka cluster (`retry_kafka_suite::KafkaCluster`:
//! KRaft, replication factor 3, `min.insync.replicas=2`), each while an app handles events:
//!
//! 1. the leader of the main topic's partition 0 is killed (SIGKILL) mid-run and restarted;
//! 2. the leader of a retry topic is killed while its records wait for their due time: they
//!    are still retried, never early, and late by no more than the failover took;
//! 3. all three nodes are killed, stay down 20 s and are restarted on their data: the app
//!    carries on by itself;
//! 4. a rolling restart (SIGTERM, restart, wait for the replicas to catch up) of all three;
//! 5. exactly-once on, the node coordinating the main topic consumer's transactions is killed
//!    mid-run and restarted: nothing written twice to the retry level, the dead letters or the
//!    handler's outputs.
//!
//! Every test fails if an event is lost: each id must end handled or dead-lettered, exactly the
//! invalid ones dead-lettered. Repeats (at least once) are counted and printed, not hidden.
//! One cluster runs at a time (three JVMs on a small machine), so the tests take turns.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use retry_kafka::app::Running;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Browse as _, Topic, TopicAdmin as _, TopicRole};
use retry_kafka::prelude::*;
use retry_kafka_suite::KafkaCluster;
use serde::{Deserialize, Serialize};

const ORDERS: &str = "cluster.orders";
const ORDERS_DLQ: &str = "cluster.orders.cluster-workers.dlq";
const WAITING: &str = "cluster.waiting";
const WAITING_RETRY: &str = "cluster.waiting.cluster-waiting.retry.1";
const PARTITIONS: u32 = 4;

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "cluster.orders", key = "id")]
struct Order {
    id: u64,
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "cluster.waiting", key = "id")]
struct Waiting {
    id: u64,
}

/// Successful attempts per order id, and how many attempts ended at all.
static HANDLED: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);
/// Attempt start − `rk-due-at` of every retry of a `Waiting` event, in ms.
static LATENESS: Mutex<Vec<(u64, i64)>> = Mutex::new(Vec::new());
/// One cluster at a time.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fails the first attempt of every 10th order (one 1 s retry level) and every attempt of
/// orders ending in 13 of each 50 (dead-lettered).
#[retry_handler(group = "cluster-workers", retries = ["1s"], dlq)]
async fn work(order: Order, ctx: Context) -> Result<(), HandlerError> {
    settle(order.id, ctx.attempt())
}

/// The workload's rule for attempt `attempt` of event `id` (every 50th from 13 invalid, every
/// 10th from 7 failing once); a success is counted in [`HANDLED`].
fn settle(id: u64, attempt: u32) -> Result<(), HandlerError> {
    if id % 50 == 13 {
        return Err(HandlerError::permanent(format!("event {id} is invalid")));
    }
    if id % 10 == 7 && attempt == 1 {
        return Err(HandlerError::transient("try again"));
    }
    *HANDLED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_default() += 1;
    Ok(())
}

/// Fails every first attempt into an 8 s level; a retry records its lateness.
#[retry_handler(group = "cluster-waiting", retries = ["8s"], dlq)]
async fn wait_then_succeed(event: Waiting, ctx: Context) -> Result<(), HandlerError> {
    if ctx.attempt() == 1 {
        return Err(HandlerError::transient("later"));
    }
    let due: i64 = ctx
        .headers()
        .get_str("rk-due-at")
        .and_then(|v| v.parse().ok())
        .expect("a retry carries rk-due-at");
    LATENESS.lock().unwrap().push((event.id, epoch_ms() - due));
    Ok(())
}

fn epoch_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn handled() -> HashMap<u64, u32> {
    HANDLED.lock().unwrap().clone().unwrap_or_default()
}

fn expected_dead(count: u64) -> HashSet<u64> {
    (0..count).filter(|id| id % 50 == 13).collect()
}

/// The cluster, a backend on it and the turn to use it (bind `_turn` by name: a `..` pattern
/// would drop it, and the next test's cluster would start beside this one).
struct Setup {
    cluster: KafkaCluster,
    kafka: Kafka,
    app: App<Kafka>,
    running: Running,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// A fresh cluster with `topic`, and an app of the handlers of `group` running on it.
async fn setup(topic: &str, group: &'static str) -> Setup {
    setup_with(topic, group, false).await
}

/// [`setup`], with exactly-once hand-offs and outputs when `exactly_once`.
async fn setup_with(topic: &str, group: &'static str, exactly_once: bool) -> Setup {
    let turn = ONE_CLUSTER.lock().await;
    // The Kafka backend's warnings (transactions, commits, committed offsets) and the loop's
    // work-at-risk stop, beside librdkafka's errors: shown when a test fails.
    retry_kafka_suite::init_test_tracing_or(
        "error,retry_kafka::backend::kafka=warn,retry_kafka::runtime::consumer::at_risk=info",
    );
    *HANDLED.lock().unwrap() = Some(HashMap::new());
    LATENESS.lock().unwrap().clear();
    let cluster = tokio::task::spawn_blocking(KafkaCluster::start).await.unwrap();
    eprintln!(
        "three-node Apache Kafka {} cluster at {} up in {:.1} s",
        retry_kafka_suite::APACHE_KAFKA_VERSION,
        cluster.bootstrap,
        cluster.startup.as_secs_f64()
    );
    let kafka = Kafka::builder(cluster.bootstrap.clone())
        .replication_factor(3)
        .consumer_property("topic.metadata.refresh.interval.ms", "1000")
        .exactly_once(exactly_once)
        .build()
        .unwrap();
    kafka.create_topic(&Topic::main(topic), PARTITIONS).await.unwrap();
    let app = App::builder()
        .backend(kafka.clone())
        .handlers(move |spec| spec.group() == group)
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    Setup {
        cluster,
        kafka,
        app,
        running,
        _turn: turn,
    }
}

/// Sends orders `ids`, `per_tick` at once every 10 ms; each send waits for the cluster's
/// acknowledgement (acks=all), retried by the producer through a failover.
async fn publish(producer: Producer<Kafka>, ids: std::ops::Range<u64>, per_tick: u64) {
    publish_events(producer, ids, per_tick, |id| Order { id }).await
}

/// [`publish`] of the events `make` makes of the ids.
async fn publish_events<E: Event + Send + Sync + 'static>(
    producer: Producer<Kafka>,
    ids: std::ops::Range<u64>,
    per_tick: u64,
    make: fn(u64) -> E,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next = ids.start;
    while next < ids.end {
        tick.tick().await;
        let upto = (next + per_tick).min(ids.end);
        let sends = (next..upto).map(|id| {
            let producer = producer.clone();
            async move { producer.send(&make(id)).await }
        });
        for sent in futures::future::join_all(sends).await {
            sent.expect("an order was not acknowledged by the cluster");
        }
        next = upto;
    }
}

/// Waits until every order below `count` is handled or dead-lettered (`within` at most);
/// asserts that exactly the invalid ones are dead-lettered and returns how many successful
/// attempts were repeats.
async fn assert_all_done(kafka: &Kafka, count: u64, within: Duration) -> usize {
    assert_all_done_in(kafka, ORDERS_DLQ, count, within).await
}

/// The ids of the events in `topic` (each `{"id": …}`), read committed, in offset order.
async fn ids_in(kafka: &Kafka, topic: &str, role: TopicRole) -> Vec<u64> {
    kafka
        .read(&Topic::new(topic, role), &[])
        .await
        .unwrap_or_default()
        .iter()
        .map(|record| {
            let order: Order = serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
            order.id
        })
        .collect()
}

/// [`assert_all_done`], the dead letters read from `dlq`.
async fn assert_all_done_in(kafka: &Kafka, dlq: &str, count: u64, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let handled = handled();
        let dead: Vec<u64> = ids_in(kafka, dlq, TopicRole::DeadLetter).await;
        let dead_set: HashSet<u64> = dead.iter().copied().collect();
        let missing: Vec<u64> = (0..count)
            .filter(|id| !handled.contains_key(id) && !dead_set.contains(id))
            .collect();
        if missing.is_empty() {
            assert_eq!(
                dead_set,
                expected_dead(count),
                "exactly the invalid orders are dead-lettered"
            );
            let repeats =
                handled.values().map(|&n| n as usize - 1).sum::<usize>() + (dead.len() - dead_set.len());
            return repeats;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} orders neither handled nor dead-lettered after {within:?}, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_for_handled(count: usize, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while handled().len() < count {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the metadata until `partition` of `topic` is led by a node other than `old`; returns
/// how long that took from `since`.
async fn wait_for_new_leader(
    cluster: &KafkaCluster,
    topic: &str,
    partition: u32,
    old: u32,
    since: Instant,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(leader) = cluster.leader_of(topic, partition) {
            if leader != old {
                return since.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition} got no new leader in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every partition of `topics` has all three replicas in sync.
async fn wait_for_full_isr(cluster: &KafkaCluster, topics: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    for topic in topics {
        for partition in 0..PARTITIONS {
            while cluster.in_sync_replicas(topic, partition).len() < 3 {
                assert!(
                    Instant::now() < deadline,
                    "{topic}/{partition} did not get three in-sync replicas back in 90 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_topics_leader_killed_mid_run_loses_nothing() {
    let Setup {
        mut cluster,
        kafka,
        app,
        running,
        _turn,
    } = setup(ORDERS, "cluster-workers").await;
    const COUNT: u64 = 50_000;
    // ~10 s of orders at ~5k/s, so the kill and the restart land while they are handled.
    let publishing = tokio::spawn(publish(app.producer(), 0..COUNT, 50));
    wait_for_handled(5_000, Duration::from_secs(120), "the app did not get going").await;

    let leader = cluster.leader_of(ORDERS, 0).expect("partition 0 has a leader");
    let killed_at = Instant::now();
    let handled_at_kill = handled().len();
    cluster.kill_9(leader);
    let failover = wait_for_new_leader(&cluster, ORDERS, 0, leader, killed_at).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| cluster.restart(leader));
    let restarted_after = killed_at.elapsed();

    publishing.await.unwrap();
    let repeats = assert_all_done(&kafka, COUNT, Duration::from_secs(240)).await;
    running.shutdown().await.unwrap();
    eprintln!(
        "leader {leader} of {ORDERS}/0 killed after {handled_at_kill} orders handled: new leader in {:.1} s, \
         restarted after {:.1} s; {COUNT} orders: lost 0, {} dead-lettered as expected, {repeats} repeats",
        failover.as_secs_f64(),
        restarted_after.as_secs_f64(),
        expected_dead(COUNT).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_topics_leader_killed_while_records_wait_delays_none_beyond_the_failover() {
    let Setup {
        mut cluster,
        kafka,
        app,
        running,
        _turn,
    } = setup(WAITING, "cluster-waiting").await;
    const COUNT: u64 = 2_000;
    let producer = app.producer();
    let sends = (0..COUNT).map(|id| {
        let producer = producer.clone();
        async move { producer.send(&Waiting { id }).await }
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
    // Every event failed once and waits in the 8 s level.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = app.stats();
        let retried = stats.handler("wait_then_succeed").unwrap().retried[0];
        if retried >= COUNT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {retried} of {COUNT} handed to the retry level"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        LATENESS.lock().unwrap().is_empty(),
        "a retry ran before its 8 s delay"
    );

    let leader = cluster
        .leader_of(WAITING_RETRY, 0)
        .expect("the retry topic has a leader");
    let killed_at = Instant::now();
    cluster.kill_9(leader);
    let failover = wait_for_new_leader(&cluster, WAITING_RETRY, 0, leader, killed_at).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let retried: HashSet<u64> = LATENESS.lock().unwrap().iter().map(|l| l.0).collect();
        if retried.len() as u64 == COUNT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {COUNT} waiting events were never retried",
            COUNT - retried.len() as u64
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await.unwrap();
    let lateness = LATENESS.lock().unwrap().clone();
    let mut late: Vec<i64> = lateness.iter().map(|l| l.1).collect();
    late.sort_unstable();
    let early = late.iter().filter(|&&l| l < 0).count();
    let at = |q: f64| late[((late.len() - 1) as f64 * q).round() as usize];
    let repeats = lateness.len() - COUNT as usize;
    eprintln!(
        "leader {leader} of {WAITING_RETRY}/0 killed while {COUNT} retries waited: new leader in {:.1} s; \
         lateness p50 {} ms, p99 {} ms, max {} ms, early {early}; {repeats} repeats",
        failover.as_secs_f64(),
        at(0.5),
        at(0.99),
        late.last().unwrap()
    );
    assert_eq!(early, 0, "retries ran before they were due");
    assert!(
        *late.last().unwrap() <= failover.as_millis() as i64 + 5_000,
        "a retry ran {} ms late; the failover took {} ms",
        late.last().unwrap(),
        failover.as_millis()
    );
    assert!(
        kafka
            .read(
                &Topic::new("cluster.waiting.cluster-waiting.dlq", TopicRole::DeadLetter),
                &[]
            )
            .await
            .unwrap_or_default()
            .is_empty(),
        "nothing is dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_nodes_down_for_20_s_and_back_the_app_resumes_by_itself() {
    let Setup {
        mut cluster,
        kafka,
        app,
        running,
        _turn,
    } = setup(ORDERS, "cluster-workers").await;
    let producer = app.producer();
    publish(producer.clone(), 0..2_000, 20).await;
    wait_for_handled(200, Duration::from_secs(120), "the app did not get going").await;

    let handled_at_stop = handled().len();
    let nodes: Vec<u32> = cluster.nodes().collect();
    for id in nodes {
        cluster.kill_9(id);
    }
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    tokio::task::block_in_place(|| cluster.restart_all());
    let back_after = stopped_at.elapsed();

    // Published after the restart: the app's consumers must be reading again by themselves.
    let restarted = Instant::now();
    publish(producer, 2_000..3_000, 20).await;
    let repeats = assert_all_done(&kafka, 3_000, Duration::from_secs(240)).await;
    running.shutdown().await.unwrap();
    eprintln!(
        "all three nodes killed after {handled_at_stop} orders handled, back after {:.1} s; 3000 orders done \
         {:.1} s after the restart: lost 0, {repeats} repeats",
        back_after.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_nodes_under_load_loses_nothing() {
    let Setup {
        mut cluster,
        kafka,
        app,
        running,
        _turn,
    } = setup(ORDERS, "cluster-workers").await;
    const COUNT: u64 = 30_000;
    let publishing = tokio::spawn(publish(app.producer(), 0..COUNT, 10));
    wait_for_handled(1_000, Duration::from_secs(120), "the app did not get going").await;

    let started = Instant::now();
    let topics = [ORDERS, "cluster.orders.cluster-workers.retry.1", ORDERS_DLQ];
    let nodes: Vec<u32> = cluster.nodes().collect();
    let roll = Arc::new(Mutex::new(Vec::new()));
    for id in nodes {
        let at = handled().len();
        tokio::task::block_in_place(|| {
            cluster.stop(id);
            cluster.restart(id);
        });
        wait_for_full_isr(&cluster, &topics).await;
        roll.lock().unwrap().push(format!("node {id} at {at} handled"));
    }
    let rolled_in = started.elapsed();
    publishing.await.unwrap();
    let repeats = assert_all_done(&kafka, COUNT, Duration::from_secs(240)).await;
    running.shutdown().await.unwrap();
    eprintln!(
        "rolling restart ({}) in {:.1} s under load: {COUNT} orders, lost 0, {repeats} repeats",
        roll.lock().unwrap().join(", "),
        rolled_in.as_secs_f64()
    );
}

// The transaction coordinator killed, exactly-once on.

const PARCELS: &str = "cluster.parcels";
const PARCELS_RETRY: &str = "cluster.parcels.cluster-parcels.retry.1";
const PARCELS_DLQ: &str = "cluster.parcels.cluster-parcels.dlq";
const SHIPPED: &str = "cluster.shipped";

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "cluster.parcels", key = "id")]
struct Parcel {
    id: u64,
}

/// What a parcel's successful attempt emits.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "cluster.shipped", key = "id")]
struct Shipped {
    id: u64,
}

/// As [`work`], and each success emits a [`Shipped`] (a consume, transform, produce handler).
#[retry_handler(group = "cluster-parcels", retries = ["1s"], dlq)]
async fn ship(parcel: Parcel, ctx: Context) -> Result<(), HandlerError> {
    // Kept until the attempt succeeds: a failed attempt's shipment is never written.
    ctx.emit(&Shipped { id: parcel.id })?;
    settle(parcel.id, ctx.attempt())
}

/// How many ids are in `ids` more than once (copies past the first).
fn extra_copies(ids: &[u64]) -> usize {
    ids.len() - ids.iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_coordinator_killed_mid_run_exactly_once_writes_nothing_twice() {
    let Setup {
        mut cluster,
        kafka,
        app,
        running,
        _turn,
    } = setup_with(PARCELS, "cluster-parcels", true).await;
    kafka
        .create_topic(&Topic::main(SHIPPED), PARTITIONS)
        .await
        .unwrap();
    // ~8 s of parcels at ~5k/s: the kill and the failover land while they come.
    const COUNT: u64 = 40_000;
    let publishing = tokio::spawn(publish_events(app.producer(), 0..COUNT, 50, |id| Parcel { id }));
    wait_for_handled(2_000, Duration::from_secs(120), "the app did not get going").await;

    // The main topic's consumer commits through its transactional producer, whose id begins
    // with its group and topic; its coordinator is the leader of that id's partition of
    // `__transaction_state`.
    let coordinators = tokio::task::block_in_place(|| cluster.transaction_coordinators());
    let prefix = format!("cluster-parcels.{PARCELS}.");
    let coordinator = coordinators
        .iter()
        .find(|(id, _)| id.starts_with(&prefix))
        .map(|&(_, node)| node)
        .unwrap_or_else(|| panic!("no transaction of {prefix}… among {coordinators:?}"));
    let handled_at_kill = handled().len();
    let killed_at = Instant::now();
    cluster.kill_9(coordinator);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| cluster.restart(coordinator));
    let restarted_after = killed_at.elapsed();
    let moved_to = tokio::task::block_in_place(|| cluster.transaction_coordinators())
        .into_iter()
        .filter(|(id, _)| id.starts_with(&prefix))
        .map(|(_, node)| node)
        .collect::<Vec<_>>();

    publishing.await.unwrap();
    let repeats = assert_all_done_in(&kafka, PARCELS_DLQ, COUNT, Duration::from_secs(240)).await;
    // Every success's shipment, read committed (a transaction left open by the killed
    // coordinator's failover is aborted or completed by its successor first).
    let valid = (0..COUNT).filter(|id| id % 50 != 13).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let shipped = loop {
        let shipped = ids_in(&kafka, SHIPPED, TopicRole::Main).await;
        if shipped.iter().collect::<HashSet<_>>().len() >= valid || Instant::now() > deadline {
            break shipped;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    running.shutdown().await.unwrap();
    let retried = ids_in(&kafka, PARCELS_RETRY, TopicRole::Retry { level: 1 }).await;
    let dead = ids_in(&kafka, PARCELS_DLQ, TopicRole::DeadLetter).await;
    let twice = (
        extra_copies(&retried),
        extra_copies(&dead),
        extra_copies(&shipped),
    );
    eprintln!(
        "transaction coordinator (node {coordinator}) of {prefix}… killed after {handled_at_kill} parcels \
         handled, restarted after {:.1} s (coordinators after: {moved_to:?}); {COUNT} parcels, exactly-once: \
         lost 0, {repeats} successes repeated; written twice: {} to the retry level, {} dead letters, {} \
         shipments",
        restarted_after.as_secs_f64(),
        twice.0,
        twice.1,
        twice.2
    );
    assert_eq!(
        shipped.iter().collect::<HashSet<_>>().len(),
        valid,
        "every success's shipment is written"
    );
    assert_eq!(twice, (0, 0, 0), "written twice with exactly-once on");
}
