//! Reading [`Settings`] from the environment: the one place in the library that does. A value
//! that does not parse fails, naming its variable.

use std::collections::BTreeMap;
use std::time::Duration;

use super::vars::*;
use super::{KafkaSettings, PostgresSettings, RedisSettings, Settings};
use crate::error::ConfigError;

impl Settings {
    /// The settings the process's environment gives (the variables in
    /// [`vars`](super::vars)), and [`print_topology`](Settings::print_topology) also when
    /// the program's first argument is `--retry-kafka-topology`. Reads every variable, not
    /// only the chosen backend's: a value that does not parse fails here, naming it. Whether
    /// a backend is chosen at all is checked when connecting ([`Settings::choice`]).
    ///
    /// ```
    /// use retry_kafka::settings::Settings;
    ///
    /// let settings = Settings::from_env()?;
    /// if settings.print_topology {
    ///     // `retry-kafka topics plan --program` started this program.
    /// }
    /// # Ok::<(), retry_kafka::error::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut settings = Self::from_vars(Vars::process().0)?;
        settings.print_topology |= std::env::args_os()
            .nth(1)
            .is_some_and(|arg| arg == PRINT_TOPOLOGY_ARG);
        Ok(settings)
    }

    /// The settings `vars` give, as [`from_env`](Settings::from_env) reads the environment's:
    /// for variables kept elsewhere (a file, a secret store), and for tests.
    ///
    /// ```
    /// use std::time::Duration;
    /// use retry_kafka::settings::{BackendChoice, Settings};
    ///
    /// let settings = Settings::from_vars([
    ///     ("REDIS_URL", "redis://127.0.0.1:6379"),
    ///     ("REDIS_SESSION_TIMEOUT_MS", "15000"),
    /// ])?;
    /// assert_eq!(settings.choice()?, BackendChoice::Redis);
    /// assert_eq!(settings.redis.session_timeout, Some(Duration::from_secs(15)));
    ///
    /// let error = Settings::from_vars([("REDIS_SESSION_TIMEOUT_MS", "10s")]).unwrap_err();
    /// assert_eq!(error.to_string(), "invalid REDIS_SESSION_TIMEOUT_MS: \"10s\" is not a whole number");
    /// # Ok::<(), retry_kafka::error::ConfigError>(())
    /// ```
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars = Vars(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        Ok(Settings {
            backend: vars.get(RETRY_KAFKA_BACKEND).map(str::parse).transpose()?,
            kafka: KafkaSettings::from_vars(&vars)?,
            redis: RedisSettings::from_vars(&vars)?,
            postgres: PostgresSettings::from_vars(&vars)?,
            metrics_addr: match vars.get(RETRY_KAFKA_METRICS_ADDR).map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(text.parse().map_err(|_| ConfigError::Invalid {
                    field: RETRY_KAFKA_METRICS_ADDR,
                    reason: format!("{text:?} is not a socket address such as 0.0.0.0:9090 or [::]:9090"),
                })?),
            },
            print_topology: vars.flag(RETRY_KAFKA_PRINT_TOPOLOGY)?,
        })
    }
}

impl KafkaSettings {
    /// `KAFKA_BROKERS`, `KAFKA_RETRY_BROKERS` and the `KAFKA_CLIENT_*`, `KAFKA_CONSUMER_*`
    /// and `KAFKA_PRODUCER_*` properties and the `KAFKA_COMMIT_*` and `KAFKA_AT_RISK_*` options
    /// of the environment.
    #[cfg(feature = "kafka")]
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::process())
    }

    fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(KafkaSettings {
            brokers: vars.get(KAFKA_BROKERS).map(str::to_owned),
            retry_brokers: vars.get(KAFKA_RETRY_BROKERS).map(str::to_owned),
            client_properties: vars.properties(KAFKA_CLIENT_PREFIX),
            consumer_properties: vars.properties(KAFKA_CONSUMER_PREFIX),
            producer_properties: vars.properties(KAFKA_PRODUCER_PREFIX),
            commit_interval: vars.millis(KAFKA_COMMIT_INTERVAL_MS)?,
            commit_records: vars.number(KAFKA_COMMIT_RECORDS)?,
            at_risk_limit: vars.millis(KAFKA_AT_RISK_MS)?,
            at_risk_records: vars.number(KAFKA_AT_RISK_RECORDS)?,
            retry_fetch_wait: vars.millis(KAFKA_RETRY_FETCH_WAIT_MS)?,
            exactly_once: vars.flag(KAFKA_EXACTLY_ONCE)?,
        })
    }
}

