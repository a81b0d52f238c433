//! Settings of a [`Postgres`] backend: [`PostgresBuilder`]. The environment's are read by
//! [`Settings::from_env`](crate::settings::Settings::from_env).

use std::str::FromStr;
use std::time::Duration;

use super::Postgres;
use crate::config::vars;
use crate::error::ConfigError;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) keep_handled: Duration,
    pub(crate) lease: Duration,
    pub(crate) batch: i64,
    pub(crate) poll: Duration,
    pub(crate) default_partitions: u32,
}

/// Settings of a [`Postgres`] backend.
///
/// ```
/// use std::time::Duration;
/// use retry_kafka::backend::postgres::Postgres;
///
/// let builder = Postgres::builder("postgres://app:secret@127.0.0.1:5432/app")
///     .keep_handled(Duration::from_secs(24 * 3600))
///     .lease(Duration::from_secs(60));
/// ```
pub struct PostgresBuilder {
    url: String,
    /// The variable a malformed URL is reported as.
    url_variable: &'static str,
    settings: Settings,
}

impl Postgres {
    /// Settings for the database at `url` (`postgres://user:password@host:port/database`, or
    /// libpq's `host=... user=...` form).
    pub fn builder(url: impl Into<String>) -> PostgresBuilder {
        PostgresBuilder {
            url: url.into(),
            url_variable: vars::DATABASE_URL,
            settings: Settings {
                keep_handled: Duration::from_secs(3600),
                lease: Duration::from_secs(30),
                batch: 32,
                poll: Duration::from_secs(1),
                default_partitions: 1,
            },
        }
    }
}

impl PostgresBuilder {
    /// Reports a malformed URL as `name`'s (`POSTGRES_URL` when it came from there).
    pub(crate) fn url_variable(mut self, name: &'static str) -> Self {
        self.url_variable = name;
        self
    }

    /// How long a handled retry's row is kept before it is deleted (default 1 h; zero deletes
    /// it at the next sweep). While it is kept, a hand-off of the same failure written again
    /// (a main-topic message redelivered after a crash) is recognised and written once; tools
    /// can read it like a compacted-later topic.
    pub fn keep_handled(mut self, age: Duration) -> Self {
        self.settings.keep_handled = age;
        self
    }

    /// How long a worker's claim on a row lasts unless renewed (default 30 s, renewed three
    /// times per lease while the worker lives). A crashed worker's rows go to another worker
    /// this long after its last renewal.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// The most rows a worker claims in one query (default 32). Claimed rows wait in this
    /// worker's memory until its handler gets to them while other workers may be idle: a
    /// small batch shares a burst of due rows among the workers of a level.
    pub fn batch(mut self, rows: u32) -> Self {
        self.settings.batch = i64::from(rows.max(1));
        self
    }

    /// How often an idle worker looks for due rows when no notification came (default 1 s).
    /// New rows notify the workers (`LISTEN`/`NOTIFY`) and a worker sleeps until the next
    /// known due time, so this only bounds how long a missed notification delays a retry.
    pub fn poll(mut self, every: Duration) -> Self {
        self.settings.poll = every;
        self
    }

    /// The partition count of a topic first written before it was created (default 1; more
    /// when the record names a higher partition).
    pub fn default_partitions(mut self, partitions: u32) -> Self {
        self.settings.default_partitions = partitions.max(1);
        self
    }

    /// The backend; fails naming the URL's variable when the URL is malformed. Connects on
    /// first use, and creates the tables then (see [`Postgres`]).
    pub fn build(self) -> Result<Postgres, ConfigError> {
        let config = tokio_postgres::Config::from_str(&self.url).map_err(|error| ConfigError::Invalid {
            field: self.url_variable,
            reason: format!("not a PostgreSQL URL: {error}"),
        })?;
        // Connections are plain TCP (NoTls): say so rather than fail at the first connection.
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(ConfigError::Invalid {
                field: self.url_variable,
                reason: "sslmode=require: this build connects without TLS (reach PostgreSQL over a \
                         private network or a local TLS proxy, and drop sslmode=require)"
                    .into(),
            });
        }
        if self.settings.lease < Duration::from_millis(300) {
            return Err(ConfigError::Invalid {
                field: vars::POSTGRES_LEASE_MS,
                reason: "must be at least 300 ms".into(),
            });
        }
        Ok(Postgres::new(config, self.settings))
    }
}
