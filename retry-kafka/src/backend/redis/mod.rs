//! The Redis backend, on Redis Streams and consumer groups (the `redis` crate, tokio).
//!
//! Transport only, as for every backend: streams to read, entries to acknowledge, a delay set
//! that keeps a retry out of sight until it is due, and hand-offs that write the next hop and
//! acknowledge the source in one transaction (MULTI/EXEC), many of them pipelined in one round
//! trip. What a failure means is decided by the runtime.
//!
//! A primary with replicas behind Redis Sentinel (`redis+sentinel://` URLs, `sentinel.rs`) has
//! the one-server key layout: the sentinels are asked for the primary, and asked again when a
//! connection to it fails, so the backend follows a failover.
//!
//! On a Redis Cluster ([`Redis::cluster_builder`]) keys are tagged per partition, so a topic's
//! partitions spread over the shards, and a hand-off, whose write and source are in different
//! slots, writes once per source and then acknowledges (ARCHITECTURE.md, Redis Cluster).
//!
//! # Keys and entries
//!
//! The keys (one hash tag per topic), their types and what each holds are listed once, in the
//! repository's ARCHITECTURE.md (Topology and names, Redis keys); an entry's fields and its
//! offset are part of the wire format there. `keys.rs` makes the names, `fields.rs` the fields,
//! `stream_id.rs` the offsets.
//!
//! # Files
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the [`Redis`] handle, its connections, and its [`Backend`] impl |
//! | `builder.rs` | [`RedisBuilder`], the settings and the environment variables |
//! | `produce.rs` | writes: XADD, the delay set, a hand-off's write-and-acknowledge |
//! | `hand_offs.rs` | the hand-off writer: what queues during a round trip goes in the next, one pipeline |
//! | `consumer/mod.rs` | [`RedisConsumer`]: what the runtime calls, and the state it shares with its reader |
//! | `consumer/reader.rs` | the reader task: a loop over heartbeat, trim, ack flush and read; recovery |
//! | `consumer/pacing.rs` | the reader's timers (heartbeat, trim, ack debounce) and back-off |
//! | `consumer/membership.rs` | membership, leases, take-over, claims of idle entries, leaving |
//! | `consumer/trim.rs` | trimming what every group acknowledged |
//! | `error.rs` | a `redis` error as a `BackendError`, with what to change when refused |
//! | `keys.rs` | key names, in the one-server or the cluster layout |
//! | `link.rs` | a connection to one server or to a cluster; a cluster's pipelines split by slot |
//! | `scripts.rs` | the Lua scripts, run by their SHA1 |
//! | `sentinel.rs` | `redis+sentinel://` URLs; a connection that asks the sentinels for the primary again after a failover |
//! | `stream_id.rs` | stream entry IDs as offsets |
//! | `fields.rs` | a record as stream fields (a field per value, or packed) and as a delay-set member, and back |
//! | `msgpack.rs` | the msgpack of a packed entry and of a delay-set member |
//! | `reply.rs` | reading the server's replies |
//! | `unsettled.rs` | what a group has not acknowledged, for a key-ordered handler's holds |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::{AsyncConnectionConfig, RedisError, Value};

use super::{
    Backend, Browse, Delivered, OutboundRecord, Page, PartitionCounts, Publish, Record, Subscription, Topic,
    TopicAdmin, TopicRole,
};
use crate::error::BackendError;
use error::{explain, transport, Doing};
use fields::{decode, unpack_delayed};
use keys::KeyLayout;
use link::Link;
use reply::{parse_entries, parse_groups};
use stream_id::StreamId;

mod builder;
mod consumer;
mod error;
mod fields;
mod hand_offs;
mod keys;
mod link;
mod msgpack;
mod produce;
mod reply;
mod scripts;
mod sentinel;
mod stream_id;
mod unsettled;

use super::follow::Followers;
pub use builder::RedisBuilder;
pub(crate) use builder::Settings;
use consumer::Joining;
pub use consumer::RedisConsumer;
pub(crate) use produce::Source;

