//! The Redis backend on a Redis Cluster (three masters, three replicas, started per test on
//! free loopback ports and killed after), with the cluster's key layout: the conformance
//! suite (unordered: `redis_cluster_unordered.rs`); the partitions of one topic spread over the shards; a hand-off cut between its
//! write and its source's acknowledgement (which are in different slots) written once; a
//! worker process that runs on while a master is killed and its replica takes over.

mod conformance;
mod process_support;
mod redis_support;

use std::time::{Duration, Instant};

use conformance::Harness as _;
use process_support::{expected_dead, publish_orders, wait_until_done, Worker, TOPIC};
use redis::aio::ConnectionLike;
use redis_support::{cluster_stream, RedisCluster, RedisClusterHarness, Servers as _};
use retry_kafka::backend::redis::RedisConsumer;
use retry_kafka::backend::{
    Backend as _, Browse as _, Consumer, Delivered, Fetched, HandOffId, OutboundRecord, Position,
    Publish as _, Record, Subscription, Topic, TopicAdmin as _, TopicRole, Undelivered,
};

async fn cluster() -> RedisClusterHarness {
    tokio::task::spawn_blocking(RedisClusterHarness::start_cluster)
        .await
        .expect("start the redis cluster")
}

conformance_suite!(cluster);
key_order_suite!(cluster);

/// A topic of 12 partitions on three shards: each shard holds some of its streams, and the
/// entries written by key land on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitions_of_one_topic_spread_over_the_shards() {
    let harness = cluster().await;
    let backend = &harness.backend;
    let topic = Topic::main("orders");
    backend.create_topic(&topic, 12).await.expect("create topic");
    for i in 0..1200 {
        let record = OutboundRecord {
            key: Some(format!("customer-{i}").into_bytes().into()),
            payload: Some(b"{}".to_vec().into()),
            ..Default::default()
        };
        backend.send(&topic, record).await.expect("send");
    }
    let mut conn = harness.server.connection().await;
    let mut per_shard = Vec::new();
    for (port, _) in harness.server.masters() {
        let keys = RedisCluster::cli(port, &["--scan", "--pattern", "{orders:*}"]);
        let streams: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
        let mut entries = 0u64;
        for stream in &streams {
            entries += redis::cmd("XLEN")
                .arg(*stream)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap();
        }
        per_shard.push((port, streams.len(), entries));
    }
    eprintln!("per shard (port, streams of `orders`, entries): {per_shard:?}");
    assert_eq!(per_shard.len(), 3, "three masters: {per_shard:?}");
    assert_eq!(per_shard.iter().map(|(_, streams, _)| streams).sum::<usize>(), 12);
    assert_eq!(per_shard.iter().map(|(_, _, entries)| entries).sum::<u64>(), 1200);
    for (port, streams, entries) in &per_shard {
        assert!(
            *streams >= 1 && *entries > 0,
            "the shard on {port} holds none of the topic: {per_shard:?}"
        );
    }
}

