//! The Kafka backend, on rdkafka with a bundled librdkafka.
//!
//! Transport only: consumers that fetch, hold and resume partitions and store offsets; a
//! producer that waits for the broker's acknowledgement; topic provisioning at start. What a
//! failure means is decided by the runtime, as for every backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BlockingRetryable as _, ConstantBuilder, Retryable as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::{
    Backend, Delivered, HandOffId, HandOffReports, OutboundRecord, Output, Publish, Record, Subscription,
    Topic, TopicAdmin, TopicRole,
};
use crate::error::{BackendError, ConfigError};

mod browse;
mod builder;
mod consumer;
mod embedded;
mod refusals;
mod writer;

use super::follow::Followers;
pub use builder::KafkaBuilder;
pub use consumer::KafkaConsumer;
use consumer::Membership;
pub use embedded::EmbeddedKafka;
use refusals::{denied, Operation, Refusals};

/// `fetch.wait.max.ms` of retry-level consumers, unless set with
/// [`KafkaBuilder::retry_fetch_wait`] or `consumer_property`.
const RETRY_LEVEL_FETCH_WAIT_MS: u128 = 25;
/// `fetch.wait.max.ms` of the client that [`Browse::read`] reads with.
const READER_FETCH_WAIT_MS: &str = "10";
/// `queued.max.messages.kbytes` of that client.
const READER_QUEUED_KIB: &str = "16384";

/// Kafka through rdkafka.
///
/// ```no_run
/// use retry_kafka::backend::kafka::Kafka;
///
/// let kafka = Kafka::builder("broker-1:9092,broker-2:9092")
///     .consumer_property("session.timeout.ms", "10000")
///     .property("security.protocol", "SASL_SSL") // consumers and producer alike
///     .build()?;
/// # Ok::<(), retry_kafka::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Kafka {
    shared: Arc<Shared>,
}

struct Shared {
    // Clients first: fields drop in order, and an embedded cluster must outlive its clients.
    main: Cluster,
    /// Where retry levels and dead letters live, when not on `main`.
    retry: Option<Cluster>,
    consumer_properties: Vec<(String, String)>,
    replication_factor: i32,
    embedded: Option<Arc<EmbeddedKafka>>,
    commit_policy: consumer::CommitPolicy,
    /// [`KafkaBuilder::retry_fetch_wait`], when given.
    retry_fetch_wait: Option<Duration>,
    /// [`KafkaBuilder::exactly_once`].
    exactly_once: bool,
}

struct Cluster {
    brokers: String,
    /// Writes hand-offs and published records.
    writer: writer::Writer,
    /// The producer's settings, for a consumer's transactional producer (exactly-once).
    producer_config: ClientConfig,
    admin: AdminClient<Refusals>,
    /// Answers metadata questions without creating topics (a producer's metadata request may
    /// auto-create the topic it asks about). The first client an app's start uses.
    metadata: Arc<BaseConsumer<Refusals>>,
    /// The client [`Browse`] reads with, made on first use and kept: a tool's command reads
    /// page after page, and a client per call cost a connection to every broker each time.
    reader: Arc<std::sync::Mutex<Option<Reader>>>,
    /// A client per consumer group whose lag is asked, made on first use and kept: the app
    /// asks every second while a level settles messages.
    lag_clients: Arc<std::sync::Mutex<HashMap<String, Arc<BaseConsumer<Refusals>>>>>,
}

/// A client outside any group, and where its assignment would deliver next.
struct Reader {
    client: BaseConsumer<Refusals>,
    /// (topic, partition, offset) the assigned partition's next record is at, when a page
    /// stopped there: the next page of it goes on without assigning again (which would drop
    /// what librdkafka fetched ahead).
    next: Option<(String, i32, i64)>,
}

