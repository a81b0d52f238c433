//! `ordering = "key"`, as one case of the suite for every backend that keeps a partition's
//! levels together (`Backend::keeps_partitions_together`): per key, the first successes come
//! in production order whatever fails (once, twice, always: the dead letter), on a topic of
//! three partitions with four keys each, through a second instance joining while keys are
//! held and the first leaving (two rebalances; the last record of every key is published
//! after it left); keys that never fail are not held; held
//! records carry `rk-held-at` and count no attempt they did not make. And
//! `on_dead_letter = "hold_key"`: a record's last failure holds its key, through a restart,
//! until an operator replays or discards it (`HoldSources::resolve`, what `retry-kafka held
//! replay|discard` writes).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::app::TopicNaming;
use retry_kafka::headers::names;
use retry_kafka::held_keys::{HeldKey, HoldSources, Resolution};
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{eventually, start, Harness};

/// The key-order cases, as one `#[tokio::test]` each: for the backends that run key-ordered
/// handlers (the others refuse them at start, which their own tests check).
#[macro_export]
macro_rules! key_order_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@cases $harness;
            each_keys_successes_follow_production_order_through_rebalances,
            a_dead_held_head_holds_its_key_through_a_restart_until_resolved,
        );
    };
}

const ACCOUNTS: u64 = 12;
const PER_ACCOUNT: u64 = 8;
/// Published before the second instance joins.
const FIRST_HALF: u64 = 4;

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "conf.ledger", key = "account")]
pub struct Posting {
    pub account: u64,
    pub seq: u64,
}

/// How often `(account, seq)` fails before it succeeds; `u32::MAX`: always (dead letter).
/// Accounts 1, 2 and 4 hold their keys for 3 s, on partitions 0, 2 and 1 (Kafka's partitioner
/// of "1", "2", "4"): whichever partitions the second instance takes, it takes held keys.
fn failures_of(account: u64, seq: u64) -> u32 {
    match (account, seq) {
        (0, 0) => 1,
        (1, 2) | (4, 1) => 2,
        (2, 0) => u32::MAX,
        (3, 4) | (3, 5) => 1,
        _ => 0,
    }
}

/// Accounts that never fail: 5 and up.
const FREE: u64 = 5;

/// One attempt: (account, seq, attempt number, `rk-held-at` present, when).
type Try = (u64, u64, u32, bool, Instant);

static TRIES: Mutex<Vec<Try>> = Mutex::new(Vec::new());
static SUCCESSES: Mutex<Vec<(u64, u64, Instant)>> = Mutex::new(Vec::new());

#[retry_handler(topic = "conf.ledger", group = "conf-ledger", retries = ["1s", "2s"], dlq, ordering = "key")]
async fn post_in_key_order(posting: Posting, ctx: Context) -> Result<(), HandlerError> {
    let now = Instant::now();
    let failed_before = {
        let mut tries = TRIES.lock().unwrap();
        let before = tries
            .iter()
            .filter(|t| (t.0, t.1) == (posting.account, posting.seq))
            .count() as u32;
        let held = ctx.headers().get_str(names::HELD_AT).is_some();
        tries.push((posting.account, posting.seq, ctx.attempt(), held, now));
        before
    };
    if failed_before < failures_of(posting.account, posting.seq) {
        return Err(HandlerError::transient(format!("{posting:?} fails")));
    }
    SUCCESSES
        .lock()
        .unwrap()
        .push((posting.account, posting.seq, now));
    Ok(())
}

fn distinct_successes() -> usize {
    let successes = SUCCESSES.lock().unwrap();
    successes
        .iter()
        .map(|s| (s.0, s.1))
        .collect::<BTreeSet<_>>()
        .len()
}

