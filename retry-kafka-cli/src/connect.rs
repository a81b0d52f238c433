//! Which backend to reach: the settings `retry_kafka::run()` reads, with the flags in place of
//! their variables, connected by the library's own `Settings::with_backend`.

use anyhow::{bail, Context as _};
use clap::Args;
use retry_kafka::error::ConfigError;
use retry_kafka::settings::{BackendChoice, Settings};

/// Where the dead letters and topics are. Each flag takes the place of the variable `run()`
/// reads (named in its help); the other settings (`KAFKA_CLIENT_*`, `REDIS_*`, ...) come from
/// the environment as for the program.
#[derive(Args)]
pub(crate) struct Connection {
    /// `kafka`, `redis`, `kafka+redis`, `kafka+postgres` or `redis+postgres`; by default the
    /// one whose addresses are given. Else RETRY_KAFKA_BACKEND.
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Kafka bootstrap servers, e.g. `localhost:9092`. Else KAFKA_BROKERS.
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// Kafka cluster of retry levels and dead letters, if not the main one. Else
    /// KAFKA_RETRY_BROKERS.
    #[arg(long, global = true)]
    retry_brokers: Option<String>,
    /// Redis URL, e.g. `redis://localhost:6379`. Else REDIS_URL.
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// A Redis Cluster's nodes, comma-separated, e.g. `redis://10.0.0.1:7000,redis://10.0.0.2:7000`
    /// (the cluster's key layout, as the program's). Else REDIS_CLUSTER_URLS.
    #[arg(long, global = true, value_delimiter = ',')]
    redis_cluster_urls: Vec<String>,
    /// PostgreSQL URL of the retries and dead letters, e.g. `postgres://app@localhost/app`
    /// (with --brokers or --redis-url for the main topics). Else DATABASE_URL or POSTGRES_URL.
    #[arg(long, global = true)]
    database_url: Option<String>,
}

impl Connection {
    /// The settings of the environment with the flags given in place of their variables,
    /// checked to name a backend the tool can reach from its own process.
    pub(crate) fn settings(self) -> anyhow::Result<Settings> {
        let mut settings = Settings::from_env().context("cannot read the settings")?;
        if let Some(backend) = self.backend {
            settings.backend = Some(
                backend
                    .parse()
                    .context("cannot tell which backend to connect to")?,
            );
        }
        if let Some(brokers) = self.brokers {
            settings.kafka.brokers = Some(brokers);
        }
        if let Some(brokers) = self.retry_brokers {
            settings.kafka.retry_brokers = Some(brokers);
        }
        if let Some(url) = self.redis_url {
            settings.redis.url = Some(url);
        }
        if !self.redis_cluster_urls.is_empty() {
            settings.redis.cluster_urls = self.redis_cluster_urls;
        }
        if let Some(url) = self.database_url {
            settings.postgres.url = Some(url);
        }
        match settings.choice() {
            Err(ConfigError::NoBackend) => bail!(
                "no broker given: pass --brokers HOST:PORT (Kafka) or --redis-url redis://HOST:PORT \
                 (Redis), or set KAFKA_BROKERS or REDIS_URL as for the program"
            ),
            Err(error) => Err(error).context("cannot tell which backend to connect to"),
            Ok(choice @ (BackendChoice::Memory | BackendChoice::KafkaEmbedded)) => bail!(
                "{choice:?} lives inside one program's process; point the tool at a broker with --brokers or --redis-url"
            ),
            Ok(_) => Ok(settings),
        }
    }
}
