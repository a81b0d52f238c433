//! `retry_kafka::testing` in virtual time: a `["10s", "1m", "5m"]` chain, the drop policy and
//! what a handler's `Context` says, each in milliseconds of real time.

use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::handler::ErrorKind;
use retry_kafka::prelude::*;
use retry_kafka::testing::TestApp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "vt.orders", key = "id")]
struct Order {
    id: u64,
}

#[derive(Debug, Clone)]
struct Attempt {
    id: u64,
    at: Instant,
    attempt: u32,
    max_attempts: u32,
    last: bool,
    level: u32,
    topic: String,
    origin: (String, u32, u64),
    first_failure_ms: Option<i64>,
    rk_attempts: Option<String>,
}

static ATTEMPTS: Mutex<Vec<Attempt>> = Mutex::new(Vec::new());

fn attempts_of(id: u64) -> Vec<Attempt> {
    ATTEMPTS
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.id == id)
        .cloned()
        .collect()
}

#[retry_handler(group = "vt-billing", retries = ["10s", "1m", "5m"], dlq)]
async fn always_fails(order: Order, ctx: Context) -> Result<(), HandlerError> {
    let origin = ctx.origin();
    ATTEMPTS.lock().unwrap().push(Attempt {
        id: order.id,
        at: Instant::now(),
        attempt: ctx.attempt(),
        max_attempts: ctx.max_attempts(),
        last: ctx.is_last_attempt(),
        level: ctx.level(),
        topic: ctx.topic().to_owned(),
        origin: (origin.topic.to_string(), origin.partition, origin.offset),
        first_failure_ms: ctx.first_failure_at_ms(),
        rk_attempts: ctx.headers().get_str("rk-attempts").map(str::to_owned),
    });
    Err(HandlerError::transient(format!(
        "ledger offline for {}",
        order.id
    )))
}

#[tokio::test(start_paused = true)]
async fn three_level_chain_runs_in_virtual_time() {
    let real = std::time::Instant::now();
    let app = TestApp::start_only(|spec| spec.function() == "always_fails").await;
    let start = Instant::now();
    let sent = app.publish(&Order { id: 1 }).await;

    app.advance(Duration::from_secs(5)).await;
    assert_eq!(attempts_of(1).len(), 1);
    let waiting = app.waiting("always_fails", 1);
    assert_eq!(waiting.len(), 1, "the failed message waits on level 1");
    assert_eq!(waiting[0].headers.get_str("rk-attempts"), Some("1"));
    assert!(app.waiting("always_fails", 2).is_empty());
    assert!(app.dead_letters("always_fails").is_empty());

    app.advance(Duration::from_secs(6)).await; // t = 11 s: level 1 ran, level 2 waits a minute
    assert_eq!(attempts_of(1).len(), 2);
    assert!(app.waiting("always_fails", 1).is_empty());
    assert_eq!(app.waiting("always_fails", 2).len(), 1);

    app.settle().await;
    let attempts = attempts_of(1);
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Each attempt runs when due: never early, and (virtual time being exact) only a few
    // milliseconds of polling late.
    let expected = [0u64, 10, 70, 370];
    for (attempt, secs) in attempts.iter().zip(expected) {
        let at = attempt.at.duration_since(start);
        assert!(
            at >= Duration::from_secs(secs),
            "attempt {} at {at:?}, before {secs} s",
            attempt.attempt
        );
        assert!(
            at <= Duration::from_secs(secs) + Duration::from_millis(50),
            "attempt {} late: {at:?}",
            attempt.attempt
        );
    }

    let dead = app.dead_letters("always_fails");
    assert_eq!(dead.len(), 1);
    let context = &dead[0].context;
    assert_eq!(
        (context.attempts, context.due_at_ms, context.error_kind),
        (4, None, ErrorKind::Transient)
    );
    assert_eq!(
        (context.original_topic.as_str(), context.original_partition),
        ("vt.orders", sent.partition)
    );
    assert_eq!(context.original_offset, sent.offset);
    assert_eq!(context.group, "vt-billing");
    assert_eq!(context.error_message, "ledger offline for 1");
    assert_eq!(context.last_failure_at_ms - context.first_failure_at_ms, 370_000);
    let stats = app.stats();
    let stats = stats.handler("always_fails").unwrap();
    assert_eq!(
        (stats.failed, stats.dead_lettered, &stats.retried[..]),
        (4, 1, &[1, 1, 1][..])
    );
    app.shutdown().await;
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "6 minutes of retries took {:?} of real time",
        real.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn context_tells_the_handler_where_it_is() {
    let app = TestApp::start_only(|spec| spec.function() == "always_fails").await;
    app.publish(&Order { id: 2 }).await;
    let sent = app.publish(&Order { id: 2 }).await; // the second message is the one we follow
    app.settle().await;
    let attempts: Vec<Attempt> = attempts_of(2)
        .into_iter()
        .filter(|a| a.origin.2 == sent.offset)
        .collect();
    assert_eq!(attempts.len(), 4);
    let first = &attempts[0];
    assert_eq!(
        (first.attempt, first.max_attempts, first.level, first.last),
        (1, 4, 0, false)
    );
    assert_eq!(first.topic, "vt.orders");
    assert_eq!(
        first.origin,
        ("vt.orders".to_owned(), sent.partition, sent.offset)
    );
    assert_eq!(
        (first.first_failure_ms, first.rk_attempts.as_deref()),
        (None, None)
    );
    let second = &attempts[1];
    assert_eq!((second.attempt, second.level, second.last), (2, 1, false));
    assert_eq!(second.topic, "vt.orders.vt-billing.retry.1");
    assert_eq!(second.origin, first.origin, "the origin survives the hop");
    assert_eq!(second.rk_attempts.as_deref(), Some("1"));
    let failed_at = second.first_failure_ms.expect("known after the first failure");
    assert!(attempts[2..]
        .iter()
        .all(|a| a.first_failure_ms == Some(failed_at)));
    assert!(attempts[3].last);
    assert_eq!(attempts[3].topic, "vt.orders.vt-billing.retry.3");
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// on_exhausted = "drop": counted, logged, acknowledged, nowhere else

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "vt.audit", key = "id")]
struct AuditEntry {
    id: u64,
    permanent: bool,
}

