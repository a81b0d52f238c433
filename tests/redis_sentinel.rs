//! The Redis backend on a primary with two replicas behind three sentinels (quorum 2, started
//! per test on free loopback ports and killed after), through a `redis+sentinel://` URL: the
//! conformance suite, and a worker process that runs on while the primary is killed and the
//! sentinels promote a replica.

mod conformance;
mod process_support;
mod redis_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use conformance::Harness as _;
use process_support::{expected_dead, order_id, Order, Worker, DLQ, TOPIC};
use redis_support::{test_settings, RedisSentinel, RedisSentinelHarness};
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::redis::RedisConsumer;
use retry_kafka::backend::{
    Backend as _, Browse as _, Consumer as _, Fetched, OutboundRecord, Publish as _, Subscription, Topic,
    TopicAdmin as _, TopicRole,
};
use retry_kafka::prelude::Producer;

async fn sentinel() -> RedisSentinelHarness {
    tokio::task::spawn_blocking(RedisSentinelHarness::start_sentinel)
        .await
        .expect("start the primary, its replicas and the sentinels")
}

conformance_suite!(sentinel);
key_order_suite!(sentinel);

/// A worker process (`rk-worker`) on the Sentinel setup, through `REDIS_URL=redis+sentinel://…`
/// as a deployment runs it; the primary killed (SIGKILL) mid-run while a producer publishes
/// (each send waiting for a replica's acknowledgement: `wait_for_replicas(1)`), its scripts
/// gone from the new one (`SCRIPT FLUSH`, so the worker must load them again), more orders
/// published after the sentinels promoted a replica: every order succeeds or is
/// dead-lettered, none is lost, and the worker carries on by itself. The session timeout is
/// the default, 10 s, longer than the failover: the worker keeps its partitions and sends its
/// acknowledgements once the new primary takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_mid_run_loses_nothing_and_the_worker_follows_the_new_one() {
    the_primary_killed(Duration::from_secs(10)).await;
}

/// As above with a session timeout (1.5 s) shorter than the failover: the worker's leases
/// lapse while no primary answers, and it takes its partitions over again on the new primary,
/// claiming what it had not acknowledged: nothing lost, the work done meanwhile repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_with_leases_lapsing_loses_nothing() {
    the_primary_killed(Duration::from_millis(1500)).await;
}

