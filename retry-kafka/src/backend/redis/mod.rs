//! The Redis backend, on Redis Streams and consumer groups (the `redis` crate, tokio).
//!
//! Transport only, as for every backend: streams to read, entries to acknowledge, a delay set
//! that keeps a retry out of sight until it is due, and hand-offs that write the next hop and
//! acknowledge the source in one script. What a failure means is decided by the runtime.
//!
//! # Layout
//!
//! Every key of a topic carries the topic as its hash tag, so a topic's keys share a slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{orders}:0` … `{orders}:N-1` | stream | partition *p* of topic `orders` |
//! | `{orders}:meta` | hash | `partitions` (the partition count) |
//! | `{orders.billing.retry.1}:delayed` | sorted set | retries waiting for their due time (score: epoch ms) |
//! | `{orders}:members:<group>` | sorted set | live members of a group (score: when the member expires) |
//! | `{orders}:lease:<group>:<p>` | string | the member that owns partition *p* (expires unless renewed) |
//!
//! An entry's fields are `payload`, `key` (absent when there is none) and one field per header
//! under the header's name (`rk-attempts`, `traceparent`, …; a header named `payload`, `key` or
//! `h:…` is written as `h:<name>`). An entry's offset is its ID as one number,
//! `ms × 2^20 + seq`, so offsets grow in stream order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};

use super::{Backend, Delivered, OutboundRecord, Record, Subscription};
use crate::error::{BackendError, ConfigError};
use crate::headers::Headers;
use crate::policy::Topology;

mod consumer;

pub use consumer::RedisConsumer;

/// Environment variable with the server's URL, read by [`Redis::from_env`].
pub const URL_ENV: &str = "REDIS_URL";
/// Environment variable for [`RedisBuilder::session_timeout`], in milliseconds.
pub const SESSION_TIMEOUT_ENV: &str = "REDIS_SESSION_TIMEOUT_MS";
/// Environment variable for [`RedisBuilder::keep_acknowledged`], in milliseconds.
pub const KEEP_ACKNOWLEDGED_ENV: &str = "REDIS_KEEP_ACKNOWLEDGED_MS";
/// Environment variable for [`RedisBuilder::keep_acknowledged_entries`].
pub const KEEP_ACKNOWLEDGED_ENTRIES_ENV: &str = "REDIS_KEEP_ACKNOWLEDGED_ENTRIES";
/// Environment variable for [`RedisBuilder::unordered`]: `true` or `false`.
pub const UNORDERED_ENV: &str = "REDIS_UNORDERED";
/// Environment variable for [`RedisBuilder::default_partitions`].
pub const DEFAULT_PARTITIONS_ENV: &str = "REDIS_DEFAULT_PARTITIONS";

fn env_number(name: &'static str) -> Result<Option<u64>, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => text.trim().parse().map(Some).map_err(|_| ConfigError::Invalid {
            field: name,
            reason: format!("{text:?} is not a whole number"),
        }),
    }
}

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
    client: redis::Client,
    /// Commands that never block share one multiplexed connection; each consumer's blocking
    /// reads have a connection of their own.
    conn: ConnectionManager,
    settings: Settings,
    partitions: Mutex<HashMap<String, u32>>,
    /// Retry topics: their consumers move due entries out of the delay set.
    delayed: Mutex<HashSet<String>>,
    next_member: AtomicU64,
}

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) session_timeout: Duration,
    pub(crate) block: Duration,
    pub(crate) due_poll: Duration,
    pub(crate) batch: usize,
    pub(crate) keep_acknowledged: Duration,
    pub(crate) keep_acknowledged_entries: u64,
    pub(crate) trim_interval: Duration,
    pub(crate) default_partitions: u32,
    pub(crate) response_timeout: Duration,
    pub(crate) unordered: bool,
}

/// Environment variable with the path of a PEM file of root certificates to trust for
/// `rediss://` (a private CA), read by [`Redis::from_env`]; needs the `redis-tls` feature.
pub const TLS_CA_FILE_ENV: &str = "REDIS_TLS_CA_FILE";

