//! Settings from the environment, read in one place: which backend [`run`](crate::run) starts,
//! and the values `Kafka::from_env` and `Redis::from_env` take. A value that does not parse
//! fails at start, naming the variable.
// A build without one of the backends leaves some readers unused.
#![cfg_attr(not(all(feature = "kafka", feature = "redis")), allow(dead_code))]

use crate::error::ConfigError;
use crate::runtime::BACKEND_ENV;

/// The backend the environment chooses for [`run`](crate::run), by the rule its table gives;
/// tools that connect the way `run()` does (the `retry-kafka` command) read it too.
///
/// ```
/// use retry_kafka::app::BackendChoice;
/// // With none of RETRY_KAFKA_BACKEND, KAFKA_BROKERS and REDIS_URL set:
/// # std::env::remove_var("RETRY_KAFKA_BACKEND"); std::env::remove_var("KAFKA_BROKERS"); std::env::remove_var("REDIS_URL");
/// let error = BackendChoice::from_env().unwrap_err();
/// assert!(error.to_string().contains("KAFKA_BROKERS"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendChoice {
    /// `RETRY_KAFKA_BACKEND=memory`: the in-process broker.
    Memory,
    /// `RETRY_KAFKA_BACKEND=kafka-embedded`: an in-process Kafka cluster.
    #[cfg(feature = "kafka")]
    KafkaEmbedded,
    /// Kafka at `KAFKA_BROKERS`.
    #[cfg(feature = "kafka")]
    Kafka,
    /// Redis at `REDIS_URL`.
    #[cfg(feature = "redis")]
    Redis,
    /// Main topics on Kafka, retries and dead letters on Redis.
    #[cfg(all(feature = "kafka", feature = "redis"))]
    KafkaRedis,
    /// Main topics on Kafka, retries and dead letters in PostgreSQL (`DATABASE_URL` or
    /// `POSTGRES_URL` with `KAFKA_BROKERS`).
    #[cfg(all(feature = "kafka", feature = "postgres"))]
    KafkaPostgres,
    /// Main topics on Redis, retries and dead letters in PostgreSQL (`DATABASE_URL` or
    /// `POSTGRES_URL` with `REDIS_URL`).
    #[cfg(all(feature = "redis", feature = "postgres"))]
    RedisPostgres,
}

/// Whether the program is asked to print its topology (`RETRY_KAFKA_PRINT_TOPOLOGY=1`, or
/// `--retry-kafka-topology` as its first argument) instead of running.
pub(crate) fn topology_requested() -> Result<bool, ConfigError> {
    Ok(flag(crate::runtime::TOPOLOGY_ENV)?
        || std::env::args_os()
            .nth(1)
            .is_some_and(|arg| arg == "--retry-kafka-topology"))
}

/// The values of `RETRY_KAFKA_BACKEND` this build understands.
const SUPPORTED_BACKENDS: &[&str] = &[
    #[cfg(feature = "kafka")]
    "\"kafka\"",
    #[cfg(feature = "kafka")]
    "\"kafka-embedded\"",
    #[cfg(feature = "redis")]
    "\"redis\"",
    #[cfg(all(feature = "kafka", feature = "redis"))]
    "\"kafka+redis\"",
    #[cfg(all(feature = "kafka", feature = "postgres"))]
    "\"kafka+postgres\"",
    #[cfg(all(feature = "redis", feature = "postgres"))]
    "\"redis+postgres\"",
    "\"memory\"",
];

impl BackendChoice {
    /// `RETRY_KAFKA_BACKEND`, or else the one backend whose address is set.
    pub fn from_env() -> Result<Self, ConfigError> {
        let choice = optional(BACKEND_ENV);
        #[cfg(feature = "kafka")]
        let kafka_configured = is_set(crate::kafka::BROKERS_ENV);
        #[cfg(not(feature = "kafka"))]
        let kafka_configured = false;
        #[cfg(feature = "redis")]
        let redis_configured = is_set(crate::redis::URL_ENV);
        #[cfg(not(feature = "redis"))]
        let redis_configured = false;
        #[cfg(feature = "postgres")]
        if let Some(choice) = Self::with_postgres(choice.as_deref(), kafka_configured, redis_configured)? {
            return Ok(choice);
        }
        match (choice.as_deref(), kafka_configured, redis_configured) {
            (Some("memory"), _, _) => Ok(BackendChoice::Memory),
            #[cfg(feature = "kafka")]
            (Some("kafka-embedded"), _, _) => Ok(BackendChoice::KafkaEmbedded),
            #[cfg(feature = "kafka")]
            (Some("kafka"), _, _) | (None, true, false) => Ok(BackendChoice::Kafka),
            #[cfg(feature = "redis")]
            (Some("redis"), _, _) | (None, false, true) => Ok(BackendChoice::Redis),
            #[cfg(all(feature = "kafka", feature = "redis"))]
            (Some("kafka+redis"), _, _) => Ok(BackendChoice::KafkaRedis),
            (None, true, true) => Err(ConfigError::Invalid {
                field: BACKEND_ENV,
                reason: "both KAFKA_BROKERS and REDIS_URL are set; set RETRY_KAFKA_BACKEND to \"kafka\", \
                         \"redis\" or \"kafka+redis\" (Kafka main topics, retries and dead letters on Redis)"
                    .into(),
            }),
            (Some(other), _, _) => Err(ConfigError::Invalid {
                field: BACKEND_ENV,
                reason: format!(
                    "unknown backend {other:?}; this build supports {}",
                    match SUPPORTED_BACKENDS.split_last() {
                        Some((last, [])) => (*last).to_owned(),
                        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                        None => String::new(),
                    }
                ),
            }),
            (None, _, _) => Err(ConfigError::NoBackend),
        }
    }
}

