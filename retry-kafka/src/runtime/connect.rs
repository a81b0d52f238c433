//! [`Settings`] to a backend, written once: [`Settings::with_backend`] builds the backend
//! the settings choose and hands it to a [`WithBackend`], generic over the backend's type.
//! [`run`](crate::run) runs the registered handlers with it; the `retry-kafka` tool its
//! commands. The `from_env` shortcuts of the backends take their part of the settings.

use std::future::Future;

use crate::backend::memory::InMemory;
use crate::backend::{Backend, Browse};
#[cfg(any(feature = "kafka", feature = "redis", feature = "postgres"))]
use crate::config::not_set;
#[cfg(feature = "kafka")]
use crate::config::KafkaSettings;
#[cfg(feature = "postgres")]
use crate::config::PostgresSettings;
#[cfg(feature = "redis")]
use crate::config::RedisSettings;
use crate::config::{vars, BackendChoice, Settings};
#[cfg(any(feature = "kafka", feature = "redis"))]
use crate::error::ConfigError;
use crate::error::Error;
#[cfg(feature = "kafka")]
use crate::kafka::Kafka;
#[cfg(feature = "postgres")]
use crate::postgres::Postgres;
#[cfg(feature = "redis")]
use crate::redis::Redis;

/// Work to do on whichever backend [`Settings`] choose: called once with the connected
/// backend, whose type is only known at run time. A trait rather than a closure because the
/// call is generic over the backend (a closure cannot be), and rather than an enum of backends
/// because each new backend would then add a variant every caller matches on.
///
/// ```
/// use retry_kafka::backend::{Backend, Browse};
/// use retry_kafka::settings::{BackendChoice, Settings, WithBackend};
///
/// /// The name of the backend the settings choose.
/// struct Name;
///
/// impl WithBackend for Name {
///     type Output = &'static str;
///     async fn run<B: Backend + Browse>(self, backend: B) -> &'static str {
///         backend.name()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> retry_kafka::Result<()> {
/// let mut settings = Settings::default();
/// settings.backend = Some(BackendChoice::Memory);
/// assert_eq!(settings.with_backend(Name).await?, "memory");
/// # Ok(()) }
/// ```
pub trait WithBackend {
    /// What the work gives back.
    type Output;

    /// Does the work on `backend`.
    fn run<B: Backend + Browse>(self, backend: B) -> impl Future<Output = Self::Output> + Send;
}

impl Settings {
    /// Connects the backend these settings choose ([`Settings::choice`]) and runs `work` on
    /// it. Fails before `work` starts when no backend is chosen or a chosen backend's address
    /// is missing or malformed, naming the variable; the backends connect on first use, so
    /// an unreachable server is `work`'s error. The in-process choices (`memory`,
    /// `kafka-embedded`) log a warning: nothing survives the process.
    pub async fn with_backend<W: WithBackend>(&self, work: W) -> Result<W::Output, Error> {
        let choice = self.choice()?;
        Ok(match choice {
            BackendChoice::Memory => {
                tracing::warn!(
                    "{}=memory: running on the in-process broker; nothing survives this process",
                    vars::RETRY_KAFKA_BACKEND
                );
                work.run(InMemory::new()).await
            }
            #[cfg(feature = "kafka")]
            BackendChoice::KafkaEmbedded => {
                tracing::warn!(
                    "{}=kafka-embedded: running on an in-process Kafka cluster; nothing survives this process",
                    vars::RETRY_KAFKA_BACKEND
                );
                work.run(Kafka::embedded()?).await
            }
            #[cfg(feature = "kafka")]
            BackendChoice::Kafka => work.run(kafka(&self.kafka)?).await,
            #[cfg(feature = "redis")]
            BackendChoice::Redis => work.run(redis(&self.redis)?).await,
            #[cfg(all(feature = "kafka", feature = "redis"))]
            BackendChoice::KafkaRedis => {
                no_exactly_once_with(&self.kafka, "Redis")?;
                let backend = crate::backend::Tiered::new(kafka(&self.kafka)?, redis(&self.redis)?);
                work.run(backend).await
            }
            #[cfg(all(feature = "kafka", feature = "postgres"))]
            BackendChoice::KafkaPostgres => {
                no_exactly_once_with(&self.kafka, "PostgreSQL")?;
                let backend = crate::backend::Tiered::new(kafka(&self.kafka)?, postgres(&self.postgres)?);
                work.run(backend).await
            }
            #[cfg(all(feature = "redis", feature = "postgres"))]
            BackendChoice::RedisPostgres => {
                let backend = crate::backend::Tiered::new(redis(&self.redis)?, postgres(&self.postgres)?);
                work.run(backend).await
            }
        })
    }
}

