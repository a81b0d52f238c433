//! The hand-off pipeline of one level: failed messages on their way to the next level, the
//! dead-letter or the parking queue (and, when the consumer writes in transactions, a
//! successful attempt's outputs on their way into it). Up to a window of writes are in flight at once (never one
//! round trip per message in line); a source offset stays unacknowledged until its write is
//! durable. A failed write is tried again after a pause (50 ms doubling to 5 s), in source
//! order, and its partition hands nothing else on meanwhile: later failures would overtake it
//! on the next level.
//!
//! A write under way is its [`Ticket`] in a slab whose key is the hand-off's id; the consumer
//! reports results by id into its `HandOffReports`, taken once per round of the loop: no
//! future, box or wake-up per hand-off.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use slab::Slab;
use tokio::time::Instant;

use crate::backend::{
    Consumer, Delivered, HandOffId, HandOffReports, HandedOff, OutboundRecord, Output, Position, Topic,
    TopicRole, Undelivered,
};
use crate::policy::Topology;

/// Pauses between attempts to hand a failed message on: 50 ms, doubling up to 5 s.
const HAND_OFF_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(Duration::from_secs(5))
    .without_max_times();

/// A failed message on its way on: its record, and the [`Ticket`] the runtime keeps while the
/// backend has the record. Its source offset stays in flight until the write is durable.
pub(super) struct PendingHandOff {
    pub(super) ticket: Ticket,
    pub(super) record: OutboundRecord,
}

impl PendingHandOff {
    pub(super) fn new(ticket: Ticket, record: OutboundRecord) -> Self {
        Self { ticket, record }
    }

    /// A successful attempt's `outputs`, for the consumer's transaction: its source stays in
    /// flight until they are in, as a failure's does until its hand-off is durable.
    pub(super) fn emitting(partition: u32, offset: u64, generation: u32, outputs: Vec<Output>) -> Self {
        let mut ticket = Ticket::new(partition, offset, generation, TopicRole::Main, None);
        ticket.counted_as = None;
        ticket.outputs = outputs;
        Self::new(ticket, OutboundRecord::default())
    }
}

/// What the runtime keeps of a hand-off while its record is with the backend (a failed write
/// gives the record back): where it came from and where it goes.
pub(super) struct Ticket {
    pub(super) partition: u32,
    pub(super) offset: u64,
    /// The source partition's generation when it failed.
    pub(super) generation: u32,
    /// Where it goes: a retry level, the dead letters, the parking queue or the held topic.
    pub(super) target: TopicRole,
    /// Where the metrics count it as gone, once durable: its target, but for a record held
    /// back (nowhere: no failure) and a dead-held one (the queue it stands for) or a discarded
    /// one (nowhere: counted when it became dead-held).
    pub(super) counted_as: Option<TopicRole>,
    /// Since when the message has been failing (its original timestamp, or its first failure),
    /// epoch ms: a dead letter's age.
    pub(super) failing_since_ms: Option<i64>,
    /// Whether it is being tried again after a failure.
    again: bool,
    /// A successful attempt's outputs (its target is then [`TopicRole::Main`]), kept to be
    /// written again after a failed write; empty for a failure's hand-off.
    outputs: Vec<Output>,
}

impl Ticket {
    pub(super) fn new(
        partition: u32,
        offset: u64,
        generation: u32,
        target: TopicRole,
        failing_since_ms: Option<i64>,
    ) -> Self {
        Self {
            partition,
            offset,
            generation,
            target,
            counted_as: (target != TopicRole::Held).then_some(target),
            failing_since_ms,
            again: false,
            outputs: Vec::new(),
        }
    }

    /// The same ticket, counted as gone to `role` (or nowhere) instead of its target.
    pub(super) fn counted_as(self, role: Option<TopicRole>) -> Self {
        Self {
            counted_as: role,
            ..self
        }
    }
}

/// The topics a level hands on to, named once: a hand-off's write owns its target for a
/// reference count.
pub(super) struct Targets {
    retries: Vec<Topic>,
    dead_letter: Option<Topic>,
    parked: Option<Topic>,
    held: Option<Topic>,
}

impl Targets {
    pub(super) fn of(topology: &Topology) -> Self {
        let topic = |role| topology.topic(role).map(|name| Topic::new(name, role));
        Self {
            retries: (1..=topology.retries.len() as u32)
                .filter_map(|level| topic(TopicRole::Retry { level }))
                .collect(),
            dead_letter: topic(TopicRole::DeadLetter),
            parked: topic(TopicRole::Parked),
            held: topic(TopicRole::Held),
        }
    }

