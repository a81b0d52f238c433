//! What a failed attempt becomes, by the handler's policy: a hand-off to the next retry level
//! (with its due time), the dead letters or the parking queue, with the failure's story in the
//! headers; or nothing, when the policy drops it.

use super::attempt::Failure;
use super::hand_offs::{PendingHandOff, Ticket};
use super::Level;
use crate::backend::{OutboundRecord, Record, TopicRole};
use crate::clock::now_ms;
use crate::headers::{FailureContext, HeldBack};
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
        let ticket = Ticket::new(partition, offset, generation, target, failing_since_ms);
        Some(PendingHandOff::new(ticket, record))
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
        match ticket.target {
            TopicRole::Retry { level } => self.metrics.retried(level),
            TopicRole::Parked => self.metrics.parked(),
            // Not a failure's: a record held back behind its key's retry, no attempt made.
            TopicRole::Held => {}
            _ => self.metrics.dead_lettered(ticket.failing_since_ms),
        }
    }
}