/// Exactly-once is Kafka's alone: a hand-off to retries kept in `store` cannot join the
/// transaction that commits its source's offset, so asking for it there is refused.
#[cfg(all(feature = "kafka", any(feature = "redis", feature = "postgres")))]
fn no_exactly_once_with(settings: &KafkaSettings, store: &str) -> Result<(), ConfigError> {
    match settings.exactly_once {
        false => Ok(()),
        true => Err(ConfigError::Invalid {
            field: vars::KAFKA_EXACTLY_ONCE,
            reason: format!(
                "exactly-once needs the retries and dead letters in Kafka, and here they are kept in \
                 {store}, which cannot take part in a Kafka transaction; unset it, or keep the retries \
                 in Kafka (RETRY_KAFKA_BACKEND=kafka)"
            ),
        }),
    }
}

/// The Kafka backend of `settings`.
#[cfg(feature = "kafka")]
fn kafka(settings: &KafkaSettings) -> Result<Kafka, ConfigError> {
    let brokers = settings
        .brokers
        .clone()
        .ok_or_else(|| not_set(vars::KAFKA_BROKERS, "the bootstrap servers, e.g. localhost:9092"))?;
    let mut builder = Kafka::builder(brokers);
    if let Some(retry) = &settings.retry_brokers {
        builder = builder.retry_brokers(retry.clone());
    }
    for (key, value) in &settings.client_properties {
        builder = builder.property(key.clone(), value.clone());
    }
    for (key, value) in &settings.consumer_properties {
        builder = builder.consumer_property(key.clone(), value.clone());
    }
    for (key, value) in &settings.producer_properties {
        builder = builder.producer_property(key.clone(), value.clone());
    }
    if let Some(interval) = settings.commit_interval {
        builder = builder.commit_interval(interval);
    }
    if let Some(records) = settings.commit_records {
        builder = builder.commit_records(records);
    }
    if let Some(limit) = settings.at_risk_limit {
        builder = builder.at_risk_limit(limit);
    }
    if let Some(records) = settings.at_risk_records {
        builder = builder.at_risk_records(records);
    }
    if let Some(wait) = settings.retry_fetch_wait {
        builder = builder.retry_fetch_wait(wait);
    }
    builder = builder.exactly_once(settings.exactly_once);
    builder.build()
}

/// The Redis backend of `settings`; reads the CA file now, naming its variable on failure.
#[cfg(feature = "redis")]
fn redis(settings: &RedisSettings) -> Result<Redis, ConfigError> {
    let mut builder = match (&settings.url, settings.cluster_urls.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(ConfigError::Invalid {
                field: vars::REDIS_CLUSTER_URLS,
                reason: "REDIS_URL is set too; set one of them: REDIS_URL for one server, \
                         REDIS_CLUSTER_URLS for a Redis Cluster (their keys are laid out differently)"
                    .into(),
            })
        }
        (None, nodes @ [_, ..]) => Redis::cluster_builder(nodes.iter().cloned()),
        (Some(url), []) => Redis::builder(url.clone()),
        (None, []) => {
            return Err(not_set(
                vars::REDIS_URL,
                "the server's URL, e.g. redis://127.0.0.1:6379",
            ));
        }
    };
    if let Some(timeout) = settings.session_timeout {
        builder = builder.session_timeout(timeout);
    }
    if let Some(age) = settings.keep_acknowledged {
        builder = builder.keep_acknowledged(age);
    }
    if let Some(entries) = settings.keep_acknowledged_entries {
        builder = builder.keep_acknowledged_entries(entries);
    }
    if let Some(partitions) = settings.default_partitions {
        builder = builder.default_partitions(partitions);
    }
    if let Some(path) = &settings.tls_ca_file {
        let pem = std::fs::read(path).map_err(|error| ConfigError::Invalid {
            field: vars::REDIS_TLS_CA_FILE,
            reason: format!("cannot read {}: {error}", path.display()),
        })?;
        builder = builder.tls_root_certificate(pem);
    }
    if settings.unordered {
        builder = builder.unordered();
    }
    if let Some(replicas) = settings.wait_replicas {
        builder = builder.wait_for_replicas(replicas);
    }
    builder.build()
}

