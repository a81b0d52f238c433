//! The in-process broker: partitions, consumer groups, committed offsets and durable sends, all
//! in memory and on tokio's clock.
//!
//! It exists for unit tests, [`testing`](crate::testing) and the zero-setup demo, and passes
//! the same conformance suite as the network backends. Nothing survives the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{
    Backend, Delivered, OutboundRecord, Publish, Record, Subscription, Topic, TopicAdmin, Undelivered,
};
use crate::clock::now_ms;
use crate::error::BackendError;
use crate::partitioner::partition_for_key;

mod consumer;

pub use consumer::MemoryConsumer;

/// How many messages one fetch takes from a partition under one lock.
const FETCH_BATCH: usize = 64;

/// An in-process broker.
///
/// Cloning it gives another handle to the same broker.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, OutboundRecord, Publish, Topic};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let broker = InMemory::new();
/// broker.create_topic("orders", 3);
/// let delivered = broker
///     .send(&Topic::main("orders"), OutboundRecord { partition: Some(2), payload: Some("hi".into()), ..Default::default() })
///     .await
///     .unwrap();
/// assert_eq!((delivered.partition, delivered.offset), (2, 0));
/// assert_eq!(broker.end_offsets("orders"), vec![0, 0, 1]);
/// # }
/// ```
#[derive(Clone)]
pub struct InMemory {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    default_partitions: u32,
    next_member: AtomicU64,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Log>,
}

impl State {
    /// `name`, created with `default` partitions on first use (as a Kafka cluster with
    /// `auto.create.topics.enable` does).
    fn topic(&mut self, name: &str, default: u32) -> &mut Log {
        self.topics
            .entry(name.to_owned())
            .or_insert_with(|| Log::new(default))
    }
}

/// A topic's partitions and groups.
struct Log {
    partitions: Vec<Vec<Record>>,
    groups: HashMap<String, Group>,
    /// Woken on every append and every membership change of the topic.
    changed: Arc<Notify>,
    /// Sends that fail on purpose, for tests of failed hand-offs (to one partition only, if
    /// `failing_partition` is set).
    failing_sends: u32,
    failing_partition: Option<u32>,
    round_robin: u32,
}

struct Group {
    committed: Vec<u64>,
    /// Member ids, sorted; partition `p` belongs to `members[p % members.len()]`.
    members: Vec<u64>,
    generation: u64,
}

impl Log {
    fn new(partitions: u32) -> Self {
        Self {
            partitions: (0..partitions).map(|_| Vec::new()).collect(),
            groups: HashMap::new(),
            changed: Arc::new(Notify::new()),
            failing_sends: 0,
            failing_partition: None,
            round_robin: 0,
        }
    }
}

impl Log {
    /// The group `name` on this topic, made (nothing committed, no member) if new.
    fn group(&mut self, name: &str) -> &mut Group {
        let partitions = self.partitions.len();
        self.groups.entry(name.to_owned()).or_insert_with(|| Group {
            committed: vec![0; partitions],
            members: Vec::new(),
            generation: 0,
        })
    }
}

impl Group {
    fn owner(&self, partition: u32) -> Option<u64> {
        (!self.members.is_empty()).then(|| self.members[partition as usize % self.members.len()])
    }

    fn assignment(&self, member: u64, partitions: u32) -> Vec<u32> {
        (0..partitions)
            .filter(|&p| self.owner(p) == Some(member))
            .collect()
    }
}

impl Default for InMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemory {
    /// A broker whose auto-created topics have 4 partitions.
    pub fn new() -> Self {
        Self::with_partitions(4)
    }