/// Settings of a [`Redis`] backend.
///
/// ```
/// use std::time::Duration;
/// use retry_kafka::backend::redis::Redis;
///
/// let builder = Redis::builder("redis://127.0.0.1:6379").default_partitions(4).batch(512);
/// ```
pub struct RedisBuilder {
    url: String,
    settings: Settings,
    tls_root: Option<Vec<u8>>,
}

impl Redis {
    /// Settings for the server at `url` (`redis://[:password@]host:port[/db]`, or `rediss://`
    /// for TLS with the `redis-tls` feature).
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder {
            url: url.into(),
            settings: Settings {
                session_timeout: Duration::from_secs(10),
                block: Duration::from_millis(500),
                due_poll: Duration::from_millis(50),
                batch: 256,
                keep_acknowledged: Duration::ZERO,
                keep_acknowledged_entries: 0,
                trim_interval: Duration::from_secs(5),
                default_partitions: 1,
                response_timeout: Duration::from_secs(10),
                unordered: false,
            },
            tls_root: None,
        }
    }

    /// The server named by `REDIS_URL`, with settings from the environment where given:
    /// `REDIS_SESSION_TIMEOUT_MS`, `REDIS_KEEP_ACKNOWLEDGED_MS`,
    /// `REDIS_KEEP_ACKNOWLEDGED_ENTRIES`, `REDIS_DEFAULT_PARTITIONS`, `REDIS_UNORDERED`,
    /// `REDIS_TLS_CA_FILE`. A value that does not parse fails, naming the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = std::env::var(URL_ENV).map_err(|_| ConfigError::Invalid {
            field: URL_ENV,
            reason: "not set; give the server's URL, e.g. redis://127.0.0.1:6379".into(),
        })?;
        let mut builder = Self::builder(url);
        if let Some(ms) = env_number(SESSION_TIMEOUT_ENV)? {
            builder = builder.session_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = env_number(KEEP_ACKNOWLEDGED_ENV)? {
            builder = builder.keep_acknowledged(Duration::from_millis(ms));
        }
        if let Some(entries) = env_number(KEEP_ACKNOWLEDGED_ENTRIES_ENV)? {
            builder = builder.keep_acknowledged_entries(entries);
        }
        if let Some(partitions) = env_number(DEFAULT_PARTITIONS_ENV)? {
            builder = builder.default_partitions(partitions.try_into().unwrap_or(u32::MAX));
        }
        if let Some(path) = std::env::var_os(TLS_CA_FILE_ENV) {
            let pem = std::fs::read(&path).map_err(|error| ConfigError::Invalid {
                field: TLS_CA_FILE_ENV,
                reason: format!("cannot read {}: {error}", std::path::Path::new(&path).display()),
            })?;
            builder = builder.tls_root_certificate(pem);
        }
        match std::env::var(UNORDERED_ENV).as_deref() {
            Err(_) | Ok("" | "0" | "false") => {}
            Ok("1" | "true") => builder = builder.unordered(),
            Ok(other) => {
                return Err(ConfigError::Invalid {
                    field: UNORDERED_ENV,
                    reason: format!("{other:?} is neither true nor false"),
                })
            }
        }
        builder.build()
    }

    /// The server's URL, as given.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub(crate) fn connection(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }

    /// A connection of its own for a consumer's blocking reads (a blocking command would stall
    /// every other command on a shared connection), with a response timeout longer than a read.
    pub(crate) async fn blocking_connection(&self) -> Result<ConnectionManager, BackendError> {
        let settings = &self.shared.settings;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.block + settings.response_timeout))
            .set_connection_timeout(Some(settings.response_timeout))
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_lazy_with_config(self.shared.client.clone(), config).map_err(transport)
    }

    pub(crate) fn member_name(&self) -> String {
        let n = self.shared.next_member.fetch_add(1, Ordering::Relaxed);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{host}-{}-{nanos:08x}-{n}", std::process::id())
    }

    pub(crate) fn is_delayed(&self, topic: &str) -> bool {
        self.shared.delayed.lock().unwrap().contains(topic)
    }

    /// The partition count of `topic`, creating the topic with the default count if it has
    /// none yet (as a broker with topic auto-creation does).
    async fn partition_count(&self, topic: &str) -> Result<u32, BackendError> {
        if let Some(&count) = self.shared.partitions.lock().unwrap().get(topic) {
            return Ok(count);
        }
        let count = match self.partitions(topic).await? {
            Some(count) => count,
            None => {
                self.create_topic(topic, self.shared.settings.default_partitions)
                    .await?;
                self.partitions(topic).await?.unwrap_or(1)
            }
        };
        Ok(count)
    }

    /// Every entry of `topic`, partition by partition in stream order, then the entries
    /// waiting in its delay set in due order (those have offset `u64::MAX`: they have no
    /// stream ID yet). Reads a dead-letter stream, for instance.
    pub async fn read_topic(&self, topic: &str) -> Result<Vec<Record>, BackendError> {
        let mut conn = self.connection();
        let partitions = self.partitions(topic).await?.unwrap_or(0);
        let mut records = Vec::new();
        for partition in 0..partitions {
            let mut from = "-".to_owned();
            loop {
                let reply: Value = redis::cmd("XRANGE")
                    .arg(keys::stream(topic, partition))
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
        let waiting: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(keys::delayed(topic))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(transport)?;
        for member in waiting {
            if let Some((partition, fields)) = unpack_delayed(&member) {
                let mut record = decode(partition, StreamId { ms: 0, seq: 0 }, fields);
                record.offset = u64::MAX;
                record.timestamp_ms = None;
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn check_connection(&self) -> Result<(), BackendError> {
        let reply: Result<String, RedisError> = redis::cmd("PING").query_async(&mut self.connection()).await;
        reply.map(drop).map_err(|error| {
            let hint = match (error.code(), error.kind()) {
                (Some("NOAUTH"), _) => {
                    "; the server wants a password: give it in the URL, redis://:password@host:port \
                     (or redis://user:password@host:port)"
                }
                (Some("WRONGPASS"), _) | (_, redis::ErrorKind::AuthenticationFailed) => {
                    "; the user or password was refused: check the one in the URL"
                }
                _ => "",
            };
            BackendError::Transport {
                backend: "redis",
                source: format!("{} refused a PING: {error}{hint}", redact(&self.shared.url)).into(),
            }
        })
    }
}

impl RedisBuilder {
    /// How long a member may go silent before its partitions are taken over and its pending
    /// entries reclaimed (default 10 s). Members renew their leases three times per timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.settings.session_timeout = timeout;
        self
    }

    /// Lets every member of a group read every partition (M:N) instead of one owner per
    /// partition: more readers than partitions share the load, and order per key is given up.
    /// Entries a member leaves pending longer than the session timeout (it died, or left with
    /// them unfinished) are claimed by another; a live member keeps its own from being claimed,
    /// however long its handler takes.
    pub fn unordered(mut self) -> Self {
        self.settings.unordered = true;
        self
    }

    /// How long one blocking read waits for new entries (default 500 ms).
    pub fn block(mut self, block: Duration) -> Self {
        self.settings.block = block;
        self
    }

    /// How often a retry level's consumer looks for due entries while none is known to be
    /// due sooner (default 50 ms): the most a retry can start after its due time.
    pub fn due_poll(mut self, every: Duration) -> Self {
        self.settings.due_poll = every;
        self
    }

    /// Entries read per round trip (default 256).
    pub fn batch(mut self, entries: usize) -> Self {
        self.settings.batch = entries.max(1);
        self
    }

    /// How long entries stay in a stream after every group acknowledged them (default 0:
    /// trimmed at the next trim). Unacknowledged entries are never trimmed.
    pub fn keep_acknowledged(mut self, age: Duration) -> Self {
        self.settings.keep_acknowledged = age;
        self
    }

    /// How many acknowledged entries a stream keeps at least, newest first (default 0), for
    /// inspection or replay. With [`keep_acknowledged`](Self::keep_acknowledged) too, an entry
    /// goes once it is older than that age and not among these. Unacknowledged entries are
    /// never trimmed.
    pub fn keep_acknowledged_entries(mut self, entries: u64) -> Self {
        self.settings.keep_acknowledged_entries = entries;
        self
    }

    /// How often a consumer trims the streams it owns (default 5 s).
    pub fn trim_interval(mut self, every: Duration) -> Self {
        self.settings.trim_interval = every;
        self
    }

    /// The partition count of a topic created on first use (default 1).
    pub fn default_partitions(mut self, partitions: u32) -> Self {
        self.settings.default_partitions = partitions.max(1);
        self
    }

    /// Root certificates (PEM) to trust for `rediss://`, for a server whose certificate a
    /// private CA signed. Without it the system's root certificates are trusted.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// The backend; fails naming the URL when it is malformed, and outside a tokio runtime.
    /// Connects on first use.
    pub fn build(self) -> Result<Redis, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: URL_ENV,
            reason,
        };
        let client = match self.tls_root {
            None => redis::Client::open(self.url.as_str()),
            #[cfg(feature = "redis-tls")]
            Some(root) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
            #[cfg(not(feature = "redis-tls"))]
            Some(_) => {
                return Err(ConfigError::Invalid {
                    field: TLS_CA_FILE_ENV,
                    reason: "TLS needs the cargo feature `redis-tls` of retry-kafka".into(),
                })
            }
        }
        .map_err(|error| invalid(format!("{}: {error}", redact(&self.url))))?;
        if self.settings.session_timeout < Duration::from_millis(300) {
            return Err(ConfigError::Invalid {
                field: "session_timeout",
                reason: "must be at least 300ms".into(),
            });
        }
        // The connection manager spawns its task on the current runtime (and panics without one).
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime { backend: "redis" });
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.settings.response_timeout))
            .set_connection_timeout(Some(self.settings.response_timeout))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|error| invalid(format!("{}: {error}", redact(&self.url))))?;
        Ok(Redis {
            shared: Arc::new(Shared {
                url: self.url,
                client,
                conn,
                settings: self.settings,
                partitions: Mutex::new(HashMap::new()),
                delayed: Mutex::new(HashSet::new()),
                next_member: AtomicU64::new(0),
            }),
        })
    }
}