#[cfg(feature = "postgres")]
impl BackendChoice {
    /// The choices with PostgreSQL as the retry store: `RETRY_KAFKA_BACKEND` naming one, or
    /// `DATABASE_URL` / `POSTGRES_URL` set beside exactly one of `KAFKA_BROKERS` and
    /// `REDIS_URL`. `None` leaves the choice to the rules without PostgreSQL.
    fn with_postgres(choice: Option<&str>, kafka: bool, redis: bool) -> Result<Option<Self>, ConfigError> {
        use crate::postgres::{URL_ENV, URL_FALLBACK_ENV};
        match choice {
            #[cfg(feature = "kafka")]
            Some("kafka+postgres") => return Ok(Some(BackendChoice::KafkaPostgres)),
            #[cfg(feature = "redis")]
            Some("redis+postgres") => return Ok(Some(BackendChoice::RedisPostgres)),
            Some(_) => return Ok(None),
            None => {}
        }
        if !is_set(URL_ENV) && !is_set(URL_FALLBACK_ENV) {
            return Ok(None);
        }
        let url = if is_set(URL_ENV) {
            URL_ENV
        } else {
            URL_FALLBACK_ENV
        };
        match (kafka, redis) {
            #[cfg(feature = "kafka")]
            (true, false) => Ok(Some(BackendChoice::KafkaPostgres)),
            #[cfg(feature = "redis")]
            (false, true) => Ok(Some(BackendChoice::RedisPostgres)),
            (true, true) => Err(ConfigError::Invalid {
                field: BACKEND_ENV,
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
}

/// Whether `name` is set (to anything).
pub(crate) fn is_set(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

/// The value of `name`, if set and UTF-8.
pub(crate) fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The value of `name`; unset fails with `what` to give, e.g. "the bootstrap servers, e.g.
/// localhost:9092".
pub(crate) fn required(name: &'static str, what: &str) -> Result<String, ConfigError> {
    std::env::var(name).map_err(|_| ConfigError::Invalid {
        field: name,
        reason: format!("not set; give {what}"),
    })
}

/// A whole number in `name`, if set.
pub(crate) fn number(name: &'static str) -> Result<Option<u64>, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => text.trim().parse().map(Some).map_err(|_| ConfigError::Invalid {
            field: name,
            reason: format!("{text:?} is not a whole number"),
        }),
    }
}

/// `true`/`1` or `false`/`0`/empty in `name`; unset is false.
pub(crate) fn flag(name: &'static str) -> Result<bool, ConfigError> {
    match std::env::var(name).as_deref() {
        Err(_) | Ok("" | "0" | "false") => Ok(false),
        Ok("1" | "true") => Ok(true),
        Ok(other) => Err(ConfigError::Invalid {
            field: name,
            reason: format!("{other:?} is neither true nor false"),
        }),
    }
}

/// The contents of the file `name` points at, if set.
pub(crate) fn file(name: &'static str) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(path) = std::env::var_os(name) else {
        return Ok(None);
    };
    std::fs::read(&path)
        .map(Some)
        .map_err(|error| ConfigError::Invalid {
            field: name,
            reason: format!("cannot read {}: {error}", std::path::Path::new(&path).display()),
        })
}

/// Every variable that starts with `prefix`, as a client property: the rest of the name in
/// lower case with `.` for `_` (`KAFKA_CLIENT_SECURITY_PROTOCOL` gives `security.protocol`),
/// sorted by name so the result does not depend on the environment's order.
pub(crate) fn properties(prefix: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::env::vars()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(prefix)?.to_lowercase().replace('_', ".");
            Some((key, value))
        })
        .collect();
    found.sort();
    found
}

/// `RETRY_KAFKA_METRICS_ADDR`: where [`run`](crate::run) serves `/metrics`, `/healthz` and
/// `/readyz`, e.g. `0.0.0.0:9090`; unset is no endpoint. Set in a build without the
/// `prometheus` feature it fails, naming the feature, rather than serving nothing silently.
pub(crate) fn metrics_addr() -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let name = crate::runtime::METRICS_ADDR_ENV;
    let Some(text) = optional(name).filter(|text| !text.trim().is_empty()) else {
        return Ok(None);
    };
    if cfg!(not(feature = "prometheus")) {
        return Err(ConfigError::Invalid {
            field: name,
            reason: "this build has no metrics endpoint; enable the \"prometheus\" feature of retry-kafka"
                .into(),
        });
    }
    text.trim().parse().map(Some).map_err(|_| ConfigError::Invalid {
        field: name,
        reason: format!("{text:?} is not a socket address such as 0.0.0.0:9090 or [::]:9090"),
    })
}