/// Redis Streams.
///
/// ```no_run
/// use std::time::Duration;
/// use retry_kafka::backend::redis::Redis;
///
/// let redis = Redis::builder("redis://:secret@127.0.0.1:6379/0")
///     .session_timeout(Duration::from_secs(15))
///     .keep_acknowledged(Duration::from_secs(3600))
///     .build()?;
/// # Ok::<(), retry_kafka::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    client: Client,
    /// Where keys go: the one-server layout, or the cluster's (`keys.rs`).
    keys: KeyLayout,
    /// Commands that never block share one multiplexed connection (on a cluster, one per
    /// shard); each consumer's reads and hand-offs have connections of their own.
    conn: Link,
    settings: Settings,
    partitions: PartitionCounts,
    /// With [`RedisBuilder::wait_for_replicas`]: the connection publishes go on, made on the
    /// first (`WAIT` blocks its connection, and waits for that connection's writes).
    publishing: std::sync::OnceLock<Link>,
    next_member: AtomicU64,
    /// The server accepted this client once (see [`Redis::admitted`]).
    admitted: AtomicBool,
}

/// What connections are made from: one server's client, the sentinels that name the primary,
/// or a cluster's client.
#[allow(clippy::large_enum_variant)] // one per backend, behind its `Arc`
enum Client {
    Server(redis::Client),
    Sentinel {
        sentinels: Arc<sentinel::Sentinels>,
        /// The primary's database.
        db: i64,
    },
    Cluster(ClusterClient),
}

impl Redis {
    /// The server's URL, as given; for a cluster, its nodes' URLs as given, joined by commas.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Whether this backend talks to a Redis Cluster (with the cluster's key layout).
    pub fn is_cluster(&self) -> bool {
        self.shared.keys == KeyLayout::Cluster
    }

