//! [`Settings`] and its parts, the backend choice and its rule; public as
//! [`retry_kafka::settings`](crate::settings). The environment is read in `env.rs`, every
//! variable named in `vars.rs`. Imports nothing but the error types: the backends name their
//! variables from `vars`, and `runtime/connect.rs` turns settings into backends.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

mod env;

#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use env::host_name;
pub mod vars;

/// Everything [`run`](crate::run) takes from the environment, typed. See the [module](crate::settings).
///
/// A field left at its default is not set: the backend's own default applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// [`RETRY_KAFKA_BACKEND`](vars::RETRY_KAFKA_BACKEND): the backend, when not the one whose
    /// address is the only one given (see [`choice`](Settings::choice)).
    pub backend: Option<BackendChoice>,
    /// The Kafka cluster: `KAFKA_*`.
    pub kafka: KafkaSettings,
    /// The Redis server: `REDIS_*`.
    pub redis: RedisSettings,
    /// The PostgreSQL database of retries and dead letters: `DATABASE_URL`, `POSTGRES_*`.
    pub postgres: PostgresSettings,
    /// [`RETRY_KAFKA_METRICS_ADDR`](vars::RETRY_KAFKA_METRICS_ADDR): where `/metrics`,
    /// `/healthz` and `/readyz` are served (feature `prometheus`); `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// [`RETRY_KAFKA_PRINT_TOPOLOGY`](vars::RETRY_KAFKA_PRINT_TOPOLOGY), or
    /// [`--retry-kafka-topology`](vars::PRINT_TOPOLOGY_ARG) as the program's first argument:
    /// [`run`](crate::run) prints the handlers' topology
    /// ([`App::print_plan`](crate::App::print_plan)) and connects nowhere.
    pub print_topology: bool,
}

/// Kafka's settings ([`Kafka::builder`](crate::backend::kafka::Kafka::builder) in code).
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaSettings {
    /// [`KAFKA_BROKERS`](vars::KAFKA_BROKERS): the bootstrap servers.
    pub brokers: Option<String>,
    /// [`KAFKA_RETRY_BROKERS`](vars::KAFKA_RETRY_BROKERS): the cluster of retry levels and
    /// dead letters, when not the main one.
    pub retry_brokers: Option<String>,
    /// `KAFKA_CLIENT_*`: librdkafka properties of every client, sorted by name.
    pub client_properties: Vec<(String, String)>,
    /// `KAFKA_CONSUMER_*`: librdkafka properties of consumers.
    pub consumer_properties: Vec<(String, String)>,
    /// `KAFKA_PRODUCER_*`: librdkafka properties of the producer.
    pub producer_properties: Vec<(String, String)>,
    /// [`KAFKA_COMMIT_INTERVAL_MS`](vars::KAFKA_COMMIT_INTERVAL_MS).
    pub commit_interval: Option<Duration>,
    /// [`KAFKA_COMMIT_RECORDS`](vars::KAFKA_COMMIT_RECORDS).
    pub commit_records: Option<u64>,
    /// [`KAFKA_AT_RISK_MS`](vars::KAFKA_AT_RISK_MS).
    pub at_risk_limit: Option<Duration>,
    /// [`KAFKA_AT_RISK_RECORDS`](vars::KAFKA_AT_RISK_RECORDS).
    pub at_risk_records: Option<u64>,
    /// [`KAFKA_RETRY_FETCH_WAIT_MS`](vars::KAFKA_RETRY_FETCH_WAIT_MS).
    pub retry_fetch_wait: Option<Duration>,
    /// [`KAFKA_EXACTLY_ONCE`](vars::KAFKA_EXACTLY_ONCE).
    pub exactly_once: bool,
}

