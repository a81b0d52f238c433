//! `breaker` in virtual time (`TestApp`): a dependency that is down for a minute, then back.
//! Without a breaker every record walks its retry levels into the dead letters; with one, the
//! records wait while it is open, probes find the dependency back, and every record succeeds:
//! none dead-lettered, each partition's records succeeding in their order, the transitions
//! in order, and the health naming the open breaker while the app stays ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::handler::{BreakerState, BreakerWindow};
use retry_kafka::prelude::*;
use retry_kafka::testing::TestApp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "br.payments", key = "id")]
struct Payment {
    id: u64,
}

/// Whether the payment gateway is down.
static DOWN: AtomicBool = AtomicBool::new(true);
/// (handler, id, level, succeeded, when, origin partition) of every attempt.
type Attempt = (&'static str, u64, u32, bool, Instant, u32);
static ATTEMPTS: Mutex<Vec<Attempt>> = Mutex::new(Vec::new());

async fn call_gateway(handler: &'static str, payment: Payment, ctx: Context) -> Result<(), HandlerError> {
    let down = DOWN.load(Ordering::SeqCst);
    ATTEMPTS.lock().unwrap().push((
        handler,
        payment.id,
        ctx.level(),
        !down,
        Instant::now(),
        ctx.origin().partition,
    ));
    if down {
        return Err(HandlerError::transient("payment gateway unavailable"));
    }
    Ok(())
}

#[retry_handler(group = "br-guarded", retries = ["1s", "2s"], dlq,
    breaker(failure_rate = 50, window = 20, min_attempts = 5, cool_down = "10s", max_cool_down = "40s"))]
async fn guarded(payment: Payment, ctx: Context) -> Result<(), HandlerError> {
    call_gateway("guarded", payment, ctx).await
}

#[retry_handler(group = "br-unguarded", retries = ["1s", "2s"], dlq)]
async fn unguarded(payment: Payment, ctx: Context) -> Result<(), HandlerError> {
    call_gateway("unguarded", payment, ctx).await
}

#[tokio::test(start_paused = true)]
async fn an_outage_waits_behind_an_open_breaker_instead_of_filling_the_dead_letters() {
    let spec = retry_kafka::handler::registered_handlers()
        .find(|spec| spec.function() == "guarded")
        .unwrap();
    let breaker = spec.breaker().expect("declared");
    assert_eq!(
        (breaker.failure_rate(), breaker.window(), breaker.min_attempts()),
        (50, BreakerWindow::Attempts(20), 5)
    );
    assert_eq!(
        (breaker.cool_down(), breaker.max_cool_down(), breaker.probes()),
        (Duration::from_secs(10), Duration::from_secs(40), 1)
    );

    let app = TestApp::start_only(|spec| spec.group().starts_with("br-")).await;
    let health = app.app().health();
    for id in 0..200 {
        app.publish(&Payment { id }).await;
    }
    // Down for 60 s: the guarded handler's breaker opens after 5 failures; probes at 10 s,
    // then 20 s and 40 s later (the cool-down doubles, capped at 40 s) fail.
    app.advance(Duration::from_secs(30)).await;
    let report = health.report();
    assert!(
        report.is_ready() && report.is_live(),
        "an open breaker leaves the app ready"
    );
    assert_eq!(report.open_breakers(), ["breaker::guarded"]);
    let guarded_state: Vec<_> = report
        .consumers
        .iter()
        .filter(|c| c.handler == "breaker::guarded")
        .map(|c| c.breaker)
        .collect();
    assert_eq!(
        guarded_state,
        [Some(BreakerState::Open); 3],
        "the main topic and both levels"
    );
    assert!(report
        .to_json()
        .contains(r#""open_breakers":["breaker::guarded"]"#));

    app.advance(Duration::from_secs(30)).await;
    DOWN.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    app.advance(Duration::from_secs(120)).await;
    app.settle().await;

    let attempts = ATTEMPTS.lock().unwrap().clone();
    let of = |handler| attempts.iter().filter(move |a| a.0 == handler);
    // Without a breaker: every payment walked three attempts into the dead letters.
    assert_eq!(app.dead_letters("unguarded").len(), 200);
    assert_eq!(of("unguarded").count(), 600);
    // With one: nothing dead-lettered, every payment succeeded once.
    assert!(app.dead_letters("guarded").is_empty());
    let succeeded: Vec<u64> = of("guarded").filter(|a| a.3).map(|a| a.1).collect();
    let mut once = succeeded.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(
        (succeeded.len(), once.len()),
        (200, 200),
        "each succeeded exactly once"
    );
    // Failed attempts: the 5 that opened it (the first four handed on to level 1, where they
    // waited too; the fifth, which opened it, waiting in its place) and one probe after each
    // cool-down: 10 s, then 20 s (doubled); the next, 40 s later, finds the gateway back.
    let failed: Vec<_> = of("guarded").filter(|a| !a.3).collect();
    assert_eq!(failed.len(), 7, "{failed:?}");
    let opened = failed[4].4;
    let probes: Vec<Duration> = failed[5..].iter().map(|a| a.4 - opened).collect();
    assert_eq!(probes, [Duration::from_secs(10), Duration::from_secs(30)]);
    assert_eq!(
        failed[5].1, failed[4].1,
        "the probe is the record that opened it, in its place"
    );
    let first_success = of("guarded").find(|a| a.3).unwrap().4;
    assert_eq!(first_success - opened, Duration::from_secs(70), "the third probe");
    assert!(
        first_success - recovered <= Duration::from_secs(40),
        "within the capped cool-down"
    );
    // Main-topic payments succeeded in the order they were published, partition by partition
    // (a key's partition; ids ascend in each).
    let partitions: std::collections::BTreeSet<u32> = of("guarded").map(|a| a.5).collect();
    assert!(partitions.len() > 1, "spread over partitions: {partitions:?}");
    for partition in partitions {
        let main: Vec<u64> = of("guarded")
            .filter(|a| a.3 && a.2 == 0 && a.5 == partition)
            .map(|a| a.1)
            .collect();
        assert!(
            main.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: {main:?}"
        );
    }
    assert_eq!(health.report().open_breakers(), Vec::<&str>::new());
    let stats = app.stats();
    let stats = stats.handler("guarded").unwrap();
    assert_eq!(
        (
            stats.breaker_opened,
            stats.breaker_half_opened,
            stats.breaker_closed
        ),
        (3, 3, 1),
        "opened, two failed probes, the third closed it"
    );
    assert_eq!(stats.dead_lettered, 0);
    app.shutdown().await;
}
