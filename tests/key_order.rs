//! `ordering = "key"` in virtual time (`TestApp`, the in-process broker): per key, the
//! successful attempts come in the order the records were produced, whatever fails (once,
//! twice, always: the dead letters), while keys that never fail are not delayed. The same
//! handler without the ordering, on the same records and the same failures, breaks that order:
//! the check below can fail.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::headers::names;
use retry_kafka::prelude::*;
use retry_kafka::testing::TestApp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "ko.accounts", key = "account")]
struct Change {
    account: u64,
    seq: u64,
}

/// How often `(account, seq)` fails before it succeeds; `u32::MAX`: always.
fn failures_of(account: u64, seq: u64) -> u32 {
    match (account, seq) {
        (0, 0) => 1,
        (1, 2) => 2,
        (2, 0) => u32::MAX,
        (3, 4) => 1,
        (3, 5) => 1,
        _ => 0,
    }
}

/// Per handler: attempts so far of each (account, seq), and the successes in order.
#[derive(Default)]
struct Seen {
    attempts: HashMap<(u64, u64), u32>,
    successes: Vec<(u64, u64, Instant)>,
    /// (account, seq, attempt, held-at header present) of every attempt.
    tries: Vec<(u64, u64, u32, bool)>,
}

static SEEN: Mutex<Option<HashMap<&'static str, Seen>>> = Mutex::new(None);

fn attempt(handler: &'static str, change: &Change, ctx: &Context) -> Result<(), HandlerError> {
    let mut seen = SEEN.lock().unwrap();
    let seen = seen.get_or_insert_with(HashMap::new).entry(handler).or_default();
    let tries = seen.attempts.entry((change.account, change.seq)).or_default();
    *tries += 1;
    let failed_so_far = *tries - 1;
    let held = ctx.headers().get_str(names::HELD_AT).is_some();
    seen.tries.push((change.account, change.seq, ctx.attempt(), held));
    if failed_so_far < failures_of(change.account, change.seq) {
        return Err(HandlerError::transient(format!("{change:?} fails")));
    }
    seen.successes.push((change.account, change.seq, Instant::now()));
    Ok(())
}

#[retry_handler(group = "ko-ordered", retries = ["1s", "2s"], dlq, ordering = "key")]
async fn ordered(change: Change, ctx: Context) -> Result<(), HandlerError> {
    attempt("ordered", &change, &ctx)
}

#[retry_handler(group = "ko-unordered", retries = ["1s", "2s"], dlq)]
async fn unordered(change: Change, ctx: Context) -> Result<(), HandlerError> {
    attempt("unordered", &change, &ctx)
}

const ACCOUNTS: u64 = 12;
const PER_ACCOUNT: u64 = 10;

/// Keys whose successes are out of production order.
fn out_of_order(successes: &[(u64, u64, Instant)]) -> Vec<u64> {
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut broken = Vec::new();
    for &(account, seq, _) in successes {
        if last.get(&account).is_some_and(|&before| before > seq) && !broken.contains(&account) {
            broken.push(account);
        }
        last.insert(account, seq);
    }
    broken
}