    /// Whether this backend finds its server through Redis Sentinel (a `redis+sentinel://`
    /// URL), with the one-server key layout.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), retry_kafka::error::ConfigError> {
    /// use retry_kafka::backend::redis::Redis;
    ///
    /// let redis = Redis::builder("redis+sentinel://10.0.0.1,10.0.0.2,10.0.0.3/orders").build()?;
    /// assert!(redis.is_sentinel() && !redis.is_cluster());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_sentinel(&self) -> bool {
        matches!(self.shared.client, Client::Sentinel { .. })
    }

    pub(crate) fn keys(&self) -> KeyLayout {
        self.shared.keys
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub(crate) fn connection(&self) -> Link {
        self.shared.conn.clone()
    }

    /// A connection of its own for a consumer's blocking reads (a blocking command would stall
    /// every other command on a shared connection), with a response timeout longer than a read.
    /// A cluster's reads do not block (`consumer/reader.rs` says why).
    pub(crate) async fn blocking_connection(&self) -> Result<Link, BackendError> {
        let settings = &self.shared.settings;
        self.shared.client.connect(
            settings.block + settings.response_timeout,
            settings.response_timeout,
        )
    }

    /// A connection of its own for a consumer's hand-off writer, so its pipelined writes queue
    /// behind nobody else's commands.
    pub(crate) fn writing_connection(&self) -> Result<Link, BackendError> {
        let settings = &self.shared.settings;
        self.shared
            .client
            .connect(settings.response_timeout, settings.response_timeout)
    }

    /// The connection a publish goes on: the shared one, or with
    /// [`RedisBuilder::wait_for_replicas`] one of its own.
    pub(crate) fn publishing_connection(&self) -> Result<Link, BackendError> {
        if self.shared.settings.wait_replicas == 0 {
            return Ok(self.connection());
        }
        if let Some(link) = self.shared.publishing.get() {
            return Ok(link.clone());
        }
        let link = self.writing_connection()?;
        Ok(self.shared.publishing.get_or_init(|| link).clone())
    }

    pub(crate) fn member_name(&self) -> String {
        super::member_name(self.shared.next_member.fetch_add(1, Ordering::Relaxed))
    }

    /// The partition count stored for `topic`, if it has one.
    async fn stored_partitions(&self, topic: &str) -> Result<Option<u32>, BackendError> {
        let count: Option<u32> = redis::cmd("HGET")
            .arg(self.keys().meta(topic))
            .arg("partitions")
            .query_async(&mut self.connection())
            .await
            .map_err(transport)?;
        if let Some(count) = count {
            self.shared.partitions.remember(topic, count);
        }
        Ok(count)
    }

    /// The partition count of `topic`, creating the topic with the default count if it has
    /// none yet (as a broker with topic auto-creation does).
    async fn partition_count(&self, topic: &str) -> Result<u32, BackendError> {
        let known = &self.shared.partitions;
        if let Some(count) = known.get_or_load(topic, self.stored_partitions(topic)).await? {
            return Ok(count);
        }
        self.create(topic, self.shared.settings.default_partitions)
            .await?;
        Ok(self.stored_partitions(topic).await?.unwrap_or(1))
    }

    /// Sets the partition count of `topic` unless it has one.
    async fn create(&self, topic: &str, partitions: u32) -> Result<(), BackendError> {
        let _: i64 = redis::cmd("HSETNX")
            .arg(self.keys().meta(topic))
            .arg("partitions")
            .arg(partitions)
            .query_async(&mut self.connection())
            .await
            .map_err(transport)?;
        Ok(())
    }

    /// The entries waiting in `topic`'s delay set, in due order, with offset `u64::MAX`: they
    /// have no stream ID yet.
    async fn read_delayed(&self, topic: &str) -> Result<Vec<Record>, BackendError> {
        let mut records = Vec::new();
        let mut conn = self.connection();
        let partitions = self.stored_partitions(topic).await?.unwrap_or(0);
        let mut waiting: Vec<(f64, Vec<u8>)> = Vec::new();
        for set in self.keys().delay_sets(topic, partitions) {
            let mut members: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
                .arg(set)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(transport)?;
            waiting.extend(members.drain(..).map(|(member, due)| (due, member)));
        }
        // In due order across the partitions' sets (a cluster has one per partition).
        waiting.sort_by(|(a, _), (b, _)| a.total_cmp(b));
        for (_, member) in waiting {
            if let Some((partition, fields)) = unpack_delayed(&member) {
                let mut record = decode(partition, StreamId { ms: 0, seq: 0 }, fields);
                record.offset = u64::MAX;
                record.timestamp_ms = None;
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The entries of `topic`'s streams, from offset `from[p]` on partition `p`.
    async fn read_streams(&self, topic: &str, from: &[u64]) -> Result<Vec<Record>, BackendError> {
        let mut conn = self.connection();
        let partitions = self.stored_partitions(topic).await?.unwrap_or(0);
        let mut records = Vec::new();
        for partition in 0..partitions {
            let mut from = match from.get(partition as usize) {
                Some(&offset) => StreamId::of_offset(offset).to_string(),
                None => "-".to_owned(),
            };
            loop {
                let reply: Value = redis::cmd("XRANGE")
                    .arg(self.keys().stream(topic, partition))
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(transport)?;
                let entries = parse_entries(reply);
                let Some((last, _)) = entries.last() else { break };
                from = format!("({last}");
                records.extend(
                    entries
                        .into_iter()
                        .map(|(id, fields)| decode(partition, id, fields)),
                );
            }
        }
        Ok(records)
    }

    /// Checks the connection at start: the server must accept this client and answer a PING.
    async fn check_connection(&self) -> Result<(), BackendError> {
        self.admitted().await?;
        let url = &self.shared.url;
        let reply: Result<String, RedisError> = redis::cmd("PING").query_async(&mut self.connection()).await;
        reply
            .map(drop)
            .map_err(|error| explain(error, Doing::Connecting { url }))
    }

    /// Until the server has accepted this client once, connects afresh and sends a PING,
    /// without the shared connection's retries: a refusal that no retry mends (a missing or
    /// wrong password, an untrusted certificate, a plain URL for a TLS port) fails at once,
    /// naming what to change. Anything else (the server is down, say) is left to the shared
    /// connection, which retries.
    pub(crate) async fn admitted(&self) -> Result<(), BackendError> {
        if self.shared.admitted.load(Ordering::Acquire) {
            return Ok(());
        }
        let timeout = self.shared.settings.response_timeout;
        let ping = async {
            match &self.shared.client {
                Client::Server(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                }
                Client::Sentinel { sentinels, .. } => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    let mut conn = sentinels.connect(&config).await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                }
                Client::Cluster(client) => {
                    let config = ClusterConfig::new()
                        .set_connection_timeout(timeout)
                        .set_response_timeout(timeout);
                    let mut conn = client.get_async_connection_with_config(config).await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                }
            }
        };
        let url = &self.shared.url;
        match ping
            .await
            .map_err(|error| explain(error, Doing::Connecting { url }))
        {
            Ok(_) => {
                self.shared.admitted.store(true, Ordering::Release);
                Ok(())
            }
            Err(refused @ BackendError::Refused { .. }) => Err(refused),
            Err(_) => Ok(()),
        }
    }
}

impl Browse for Redis {
    /// The streams' entries, then, on a retry level, the retries waiting in its delay set.
    async fn read(&self, topic: &Topic, from: &[u64]) -> Result<Vec<Record>, BackendError> {
        let mut records = self.read_streams(&topic.name, from).await?;
        if matches!(topic.role, TopicRole::Retry { .. }) {
            records.extend(self.read_delayed(&topic.name).await?);
        }
        Ok(records)
    }

    /// One past the offset of each stream's last entry: an entry added later has a greater ID.
    /// A retry waiting in a delay set has no offset yet.
    async fn end_offsets_of(&self, topic: &Topic) -> Result<Vec<u64>, BackendError> {
        let topic = &*topic.name;
        let mut conn = self.connection();
        let partitions = self.stored_partitions(topic).await?.unwrap_or(0);
        let mut ends = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let reply: Value = redis::cmd("XREVRANGE")
                .arg(self.keys().stream(topic, partition))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(transport)?;
            let last = parse_entries(reply).first().map(|(id, _)| id.offset() + 1);
            ends.push(last.unwrap_or(0));
        }
        Ok(ends)
    }

    /// One XRANGE of the partition's stream.
    async fn read_page(&self, topic: &Topic, page: Page) -> Result<Vec<Record>, BackendError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.keys().stream(&topic.name, page.partition()))
            .arg(StreamId::of_offset(page.from()).to_string())
            .arg(StreamId::of_offset(page.last()).to_string())
            .arg("COUNT")
            .arg(page.limit())
            .query_async(&mut self.connection())
            .await
            .map_err(transport)?;
        Ok(parse_entries(reply)
            .into_iter()
            .map(|(id, fields)| decode(page.partition(), id, fields))
            .collect())
    }
}