impl Backend for Redis {
    type Consumer = RedisConsumer;

    fn name(&self) -> &'static str {
        "redis"
    }

    /// Checks the connection (a missing password is named here, at start), creates the main
    /// topic if it has no partition count yet, and notes which topics are retry levels.
    async fn prepare(&self, topology: &Topology) -> Result<(), BackendError> {
        self.check_connection().await?;
        self.partition_count(&topology.main).await?;
        self.shared
            .delayed
            .lock()
            .unwrap()
            .extend(topology.retries.iter().cloned());
        Ok(())
    }

    async fn partitions(&self, topic: &str) -> Result<Option<u32>, BackendError> {
        let count: Option<u32> = redis::cmd("HGET")
            .arg(keys::meta(topic))
            .arg("partitions")
            .query_async(&mut self.connection())
            .await
            .map_err(transport)?;
        if let Some(count) = count {
            self.shared
                .partitions
                .lock()
                .unwrap()
                .insert(topic.to_owned(), count);
        }
        Ok(count)
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BackendError> {
        let _: i64 = redis::cmd("HSETNX")
            .arg(keys::meta(topic))
            .arg("partitions")
            .arg(partitions)
            .query_async(&mut self.connection())
            .await
            .map_err(transport)?;
        Ok(())
    }

    /// Entries the group has not read, plus those read and not yet acknowledged, plus the
    /// retries waiting in the topic's delay set.
    async fn lag(&self, topic: &str, group: &str) -> Result<u64, BackendError> {
        let mut conn = self.connection();
        let partitions = self.partitions(topic).await?.unwrap_or(0);
        let mut lag = 0;
        for partition in 0..partitions {
            let key = keys::stream(topic, partition);
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
        let waiting: u64 = redis::cmd("ZCARD")
            .arg(keys::delayed(topic))
            .query_async(&mut conn)
            .await
            .map_err(transport)?;
        Ok(lag + waiting)
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<RedisConsumer, BackendError> {
        let partitions = self.partition_count(&subscription.topic).await?;
        RedisConsumer::start(self.clone(), subscription, partitions).await
    }

    async fn send(&self, topic: &str, record: OutboundRecord) -> Result<Delivered, BackendError> {
        let partition = self.pick_partition(topic, &record).await?;
        self.write(topic, partition, &record, None).await
    }
}

/// The entry a hand-off acknowledges: its stream, group and ID.
pub(crate) struct Source {
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) id: StreamId,
}

impl Redis {
    async fn pick_partition(&self, topic: &str, record: &OutboundRecord) -> Result<u32, BackendError> {
        let count = self.partition_count(topic).await?;
        Ok(match (record.partition, &record.key) {
            (Some(p), _) if p < count => p,
            (Some(p), _) => {
                return Err(BackendError::Produce {
                    topic: topic.to_owned(),
                    source: format!("partition {p} does not exist (the topic has {count})").into(),
                })
            }
            (None, Some(key)) => super::partition_for_key(key, count),
            (None, None) => (self.shared.next_member.fetch_add(1, Ordering::Relaxed) % count as u64) as u32,
        })
    }

    /// XADD (or, with a due time, ZADD to the delay set) and, for a hand-off, XACK the source
    /// in the same MULTI/EXEC: the entry is never in both places or in neither. No script: the
    /// delay set's member is packed here, so the server only stores it (a Lua hand-off cost
    /// the server ~53 µs each, capping a level at ~19k hand-offs/s; ZADD + XACK cost ~10).
    async fn write(
        &self,
        topic: &str,
        partition: u32,
        record: &OutboundRecord,
        source: Option<Source>,
    ) -> Result<Delivered, BackendError> {
        let stream = keys::stream(topic, partition);
        let fields = encode(record);
        let mut pipe = redis::pipe();
        if source.is_some() {
            pipe.atomic();
        }
        let delayed = record.not_before_ms.is_some();
        match record.not_before_ms {
            Some(due) => {
                let member_id = match &source {
                    Some(source) => format!("{}/{}/{}", source.stream, source.group, source.id),
                    None => self.member_name(),
                };
                let member = msgpack::pack(&stream, &member_id, &fields);
                pipe.cmd("ZADD")
                    .arg(keys::delayed(topic))
                    .arg(due)
                    .arg(member)
                    .ignore();
            }
            None => {
                let add = pipe.cmd("XADD");
                add.arg(&stream).arg("*");
                for (name, value) in &fields {
                    add.arg(name.as_bytes()).arg(*value);
                }
            }
        }
        if let Some(source) = &source {
            pipe.cmd("XACK")
                .arg(&source.stream)
                .arg(&source.group)
                .arg(source.id.to_string())
                .ignore();
        }
        let failed = |error: RedisError| BackendError::Produce {
            topic: topic.to_owned(),
            source: error.into(),
        };
        let offset = if delayed {
            let () = self.query_retrying(&pipe).await.map_err(failed)?;
            0
        } else {
            let (id,): (String,) = self.query_retrying(&pipe).await.map_err(failed)?;
            StreamId::parse(id.as_bytes()).map_or(0, StreamId::offset)
        };
        Ok(Delivered { partition, offset })
    }

    /// Runs `cmd`, again after a dropped or refused connection (a server restart, a network
    /// blip) until the response timeout has passed. A write whose reply was lost may then be
    /// applied twice: at least once, as everywhere.
    async fn query_retrying<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Result<T, RedisError> {
        let mut conn = self.connection();
        let deadline = tokio::time::Instant::now() + self.shared.settings.response_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            match cmd.query_async(&mut conn).await {
                Err(error)
                    if (error.is_io_error()
                        || error.is_connection_dropped()
                        || error.is_connection_refusal())
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(%error, retry_in = ?pause, "redis write failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                result => return result,
            }
        }
    }
}

pub(crate) fn transport(error: RedisError) -> BackendError {
    BackendError::Transport {
        backend: "redis",
        source: Box::new(error),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Key names; the topic is the hash tag of every key that belongs to it.
pub(crate) mod keys {
    pub(crate) fn stream(topic: &str, partition: u32) -> String {
        format!("{{{topic}}}:{partition}")
    }
    pub(crate) fn meta(topic: &str) -> String {
        format!("{{{topic}}}:meta")
    }
    pub(crate) fn delayed(topic: &str) -> String {
        format!("{{{topic}}}:delayed")
    }
    pub(crate) fn members(topic: &str, group: &str) -> String {
        format!("{{{topic}}}:members:{group}")
    }
    pub(crate) fn lease(topic: &str, group: &str, partition: u32) -> String {
        format!("{{{topic}}}:lease:{group}:{partition}")
    }
}

/// Lua scripts; each runs atomically on the server.
pub(crate) mod scripts {
    /// KEYS: delay set. ARGV: now (epoch ms), most entries to move.
    /// Moves every due entry to its stream and removes it from the set. Returns the number
    /// moved and the due time of the next waiting entry (-1 when none waits).
    pub(crate) const MOVE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local entry = {cmsgpack.unpack(member)}
  redis.call('XADD', entry[1], '*', unpack(entry, 3))
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then return {#due, tonumber(next[2])} end
return {#due, -1}
"#;

    /// KEYS: lease. ARGV: member, ttl ms. Takes or renews the lease; 1 if this member holds it.
    pub(crate) const ACQUIRE: &str = r#"
local owner = redis.call('GET', KEYS[1])
if (not owner) or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

    /// KEYS: lease. ARGV: member. Gives the lease up if this member holds it.
    pub(crate) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;
}

/// A stream entry ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

/// Bits of an offset that hold the ID's sequence number.
const SEQ_BITS: u32 = 20;

impl StreamId {
    pub(crate) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub(crate) fn parse(text: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The ID as an offset: `ms × 2^20 + seq`. Sequence numbers past 2^20 - 1 (only IDs a
    /// writer chose itself) share the last offset of their millisecond.
    pub(crate) fn offset(self) -> u64 {
        (self.ms << SEQ_BITS) | self.seq.min((1 << SEQ_BITS) - 1)
    }

    /// The ID just before this one, for "entries after" reads that must include this one.
    pub(crate) fn before(self) -> StreamId {
        match (self.ms, self.seq) {
            (0, 0) => self,
            (ms, 0) => StreamId {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => StreamId { ms, seq: seq - 1 },
        }
    }

    /// The ID just after this one.
    pub(crate) fn after(self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An entry's fields, names and values as stored.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

const PAYLOAD: &str = "payload";
const KEY: &str = "key";
const ESCAPE: &str = "h:";

/// A record as stream fields.
fn encode(record: &OutboundRecord) -> Vec<(std::borrow::Cow<'_, str>, &[u8])> {
    use std::borrow::Cow;
    let mut fields = Vec::with_capacity(record.headers.len() + 2);
    if let Some(payload) = &record.payload {
        fields.push((Cow::Borrowed(PAYLOAD), &payload[..]));
    }
    if let Some(key) = &record.key {
        fields.push((Cow::Borrowed(KEY), &key[..]));
    }
    for (name, value) in record.headers.iter() {
        let name = if name == PAYLOAD || name == KEY || name.starts_with(ESCAPE) {
            Cow::Owned(format!("{ESCAPE}{name}"))
        } else {
            Cow::Borrowed(name)
        };
        fields.push((name, value));
    }
    if fields.is_empty() {
        // A stream entry needs a field: nothing at all is written as an empty payload.
        fields.push((Cow::Borrowed(PAYLOAD), &[][..]));
    }
    fields
}

/// Stream fields as a record.
pub(crate) fn decode(partition: u32, id: StreamId, fields: Fields) -> Record {
    let mut payload = None;
    let mut key = None;
    let mut headers = Headers::new();
    for (name, value) in fields {
        match &name[..] {
            b"payload" if payload.is_none() => payload = Some(Bytes::from(value)),
            b"key" if key.is_none() => key = Some(Bytes::from(value)),
            _ => {
                let name = String::from_utf8(name)
                    .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
                let name = match name.strip_prefix(ESCAPE) {
                    Some(escaped) => escaped.to_owned(),
                    None => name,
                };
                headers.insert(name, Bytes::from(value));
            }
        }
    }
    Record {
        partition,
        offset: id.offset(),
        timestamp_ms: Some(id.ms as i64),
        key,
        payload,
        headers,
    }
}

/// A delay-set member: (partition, fields).
fn unpack_delayed(member: &[u8]) -> Option<(u32, Fields)> {
    let mut items = msgpack::strings(member)?.into_iter();
    let stream = items.next()?;
    let partition = std::str::from_utf8(&stream)
        .ok()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let _member_id = items.next()?;
    let mut fields = Vec::new();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        fields.push((name, value));
    }
    Some((partition, fields))
}

/// Just enough msgpack for a delay set's members: strings, written as Lua's `cmsgpack.pack`
/// writes them (so the move script's `cmsgpack.unpack` reads them) and read back.
mod msgpack {
    /// `cmsgpack.pack(stream, member_id, name1, value1, ...)`: the values one after another.
    pub(super) fn pack(
        stream: &str,
        member_id: &str,
        fields: &[(std::borrow::Cow<'_, str>, &[u8])],
    ) -> Vec<u8> {
        let size = stream.len()
            + member_id.len()
            + fields.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>();
        let mut out = Vec::with_capacity(size + 10);
        push(&mut out, stream.as_bytes());
        push(&mut out, member_id.as_bytes());
        for (name, value) in fields {
            push(&mut out, name.as_bytes());
            push(&mut out, value);
        }
        out
    }

    /// One string, in the shortest form lua-cmsgpack 0.4 (Redis's) writes.
    fn push(out: &mut Vec<u8>, bytes: &[u8]) {
        let len = bytes.len();
        if len < 32 {
            out.push(0xa0 | len as u8);
        } else if len <= 0xff {
            out.extend_from_slice(&[0xd9, len as u8]);
        } else if len <= 0xffff {
            out.push(0xda);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        out.extend_from_slice(bytes);
    }

    pub(super) fn strings(mut data: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some((&tag, rest)) = data.split_first() {
            let (len, rest) = match tag {
                0xa0..=0xbf => ((tag & 0x1f) as usize, rest),
                0xd9 | 0xc4 => (*rest.first()? as usize, &rest[1..]),
                0xda | 0xc5 => (
                    u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
                    &rest[2..],
                ),
                0xdb | 0xc6 => (
                    u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
                    &rest[4..],
                ),
                _ => return None,
            };
            out.push(rest.get(..len)?.to_vec());
            data = &rest[len..];
        }
        Some(out)
    }
}

/// `[[id, [field, value, ...]], ...]` as entries; an entry whose fields are nil (deleted while
/// pending) has none.
pub(crate) fn parse_entries(value: Value) -> Vec<(StreamId, Fields)> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let mut parts = parts.into_iter();
            let id = StreamId::parse(bytes_of(&parts.next()?)?)?;
            let fields = match parts.next() {
                // The client's buffers move into the record: no copy per field.
                Some(Value::Array(flat)) => {
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        if let (Some(name), Some(value)) = (into_bytes(name), into_bytes(value)) {
                            fields.push((name, value));
                        }
                    }
                    fields
                }
                _ => Vec::new(),
            };
            Some((id, fields))
        })
        .collect()
}

pub(crate) fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

pub(crate) fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// One group as `XINFO GROUPS` describes it.
pub(crate) struct GroupInfo {
    pub(crate) name: Vec<u8>,
    pub(crate) pending: u64,
    pub(crate) last_delivered: StreamId,
    /// Entries not yet delivered to the group; unknown after some deletions.
    pub(crate) lag: Option<u64>,
}

pub(crate) fn parse_groups(value: &Value) -> Vec<GroupInfo> {
    let Value::Array(groups) = value else {
        return Vec::new();
    };
    groups
        .iter()
        .filter_map(|group| {
            let pairs: Vec<(&[u8], &Value)> = match group {
                Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|p| Some((bytes_of(&p[0])?, p.get(1)?)))
                    .collect(),
                Value::Map(map) => map.iter().filter_map(|(k, v)| Some((bytes_of(k)?, v))).collect(),
                _ => return None,
            };
            let field = |name: &str| pairs.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| *v);
            let number = |name: &str| match field(name)? {
                Value::Int(n) => u64::try_from(*n).ok(),
                other => std::str::from_utf8(bytes_of(other)?).ok()?.parse().ok(),
            };
            Some(GroupInfo {
                name: bytes_of(field("name")?)?.to_vec(),
                pending: number("pending").unwrap_or(0),
                last_delivered: field("last-delivered-id")
                    .and_then(bytes_of)
                    .and_then(StreamId::parse)
                    .unwrap_or(StreamId::ZERO),
                lag: number("lag"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_stream_order_and_round_trip_neighbours() {
        let a = StreamId {
            ms: 1_700_000_000_000,
            seq: 0,
        };
        let b = StreamId {
            ms: 1_700_000_000_000,
            seq: 7,
        };
        let c = StreamId {
            ms: 1_700_000_000_001,
            seq: 0,
        };
        assert!(a.offset() < b.offset() && b.offset() < c.offset());
        assert_eq!(b.offset() >> SEQ_BITS, b.ms);
        assert_eq!(
            c.before(),
            StreamId {
                ms: 1_700_000_000_000,
                seq: u64::MAX
            }
        );
        assert_eq!(c.before().after(), c);
        assert_eq!(StreamId::parse(b"12-3"), Some(StreamId { ms: 12, seq: 3 }));
        assert_eq!(StreamId::parse(b"12"), None);
    }

    #[test]
    fn fields_round_trip_including_reserved_header_names() {
        let mut headers = Headers::new();
        headers.insert("payload", "a header named payload");
        headers.insert("h:x", "escaped too");
        headers.insert("rk-attempts", "2");
        let record = OutboundRecord {
            partition: None,
            key: Some(Bytes::from_static(b"k\x00")),
            payload: Some(Bytes::from_static(b"\xff\xfe body")),
            headers: headers.clone(),
            not_before_ms: None,
        };
        let fields: Fields = encode(&record)
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        assert_eq!(fields[2].0, b"h:payload");
        let decoded = decode(3, StreamId { ms: 5, seq: 1 }, fields);
        assert_eq!(decoded.payload, record.payload);
        assert_eq!(decoded.key, record.key);
        assert_eq!(decoded.headers, headers);
        assert_eq!((decoded.partition, decoded.timestamp_ms), (3, Some(5)));
    }

    #[test]
    fn msgpack_pack_reads_back_in_every_length_form() {
        use std::borrow::Cow;
        let long = vec![7u8; 70_000];
        let fields = [
            (Cow::Borrowed("payload"), &[b'x'; 40][..]),
            (Cow::Borrowed("rk-error-message"), &[b'e'; 300][..]),
            (Cow::Borrowed("h:key"), &long[..]),
            (Cow::Borrowed("empty"), &[][..]),
        ];
        let packed = msgpack::pack("{orders.retry.1}:0", "src/g/1-0", &fields);
        assert_eq!(&packed[..2], &[0xa0 | 18, b'{']);
        let strings = msgpack::strings(&packed).unwrap();
        assert_eq!(strings.len(), 2 + 2 * fields.len());
        assert_eq!(strings[0], b"{orders.retry.1}:0");
        assert_eq!(strings[1], b"src/g/1-0");
        for (i, (name, value)) in fields.iter().enumerate() {
            assert_eq!(strings[2 + 2 * i], name.as_bytes());
            assert_eq!(strings[3 + 2 * i], *value);
        }
    }

    #[test]
    fn msgpack_strings_read_every_length_form() {
        let long = vec![b'x'; 70_000];
        let mut data = vec![
            0xa3, b'a', b'b', b'c', 0xd9, 2, b'h', b'i', 0xda, 0, 1, b'!', 0xdb,
        ];
        data.extend_from_slice(&(long.len() as u32).to_be_bytes());
        data.extend_from_slice(&long);
        let strings = msgpack::strings(&data).unwrap();
        assert_eq!(strings[..3], [b"abc".to_vec(), b"hi".to_vec(), b"!".to_vec()]);
        assert_eq!(strings[3].len(), 70_000);
        assert_eq!(msgpack::strings(&[0xa5, b'a']), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("rediss://me:secret@h:1"), "rediss://me:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
