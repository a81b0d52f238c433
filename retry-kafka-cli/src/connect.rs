//! Which backend to reach: the rule of `retry_kafka::run()`, with flags that set its variables.

use anyhow::{bail, Context as _};
use clap::Args;
use retry_kafka::app::BackendChoice;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::postgres::Postgres;
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::Tiered;
use retry_kafka::error::ConfigError;

/// Where the dead letters and topics are. Each flag sets the variable `run()` reads.
#[derive(Args)]
pub(crate) struct Connection {
    /// `kafka`, `redis`, `kafka+redis`, `kafka+postgres` or `redis+postgres`; by default the
    /// one whose addresses are given.
    #[arg(long, global = true, env = "RETRY_KAFKA_BACKEND")]
    backend: Option<String>,
    /// Kafka bootstrap servers, e.g. `localhost:9092`.
    #[arg(long, global = true, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
    /// Kafka cluster of retry levels and dead letters, if not the main one.
    #[arg(long, global = true, env = "KAFKA_RETRY_BROKERS")]
    retry_brokers: Option<String>,
    /// Redis URL, e.g. `redis://localhost:6379`.
    #[arg(long, global = true, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// PostgreSQL URL of the retries and dead letters, e.g. `postgres://app@localhost/app`
    /// (with --brokers or --redis-url for the main topics).
    #[arg(long, global = true, env = "DATABASE_URL")]
    database_url: Option<String>,
}

impl Connection {
    /// Puts the flags where the backends read them. Call before any thread starts.
    pub(crate) fn export(&self) {
        for (name, value) in [
            ("RETRY_KAFKA_BACKEND", &self.backend),
            ("KAFKA_BROKERS", &self.brokers),
            ("KAFKA_RETRY_BROKERS", &self.retry_brokers),
            ("REDIS_URL", &self.redis_url),
            ("DATABASE_URL", &self.database_url),
        ] {
            if let Some(value) = value {
                std::env::set_var(name, value);
            }
        }
    }
}

/// A backend the tool can reach from its own process.
pub(crate) enum Connected {
    Kafka(Kafka),
    Redis(Redis),
    KafkaRedis(Tiered<Kafka, Redis>),
    KafkaPostgres(Tiered<Kafka, Postgres>),
    RedisPostgres(Tiered<Redis, Postgres>),
}

pub(crate) async fn connect() -> anyhow::Result<Connected> {
    let choice = match BackendChoice::from_env() {
        Err(ConfigError::NoBackend) => bail!(
            "no broker given: pass --brokers HOST:PORT (Kafka) or --redis-url redis://HOST:PORT \
             (Redis), or set KAFKA_BROKERS or REDIS_URL as for the program"
        ),
        choice => choice.context("cannot tell which backend to connect to")?,
    };
    Ok(match choice {
        BackendChoice::Kafka => Connected::Kafka(Kafka::from_env()?),
        BackendChoice::Redis => Connected::Redis(Redis::from_env()?),
        BackendChoice::KafkaRedis => Connected::KafkaRedis(Tiered::new(Kafka::from_env()?, Redis::from_env()?)),
        BackendChoice::KafkaPostgres => {
            Connected::KafkaPostgres(Tiered::new(Kafka::from_env()?, Postgres::from_env()?))
        }
        BackendChoice::RedisPostgres => {
            Connected::RedisPostgres(Tiered::new(Redis::from_env()?, Postgres::from_env()?))
        }
        other => bail!(
            "{other:?} lives inside one program's process; point the tool at a broker with --brokers or --redis-url"
        ),
    })
}

/// Runs `$body` with `$b` bound to the concrete backend.
macro_rules! with_backend {
    ($connected:expr, |$b:ident| $body:expr) => {
        match $connected {
            $crate::connect::Connected::Kafka($b) => $body,
            $crate::connect::Connected::Redis($b) => $body,
            $crate::connect::Connected::KafkaRedis($b) => $body,
            $crate::connect::Connected::KafkaPostgres($b) => $body,
            $crate::connect::Connected::RedisPostgres($b) => $body,
        }
    };
}
pub(crate) use with_backend;