#[retry_handler(group = "vt-audit", retries = ["1s"], on_exhausted = "drop")]
async fn best_effort(entry: AuditEntry) -> Result<(), HandlerError> {
    if entry.permanent {
        return Err(HandlerError::permanent("malformed entry"));
    }
    Err(HandlerError::transient("audit store down"))
}

#[tokio::test(start_paused = true)]
async fn dropping_is_explicit_counted_and_acknowledged() {
    let app = TestApp::start_only(|spec| spec.function() == "best_effort").await;
    for id in 0..3 {
        app.publish(&AuditEntry {
            id,
            permanent: id == 0,
        })
        .await;
    }
    app.settle().await;
    let stats = app.stats();
    let stats = stats.handler("best_effort").unwrap();
    // id 0 is permanent: dropped at once; ids 1 and 2 are retried once, then dropped.
    assert_eq!(
        (stats.dropped, stats.dead_lettered, &stats.retried[..]),
        (3, 0, &[2][..])
    );
    assert_eq!(stats.failed, 5);
    assert!(app.backlog().is_empty());
    assert!(app.broker().records("vt.audit.vt-audit.dlq").is_empty());
    assert_eq!(app.app().topology(0).dead_letter, None);
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Garbage on the main topic, through the testing API

#[tokio::test(start_paused = true)]
async fn garbage_is_dead_lettered_through_the_testing_api() {
    let app = TestApp::start_only(|spec| spec.function() == "always_fails").await;
    let mut headers = retry_kafka::headers::Headers::new();
    headers.insert("source", "legacy-system");
    app.publish_bytes("vt.orders", Some(b"k"), b"<order id=3/>", headers)
        .await;
    app.settle().await;
    let dead = app.dead_letters("always_fails");
    let garbage: Vec<_> = dead
        .iter()
        .filter(|d| d.context.error_kind == ErrorKind::Decode)
        .collect();
    assert_eq!(garbage.len(), 1);
    assert_eq!(garbage[0].record.payload.as_deref(), Some(&b"<order id=3/>"[..]));
    assert_eq!(garbage[0].record.headers.get_str("source"), Some("legacy-system"));
    assert_eq!(garbage[0].context.attempts, 1);
    app.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_and_dead_letter_topics_copy_the_main_topic_partition_count() {
    let broker = retry_kafka::backend::memory::InMemory::with_partitions(2);
    broker.create_topic("vt.orders", 6);
    let app = App::builder()
        .backend(broker.clone())
        .handlers(|spec| spec.function() == "always_fails")
        .build()
        .unwrap();
    let app = TestApp::start_with(app).await;
    for level in 1..=3 {
        assert_eq!(
            broker.partitions(&format!("vt.orders.vt-billing.retry.{level}")),
            Some(6)
        );
    }
    assert_eq!(broker.partitions("vt.orders.vt-billing.dlq"), Some(6));
    // Nothing is created for topics no running handler uses.
    assert_eq!(broker.partitions("vt.audit"), None);
    app.shutdown().await;
}
