//! Main topics on one backend, retry levels and dead letters on another: Kafka for the
//! events, Redis for the waiting retries (exact delays in a sorted set, no extra Kafka topics)
//! or PostgreSQL (rows with a due time, feature `postgres`).

use super::{
    Backend, Consumer, Delivered, Fetched, HandOff, OutboundRecord, Publish, Subscription, TopicAdmin,
    TopicRole,
};
use crate::error::BackendError;

/// A backend whose main topics live on `M` and whose retry and dead-letter topics live on `R`.
///
/// Every rule of the delivery contract holds across the two: a message leaves the main topic
/// only after the retry store has durably taken it, and hand-offs between retry levels are as
/// atomic as `R` makes them (on Redis: one transaction writes the next hop and acknowledges;
/// on PostgreSQL: one statement).
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

impl<M: Backend, R: Backend> Tiered<M, R> {
    /// Main topics on `main`, retry and dead-letter topics on `retries`.
    pub fn new(main: M, retries: R) -> Self {
        Tiered { main, retries }
    }

    /// The backend of the main topics.
    pub fn main(&self) -> &M {
        &self.main
    }

    /// The backend of the retry and dead-letter topics.
    pub fn retries(&self) -> &R {
        &self.retries
    }
}

/// A consumer of a [`Tiered`] backend: of a main topic, or of a retry level.
///
/// ```no_run
/// use retry_kafka::backend::{Backend, Subscription, Tiered, TieredConsumer, TopicRole};
/// use retry_kafka::backend::kafka::Kafka;
/// use retry_kafka::backend::redis::Redis;
///
/// # async fn inspect(backend: Tiered<Kafka, Redis>) -> Result<(), retry_kafka::error::BackendError> {
/// let subscription = Subscription { topic: "orders".into(), role: TopicRole::Main, group: "audit".into() };
/// match backend.subscribe(subscription).await? {
///     TieredConsumer::Main { .. } => println!("orders is read from Kafka"),
///     TieredConsumer::Retry(_redis) => println!("orders is a retry level, read from Redis"),
/// }
/// # Ok(()) }
/// ```
pub enum TieredConsumer<M: Backend, R: Backend> {
    /// Reads a main topic; hands failures to the retry store.
    Main {
        /// The main topic's consumer.
        consumer: M::Consumer,
        /// Where its failures go: every retry level and the dead-letter queue.
        retries: R,
    },
    /// Reads a retry level.
    Retry(R::Consumer),
}

impl<M: Backend, R: Backend> Consumer for TieredConsumer<M, R> {
    async fn next(&mut self) -> Result<Fetched, BackendError> {
        match self {
            TieredConsumer::Main { consumer, .. } => consumer.next().await,
            TieredConsumer::Retry(c) => c.next().await,
        }
    }

    /// From a main topic, a durable write to the retry store (after which the runtime
    /// acknowledges the main topic's offset); from a retry level, the retry store's own
    /// hand-off (atomic on Redis).
    fn hand_off(
        &mut self,
        partition: u32,
        offset: u64,
        topic: &str,
        role: TopicRole,
        record: &OutboundRecord,
    ) -> HandOff {
        match self {
            TieredConsumer::Main { retries, .. } => {
                let (retries, topic, record) = (retries.clone(), topic.to_owned(), record.clone());
                Box::pin(async move { retries.send(&topic, role, record).await })
            }
            TieredConsumer::Retry(c) => c.hand_off(partition, offset, topic, role, record),
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

    async fn close(self) -> Result<(), BackendError> {
        match self {
            TieredConsumer::Main { consumer, .. } => consumer.close().await,
            TieredConsumer::Retry(c) => c.close().await,
        }
    }
}

/// Retry levels and dead letters live on the retry store, main topics on the main backend.
impl<M: Backend, R: Backend> TopicAdmin for Tiered<M, R> {
    async fn partitions(&self, topic: &str, role: TopicRole) -> Result<Option<u32>, BackendError> {
        if role.is_derived() {
            self.retries.partitions(topic, role).await
        } else {
            self.main.partitions(topic, role).await
        }
    }

    async fn create_topic(&self, topic: &str, role: TopicRole, partitions: u32) -> Result<(), BackendError> {
        if role.is_derived() {
            self.retries.create_topic(topic, role, partitions).await
        } else {
            self.main.create_topic(topic, role, partitions).await
        }
    }

    async fn lag(&self, topic: &str, role: TopicRole, group: &str) -> Result<u64, BackendError> {
        if role.is_derived() {
            self.retries.lag(topic, role, group).await
        } else {
            self.main.lag(topic, role, group).await
        }
    }

    /// Main topics are what this default is for: the main backend's.
    fn default_partitions(&self) -> Option<u32> {
        self.main.default_partitions()
    }
}

impl<M: Backend + super::Browse, R: Backend + super::Browse> super::Browse for Tiered<M, R> {
    async fn read(
        &self,
        topic: &str,
        role: TopicRole,
        from: &[u64],
    ) -> Result<Vec<super::Record>, BackendError> {
        if role.is_derived() {
            self.retries.read(topic, role, from).await
        } else {
            self.main.read(topic, role, from).await
        }
    }

    async fn end_offsets_of(&self, topic: &str, role: TopicRole) -> Result<Vec<u64>, BackendError> {
        if role.is_derived() {
            self.retries.end_offsets_of(topic, role).await
        } else {
            self.main.end_offsets_of(topic, role).await
        }
    }
}

impl<M: Backend, R: Backend> Publish for Tiered<M, R> {
    async fn send(
        &self,
        topic: &str,
        role: TopicRole,
        record: OutboundRecord,
    ) -> Result<Delivered, BackendError> {
        if role.is_derived() {
            self.retries.send(topic, role, record).await
        } else {
            self.main.send(topic, role, record).await
        }
    }
}

impl<M: Backend, R: Backend> Backend for Tiered<M, R> {
    type Consumer = TieredConsumer<M, R>;

    fn name(&self) -> &'static str {
        "tiered"
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<Self::Consumer, BackendError> {
        Ok(if subscription.role.is_derived() {
            TieredConsumer::Retry(self.retries.subscribe(subscription).await?)
        } else {
            TieredConsumer::Main {
                consumer: self.main.subscribe(subscription).await?,
                retries: self.retries.clone(),
            }
        })
    }
}