pub async fn each_keys_successes_follow_production_order_through_rebalances<H: Harness>(harness: &H) {
    harness.create_topic("conf.ledger", 3).await;
    let (first, first_running) = start(harness, "conf-ledger").await;
    let publish = |app: &App<H::Backend>, seqs: std::ops::Range<u64>| {
        let producer = app.producer();
        async move {
            for seq in seqs {
                for account in 0..ACCOUNTS {
                    producer.send(&Posting { account, seq }).await.expect("publish");
                }
            }
        }
    };
    publish(&first, 0..FIRST_HALF).await;
    // The keys that never fail in the first half: not held behind the others.
    let free_first_half = ((ACCOUNTS - FREE) * FIRST_HALF) as usize;
    eventually(Duration::from_secs(30), "the first half of the free keys", || {
        SUCCESSES.lock().unwrap().iter().filter(|s| s.0 >= FREE).count() >= free_first_half
    })
    .await;

    // A second instance joins while keys are held and retries wait: partitions move with them.
    let (second, second_running) = start(harness, "conf-ledger").await;
    publish(&second, FIRST_HALF..PER_ACCOUNT - 1).await;
    let published = (ACCOUNTS * (PER_ACCOUNT - 1) - 1) as usize;
    eventually(
        Duration::from_secs(60),
        "every record published but the dead letter",
        || distinct_successes() == published,
    )
    .await;
    // The first leaves: its partitions, with their holds, move to the second, which takes the
    // last records of every key.
    first_running.shutdown().await.expect("first instance stops");
    let before = second
        .stats()
        .handler("post_in_key_order")
        .expect("stats")
        .succeeded;
    publish(&second, PER_ACCOUNT - 1..PER_ACCOUNT).await;
    let all = (ACCOUNTS * PER_ACCOUNT - 1) as usize;
    eventually(
        Duration::from_secs(60),
        "every record but the dead letter",
        || distinct_successes() == all,
    )
    .await;
    let after = second
        .stats()
        .handler("post_in_key_order")
        .expect("stats")
        .succeeded;
    assert!(
        after >= before + ACCOUNTS,
        "the second instance took the last records: {before} -> {after}"
    );
    let dead = eventually_records(harness, "conf.ledger.conf-ledger.dlq", 1).await;
    second_running.shutdown().await.expect("second instance stops");

    let tries = TRIES.lock().unwrap().clone();
    let successes = SUCCESSES.lock().unwrap().clone();
    // Per key, each record's first success, in the order they happened.
    let mut firsts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(account, seq, _) in &successes {
        let seen = firsts.entry(account).or_default();
        if !seen.contains(&seq) {
            seen.push(seq);
        }
    }
    for account in 0..ACCOUNTS {
        let want: Vec<u64> = (0..PER_ACCOUNT)
            .filter(|&seq| failures_of(account, seq) != u32::MAX)
            .collect();
        assert_eq!(
            firsts.get(&account),
            Some(&want),
            "account {account}: first successes in production order"
        );
    }

    // The dead letter: account 2's first record, after its three attempts (twice at most, if
    // a rebalance repeated its last attempt: at least once).
    assert!(dead.len() <= 2, "{} dead letters", dead.len());
    for letter in &dead {
        let payload = letter.payload.as_deref().expect("a payload");
        let posting: Posting = serde_json::from_slice(payload).expect("a posting");
        assert_eq!(posting, Posting { account: 2, seq: 0 });
        assert_eq!(letter.headers.get_str(names::ATTEMPTS), Some("3"));
    }

    // Free keys were not held: each of their records succeeded at its first attempt, and the
    // first half of them well before the 3 s holds of accounts 1, 2 and 4 ended (2 s: room for
    // a loaded machine, where the whole binary runs at once).
    let first_failure = tries.iter().map(|t| t.4).min().expect("attempts");
    for &(account, seq, at) in successes.iter().filter(|s| s.0 >= FREE && s.1 < FIRST_HALF) {
        assert!(
            at < first_failure + Duration::from_secs(2),
            "({account}, {seq}) succeeded {:?} after the first attempt: held behind another key",
            at - first_failure
        );
    }
    for t in tries.iter().filter(|t| t.0 >= FREE) {
        assert_eq!(t.2, 1, "({}, {}) was attempted once, unheld", t.0, t.1);
    }
    let held: Vec<(u64, u64)> = tries.iter().filter(|t| t.3).map(|t| (t.0, t.1)).collect();
    assert!(
        held.iter().all(|&(account, _)| account < FREE),
        "only failing keys were held: {held:?}"
    );
    // A key's records published behind its failing one in the first half were held (they
    // waited on the held topic, attempted first with rk-held-at), and no attempt was counted
    // while they waited: each record's attempts are 1, 2, ... in turn.
    for (account, seq) in [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 3),
        (2, 1),
        (2, 2),
        (2, 3),
        (4, 2),
        (4, 3),
    ] {
        let first_try = tries
            .iter()
            .find(|t| (t.0, t.1) == (account, seq))
            .expect("attempted");
        assert!(first_try.3, "({account}, {seq}) was held back");
        assert_eq!(first_try.2, 1, "({account}, {seq}) counted no attempt while held");
    }
    let mut per_record: HashMap<(u64, u64), Vec<u32>> = HashMap::new();
    for t in &tries {
        per_record.entry((t.0, t.1)).or_default().push(t.2);
    }
    for ((account, seq), attempts) in per_record {
        // A repeat after a rebalance (at least once) may start a record's count again.
        let mut expected = 1;
        for attempt in attempts {
            assert!(
                attempt == expected || attempt == 1,
                "({account}, {seq}): attempt {attempt} where {expected} was next"
            );
            expected = attempt + 1;
        }
    }
}