/// Redis's settings ([`Redis::builder`](crate::backend::redis::Redis::builder) in code).
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisSettings {
    /// [`REDIS_URL`](vars::REDIS_URL).
    pub url: Option<String>,
    /// [`REDIS_CLUSTER_URLS`](vars::REDIS_CLUSTER_URLS): a Redis Cluster's nodes, with the
    /// cluster's key layout; empty for one server.
    pub cluster_urls: Vec<String>,
    /// [`REDIS_SESSION_TIMEOUT_MS`](vars::REDIS_SESSION_TIMEOUT_MS).
    pub session_timeout: Option<Duration>,
    /// [`REDIS_KEEP_ACKNOWLEDGED_MS`](vars::REDIS_KEEP_ACKNOWLEDGED_MS).
    pub keep_acknowledged: Option<Duration>,
    /// [`REDIS_KEEP_ACKNOWLEDGED_ENTRIES`](vars::REDIS_KEEP_ACKNOWLEDGED_ENTRIES).
    pub keep_acknowledged_entries: Option<u64>,
    /// [`REDIS_DEFAULT_PARTITIONS`](vars::REDIS_DEFAULT_PARTITIONS).
    pub default_partitions: Option<u32>,
    /// [`REDIS_UNORDERED`](vars::REDIS_UNORDERED).
    pub unordered: bool,
    /// [`REDIS_TLS_CA_FILE`](vars::REDIS_TLS_CA_FILE): read when connecting.
    pub tls_ca_file: Option<PathBuf>,
    /// [`REDIS_WAIT_REPLICAS`](vars::REDIS_WAIT_REPLICAS).
    pub wait_replicas: Option<u32>,
}

/// PostgreSQL's settings (`Postgres::builder` in code, feature `postgres`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresSettings {
    /// [`DATABASE_URL`](vars::DATABASE_URL), or else [`POSTGRES_URL`](vars::POSTGRES_URL).
    pub url: Option<String>,
    /// [`POSTGRES_KEEP_HANDLED_MS`](vars::POSTGRES_KEEP_HANDLED_MS).
    pub keep_handled: Option<Duration>,
    /// [`POSTGRES_LEASE_MS`](vars::POSTGRES_LEASE_MS).
    pub lease: Option<Duration>,
    /// The variable `url` came from, for messages.
    pub(crate) url_variable: &'static str,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: None,
            keep_handled: None,
            lease: None,
            url_variable: vars::DATABASE_URL,
        }
    }
}

/// The backend [`Settings`] choose, by the rule of [`Settings::choice`].
///
/// ```
/// use retry_kafka::settings::BackendChoice;
///
/// assert_eq!("kafka+redis".parse::<BackendChoice>()?, BackendChoice::KafkaRedis);
/// assert_eq!(BackendChoice::KafkaRedis.to_string(), "kafka+redis");
/// assert!("kafak".parse::<BackendChoice>().unwrap_err().to_string().contains("unknown backend"));
/// # Ok::<(), retry_kafka::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendChoice {
    /// `memory`: the in-process broker.
    Memory,
    /// `kafka-embedded`: an in-process Kafka cluster.
    #[cfg(feature = "kafka")]
    KafkaEmbedded,
    /// `kafka`: Kafka at `KAFKA_BROKERS`.
    #[cfg(feature = "kafka")]
    Kafka,
    /// `redis`: Redis at `REDIS_URL`.
    #[cfg(feature = "redis")]
    Redis,
    /// `kafka+redis`: main topics on Kafka, retries and dead letters on Redis.
    #[cfg(all(feature = "kafka", feature = "redis"))]
    KafkaRedis,
    /// `kafka+postgres`: main topics on Kafka, retries and dead letters in PostgreSQL.
    #[cfg(all(feature = "kafka", feature = "postgres"))]
    KafkaPostgres,
    /// `redis+postgres`: main topics on Redis, retries and dead letters in PostgreSQL.
    #[cfg(all(feature = "redis", feature = "postgres"))]
    RedisPostgres,
}