/// The PostgreSQL retry store of `settings`.
#[cfg(feature = "postgres")]
fn postgres(settings: &PostgresSettings) -> Result<Postgres, crate::error::ConfigError> {
    let url = settings.url.clone().ok_or_else(|| {
        not_set(
            vars::POSTGRES_URL,
            "the database's URL in DATABASE_URL or POSTGRES_URL, e.g. postgres://app@127.0.0.1/app",
        )
    })?;
    let mut builder = Postgres::builder(url).url_variable(settings.url_variable);
    if let Some(age) = settings.keep_handled {
        builder = builder.keep_handled(age);
    }
    if let Some(lease) = settings.lease {
        builder = builder.lease(lease);
    }
    builder.build()
}

#[cfg(feature = "kafka")]
impl Kafka {
    /// The cluster named by `KAFKA_BROKERS` (and `KAFKA_RETRY_BROKERS`, if set): the Kafka
    /// part of [`Settings::from_env`].
    ///
    /// librdkafka properties come from the environment too: `KAFKA_CLIENT_<NAME>` for every
    /// client, `KAFKA_CONSUMER_<NAME>` and `KAFKA_PRODUCER_<NAME>` for one kind, where the name
    /// is the property's in capitals with `_` for `.`: `KAFKA_CLIENT_SECURITY_PROTOCOL=SASL_SSL`,
    /// `KAFKA_CONSUMER_SESSION_TIMEOUT_MS=10000`.
    ///
    /// ```no_run
    /// let kafka = retry_kafka::backend::kafka::Kafka::from_env()?;
    /// # Ok::<(), retry_kafka::error::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        kafka(&KafkaSettings::from_env()?)
    }
}

#[cfg(feature = "redis")]
impl Redis {
    /// The server named by `REDIS_URL` (one server, or the primary behind the sentinels of a
    /// `redis+sentinel://` URL) or the cluster of `REDIS_CLUSTER_URLS`, with settings from the
    /// environment where given: `REDIS_SESSION_TIMEOUT_MS`, `REDIS_KEEP_ACKNOWLEDGED_MS`,
    /// `REDIS_KEEP_ACKNOWLEDGED_ENTRIES`, `REDIS_DEFAULT_PARTITIONS`, `REDIS_UNORDERED`,
    /// `REDIS_TLS_CA_FILE`, `REDIS_WAIT_REPLICAS`: the Redis part of [`Settings::from_env`]. A value that does not
    /// parse fails, naming the variable.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), retry_kafka::error::ConfigError> {
    /// let redis = retry_kafka::backend::redis::Redis::from_env()?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        redis(&RedisSettings::from_env()?)
    }
}

#[cfg(feature = "postgres")]
impl Postgres {
    /// The database named by `DATABASE_URL` (or `POSTGRES_URL`), with
    /// `POSTGRES_KEEP_HANDLED_MS` and `POSTGRES_LEASE_MS` where given: the PostgreSQL part of
    /// [`Settings::from_env`]. A value that does not parse fails, naming the variable.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), retry_kafka::error::ConfigError> {
    /// let postgres = retry_kafka::backend::postgres::Postgres::from_env()?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self, crate::error::ConfigError> {
        postgres(&PostgresSettings::from_env()?)
    }
}