impl TopicAdmin for Redis {
    /// The first call an app's start makes: a refused connection is explained here (a missing
    /// or wrong password, an untrusted certificate).
    async fn partitions(&self, topic: &Topic) -> Result<Option<u32>, BackendError> {
        self.check_connection().await?;
        self.stored_partitions(&topic.name).await
    }

    async fn create_topic(&self, topic: &Topic, partitions: u32) -> Result<(), BackendError> {
        self.create(&topic.name, partitions).await
    }

    /// A topic is created on first use, as on a Kafka cluster with
    /// `auto.create.topics.enable`.
    fn default_partitions(&self) -> Option<u32> {
        Some(self.shared.settings.default_partitions)
    }
}

impl Redis {
    /// [`Backend::lag`]: entries the group has not read, plus those read and not yet
    /// acknowledged, plus the retries waiting in the topic's delay set.
    async fn lag_of(&self, topic: &str, group: &str) -> Result<u64, BackendError> {
        let mut conn = self.connection();
        let partitions = self.stored_partitions(topic).await?.unwrap_or(0);
        let mut lag = 0;
        for partition in 0..partitions {
            let key = self.keys().stream(topic, partition);
            let groups: Result<Value, RedisError> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut conn)
                .await;
            let groups = match groups {
                Ok(groups) => groups,
                Err(error) if error.code() == Some("ERR") => continue, // no such stream yet
                Err(error) => return Err(transport(error)),
            };
            let info = parse_groups(&groups)
                .into_iter()
                .find(|g| g.name == group.as_bytes());
            lag += match info {
                Some(info) => match info.lag {
                    Some(unread) => unread + info.pending,
                    None => redis::cmd("XLEN")
                        .arg(&key)
                        .query_async::<u64>(&mut conn)
                        .await
                        .map_err(transport)?,
                },
                None => redis::cmd("XLEN")
                    .arg(&key)
                    .query_async::<u64>(&mut conn)
                    .await
                    .map_err(transport)?,
            };
        }
        let mut waiting = 0;
        for set in self.keys().delay_sets(topic, partitions) {
            waiting += redis::cmd("ZCARD")
                .arg(set)
                .query_async::<u64>(&mut conn)
                .await
                .map_err(transport)?;
        }
        Ok(lag + waiting)
    }
}