impl Kafka {
    /// Settings for the cluster at `brokers` (`bootstrap.servers`).
    pub fn builder(brokers: impl Into<String>) -> KafkaBuilder {
        KafkaBuilder {
            brokers: brokers.into(),
            retry_brokers: None,
            consumer_properties: Vec::new(),
            producer_properties: Vec::new(),
            replication_factor: -1,
            embedded: None,
            commit_policy: consumer::CommitPolicy::default(),
            retry_fetch_wait: None,
            exactly_once: false,
        }
    }

    /// A new embedded cluster (librdkafka's in-process mock) and a backend on it.
    pub fn embedded() -> Result<Self, BackendError> {
        let cluster = Arc::new(EmbeddedKafka::start(1)?);
        Self::on_embedded(cluster).map_err(|error| BackendError::Transport {
            backend: "kafka",
            source: error.into(),
        })
    }

    /// A backend on an embedded cluster that is already running.
    pub fn on_embedded(cluster: Arc<EmbeddedKafka>) -> Result<Self, ConfigError> {
        Self::embedded_builder(cluster).build()
    }

    /// Settings of a backend on an embedded cluster that is already running (its consumers
    /// tuned to join and rebalance fast), for more settings than [`on_embedded`](Self::on_embedded).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use retry_kafka::backend::kafka::{EmbeddedKafka, Kafka};
    ///
    /// let cluster = Arc::new(EmbeddedKafka::start(1)?);
    /// let kafka = Kafka::embedded_builder(cluster)
    ///     .commit_interval(Duration::from_millis(50))
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn embedded_builder(cluster: Arc<EmbeddedKafka>) -> KafkaBuilder {
        let mut builder = Self::builder(cluster.bootstrap_servers());
        for (key, value) in EmbeddedKafka::consumer_defaults() {
            builder = builder.consumer_property(key, value);
        }
        builder.embedded = Some(cluster);
        builder
    }

    /// The embedded cluster this backend runs on, if any.
    pub fn embedded_cluster(&self) -> Option<&Arc<EmbeddedKafka>> {
        self.shared.embedded.as_ref()
    }

