//! The seam between policy and transport.
//!
//! The runtime decides what a failure means (next level, dead letter, headers, due time); a
//! backend only fetches, holds and resumes partitions, acknowledges and produces durably. A
//! backend is done when the conformance suite (`tests/conformance`) passes on it.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::error::BackendError;
use crate::headers::Headers;

pub mod memory;
mod tiered;

pub use tiered::{Tiered, TieredConsumer};

/// A name for the `n`th member this process made, unique across processes and hosts: host,
/// process id, a clock fraction (a pid reused after a restart), `n`. Backends whose members
/// need names of their own (Redis, PostgreSQL) take them from here.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn member_name(n: u64) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:08x}-{n}", std::process::id())
}

/// A message read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The broker's timestamp, epoch ms.
    pub timestamp_ms: Option<i64>,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The payload; `None` for a Kafka tombstone.
    pub payload: Option<Bytes>,
    /// The headers, in order.
    pub headers: Headers,
}

/// A message to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundRecord {
    /// The partition; `None` lets the backend pick by key.
    pub partition: Option<u32>,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Option<Bytes>,
    /// The headers.
    pub headers: Headers,
}

impl OutboundRecord {
    /// When a retry is due (epoch ms), from its `rk-due-at` header: the runtime writes it, a
    /// backend with a delay store (Redis) keeps the record out of sight until then, the others
    /// deliver it at once and the consumer holds the partition until it is due.
    ///
    /// ```
    /// use retry_kafka::backend::OutboundRecord;
    ///
    /// let mut record = OutboundRecord::default();
    /// assert_eq!(record.due_at_ms(), None);
    /// record.headers.insert("rk-due-at", "1700000010000");
    /// assert_eq!(record.due_at_ms(), Some(1_700_000_010_000));
    /// ```
    pub fn due_at_ms(&self) -> Option<i64> {
        crate::headers::due_at_ms(&self.headers)
    }
}

/// What a topic is for in a handler's topology. The runtime names it wherever a backend may
/// treat topics differently: [`Tiered`] keeps retry levels, dead letters and parked entries on
/// its second backend, Kafka may keep them on a cluster of their own, Redis keeps a retry level's records
/// in a delay set until due.
///
/// ```
/// use retry_kafka::backend::TopicRole;
///
/// assert_eq!(TopicRole::of_level(0), TopicRole::Main);
/// assert_eq!(TopicRole::of_level(2), TopicRole::Retry { level: 2 });
/// assert!(TopicRole::DeadLetter.is_derived() && !TopicRole::Main.is_derived());
/// assert!(TopicRole::Parked.is_derived());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopicRole {
    /// A main topic: what producers write and a handler's group reads first.
    Main,
    /// Retry level `level` (1-based) of a handler.
    Retry {
        /// The level, 1 for the first retry.
        level: u32,
    },
    /// A handler's dead-letter queue.
    DeadLetter,
    /// A handler's parking queue: dead letters that were replayed and failed again, kept for
    /// a person instead of cycling through replays.
    Parked,
}

impl TopicRole {
    /// The role of a handler's level `level`: 0 is the main topic, `n` retry level `n`.
    pub fn of_level(level: u32) -> Self {
        match level {
            0 => TopicRole::Main,
            level => TopicRole::Retry { level },
        }
    }

    /// Whether the topic is a retry level, a dead-letter or a parking queue: written only by
    /// the runtime (and by the replay tool).
    pub fn is_derived(self) -> bool {
        !matches!(self, TopicRole::Main)
    }
}

/// Where a produced message landed, once the broker acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
}

/// What a consumer asks the backend for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic to consume.
    pub topic: String,
    /// What the topic is for.
    pub role: TopicRole,
    /// The consumer group.
    pub group: String,
}

/// What a consumer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fetched {
    /// A message.
    Record(Record),
    /// These partitions now belong to this consumer.
    Assigned(Vec<u32>),
    /// These partitions were taken away; acknowledgements for them are ignored from now on.
    Revoked(Vec<u32>),
}

/// A hand-off under way: resolves once the next hop is durably written (see
/// [`Consumer::hand_off`]). It owns what it needs, so many can be in flight at once.
pub type HandOff = Pin<Box<dyn Future<Output = Result<Delivered, BackendError>> + Send>>;

