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
use redis_support::{RedisSentinel, RedisSentinelHarness};
use retry_kafka::prelude::Producer;

async fn sentinel() -> RedisSentinelHarness {
    tokio::task::spawn_blocking(RedisSentinelHarness::start_sentinel)
        .await
        .expect("start the primary, its replicas and the sentinels")
}

conformance_suite!(sentinel);

/// A worker process (`rk-worker`) on the Sentinel setup, through `REDIS_URL=redis+sentinel://…`
/// as a deployment runs it; the primary killed (SIGKILL) mid-run, its scripts gone from the new
/// one (`SCRIPT FLUSH`, so the worker must load them again), more orders published after the
/// sentinels promoted a replica: every order succeeds or is dead-lettered, none is lost, and the
/// worker carries on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_mid_run_loses_nothing_and_the_worker_follows_the_new_one() {
    let mut harness = sentinel().await;
    harness.create_topic(TOPIC, 4).await;
    publish(&harness, 0..300).await;
    let worker = Worker::spawn(
        "sentinel-failover",
        &[
            ("REDIS_URL", harness.server.url()),
            ("REDIS_SESSION_TIMEOUT_MS", "1500".into()),
            ("REDIS_KEEP_ACKNOWLEDGED_MS", "3600000".into()),
        ],
    );
    worker.wait_for_attempts(60, "the worker did not get going").await;
    // Everything the old primary acknowledged so far is on both replicas before the kill, as
    // `min-replicas-to-write` promises for what it accepted (the harness's probe write).
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

    // Published after the failover: the worker must be reading every partition again.
    publish(&harness, 300..350).await;
    let (lost, dead, repeats) = outcome(&harness, &worker, 350, Duration::from_secs(60)).await;
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
        "primary on {old} killed after {at_kill} attempts; {} promoted in {:?}, writable (a replica \
         following it) in {:?}: {} of 350 lost, {} dead-lettered, {repeats} repeated successes \
         ({repeated_before} of them first done before the kill)",
        failover.primary,
        failover.promoted,
        failover.writable,
        lost.len(),
        dead.len()
    );
    assert!(lost.is_empty(), "orders lost: {lost:?}");
    assert_eq!(dead, expected_dead(350));
}

/// Publishes orders `ids` through the backend, each tried again for a while when refused (a
/// primary without a replica in sync refuses writes).
async fn publish(harness: &RedisSentinelHarness, ids: std::ops::Range<u64>) {
    let producer = Producer::new(harness.backend.clone());
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(error) = producer.send(&Order { id }).await {
            assert!(Instant::now() < deadline, "order {id} not published: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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
        let dead: HashSet<u64> = harness.records(DLQ).await.iter().map(order_id).collect();
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