/// The XACK of a hand-off's source is refused on every node (an ACL), so the hand-off's write
/// goes in and its acknowledgement does not, as when the consumer crashes between the two;
/// then the consumer is dropped without closing. Another member takes the partition over,
/// gets both entries again and hands them on again: each next hop is there once (the retry in
/// the level's delay set, the dead letter in its stream), and the sources are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_cut_between_its_write_and_its_acknowledgement_is_written_once() {
    let harness = cluster().await;
    let backend = &harness.backend;
    let main = Topic::main("orders");
    let level = Topic::new("orders.billing.retry.1", TopicRole::Retry { level: 1 });
    let dlq = Topic::new("orders.billing.dlq", TopicRole::DeadLetter);
    for topic in [&main, &level, &dlq] {
        backend.create_topic(topic, 1).await.expect("create topic");
    }
    for payload in ["to retry", "to dead-letter"] {
        let record = OutboundRecord {
            partition: Some(0),
            payload: Some(payload.as_bytes().to_vec().into()),
            ..Default::default()
        };
        backend.send(&main, record).await.expect("send");
    }
    let subscription = || Subscription {
        topic: main.clone(),
        group: "billing".into(),
    };

    allow_xack(&harness.server, false);
    let mut first = backend.subscribe(subscription()).await.expect("subscribe");
    let (to_retry, to_dead_letter) = (next_record(&mut first).await, next_record(&mut first).await);
    let retried = hand_off(
        &mut first,
        to_retry.position(),
        level.clone(),
        retry_of(&to_retry),
    )
    .await;
    let dead = hand_off(
        &mut first,
        to_dead_letter.position(),
        dlq.clone(),
        dead_letter_of(&to_dead_letter),
    )
    .await;
    assert!(
        retried.is_err() && dead.is_err(),
        "the XACKs were refused, so the hand-offs failed"
    );
    let mut conn = harness.server.connection().await;
    assert_eq!(waiting_retries(&mut conn).await, 1, "the retry's write went in");
    assert_eq!(
        dead_letters(&mut conn).await,
        1,
        "the dead letter's write went in"
    );
    drop(first); // a crash: nothing acknowledged, the leases expire

    allow_xack(&harness.server, true);
    let mut second = backend.subscribe(subscription()).await.expect("subscribe");
    let again = [next_record(&mut second).await, next_record(&mut second).await];
    assert_eq!(
        again.iter().map(Record::position).collect::<Vec<_>>(),
        [to_retry.position(), to_dead_letter.position()],
        "the new member gets both entries again"
    );
    hand_off(
        &mut second,
        to_retry.position(),
        level.clone(),
        retry_of(&to_retry),
    )
    .await
    .expect("the retry handed on");
    let delivered = hand_off(
        &mut second,
        to_dead_letter.position(),
        dlq.clone(),
        dead_letter_of(&to_dead_letter),
    )
    .await
    .expect("the dead letter handed on");

    assert_eq!(waiting_retries(&mut conn).await, 1, "one retry, not two");
    assert_eq!(dead_letters(&mut conn).await, 1, "one dead letter, not two");
    let written = backend.read(&dlq, &[]).await.expect("read the dead letters");
    assert_eq!(
        written[0].offset, delivered.offset,
        "the repeat reports the first write's offset"
    );
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(cluster_stream("orders", 0))
        .arg("billing")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        matches!(&pending, redis::Value::Array(summary) if summary.first() == Some(&redis::Value::Int(0))),
        "both sources acknowledged: {pending:?}"
    );
    // The marks go once the sources are acknowledged (the writer deletes them after the
    // hand-offs complete).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let marks: usize = harness
            .server
            .masters()
            .iter()
            .map(|(port, _)| {
                RedisCluster::cli(*port, &["--scan", "--pattern", "*:handed:*"])
                    .lines()
                    .count()
            })
            .sum();
        if marks == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{marks} hand-off marks left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.close().await.expect("close");
}