/// The run of the two tests above, with the worker's `REDIS_SESSION_TIMEOUT_MS`.
async fn the_primary_killed(session_timeout: Duration) {
    const ORDERS: u64 = 450;
    let mut harness = sentinel().await;
    harness.create_topic(TOPIC, 4).await;
    let producer = Producer::new(
        test_settings(&harness.server.url())
            .wait_for_replicas(1)
            .build()
            .expect("a backend that waits for a replica"),
    );
    publish(&producer, 0..300, Duration::ZERO).await;
    let worker = Worker::spawn(
        &format!("sentinel-failover-{}ms", session_timeout.as_millis()),
        &[
            ("REDIS_URL", harness.server.url()),
            (
                "REDIS_SESSION_TIMEOUT_MS",
                session_timeout.as_millis().to_string(),
            ),
            ("REDIS_KEEP_ACKNOWLEDGED_MS", "3600000".into()),
        ],
    );
    worker.wait_for_attempts(60, "the worker did not get going").await;
    // Publishing on across the kill: one order every 20 ms, each sent again until it returns.
    let across = tokio::spawn({
        let producer = producer.clone();
        async move { publish(&producer, 300..400, Duration::from_millis(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_kill = worker.attempts().len();
    let old = harness.server.primary();
    let failover = tokio::task::block_in_place(|| {
        harness.server.kill(old);
        harness.server.failover_from(old, Duration::from_secs(30))
    });
    assert!(
        at_kill < 300,
        "the kill came too late to matter ({at_kill} attempts)"
    );
    let flushed = RedisSentinel::cli(failover.primary, &["SCRIPT", "FLUSH"]);
    assert_eq!(flushed.trim(), "OK", "SCRIPT FLUSH on the new primary");
    let (failed, longest) = across.await.expect("the publisher across the kill");
    assert!(
        longest > Duration::from_secs(1),
        "no send waited for the failover: the kill missed the publisher"
    );

    // Published after the failover: the worker must be reading every partition again.
    publish(&producer, 400..ORDERS, Duration::ZERO).await;
    let (lost, dead, repeats) = outcome(&harness, &worker, ORDERS, Duration::from_secs(60)).await;
    // The repeated successes whose first success was before the kill (the rest were done
    // while the primary was away: their acknowledgements did not get through).
    let attempts = worker.attempts();
    let before: HashSet<u64> = attempts[..at_kill].iter().filter(|a| a.2).map(|a| a.0).collect();
    let mut seen = HashSet::new();
    let repeated_before = attempts
        .iter()
        .filter(|a| a.2 && !seen.insert(a.0) && before.contains(&a.0))
        .count();
    eprintln!(
        "session timeout {session_timeout:?}: primary on {old} killed after {at_kill} attempts; {} promoted in {:?}, writable (a replica \
         following it) in {:?}; a send waited up to {longest:?} ({failed} failed and were sent again): {} of {ORDERS} \
         lost, {} dead-lettered, {repeats} repeated successes ({repeated_before} of them first \
         done before the kill)",
        failover.primary,
        failover.promoted,
        failover.writable,
        lost.len(),
        dead.len()
    );
    assert!(lost.is_empty(), "orders lost: {lost:?}");
    assert_eq!(dead, expected_dead(ORDERS));
}

/// A failover asked of the sentinels (`SENTINEL FAILOVER`): the old primary lives on as a
/// replica (the sentinels drop its clients; a write that reaches it is answered `READONLY`),
/// and the backend's connections move to the new one: a consumer's blocking reads, the shared
/// connection's sends and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_asked_of_the_sentinels_moves_every_connection_to_the_new_primary() {
    let harness = sentinel().await;
    let backend = &harness.backend;
    let topic = Topic::main("orders");
    backend.create_topic(&topic, 1).await.expect("create topic");
    let mut consumer = backend
        .subscribe(Subscription {
            topic: topic.clone(),
            group: "billing".into(),
        })
        .await
        .expect("subscribe");
    let send = |n: u32| {
        let topic = topic.clone();
        let record = OutboundRecord {
            partition: Some(0),
            payload: Some(n.to_string().into_bytes().into()),
            ..Default::default()
        };
        async move {
            for _ in 0..100 {
                if backend.send(&topic, record.clone()).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("record {n} was never sent");
        }
    };
    send(0).await;
    assert_eq!(next_payload(&mut consumer).await, "0");

    let old = harness.server.primary();
    let asked = RedisSentinel::cli(
        harness.server.sentinels[0].port,
        &["SENTINEL", "FAILOVER", RedisSentinel::MASTER_NAME],
    );
    assert_eq!(asked.trim(), "OK", "SENTINEL FAILOVER");
    let failover = tokio::task::block_in_place(|| harness.server.failover_from(old, Duration::from_secs(30)));
    assert!(
        RedisSentinel::cli(old, &["ROLE"]).starts_with("slave"),
        "the old primary is a replica now"
    );

    for n in 1..20 {
        send(n).await;
    }
    // Each record read at least once (one whose acknowledgement failed may be read again).
    let mut unread: HashSet<String> = (1..20).map(|n| n.to_string()).collect();
    while !unread.is_empty() {
        unread.remove(&next_payload(&mut consumer).await);
    }
    let read = backend.read(&topic, &[]).await;
    let read = match read {
        Ok(records) => records,
        // The first command on a connection to the old primary fails; the next one does not.
        Err(_) => backend.read(&topic, &[]).await.expect("read the topic"),
    };
    assert_eq!(read.len(), 20);
    eprintln!(
        "asked failover from {old} to {}: promoted in {:?}, writable in {:?}",
        failover.primary, failover.promoted, failover.writable
    );
}

/// The payload of the consumer's next record (acknowledged), skipping assignments.
async fn next_payload(consumer: &mut RedisConsumer) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), consumer.next()).await {
            Ok(Ok(Fetched::Record(record))) => {
                let at = record.position();
                // An acknowledgement that fails (the primary is changing) is read again: at least once.
                let _ = consumer.ack(at.partition, at.offset).await;
                return String::from_utf8_lossy(record.payload.as_deref().unwrap_or_default()).into_owned();
            }
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => panic!("fetch failed: {error}"),
            Err(_) => panic!("no record within 20 s"),
        }
    }
}

/// Publishes orders `ids`, `pause` apart, each sent again until it returns Ok (a failover
/// refuses sends until a replica follows the new primary); how many sends failed, and the
/// longest time one order took to publish.
async fn publish(
    producer: &Producer<Redis>,
    ids: std::ops::Range<u64>,
    pause: Duration,
) -> (usize, Duration) {
    let (mut failed, mut longest) = (0, Duration::ZERO);
    for id in ids {
        let start = Instant::now();
        while let Err(error) = producer.send(&Order { id }).await {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "order {id} not published: {error}"
            );
            failed += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        longest = longest.max(start.elapsed());
        tokio::time::sleep(pause).await;
    }
    (failed, longest)
}

/// Waits (up to `within`) until every order of `0..count` succeeded or was dead-lettered;
/// returns the orders that did neither (lost), the dead-lettered ones and the repeated
/// successes.
async fn outcome(
    harness: &RedisSentinelHarness,
    worker: &Worker,
    count: u64,
    within: Duration,
) -> (Vec<u64>, HashSet<u64>, usize) {
    let deadline = Instant::now() + within;
    loop {
        let attempts = worker.attempts();
        let succeeded: HashSet<u64> = attempts.iter().filter(|a| a.2).map(|a| a.0).collect();
        // The harness's own connection went to the old primary: its first command after the
        // failover fails (as after any dropped connection), the next asks the sentinels.
        let dead_letters = harness
            .backend
            .read(&Topic::new(DLQ, TopicRole::DeadLetter), &[])
            .await;
        let Ok(dead_letters) = dead_letters else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let dead: HashSet<u64> = dead_letters.iter().map(order_id).collect();
        let lost: Vec<u64> = (0..count)
            .filter(|id| !succeeded.contains(id) && !dead.contains(id))
            .collect();
        if lost.is_empty() || Instant::now() >= deadline {
            let repeats = attempts.iter().filter(|a| a.2).count() - succeeded.len();
            return (lost, dead, repeats);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