/// Waits until `topic` holds at least `count` records, and returns them.
async fn eventually_records<H: Harness>(
    harness: &H,
    topic: &str,
    count: usize,
) -> Vec<retry_kafka::backend::Record> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = harness.records(topic).await;
        if records.len() >= count {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {count} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "conf.vault", key = "account")]
pub struct Entry {
    pub account: u64,
    pub seq: u64,
}

/// Account 1's first entry fails until this is set; account 2's always fails.
static VAULT_FIXED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// (account, seq, `rk-replays`) of every attempt.
static VAULT_TRIES: Mutex<Vec<(u64, u64, Option<String>)>> = Mutex::new(Vec::new());
static VAULT_SUCCESSES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

#[retry_handler(topic = "conf.vault", group = "conf-vault", retries = ["1s"], dlq, ordering = "key", on_dead_letter = "hold_key")]
async fn enter_until_resolved(entry: Entry, ctx: Context) -> Result<(), HandlerError> {
    let replays = ctx.headers().get_str(names::REPLAYS).map(str::to_owned);
    VAULT_TRIES
        .lock()
        .unwrap()
        .push((entry.account, entry.seq, replays));
    let fails = match (entry.account, entry.seq) {
        (1, 0) => !VAULT_FIXED.load(std::sync::atomic::Ordering::SeqCst),
        (2, 0) => true,
        _ => false,
    };
    if fails {
        return Err(HandlerError::permanent(format!("{entry:?} is refused")));
    }
    VAULT_SUCCESSES.lock().unwrap().push((entry.account, entry.seq));
    Ok(())
}

const VAULT_ACCOUNTS: u64 = 6;
const VAULT_ENTRIES: u64 = 4;

fn vault_successes(account: u64) -> Vec<u64> {
    let successes = VAULT_SUCCESSES.lock().unwrap();
    let mut seqs = Vec::new();
    for &(a, seq) in successes.iter() {
        if a == account && !seqs.contains(&seq) {
            seqs.push(seq);
        }
    }
    seqs
}

