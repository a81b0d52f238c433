//! Redis test support: the conformance harness over a `Redis` backend on a real
//! `redis-server` process started on a free loopback port and stopped on drop.

#![allow(dead_code)]

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::Value;
use retry_kafka::backend::redis::{Redis, RedisBuilder};
use retry_kafka::backend::{Backend as _, Browse as _, Record, Topic, TopicAdmin, TopicRole};
pub use retry_kafka_suite::{RedisCluster, RedisSentinel, RedisServer};

use crate::conformance::Harness;

#[allow(unused_imports)]
pub use retry_kafka_suite::init_test_tracing as init_tracing;

/// Settings for tests: short session timeout, and acknowledged entries kept for an hour so a
/// test can read a whole topic afterwards (trimming has tests of its own).
pub fn test_backend(url: &str) -> Redis {
    test_settings(url).build().expect("redis backend")
}

pub fn test_settings(url: &str) -> RedisBuilder {
    Redis::builder(url)
        .session_timeout(Duration::from_millis(1500))
        .keep_acknowledged(Duration::from_secs(3600))
}

/// The conformance harness on one redis-server, or (`RedisClusterHarness`) on a Redis Cluster.
pub struct RedisHarness<S = RedisServer> {
    pub backend: Redis,
    pub server: S,
}

/// The conformance harness on a Redis Cluster of three masters and three replicas, with the
/// cluster's key layout.
pub type RedisClusterHarness = RedisHarness<RedisCluster>;

/// What a harness's backend runs on: one server or a cluster, and a test's own connection to it.
pub trait Servers: Send + Sync + 'static {
    fn connection(&self) -> impl std::future::Future<Output = impl ConnectionLike + Send> + Send;
}

impl Servers for RedisServer {
    async fn connection(&self) -> impl ConnectionLike + Send {
        connect(&self.url()).await
    }
}

impl Servers for RedisCluster {
    async fn connection(&self) -> impl ConnectionLike + Send {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the redis cluster")
    }
}

impl Servers for RedisSentinel {
    /// A connection to the primary the sentinels name now.
    async fn connection(&self) -> impl ConnectionLike + Send {
        use redis::sentinel::{SentinelClient, SentinelServerType};
        SentinelClient::build(
            self.sentinel_urls(),
            RedisSentinel::MASTER_NAME,
            None,
            SentinelServerType::Master,
        )
        .expect("sentinel client")
        .get_async_connection()
        .await
        .expect("connect to the primary through the sentinels")
    }
}

/// The conformance harness on a primary with two replicas behind three sentinels, through a
/// `redis+sentinel://` URL (the one-server key layout).
pub type RedisSentinelHarness = RedisHarness<RedisSentinel>;

impl RedisHarness<RedisSentinel> {
    pub fn start_sentinel() -> Self {
        init_tracing();
        let server = RedisSentinel::start();
        let backend = test_backend(&server.url());
        assert!(backend.is_sentinel());
        RedisHarness { backend, server }
    }
}

impl RedisHarness<RedisServer> {
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// A harness on a server with `password` and, with `append_only`, an fsynced append-only
    /// file.
    pub fn start_with(password: Option<&str>, append_only: bool) -> Self {
        init_tracing();
        let server = RedisServer::start_with(password, append_only);
        let backend = test_backend(&server.url());
        RedisHarness { backend, server }
    }

    /// A harness whose members all read every partition ([`RedisBuilder::unordered`]).
    pub fn start_unordered() -> Self {
        init_tracing();
        let server = RedisServer::start();
        let backend = test_settings(&server.url())
            .unordered()
            .build()
            .expect("redis backend");
        RedisHarness { backend, server }
    }

    pub async fn connection(&self) -> MultiplexedConnection {
        connect(&self.server.url()).await
    }
}

pub async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// The stream of `topic`'s partition `p`.
pub fn stream(topic: &str, p: u32) -> String {
    format!("{{{topic}}}:{p}")
}

/// The stream of `topic`'s partition `p` in the cluster layout.
pub fn cluster_stream(topic: &str, p: u32) -> String {
    format!("{{{topic}:{p}}}")
}

/// The stream of `topic`'s partition `p` in `backend`'s layout.
pub fn stream_of(backend: &Redis, topic: &str, p: u32) -> String {
    match backend.is_cluster() {
        true => cluster_stream(topic, p),
        false => stream(topic, p),
    }
}