impl BackendChoice {
    /// Every choice this build supports, in the order messages list them.
    const ALL: &'static [BackendChoice] = &[
        #[cfg(feature = "kafka")]
        BackendChoice::Kafka,
        #[cfg(feature = "kafka")]
        BackendChoice::KafkaEmbedded,
        #[cfg(feature = "redis")]
        BackendChoice::Redis,
        #[cfg(all(feature = "kafka", feature = "redis"))]
        BackendChoice::KafkaRedis,
        #[cfg(all(feature = "kafka", feature = "postgres"))]
        BackendChoice::KafkaPostgres,
        #[cfg(all(feature = "redis", feature = "postgres"))]
        BackendChoice::RedisPostgres,
        BackendChoice::Memory,
    ];

    /// The value of `RETRY_KAFKA_BACKEND` that picks it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Memory => "memory",
            #[cfg(feature = "kafka")]
            BackendChoice::KafkaEmbedded => "kafka-embedded",
            #[cfg(feature = "kafka")]
            BackendChoice::Kafka => "kafka",
            #[cfg(feature = "redis")]
            BackendChoice::Redis => "redis",
            #[cfg(all(feature = "kafka", feature = "redis"))]
            BackendChoice::KafkaRedis => "kafka+redis",
            #[cfg(all(feature = "kafka", feature = "postgres"))]
            BackendChoice::KafkaPostgres => "kafka+postgres",
            #[cfg(all(feature = "redis", feature = "postgres"))]
            BackendChoice::RedisPostgres => "redis+postgres",
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendChoice {
    type Err = ConfigError;

    /// A value of `RETRY_KAFKA_BACKEND`; anything else fails naming the variable and the
    /// values this build supports.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        if let Some(choice) = Self::ALL.iter().find(|choice| choice.as_str() == text) {
            return Ok(*choice);
        }
        let supported: Vec<String> = Self::ALL
            .iter()
            .map(|choice| format!("{:?}", choice.as_str()))
            .collect();
        Err(ConfigError::Invalid {
            field: vars::RETRY_KAFKA_BACKEND,
            reason: format!(
                "unknown backend {text:?}; this build supports {}",
                match supported.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                    None => String::new(),
                }
            ),
        })
    }
}

impl Settings {
    /// The backend these settings choose: [`backend`](Settings::backend) when set, else the
    /// one whose address is given: Kafka (`brokers`), Redis (`url`), or either of them with
    /// PostgreSQL (`DATABASE_URL` / `POSTGRES_URL`) for the retries. None given fails with
    /// [`ConfigError::NoBackend`]; both Kafka and Redis fails asking for a choice. The
    /// chosen backends' addresses are checked when connecting.
    ///
    /// ```
    /// use retry_kafka::error::ConfigError;
    /// use retry_kafka::settings::{BackendChoice, Settings};
    ///
    /// let mut settings = Settings::default();
    /// assert_eq!(settings.choice(), Err(ConfigError::NoBackend));
    /// settings.kafka.brokers = Some("localhost:9092".into());
    /// assert_eq!(settings.choice()?, BackendChoice::Kafka);
    /// settings.redis.url = Some("redis://localhost".into());
    /// assert!(settings.choice().unwrap_err().to_string().contains("\"kafka+redis\""));
    /// settings.backend = Some(BackendChoice::KafkaRedis);
    /// assert_eq!(settings.choice()?, BackendChoice::KafkaRedis);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn choice(&self) -> Result<BackendChoice, ConfigError> {
        if let Some(choice) = self.backend {
            return Ok(choice);
        }
        let kafka = cfg!(feature = "kafka") && self.kafka.brokers.is_some();
        let redis =
            cfg!(feature = "redis") && (self.redis.url.is_some() || !self.redis.cluster_urls.is_empty());
        #[cfg(feature = "postgres")]
        if self.postgres.url.is_some() {
            return self.choice_with_postgres(kafka, redis);
        }
        match (kafka, redis) {
            #[cfg(feature = "kafka")]
            (true, false) => Ok(BackendChoice::Kafka),
            #[cfg(feature = "redis")]
            (false, true) => Ok(BackendChoice::Redis),
            (true, true) => Err(ConfigError::Invalid {
                field: vars::RETRY_KAFKA_BACKEND,
                reason: "both KAFKA_BROKERS and REDIS_URL are set; set RETRY_KAFKA_BACKEND to \"kafka\", \
                         \"redis\" or \"kafka+redis\" (Kafka main topics, retries and dead letters on Redis)"
                    .into(),
            }),
            _ => Err(ConfigError::NoBackend),
        }
    }

    /// PostgreSQL's URL is given beside exactly one of Kafka's and Redis's addresses.
    #[cfg(feature = "postgres")]
    fn choice_with_postgres(&self, kafka: bool, redis: bool) -> Result<BackendChoice, ConfigError> {
        let url = self.postgres.url_variable;
        match (kafka, redis) {
            #[cfg(feature = "kafka")]
            (true, false) => Ok(BackendChoice::KafkaPostgres),
            #[cfg(feature = "redis")]
            (false, true) => Ok(BackendChoice::RedisPostgres),
            (true, true) => Err(ConfigError::Invalid {
                field: vars::RETRY_KAFKA_BACKEND,
                reason: format!(
                    "{url}, KAFKA_BROKERS and REDIS_URL are all set; set RETRY_KAFKA_BACKEND to \
                     \"kafka+postgres\" or \"redis+postgres\" (main topics on the first, retries \
                     and dead letters in PostgreSQL), or to \"kafka\", \"redis\" or \"kafka+redis\""
                ),
            }),
            _ => Err(ConfigError::Invalid {
                field: url,
                reason: "PostgreSQL keeps retries and dead letters only: set KAFKA_BROKERS or REDIS_URL \
                         for the main topics too (or unset it, or set RETRY_KAFKA_BACKEND)"
                    .into(),
            }),
        }
    }

    /// The metrics address, refused in a build without the `prometheus` feature rather than
    /// served nowhere silently.
    pub(crate) fn checked_metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_addr.is_some() && cfg!(not(feature = "prometheus")) {
            return Err(ConfigError::Invalid {
                field: vars::RETRY_KAFKA_METRICS_ADDR,
                reason:
                    "this build has no metrics endpoint; enable the \"prometheus\" feature of retry-kafka"
                        .into(),
            });
        }
        Ok(self.metrics_addr)
    }
}

