//! The seam between policy and transport.
//!
//! The runtime decides what a failure means (next level, dead letter, headers, due time); a
//! backend only fetches, holds and resumes partitions, acknowledges and produces durably. A
//! backend is done when the conformance suite (`tests/conformance`) passes on it.

use std::future::Future;
use std::sync::Arc;

use crate::error::BackendError;

pub mod follow;
use follow::Followers;
mod hand_off;
pub mod memory;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod partition_counts;
mod record;
mod tiered;

/// The policy decides a topic's role; the seam carries it in every [`Topic`].
pub use crate::policy::TopicRole;
pub(crate) use hand_off::HandOffTasks;
pub use hand_off::{HandOffId, HandOffReports, HandedOff};
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use partition_counts::PartitionCounts;
pub use record::{
    Delivered, Fetched, OutboundRecord, Output, Page, Position, Record, Subscription, Topic, Undelivered,
};
pub use tiered::{Tiered, TieredConsumer, TieredHandOffs};

/// A name for the `n`th member this process made, unique across processes and hosts: host,
/// process id, a clock fraction (a pid reused after a restart), `n`. Backends whose members
/// need names of their own (Redis, PostgreSQL) take them from here.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn member_name(n: u64) -> String {
    let host = crate::config::host_name();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:08x}-{n}", std::process::id())
}