    /// The main cluster's bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.shared.main.brokers
    }

    /// A client of its own, outside any group, on the cluster of `role`.
    fn reader(&self, role: TopicRole) -> ClientConfig {
        let cluster = self.cluster_of(role);
        let mut config = consumer::config(
            &cluster.brokers,
            "retry-kafka-reader",
            &self.shared.consumer_properties,
        );
        // Partitions are read one after another, and the fetch still waiting at the broker for
        // the one just read (up to fetch.wait.max.ms, 500 ms by default) held up the next:
        // reading a 4-partition topic took about a second on Apache Kafka.
        config.set("fetch.wait.max.ms", READER_FETCH_WAIT_MS);
        // What librdkafka fetches ahead of a page: 64 MiB by default, most of a tool's memory
        // when it pages through a big queue; 16 MiB keeps the pages coming as fast.
        config.set("queued.max.messages.kbytes", READER_QUEUED_KIB);
        // The end of a partition is an event: in a topic written in transactions the last
        // offsets are markers, which no record comes back for.
        config.set("enable.partition.eof", "true");
        config
    }

    /// Runs `work` with the reader client of the cluster of `role` (made now if there is none
    /// yet), on a blocking thread; reads take turns on it.
    async fn with_reader<T: Send + 'static>(
        &self,
        role: TopicRole,
        work: impl FnOnce(&mut Reader) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let config = self.reader(role);
        let slot = self.cluster_of(role).reader.clone();
        blocking(move || {
            let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                *slot = Some(Reader {
                    client: config
                        .create_with_context(Refusals::new("reader"))
                        .map_err(transport)?,
                    next: None,
                });
            }
            work(slot.as_mut().expect("made above"))
        })
        .await
    }

    /// The cluster a topic of `role` lives on.
    fn cluster_of(&self, role: TopicRole) -> &Cluster {
        match &self.shared.retry {
            Some(retry) if role.is_derived() => retry,
            _ => &self.shared.main,
        }
    }

    async fn create_on(&self, cluster: &Cluster, topic: &str, partitions: u32) -> Result<(), BackendError> {
        if let (Some(embedded), true) = (&self.shared.embedded, std::ptr::eq(cluster, &self.shared.main)) {
            return embedded.create_topic(topic, partitions);
        }
        let new = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.shared.replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = cluster
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|error| cluster.admin.inner().context().explain(error))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    let failed = format!("creating topic {name:?} failed: {code}");
                    return Err(
                        denied(&name, Operation::Create, Some(code), failed).unwrap_or_else(transport)
                    );
                }
            }
        }
        // Apache Kafka answers before every broker's metadata has the topic (seen: up to 1.6 s
        // later): wait for it, so what follows (provisioning, a consumer) finds it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // `None`: not in the metadata yet.
        let in_metadata = || async {
            match self.partitions_on(cluster, topic).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(None),
                Err(error) => Err(Some(error)),
            }
        };
        in_metadata
            .retry(
                ConstantBuilder::new()
                    .with_delay(Duration::from_millis(50))
                    .without_max_times(),
            )
            .when(|error| error.is_none() && tokio::time::Instant::now() < deadline)
            .await
            .map_err(|error| {
                error.unwrap_or_else(|| BackendError::Transport {
                    backend: "kafka",
                    source: format!("topic {topic:?} was created but is not in the metadata after 30 s")
                        .into(),
                })
            })
    }

    /// The partition count of `topic`, or `None` if it does not exist.
    async fn partitions_on(&self, cluster: &Cluster, topic: &str) -> Result<Option<u32>, BackendError> {
        let client = cluster.metadata.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(|error| {
                    // librdkafka hands its error events (the refusal's reason) to the context
                    // only when the client is polled, and may queue them just after failing
                    // the request: a short wait, on the failure path only.
                    let _ = client.poll(Duration::from_millis(200));
                    client.context().explain(error)
                })?;
            Ok(metadata.topics().first().and_then(|t| match t.error() {
                None if !t.partitions().is_empty() => Some(t.partitions().len() as u32),
                _ => None,
            }))
        })
        .await
        .map_err(transport)?
    }
}

/// The partition count of `topic` as `client` sees it; 0 when it does not exist.
fn partition_count(client: &BaseConsumer<Refusals>, topic: &str) -> Result<i32, BackendError> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|error| client.context().explain(error))?;
    Ok(metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Runs `query`, a librdkafka call given the time left, until it succeeds, fails for good, or
/// `timeout` has passed. A partition's leadership and a group's coordinator settle a moment after
/// a topic or the first group is created, or while a broker restarts, and librdkafka's watermark
/// and committed-offset queries return those errors instead of retrying them (Apache Kafka 4.4:
/// NotLeaderForPartition right after a topic is in the metadata, NotCoordinator while the
/// offsets topic is created). A failure is explained by the client's `refusals`.
fn until_settled<T>(
    refusals: &Refusals,
    timeout: Duration,
    mut query: impl FnMut(Duration) -> KafkaResult<T>,
) -> Result<T, BackendError> {
    let deadline = std::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    (|| query(left()))
        .retry(
            ConstantBuilder::new()
                .with_delay(Duration::from_millis(20))
                .without_max_times(),
        )
        .when(|error| is_settling(error) && !left().is_zero())
        .call()
        .map_err(|error| refusals.explain(error))
}

/// A leader or a group coordinator not (yet) in place: asking again later succeeds.
fn is_settling(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}

/// Runs blocking librdkafka calls off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BackendError::Transport {
            backend: "kafka",
            source: error.into(),
        })?
}

pub(crate) fn transport(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    BackendError::Transport {
        backend: "kafka",
        source: error.into(),
    }
}