/// One member of a consumer group, reading one topic.
pub trait Consumer: Send + 'static {
    /// The next message or assignment change. Cancel-safe: dropping the future loses nothing.
    fn next(&mut self) -> impl Future<Output = Result<Fetched, BackendError>> + Send;

    /// Stops delivering `partition` until [`resume`](Consumer::resume); the first message
    /// delivered after it is the one at `offset` (or the next one that exists). The runtime
    /// holds a partition after the last message it keeps, so nothing is delivered twice. A
    /// backend may keep what it fetched already and deliver it first on resume (Kafka), or
    /// read it again (Redis, in-process). The consumer stays in its group while partitions are
    /// held.
    fn hold(&mut self, partition: u32, offset: u64);

    /// Delivers `partition` again, from the offset it was held at.
    fn resume(&mut self, partition: u32);

    /// Starts handing the message delivered at `partition`/`offset` on: writes `record` to
    /// `topic` (the next retry level or the dead-letter queue). The returned future resolves
    /// once the write is durable (broker acknowledgement awaited); the runtime acknowledges the
    /// source only then, and tries a failed hand-off again later. Hand-offs started one after
    /// another to one partition of `topic` are written in that order. A backend that can write
    /// the next hop and acknowledge the source in one step (Redis) does so here.
    ///
    /// The future does not borrow the consumer: the runtime keeps a window of hand-offs in
    /// flight instead of waiting for each in line.
    fn hand_off(
        &mut self,
        partition: u32,
        offset: u64,
        topic: &str,
        role: TopicRole,
        record: &OutboundRecord,
    ) -> HandOff;

    /// Marks every offset up to and including `offset` on `partition` as done.
    fn ack(&mut self, partition: u32, offset: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Commits what was acknowledged and leaves the group.
    fn close(self) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// Topics: how many partitions they have, creating them, and how far a group is behind.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, TopicAdmin, TopicRole};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let broker = InMemory::new();
/// let level = TopicRole::Retry { level: 1 };
/// TopicAdmin::create_topic(&broker, "orders.billing.retry.1", level, 4).await?;
/// assert_eq!(TopicAdmin::partitions(&broker, "orders.billing.retry.1", level).await?, Some(4));
/// assert_eq!(TopicAdmin::lag(&broker, "orders.billing.retry.1", level, "orders.billing.retry.1").await?, 0);
/// # Ok(()) }
/// ```
pub trait TopicAdmin: Send + Sync {
    /// The partition count of `topic`, or `None` if it does not exist.
    fn partitions(
        &self,
        topic: &str,
        role: TopicRole,
    ) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send;

    /// Creates `topic` with `partitions` partitions (no error if it already exists).
    fn create_topic(
        &self,
        topic: &str,
        role: TopicRole,
        partitions: u32,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Messages of `topic` that `group` has not committed yet (consumer lag).
    fn lag(
        &self,
        topic: &str,
        role: TopicRole,
        group: &str,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// The partition count a topic gets when it is first written or read, for a transport that
    /// creates topics on use (Redis, in-process); `None` where topics are created beforehand
    /// (Kafka). The runtime creates a missing main topic with it at start.
    fn default_partitions(&self) -> Option<u32> {
        None
    }
}

/// Producing: one message written durably.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, OutboundRecord, Publish, TopicRole};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let broker = InMemory::new();
/// let record = OutboundRecord { key: Some("42".into()), payload: Some("{}".into()), ..Default::default() };
/// let delivered = broker.send("orders", TopicRole::Main, record).await?;
/// assert_eq!(delivered.offset, 0);
/// # Ok(()) }
/// ```
pub trait Publish: Send + Sync {
    /// Produces one message and waits until the broker has durably accepted it.
    fn send(
        &self,
        topic: &str,
        role: TopicRole,
        record: OutboundRecord,
    ) -> impl Future<Output = Result<Delivered, BackendError>> + Send;
}

/// Reading a topic outside any consumer group, for tools: listing dead letters, checking what
/// a replay already wrote. Nothing is acknowledged or committed.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, Browse, OutboundRecord, Publish, TopicRole};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let broker = InMemory::new();
/// broker.create_topic("orders.billing.dlq", 1);
/// for n in 0..3u8 {
///     let record = OutboundRecord { payload: Some(vec![n].into()), ..Default::default() };
///     broker.send("orders.billing.dlq", TopicRole::DeadLetter, record).await?;
/// }
/// assert_eq!(broker.end_offsets_of("orders.billing.dlq", TopicRole::DeadLetter).await?, [3]);
/// let tail = broker.read("orders.billing.dlq", TopicRole::DeadLetter, &[1]).await?;
/// assert_eq!(tail.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2]);
/// # Ok(()) }
/// ```
pub trait Browse: Send + Sync {
    /// The records of `topic`, partition by partition in offset order, from offset `from[p]` of
    /// each partition `p` (from the first record kept where `from` has no entry) up to the end
    /// as it is when the read starts. Empty if the topic does not exist.
    fn read(
        &self,
        topic: &str,
        role: TopicRole,
        from: &[u64],
    ) -> impl Future<Output = Result<Vec<Record>, BackendError>> + Send;

    /// The next offset of each partition of `topic`: what a record written now would be
    /// after. Empty if the topic does not exist.
    fn end_offsets_of(
        &self,
        topic: &str,
        role: TopicRole,
    ) -> impl Future<Output = Result<Vec<u64>, BackendError>> + Send;
}

/// A transport: Kafka, Redis Streams, or the in-process [`InMemory`](crate::InMemory). Topic
/// admin and producing are traits of their own; this adds consumer groups.
pub trait Backend: TopicAdmin + Publish + Clone + 'static {
    /// This backend's consumer.
    type Consumer: Consumer;

    /// A short name for logs: `memory`, `kafka`, `redis`.
    fn name(&self) -> &'static str;

    /// Joins `subscription.group` as a new member reading `subscription.topic`.
    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> impl Future<Output = Result<Self::Consumer, BackendError>> + Send;
}

#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
