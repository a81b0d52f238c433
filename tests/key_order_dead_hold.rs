//! `ordering = "key", on_dead_letter = "hold_key"` in virtual time (`TestApp`, the in-process
//! broker): a record that fails for the last time holds its key's later records, unattempted,
//! until an operator resolves it with [`HoldSources::resolve`] (what `retry-kafka held replay`
//! and `held discard` write): a replay attempts it before them, a discard sends it to the dead
//! letters byte for byte; other keys flow meanwhile. One key has more records waiting than a
//! held partition keeps in memory (128), so its resolution is read past a full partition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use retry_kafka::app::TopicNaming;
use retry_kafka::headers::names;
use retry_kafka::held_keys::{HoldSources, Resolution};
use retry_kafka::prelude::*;
use retry_kafka::testing::TestApp;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "kd.postings", key = "account")]
struct Posting {
    account: u64,
    seq: u64,
}

/// Account 1's first posting fails until this is set (the fix an operator deploys); account
/// 2's first posting always fails (it is discarded).
static FIXED: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Seen {
    /// (account, seq, rk-replays) of every attempt, in order.
    tries: Vec<(u64, u64, Option<String>)>,
    successes: Vec<(u64, u64)>,
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

#[retry_handler(group = "kd-ledger", retries = ["1s"], dlq, ordering = "key", on_dead_letter = "hold_key")]
async fn post(posting: Posting, ctx: Context) -> Result<(), HandlerError> {
    let mut seen = SEEN.lock().unwrap();
    let seen = seen.get_or_insert_with(Seen::default);
    let replays = ctx.headers().get_str(names::REPLAYS).map(str::to_owned);
    seen.tries.push((posting.account, posting.seq, replays));
    let fails = match (posting.account, posting.seq) {
        (1, 0) => !FIXED.load(Ordering::SeqCst),
        (2, 0) => true,
        _ => false,
    };
    if fails {
        return Err(HandlerError::permanent(format!("{posting:?} cannot be posted")));
    }
    seen.successes.push((posting.account, posting.seq));
    Ok(())
}

/// Account 1 has more postings than a held partition keeps waiting in memory.
fn postings_of(account: u64) -> u64 {
    if account == 1 {
        300
    } else {
        5
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_held_head_holds_its_key_until_replayed_or_discarded() {
    let app = TestApp::start_only(|spec| spec.group() == "kd-ledger").await;
    for seq in 0..300 {
        for account in 0..4 {
            if seq < postings_of(account) {
                app.publish(&Posting { account, seq }).await;
            }
        }
    }
    // Not `settle`: the held topic stays unacknowledged while records hold their keys.
    app.advance(Duration::from_secs(30)).await;

    let broker = app.broker().clone();
    let sources = HoldSources::find(&broker, "kd.postings", "kd-ledger", &TopicNaming::default())
        .await
        .unwrap()
        .expect("a key-ordered handler has a held topic");
    let held = sources.held_keys(&broker).await.unwrap();
    {
        let seen = SEEN.lock().unwrap();
        let seen = seen.as_ref().unwrap();
        for account in [1, 2] {
            let tries: Vec<u64> = seen
                .tries
                .iter()
                .filter(|t| t.0 == account)
                .map(|t| t.1)
                .collect();
            assert_eq!(
                tries,
                [0],
                "account {account}: only its first posting was attempted (a permanent failure: once)"
            );
        }
        for account in [0, 3] {
            let done: Vec<u64> = seen
                .successes
                .iter()
                .filter(|s| s.0 == account)
                .map(|s| s.1)
                .collect();
            assert_eq!(
                done,
                (0..5).collect::<Vec<_>>(),
                "account {account} flows, in order"
            );
        }
    }
    assert!(
        app.dead_letters("post").is_empty(),
        "a dead-held record waits on the held topic, not in the DLQ"
    );
    assert_eq!(held.len(), 2, "accounts 1 and 2 are held: {held:?}");
    let mut heads = HashMap::new();
    for key in &held {
        assert!(key.heads.is_empty(), "no record on a retry level: {key:?}");
        assert_eq!(key.dead.len(), 1, "one dead head: {key:?}");
        let dead = &key.dead[0];
        assert_eq!(dead.queue, retry_kafka::backend::TopicRole::DeadLetter);
        assert_eq!(dead.error_kind.as_deref(), Some("permanent"));
        assert_eq!(dead.resolution, None);
        let account: u64 = std::str::from_utf8(&key.key).unwrap().parse().unwrap();
        assert_eq!(
            key.followers,
            postings_of(account) - 1,
            "account {account}'s later postings wait"
        );
        heads.insert(account, (key.partition, key.key.clone(), dead.offset));
    }

    // Resolved: account 1 fixed and replayed, account 2 discarded.
    FIXED.store(true, Ordering::SeqCst);
    let (partition, key, offset) = heads[&1].clone();
    sources
        .resolve(&broker, partition, &key, offset, Resolution::Replay)
        .await
        .unwrap();
    let (partition, key, offset) = heads[&2].clone();
    sources
        .resolve(&broker, partition, &key, offset, Resolution::Discard)
        .await
        .unwrap();
    app.advance(Duration::from_secs(30)).await;

    let seen = SEEN.lock().unwrap().take().unwrap();
    let account_1: Vec<u64> = seen.successes.iter().filter(|s| s.0 == 1).map(|s| s.1).collect();
    assert_eq!(
        account_1,
        (0..300).collect::<Vec<_>>(),
        "the replayed head first, then the rest in order"
    );
    let replay = seen
        .tries
        .iter()
        .filter(|t| (t.0, t.1) == (1, 0))
        .nth(1)
        .expect("replayed");
    assert_eq!(
        replay.2.as_deref(),
        Some("1"),
        "the replay counts as one (rk-replays)"
    );
    let account_2: Vec<u64> = seen.successes.iter().filter(|s| s.0 == 2).map(|s| s.1).collect();
    assert_eq!(
        account_2,
        [1, 2, 3, 4],
        "after the discard, the later postings in order"
    );
    assert_eq!(
        seen.tries.iter().filter(|t| (t.0, t.1) == (2, 0)).count(),
        1,
        "a discarded record is not attempted again"
    );
    let dead = app.dead_letters("post");
    assert_eq!(dead.len(), 1, "the discarded record, in the DLQ");
    assert_eq!(
        dead[0].record.payload.as_deref(),
        Some(&br#"{"account":2,"seq":0}"#[..])
    );
    assert_eq!(dead[0].record.key.as_deref(), Some(&b"2"[..]));
    assert_eq!(dead[0].record.headers.get_str(names::DEAD_HELD), None);
    assert_eq!(
        dead[0].context.error_message,
        "Posting { account: 2, seq: 0 } cannot be posted"
    );
    assert!(
        sources.held_keys(&broker).await.unwrap().is_empty(),
        "nothing held any more"
    );
    app.settle().await;
    app.shutdown().await;
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(topic = "kd.late", key = "account")]
struct Transfer {
    account: u64,
    seq: u64,
}

/// Account 1's first transfer fails once (a retry), then for good until this is set.
static LATE_FIXED: AtomicBool = AtomicBool::new(false);
static LATE_DONE: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

#[retry_handler(group = "kd-late", retries = ["1s"], dlq, ordering = "key", on_dead_letter = "hold_key")]
async fn transfer(transfer: Transfer, ctx: Context) -> Result<(), HandlerError> {
    if (transfer.account, transfer.seq) == (1, 0) && !LATE_FIXED.load(Ordering::SeqCst) {
        return Err(match ctx.attempt() {
            1 => HandlerError::transient("the bank is busy"),
            _ => HandlerError::permanent("the account is closed"),
        });
    }
    LATE_DONE.lock().unwrap().push((transfer.account, transfer.seq));
    Ok(())
}

/// The record that holds a key for good can be behind more waiting records of its key than a
/// held partition keeps in memory: account 1's first transfer fails on the main topic, 299
/// more wait on the held topic while it waits on the retry level (128 kept, the partition
/// full), and then it fails for good: it is written after them, where the full partition never
/// fetches. Its resolution, read past the partition, brings it in.
#[tokio::test(start_paused = true)]
async fn a_dead_held_head_behind_a_full_held_partition_is_resolved_too() {
    let app = TestApp::start_only(|spec| spec.group() == "kd-late").await;
    for seq in 0..300 {
        for account in 0..3 {
            if account == 1 || seq < 5 {
                app.publish(&Transfer { account, seq }).await;
            }
        }
    }
    app.advance(Duration::from_secs(30)).await;
    let broker = app.broker().clone();
    let sources = HoldSources::find(&broker, "kd.late", "kd-late", &TopicNaming::default())
        .await
        .unwrap()
        .unwrap();
    let held = sources.held_keys(&broker).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].followers, held[0].dead.len()), (299, 1), "{held:?}");
    let dead = held[0].dead[0].clone();
    assert_eq!(dead.error_message.as_deref(), Some("the account is closed"));
    assert!(
        LATE_DONE.lock().unwrap().iter().all(|d| d.0 != 1),
        "account 1 is held"
    );

    LATE_FIXED.store(true, Ordering::SeqCst);
    sources
        .resolve(
            &broker,
            held[0].partition,
            &held[0].key,
            dead.offset,
            Resolution::Replay,
        )
        .await
        .unwrap();
    app.advance(Duration::from_secs(30)).await;
    let done: Vec<u64> = LATE_DONE
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.0 == 1)
        .map(|d| d.1)
        .collect();
    assert_eq!(
        done,
        (0..300).collect::<Vec<_>>(),
        "the replayed head first, then the rest in order"
    );
    // Everything acknowledged, the record put in past the full partition too (when the
    // partition fetched it again).
    assert_eq!(app.backlog(), Vec::<(String, u64)>::new());
    assert!(sources.held_keys(&broker).await.unwrap().is_empty());
    app.shutdown().await;
}
