//! Batch handlers and rate limits in virtual time, on the in-process broker through
//! `retry_kafka::testing::TestApp`: how batches are gathered (size and linger), what each
//! record's outcome does (acknowledged, its own walk through the retry levels, dead letters),
//! records that do not decode, whole-batch failures, panics and timeouts, retry levels that
//! batch only what is due; and `rate = ".."` caps attempts over all levels without running a
//! retry early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::handler::{BatchFailures, ErrorKind};
use retry_kafka::headers::Headers;
use retry_kafka::prelude::*;
use retry_kafka::testing::TestApp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "batch.orders", key = "id")]
struct Order {
    id: u64,
}

/// One call of a batch handler: the ids it got, each record's attempt, and when.
#[derive(Debug, Clone)]
struct Call {
    handler: &'static str,
    ids: Vec<u64>,
    attempts: Vec<u32>,
    at: Instant,
}

static CALLS: Mutex<Vec<Call>> = Mutex::new(Vec::new());

fn note(handler: &'static str, orders: &[Order], ctx: &BatchContext) {
    CALLS.lock().unwrap().push(Call {
        handler,
        ids: orders.iter().map(|o| o.id).collect(),
        attempts: ctx.iter().map(|c| c.attempt()).collect(),
        at: Instant::now(),
    });
}

fn calls(handler: &str) -> Vec<Call> {
    CALLS
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.handler == handler)
        .cloned()
        .collect()
}

async fn start(handler: &'static str) -> TestApp {
    TestApp::start_only(move |spec| spec.function() == handler).await
}

