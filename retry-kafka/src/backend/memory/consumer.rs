//! A member of an in-memory consumer group (or a follower of one): its assignment, fetching,
//! holds, hand-offs and acknowledgements.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

use super::{InMemory, FETCH_BATCH};
use crate::backend::{
    Consumer, Fetched, HandOffId, HandOffReports, OutboundRecord, Position, Record, Subscription, Topic,
};
use crate::error::BackendError;

/// A member of an in-memory consumer group. Leaves its group when dropped.
pub struct MemoryConsumer {
    broker: InMemory,
    topic: String,
    group: String,
    member: u64,
    changed: Arc<Notify>,
    generation: u64,
    assigned: Vec<u32>,
    positions: HashMap<u32, u64>,
    held: HashSet<u32>,
    cursor: usize,
    buffer: VecDeque<Record>,
    events: VecDeque<Fetched>,
    /// Hand-offs are written at once: each is reported as it is started.
    hand_offs: HandOffReports,
    /// The main consumer whose assignment this one reads, instead of being a member.
    leader: Option<Leader>,
}

/// The main consumer a follower reads the assignment of.
struct Leader {
    topic: String,
    group: String,
    member: u64,
    /// Its topic's wake-up: its group changes there.
    changed: Arc<Notify>,
}

impl MemoryConsumer {
    pub(super) fn new(
        broker: InMemory,
        subscription: Subscription,
        member: u64,
        changed: Arc<Notify>,
    ) -> Self {
        MemoryConsumer {
            broker,
            topic: subscription.topic.name.to_string(),
            group: subscription.group,
            member,
            changed,
            generation: 0,
            assigned: Vec::new(),
            positions: HashMap::new(),
            held: HashSet::new(),
            cursor: 0,
            buffer: VecDeque::new(),
            events: VecDeque::new(),
            hand_offs: HandOffReports::new(),
            leader: None,
        }
    }

    /// This consumer, reading what `leader` is assigned instead of being a member.
    pub(super) fn following(mut self, leader: &MemoryConsumer) -> Self {
        self.leader = Some(Leader {
            topic: leader.topic.clone(),
            group: leader.group.clone(),
            member: leader.member,
            changed: leader.changed.clone(),
        });
        self
    }

    /// Moves fetched records into the buffer, or records an assignment change. Returns whether
    /// there is something to deliver.
    fn poll_state(&mut self) -> bool {
        let state = self.broker.state();
        let Some(topic) = state.topics.get(&self.topic) else {
            return false;
        };
        let Some(group) = topic.groups.get(&self.group) else {
            return false;
        };
        // A follower's assignment is its leader's, in the leader's group.
        let (generation, member, assigning) = match &self.leader {
            None => (group.generation, self.member, group),
            Some(leader) => {
                let Some(assigning) = state
                    .topics
                    .get(&leader.topic)
                    .and_then(|t| t.groups.get(&leader.group))
                else {
                    return false;
                };
                (assigning.generation, leader.member, assigning)
            }
        };
        if generation != self.generation {
            self.generation = generation;
            let now = assigning.assignment(member, topic.partitions.len() as u32);
            let revoked: Vec<u32> = self
                .assigned
                .iter()
                .copied()
                .filter(|p| !now.contains(p))
                .collect();
            let added: Vec<u32> = now
                .iter()
                .copied()
                .filter(|p| !self.assigned.contains(p))
                .collect();
            for p in &revoked {
                self.positions.remove(p);
                self.held.remove(p);
            }
            self.buffer.retain(|r| !revoked.contains(&r.partition));
            for &p in &added {
                self.positions.insert(p, group.committed[p as usize]);
            }
            self.assigned = now;
            if !revoked.is_empty() {
                self.events.push_back(Fetched::Revoked(revoked));
            }
            if !added.is_empty() {
                self.events.push_back(Fetched::Assigned(added));
            }
            return !self.events.is_empty();
        }
        let n = self.assigned.len();
        for step in 0..n {
            let p = self.assigned[(self.cursor + step) % n];
            if self.held.contains(&p) {
                continue;
            }
            let log = &topic.partitions[p as usize];
            let position = self
                .positions
                .get_mut(&p)
                .expect("assigned partitions have positions");
            let start = *position as usize;
            if start < log.len() {
                let end = (start + FETCH_BATCH).min(log.len());
                self.buffer.extend(log[start..end].iter().cloned());
                *position = end as u64;
                self.cursor = (self.cursor + step + 1) % n;
                return true;
            }
        }
        false
    }
}

impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Fetched, BackendError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            if let Some(record) = self.buffer.pop_front() {
                return Ok(Fetched::Record(record));
            }
            let changed = self.changed.clone();
            let notified = changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so an append between the look and the wait wakes us.
            notified.as_mut().enable();
            // A follower also wakes when its leader's group changes.
            let leader_changed = self.leader.as_ref().map(|leader| leader.changed.clone());
            let leader_notified = leader_changed.as_ref().map(|changed| changed.notified());
            let mut leader_notified = std::pin::pin!(leader_notified);
            if let Some(notified) = leader_notified.as_mut().as_pin_mut() {
                notified.enable();
            }
            if !self.poll_state() {
                match leader_notified.as_mut().as_pin_mut() {
                    Some(leader) => {
                        tokio::select! {
                            _ = notified => {}
                            _ = leader => {}
                        }
                    }
                    None => notified.await,
                }
            }
        }
    }

    fn hand_off(&mut self, id: HandOffId, _from: Position, to: Topic, record: OutboundRecord) {
        self.hand_offs.report(id, self.broker.append(&to.name, record));
    }

    fn hand_off_reports(&self) -> &HandOffReports {
        &self.hand_offs
    }

    fn hold(&mut self, partition: u32, offset: u64) {
        if let Some(position) = self.positions.get_mut(&partition) {
            *position = offset;
            self.held.insert(partition);
            self.buffer.retain(|r| r.partition != partition);
        }
    }

    fn resume(&mut self, partition: u32) {
        self.held.remove(&partition);
    }

    async fn ack(&mut self, partition: u32, offset: u64) -> Result<(), BackendError> {
        let mut state = self.broker.state();
        // A member that lost the partition may not commit it: the new owner redelivers
        // instead, as a fenced Kafka member would. A follower owns what its leader owns.
        let owner = match &self.leader {
            None => state
                .topics
                .get(&self.topic)
                .and_then(|t| t.groups.get(&self.group))
                .and_then(|group| group.owner(partition)),
            Some(leader) => state
                .topics
                .get(&leader.topic)
                .and_then(|t| t.groups.get(&leader.group))
                .and_then(|group| group.owner(partition))
                .filter(|&owner| owner == leader.member)
                .map(|_| self.member),
        };
        let Some(group) = state
            .topics
            .get_mut(&self.topic)
            .and_then(|t| t.groups.get_mut(&self.group))
        else {
            return Ok(());
        };
        if owner == Some(self.member) {
            let slot = &mut group.committed[partition as usize];
            *slot = (*slot).max(offset + 1);
        }
        Ok(())
    }

    async fn close(self) -> Result<(), BackendError> {
        drop(self);
        Ok(())
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        if self.leader.is_some() {
            // Never a member: nothing to leave.
            return;
        }
        let mut state = self.broker.state();
        if let Some(topic) = state.topics.get_mut(&self.topic) {
            if let Some(group) = topic.groups.get_mut(&self.group) {
                group.members.retain(|&m| m != self.member);
                group.generation += 1;
            }
            topic.changed.notify_waiters();
        }
    }
}