pub async fn a_dead_held_head_holds_its_key_through_a_restart_until_resolved<H: Harness>(harness: &H) {
    harness.create_topic("conf.vault", 3).await;
    let (app, running) = start(harness, "conf-vault").await;
    let producer = app.producer();
    for seq in 0..VAULT_ENTRIES {
        for account in 0..VAULT_ACCOUNTS {
            producer.send(&Entry { account, seq }).await.expect("publish");
        }
    }
    let backend = harness.backend();
    let sources = HoldSources::find(&backend, "conf.vault", "conf-vault", &TopicNaming::default())
        .await
        .expect("look up the held topic")
        .expect("a key-ordered handler has a held topic");
    // Accounts 1 and 2 are held by their dead-held first entries, their later entries waiting
    // behind them; the other accounts flow.
    eventually(
        Duration::from_secs(30),
        "the free accounts done, 1 and 2 held by their dead heads",
        || {
            [0, 3, 4, 5]
                .iter()
                .all(|&a| vault_successes(a).len() == VAULT_ENTRIES as usize)
        },
    )
    .await;
    let held = held_keys_until(
        &sources,
        &backend,
        Duration::from_secs(30),
        "two dead heads and their followers",
        |held| {
            let dead: usize = held.iter().map(|k| k.dead.len()).sum();
            let followers: u64 = held.iter().map(|k| k.followers).sum();
            dead == 2 && followers == 2 * (VAULT_ENTRIES - 1)
        },
    )
    .await;
    // A restart: the holds are counted again from the held topic.
    running.shutdown().await.expect("the instance stops");
    for account in [1, 2] {
        assert_eq!(
            vault_successes(account),
            Vec::<u64>::new(),
            "account {account} is held"
        );
    }
    let (_app, running) = start(harness, "conf-vault").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for account in [1, 2] {
        assert_eq!(
            vault_successes(account),
            Vec::<u64>::new(),
            "account {account} is still held after the restart"
        );
    }
    assert!(
        harness.records("conf.vault.conf-vault.dlq").await.is_empty(),
        "a dead-held record waits on the held topic, not in the DLQ"
    );

    // The operator: account 1 fixed and replayed, account 2 discarded.
    VAULT_FIXED.store(true, std::sync::atomic::Ordering::SeqCst);
    for key in &held {
        let how = match &key.key[..] {
            b"1" => Resolution::Replay,
            b"2" => Resolution::Discard,
            other => panic!("held key {other:?}"),
        };
        assert_eq!(key.dead[0].error_kind.as_deref(), Some("permanent"));
        sources
            .resolve(&backend, key.partition, &key.key, key.dead[0].offset, how)
            .await
            .expect("write the resolution");
    }
    eventually(Duration::from_secs(30), "accounts 1 and 2 resolved", || {
        vault_successes(1).len() == VAULT_ENTRIES as usize
            && vault_successes(2).len() == VAULT_ENTRIES as usize - 1
    })
    .await;
    let dead = eventually_records(harness, "conf.vault.conf-vault.dlq", 1).await;
    running.shutdown().await.expect("the instance stops");

    assert_eq!(
        vault_successes(1),
        [0, 1, 2, 3],
        "the replayed head first, then the rest in order"
    );
    assert_eq!(
        vault_successes(2),
        [1, 2, 3],
        "after the discard, the rest in order"
    );
    let tries = VAULT_TRIES.lock().unwrap().clone();
    let replay = tries
        .iter()
        .filter(|t| (t.0, t.1) == (1, 0))
        .nth(1)
        .expect("replayed");
    assert_eq!(
        replay.2.as_deref(),
        Some("1"),
        "the replay counts as one: rk-replays"
    );
    assert!(
        tries.iter().filter(|t| (t.0, t.1) == (2, 0)).count() <= 2,
        "the discarded record is never attempted again: {tries:?}"
    );
    assert!(dead.len() <= 2, "{} dead letters", dead.len());
    let letter = &dead[0];
    assert_eq!(
        letter.payload.as_deref(),
        Some(&br#"{"account":2,"seq":0}"#[..]),
        "byte for byte"
    );
    assert_eq!(letter.key.as_deref(), Some(&b"2"[..]));
    assert_eq!(letter.headers.get_str(names::ERROR_KIND), Some("permanent"));
    assert_eq!(letter.headers.get_str(names::DEAD_HELD), None);
    held_keys_until(
        &sources,
        &backend,
        Duration::from_secs(10),
        "nothing held once resolved",
        <[HeldKey]>::is_empty,
    )
    .await;
}

/// Reads the held keys (as the tool does) until `done` says they are as expected, within
/// `within`; fails naming `what` and showing the last reading.
async fn held_keys_until<B: retry_kafka::backend::Backend>(
    sources: &HoldSources,
    backend: &B,
    within: Duration,
    what: &str,
    done: impl Fn(&[HeldKey]) -> bool,
) -> Vec<HeldKey> {
    let deadline = Instant::now() + within;
    loop {
        let held = sources.held_keys(backend).await.expect("held keys");
        if done(&held) {
            return held;
        }
        assert!(Instant::now() < deadline, "{what}: {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