#[tokio::test(start_paused = true)]
async fn each_keys_successes_follow_production_order_whatever_fails() {
    let spec = retry_kafka::handler::registered_handlers()
        .find(|spec| spec.function() == "ordered")
        .unwrap();
    assert_eq!(spec.ordering(), retry_kafka::handler::RetryOrdering::Key);

    let app = TestApp::start_only(|spec| spec.group().starts_with("ko-")).await;
    let began = Instant::now();
    // Interleaved, so every partition carries several keys.
    for seq in 0..PER_ACCOUNT {
        for account in 0..ACCOUNTS {
            app.publish(&Change { account, seq }).await;
        }
    }
    app.advance(Duration::from_secs(30)).await;
    app.settle().await;

    let seen = SEEN.lock().unwrap().take().unwrap();
    let ordered = &seen["ordered"];
    let unordered = &seen["unordered"];

    // Every record succeeded once, except (2, 0), which went to the dead letters.
    for (name, seen) in [("ordered", ordered), ("unordered", unordered)] {
        assert_eq!(
            seen.successes.len() as u64,
            ACCOUNTS * PER_ACCOUNT - 1,
            "{name}: one success per record but the dead letter"
        );
    }
    assert_eq!(
        out_of_order(&ordered.successes),
        Vec::<u64>::new(),
        "ordered keeps each key's order"
    );
    let mut broken = out_of_order(&unordered.successes);
    broken.sort_unstable();
    // (Account 2's first record never succeeds: its successes cannot be out of order.)
    assert_eq!(
        broken,
        [0, 1, 3],
        "without the ordering, a key that fails and then succeeds is overtaken"
    );
    // Account 2's later records wait for its first one's last attempt (1 s + 2 s): it is
    // dead-lettered, which releases them; without the ordering they go at once.
    for (name, seen, waits) in [("ordered", ordered, true), ("unordered", unordered, false)] {
        for &(account, seq, at) in seen.successes.iter().filter(|s| s.0 == 2) {
            let waited = at - began >= Duration::from_secs(3);
            assert_eq!(
                waited,
                waits,
                "{name}: (2, {seq}) succeeded after {:?}",
                at - began
            );
            assert_eq!(account, 2);
        }
    }

    // Keys that never fail are not held: all their records succeeded before the first retry
    // was due (1 s), in the ordered handler as in the other.
    for &(account, seq, at) in &ordered.successes {
        if account >= 4 {
            assert!(
                at - began < Duration::from_secs(1),
                "({account}, {seq}) waited {:?}",
                at - began
            );
        }
    }

    // Held records made no attempt before their turn: each record's attempts are 1, 2, ... in
    // turn (no attempt counted while it waited), and the records held back carry rk-held-at.
    let mut per_record: HashMap<(u64, u64), Vec<u32>> = HashMap::new();
    for &(account, seq, attempt, _) in &ordered.tries {
        per_record.entry((account, seq)).or_default().push(attempt);
    }
    for ((account, seq), attempts) in &per_record {
        let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
        assert_eq!(attempts, &expected, "({account}, {seq})");
    }
    let held: Vec<(u64, u64)> = ordered.tries.iter().filter(|t| t.3).map(|t| (t.0, t.1)).collect();
    // Account 0's records after seq 0, account 2's after seq 0 (released by the dead letter),
    // account 1's after seq 2, account 3's after seq 4: all held back.
    for account in 0..4u64 {
        let first_failing = (0..PER_ACCOUNT)
            .find(|&seq| failures_of(account, seq) > 0)
            .unwrap();
        for seq in first_failing + 1..PER_ACCOUNT {
            assert!(
                held.contains(&(account, seq)),
                "({account}, {seq}) was held back: {held:?}"
            );
        }
    }
    assert!(
        held.iter().all(|&(account, _)| account < 4),
        "no other key held: {held:?}"
    );

    let dead = app.dead_letters("ordered");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].context.attempts, 3);
    assert_eq!(app.backlog(), Vec::new());
    app.shutdown().await;
}

/// Successes of the restart test, in order.
static AFTER_RESTART: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "ko.restarted", key = "account")]
struct Deposit {
    account: u64,
    seq: u64,
}

#[retry_handler(group = "kr-ordered", retries = ["10s"], dlq, ordering = "key")]
async fn ordered_across_restarts(deposit: Deposit, ctx: Context) -> Result<(), HandlerError> {
    // The first record fails its first attempt only.
    if deposit.seq == 0 && ctx.attempt() == 1 {
        return Err(HandlerError::transient("first deposit fails once"));
    }
    AFTER_RESTART.lock().unwrap().push(deposit.seq);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_holds_survive_a_restart() {
    let keep = |spec: &retry_kafka::handler::HandlerSpec| spec.group() == "kr-ordered";
    let app = TestApp::start_only(keep).await;
    let broker = app.broker().clone();
    for seq in 0..3 {
        app.publish(&Deposit { account: 7, seq }).await;
    }
    app.advance(Duration::from_secs(1)).await;
    assert_eq!(
        AFTER_RESTART.lock().unwrap().len(),
        0,
        "1 and 2 wait behind 0's retry"
    );
    assert_eq!(
        app.waiting("ordered_across_restarts", 1).len(),
        1,
        "0 waits on level 1"
    );
    app.shutdown().await;

    // A new process on the same broker: 0 is still on level 1, 1 and 2 on the held topic.
    let app = TestApp::start_with(App::builder().backend(broker).handlers(keep).build().unwrap()).await;
    app.publish(&Deposit { account: 7, seq: 3 }).await;
    app.advance(Duration::from_secs(1)).await;
    assert_eq!(
        AFTER_RESTART.lock().unwrap().len(),
        0,
        "3 is held back too: the new process counted what the old one left out"
    );
    app.advance(Duration::from_secs(10)).await;
    app.settle().await;
    assert_eq!(*AFTER_RESTART.lock().unwrap(), [0, 1, 2, 3]);
    app.shutdown().await;
}

/// How often each (key, seq) of the property test fails before it succeeds; `u32::MAX`: always.
static SCHEDULE: Mutex<Option<HashMap<(u8, u16), u32>>> = Mutex::new(None);
/// What the property test's handler saw.
struct Observed {
    /// (key, seq) of each success, in order.
    successes: Vec<(u8, u16)>,
    /// (key, seq, attempt) of every attempt.
    tries: Vec<(u8, u16, u32)>,
}

static PROPERTY: Mutex<Observed> = Mutex::new(Observed {
    successes: Vec::new(),
    tries: Vec::new(),
});

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "ko.property", key = "key")]
struct Step {
    key: u8,
    seq: u16,
}