    /// A broker whose auto-created topics have `partitions` partitions.
    pub fn with_partitions(partitions: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                default_partitions: partitions.max(1),
                next_member: AtomicU64::new(1),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every critical
        // section below is a handful of infallible pushes and assignments.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates `topic` with `partitions` partitions, unless it exists.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.state()
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| Log::new(partitions.max(1)));
    }

    /// The partition count of `topic`, if it exists.
    pub fn partitions(&self, topic: &str) -> Option<u32> {
        self.state().topics.get(topic).map(|t| t.partitions.len() as u32)
    }

    /// Makes the next `count` sends to `topic` fail, as a broker outage would.
    pub fn fail_next_sends(&self, topic: &str, count: u32) {
        self.fail_sends(topic, None, count);
    }

    /// Makes the next `count` sends to `partition` of `topic` fail; sends to its other
    /// partitions go through.
    pub fn fail_next_sends_to(&self, topic: &str, partition: u32, count: u32) {
        self.fail_sends(topic, Some(partition), count);
    }

    fn fail_sends(&self, topic: &str, partition: Option<u32>, count: u32) {
        let default = self.shared.default_partitions;
        let mut state = self.state();
        let topic = state.topic(topic, default);
        topic.failing_sends = count;
        topic.failing_partition = partition;
    }

    /// Every message of `topic`, partition by partition, in offset order.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        self.state()
            .topics
            .get(topic)
            .map(|t| t.partitions.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// The next offset of each partition of `topic` (empty if it does not exist).
    pub fn end_offsets(&self, topic: &str) -> Vec<u64> {
        self.state()
            .topics
            .get(topic)
            .map(|t| t.partitions.iter().map(|p| p.len() as u64).collect())
            .unwrap_or_default()
    }

    /// The committed offset (next to read) of each partition of `topic` for `group`.
    pub fn committed(&self, topic: &str, group: &str) -> Vec<u64> {
        let state = self.state();
        let Some(t) = state.topics.get(topic) else {
            return Vec::new();
        };
        match t.groups.get(group) {
            Some(g) => g.committed.clone(),
            None => vec![0; t.partitions.len()],
        }
    }

    /// Messages of `topic` that `group` has not committed yet.
    pub fn lag_of(&self, topic: &str, group: &str) -> u64 {
        let ends = self.end_offsets(topic);
        let committed = self.committed(topic, group);
        ends.iter()
            .zip(&committed)
            .map(|(end, done)| end.saturating_sub(*done))
            .sum()
    }
}

impl super::Browse for InMemory {
    async fn read(&self, topic: &Topic, from: &[u64]) -> Result<Vec<Record>, BackendError> {
        let state = self.state();
        let Some(t) = state.topics.get(&*topic.name) else {
            return Ok(Vec::new());
        };
        Ok(t.partitions
            .iter()
            .enumerate()
            .flat_map(|(p, records)| {
                let start = from.get(p).copied().unwrap_or(0);
                records.iter().filter(move |r| r.offset >= start).cloned()
            })
            .collect())
    }

    async fn end_offsets_of(&self, topic: &Topic) -> Result<Vec<u64>, BackendError> {
        Ok(self.end_offsets(&topic.name))
    }
}

impl TopicAdmin for InMemory {
    async fn partitions(&self, topic: &Topic) -> Result<Option<u32>, BackendError> {
        Ok(InMemory::partitions(self, &topic.name))
    }

    async fn create_topic(&self, topic: &Topic, partitions: u32) -> Result<(), BackendError> {
        InMemory::create_topic(self, &topic.name, partitions);
        Ok(())
    }

    /// A topic is created on first use, as on a Kafka cluster with
    /// `auto.create.topics.enable`, with the broker's default partition count.
    fn default_partitions(&self) -> Option<u32> {
        Some(self.shared.default_partitions)
    }
}

impl Publish for InMemory {
    async fn send(&self, topic: &Topic, record: OutboundRecord) -> Result<Delivered, BackendError> {
        self.append(&topic.name, record)
            .map_err(|undelivered| undelivered.error)
    }
}

impl Backend for InMemory {
    type Consumer = MemoryConsumer;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn keeps_partitions_together(&self) -> bool {
        true
    }