#[retry_handler(topic = "batch.gather", batch(max = 3, linger = "50ms"), dlq)]
async fn gathers(orders: Vec<Order>, ctx: BatchContext) -> Result<(), BatchError> {
    note("gathers", &orders, &ctx);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn batches_hold_at_most_max_and_a_lone_record_waits_only_its_linger() {
    let app = start("gathers").await;
    let producer = app.app().producer();
    for id in 0..7 {
        producer
            .send_to("batch.gather", &Order { id }, Headers::new())
            .await
            .unwrap();
    }
    app.advance(Duration::from_millis(200)).await;
    let seen = calls("gathers");
    assert!(
        seen.iter().all(|c| !c.ids.is_empty() && c.ids.len() <= 3),
        "{seen:?}"
    );
    let mut ids: Vec<u64> = seen.iter().flat_map(|c| c.ids.clone()).collect();
    ids.sort();
    assert_eq!(ids, (0..7).collect::<Vec<_>>(), "each record once: {seen:?}");
    assert!(seen.iter().all(|c| c.attempts.iter().all(|&a| a == 1)));

    // A lone record: its batch starts when the linger is over, not before and not much later.
    let before = calls("gathers").len();
    let sent = Instant::now();
    producer
        .send_to("batch.gather", &Order { id: 100 }, Headers::new())
        .await
        .unwrap();
    app.advance(Duration::from_millis(200)).await;
    let lone = &calls("gathers")[before..];
    assert_eq!(lone.len(), 1, "{lone:?}");
    assert_eq!(lone[0].ids, [100]);
    let waited = lone[0].at - sent;
    assert!(
        waited >= Duration::from_millis(50) && waited <= Duration::from_millis(52),
        "the batch started {waited:?} after its first record; the linger is 50ms"
    );
    assert_eq!(app.stats().handler("gathers").unwrap().succeeded, 8);
    app.shutdown().await;
}

/// Even ids fail transiently on the first attempt, multiples of 5 fail permanently, the rest
/// succeed.
#[retry_handler(topic = "batch.mixed", batch(max = 50, linger = "10ms"), retries = ["10s"], dlq)]
async fn mixed(orders: Vec<Order>, ctx: BatchContext) -> Result<(), BatchError> {
    note("mixed", &orders, &ctx);
    let mut failures = BatchFailures::new();
    for (index, (order, record)) in orders.iter().zip(&ctx).enumerate() {
        if order.id % 5 == 0 {
            failures.fail(
                index,
                HandlerError::permanent(format!("order {} is void", order.id)),
            );
        } else if order.id % 2 == 0 && record.attempt() == 1 {
            failures.fail(
                index,
                std::io::Error::other(format!("stock service busy for {}", order.id)),
            );
        }
    }
    failures.into_result()
}

#[tokio::test(start_paused = true)]
async fn each_record_settles_on_its_own_outcome() {
    let app = start("mixed").await;
    let producer = app.app().producer();
    for id in 1..=20 {
        producer
            .send_to("batch.mixed", &Order { id }, Headers::new())
            .await
            .unwrap();
    }
    // Undecodable bytes in the middle of the batch.
    let garbage = retry_kafka::backend::OutboundRecord {
        partition: None,
        key: Some("g".into()),
        payload: Some(b"{not json".to_vec().into()),
        headers: Headers::new(),
    };
    producer.send_raw("batch.mixed", garbage).await.unwrap();
    app.advance(Duration::from_secs(1)).await;

    // Level 1 holds exactly the even ids that are not multiples of 5, nothing else yet.
    let mut waiting: Vec<u64> = app
        .waiting("mixed", 1)
        .iter()
        .map(|r| {
            serde_json::from_slice::<Order>(r.payload.as_deref().unwrap())
                .unwrap()
                .id
        })
        .collect();
    waiting.sort();
    assert_eq!(waiting, [2, 4, 6, 8, 12, 14, 16, 18]);
    for record in app.waiting("mixed", 1) {
        assert_eq!(record.headers.get_str("rk-error-kind"), Some("transient"));
        let id = serde_json::from_slice::<Order>(record.payload.as_deref().unwrap())
            .unwrap()
            .id;
        assert_eq!(
            record.headers.get_str("rk-error-message"),
            Some(&*format!("stock service busy for {id}"))
        );
    }

    app.settle().await;
    // Retried as a batch of their own on level 1, attempt 2, after 10 s.
    let level_1: Vec<Call> = calls("mixed")
        .into_iter()
        .filter(|c| c.attempts.contains(&2))
        .collect();
    let mut retried: Vec<u64> = level_1.iter().flat_map(|c| c.ids.clone()).collect();
    retried.sort();
    assert_eq!(retried, [2, 4, 6, 8, 12, 14, 16, 18], "{level_1:?}");
    assert!(level_1.iter().all(|c| c.attempts.iter().all(|&a| a == 2)));

    // Dead letters: the permanent failures with their own messages, and the garbage byte for
    // byte, without failing its batch.
    let dead = app.dead_letters("mixed");
    let mut permanent: Vec<(u64, String)> = dead
        .iter()
        .filter(|d| d.context.error_kind == ErrorKind::Permanent)
        .map(|d| {
            let id = serde_json::from_slice::<Order>(d.record.payload.as_deref().unwrap())
                .unwrap()
                .id;
            (id, d.context.error_message.clone())
        })
        .collect();
    permanent.sort();
    assert_eq!(
        permanent,
        [5, 10, 15, 20]
            .map(|id| (id, format!("order {id} is void")))
            .to_vec()
    );
    let decode: Vec<_> = dead
        .iter()
        .filter(|d| d.context.error_kind == ErrorKind::Decode)
        .collect();
    assert_eq!(decode.len(), 1);
    assert_eq!(decode[0].record.payload.as_deref(), Some(&b"{not json"[..]));
    assert_eq!(dead.len(), 5);

    let stats = app.stats().handler("mixed").unwrap().clone();
    // Every id but the four void ones, the even ones on their second attempt.
    assert_eq!(stats.succeeded, 16);
    assert_eq!(stats.retried, [8]);
    assert_eq!(stats.dead_lettered, 5);
    assert!(app.backlog().is_empty(), "{:?}", app.backlog());
    app.shutdown().await;
}

static WHOLE_CALLS: Mutex<u32> = Mutex::new(0);

/// The first call fails as a whole with `?`; the second panics; the third hangs past the
/// timeout; the fourth succeeds.
#[retry_handler(topic = "batch.whole", batch(max = 10, linger = "5ms"), retries = ["1s", "1s", "1s"], timeout = "2s", dlq)]
async fn whole(orders: Vec<Order>, ctx: BatchContext) -> Result<(), BatchError> {
    note("whole", &orders, &ctx);
    let call = {
        let mut calls = WHOLE_CALLS.lock().unwrap();
        *calls += 1;
        *calls
    };
    match call {
        1 => Err(std::io::Error::other("database unreachable"))?,
        2 => panic!("driver bug"),
        3 => tokio::time::sleep(Duration::from_secs(60)).await,
        _ => {}
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_whole_batch_failure_a_panic_and_a_timeout_fail_every_record() {
    let app = start("whole").await;
    let producer = app.app().producer();
    for id in 0..4 {
        producer
            .send_to("batch.whole", &Order { id }, Headers::new())
            .await
            .unwrap();
    }
    app.advance(Duration::from_millis(100)).await;
    let first = app.waiting("whole", 1);
    assert_eq!(first.len(), 4);
    assert!(first
        .iter()
        .all(|r| r.headers.get_str("rk-error-message") == Some("database unreachable")));
    assert!(first
        .iter()
        .all(|r| r.headers.get_str("rk-error-kind") == Some("transient")));

    app.advance(Duration::from_millis(1100)).await;
    let second = app.waiting("whole", 2);
    assert_eq!(second.len(), 4);
    assert!(second
        .iter()
        .all(|r| r.headers.get_str("rk-error-kind") == Some("panic")));
    assert!(second
        .iter()
        .all(|r| r.headers.get_str("rk-error-message") == Some("handler panicked: driver bug")));

    app.advance(Duration::from_millis(3500)).await;
    let third = app.waiting("whole", 3);
    assert_eq!(third.len(), 4);
    assert!(third
        .iter()
        .all(|r| r.headers.get_str("rk-error-kind") == Some("timeout")));

    app.settle().await;
    let seen = calls("whole");
    assert_eq!(
        seen.len(),
        4,
        "one call per attempt, each with all four records: {seen:?}"
    );
    assert!(seen.iter().all(|c| c.ids.len() == 4));
    assert_eq!(
        seen.iter().map(|c| c.attempts[0]).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(app.stats().handler("whole").unwrap().succeeded, 4);
    assert!(app.dead_letters("whole").is_empty());
    app.shutdown().await;
}

/// Fails every record on its first attempt.
#[retry_handler(topic = "batch.due", batch(max = 100, linger = "100ms"), retries = ["10s"], dlq)]
async fn due_only(orders: Vec<Order>, ctx: BatchContext) -> Result<(), BatchError> {
    note("due_only", &orders, &ctx);
    if ctx.attempt() == 1 {
        Err(HandlerError::transient("not yet"))?;
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_retry_level_batches_only_records_that_are_due() {
    let app = start("due_only").await;
    let producer = app.app().producer();
    let first_sent = Instant::now();
    for id in 0..3 {
        producer
            .send_to("batch.due", &Order { id }, Headers::new())
            .await
            .unwrap();
    }
    app.advance(Duration::from_secs(4)).await;
    for id in 10..13 {
        producer
            .send_to("batch.due", &Order { id }, Headers::new())
            .await
            .unwrap();
    }
    app.settle().await;
    let retries: Vec<Call> = calls("due_only")
        .into_iter()
        .filter(|c| c.attempts[0] == 2)
        .collect();
    assert_eq!(retries.len(), 2, "the two groups are due 4 s apart: {retries:?}");
    let sorted = |ids: &[u64]| {
        let mut ids = ids.to_vec();
        ids.sort();
        ids
    };
    assert_eq!(sorted(&retries[0].ids), [0, 1, 2]);
    assert_eq!(sorted(&retries[1].ids), [10, 11, 12]);
    let first_at = retries[0].at - first_sent;
    let second_at = retries[1].at - first_sent;
    // Due 10 s after the first attempt (which waited its 100 ms linger), never before.
    assert!(
        first_at >= Duration::from_millis(10_100) && first_at < Duration::from_millis(10_400),
        "{first_at:?}"
    );
    assert!(
        second_at >= Duration::from_millis(14_100) && second_at < Duration::from_millis(14_400),
        "{second_at:?}"
    );
    app.shutdown().await;
}

static RATED: Mutex<Vec<(u64, u32, Instant)>> = Mutex::new(Vec::new());

/// 100 attempts per second at most, over the main topic and the retry level together; every
/// first attempt fails.
#[retry_handler(topic = "rate.orders", retries = ["1s"], dlq, rate = "100/s", concurrency = 8)]
async fn rated(order: Order, ctx: Context) -> Result<(), HandlerError> {
    RATED
        .lock()
        .unwrap()
        .push((order.id, ctx.attempt(), Instant::now()));
    if ctx.attempt() == 1 {
        return Err(HandlerError::transient("first attempt fails"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_rate_caps_attempts_over_all_levels_and_no_retry_runs_early() {
    let app = start("rated").await;
    let producer = app.app().producer();
    let start = Instant::now();
    for id in 0..500 {
        producer
            .send_to("rate.orders", &Order { id }, Headers::new())
            .await
            .unwrap();
    }
    app.settle().await;
    let attempts = RATED.lock().unwrap().clone();
    assert_eq!(attempts.len(), 1000);
    // Every 1 s window holds at most 100 attempts plus the 50 ms burst (5).
    let times: Vec<Duration> = {
        let mut t: Vec<Duration> = attempts.iter().map(|(_, _, at)| *at - start).collect();
        t.sort();
        t
    };
    let mut most = 0;
    for (i, &from) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|&&t| t < from + Duration::from_secs(1))
            .count();
        most = most.max(within);
    }
    assert!(
        most <= 105,
        "{most} attempts in one second under rate = \"100/s\""
    );
    let span = *times.last().unwrap();
    assert!(
        span >= Duration::from_millis(9_900) && span <= Duration::from_millis(10_500),
        "1000 attempts at 100/s took {span:?}"
    );
    // A retry waits for its token, never runs before it is due.
    let mut first: HashMap<u64, Instant> = HashMap::new();
    for (id, attempt, at) in &attempts {
        if *attempt == 1 {
            first.insert(*id, *at);
        }
    }
    for (id, attempt, at) in &attempts {
        if *attempt == 2 {
            let waited = *at - first[id];
            assert!(
                waited >= Duration::from_secs(1),
                "order {id} retried after {waited:?}"
            );
        }
    }
    let stats = app.stats().handler("rated").unwrap().clone();
    assert_eq!((stats.succeeded, stats.retried.clone()), (500, vec![500]));
    app.shutdown().await;
}