#[retry_handler(group = "kp-ordered", retries = ["1s", "3s"], dlq, ordering = "key")]
async fn ordered_property(step: Step, ctx: Context) -> Result<(), HandlerError> {
    let fails = SCHEDULE
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|schedule| schedule.get(&(step.key, step.seq)).copied())
        .unwrap_or(0);
    let mut seen = PROPERTY.lock().unwrap();
    seen.tries.push((step.key, step.seq, ctx.attempt()));
    if ctx.attempt() <= fails {
        return Err(HandlerError::transient("scheduled failure"));
    }
    seen.successes.push((step.key, step.seq));
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Whatever fails, for every key: the successes are the records that did not exhaust their
    /// attempts, in production order; a record exhausts its attempts only by its own failures
    /// (3 attempts), and no record makes an attempt it was not owed.
    #[test]
    fn any_failure_schedule_keeps_each_keys_order(
        records in proptest::collection::vec((0u8..5, proptest::prelude::prop_oneof![
            8 => proptest::prelude::Just(0u32),
            2 => proptest::prelude::Just(1u32),
            1 => proptest::prelude::Just(2u32),
            1 => proptest::prelude::Just(u32::MAX),
        ]), 1..40),
        pause_ms in 0u64..1500,
    ) {
        let mut schedule = HashMap::new();
        let mut produced: Vec<(u8, u16)> = Vec::new();
        for (seq, (key, fails)) in records.iter().enumerate() {
            schedule.insert((*key, seq as u16), *fails);
            produced.push((*key, seq as u16));
        }
        *SCHEDULE.lock().unwrap() = Some(schedule.clone());
        {
            let mut observed = PROPERTY.lock().unwrap();
            observed.successes.clear();
            observed.tries.clear();
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let (successes, tries) = runtime.block_on(async {
            let app = TestApp::start_with(
                App::builder()
                    .backend(InMemory::new())
                    .handlers(|spec| spec.group() == "kp-ordered")
                    .build()
                    .unwrap(),
            )
            .await;
            // Half the records, a pause (some retries come due meanwhile), the rest.
            let half = produced.len() / 2;
            for &(key, seq) in &produced[..half] {
                app.publish(&Step { key, seq }).await;
            }
            app.advance(Duration::from_millis(pause_ms)).await;
            for &(key, seq) in &produced[half..] {
                app.publish(&Step { key, seq }).await;
            }
            app.advance(Duration::from_secs(10)).await;
            app.settle().await;
            app.shutdown().await;
            let mut observed = PROPERTY.lock().unwrap();
            (std::mem::take(&mut observed.successes), std::mem::take(&mut observed.tries))
        });
        let expected: Vec<(u8, u16)> = produced
            .iter()
            .copied()
            .filter(|record| schedule[record] < 3)
            .collect();
        for key in 0..5u8 {
            let got: Vec<u16> = successes.iter().filter(|s| s.0 == key).map(|s| s.1).collect();
            let want: Vec<u16> = expected.iter().filter(|s| s.0 == key).map(|s| s.1).collect();
            proptest::prop_assert_eq!(got, want, "key {}", key);
        }
        for &(key, seq) in &produced {
            let attempts: Vec<u32> = tries.iter().filter(|t| (t.0, t.1) == (key, seq)).map(|t| t.2).collect();
            let owed = schedule[&(key, seq)].saturating_add(1).min(3);
            let want: Vec<u32> = (1..=owed).collect();
            proptest::prop_assert_eq!(attempts, want, "({}, {})", key, seq);
        }
    }
}

/// The parallel test's attempts under way, per key and in all, and the most seen of each.
#[derive(Default)]
struct Parallel {
    running: HashMap<u64, u32>,
    total: u32,
    most_per_key: u32,
    most_in_all: u32,
    successes: Vec<(u64, u64, Instant)>,
    failed: Vec<(u64, u64)>,
}

static PARALLEL: Mutex<Option<Parallel>> = Mutex::new(None);

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "ko.parallel", key = "account")]
struct Transfer {
    account: u64,
    seq: u64,
}

