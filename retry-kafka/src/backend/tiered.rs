//! Main topics on one backend, retry levels and dead letters on another: Kafka for the
//! events, Redis for the waiting retries (exact delays in a sorted set, no extra Kafka topics)
//! or PostgreSQL (rows with a due time, feature `postgres`).

use std::sync::Arc;

use super::follow::Followers;
use super::{
    Backend, Browse, Consumer, Delivered, Fetched, HandOffId, HandOffReports, HandOffTasks, OutboundRecord,
    Page, Position, Publish, Record, RetryStore, Subscription, Topic, TopicAdmin, Undelivered,
};
use crate::error::BackendError;

/// A backend whose main topics live on the transport `M` and whose retry levels, dead letters
/// and parked entries live in the retry store `R`.
///
/// Every rule of the delivery contract holds across the two: a message leaves the main topic
/// only after the retry store has durably taken it, and hand-offs between retry levels are as
/// atomic as `R` makes them (on Redis: one transaction writes the next hop and acknowledges;
/// on PostgreSQL: one statement).
///
/// `M` must be a [`Backend`] and `R` a [`RetryStore`]: a store that is not a transport
/// (PostgreSQL) can only go second, which the compiler checks.
///
/// ```no_run
/// use retry_kafka::backend::Tiered;
/// use retry_kafka::backend::kafka::Kafka;
/// use retry_kafka::backend::redis::Redis;
/// use retry_kafka::App;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = Tiered::new(Kafka::from_env()?, Redis::from_env()?);
/// let app = App::builder().backend(backend).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tiered<M, R> {
    main: M,
    retries: R,
}

impl<M: Backend, R: RetryStore> Tiered<M, R> {
    /// Main topics on `main`, retry levels, dead letters and parked entries on `retries`.
    pub fn new(main: M, retries: R) -> Self {
        Tiered { main, retries }
    }

    /// The backend of the main topics.
    pub fn main(&self) -> &M {
        &self.main
    }

    /// The store of the retry levels, dead letters and parked entries.
    pub fn retries(&self) -> &R {
        &self.retries
    }
}

/// A consumer of a [`Tiered`] backend: of a main topic, or of a retry level.
///
/// ```no_run
/// use retry_kafka::backend::{Backend, Subscription, Tiered, TieredConsumer, Topic};
/// use retry_kafka::backend::kafka::Kafka;
/// use retry_kafka::backend::redis::Redis;
///
/// # async fn inspect(backend: Tiered<Kafka, Redis>) -> Result<(), retry_kafka::error::BackendError> {
/// let subscription = Subscription { topic: Topic::main("orders"), group: "audit".into() };
/// match backend.subscribe(subscription).await? {
///     TieredConsumer::Main { .. } => println!("orders is read from Kafka"),
///     TieredConsumer::Retry(_redis) => println!("orders is a retry level, read from Redis"),
/// }
/// # Ok(()) }
/// ```
pub enum TieredConsumer<M: Backend, R: RetryStore> {
    /// Reads a main topic; hands failures to the retry store.
    Main {
        /// The main topic's consumer.
        consumer: M::Consumer,
        /// Its failures on their way to the retry store (every retry level, the dead-letter
        /// and the parking queue).
        hand_offs: TieredHandOffs,
    },
    /// Reads a retry level.
    Retry(R::Consumer),
}

impl<M: Backend, R: RetryStore> Consumer for TieredConsumer<M, R> {
    async fn next(&mut self) -> Result<Fetched, BackendError> {
        match self {
            TieredConsumer::Main { consumer, .. } => consumer.next().await,
            TieredConsumer::Retry(c) => c.next().await,
        }
    }

    /// From a main topic, a durable write to the retry store (after which the runtime
    /// acknowledges the main topic's offset); from a retry level, the retry store's own
    /// hand-off (atomic on Redis and PostgreSQL).
    fn hand_off(&mut self, id: HandOffId, from: Position, to: Topic, record: OutboundRecord) {
        match self {
            TieredConsumer::Main { hand_offs, .. } => hand_offs.tasks.start(id, (to, record)),
            TieredConsumer::Retry(c) => c.hand_off(id, from, to, record),
        }
    }