impl TopicAdmin for Kafka {
    async fn partitions(&self, topic: &Topic) -> Result<Option<u32>, BackendError> {
        self.partitions_on(self.cluster_of(topic.role), &topic.name).await
    }

    async fn create_topic(&self, topic: &Topic, partitions: u32) -> Result<(), BackendError> {
        self.create_on(self.cluster_of(topic.role), &topic.name, partitions)
            .await
    }
}

impl Kafka {
    /// [`Backend::lag`]: a client in the group that never joins it reads the committed offsets
    /// (one per group, kept).
    async fn lag_of(&self, topic: &Topic, group: &str) -> Result<u64, BackendError> {
        let marks = self.committed_of(topic, group).await?;
        Ok(marks.iter().map(|mark| mark.high.saturating_sub(mark.done)).sum())
    }

    /// Per partition of `topic`: where `group` is (its committed offset, the partition's start
    /// when none) and where the partition ends.
    async fn committed_of(&self, topic: &Topic, group: &str) -> Result<Vec<Marks>, BackendError> {
        let cluster = self.cluster_of(topic.role);
        let config = consumer::config(&cluster.brokers, group, &self.shared.consumer_properties);
        let clients = cluster.lag_clients.clone();
        let (topic, group) = (topic.name.to_string(), group.to_owned());
        blocking(move || {
            let client = {
                let mut clients = clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match clients.get(&group) {
                    Some(client) => client.clone(),
                    None => {
                        // A client in the group that never joins it: it only reads the
                        // committed offsets.
                        let client: Arc<BaseConsumer<Refusals>> = Arc::new(
                            config
                                .create_with_context(Refusals::new("lag"))
                                .map_err(transport)?,
                        );
                        clients.insert(group, client.clone());
                        client
                    }
                }
            };
            let timeout = Duration::from_secs(10);
            let partitions = partition_count(&client, &topic)?;
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition(&topic, partition);
            }
            let committed = until_settled(client.context(), timeout, |left| {
                client.committed_offsets(list.clone(), left)
            })?;
            (0..partitions)
                .map(|partition| {
                    let (low, high) = until_settled(client.context(), timeout, |left| {
                        client.fetch_watermarks(&topic, partition, left)
                    })?;
                    let done = match committed.find_partition(&topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(offset)) => offset.max(low),
                        _ => low,
                    };
                    Ok(Marks {
                        done: done.max(0) as u64,
                        high: high.max(0) as u64,
                    })
                })
                .collect()
        })
        .await
    }
}

/// Where a group is in one partition, and where the partition ends.
struct Marks {
    done: u64,
    high: u64,
}

impl Publish for Kafka {
    async fn send(&self, topic: &Topic, record: OutboundRecord) -> Result<Delivered, BackendError> {
        self.produce(topic, &record).await
    }
}

impl Backend for Kafka {
    type Consumer = KafkaConsumer;

    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<KafkaConsumer, BackendError> {
        self.consumer(subscription, Membership::Joins(None))
    }

    fn keeps_partitions_together(&self) -> bool {
        true
    }

    fn leads_and_follows(&self) -> bool {
        true
    }

    async fn subscribe_leading(
        &self,
        subscription: Subscription,
        followers: Arc<Followers>,
    ) -> Result<KafkaConsumer, BackendError> {
        self.consumer(subscription, Membership::Joins(Some(followers)))
    }

    async fn subscribe_following(
        &self,
        subscription: Subscription,
        followers: &Arc<Followers>,
    ) -> Result<KafkaConsumer, BackendError> {
        let follower = self.consumer(subscription, Membership::Follows)?;
        follower.follow(followers);
        Ok(follower)
    }

    async fn unacknowledged(
        &self,
        topic: &Topic,
        group: &str,
        partitions: &[u32],
    ) -> Result<Vec<Record>, BackendError> {
        let marks = self.committed_of(topic, group).await?;
        // Past the end where not asked for: nothing read there.
        let from = (0..marks.len() as u32)
            .map(|p| match partitions.contains(&p) {
                true => marks[p as usize].done,
                false => u64::MAX,
            })
            .collect();
        self.read_from(&topic.name, topic.role, from).await
    }