#[retry_handler(group = "kc-ordered", retries = ["1s"], dlq, ordering = "key", concurrency = 16)]
async fn ordered_in_parallel(transfer: Transfer, ctx: Context) -> Result<(), HandlerError> {
    {
        let mut guard = PARALLEL.lock().unwrap();
        let seen = guard.get_or_insert_with(Parallel::default);
        let running = seen.running.entry(transfer.account).or_default();
        *running += 1;
        let per_key = *running;
        seen.total += 1;
        seen.most_per_key = seen.most_per_key.max(per_key);
        seen.most_in_all = seen.most_in_all.max(seen.total);
    }
    // 1 ms of I/O.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut guard = PARALLEL.lock().unwrap();
    let seen = guard.as_mut().unwrap();
    *seen.running.get_mut(&transfer.account).unwrap() -= 1;
    seen.total -= 1;
    // Every 7th record of every 3rd account fails its first attempt.
    if transfer.account.is_multiple_of(3) && transfer.seq % 7 == 3 && ctx.attempt() == 1 {
        seen.failed.push((transfer.account, transfer.seq));
        return Err(HandlerError::transient("busy"));
    }
    seen.successes
        .push((transfer.account, transfer.seq, Instant::now()));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn concurrency_runs_keys_in_parallel_and_each_key_one_at_a_time() {
    const KEYS: u64 = 40;
    const PER_KEY: u64 = 20;
    let app = TestApp::start_only(|spec| spec.group() == "kc-ordered").await;
    let began = Instant::now();
    for seq in 0..PER_KEY {
        for account in 0..KEYS {
            app.publish(&Transfer { account, seq }).await;
        }
    }
    app.settle().await;
    let seen = PARALLEL.lock().unwrap().take().unwrap();
    assert_eq!(seen.successes.len() as u64, KEYS * PER_KEY);
    assert_eq!(seen.most_per_key, 1, "one attempt of a key at a time");
    assert!(
        seen.most_in_all > 4,
        "keys ran in parallel: at most {} at once",
        seen.most_in_all
    );
    assert_eq!(out_of_order(&seen.successes), Vec::<u64>::new());
    assert_eq!(
        seen.failed.len() as u64,
        KEYS.div_ceil(3) * 3,
        "seq 3, 10 and 17 of every 3rd key"
    );
    // The keys that never fail: 540 records of 1 ms over 4 partitions. One at a time that is
    // 135 ms per partition; 16 at once, a few ms.
    let last = seen
        .successes
        .iter()
        .filter(|s| !s.0.is_multiple_of(3))
        .map(|s| s.2 - began)
        .max()
        .unwrap();
    assert!(
        last < Duration::from_millis(60),
        "the keys that never fail took {last:?}"
    );
    app.shutdown().await;
}

/// Successes of the two-instance test, in order: (account, seq).
static TWO_INSTANCES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "ko.shared", key = "account")]
struct Shared {
    account: u64,
    seq: u64,
}

#[retry_handler(group = "ks-ordered", retries = ["1s"], dlq, ordering = "key")]
async fn ordered_in_two_instances(event: Shared, ctx: Context) -> Result<(), HandlerError> {
    if event.seq % 4 == 1 && ctx.attempt() == 1 {
        return Err(HandlerError::transient("fails once"));
    }
    TWO_INSTANCES.lock().unwrap().push((event.account, event.seq));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn two_instances_on_one_broker_keep_each_keys_order_through_rebalances() {
    let keep = |spec: &retry_kafka::handler::HandlerSpec| spec.group() == "ks-ordered";
    let build = |broker: &InMemory| {
        App::builder()
            .backend(broker.clone())
            .handlers(keep)
            .build()
            .unwrap()
    };
    let first = TestApp::start_only(keep).await;
    let broker = first.broker().clone();
    let publish = |app: &TestApp, seqs: std::ops::Range<u64>| {
        let producer = app.app().producer();
        async move {
            for seq in seqs {
                for account in 0..10 {
                    producer.send(&Shared { account, seq }).await.unwrap();
                }
            }
        }
    };
    publish(&first, 0..4).await;
    first.advance(Duration::from_millis(200)).await;
    // A second instance joins while failures wait and records are held: partitions move, and
    // their retry levels and held topic with them.
    let second = TestApp::start_with(build(&broker)).await;
    publish(&second, 4..8).await;
    second.advance(Duration::from_secs(5)).await;
    assert_eq!(
        second.backlog(),
        Vec::new(),
        "both instances settled everything together"
    );
    first.shutdown().await;
    publish(&second, 8..12).await;
    second.advance(Duration::from_secs(5)).await;
    assert_eq!(second.backlog(), Vec::new());
    second.shutdown().await;

    let successes = TWO_INSTANCES.lock().unwrap().clone();
    let mut firsts: HashMap<u64, Vec<u64>> = HashMap::new();
    for (account, seq) in successes {
        let seen = firsts.entry(account).or_default();
        if !seen.contains(&seq) {
            seen.push(seq);
        }
    }
    for account in 0..10 {
        assert_eq!(
            firsts[&account],
            (0..12).collect::<Vec<u64>>(),
            "account {account}"
        );
    }
}