/// A worker process (`rk-worker`) on the cluster, through `REDIS_CLUSTER_URLS` as a deployment
/// configures it; 300 orders on 6 partitions, then the master holding the most of them is
/// killed (SIGKILL) mid-run, its replica takes over, 50 more orders are published: every
/// order succeeds or is dead-lettered as the handler decides, and the repeats are counted.
///
/// The cluster's start waits until every replica acknowledges a write (`RedisCluster`): a
/// master killed within a second of its replica's first sync would take every write since
/// with it, which is Redis' replication, not the backend's doing (session 14).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_nothing_and_the_worker_carries_on() {
    let mut harness = cluster().await;
    harness.create_topic(TOPIC, 6).await;
    publish_orders(&harness, 0..300).await;
    let worker = Worker::spawn(
        "failover",
        &[
            ("REDIS_CLUSTER_URLS", harness.server.urls().join(",")),
            ("REDIS_SESSION_TIMEOUT_MS", "1500".into()),
            ("REDIS_KEEP_ACKNOWLEDGED_MS", "3600000".into()),
        ],
    );
    worker.wait_for_attempts(60, "the worker did not get going").await;
    let at_kill = worker.attempts().len();
    // The master that holds the most of the topic's streams.
    let pattern = format!("{{{TOPIC}:*}}");
    let (streams, master) = harness
        .server
        .masters()
        .iter()
        .map(|(port, _)| {
            let keys = RedisCluster::cli(*port, &["--scan", "--pattern", &pattern]);
            (keys.lines().filter(|key| !key.is_empty()).count(), *port)
        })
        .max()
        .expect("masters");
    assert!(streams > 0, "no master holds a stream of {TOPIC}");
    let killed = Instant::now();
    tokio::task::block_in_place(|| {
        harness.server.kill(master);
        harness.server.wait_until_ok(Duration::from_secs(30));
    });
    let failover = killed.elapsed();
    assert!(
        at_kill < 300,
        "the kill came too late to matter ({at_kill} attempts)"
    );

    // Published after the failover: the worker must be reading every partition again.
    publish_orders(&harness, 300..350).await;
    let (dead, repeats) = wait_until_done(&harness, &[&worker], 350).await;
    assert_eq!(dead, expected_dead(350));
    eprintln!(
        "master on {master} ({streams} of the 6 streams) killed after {at_kill} attempts, replica \
         promoted in {failover:?}: all 350 done, {repeats} repeated successes"
    );
}

/// The next record, skipping assignments (a take-over comes after the old lease expires).
async fn next_record(consumer: &mut RedisConsumer) -> Record {
    let deadline = Duration::from_secs(20);
    loop {
        match tokio::time::timeout(deadline, consumer.next()).await {
            Ok(Ok(Fetched::Record(record))) => return record,
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => panic!("fetch failed: {error}"),
            Err(_) => panic!("no record within {deadline:?}"),
        }
    }
}

fn retry_of(record: &Record) -> OutboundRecord {
    let mut retry = OutboundRecord {
        partition: Some(0),
        payload: record.payload.clone(),
        ..Default::default()
    };
    // Due in a minute: it waits in the level's delay set for the whole test.
    let due = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    retry.headers.insert("rk-due-at", due.to_string());
    retry
}

fn dead_letter_of(record: &Record) -> OutboundRecord {
    OutboundRecord {
        partition: Some(0),
        payload: record.payload.clone(),
        ..Default::default()
    }
}

async fn waiting_retries(conn: &mut (impl ConnectionLike + Send)) -> u64 {
    redis::cmd("ZCARD")
        .arg("{orders.billing.retry.1:0}:delayed")
        .query_async(conn)
        .await
        .unwrap()
}

async fn dead_letters(conn: &mut (impl ConnectionLike + Send)) -> u64 {
    redis::cmd("XLEN")
        .arg(cluster_stream("orders.billing.dlq", 0))
        .query_async(conn)
        .await
        .unwrap()
}

/// Lets the default user run XACK on every node, or not.
fn allow_xack(cluster: &RedisCluster, allowed: bool) {
    let rule = if allowed { "+xack" } else { "-xack" };
    for node in &cluster.nodes {
        let reply = RedisCluster::cli(node.port, &["ACL", "SETUSER", "default", rule]);
        assert_eq!(reply.trim(), "OK", "ACL SETUSER default {rule} on {}", node.port);
    }
}

/// Hands `record` on from `from` as the runtime does, and waits for its report.
async fn hand_off(
    consumer: &mut RedisConsumer,
    from: Position,
    to: Topic,
    record: OutboundRecord,
) -> Result<Delivered, Undelivered> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = HandOffId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    consumer.hand_off(id, from, to, record);
    let mut finished = Vec::new();
    while finished.is_empty() {
        consumer.hand_off_reports().wait(&mut finished).await;
    }
    assert_eq!(finished.len(), 1);
    let report = finished.pop().unwrap();
    assert_eq!(report.id, id);
    report.result
}