    fn hand_off_reports(&self) -> &HandOffReports {
        match self {
            TieredConsumer::Main { hand_offs, .. } => &hand_offs.reports,
            TieredConsumer::Retry(c) => c.hand_off_reports(),
        }
    }

    fn hold(&mut self, partition: u32, offset: u64) {
        match self {
            TieredConsumer::Main { consumer, .. } => consumer.hold(partition, offset),
            TieredConsumer::Retry(c) => c.hold(partition, offset),
        }
    }

    fn resume(&mut self, partition: u32) {
        match self {
            TieredConsumer::Main { consumer, .. } => consumer.resume(partition),
            TieredConsumer::Retry(c) => c.resume(partition),
        }
    }

    async fn ack(&mut self, partition: u32, offset: u64) -> Result<(), BackendError> {
        match self {
            TieredConsumer::Main { consumer, .. } => consumer.ack(partition, offset).await,
            TieredConsumer::Retry(c) => c.ack(partition, offset).await,
        }
    }

    /// Whichever consumer reads the level says.
    fn commits_behind(&self) -> bool {
        match self {
            TieredConsumer::Main { consumer, .. } => consumer.commits_behind(),
            TieredConsumer::Retry(c) => c.commits_behind(),
        }
    }

    async fn close(self) -> Result<(), BackendError> {
        match self {
            TieredConsumer::Main {
                consumer,
                mut hand_offs,
            } => {
                hand_offs.tasks.close().await;
                consumer.close().await
            }
            TieredConsumer::Retry(c) => c.close().await,
        }
    }
}

/// A main topic's hand-offs to the retry store: `Publish::send`s run by a task of the
/// consumer's own, many at once, each reported by its id. Part of
/// [`TieredConsumer::Main`]; closed with it.
///
/// ```no_run
/// use retry_kafka::backend::{Backend, Consumer, Subscription, Tiered, TieredConsumer, Topic};
/// use retry_kafka::backend::kafka::Kafka;
/// use retry_kafka::backend::redis::Redis;
///
/// # async fn inspect(backend: Tiered<Kafka, Redis>) -> Result<(), retry_kafka::error::BackendError> {
/// let subscription = Subscription { topic: Topic::main("orders"), group: "audit".into() };
/// if let TieredConsumer::Main { hand_offs, .. } = backend.subscribe(subscription).await? {
///     println!("{hand_offs:?}");
/// }
/// # Ok(()) }
/// ```
pub struct TieredHandOffs {
    tasks: HandOffTasks<(Topic, OutboundRecord)>,
    reports: HandOffReports,
}

impl TieredHandOffs {
    fn start<R: RetryStore>(retries: R) -> Self {
        let reports = HandOffReports::new();
        let tasks = HandOffTasks::spawn(reports.clone(), move |(to, record): (Topic, OutboundRecord)| {
            let retries = retries.clone();
            // `Publish::send` takes the record, so a copy is kept to give back on failure.
            let kept = record.clone();
            async move {
                let sent = retries.send(&to, record).await;
                sent.map_err(|error| Undelivered::new(error, kept))
            }
        });
        Self { tasks, reports }
    }
}

impl std::fmt::Debug for TieredHandOffs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredHandOffs")
            .field("reports", &self.reports)
            .finish()
    }
}

/// Derived topics live in the retry store, main topics on the main backend.
impl<M: Backend, R: RetryStore> TopicAdmin for Tiered<M, R> {
    async fn partitions(&self, topic: &Topic) -> Result<Option<u32>, BackendError> {
        if topic.role.is_derived() {
            TopicAdmin::partitions(&self.retries, topic).await
        } else {
            TopicAdmin::partitions(&self.main, topic).await
        }
    }

