//! Settings of a [`Redis`] backend: [`RedisBuilder`]. The environment's are read by
//! [`Settings::from_env`](crate::settings::Settings::from_env).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};

use super::error::redact;
use super::keys::KeyLayout;
use super::link::Link;
use super::sentinel::{SentinelLink, SentinelUrl, Sentinels};
use super::{Client, Redis, Shared};
use crate::config::vars;
use crate::error::ConfigError;

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
    /// Replicas that must acknowledge a published entry (`WAIT`); 0: none.
    pub(crate) wait_replicas: u32,
}

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
    /// The nodes of a Redis Cluster to learn its shards from; empty for one server.
    cluster_nodes: Vec<String>,
    settings: Settings,
    tls_root: Option<Vec<u8>>,
}

impl Redis {
    /// Settings for the server at `url` (`redis://[:password@]host:port[/db]`, or `rediss://`
    /// for TLS with the `redis-tls` feature), or for the primary that Redis Sentinel names:
    /// `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master-name[/db]`.
    ///
    /// With `redis+sentinel://` the hosts are sentinels (port 26379 unless given), the path
    /// names the primary as the sentinels monitor it (`sentinel monitor <master-name> …`), and
    /// the user and password are the primary's; sentinels that want a password of their own
    /// take it as `?sentinel_password=…` (and `&sentinel_username=…`). Keys have the one-server
    /// layout, so a deployment moves from one server to a Sentinel-managed primary by its URL.
    /// After a failover the connections ask the sentinels for the new primary (ARCHITECTURE.md,
    /// Redis Sentinel).
    ///
    /// ```
    /// use retry_kafka::backend::redis::Redis;
    ///
    /// let one_server = Redis::builder("redis://:secret@10.0.0.1:6379/0");
    /// let behind_sentinel =
    ///     Redis::builder("redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/orders/0");
    /// ```
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder {
            url: url.into(),
            cluster_nodes: Vec::new(),
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
                wait_replicas: 0,
            },
            tls_root: None,
        }
    }
}

impl Redis {
    /// Settings for a Redis Cluster, given one or more of its nodes (`redis://host:port`, or
    /// `rediss://` with the `redis-tls` feature; a password in the first node's URL is used
    /// for every node); the client learns the rest of the cluster from them and follows
    /// its shards as they fail over (MOVED and ASK redirections, by redis-rs).
    ///
    /// Keys follow the cluster layout: each partition's keys in a slot of their own, so a
    /// topic's partitions spread over the shards (ARCHITECTURE.md, Redis keys). A deployment
    /// on one server keeps the one-server layout with [`Redis::builder`]; the two do not read
    /// each other's keys.
    ///
    /// ```
    /// use retry_kafka::backend::redis::Redis;
    ///
    /// let builder = Redis::cluster_builder(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
    /// ```
    pub fn cluster_builder<I, U>(nodes: I) -> RedisBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut builder = Redis::builder(nodes.join(","));
        builder.cluster_nodes = nodes;
        builder
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