    async fn lag(&self, topic: &Topic, group: &str) -> Result<u64, BackendError> {
        self.lag_of(topic, group).await
    }
}

impl Kafka {
    /// The librdkafka properties of a consumer of a topic of `role`: the user's, and on retry
    /// levels and the held topic the fetch wait.
    fn consumer_properties(&self, role: TopicRole) -> Vec<(String, String)> {
        let mut properties = self.shared.consumer_properties.clone();
        // Retry levels and the held topic hold partitions back and resume them (records not
        // due, keys held): they must be fetched again soon after.
        if !matches!(role, TopicRole::Retry { .. } | TopicRole::Held) {
            return properties;
        }
        // A retry level pauses and resumes partitions as retries come due (the held topic as
        // keys are released: 4,500 held records settled ~0.45 s later without); a resumed
        // partition is fetched only when the fetch already waiting at the broker returns, after
        // up to this long (librdkafka's default, 500 ms, made a burst of retries up to ~490 ms
        // late; 25 ms keeps an idle level's fetches cheap). Set last: the later setting wins.
        let set_by_user = properties.iter().any(|(key, _)| key == "fetch.wait.max.ms");
        let wait = match self.shared.retry_fetch_wait {
            Some(wait) => Some(wait.as_millis()),
            None => (!set_by_user).then_some(RETRY_LEVEL_FETCH_WAIT_MS),
        };
        if let Some(wait) = wait {
            properties.push(("fetch.wait.max.ms".to_owned(), wait.to_string()));
        }
        properties
    }

    /// A consumer of `subscription`, joining its group or following a main consumer.
    fn consumer(
        &self,
        subscription: Subscription,
        membership: Membership,
    ) -> Result<KafkaConsumer, BackendError> {
        let brokers = self.cluster_of(subscription.topic.role).brokers.clone();
        let properties = self.consumer_properties(subscription.topic.role);
        let mut commits = self.shared.commit_policy;
        // Exactly-once needs one cluster (`build` refuses a retry cluster with it).
        let exactly_once = self
            .shared
            .exactly_once
            .then_some(&self.shared.main.producer_config);
        if exactly_once.is_some() {
            // A transaction commits every interval, not after a count: its commit waits for the
            // broker and holds hand-offs back meanwhile, and back to back (at 1,000 records)
            // they drained the failures workload at 0.25x at-least-once's rate, against 0.95x
            // by the interval alone (docs/benchmarks.md, "Exactly once").
            commits.records = None;
        }
        KafkaConsumer::start(
            self.clone(),
            &brokers,
            subscription,
            &properties,
            commits,
            membership,
            exactly_once,
        )
    }

    /// Queues `record` for `topic` in the producer and returns a future of the broker's
    /// acknowledgement. Queuing happens now, so records queued one after another to one
    /// partition are written in that order (the producer is idempotent).
    fn produce(&self, topic: &Topic, record: &OutboundRecord) -> writer::Write {
        self.cluster_of(topic.role).writer.write(topic, record)
    }

    /// Queues a hand-off's `record` for `topic`; its result is reported as `id` into
    /// `reports`. Queued now, so hand-offs to one partition are written in the order started.
    fn hand_off(&self, id: HandOffId, topic: &Topic, record: OutboundRecord, reports: &HandOffReports) {
        self.cluster_of(topic.role)
            .writer
            .hand_off(id, topic, record, reports)
    }

    /// Writes a successful attempt's outputs (to main topics: the main cluster), reported as
    /// `id` once all are through.
    fn emit(&self, id: HandOffId, outputs: Vec<Output>, reports: &HandOffReports) {
        self.cluster_of(TopicRole::Main).writer.emit(id, outputs, reports);
    }
}