impl RedisSettings {
    /// `REDIS_URL` and the `REDIS_*` options of the environment.
    #[cfg(feature = "redis")]
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::process())
    }

    fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(RedisSettings {
            url: vars.get(REDIS_URL).map(str::to_owned),
            cluster_urls: vars.list(REDIS_CLUSTER_URLS)?,
            session_timeout: vars.millis(REDIS_SESSION_TIMEOUT_MS)?,
            keep_acknowledged: vars.millis(REDIS_KEEP_ACKNOWLEDGED_MS)?,
            keep_acknowledged_entries: vars.number(REDIS_KEEP_ACKNOWLEDGED_ENTRIES)?,
            default_partitions: vars
                .number(REDIS_DEFAULT_PARTITIONS)?
                .map(|partitions| partitions.try_into().unwrap_or(u32::MAX)),
            unordered: vars.flag(REDIS_UNORDERED)?,
            tls_ca_file: vars.get(REDIS_TLS_CA_FILE).map(Into::into),
            wait_replicas: vars
                .number(REDIS_WAIT_REPLICAS)?
                .map(|replicas| replicas.try_into().unwrap_or(u32::MAX)),
        })
    }
}

impl PostgresSettings {
    /// `DATABASE_URL` (or `POSTGRES_URL`) and the `POSTGRES_*` options of the environment.
    #[cfg(feature = "postgres")]
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::process())
    }

    fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let (url, url_variable) = match (vars.get(DATABASE_URL), vars.get(POSTGRES_URL)) {
            (Some(url), _) => (Some(url), DATABASE_URL),
            (None, Some(url)) => (Some(url), POSTGRES_URL),
            (None, None) => (None, DATABASE_URL),
        };
        Ok(PostgresSettings {
            url: url.map(str::to_owned),
            keep_handled: vars.millis(POSTGRES_KEEP_HANDLED_MS)?,
            lease: vars.millis(POSTGRES_LEASE_MS)?,
            url_variable,
        })
    }
}

/// Variables by name: the process's, or given.
struct Vars(BTreeMap<String, String>);

impl Vars {
    /// The process's environment now. A variable whose name or value is not UTF-8 is left
    /// out, as if unset.
    fn process() -> Self {
        Vars(
            std::env::vars_os()
                .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A whole number in `name`, if set.
    fn number(&self, name: &'static str) -> Result<Option<u64>, ConfigError> {
        self.get(name)
            .map(|text| {
                text.trim().parse().map_err(|_| ConfigError::Invalid {
                    field: name,
                    reason: format!("{text:?} is not a whole number"),
                })
            })
            .transpose()
    }

    /// Milliseconds in `name`, if set.
    fn millis(&self, name: &'static str) -> Result<Option<Duration>, ConfigError> {
        Ok(self.number(name)?.map(Duration::from_millis))
    }

    /// Comma-separated values in `name` (spaces around each trimmed); unset or empty is none.
    /// An empty item (`a,,b`, a trailing comma) fails, naming the variable.
    fn list(&self, name: &'static str) -> Result<Vec<String>, ConfigError> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(Vec::new()),
            Some(text) => text
                .split(',')
                .map(|item| match item.trim() {
                    "" => Err(ConfigError::Invalid {
                        field: name,
                        reason: format!("{text:?} has an empty item; separate the URLs with single commas"),
                    }),
                    item => Ok(item.to_owned()),
                })
                .collect(),
        }
    }

    /// `true`/`1` or `false`/`0`/empty in `name`; unset is false.
    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.get(name) {
            None | Some("" | "0" | "false") => Ok(false),
            Some("1" | "true") => Ok(true),
            Some(other) => Err(ConfigError::Invalid {
                field: name,
                reason: format!("{other:?} is neither true nor false"),
            }),
        }
    }

    /// Every variable that starts with `prefix`, as a client property: the rest of the name in
    /// lower case with `.` for `_` (`KAFKA_CLIENT_SECURITY_PROTOCOL` gives
    /// `security.protocol`), sorted by name so the result does not depend on the
    /// environment's order.
    fn properties(&self, prefix: &str) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = self
            .0
            .iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(prefix)?.to_lowercase().replace('_', ".");
                Some((key, value.clone()))
            })
            .collect();
        found.sort();
        found
    }
}