    /// Makes every entry this backend publishes ([`Publish::send`](crate::backend::Publish::send):
    /// a producer's event, a replayed dead letter, and on `Tiered` the first retry of a main
    /// topic's record) wait until `replicas` replicas acknowledged it (`WAIT`, up to half the
    /// response timeout, 5 s) before the send returns: with a primary behind Sentinel, a
    /// failover then loses no entry whose send returned. Fewer acknowledgements fail the send
    /// (the entry may be on the primary: a send tried again may write it twice). Default 0:
    /// the primary's acknowledgement is enough. Hand-offs need none: one is a MULTI/EXEC with
    /// its source's acknowledgement, so a promoted replica has both or neither, and a source
    /// not acknowledged is read again. Not on a Redis Cluster (yet).
    ///
    /// ```
    /// use retry_kafka::backend::redis::Redis;
    ///
    /// let builder = Redis::builder("redis+sentinel://10.0.0.1,10.0.0.2,10.0.0.3/orders").wait_for_replicas(1);
    /// ```
    pub fn wait_for_replicas(mut self, replicas: u32) -> Self {
        self.settings.wait_replicas = replicas;
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
        if self.settings.session_timeout < Duration::from_millis(300) {
            return Err(ConfigError::Invalid {
                field: "session_timeout",
                reason: "must be at least 300ms".into(),
            });
        }
        #[cfg(not(feature = "redis-tls"))]
        if self.tls_root.is_some() {
            return Err(ConfigError::Invalid {
                field: vars::REDIS_TLS_CA_FILE,
                reason: "TLS needs the cargo feature `redis-tls` of retry-kafka".into(),
            });
        }
        if self.settings.wait_replicas > 0 && !self.cluster_nodes.is_empty() {
            return Err(ConfigError::Invalid {
                field: vars::REDIS_WAIT_REPLICAS,
                reason: "waiting for replicas is not supported on a Redis Cluster yet".into(),
            });
        }
        // The connections spawn their tasks on the current runtime (and panic without one).
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime { backend: "redis" });
        }
        let timeout = self.settings.response_timeout;
        let (client, conn, keys) = if self.cluster_nodes.is_empty() && SentinelUrl::is_sentinel(&self.url) {
            let invalid = |reason: String| ConfigError::Invalid {
                field: vars::REDIS_URL,
                reason: format!("{}: {reason}", redact(&self.url)),
            };
            let url = SentinelUrl::parse(&self.url).map_err(|error| invalid(error.to_string()))?;
            if self.tls_root.is_some() {
                return Err(ConfigError::Invalid {
                    field: vars::REDIS_TLS_CA_FILE,
                    reason: "TLS through Sentinel is not supported yet".into(),
                });
            }
            let sentinels =
                Arc::new(Sentinels::new(&url, timeout).map_err(|error| invalid(error.to_string()))?);
            let conn = SentinelLink::new(sentinels.clone(), timeout, timeout, url.db());
            let client = Client::Sentinel {
                sentinels,
                db: url.db(),
            };
            (client, Link::Sentinel(conn), KeyLayout::Server)
        } else if self.cluster_nodes.is_empty() {
            let invalid = |error: redis::RedisError| ConfigError::Invalid {
                field: vars::REDIS_URL,
                reason: format!("{}: {error}", redact(&self.url)),
            };
            let client = match &self.tls_root {
                None => redis::Client::open(self.url.as_str()),
                #[cfg(feature = "redis-tls")]
                Some(root) => redis::Client::build_with_tls(
                    self.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root.clone()),
                    },
                ),
                #[cfg(not(feature = "redis-tls"))]
                Some(_) => unreachable!("refused above"),
            }
            .map_err(invalid)?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(timeout))
                .set_max_delay(Duration::from_secs(2));
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(invalid)?;
            (Client::Server(client), Link::Server(conn), KeyLayout::Server)
        } else {
            if let Some(url) = self
                .cluster_nodes
                .iter()
                .find(|url| SentinelUrl::is_sentinel(url))
            {
                return Err(ConfigError::Invalid {
                    field: vars::REDIS_CLUSTER_URLS,
                    reason: format!(
                        "{} names sentinels, not a cluster's node: give a redis+sentinel:// URL in REDIS_URL",
                        redact(url)
                    ),
                });
            }
            let nodes: Vec<String> = self.cluster_nodes.iter().map(|url| redact(url)).collect();
            let invalid = |error: redis::RedisError| ConfigError::Invalid {
                field: vars::REDIS_CLUSTER_URLS,
                reason: format!("{}: {error}", nodes.join(",")),
            };
            #[allow(unused_mut)] // mutated with `redis-tls` only
            let mut builder = ClusterClient::builder(self.cluster_nodes.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout);
            #[cfg(feature = "redis-tls")]
            if let Some(root) = &self.tls_root {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                });
            }
            let client = builder.build().map_err(invalid)?;
            let config = ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            let conn = client.get_pending_async_connection_with_config(config);
            (Client::Cluster(client), Link::Cluster(conn), KeyLayout::Cluster)
        };
        Ok(Redis {
            shared: Arc::new(Shared {
                url: self.url,
                client,
                keys,
                conn,
                settings: self.settings,
                partitions: Default::default(),
                publishing: Default::default(),
                next_member: AtomicU64::new(0),
                admitted: AtomicBool::new(false),
            }),
        })
    }
}