    fn get(&self, role: TopicRole) -> Option<&Topic> {
        match role {
            TopicRole::Retry { level } => self.retries.get(level.checked_sub(1)? as usize),
            TopicRole::DeadLetter => self.dead_letter.as_ref(),
            TopicRole::Parked => self.parked.as_ref(),
            TopicRole::Held => self.held.as_ref(),
            _ => None,
        }
    }

    /// Starts writing a hand-off's record to its target (a successful attempt's outputs to
    /// theirs); the consumer reports it as `id`.
    pub(super) fn write(
        &self,
        consumer: &mut impl Consumer,
        id: HandOffId,
        ticket: &Ticket,
        record: OutboundRecord,
    ) {
        let from = Position {
            partition: ticket.partition,
            offset: ticket.offset,
        };
        if ticket.target == TopicRole::Main {
            return consumer.emit(id, from, ticket.outputs.clone());
        }
        let to = self
            .get(ticket.target)
            .expect("the policy hands on only to topics of the handler's topology")
            .clone();
        consumer.hand_off(id, from, to, record)
    }
}

/// Failed hand-offs of one partition.
#[derive(Default)]
struct Blocked {
    /// In source offset order, to be tried again at `retry_at`.
    failed: Vec<PendingHandOff>,
    retry_at: Option<Instant>,
    /// Tried again and not finished yet.
    retrying: usize,
    /// The pauses before trying again, from the first failure in a row on.
    backoff: Option<ExponentialBackoff>,
}

impl Blocked {
    fn blocks(&self) -> bool {
        !self.failed.is_empty() || self.retrying > 0
    }

    fn keep(&mut self, hand_off: PendingHandOff) {
        let at = self
            .failed
            .partition_point(|h| h.ticket.offset < hand_off.ticket.offset);
        self.failed.insert(at, hand_off);
    }
}

/// Hand-offs under way or waiting to be tried again, over the partitions of one level.
pub(super) struct HandOffs {
    /// The most under way at once (started or waiting to be tried again).
    window: usize,
    /// The tickets of writes with the backend; a ticket's key is its hand-off's id.
    sending: Slab<Ticket>,
    /// Where the consumer reports finished writes.
    reports: HandOffReports,
    /// Reports taken and not concluded yet, last first; swapped with the consumer's buffer,
    /// so neither grows again.
    finished: Vec<HandedOff>,
    /// Indexed by partition number.
    blocked: Vec<Blocked>,
    /// Failed ones waiting, over all partitions: when 0 there is nothing to look for.
    failed: usize,
}

impl HandOffs {
    pub(super) fn new(window: usize, reports: HandOffReports) -> Self {
        Self {
            window: window.max(1),
            sending: Slab::new(),
            reports,
            finished: Vec::new(),
            blocked: Vec::new(),
            failed: 0,
        }
    }

    fn partition(&mut self, partition: u32) -> &mut Blocked {
        let index = partition as usize;
        if index >= self.blocked.len() {
            self.blocked.resize_with(index + 1, Blocked::default);
        }
        &mut self.blocked[index]
    }

    /// Hand-offs under way or waiting to be tried again: bounded by the window.
    pub(super) fn under_way(&self) -> usize {
        self.sending.len() + self.failed
    }

    /// Whether the window has room for another failure.
    pub(super) fn has_room(&self) -> bool {
        self.under_way() < self.window
    }

    /// Failed hand-offs waiting to be tried again.
    pub(super) fn failed(&self) -> usize {
        self.failed
    }

    /// Whether a write is in flight (or reported and not concluded yet).
    pub(super) fn is_sending(&self) -> bool {
        !self.sending.is_empty()
    }

    /// Starts `ticket`'s write: its id is its key among the writes in flight.
    fn start(
        &mut self,
        ticket: Ticket,
        record: OutboundRecord,
        write: impl FnOnce(HandOffId, &Ticket, OutboundRecord),
    ) {
        let entry = self.sending.vacant_entry();
        let id = HandOffId(entry.key() as u64);
        write(id, entry.insert(ticket), record);
    }

    /// Whether the partition at `index` has a failed hand-off not through yet: it starts and
    /// hands on nothing new meanwhile.
    pub(super) fn blocks(&self, index: usize) -> bool {
        self.blocked.get(index).is_some_and(Blocked::blocks)
    }

    /// Starts a hand-off, its record given to `write` (see [`blocks`](HandOffs::blocks): only
    /// on a partition that is not blocked).
    pub(super) fn send(
        &mut self,
        hand_off: PendingHandOff,
        write: impl FnOnce(HandOffId, &Ticket, OutboundRecord),
    ) {
        let PendingHandOff { ticket, record } = hand_off;
        self.start(ticket, record, write);
    }