/// The refusal of a backend whose consumers cannot lead or follow (`Followers`).
fn cannot_follow(backend: &'static str, topic: &Topic) -> BackendError {
    BackendError::Transport {
        backend,
        source: format!(
            "cannot read {topic} together with a main consumer's partitions (ordering = \"key\")"
        )
        .into(),
    }
}

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

    /// Starts handing the message delivered at `from` on: writes `record` to `to` (the next
    /// retry level, the dead-letter or the parking queue), and reports the result as `id` into
    /// [`hand_off_reports`](Consumer::hand_off_reports) once the write is durable (broker
    /// acknowledgement awaited) or failed; exactly one report per hand-off, unless the consumer
    /// is dropped first. The runtime acknowledges the source only on success, and tries a
    /// failed hand-off again later. Hand-offs started one after another to one partition of
    /// `to` are written in that order. A backend that can write the next hop and acknowledge
    /// the source in one step (Redis, PostgreSQL) does so here.
    ///
    /// Nothing is awaited: the runtime keeps a window of hand-offs in flight and takes their
    /// reports in batches, with no future per hand-off. A failed write gives the record back
    /// ([`Undelivered`]): the runtime keeps no copy to try again with.
    fn hand_off(&mut self, id: HandOffId, from: Position, to: Topic, record: OutboundRecord);

    /// Where [`hand_off`](Consumer::hand_off) reports: the runtime takes a clone once and
    /// drains it each round of its loop.
    fn hand_off_reports(&self) -> &HandOffReports;

    /// Whether this consumer writes a successful attempt's outputs itself
    /// ([`emit`](Consumer::emit)): pipelined and reported like hand-offs, so the runtime
    /// waits for none of them in line, and in the transaction that commits their source's
    /// offset where the consumer has one (Kafka; exactly-once). Otherwise (the default) the
    /// runtime publishes them, awaited, before the attempt counts as a success. Read once,
    /// when the consumer starts.
    fn writes_outputs(&self) -> bool {
        false
    }

    /// Writes what a successful attempt of the message at `from` emitted, in order (in the
    /// same transaction as its offset, where there is one), and reports as `id` into
    /// [`hand_off_reports`](Consumer::hand_off_reports) once all are durable or one failed,
    /// like a hand-off (the runtime acknowledges the source after it, and tries again after a
    /// failure). Called only when [`writes_outputs`](Consumer::writes_outputs); the default
    /// refuses.
    ///
    /// ```
    /// use retry_kafka::backend::{memory::InMemory, Backend, Consumer, HandOffId, Position, Subscription, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
    /// let broker = InMemory::new();
    /// let subscription = Subscription { topic: Topic::main("orders"), group: "billing".into() };
    /// let mut consumer = broker.subscribe(subscription).await?;
    /// assert!(!consumer.writes_outputs());
    /// consumer.emit(HandOffId(1), Position { partition: 0, offset: 0 }, Vec::new());
    /// let mut finished = Vec::new();
    /// consumer.hand_off_reports().wait(&mut finished).await;
    /// assert!(finished[0].result.is_err());
    /// # Ok(()) }
    /// ```
    fn emit(&mut self, id: HandOffId, from: Position, outputs: Vec<Output>) {
        let _ = (from, outputs);
        let error = BackendError::Transport {
            backend: "consumer",
            source: "this consumer does not write outputs: the runtime publishes them".into(),
        };
        self.hand_off_reports()
            .report(id, Err(Undelivered::new(error, OutboundRecord::default())));
    }

    /// Marks every offset up to and including `offset` on `partition` as done.
    fn ack(&mut self, partition: u32, offset: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Commits what was acknowledged and leaves the group.
    fn close(self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Whether work this member acknowledged has waited too long for its commit (the broker or
    /// its group coordinator is gone, say): everything run since would run again after a
    /// restart, so the runtime starts no attempt while it is, and goes on once commits get
    /// through. Read once per round of the consumer loop: a load, not a call to the broker.
    ///
    /// A backend that commits as it acknowledges (in-process, Redis, PostgreSQL) never is: the
    /// default. Kafka commits asynchronously and says so past its bounds
    /// (`KafkaBuilder::at_risk_limit`, `KafkaBuilder::at_risk_records`).
    ///
    /// ```
    /// use retry_kafka::backend::{memory::InMemory, Backend, Consumer, Subscription, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
    /// let broker = InMemory::new();
    /// let subscription = Subscription { topic: Topic::main("orders"), group: "billing".into() };
    /// let consumer = broker.subscribe(subscription).await?;
    /// assert!(!consumer.commits_behind());
    /// # Ok(()) }
    /// ```
    fn commits_behind(&self) -> bool {
        false
    }
}

/// Topics: how many partitions they have and creating them. Transports and retry stores alike.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, Backend, Topic, TopicAdmin, TopicRole};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let broker = InMemory::new();
/// let level = Topic::new("orders.billing.retry.1", TopicRole::Retry { level: 1 });
/// TopicAdmin::create_topic(&broker, &level, 4).await?;
/// assert_eq!(TopicAdmin::partitions(&broker, &level).await?, Some(4));
/// assert_eq!(broker.lag(&level, "orders.billing.retry.1").await?, 0);
/// # Ok(()) }
/// ```
pub trait TopicAdmin: Send + Sync {
    /// The partition count of `topic`, or `None` if it does not exist.
    fn partitions(&self, topic: &Topic) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send;

    /// Creates `topic` with `partitions` partitions (no error if it already exists).
    fn create_topic(
        &self,
        topic: &Topic,
        partitions: u32,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

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
/// use retry_kafka::backend::{memory::InMemory, OutboundRecord, Publish, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let broker = InMemory::new();
/// let record = OutboundRecord { key: Some("42".into()), payload: Some("{}".into()), ..Default::default() };
/// let delivered = broker.send(&Topic::main("orders"), record).await?;
/// assert_eq!(delivered.offset, 0);
/// # Ok(()) }
/// ```
pub trait Publish: Send + Sync {
    /// Produces one message and waits until the broker has durably accepted it.
    fn send(
        &self,
        topic: &Topic,
        record: OutboundRecord,
    ) -> impl Future<Output = Result<Delivered, BackendError>> + Send;
}

/// Reading a topic outside any consumer group, for tools and tests: listing dead letters,
/// checking what a replay already wrote. Nothing is acknowledged or committed. The one way to
/// read a topic on every backend.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, Browse, OutboundRecord, Publish, Topic, TopicRole};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let broker = InMemory::new();
/// broker.create_topic("orders.billing.dlq", 1);
/// let dlq = Topic::new("orders.billing.dlq", TopicRole::DeadLetter);
/// for n in 0..3u8 {
///     let record = OutboundRecord { payload: Some(vec![n].into()), ..Default::default() };
///     broker.send(&dlq, record).await?;
/// }
/// assert_eq!(broker.end_offsets_of(&dlq).await?, [3]);
/// let tail = broker.read(&dlq, &[1]).await?;
/// assert_eq!(tail.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2]);
/// assert_eq!(broker.read(&dlq, &[]).await?.len(), 3, "everything kept");
/// # Ok(()) }
/// ```
pub trait Browse: Send + Sync {
    /// The records of `topic`, partition by partition in offset order, from offset `from[p]` of
    /// each partition `p` (from the first record kept where `from` has no entry: `&[]` reads
    /// everything) up to the end as it is when the read starts. Empty if the topic does not
    /// exist. Retries a store keeps out of sight until due (a Redis retry level's delay set)
    /// come last, with offset `u64::MAX`: they have none yet.
    fn read(
        &self,
        topic: &Topic,
        from: &[u64],
    ) -> impl Future<Output = Result<Vec<Record>, BackendError>> + Send;

    /// The next offset of each partition of `topic`: what a record written now would be
    /// after. Empty if the topic does not exist.
    fn end_offsets_of(&self, topic: &Topic) -> impl Future<Output = Result<Vec<u64>, BackendError>> + Send;

    /// One page of a read that keeps memory bounded: up to [`Page::limit`] records of the
    /// page's partition of `topic`, in offset order, in the page's range (from the first record
    /// kept, if that is later); empty when there is none. Retries waiting out of sight (a Redis
    /// delay set) are not in it. [`dead_letters::Scan`](crate::dead_letters::Scan) pages
    /// through a queue with it.
    ///
    /// This default reads the rest of the partition with [`read`](Self::read) and keeps a
    /// page of it: correct, but not bounded; a backend that can read a page (Kafka, Redis,
    /// PostgreSQL) reads just that.
    fn read_page(
        &self,
        topic: &Topic,
        page: Page,
    ) -> impl Future<Output = Result<Vec<Record>, BackendError>> + Send {
        async move {
            let partitions = self.end_offsets_of(topic).await?.len();
            let partition = page.partition();
            if partition as usize >= partitions {
                return Ok(Vec::new());
            }
            let mut starts = vec![u64::MAX; partitions];
            starts[partition as usize] = page.from();
            let mut records = self.read(topic, &starts).await?;
            records.retain(|r| r.partition == partition && page.holds(r.offset));
            records.truncate(page.limit());
            Ok(records)
        }
    }
}

/// A transport: Kafka, Redis Streams, the in-process [`InMemory`](crate::InMemory), or a
/// [`Tiered`] pair of a transport and a retry store. Topic admin and producing are traits of
/// their own; this adds consumer groups, on any topic, main topics included. What an
/// [`App`](crate::App) runs on.
///
/// A [`RetryStore`] that is not a transport (PostgreSQL) does not implement it, so it cannot be
/// given to [`AppBuilder::backend`](crate::app::AppBuilder::backend) or put first in a
/// [`Tiered`]: that is a compile error, not a failure at start.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a backend: it cannot carry main topics and their consumer groups",
    label = "not a transport",
    note = "a retry store (such as `Postgres`) keeps retries behind a transport: put it second, \
            `Tiered::new(transport, store)`"
)]
pub trait Backend: TopicAdmin + Publish + Clone + 'static {
    /// This backend's consumer.
    type Consumer: Consumer;

    /// A short name for logs: `memory`, `kafka`, `redis`, `tiered`.
    fn name(&self) -> &'static str;

    /// Joins `subscription.group` as a new member reading `subscription.topic`.
    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> impl Future<Output = Result<Self::Consumer, BackendError>> + Send;

    /// Whether a key-ordered handler (`ordering = "key"`) can run on this backend: the holds
    /// of a partition's keys live in the process that consumes it, so every level of the
    /// handler must be consumed, partition for partition, by one process: the Kafka backend
    /// and the in-process broker give that with
    /// [`subscribe_together`](Self::subscribe_together).
    fn keeps_partitions_together(&self) -> bool {
        false
    }

    /// Subscribes a key-ordered handler's consumers together: `main` joins its group, and each
    /// of `followers` (its retry levels and held topic) reads, partition for partition, what
    /// the main member is assigned, and gives a partition up before the main member does.
    /// Needed where [`keeps_partitions_together`](Self::keeps_partitions_together) is true; the
    /// default links them through [`Followers`] ([`subscribe_following`](Self::subscribe_following)
    /// and [`subscribe_leading`](Self::subscribe_leading)).
    fn subscribe_together(
        &self,
        main: Subscription,
        followers: Vec<Subscription>,
    ) -> impl Future<Output = Result<Vec<Self::Consumer>, BackendError>> + Send {
        async move {
            // The followers first, so the main member's first assignment reaches them all.
            let links = Arc::new(Followers::default());
            let mut consumers = Vec::with_capacity(followers.len() + 1);
            for subscription in followers {
                consumers.push(self.subscribe_following(subscription, &links).await?);
            }
            consumers.insert(0, self.subscribe_leading(main, links).await?);
            Ok(consumers)
        }
    }

    /// Whether this backend's consumers lead and follow through [`Followers`]
    /// ([`subscribe_leading`](Self::subscribe_leading),
    /// [`subscribe_following`](Self::subscribe_following)), so that a [`Tiered`] pair of two
    /// such backends keeps a key-ordered handler's partitions together across them.
    fn leads_and_follows(&self) -> bool {
        false
    }

    /// Joins `subscription.group` as a main member that tells `followers` each partition it
    /// takes, and waits for them to give one up before it does. See
    /// [`leads_and_follows`](Self::leads_and_follows); the default refuses.
    fn subscribe_leading(
        &self,
        subscription: Subscription,
        followers: Arc<Followers>,
    ) -> impl Future<Output = Result<Self::Consumer, BackendError>> + Send {
        let _ = followers;
        let error = cannot_follow(self.name(), &subscription.topic);
        async move { Err(error) }
    }

    /// A consumer of `subscription` that joins no group: it reads the partitions the main
    /// member of `followers` holds. See [`leads_and_follows`](Self::leads_and_follows); the
    /// default refuses.
    fn subscribe_following(
        &self,
        subscription: Subscription,
        followers: &Arc<Followers>,
    ) -> impl Future<Output = Result<Self::Consumer, BackendError>> + Send {
        let _ = followers;
        let error = cannot_follow(self.name(), &subscription.topic);
        async move { Err(error) }
    }

    /// The records of `partitions` of `topic` that `group` has not acknowledged, oldest first
    /// per partition: what a key-ordered handler's holds are counted from when its main
    /// consumer is assigned those partitions, so a restart or a rebalance keeps them. Needed
    /// where [`keeps_partitions_together`](Self::keeps_partitions_together) is true; elsewhere
    /// it is never asked (the default refuses).
    fn unacknowledged(
        &self,
        topic: &Topic,
        group: &str,
        partitions: &[u32],
    ) -> impl Future<Output = Result<Vec<Record>, BackendError>> + Send {
        let _ = partitions;
        let error = BackendError::Transport {
            backend: self.name(),
            source: format!("cannot list the records of {topic} that group {group:?} has not acknowledged")
                .into(),
        };
        async move { Err(error) }
    }

    /// Messages of `topic` that `group` has not committed yet (consumer lag).
    fn lag(&self, topic: &Topic, group: &str) -> impl Future<Output = Result<u64, BackendError>> + Send;
}

/// The second half of a [`Tiered`] backend: where retry levels, dead letters and parked
/// entries live. It takes a failure's record (a [`Publish`] from the main topic's consumer),
/// lets a level's consumers take what is due and hand it on with its source in one step
/// ([`consume`](RetryStore::consume), then [`Consumer::hand_off`]), and is read by tools
/// ([`Browse`]).
///
/// Every transport that can be browsed is a retry store too (Kafka, Redis, the in-process
/// broker: `Tiered<Kafka, Redis>`); PostgreSQL is a retry store only. A retry store is only ever
/// asked about derived topics ([`TopicRole::is_derived`]), and a retry level is read by one
/// group, named like the level, so neither main topics nor groups appear here.
///
/// ```
/// use retry_kafka::backend::{memory::InMemory, Consumer, Fetched, OutboundRecord, Publish, RetryStore, Topic, TopicRole};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), retry_kafka::error::BackendError> {
/// let store = InMemory::new();
/// let level = Topic::new("orders.billing.retry.1", TopicRole::Retry { level: 1 });
/// store.send(&level, OutboundRecord { partition: Some(0), ..Default::default() }).await?;
/// assert_eq!(store.backlog(&level).await?, 1);
/// let mut worker = store.consume(level.clone()).await?;
/// loop {
///     if let Fetched::Record(record) = worker.next().await? {
///         worker.ack(record.partition, record.offset).await?;
///         break;
///     }
/// }
/// assert_eq!(store.backlog(&level).await?, 0);
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot keep retries: it is not a retry store",
    label = "not a retry store",
    note = "the second half of `Tiered::new(transport, store)` is a `RetryStore`: Kafka, Redis, \
            `InMemory` or `Postgres`"
)]
pub trait RetryStore: TopicAdmin + Publish + Browse + Clone + 'static {
    /// A worker of a retry level.
    type Consumer: Consumer;

    /// Joins the workers of retry level `level`, which take its records as they come due.
    fn consume(&self, level: Topic) -> impl Future<Output = Result<Self::Consumer, BackendError>> + Send;

    /// Records of `topic` not handled yet, due or not: a level's lag.
    fn backlog(&self, topic: &Topic) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// Whether a level's workers can read, partition for partition, what a main member of the
    /// transport holds ([`consume_following`](Self::consume_following)): a key-ordered handler
    /// runs on a [`Tiered`] pair only then.
    fn can_follow(&self) -> bool {
        false
    }

    /// The workers of `level` (a retry level or a held topic) of a key-ordered handler: they
    /// read only the partitions the main member of `followers` holds. The default refuses.
    fn consume_following(
        &self,
        level: Topic,
        followers: &Arc<Followers>,
    ) -> impl Future<Output = Result<Self::Consumer, BackendError>> + Send {
        let _ = followers;
        let error = cannot_follow("retry store", &level);
        async move { Err(error) }
    }

    /// The records of `partitions` of `topic` not handled yet
    /// ([`Backend::unacknowledged`], the level's group being the level). Needed where
    /// [`can_follow`](Self::can_follow) is true; the default refuses.
    fn unacknowledged(
        &self,
        topic: &Topic,
        partitions: &[u32],
    ) -> impl Future<Output = Result<Vec<Record>, BackendError>> + Send {
        let _ = partitions;
        let error = BackendError::Transport {
            backend: "retry store",
            source: format!("cannot list the records of {topic} not handled yet").into(),
        };
        async move { Err(error) }
    }
}

/// A transport keeps retries as topics read by a group named like the level (the runtime's
/// naming: a level's group is its topic).
impl<B: Backend + Browse> RetryStore for B {
    type Consumer = B::Consumer;

    async fn consume(&self, level: Topic) -> Result<B::Consumer, BackendError> {
        let group = level.name.to_string();
        self.subscribe(Subscription { topic: level, group }).await
    }

    async fn backlog(&self, topic: &Topic) -> Result<u64, BackendError> {
        self.lag(topic, &topic.name).await
    }

    fn can_follow(&self) -> bool {
        self.leads_and_follows()
    }

    async fn consume_following(
        &self,
        level: Topic,
        followers: &Arc<Followers>,
    ) -> Result<B::Consumer, BackendError> {
        let group = level.name.to_string();
        self.subscribe_following(Subscription { topic: level, group }, followers)
            .await
    }

    async fn unacknowledged(&self, topic: &Topic, partitions: &[u32]) -> Result<Vec<Record>, BackendError> {
        Backend::unacknowledged(self, topic, &topic.name, partitions).await
    }
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
