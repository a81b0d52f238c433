//! The conformance suite on Redis in unordered mode: every member reads every partition, and
//! entries a member leaves pending are claimed by another after the session timeout.

mod conformance;
mod redis_support;

use redis_support::RedisHarness;

async fn unordered() -> RedisHarness {
    tokio::task::spawn_blocking(RedisHarness::start_unordered)
        .await
        .expect("start redis-server")
}

conformance_suite!(unordered);

// Unordered only: more members than partitions, long handlers, and claims from a dead member.

mod process_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use conformance::Harness;
use process_support::Worker;
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "unordered.share", key = "id")]
struct Share {
    id: u64,
}

static HANDLED_IDS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static LONG_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[retry_handler(group = "unordered-share", retries = ["100ms"], dlq, concurrency = 4)]
async fn share(event: Share) -> Result<(), HandlerError> {
    if event.id == 1_000 {
        // Longer than the session timeout (1.5 s): must not be claimed by the other member.
        LONG_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(4)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    HANDLED_IDS.lock().unwrap().push(event.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_one_partition_and_a_long_handler_is_not_claimed() {
    let harness = unordered().await;
    harness.create_topic("unordered.share", 1).await;
    let start = || async {
        let app = App::builder()
            .backend(harness.backend())
            .handlers(|s| s.group() == "unordered-share")
            .build()
            .unwrap();
        let running = app.start().await.unwrap();
        (app, running)
    };
    let (first, first_running) = start().await;
    let (second, second_running) = start().await;
    let producer = first.producer();
    producer.send(&Share { id: 1_000 }).await.unwrap();
    for id in 0..200 {
        producer.send(&Share { id }).await.unwrap();
    }
    let done = |app: &App<_>| app.stats().handler("share").unwrap().succeeded;
    conformance::eventually(
        Duration::from_secs(30),
        "every event handled by one of the two",
        || done(&first) + done(&second) >= 201,
    )
    .await;
    // Another sweep after the long handler finished: nothing may be claimed again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (done(&first), done(&second));
    eprintln!("one partition, two members: {a} + {b} handled");
    assert!(a > 0 && b > 0, "both members work one partition: {a} / {b}");
    assert_eq!(a + b, 201, "nothing handled twice");
    assert_eq!(
        LONG_ATTEMPTS.load(Ordering::SeqCst),
        1,
        "the long attempt was claimed by the other member"
    );
    let ids: HashSet<u64> = HANDLED_IDS.lock().unwrap().iter().copied().collect();
    assert_eq!(ids.len(), 201);
    first_running.shutdown().await.unwrap();
    second_running.shutdown().await.unwrap();
    assert_eq!(
        harness.committed("unordered.share", "unordered-share").await,
        [201]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_claims_what_a_killed_worker_left() {
    let harness = unordered().await;
    let spawn = |name: &str| {
        Worker::spawn(
            name,
            &[
                ("REDIS_URL", harness.server.url()),
                ("REDIS_SESSION_TIMEOUT_MS", "1500".into()),
                ("REDIS_KEEP_ACKNOWLEDGED_MS", "3600000".into()),
                ("REDIS_UNORDERED", "true".into()),
            ],
        )
    };
    // The workers run until the check below: what is pending is theirs to finish.
    let _workers = process_support::a_survivor_finishes_what_a_killed_worker_left(&harness, spawn).await;
    redis_support::assert_nothing_pending(&harness, process_support::TOPIC, "proc-workers").await;
}