    /// Keeps a hand-off of a blocked partition behind the failed ones, in failure order.
    pub(super) fn queue_behind(&mut self, hand_off: PendingHandOff) {
        self.partition(hand_off.ticket.partition).keep(hand_off);
        self.failed += 1;
    }

    /// Waits until a write finished (at once when some were taken and not concluded yet):
    /// then [`finished`](HandOffs::finished) gives them. Cancel-safe.
    pub(super) async fn wait(&mut self) {
        if self.finished.is_empty() {
            self.reports.wait(&mut self.finished).await;
            self.finished.reverse();
        }
    }

    /// Takes the writes that finished without waiting: whether there were any.
    pub(super) fn poll_finished(&mut self) -> bool {
        if self.finished.is_empty() && self.reports.take(&mut self.finished) {
            self.finished.reverse();
        }
        !self.finished.is_empty()
    }

    /// The next write taken as finished, in the order the consumer reported them, with its
    /// ticket.
    pub(super) fn finished(&mut self) -> Option<(Ticket, Result<Delivered, Undelivered>)> {
        while let Some(HandedOff { id, result }) = self.finished.pop() {
            // Every id is reported once; one not in flight would be a backend's mistake.
            match self.sending.try_remove(id.0 as usize) {
                Some(ticket) => return Some((ticket, result)),
                None => debug_assert!(false, "hand-off {id:?} reported but not in flight"),
            }
        }
        None
    }

    /// A write of the partition's current generation is durable.
    pub(super) fn written(&mut self, ticket: &Ticket) {
        let state = self.partition(ticket.partition);
        if ticket.again {
            state.retrying -= 1;
        }
        if !state.blocks() {
            state.backoff = None;
        } else if state.retrying == 0 && state.retry_at.is_none() {
            // What failed behind the ones tried again waits for no pause: they went through.
            state.retry_at = Some(Instant::now());
        }
    }

    /// A write the consumer did not make because the partition is being given up: its source
    /// stays unacknowledged, and nothing is tried again.
    pub(super) fn given_up(&mut self, ticket: &Ticket) {
        if ticket.again {
            self.partition(ticket.partition).retrying -= 1;
        }
    }

    /// A write of the partition's current generation failed: it is kept, in source order, to
    /// be tried again after the partition's next pause. Returns when.
    pub(super) fn write_failed(&mut self, hand_off: PendingHandOff) -> Instant {
        let state = self.partition(hand_off.ticket.partition);
        if hand_off.ticket.again {
            state.retrying -= 1;
        }
        let retry_at = match state.retry_at {
            Some(at) => at,
            None => {
                let pause = state
                    .backoff
                    .get_or_insert_with(|| HAND_OFF_BACKOFF.build())
                    .next()
                    .unwrap_or(Duration::from_secs(5));
                *state.retry_at.insert(Instant::now() + pause)
            }
        };
        state.keep(hand_off);
        self.failed += 1;
        retry_at
    }

