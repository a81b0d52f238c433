//! The holds and one level's view of them, together: counts, releases, scans, dead-held
//! records and their resolutions.

use super::*;
use crate::headers::{names, Headers};
use crate::metrics::KeyHoldHandles;

fn record(partition: u32, key: &str) -> Record {
    Record {
        partition,
        offset: 0,
        timestamp_ms: None,
        key: Some(bytes::Bytes::copy_from_slice(key.as_bytes())),
        payload: None,
        headers: Headers::new(),
    }
}

#[test]
fn a_key_is_held_from_its_first_retry_until_its_last_follower_concluded() {
    let holds = KeyHolds::default();
    let k = holds.key_of(&record(0, "k")).unwrap();
    let other = holds.key_of(&record(0, "other")).unwrap();
    assert_eq!(holds.hold_back(0, k), None, "nothing failed yet");
    // k's record at offset 10 fails on the main topic and goes to level 1.
    holds.concluded(0, k, Stage::Main, Conclusion::Retried, 10);
    assert_eq!(
        holds.hold_back(0, k),
        Some(10),
        "the next record of k is held back"
    );
    assert_eq!(holds.hold_back(0, k), Some(10));
    assert_eq!(holds.hold_back(0, other), None, "another key flows");
    assert_eq!(
        holds.hold_back(1, k),
        None,
        "the same key in another partition flows"
    );
    assert!(!holds.is_free(0, k), "followers wait while the head is out");
    assert_eq!(holds.counts(), (1, 2));
    // The head fails on level 1 and goes to level 2: still out.
    holds.concluded(0, k, Stage::Retry, Conclusion::Retried, 10);
    assert!(!holds.is_free(0, k));
    // It succeeds on level 2: the followers may go, and a main record still waits behind them.
    holds.concluded(0, k, Stage::Retry, Conclusion::Done, 10);
    assert!(holds.is_free(0, k));
    assert_eq!(holds.hold_back(0, k), Some(10), "followers are still waiting");
    // The first follower fails: it is the key's head now.
    holds.concluded(0, k, Stage::Held, Conclusion::Retried, 11);
    assert!(!holds.is_free(0, k));
    holds.concluded(0, k, Stage::Retry, Conclusion::Done, 11);
    holds.concluded(0, k, Stage::Held, Conclusion::Done, 12);
    holds.concluded(0, k, Stage::Held, Conclusion::Done, 13);
    assert_eq!(holds.counts(), (0, 0), "the hold is gone");
    assert_eq!(holds.hold_back(0, k), None);
}

#[tokio::test]
async fn a_release_wakes_the_held_level_once() {
    let holds = std::sync::Arc::new(KeyHolds::default());
    let mut order = KeyOrder::new(holds.clone(), Stage::Held, 1);
    let r = record(3, "k");
    assert!(!order.may_start(&r), "partition 3's holds are not counted yet");
    KeyOrder::new(holds.clone(), Stage::Main, 1)
        .assigned(&[3])
        .await
        .unwrap();
    assert!(
        order.releases.has_changed().unwrap(),
        "the count wakes the held level"
    );
    assert!(order.may_start(&r));
    let k = holds.key_of(&r).unwrap();
    holds.concluded(3, k, Stage::Main, Conclusion::Retried, 1);
    assert!(!order.may_start(&r));
    assert!(!order.releases.has_changed().unwrap());
    holds.concluded(3, k, Stage::Retry, Conclusion::Done, 1);
    assert!(order.releases.has_changed().unwrap());
    assert!(order.may_start(&r));
    assert!(!order.releases.has_changed().unwrap(), "seen");
}

#[tokio::test]
async fn a_look_along_waiting_records_never_lets_a_later_record_of_a_key_overtake() {
    let holds = std::sync::Arc::new(KeyHolds::default());
    holds.count(vec![0]).await.unwrap();
    let mut held = KeyOrder::new(holds.clone(), Stage::Held, 1);
    let (first, other, second) = (record(0, "k"), record(0, "other"), record(0, "k"));
    let k = holds.key_of(&first).unwrap();
    holds.concluded(0, k, Stage::Main, Conclusion::Retried, 1);
    held.begin_scan();
    assert!(!held.may_start_in_scan(&first), "k's head is out");
    // The head concludes on the retry level's task while this look goes on.
    holds.concluded(0, k, Stage::Retry, Conclusion::Done, 1);
    assert!(held.may_start_in_scan(&other));
    assert!(
        !held.may_start_in_scan(&second),
        "k's first waiting record was passed over: its second must not start before it"
    );
    held.begin_scan();
    assert!(
        held.may_start_in_scan(&first),
        "the next look starts k's first record"
    );
}

