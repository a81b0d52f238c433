//! What the poll thread is assigned: rebalances put in order with the records, the partitions
//! a followed main consumer takes and gives up, and exactly-once's side of an assignment (the
//! committed offsets and their written maps read, a rewind after an abort, the floor moved past
//! transaction markers).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{Assigned, PollThread, RawConsumer, COMMITTED_BACKOFF, COMMITTED_TIMEOUT};
use crate::backend::follow::Following;
use crate::backend::kafka::consumer::rebalance::RebalanceEvent;
use crate::backend::kafka::consumer::written::Written;
use crate::backend::kafka::consumer::Item;

impl PollThread {
    /// Exactly-once: a partition whose every record fetched is settled, and whose position is
    /// past them, is settled through its position. What lies between is transaction markers
    /// and aborted records, offsets no record is delivered for (every retry level is written in
    /// transactions), so the committed offset reaches the end and the group's lag reads 0.
    /// Returns whether one moved.
    pub(super) fn past_markers(&mut self, consumer: &RawConsumer) -> bool {
        let Ok(positions) = consumer.position() else {
            return false;
        };
        let mut moved = false;
        let mut settlement = consumer.context().settlement();
        for (partition, assigned) in self.partitions.iter() {
            let (Some(next), false) = (assigned.next, assigned.held) else {
                continue;
            };
            let position = positions
                .find_partition(&self.topic, partition as i32)
                .map(|element| element.offset());
            if let Some(Offset::Offset(position)) = position {
                moved |= settlement.passed(partition, next, position.max(0) as u64);
            }
        }
        moved
    }

    pub(super) fn take_rebalances(&mut self, consumer: &RawConsumer, batch: &mut Vec<Item>) {
        let events = consumer.context().take();
        for event in events {
            match event {
                RebalanceEvent::Revoked(revoked) => self.revoked(consumer, revoked, batch),
                RebalanceEvent::Assigned(assigned) => self.assigned(consumer, assigned, batch, false),
            }
        }
    }

    /// A transaction aborted (`transaction.rs`): every partition kept is read again from its
    /// committed offset, as a revoke and an assignment (new generations: the runtime drops its
    /// work on them, and their acknowledgements and hand-offs still to come are stale).
    pub(super) fn rewind(&mut self, consumer: &RawConsumer) {
        let partitions: Vec<u32> = self.partitions.iter().map(|(p, _)| p).collect();
        if partitions.is_empty() {
            // Lost with the transaction (the session expired): nothing is kept to read again.
            return;
        }
        tracing::info!(topic = %self.topic, ?partitions, "a transaction aborted: reading its partitions again from their committed offsets");
        let mut batch = self.pending.take().unwrap_or_default();
        self.revoked(consumer, partitions.clone(), &mut batch);
        self.assigned(consumer, partitions, &mut batch, true);
        self.pending = Some(batch);
    }

    fn revoked(&mut self, consumer: &RawConsumer, revoked: Vec<u32>, batch: &mut Vec<Item>) {
        let mut settlement = consumer.context().settlement();
        for partition in &revoked {
            self.partitions.remove(*partition);
            settlement.revoked(*partition);
        }
        drop(settlement);
        if let Some(pending) = &mut self.pending {
            pending.retain(
                |item| !matches!(item, Item::Record { record, .. } if revoked.contains(&record.partition)),
            );
        }
        batch.retain(
            |item| !matches!(item, Item::Record { record, .. } if revoked.contains(&record.partition)),
        );
        batch.push(Item::Revoked(revoked));
        if self.partitions.iter().next().is_none() {
            consumer
                .context()
                .stale_below
                .store(self.generations + 1, Ordering::Relaxed);
        }
    }

