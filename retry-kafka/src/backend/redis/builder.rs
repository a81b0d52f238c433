//! Settings of a [`Redis`] backend: [`RedisBuilder`], and the environment variables
//! [`Redis::from_env`] reads.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::error::redact;
use super::{Redis, Shared};
use crate::config;
use crate::error::ConfigError;

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
        let mut builder = Self::builder(config::required(
            URL_ENV,
            "the server's URL, e.g. redis://127.0.0.1:6379",
        )?);
        if let Some(ms) = config::number(SESSION_TIMEOUT_ENV)? {
            builder = builder.session_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = config::number(KEEP_ACKNOWLEDGED_ENV)? {
            builder = builder.keep_acknowledged(Duration::from_millis(ms));
        }
        if let Some(entries) = config::number(KEEP_ACKNOWLEDGED_ENTRIES_ENV)? {
            builder = builder.keep_acknowledged_entries(entries);
        }
        if let Some(partitions) = config::number(DEFAULT_PARTITIONS_ENV)? {
            builder = builder.default_partitions(partitions.try_into().unwrap_or(u32::MAX));
        }
        if let Some(pem) = config::file(TLS_CA_FILE_ENV)? {
            builder = builder.tls_root_certificate(pem);
        }
        if config::flag(UNORDERED_ENV)? {
            builder = builder.unordered();
        }
        builder.build()
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
                partitions: Default::default(),
                next_member: AtomicU64::new(0),
                admitted: AtomicBool::new(false),
            }),
        })
    }
}