fn held_record(partition: u32, offset: u64, key: &str, headers: &[(&'static str, &'static str)]) -> Record {
    Record {
        offset,
        headers: headers.iter().copied().collect(),
        ..record(partition, key)
    }
}

#[tokio::test]
async fn a_dead_held_head_holds_its_key_until_an_operator_resolves_it() {
    let holds = std::sync::Arc::new(KeyHolds::default());
    holds.count(vec![0]).await.unwrap();
    let main = KeyOrder::new(holds.clone(), Stage::Main, 1);
    let mut held = KeyOrder::new(holds.clone(), Stage::Held, 1);
    let k = holds.key_of(&record(0, "k")).unwrap();
    // k's record at main offset 7 fails for the last time: it goes to the held topic, dead.
    holds.concluded(0, k, Stage::Main, Conclusion::DeadHeld, 7);
    assert_eq!(holds.dead(), 1);
    assert_eq!(
        main.begin(&record(0, "k")),
        Some(Begin::HoldBack(7)),
        "later records wait"
    );
    let follower = held_record(0, 40, "k", &[]);
    let dead = held_record(
        0,
        41,
        "k",
        &[(names::DEAD_HELD, "dlq"), (names::ORIGINAL_OFFSET, "7")],
    );
    assert!(!held.may_start(&follower), "the key is held by its dead head");
    assert!(!held.may_start(&dead), "not resolved yet");
    assert_eq!(held.begin(&dead), None);
    // The operator replays it: the resolution starts at once, and then the dead head does,
    // ahead of the follower before it.
    let replay = held_record(
        0,
        42,
        "k",
        &[(names::RESOLVES, "41"), (names::RESOLUTION, "replay")],
    );
    held.begin_scan();
    assert!(!held.may_start_in_scan(&follower));
    assert!(
        held.may_start_in_scan(&replay),
        "a resolution is not of the key's line"
    );
    assert_eq!(
        held.begin(&replay),
        Some(Begin::Resolve {
            of: 41,
            how: Resolution::Replay
        })
    );
    held.resolve(0, 41, Resolution::Replay);
    held.begin_scan();
    assert!(!held.may_start_in_scan(&follower), "the key is still held");
    assert!(
        held.may_start_in_scan(&dead),
        "the resolved dead head goes past its follower"
    );
    assert_eq!(held.begin(&dead), Some(Begin::Replay));
    held.replaying(&dead);
    assert_eq!(holds.dead(), 0);
    assert!(
        !held.may_start(&follower),
        "its replay is under way: a head still"
    );
    // Its attempt fails while the breaker is open: put back with a replay's headers (no
    // longer dead-held), it starts again as the head it is.
    let replayed = held_record(
        0,
        41,
        "k",
        &[(names::REPLAYS, "1"), (names::ORIGINAL_OFFSET, "7")],
    );
    let _ = held.concluding(&replayed, false);
    assert!(held.may_start(&replayed), "the put-back replay starts again");
    assert_eq!(held.begin(&replayed), Some(Begin::Attempt));
    assert!(!held.may_start(&follower));
    // The replay succeeds: it concludes as a head, and the follower may go.
    let concluding = held.concluding(&replayed, true).unwrap();
    held.concluded(concluding, Conclusion::Done);
    assert!(held.may_start(&follower));
    assert_eq!(holds.counts(), (1, 1), "the follower still waits: counted");
}