    /// `assigned` are this consumer's now; `rewound`: read again from their committed offsets.
    fn assigned(&mut self, consumer: &RawConsumer, assigned: Vec<u32>, batch: &mut Vec<Item>, rewound: bool) {
        let context = consumer.context();
        let marks = match &context.transaction {
            Some(_) => self.committed(consumer, &assigned),
            None => Vec::new(),
        };
        let mut tagged = Vec::with_capacity(assigned.len());
        for partition in assigned {
            self.generations += 1;
            let generation = self.generations;
            let (committed, skip) = marks
                .iter()
                .find(|(p, ..)| *p == partition)
                .map(|(_, committed, written)| (*committed, written.clone()))
                .unwrap_or_default();
            let mut settlement = context.settlement();
            settlement.assigned(partition, generation);
            if let Some(committer) = &context.transaction {
                if let Some(committed) = committed {
                    settlement.started(partition, committed);
                }
                committer
                    .transaction()
                    .assigned(partition, generation, committed, skip.clone());
            }
            drop(settlement);
            self.partitions.insert(
                partition,
                Assigned {
                    generation,
                    held: false,
                    next: None,
                    skip,
                    started: false,
                },
            );
            tagged.push((partition, generation));
        }
        // A partition may come back paused from an earlier assignment; start fresh,
        // unless the runtime is behind.
        let partitions: Vec<u32> = tagged.iter().map(|(p, _)| *p).collect();
        if self.backpressure {
            self.pause(consumer, &partitions);
        } else {
            self.resume(consumer, &partitions);
        }
        if rewound {
            for &(partition, committed, _) in &marks {
                let offset = committed.map_or(Offset::Beginning, |offset| Offset::Offset(offset as i64));
                if let Err(error) =
                    consumer.seek(&self.topic, partition as i32, offset, Duration::from_secs(5))
                {
                    tracing::warn!(topic = %self.topic, partition, %error, "seek to the committed offset failed");
                }
            }
        }
        batch.push(Item::Assigned(tagged));
    }

    /// Exactly-once: each partition's committed offset (none when never committed) and the
    /// records written above it (its metadata), read from the group's coordinator: stable
    /// offsets, so a transaction still committing is waited for (read_committed).
    fn committed(&self, consumer: &RawConsumer, partitions: &[u32]) -> Vec<(u32, Option<u64>, Written)> {
        let list = self.list(partitions);
        // Until they are read: without them a partition would start without skipping what was
        // handed on (twice) or, after an abort, where the fetch was (lost). librdkafka waits for
        // the same offsets before it fetches anything; the group's heartbeats go on meanwhile.
        let read = loop {
            match consumer.committed_offsets(list.clone(), COMMITTED_TIMEOUT) {
                Ok(read) => break read,
                Err(error) => {
                    tracing::warn!(topic = %self.topic, ?partitions, %error, "reading the committed offsets failed; trying again");
                    std::thread::sleep(COMMITTED_BACKOFF);
                }
            }
        };
        read.elements()
            .iter()
            .map(|element| {
                let partition = element.partition() as u32;
                match element.offset() {
                    Offset::Offset(offset) if offset >= 0 => {
                        let offset = offset as u64;
                        (
                            partition,
                            Some(offset),
                            Written::decode(offset, element.metadata()),
                        )
                    }
                    _ => (partition, None, Written::default()),
                }
            })
            .collect()
    }

    /// What the main consumer this one follows was assigned or loses (`backend/follow.rs`), as a
    /// rebalance of its own.
    pub(super) fn follow(&mut self, consumer: &RawConsumer, following: Following) {
        let context = consumer.context();
        let list = |partitions: &[u32]| {
            let mut list = TopicPartitionList::new();
            for &partition in partitions {
                // From the committed offset (the group's start when none: auto.offset.reset).
                let _ = list.add_partition_offset(&self.topic, partition as i32, Offset::Stored);
            }
            list
        };
        match following {
            Following::Take(partitions) => {
                if let Err(error) = consumer.incremental_assign(&list(&partitions)) {
                    tracing::warn!(topic = %self.topic, ?partitions, %error, "assigning what the main consumer was assigned failed");
                    return;
                }
                tracing::debug!(topic = %self.topic, ?partitions, "partitions assigned (following)");
                context.log(RebalanceEvent::Assigned(partitions));
            }
            Following::GiveUp(partitions, done) => {
                let owned: Vec<u32> = partitions
                    .iter()
                    .copied()
                    .filter(|&p| self.partitions.get(p).is_some())
                    .collect();
                if !owned.is_empty() {
                    context.settlement().drain_for_revoke(
                        consumer,
                        &self.topic,
                        &owned,
                        &context.ack_request,
                    );
                    if let Err(error) = context.commit(consumer, CommitMode::Sync, &owned) {
                        tracing::debug!(topic = %self.topic, %error, "commit on revoke (following)");
                    }
                }
                if let Err(error) = consumer.incremental_unassign(&list(&partitions)) {
                    tracing::debug!(topic = %self.topic, ?partitions, %error, "unassign (following)");
                }
                tracing::debug!(topic = %self.topic, ?partitions, "partitions revoked (following)");
                context.log(RebalanceEvent::Revoked(partitions));
                let _ = done.send(());
            }
        }
    }
}