    async fn subscribe_together(
        &self,
        main: Subscription,
        followers: Vec<Subscription>,
    ) -> Result<Vec<MemoryConsumer>, BackendError> {
        let leader = self.subscribe(main).await?;
        let mut consumers: Vec<MemoryConsumer> = followers
            .into_iter()
            .map(|subscription| self.follower(subscription, &leader))
            .collect();
        consumers.insert(0, leader);
        Ok(consumers)
    }

    async fn unacknowledged(
        &self,
        topic: &Topic,
        group: &str,
        partitions: &[u32],
    ) -> Result<Vec<Record>, BackendError> {
        let committed = self.committed(&topic.name, group);
        let state = self.state();
        let Some(log) = state.topics.get(&*topic.name) else {
            return Ok(Vec::new());
        };
        Ok(partitions
            .iter()
            .filter_map(|&p| {
                Some((
                    log.partitions.get(p as usize)?,
                    committed.get(p as usize).copied().unwrap_or(0),
                ))
            })
            .flat_map(|(records, from)| records.iter().filter(move |r| r.offset >= from).cloned())
            .collect())
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<MemoryConsumer, BackendError> {
        let member = self.shared.next_member.fetch_add(1, Ordering::Relaxed);
        let default = self.shared.default_partitions;
        let changed = {
            let mut state = self.state();
            let topic = state.topic(&subscription.topic.name, default);
            let group = topic.group(&subscription.group);
            group.members.push(member);
            group.members.sort_unstable();
            group.generation += 1;
            topic.changed.notify_waiters();
            topic.changed.clone()
        };
        Ok(MemoryConsumer::new(self.clone(), subscription, member, changed))
    }

    async fn lag(&self, topic: &Topic, group: &str) -> Result<u64, BackendError> {
        Ok(self.lag_of(&topic.name, group))
    }
}

impl InMemory {
    /// A consumer of `subscription` that reads what `leader` is assigned: never a member of
    /// its group, whose committed offsets it keeps (`Backend::subscribe_together`).
    fn follower(&self, subscription: Subscription, leader: &MemoryConsumer) -> MemoryConsumer {
        let default = self.shared.default_partitions;
        let changed = {
            let mut state = self.state();
            let topic = state.topic(&subscription.topic.name, default);
            topic.group(&subscription.group);
            topic.changed.clone()
        };
        MemoryConsumer::new(self.clone(), subscription, 0, changed).following(leader)
    }
}

impl InMemory {
    /// Appends `record` to `topic`: durable at once, as far as this broker goes. A refused
    /// record is given back.
    // The record given back is the point of the error (a hand-off tries again with it), and a
    // refused append is rare: not worth a box.
    #[allow(clippy::result_large_err)]
    fn append(&self, topic: &str, record: OutboundRecord) -> Result<Delivered, Undelivered> {
        let default = self.shared.default_partitions;
        let mut state = self.state();
        let t = state.topic(topic, default);
        let count = t.partitions.len() as u32;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < count => p,
            (Some(p), _) => {
                let error = BackendError::Produce {
                    topic: topic.to_owned(),
                    source: format!("partition {p} does not exist (the topic has {count})").into(),
                };
                return Err(Undelivered::new(error, record));
            }
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => {
                t.round_robin = t.round_robin.wrapping_add(1);
                t.round_robin % count
            }
        };
        if t.failing_sends > 0 && t.failing_partition.is_none_or(|p| p == partition) {
            t.failing_sends -= 1;
            let error = BackendError::Produce {
                topic: topic.to_owned(),
                source: "injected failure".into(),
            };
            return Err(Undelivered::new(error, record));
        }
        let log = &mut t.partitions[partition as usize];
        let offset = log.len() as u64;
        log.push(Record {
            partition,
            offset,
            timestamp_ms: Some(now_ms()),
            key: record.key,
            payload: record.payload,
            headers: record.headers,
        });
        t.changed.notify_waiters();
        Ok(Delivered { partition, offset })
    }
}
