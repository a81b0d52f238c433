//! Records waiting per partition, holds and resumes, the acknowledged prefix, records put in.

use super::*;

fn record(partition: u32, offset: u64) -> Record {
    Record {
        partition,
        offset,
        timestamp_ms: None,
        key: None,
        payload: Some(offset.to_string().into()),
        headers: Default::default(),
    }
}

#[test]
fn acknowledges_only_contiguous_prefix() {
    let mut progress = Progress::default();
    [10, 11, 12].into_iter().for_each(|o| progress.start(o));
    assert_eq!(progress.finish(11), None);
    assert_eq!(progress.finish(12), None);
    assert_eq!(progress.finish(10), Some(12));
    progress.start(13);
    progress.start(14);
    assert_eq!(progress.finish(14), None);
    assert_eq!(progress.finish(13), Some(14));
    progress.start(15);
    assert_eq!(progress.finish(15), Some(15));
}

#[test]
fn offsets_finished_behind_hand_offs_are_acknowledged_as_each_hand_off_lands() {
    // One record at a time: 100 and 300 fail (their hand-offs stay in flight), the rest
    // succeed behind them.
    let mut progress = Progress::default();
    for offset in 100..=500 {
        progress.start(offset);
        if offset != 100 && offset != 300 {
            let acknowledged = progress.finish(offset);
            assert_eq!(acknowledged, None, "{offset} finished behind the hand-off of 100");
        }
    }
    assert_eq!(progress.finish(300), None, "100 is still in flight");
    assert_eq!(progress.finish(100), Some(500));
    assert!(progress.finished.is_empty() && progress.in_flight.is_empty());

    // Two hand-offs land in the other order: the first one's prefix goes first.
    [501, 502, 503, 504].into_iter().for_each(|o| progress.start(o));
    assert_eq!(progress.finish(502), None);
    assert_eq!(progress.finish(504), None);
    assert_eq!(progress.finish(501), Some(502));
    assert_eq!(progress.finish(503), Some(504));
}

#[test]
fn an_older_offset_dispatched_late_holds_the_prefix_back() {
    let mut progress = Progress::default();
    [10, 12].into_iter().for_each(|o| progress.start(o));
    progress.start(3); // handed over late, e.g. claimed from a member that left
    progress.start(7);
    assert_eq!(progress.finish(7), None, "3 is still in flight");
    assert_eq!(progress.finish(10), None);
    assert_eq!(progress.finish(3), Some(10));
    assert_eq!(progress.finish(12), Some(12));
}

#[test]
fn waiting_records_start_in_offset_order_when_due() {
    let mut partitions = Partitions::default();
    assert_eq!(partitions.keep(record(1, 5), Some(2_000)), None);
    assert_eq!(partitions.keep(record(1, 6), Some(1_000)), None);
    assert_eq!(partitions.waiting(), 2);
    // The head decides: 6 is due before 5 but waits behind it (one level, one delay).
    assert!(!partitions.head_due(1, 1_500));
    assert!(partitions.head_due(1, 2_000));
    let next = partitions.take_head(1).unwrap();
    assert_eq!(
        (next.record.offset, next.due, next.resume),
        (5, Some(2_000), false)
    );
    let next = partitions.take_head(1).unwrap();
    assert_eq!(next.record.offset, 6);
    assert!(partitions.take_head(1).is_none());
    assert_eq!(partitions.waiting(), 0);
    assert!(!partitions.head_due(0, i64::MAX), "partition 0 was never fetched");
}

#[test]
fn a_record_put_in_past_a_full_partition_is_acknowledged_only_when_fetched_in_its_turn() {
    let mut partitions = Partitions::default();
    let mut held_at = None;
    for offset in 0..WAITING_LIMIT as u64 {
        held_at = partitions.keep(record(0, offset), None).or(held_at);
    }
    assert_eq!(
        held_at,
        Some(WAITING_LIMIT as u64),
        "full: held after the last kept"
    );
    assert!(!partitions.inject(record(0, 5)), "not past where it was held");
    assert!(!partitions.inject(record(1, 500)), "not a held partition");
    assert!(partitions.inject(record(0, 500)));
    assert!(!partitions.inject(record(0, 500)), "once");
    // The record put in runs first and concludes: nothing is acknowledged past 128..499,
    // which were not fetched.
    let at = partitions.first_due(0, 0, |r| r.offset == 500).unwrap();
    let next = partitions.take_at(0, at).unwrap();
    partitions.started(0, next.record.offset);
    assert_eq!(partitions.finish(0, 500), None);
    assert!(
        !partitions.inject(record(0, 500)),
        "concluded, read again by the next look: not put in twice"
    );
    // Fetched again while under way, a record put in is dropped; the kept ones run.
    for offset in 0..WAITING_LIMIT as u64 {
        let next = partitions.take_head(0).unwrap();
        assert_eq!(next.record.offset, offset);
        partitions.started(0, offset);
    }
    let mut upto = None;
    for offset in 0..WAITING_LIMIT as u64 {
        upto = partitions.finish(0, offset).or(upto);
    }
    assert_eq!(upto, Some(WAITING_LIMIT as u64 - 1), "up to the last fetched one");
    // The rest is fetched again; the record put in is acknowledged in its turn.
    assert_eq!(
        partitions.fetched_again(0, 200),
        None,
        "not put in: runs as fetched"
    );
    for offset in WAITING_LIMIT as u64..500 {
        partitions.started(0, offset);
        partitions.finish(0, offset);
    }
    assert_eq!(partitions.fetched_again(0, 500), Some(Some(500)));
    assert_eq!(partitions.fetched_again(0, 500), None, "once");
}

