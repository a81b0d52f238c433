//! What a failed attempt becomes, by the handler's policy: a hand-off to the next retry level
//! (with its due time), the dead letters or the parking queue, with the failure's story in the
//! headers; or nothing, when the policy drops it. For a key-ordered handler also what a record
//! held back behind its key becomes, and (`on_dead_letter = "hold_key"`) a last failure that
//! holds its key on the held topic, and that record replayed or discarded.

use super::attempt::Failure;
use super::hand_offs::{PendingHandOff, Ticket};
use super::Level;
use crate::backend::{OutboundRecord, Record, TopicRole};
use crate::clock::now_ms;
use crate::dead_letters::replayed;
use crate::headers::{names, FailureContext, HeldBack};
use crate::held_keys::HeldRecord;
use crate::policy::Step;
use crate::trace::AttemptSpan;

impl Level {
    /// The hand-off that carries a failed `record` on, or `None` when it is dropped (logged
    /// and counted here).
    pub(super) fn hand_off_of(
        &self,
        record: Record,
        failure: Failure,
        span: AttemptSpan,
        generation: u32,
    ) -> Option<PendingHandOff> {
        let (partition, offset) = (record.partition, record.offset);
        let lineage = self.lineage(&record);
        self.metrics.failed(failure.kind);
        let now = now_ms();
        let step = self
            .policy
            .next(self.level, failure.kind, lineage.replays.unwrap_or(0));
        tracing::warn!(
            topic = %self.topic, partition, offset,
            group = self.spec.group(), attempt = self.level + 1, kind = %failure.kind,
            error = %failure.message, next = ?step, "attempt failed",
        );
        let (target, due_at_ms) = match step {
            Step::Retry { level, delay } => {
                (TopicRole::Retry { level }, Some(now + delay.as_millis() as i64))
            }
            Step::DeadLetter => (TopicRole::DeadLetter, None),
            Step::Park => (TopicRole::Parked, None),
            Step::Drop => {
                tracing::error!(
                    topic = %self.topic, partition, offset,
                    group = self.spec.group(), kind = %failure.kind, error = %failure.message,
                    "message dropped after its last attempt (on_exhausted = \"drop\")",
                );
                self.metrics.dropped();
                return None;
            }
        };
        let context = FailureContext {
            original_topic: lineage.origin.topic.to_string(),
            original_partition: lineage.origin.partition,
            original_offset: lineage.origin.offset,
            original_timestamp_ms: lineage.origin.timestamp_ms,
            group: self.spec.group().to_owned(),
            attempts: self.level + 1,
            due_at_ms,
            first_failure_at_ms: lineage.first_failure_ms.unwrap_or(now),
            last_failure_at_ms: now,
            error_kind: failure.kind,
            error_message: failure.message,
            replays: lineage.replays,
        };
        let mut headers = record.headers;
        context.write_to(&mut headers);
        span.hand_on(&mut headers);
        // Its last failure: with `on_dead_letter = "hold_key"` it waits on the held topic,
        // holding its key, until an operator replays or discards it (then it goes to `target`).
        let holds_key = matches!(target, TopicRole::DeadLetter | TopicRole::Parked)
            && self.spec.ordering().dead_letters_hold_key()
            && record.key.is_some();
        if holds_key {
            headers.insert(names::DEAD_HELD, HeldRecord::dead_held_value(target));
        }
        let record = OutboundRecord {
            partition: Some(partition),
            key: record.key,
            payload: record.payload,
            headers,
        };
        // As the headers say it: the original timestamp, else the first failure (now, if this is it).
        let failing_since_ms = lineage
            .origin
            .timestamp_ms
            .or(lineage.first_failure_ms)
            .or(Some(now));
        let ticket = match holds_key {
            true => Ticket::new(partition, offset, generation, TopicRole::Held, failing_since_ms)
                .counted_as(Some(target)),
            false => Ticket::new(partition, offset, generation, target, failing_since_ms),
        };
        Some(PendingHandOff::new(ticket, record))
    }

    /// The hand-off that sends a dead-held record an operator discarded to its `queue` (the
    /// dead letters, or the parking queue), unattempted: its failure story as it was. Counted
    /// when it became dead-held, not again.
    pub(super) fn discarded(&self, record: Record, queue: TopicRole, generation: u32) -> PendingHandOff {
        let (partition, offset) = (record.partition, record.offset);
        tracing::info!(topic = %self.topic, partition, offset, group = self.spec.group(), ?queue,
            "a dead-held record was discarded: it goes to its queue and its key goes on");
        let mut headers = record.headers;
        headers.retain(|name| name != names::DEAD_HELD);
        let record = OutboundRecord {
            partition: Some(partition),
            key: record.key,
            payload: record.payload,
            headers,
        };
        let ticket = Ticket::new(partition, offset, generation, queue, None).counted_as(None);
        PendingHandOff::new(ticket, record)
    }

    /// A dead-held record an operator replays gets a replay's headers before its attempt here:
    /// `rk-replays` one higher, its failure story kept, no longer dead-held.
    pub(super) fn replaying(&self, record: &mut Record) {
        let replay_of = format!("{}/{}/{}", self.topic, record.partition, record.offset);
        match replayed(&record.headers, TopicRole::Held, &replay_of, now_ms()) {
            Ok(headers) => record.headers = headers,
            // A failure story that does not read: replayed as it is, but no longer dead-held.
            Err(_) => record.headers.retain(|name| name != names::DEAD_HELD),
        }
        tracing::info!(topic = %self.topic, partition = record.partition, offset = record.offset,
            group = self.spec.group(), "a dead-held record is replayed before its key's later records");
    }

    /// The hand-off that holds `record` back on the held topic, unattempted, behind the
    /// record of its key that started on main-topic offset `behind` (`ordering = "key"`).
    pub(super) fn held_back(&self, record: Record, behind: u64, generation: u32) -> PendingHandOff {
        let (partition, offset) = (record.partition, record.offset);
        let lineage = self.lineage(&record);
        let now = now_ms();
        tracing::debug!(topic = %self.topic, partition, offset, group = self.spec.group(),
            behind, "held back behind an earlier record of its key");
        let mut headers = record.headers;
        HeldBack {
            original_topic: &lineage.origin.topic,
            original_partition: lineage.origin.partition,
            original_offset: lineage.origin.offset,
            original_timestamp_ms: lineage.origin.timestamp_ms,
            group: self.spec.group(),
            held_at_ms: now,
            behind_offset: behind,
            replays: lineage.replays,
        }
        .write_to(&mut headers);
        let record = OutboundRecord {
            partition: Some(partition),
            key: record.key,
            payload: record.payload,
            headers,
        };
        let ticket = Ticket::new(
            partition,
            offset,
            generation,
            TopicRole::Held,
            lineage.origin.timestamp_ms,
        );
        PendingHandOff::new(ticket, record)
    }

    /// Counts a hand-off that is durable, by where it went.
    pub(super) fn handed_off(&self, ticket: &Ticket) {
        match ticket.counted_as {
            Some(TopicRole::Retry { level }) => self.metrics.retried(level),
            Some(TopicRole::Parked) => self.metrics.parked(),
            Some(TopicRole::DeadLetter) => self.metrics.dead_lettered(ticket.failing_since_ms),
            // A record held back behind its key's retry (no attempt made), or a discarded
            // dead-held one (counted when it became dead-held).
            _ => {}
        }
    }
}