/// This host's name (`HOSTNAME`), for the names of group members (Redis, PostgreSQL): a
/// process's identity, not a setting, read here so the environment has one reader.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn host_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    // Every backend it names is behind a feature.
    #[cfg(any(feature = "kafka", feature = "redis"))]
    use crate::config::BackendChoice;

    #[test]
    fn a_redis_cluster_is_a_list_of_nodes_that_picks_redis() {
        let settings =
            Settings::from_vars([("REDIS_CLUSTER_URLS", " redis://a:7000, redis://b:7000 ")]).unwrap();
        assert_eq!(settings.redis.cluster_urls, ["redis://a:7000", "redis://b:7000"]);
        assert_eq!(settings.redis.url, None);
        #[cfg(feature = "redis")]
        assert_eq!(settings.choice().unwrap(), BackendChoice::Redis);
        let error =
            Settings::from_vars([("REDIS_CLUSTER_URLS", "redis://a:7000,,redis://b:7000")]).unwrap_err();
        assert!(
            error.to_string().starts_with("invalid REDIS_CLUSTER_URLS: "),
            "{error}"
        );
    }

    // RETRY_KAFKA_BACKEND=kafka names a backend only a build with `kafka` has.
    #[cfg(feature = "kafka")]
    #[test]
    fn every_value_is_typed_and_a_bad_one_is_named() {
        let settings = Settings::from_vars([
            ("RETRY_KAFKA_BACKEND", "kafka"),
            ("KAFKA_BROKERS", "a:9092"),
            ("KAFKA_CLIENT_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "10000"),
            ("KAFKA_COMMIT_INTERVAL_MS", "50"),
            ("KAFKA_COMMIT_RECORDS", "500"),
            ("KAFKA_AT_RISK_MS", "2000"),
            ("KAFKA_AT_RISK_RECORDS", "4000"),
            ("KAFKA_RETRY_FETCH_WAIT_MS", "5"),
            ("KAFKA_EXACTLY_ONCE", "true"),
            ("POSTGRES_URL", "postgres://app@db/app"),
            ("POSTGRES_LEASE_MS", "60000"),
            ("RETRY_KAFKA_METRICS_ADDR", " 0.0.0.0:9090 "),
            ("RETRY_KAFKA_PRINT_TOPOLOGY", "1"),
        ])
        .unwrap();
        assert_eq!(settings.backend, Some(BackendChoice::Kafka));
        assert_eq!(
            settings.kafka.client_properties,
            [("security.protocol".to_owned(), "SASL_SSL".to_owned())]
        );
        assert_eq!(
            settings.kafka.consumer_properties,
            [("session.timeout.ms".to_owned(), "10000".to_owned())]
        );
        assert_eq!(settings.kafka.commit_interval, Some(Duration::from_millis(50)));
        assert_eq!(settings.kafka.commit_records, Some(500));
        assert_eq!(settings.kafka.at_risk_limit, Some(Duration::from_secs(2)));
        assert_eq!(settings.kafka.at_risk_records, Some(4000));
        assert_eq!(settings.kafka.retry_fetch_wait, Some(Duration::from_millis(5)));
        assert!(settings.kafka.exactly_once);
        assert_eq!(settings.postgres.url_variable, POSTGRES_URL);
        assert_eq!(settings.postgres.lease, Some(Duration::from_secs(60)));
        assert_eq!(settings.metrics_addr, Some(([0, 0, 0, 0], 9090).into()));
        assert!(settings.print_topology);

        let message =
            |vars: &[(&str, &str)]| Settings::from_vars(vars.iter().copied()).unwrap_err().to_string();
        assert_eq!(
            message(&[("KAFKA_COMMIT_INTERVAL_MS", "soon")]),
            "invalid KAFKA_COMMIT_INTERVAL_MS: \"soon\" is not a whole number"
        );
        assert_eq!(
            message(&[("REDIS_UNORDERED", "yes")]),
            "invalid REDIS_UNORDERED: \"yes\" is neither true nor false"
        );
        assert_eq!(
            message(&[("RETRY_KAFKA_METRICS_ADDR", "9090")]),
            "invalid RETRY_KAFKA_METRICS_ADDR: \"9090\" is not a socket address such as 0.0.0.0:9090 or [::]:9090"
        );
        assert!(message(&[("RETRY_KAFKA_BACKEND", "kafak")])
            .starts_with("invalid RETRY_KAFKA_BACKEND: unknown backend"));
    }

    #[test]
    fn postgres_beside_one_transport_is_chosen_and_alone_is_refused() {
        let choice = |vars: &[(&str, &str)]| Settings::from_vars(vars.iter().copied()).unwrap().choice();
        #[cfg(all(feature = "kafka", feature = "postgres"))]
        assert_eq!(
            choice(&[("DATABASE_URL", "postgres://db/app"), ("KAFKA_BROKERS", "a:9092")]),
            Ok(BackendChoice::KafkaPostgres)
        );
        #[cfg(feature = "postgres")]
        assert!(choice(&[("POSTGRES_URL", "postgres://db/app")])
            .unwrap_err()
            .to_string()
            .starts_with("invalid POSTGRES_URL: PostgreSQL keeps retries and dead letters only"));
        assert_eq!(choice(&[]), Err(ConfigError::NoBackend));
    }
}