impl Publish for Redis {
    async fn send(&self, topic: &Topic, record: OutboundRecord) -> Result<Delivered, BackendError> {
        let partition = self.pick_partition(&topic.name, &record).await?;
        self.write(topic, partition, &record).await
    }
}

impl Backend for Redis {
    type Consumer = RedisConsumer;

    fn name(&self) -> &'static str {
        "redis"
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<RedisConsumer, BackendError> {
        let partitions = self.partition_count(&subscription.topic.name).await?;
        RedisConsumer::start(self.clone(), subscription, partitions, Joining::Member).await
    }

    /// With leases (the default): a partition is read by one member at a time. Unordered
    /// consumers read every partition in every member, so no process owns a key.
    fn keeps_partitions_together(&self) -> bool {
        !self.shared.settings.unordered
    }

    fn leads_and_follows(&self) -> bool {
        self.keeps_partitions_together()
    }

    async fn subscribe_leading(
        &self,
        subscription: Subscription,
        followers: Arc<Followers>,
    ) -> Result<RedisConsumer, BackendError> {
        let partitions = self.partition_count(&subscription.topic.name).await?;
        RedisConsumer::start(self.clone(), subscription, partitions, Joining::Leads(followers)).await
    }

    async fn subscribe_following(
        &self,
        subscription: Subscription,
        followers: &Arc<Followers>,
    ) -> Result<RedisConsumer, BackendError> {
        let partitions = self.partition_count(&subscription.topic.name).await?;
        let joining = Joining::Follows(followers.clone());
        RedisConsumer::start(self.clone(), subscription, partitions, joining).await
    }

    async fn unacknowledged(
        &self,
        topic: &Topic,
        group: &str,
        partitions: &[u32],
    ) -> Result<Vec<Record>, BackendError> {
        self.unsettled(topic, group, partitions).await
    }

    async fn lag(&self, topic: &Topic, group: &str) -> Result<u64, BackendError> {
        self.lag_of(&topic.name, group).await
    }
}

impl Client {
    /// A connection of its own, connected on first use, waiting `response` for a reply.
    fn connect(&self, response: Duration, connection: Duration) -> Result<Link, BackendError> {
        match self {
            Client::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response))
                    .set_connection_timeout(Some(connection))
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map(Link::Server)
                    .map_err(transport)
            }
            Client::Sentinel { sentinels, db } => Ok(Link::Sentinel(sentinel::SentinelLink::new(
                sentinels.clone(),
                response,
                connection,
                *db,
            ))),
            Client::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_response_timeout(response)
                    .set_connection_timeout(connection);
                Ok(Link::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }
}