/// A look reads the held topic's unacknowledged records every round while a partition stays
/// full, and the partition fetches the resolution in its turn later: a resolution read again
/// once its record started must not resolve (and so replay) it again.
#[tokio::test]
async fn a_resolution_read_again_after_its_record_started_resolves_nothing() {
    let dead = held_record(
        0,
        41,
        "k",
        &[(names::DEAD_HELD, "dlq"), (names::ORIGINAL_OFFSET, "7")],
    );
    let replay = held_record(
        0,
        42,
        "k",
        &[(names::RESOLVES, "41"), (names::RESOLUTION, "replay")],
    );
    let (on_topic, asked) = (
        vec![dead.clone(), replay.clone()],
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let asks = asked.clone();
    let holds = std::sync::Arc::new(KeyHolds::new(
        KeyHoldHandles::default(),
        std::sync::Arc::new(move |_, only| {
            asks.lock().unwrap().push(only);
            let records = on_topic.clone();
            Box::pin(async move { Ok(vec![(Stage::Held, records)]) })
        }),
    ));
    holds.count(vec![0]).await.unwrap();
    let mut held = KeyOrder::new(holds.clone(), Stage::Held, 1);
    assert_eq!(holds.dead(), 1, "counted from the held topic");
    // The look (the held topic alone) finds the dead record resolved: it is put in and starts.
    let resolved = holds.read_resolutions(vec![0]).await.unwrap();
    assert_eq!(resolved.iter().map(|r| r.offset).collect::<Vec<_>>(), [41]);
    assert_eq!(*asked.lock().unwrap(), [None, Some(Stage::Held)]);
    assert_eq!(held.begin(&dead), Some(Begin::Replay));
    held.replaying(&dead);
    // The next look, and the resolution fetched in its turn, resolve nothing more.
    assert!(holds.read_resolutions(vec![0]).await.unwrap().is_empty());
    held.resolve(0, 41, Resolution::Replay);
    assert_eq!(holds.resolution(0, 41), None, "no entry left behind");
    assert_eq!(holds.dead(), 0);
    // Forgotten with its partition: a new count starts from the topic again.
    holds.forget(&[0]);
    holds.count(vec![0]).await.unwrap();
    assert_eq!(holds.resolution(0, 41), Some(Resolution::Replay));
}

#[tokio::test]
async fn a_discarded_dead_head_releases_its_key_and_a_count_restores_dead_heads() {
    let holds = std::sync::Arc::new(KeyHolds::new(
        KeyHoldHandles::default(),
        std::sync::Arc::new(|_, _| {
            Box::pin(async {
                let dead = held_record(
                    2,
                    5,
                    "k",
                    &[(names::DEAD_HELD, "parked"), (names::ORIGINAL_OFFSET, "3")],
                );
                let follower = held_record(2, 6, "k", &[]);
                let discard = held_record(
                    2,
                    9,
                    "k",
                    &[(names::RESOLVES, "5"), (names::RESOLUTION, "discard")],
                );
                Ok(vec![(Stage::Held, vec![dead, follower, discard])])
            })
        }),
    ));
    holds.count(vec![2]).await.unwrap();
    assert_eq!(
        (holds.counts(), holds.dead()),
        ((1, 1), 1),
        "the dead head and its follower, counted"
    );
    let mut held = KeyOrder::new(holds.clone(), Stage::Held, 1);
    let dead = held_record(
        2,
        5,
        "k",
        &[(names::DEAD_HELD, "parked"), (names::ORIGINAL_OFFSET, "3")],
    );
    let follower = held_record(2, 6, "k", &[]);
    assert!(!held.may_start(&follower));
    assert_eq!(
        held.begin(&dead),
        Some(Begin::Discard(TopicRole::Parked)),
        "the resolution counted with it: discard to the parking queue it stands for"
    );
    held.discarding(&dead);
    assert_eq!(holds.dead(), 0);
    assert!(held.may_start(&follower), "the key goes on");
    holds.forget(&[2]);
    assert_eq!((holds.counts(), holds.dead()), ((0, 0), 0));
}

#[tokio::test]
async fn records_without_a_key_are_never_held() {
    let holds = std::sync::Arc::new(KeyHolds::default());
    holds.count(vec![0]).await.unwrap();
    let mut keyless = record(0, "");
    keyless.key = None;
    let main = KeyOrder::new(holds.clone(), Stage::Main, 1);
    let mut held = KeyOrder::new(holds, Stage::Held, 1);
    assert_eq!(main.hold_back(&keyless), None);
    assert!(held.may_start(&keyless));
}

#[tokio::test]
async fn a_revoked_partition_forgets_its_holds_until_counted_again() {
    let holds = std::sync::Arc::new(KeyHolds::default());
    holds.count(vec![0, 1]).await.unwrap();
    let (a, b) = (record(0, "a"), record(1, "b"));
    let (ka, kb) = (holds.key_of(&a).unwrap(), holds.key_of(&b).unwrap());
    holds.concluded(0, ka, Stage::Main, Conclusion::Retried, 5);
    holds.concluded(1, kb, Stage::Main, Conclusion::Retried, 6);
    assert_eq!(holds.hold_back(0, ka), Some(5));
    assert_eq!(holds.counts(), (2, 1));
    holds.forget(&[0]);
    assert_eq!(holds.counts(), (1, 0), "partition 0's hold and follower are gone");
    assert!(!holds.is_counted(0) && holds.is_counted(1));
    let retry = KeyOrder::new(holds.clone(), Stage::Retry, 1);
    assert!(
        !retry.may_start_now(&a),
        "partition 0's retries wait for the next count"
    );
    assert!(retry.may_start_now(&b));
}