/// `what` is required and not set: fails naming `variable`, saying what to give.
#[cfg(any(feature = "kafka", feature = "redis", feature = "postgres"))]
pub(crate) fn not_set(variable: &'static str, what: &str) -> ConfigError {
    ConfigError::Invalid {
        field: variable,
        reason: format!("not set; give {what}"),
    }
}

// Debug without secrets: URLs without their password, secret-looking properties hidden.

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |properties: &[(String, String)]| -> Vec<(String, String)> {
            properties
                .iter()
                .map(|(key, value)| {
                    let secret = ["password", "secret", "ssl.key", "sasl.jaas"]
                        .iter()
                        .any(|word| key.contains(word));
                    (key.clone(), if secret { "***".into() } else { value.clone() })
                })
                .collect()
        };
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("retry_brokers", &self.retry_brokers)
            .field("client_properties", &hidden(&self.client_properties))
            .field("consumer_properties", &hidden(&self.consumer_properties))
            .field("producer_properties", &hidden(&self.producer_properties))
            .field("commit_interval", &self.commit_interval)
            .field("commit_records", &self.commit_records)
            .field("at_risk_limit", &self.at_risk_limit)
            .field("at_risk_records", &self.at_risk_records)
            .field("retry_fetch_wait", &self.retry_fetch_wait)
            .field("exactly_once", &self.exactly_once)
            .finish()
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url.as_deref().map(without_password))
            .field(
                "cluster_urls",
                &self
                    .cluster_urls
                    .iter()
                    .map(|url| without_password(url))
                    .collect::<Vec<_>>(),
            )
            .field("session_timeout", &self.session_timeout)
            .field("keep_acknowledged", &self.keep_acknowledged)
            .field("keep_acknowledged_entries", &self.keep_acknowledged_entries)
            .field("default_partitions", &self.default_partitions)
            .field("unordered", &self.unordered)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.url.as_deref().map(without_password))
            .field("keep_handled", &self.keep_handled)
            .field("lease", &self.lease)
            .finish()
    }
}

/// `scheme://user:secret@host/...` as `scheme://user:***@host/...`; libpq's `password=...`
/// as `password=***`.
fn without_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let user = rest[..at].split(':').next().unwrap_or_default();
            let hidden = if rest[..at].contains(':') { ":***" } else { "" };
            return format!("{scheme}://{user}{hidden}{}", &rest[at..]);
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|word| match word.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        let mut settings = Settings::default();
        settings.redis.url = Some("redis://:hunter2@cache:6379/0".into());
        settings.postgres.url = Some("host=db user=app password=hunter2".into());
        settings.kafka.client_properties = vec![("sasl.password".into(), "hunter2".into())];
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://:***@cache:6379/0"), "{shown}");
        assert_eq!(
            without_password("postgres://app:pw@db/app"),
            "postgres://app:***@db/app"
        );
        assert_eq!(without_password("redis://cache:6379"), "redis://cache:6379");
    }
}