#[test]
fn records_passed_over_hold_the_acknowledged_prefix_back() {
    let mut partitions = Partitions::default();
    for offset in [4, 5, 6] {
        partitions.keep(record(0, offset), None);
    }
    // 4 and 5 wait (their key is busy); 6 goes first.
    let next = partitions.take_at(0, 2).unwrap();
    assert_eq!(next.record.offset, 6);
    partitions.started(0, 6);
    assert_eq!(partitions.finish(0, 6), None, "4 and 5 are not done");
    let four = partitions.take_at(0, 0).unwrap();
    partitions.started(0, four.record.offset);
    assert_eq!(partitions.finish(0, 4), Some(4));
    let five = partitions.take_at(0, 0).unwrap();
    partitions.started(0, five.record.offset);
    assert_eq!(partitions.finish(0, 5), Some(6));
}

#[test]
fn a_record_with_nothing_to_wait_for_is_due_at_once() {
    let mut partitions = Partitions::default();
    partitions.keep(record(0, 1), None);
    assert!(partitions.head_due(0, 0));
    assert_eq!(partitions.take_head(0).unwrap().due, None);
}

#[test]
fn a_full_partition_is_held_after_its_last_kept_record_and_resumed_when_few_are_left() {
    let mut partitions = Partitions::default();
    for offset in 0..WAITING_LIMIT as u64 - 1 {
        assert_eq!(partitions.keep(record(2, offset), Some(1)), None);
    }
    let last = WAITING_LIMIT as u64 - 1;
    assert_eq!(
        partitions.keep(record(2, last), Some(1)),
        Some(last + 1),
        "hold after it"
    );
    // Held once: more records (a backend that delivers what it had fetched) do not hold again.
    assert_eq!(partitions.keep(record(2, last + 1), Some(1)), None);
    let mut resumed = Vec::new();
    while let Some(next) = partitions.take_head(2) {
        if next.resume {
            resumed.push(next.record.offset);
        }
    }
    // Resumed once, when fewer than RESUME_BELOW were left behind the one taken: 129 kept,
    // offsets 0..=128; after taking 97, 31 are left.
    assert_eq!(resumed, [(WAITING_LIMIT - RESUME_BELOW + 1) as u64]);
}

#[test]
fn a_revoked_partition_drops_what_waited_and_makes_started_work_stale() {
    let mut partitions = Partitions::default();
    partitions.keep(record(3, 7), Some(5));
    partitions.keep(record(4, 1), Some(5));
    let before = partitions.generation(3);
    assert!(partitions.is_current(3, before));
    partitions.revoke(3);
    assert!(!partitions.is_current(3, before));
    assert_eq!(partitions.waiting(), 1, "partition 4 keeps its record");
    assert!(partitions.take_head(3).is_none());
    assert!(!partitions.is_current(9, 0), "never seen");
}

#[tokio::test(start_paused = true)]
async fn the_next_wake_is_the_earliest_startable_head_not_before_the_next_token() {
    let mut partitions = Partitions::default();
    let now = crate::clock::now_ms();
    partitions.keep(record(0, 1), Some(now + 3_000));
    partitions.keep(record(1, 1), Some(now + 1_000));
    let at = |ms: i64| instant_at(now + ms);
    assert_eq!(partitions.next_due(|_| true, None), Some(at(1_000)));
    assert_eq!(
        partitions.next_due(|p| p != 1, None),
        Some(at(3_000)),
        "1 is blocked"
    );
    let token = Instant::now() + std::time::Duration::from_secs(2);
    assert_eq!(partitions.next_due(|_| true, Some(token)), Some(token));
    assert_eq!(partitions.next_due(|_| false, None), None);
}