/// The entry IDs of a stream, in order.
pub async fn ids(conn: &mut (impl ConnectionLike + Send), stream: &str) -> Vec<String> {
    let entries: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Value::Array(parts) => match parts.first() {
                Some(Value::BulkString(id)) => Some(String::from_utf8_lossy(id).into_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("stream id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// How many entries of `stream` `group` has acknowledged as one prefix: the position of its
/// oldest pending entry, or of the first entry after the last it read.
pub async fn committed_position(conn: &mut (impl ConnectionLike + Send), stream: &str, group: &str) -> u64 {
    let ids = ids(conn, stream).await;
    let groups: redis::RedisResult<Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    let Ok(Value::Array(groups)) = groups else {
        return 0;
    };
    let field = |group: &Value, name: &str| -> Option<Value> {
        let Value::Array(flat) = group else { return None };
        flat.chunks(2)
            .find(|pair| matches!(&pair[0], Value::BulkString(n) if n == name.as_bytes()))
            .map(|pair| pair[1].clone())
    };
    let Some(info) = groups
        .iter()
        .find(|g| matches!(field(g, "name"), Some(Value::BulkString(n)) if n == group.as_bytes()))
    else {
        return 0;
    };
    let pending = matches!(field(info, "pending"), Some(Value::Int(n)) if n > 0);
    if pending {
        let summary: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(conn)
            .await
            .unwrap();
        let Value::Array(parts) = summary else {
            unreachable!()
        };
        let Value::BulkString(oldest) = &parts[1] else {
            unreachable!()
        };
        let oldest = id_key(&String::from_utf8_lossy(oldest));
        ids.iter().filter(|id| id_key(id) < oldest).count() as u64
    } else {
        let Some(Value::BulkString(last)) = field(info, "last-delivered-id") else {
            return 0;
        };
        let last = id_key(&String::from_utf8_lossy(&last));
        ids.iter().filter(|id| id_key(id) <= last).count() as u64
    }
}

impl<S: Servers> Harness for RedisHarness<S> {
    type Backend = Redis;

    fn backend(&self) -> Redis {
        self.backend.clone()
    }

    async fn create_topic(&self, topic: &str, partitions: u32) {
        self.backend
            .create_topic(&Topic::main(topic), partitions)
            .await
            .expect("create topic");
    }

    async fn records(&self, topic: &str) -> Vec<Record> {
        self.backend
            .read(&Topic::new(topic, retry_kafka_suite::role_of(topic)), &[])
            .await
            .expect("read topic")
    }

    /// Positions, not offsets: Redis offsets are IDs, and the suite counts messages.
    async fn committed(&self, topic: &str, group: &str) -> Vec<u64> {
        committed_positions(&mut self.server.connection().await, &self.backend, topic, group).await
    }

    async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        stream_lengths(&mut self.server.connection().await, &self.backend, topic).await
    }
}

/// `group`'s committed position on each partition of `topic`, in `backend`'s layout.
pub async fn committed_positions(
    conn: &mut (impl ConnectionLike + Send),
    backend: &Redis,
    topic: &str,
    group: &str,
) -> Vec<u64> {
    let mut positions = Vec::new();
    for p in 0..partitions_of(backend, topic).await {
        positions.push(committed_position(conn, &stream_of(backend, topic, p), group).await);
    }
    positions
}

/// The length of each partition's stream of `topic`, in `backend`'s layout.
pub async fn stream_lengths(
    conn: &mut (impl ConnectionLike + Send),
    backend: &Redis,
    topic: &str,
) -> Vec<u64> {
    let mut ends = Vec::new();
    for p in 0..partitions_of(backend, topic).await {
        let len: u64 = redis::cmd("XLEN")
            .arg(stream_of(backend, topic, p))
            .query_async(conn)
            .await
            .unwrap();
        ends.push(len);
    }
    ends
}

async fn partitions_of(backend: &Redis, topic: &str) -> u32 {
    backend
        .partitions(&Topic::new(topic, retry_kafka_suite::role_of(topic)))
        .await
        .expect("partitions")
        .unwrap_or(0)
}

impl RedisHarness<RedisCluster> {
    pub fn start_cluster() -> Self {
        init_tracing();
        let server = RedisCluster::start();
        let backend = cluster_settings(&server).build().expect("redis cluster backend");
        RedisHarness { backend, server }
    }

    /// On a cluster, members that all read every partition ([`RedisBuilder::unordered`]).
    pub fn start_cluster_unordered() -> Self {
        init_tracing();
        let server = RedisCluster::start();
        let backend = cluster_settings(&server)
            .unordered()
            .build()
            .expect("redis cluster backend");
        RedisHarness { backend, server }
    }
}

/// [`test_settings`] for a cluster.
pub fn cluster_settings(cluster: &RedisCluster) -> RedisBuilder {
    Redis::cluster_builder(cluster.urls())
        .session_timeout(Duration::from_millis(1500))
        .keep_acknowledged(Duration::from_secs(3600))
}

/// Nothing pending in `group` on `topic` and its first retry level: crash recovery claimed it.
pub async fn assert_nothing_pending(harness: &RedisHarness, topic: &str, group: &str) {
    assert_nothing_pending_on(&harness.backend, topic, group).await;
}

pub async fn assert_nothing_pending_on(backend: &Redis, topic: &str, group: &str) {
    let retry = format!("{topic}.{group}.retry.1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let main = backend.lag(&Topic::main(topic), group).await.unwrap();
        let retry = backend
            .lag(&Topic::new(retry.as_str(), TopicRole::Retry { level: 1 }), &retry)
            .await
            .unwrap();
        if main == 0 && retry == 0 {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let mut conn = connect(backend.url()).await;
            let mut pending = Vec::new();
            for p in 0..4 {
                let summary: Value = redis::cmd("XPENDING")
                    .arg(stream(topic, p))
                    .arg(group)
                    .arg("-")
                    .arg("+")
                    .arg(20)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(Value::Nil);
                pending.push(format!("{summary:?}"));
            }
            panic!("entries left unacknowledged: {main} on {topic}, {retry} on its retry level; pending: {pending:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
