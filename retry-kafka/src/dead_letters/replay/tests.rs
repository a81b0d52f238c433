//! The replay's rules: the loop guard, the resumable prefix, batches.

use super::*;
use crate::backend::memory::InMemory;
use crate::backend::Record;
use crate::dead_letters::read;
use crate::headers::Headers;

const QUEUE: &str = "orders.billing.dlq";

async fn queue_of(broker: &InMemory, count: u64) -> Vec<DeadLetter> {
    broker.create_topic(QUEUE, 1);
    for n in 0..count {
        let record = OutboundRecord {
            partition: Some(0),
            key: Some(n.to_string().into()),
            payload: Some(format!("entry {n}").into()),
            headers: Headers::new(),
        };
        broker.send(&queue(), record).await.unwrap();
    }
    read(broker, &queue()).await.unwrap()
}

fn queue() -> Topic {
    Topic::new(QUEUE, TopicRole::DeadLetter)
}

fn checkpoint_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("rk-replay-{}-{name}.json", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A run killed while a batch of 4 was in flight, 2 of it landed (not the first 2: a batch
/// is sent all at once): the resumed run finds those 2 in the target (after the end
/// offsets the batch recorded) and sends the other 2 only.
#[tokio::test]
async fn a_resumed_replay_sends_only_what_the_interrupted_batch_did_not() {
    let broker = InMemory::new();
    let entries = queue_of(&broker, 6).await;
    broker.create_topic("orders", 1);
    let path = checkpoint_file("resume");
    let replay = Replay::new(&broker, queue(), Topic::main("orders")).checkpoint(&path);
    // What the killed run left: entry 0 sent and settled, a batch of 1..=4 under way, 1
    // and 3 landed.
    let mut state = Checkpoint {
        replay: replay.describe(),
        sent: 1,
        ..Checkpoint::default()
    };
    state.advance(0, 1);
    broker
        .send(&Topic::main("orders"), replay.outbound(&entries[0]).unwrap())
        .await
        .unwrap();
    state.pending = Some(Pending {
        target_ends: broker.end_offsets("orders"),
        entries: (1..=4).map(|o| (0, o)).collect(),
    });
    for entry in [&entries[1], &entries[3]] {
        let record = replay.outbound(entry).unwrap();
        broker.send(&Topic::main("orders"), record).await.unwrap();
    }
    replay.save(&state).unwrap();

    let mut seen = Vec::new();
    let report = replay
        .batch(2)
        .run(&Filter::default(), |p| seen.push((p.read, p.sent)))
        .await
        .unwrap();
    assert_eq!((report.sent, report.already_sent), (3, 3));
    assert_eq!(
        seen.last(),
        Some(&(5, 3)),
        "read from entry 1 on, the settled prefix skipped"
    );
    let mut sent: Vec<String> = broker
        .records("orders")
        .iter()
        .map(|r| r.headers.get_str(names::REPLAY_OF).unwrap().to_owned())
        .collect();
    assert_eq!(sent[..3], [0, 1, 3].map(|o| format!("{QUEUE}/0/{o}")));
    sent.sort();
    let expected: Vec<String> = (0..6).map(|o| format!("{QUEUE}/0/{o}")).collect();
    assert_eq!(sent, expected, "each entry once");
    assert!(!path.exists(), "a finished replay removes its checkpoint");
}

#[tokio::test]
async fn a_checkpoint_of_another_selection_is_refused() {
    let broker = InMemory::new();
    queue_of(&broker, 2).await;
    let path = checkpoint_file("other");
    let first = Replay::new(&broker, queue(), Topic::main("orders"))
        .selection("kind=[\"transient\"]")
        .checkpoint(&path);
    first
        .save(&Checkpoint {
            replay: first.describe(),
            ..Checkpoint::default()
        })
        .unwrap();
    let second = Replay::new(&broker, queue(), Topic::main("orders"))
        .selection("kind=[\"permanent\"]")
        .checkpoint(&path);
    let error = second.run(&Filter::default(), |_| {}).await.unwrap_err();
    assert!(matches!(error, ReplayError::OtherReplay { .. }), "{error}");
    assert!(broker.records("orders").is_empty(), "nothing sent");
    std::fs::remove_file(&path).unwrap();
}

/// A dead letter replayed three times, each replay failing again (parked, as the runtime
/// does: a failure context written over the replayed record's headers), is held back the
/// fourth time, though it never gets an `rk-replays` of its own; so are the parked copies.
#[tokio::test]
async fn the_loop_guard_counts_a_dead_letters_replays_in_the_parking_queue() {
    let broker = InMemory::new();
    queue_of(&broker, 2).await;
    broker.create_topic("orders", 1);
    broker.create_topic("orders.billing.parked", 1);
    let parking = Topic::new("orders.billing.parked", TopicRole::Parked);
    let replay = Replay::new(&broker, queue(), Topic::main("orders")).parking(parking.clone());
    let first = Filter::default().position(0, 0);
    for round in 1..=4u64 {
        let report = replay.run(&first, |_| {}).await.unwrap();
        if round == 4 {
            assert_eq!(
                (report.sent, report.guarded, report.held_back),
                (0, 1, vec!["0:0".to_owned()])
            );
            break;
        }
        assert_eq!(report.sent, 1, "replay {round} sent");
        let replayed = broker.records("orders").pop().unwrap();
        let mut headers = replayed.headers.clone();
        crate::headers::FailureContext {
            original_topic: "orders".into(),
            original_partition: 0,
            original_offset: replayed.offset,
            original_timestamp_ms: None,
            group: "billing".into(),
            attempts: 1,
            due_at_ms: None,
            first_failure_at_ms: 1,
            last_failure_at_ms: 2,
            error_kind: crate::failure::ErrorKind::Permanent,
            error_message: "still broken".into(),
            replays: Some(1),
        }
        .write_to(&mut headers);
        let parked = OutboundRecord {
            partition: Some(0),
            headers,
            ..Default::default()
        };
        broker.send(&parking, parked).await.unwrap();
    }
    assert_eq!(
        actions(&replay).await,
        [Action::Guarded, Action::Send],
        "the other entry is its own line"
    );
    let copies = read(&broker, &parking).await.unwrap();
    assert!(copies
        .iter()
        .all(|c| c.record.headers.get_str(names::REPLAY_ORIGIN) == Some("orders.billing.dlq/0/0")));
    let from_parking = Replay::new(&broker, parking.clone(), Topic::main("orders")).parking(parking.clone());
    assert_eq!(
        actions(&from_parking).await,
        [Action::Guarded; 3],
        "a parked copy counts its line's replays (3), not its own rk-replays (1)"
    );
    assert_eq!(actions(&from_parking.max_replays(4)).await, [Action::Send; 3]);
}

/// What a replay would do with each entry of its queue.
async fn actions(replay: &Replay<'_, InMemory>) -> Vec<Action> {
    let mut actions = Vec::new();
    replay
        .plan(&Filter::default(), |_, action| actions.push(action))
        .await
        .unwrap();
    actions
}

#[test]
fn the_loop_guard_holds_back_what_was_replayed_enough() {
    let mut headers = Headers::new();
    headers.insert(names::REPLAYS, "3");
    let entry = DeadLetter::new(Record {
        partition: 0,
        offset: 9,
        timestamp_ms: None,
        key: None,
        payload: None,
        headers,
    });
    let broker = InMemory::new();
    let replay = Replay::new(&broker, queue(), Topic::main("orders"));
    let (state, none) = (Checkpoint::default(), EarlierReplays::new());
    assert_eq!(replay.action(&entry, &state, &none), Action::Guarded);
    assert_eq!(replay.max_replays(4).action(&entry, &state, &none), Action::Send);
    let forced = Replay::new(&broker, queue(), Topic::main("orders")).force(true);
    assert_eq!(forced.action(&entry, &state, &none), Action::Send);
}