    async fn create_topic(&self, topic: &Topic, partitions: u32) -> Result<(), BackendError> {
        if topic.role.is_derived() {
            TopicAdmin::create_topic(&self.retries, topic, partitions).await
        } else {
            TopicAdmin::create_topic(&self.main, topic, partitions).await
        }
    }

    /// Main topics are what this default is for: the main backend's.
    fn default_partitions(&self) -> Option<u32> {
        self.main.default_partitions()
    }
}

impl<M: Backend + Browse, R: RetryStore> Browse for Tiered<M, R> {
    async fn read(&self, topic: &Topic, from: &[u64]) -> Result<Vec<Record>, BackendError> {
        if topic.role.is_derived() {
            self.retries.read(topic, from).await
        } else {
            self.main.read(topic, from).await
        }
    }

    async fn end_offsets_of(&self, topic: &Topic) -> Result<Vec<u64>, BackendError> {
        if topic.role.is_derived() {
            self.retries.end_offsets_of(topic).await
        } else {
            self.main.end_offsets_of(topic).await
        }
    }

    async fn read_page(&self, topic: &Topic, page: Page) -> Result<Vec<Record>, BackendError> {
        if topic.role.is_derived() {
            self.retries.read_page(topic, page).await
        } else {
            self.main.read_page(topic, page).await
        }
    }
}

impl<M: Backend, R: RetryStore> Publish for Tiered<M, R> {
    async fn send(&self, topic: &Topic, record: OutboundRecord) -> Result<Delivered, BackendError> {
        if topic.role.is_derived() {
            self.retries.send(topic, record).await
        } else {
            self.main.send(topic, record).await
        }
    }
}

impl<M: Backend, R: RetryStore> Backend for Tiered<M, R> {
    type Consumer = TieredConsumer<M, R>;

    fn name(&self) -> &'static str {
        "tiered"
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Self::Consumer, BackendError> {
        Ok(if subscription.topic.role.is_derived() {
            debug_assert_eq!(
                *subscription.topic.name, subscription.group,
                "a level's group is the level"
            );
            TieredConsumer::Retry(self.retries.consume(subscription.topic).await?)
        } else {
            TieredConsumer::Main {
                consumer: self.main.subscribe(subscription).await?,
                hand_offs: TieredHandOffs::start(self.retries.clone()),
            }
        })
    }

    /// When the transport's main members lead and the store's level workers follow them
    /// ([`RetryStore::can_follow`]): a key-ordered handler's holds then live in one process.
    fn keeps_partitions_together(&self) -> bool {
        self.leads_and_follows()
    }

    fn leads_and_follows(&self) -> bool {
        self.main.leads_and_follows() && self.retries.can_follow()
    }

    async fn subscribe_leading(
        &self,
        subscription: Subscription,
        followers: Arc<Followers>,
    ) -> Result<Self::Consumer, BackendError> {
        Ok(TieredConsumer::Main {
            consumer: self.main.subscribe_leading(subscription, followers).await?,
            hand_offs: TieredHandOffs::start(self.retries.clone()),
        })
    }

    async fn subscribe_following(
        &self,
        subscription: Subscription,
        followers: &Arc<Followers>,
    ) -> Result<Self::Consumer, BackendError> {
        debug_assert!(subscription.topic.role.is_derived(), "a follower reads a level");
        let consumer = self
            .retries
            .consume_following(subscription.topic, followers)
            .await?;
        Ok(TieredConsumer::Retry(consumer))
    }

    async fn unacknowledged(
        &self,
        topic: &Topic,
        group: &str,
        partitions: &[u32],
    ) -> Result<Vec<Record>, BackendError> {
        if topic.role.is_derived() {
            RetryStore::unacknowledged(&self.retries, topic, partitions).await
        } else {
            self.main.unacknowledged(topic, group, partitions).await
        }
    }

    /// A retry level's lag is its backlog in the store: the level's group is the level.
    async fn lag(&self, topic: &Topic, group: &str) -> Result<u64, BackendError> {
        if topic.role.is_derived() {
            self.retries.backlog(topic).await
        } else {
            self.main.lag(topic, group).await
        }
    }
}