    /// When the next failed hand-off is to be tried again.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        if self.failed == 0 {
            return None;
        }
        self.blocked.iter().filter_map(|b| b.retry_at).min()
    }

    /// Starts again, in order, the failed hand-offs whose pause is over, each record given to
    /// `write`.
    pub(super) fn retry_due(&mut self, mut write: impl FnMut(HandOffId, &Ticket, OutboundRecord)) {
        if self.failed == 0 {
            return;
        }
        let now = Instant::now();
        for index in 0..self.blocked.len() {
            let state = &mut self.blocked[index];
            if state.retry_at.is_none_or(|at| at > now) {
                continue;
            }
            state.retry_at = None;
            let again = std::mem::take(&mut state.failed);
            state.retrying += again.len();
            self.failed -= again.len();
            for PendingHandOff { mut ticket, record } in again {
                ticket.again = true;
                self.start(ticket, record, &mut write);
            }
        }
    }

    /// Forgets the partition's failed hand-offs: its new owner runs their sources again.
    /// Writes under way finish and are ignored (their generation is stale).
    pub(super) fn revoke(&mut self, partition: u32) {
        let stale = std::mem::take(self.partition(partition));
        self.failed -= stale.failed.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand_off(partition: u32, offset: u64) -> PendingHandOff {
        let ticket = Ticket::new(partition, offset, 0, TopicRole::Retry { level: 1 }, None);
        let record = OutboundRecord {
            payload: Some(offset.to_string().into()),
            ..Default::default()
        };
        PendingHandOff::new(ticket, record)
    }

    /// A write that succeeds or fails at once, reported into `reports`; a failure gives the
    /// record back.
    fn write(
        reports: &HandOffReports,
        result: Result<(), ()>,
    ) -> impl FnMut(HandOffId, &Ticket, OutboundRecord) + '_ {
        move |id, _, record| {
            let written = result
                .map(|()| Delivered {
                    partition: 0,
                    offset: 0,
                })
                .map_err(|()| {
                    let error = crate::error::BackendError::Produce {
                        topic: "orders.billing.retry.1".into(),
                        source: "refused (test)".into(),
                    };
                    Undelivered::new(error, record)
                });
            reports.report(id, written);
        }
    }

    /// The next write that finished.
    async fn next(hand_offs: &mut HandOffs) -> (Ticket, Result<Delivered, Undelivered>) {
        hand_offs.wait().await;
        hand_offs.finished().expect("a write finished")
    }

    fn with_reports(window: usize) -> (HandOffs, HandOffReports) {
        let reports = HandOffReports::new();
        (HandOffs::new(window, reports.clone()), reports)
    }

    /// A failed write's hand-off, its record given back.
    fn returned((ticket, result): (Ticket, Result<Delivered, Undelivered>)) -> PendingHandOff {
        let undelivered = result.expect_err("the write failed");
        PendingHandOff::new(ticket, undelivered.record)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_blocks_its_partition_and_is_tried_again_after_a_growing_pause() {
        let (mut hand_offs, reports) = with_reports(8);
        hand_offs.send(hand_off(0, 10), write(&reports, Err(())));
        let failed = returned(next(&mut hand_offs).await);
        assert_eq!(
            failed.record.payload.as_deref(),
            Some(&b"10"[..]),
            "given back as it was"
        );
        let start = Instant::now();
        assert_eq!(hand_offs.write_failed(failed), start + Duration::from_millis(50));
        assert!(hand_offs.blocks(0) && !hand_offs.blocks(1));
        assert_eq!((hand_offs.failed(), hand_offs.under_way()), (1, 1));
        // Another failure of the partition waits behind it, in source order.
        hand_offs.queue_behind(hand_off(0, 11));
        assert_eq!(hand_offs.next_retry(), Some(start + Duration::from_millis(50)));

        hand_offs.retry_due(|_, _, _| unreachable!("not due yet"));
        tokio::time::advance(Duration::from_millis(50)).await;
        let mut order = Vec::new();
        hand_offs.retry_due(|id, ticket, record| {
            order.push(ticket.offset);
            write(&reports, Err(()))(id, ticket, record)
        });
        assert_eq!(order, [10, 11]);
        assert!(hand_offs.blocks(0), "tried again, not through yet");
        assert_eq!(hand_offs.failed(), 0);
        let first = returned(next(&mut hand_offs).await);
        let second_pause = hand_offs.write_failed(first) - Instant::now();
        assert!(
            second_pause > Duration::from_millis(50),
            "the pause grows: {second_pause:?}"
        );
        let second = returned(next(&mut hand_offs).await);
        hand_offs.write_failed(second);
        assert_eq!(hand_offs.failed(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_queued_while_others_are_tried_again_go_out_once_those_are_through() {
        let (mut hand_offs, reports) = with_reports(8);
        hand_offs.send(hand_off(2, 1), write(&reports, Err(())));
        let failed = returned(next(&mut hand_offs).await);
        hand_offs.write_failed(failed);
        tokio::time::advance(Duration::from_millis(50)).await;
        hand_offs.retry_due(write(&reports, Ok(())));
        // An attempt that was running fails now: behind the one tried again.
        hand_offs.queue_behind(hand_off(2, 5));
        let (retried, result) = next(&mut hand_offs).await;
        assert!(result.is_ok());
        hand_offs.written(&retried);
        assert!(hand_offs.blocks(2), "5 is not through");
        assert_eq!(hand_offs.next_retry(), Some(Instant::now()), "5 goes out at once");
        let mut sent = Vec::new();
        hand_offs.retry_due(|id, ticket, record| {
            sent.push(ticket.offset);
            write(&reports, Ok(()))(id, ticket, record)
        });
        assert_eq!(sent, [5]);
        let (through, _) = next(&mut hand_offs).await;
        hand_offs.written(&through);
        assert!(!hand_offs.blocks(2));
        assert_eq!(hand_offs.under_way(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_partition_forgets_its_failed_hand_offs() {
        let (mut hand_offs, reports) = with_reports(2);
        hand_offs.send(hand_off(1, 1), write(&reports, Err(())));
        assert!(hand_offs.has_room());
        let failed = returned(next(&mut hand_offs).await);
        hand_offs.write_failed(failed);
        hand_offs.queue_behind(hand_off(1, 2));
        assert!(!hand_offs.has_room(), "two under way fill a window of 2");
        hand_offs.revoke(1);
        assert!(!hand_offs.blocks(1));
        assert_eq!((hand_offs.failed(), hand_offs.next_retry()), (0, None));
        assert!(hand_offs.has_room());
    }
}
