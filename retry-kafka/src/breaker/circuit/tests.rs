//! The breaker's states, windows and cool-downs, in virtual time.

use super::*;

fn breaker(window_attempts: u32, window_ms: u64) -> CircuitBreaker {
    let settings = Breaker::declared(50, window_attempts, window_ms, 4, 1_000, 4_000, 1);
    let handles = BreakerHandles {
        state: Gauge::noop(),
        entered: [Counter::noop(), Counter::noop(), Counter::noop()],
    };
    CircuitBreaker::new(settings, "tests::charge", "orders", "billing", handles)
}

#[tokio::test(start_paused = true)]
async fn it_opens_at_the_failure_rate_once_enough_attempts_concluded() {
    let breaker = breaker(10, 0);
    // Three failures of three: under `min_attempts` (4), so it stays closed.
    for _ in 0..3 {
        assert!(!breaker.conclude(Outcome::Failed));
    }
    // Permanent failures are the record's: not counted.
    assert!(!breaker.conclude(Outcome::Ignored));
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(breaker.admit().is_ok());
    // The fourth: 4 of 4 failed, the failure that opens it is held back.
    assert!(breaker.conclude(Outcome::Failed));
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(breaker.admit(), Err(Instant::now() + Duration::from_secs(1)));
    // Attempts that were under way: a failure is held back too, a success changes nothing.
    assert!(breaker.conclude(Outcome::Failed));
    assert!(!breaker.conclude(Outcome::Succeeded));
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn under_the_rate_it_stays_closed() {
    let breaker = breaker(4, 0);
    for outcome in [
        Outcome::Failed,
        Outcome::Succeeded,
        Outcome::Succeeded,
        Outcome::Succeeded,
    ] {
        assert!(!breaker.conclude(outcome), "1 failure of 4: 25%");
    }
    // The oldest outcome (the failure) leaves as the next comes.
    assert!(!breaker.conclude(Outcome::Failed), "1 failure of the last 4");
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(breaker.conclude(Outcome::Failed), "2 of the last 4: 50%");
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_what_is_older_than_its_period() {
    let breaker = breaker(0, 10_000);
    for _ in 0..3 {
        assert!(!breaker.conclude(Outcome::Failed));
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    // The three failures left the window: 1 attempt now, under `min_attempts`.
    assert!(!breaker.conclude(Outcome::Failed));
    for _ in 0..2 {
        assert!(!breaker.conclude(Outcome::Failed));
    }
    assert!(breaker.conclude(Outcome::Failed), "4 in the window, all failed");
}

#[tokio::test(start_paused = true)]
async fn successes_counted_without_the_lock_keep_their_time_and_their_order() {
    // Ten successes, then the window's period passes: when failures come, the successes
    // weighed with them are those of 11 s ago, out of the window.
    let timed = breaker(0, 10_000);
    for _ in 0..10 {
        assert!(!timed.conclude(Outcome::Succeeded));
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..3 {
        assert!(!timed.conclude(Outcome::Failed));
    }
    assert!(timed.conclude(Outcome::Failed), "4 of 4 in the window failed");
    // A count window: the successes come before the failure that follows them.
    let counted = breaker(4, 0);
    for outcome in [
        Outcome::Failed,
        Outcome::Failed,
        Outcome::Succeeded,
        Outcome::Succeeded,
    ] {
        assert!(!counted.conclude(outcome));
    }
    assert!(!counted.conclude(Outcome::Succeeded));
    assert!(!counted.conclude(Outcome::Failed), "the last 4: S, S, S, F");
    assert!(counted.conclude(Outcome::Failed), "the last 4: S, S, F, F");
    // More successes than the batch: weighed as they pass it, without a failure.
    let busy = breaker(0, 10_000);
    for _ in 0..PENDING_SUCCESSES * 2 {
        busy.conclude(Outcome::Succeeded);
    }
    assert_eq!(busy.pending.load(Ordering::Relaxed), 0);
    assert_eq!(
        busy.inner().window.counts(Instant::now()),
        (PENDING_SUCCESSES * 2, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_probes_one_at_a_time_and_the_cool_down_grows_up_to_its_cap() {
    let breaker = breaker(4, 0);
    for _ in 0..4 {
        breaker.conclude(Outcome::Failed);
    }
    let mut cool_downs = Vec::new();
    for _ in 0..4 {
        let until = breaker.admit().expect_err("open");
        cool_downs.push(until - Instant::now());
        tokio::time::advance(until - Instant::now()).await;
        assert_eq!(breaker.admit(), Ok(()), "the probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let recheck = breaker.admit().expect_err("one probe at a time");
        assert_eq!(recheck - Instant::now(), PROBE_RECHECK);
        assert!(breaker.conclude(Outcome::Failed), "a failed probe is held back");
        assert_eq!(breaker.state(), BreakerState::Open);
    }
    let secs = |s| Duration::from_secs(s);
    assert_eq!(cool_downs, [secs(1), secs(2), secs(4), secs(4)]);
    // A permanent failure of the probe says nothing: another probe may go.
    tokio::time::advance(secs(4)).await;
    assert_eq!(breaker.admit(), Ok(()));
    assert!(!breaker.conclude(Outcome::Ignored));
    assert_eq!(breaker.admit(), Ok(()), "the probe's place is free again");
    assert!(!breaker.conclude(Outcome::Succeeded));
    assert_eq!(breaker.state(), BreakerState::Closed);
    // Closed again, from a fresh window and the declared cool-down.
    for _ in 0..3 {
        assert!(!breaker.conclude(Outcome::Failed));
    }
    assert!(breaker.conclude(Outcome::Failed));
    assert_eq!(breaker.admit(), Err(Instant::now() + secs(1)));
    assert_eq!(breaker.transitions(), [6, 5, 1], "opened, half-opened, closed");
}
