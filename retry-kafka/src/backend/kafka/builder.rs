//! [`KafkaBuilder`]: the clusters, client properties and topic settings of a [`Kafka`] backend,
//! checked when it is built.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use super::consumer::CommitPolicy;
use super::writer::Writer;
use super::{consumer, Cluster, EmbeddedKafka, Kafka, Refusals, Shared};
use crate::error::ConfigError;

/// Settings of a [`Kafka`] backend.
pub struct KafkaBuilder {
    pub(super) brokers: String,
    pub(super) retry_brokers: Option<String>,
    pub(super) consumer_properties: Vec<(String, String)>,
    pub(super) producer_properties: Vec<(String, String)>,
    pub(super) replication_factor: i32,
    pub(super) embedded: Option<Arc<EmbeddedKafka>>,
    pub(super) commit_policy: CommitPolicy,
    pub(super) retry_fetch_wait: Option<Duration>,
    pub(super) exactly_once: bool,
}

/// The bounds of [`KafkaBuilder::retry_fetch_wait`]: librdkafka's own default is the most.
const RETRY_FETCH_WAIT: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_millis(500);

impl KafkaBuilder {
    /// Puts retry and dead-letter topics on another cluster.
    pub fn retry_brokers(mut self, brokers: impl Into<String>) -> Self {
        self.retry_brokers = Some(brokers.into());
        self
    }

    /// A librdkafka property for consumers and producers alike (security, SASL, TLS, ...).
    pub fn property(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        self.consumer_property(key.clone(), value.clone())
            .producer_property(key, value)
    }

    /// A librdkafka property for consumers only.
    pub fn consumer_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_properties.push((key.into(), value.into()));
        self
    }

    /// A librdkafka property for the producer only.
    pub fn producer_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_properties.push((key.into(), value.into()));
        self
    }

    /// The replication factor of created topics; -1 (the default) takes the broker's default.
    pub fn replication_factor(mut self, factor: i32) -> Self {
        self.replication_factor = factor;
        self
    }

    /// The most time between a record's acknowledgement and the commit of its offset (default
    /// 100 ms; 1 ms to 60 s): a consumer killed with SIGKILL repeats at most the records it
    /// settled in that time, and those in flight. Commits are asynchronous, from the consumer's
    /// poll thread, one at a time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use retry_kafka::backend::kafka::Kafka;
    ///
    /// let builder = Kafka::builder("localhost:9092").commit_interval(Duration::from_millis(50));
    /// ```
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_policy.interval = interval;
        self
    }

    /// Settled records after which a consumer commits without waiting for
    /// [`commit_interval`](Self::commit_interval) (at least 1; by default none: the interval
    /// alone). Fewer records repeated after a kill at full speed, for throughput: every commit
    /// is an OffsetCommit the broker appends, and on Apache Kafka a commit every 1,000
    /// records took a consumer at full speed from ~0.9x to ~0.55x of a raw rdkafka loop's
    /// rate. Not used with [`exactly_once`](Self::exactly_once), whose transactions commit
    /// every interval.
    ///
    /// ```
    /// use retry_kafka::backend::kafka::Kafka;
    ///
    /// let builder = Kafka::builder("localhost:9092").commit_records(5000);
    /// ```
    pub fn commit_records(mut self, records: u64) -> Self {
        self.commit_policy.records = Some(records);
        self
    }

    /// Work at risk, in time: when a consumer's oldest acknowledged record still uncommitted
    /// is older than this (default 5 s; 100 ms to 1 h; never less than two commit intervals),
    /// its level starts no attempt until a commit gets through again. Commits fail while the
    /// broker or the group's coordinator is gone, and everything run meanwhile would run again
    /// after a restart; this bounds it. Acknowledgements, hand-offs under way and the group's
    /// heartbeats go on meanwhile.
    ///
    /// ```
    /// use std::time::Duration;
    /// use retry_kafka::backend::kafka::Kafka;
    ///
    /// let builder = Kafka::builder("localhost:9092").at_risk_limit(Duration::from_secs(2));
    /// ```
    pub fn at_risk_limit(mut self, limit: Duration) -> Self {
        self.commit_policy.at_risk_limit = limit;
        self
    }

    /// Work at risk, in records: acknowledged records of one partition waiting for their
    /// commit past which the consumer's level starts no attempt (default 10,000; at least 1),
    /// as [`at_risk_limit`](Self::at_risk_limit) does in time. Counted once they have waited
    /// as long as a commit that got through takes to be reported (two commit intervals and
    /// 500 ms): at full speed more than that are settled between two reports.
    ///
    /// ```
    /// use retry_kafka::backend::kafka::Kafka;
    ///
    /// let builder = Kafka::builder("localhost:9092").at_risk_records(50_000);
    /// ```
    pub fn at_risk_records(mut self, records: u64) -> Self {
        self.commit_policy.at_risk_records = records;
        self
    }

    /// How long a retry level's (and a key-ordered handler's held topic's) fetch waits at the
    /// broker for records (librdkafka's `fetch.wait.max.ms` on those consumers only; default
    /// 25 ms, or the `fetch.wait.max.ms` given with
    /// [`consumer_property`](Self::consumer_property); 1 to 500 ms). A level resumes a
    /// partition as its retries come due, and the resumed partition is fetched once the fetch
    /// under way returns: in a burst of retries due at once, their p99 lateness is about this
    /// (see docs/benchmarks.md). Each idle retry-level consumer sends a fetch this often.
    ///
    /// ```
    /// use std::time::Duration;
    /// use retry_kafka::backend::kafka::Kafka;
    ///
    /// let builder = Kafka::builder("localhost:9092").retry_fetch_wait(Duration::from_millis(5));
    /// ```
    pub fn retry_fetch_wait(mut self, wait: Duration) -> Self {
        self.retry_fetch_wait = Some(wait);
        self
    }

    /// Exactly-once hand-offs (default off): each consumer's hand-offs to retry levels and the
    /// dead letters, and the offsets of the records they conclude, commit in one Kafka
    /// transaction (its own transactional producer; the group's metadata fences a member that
    /// lost its partitions), every [`commit_interval`](Self::commit_interval) (on a thread of
    /// its own, so the consumer goes on fetching; not after a count of records). A crash or a
    /// rebalance then writes no record twice to a retry level or the dead letters; a handler's
    /// own side effects stay at least once. Not with [`retry_brokers`](Self::retry_brokers): a
    /// transaction stays on one cluster; nor on the embedded cluster, whose mock brokers keep
    /// no offsets a transaction commits. See docs/kafka.md, "Exactly once".
    ///
    /// ```
    /// use retry_kafka::backend::kafka::Kafka;
    ///
    /// let builder = Kafka::builder("localhost:9092").exactly_once(true);
    /// ```
    pub fn exactly_once(mut self, on: bool) -> Self {
        self.exactly_once = on;
        self
    }

    /// Creates the clients. Fails on an unknown or invalid librdkafka property, naming it, and
    /// on a commit, work-at-risk or fetch-wait setting out of range, naming its variable, and
    /// on exactly-once with a retry cluster or on the embedded mock cluster.
    pub fn build(self) -> Result<Kafka, ConfigError> {
        self.commit_policy.check()?;
        if self.exactly_once && self.embedded.is_some() {
            return Err(ConfigError::Invalid {
                field: crate::config::vars::KAFKA_EXACTLY_ONCE,
                reason: "librdkafka's mock cluster (the embedded default) does not keep the offsets a transaction commits: run it on Kafka".into(),
            });
        }
        if self.exactly_once && self.retry_brokers.is_some() {
            return Err(ConfigError::Invalid {
                field: crate::config::vars::KAFKA_EXACTLY_ONCE,
                reason: "a transaction stays on one cluster, and KAFKA_RETRY_BROKERS puts retries on another: unset one of them".into(),
            });
        }
        if let Some(wait) = self
            .retry_fetch_wait
            .filter(|wait| !RETRY_FETCH_WAIT.contains(wait))
        {
            return Err(ConfigError::Invalid {
                field: crate::config::vars::KAFKA_RETRY_FETCH_WAIT_MS,
                reason: format!(
                    "{} ms is out of range: give {} to {} ms",
                    wait.as_millis(),
                    RETRY_FETCH_WAIT.start().as_millis(),
                    RETRY_FETCH_WAIT.end().as_millis()
                ),
            });
        }
        let cluster = |brokers: &str| -> Result<Cluster, ConfigError> {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", brokers)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                // Java's partitioner: a key lands on the same partition as with Java producers.
                .set("partitioner", "murmur2_random")
                .set("linger.ms", "2")
                .set("message.timeout.ms", "30000");
            for (key, value) in &self.producer_properties {
                config.set(key, value);
            }
            let writer = Writer::create(&config).map_err(|error| invalid("producer property", error))?;
            let admin = config
                .create_with_context(Refusals::new("admin"))
                .map_err(|error| invalid("producer property", error))?;
            // Consumer properties are checked here too, so a typo fails at start.
            let metadata = consumer::config(brokers, "retry-kafka-metadata", &self.consumer_properties)
                .set("allow.auto.create.topics", "false")
                .create_with_context(Refusals::new("metadata"))
                .map_err(|error| invalid("consumer property", error))?;
            Ok(Cluster {
                brokers: brokers.to_owned(),
                writer,
                producer_config: config,
                admin,
                metadata: Arc::new(metadata),
                reader: Arc::default(),
                lag_clients: Arc::default(),
            })
        };
        let main = cluster(&self.brokers)?;
        let retry = self.retry_brokers.as_deref().map(cluster).transpose()?;
        Ok(Kafka {
            shared: Arc::new(Shared {
                main,
                retry,
                consumer_properties: self.consumer_properties,
                replication_factor: self.replication_factor,
                embedded: self.embedded,
                commit_policy: self.commit_policy,
                retry_fetch_wait: self.retry_fetch_wait,
                exactly_once: self.exactly_once,
            }),
        })
    }
}

fn invalid(field: &'static str, error: KafkaError) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::backend::kafka::Kafka;
    use crate::backend::TopicRole;

    fn fetch_waits(kafka: &Kafka) -> [Option<String>; 3] {
        [TopicRole::Main, TopicRole::Retry { level: 1 }, TopicRole::Held].map(|role| {
            kafka
                .consumer_properties(role)
                .into_iter()
                .rev()
                .find(|(key, _)| key == "fetch.wait.max.ms")
                .map(|(_, value)| value)
        })
    }

    #[test]
    fn retry_levels_fetch_with_their_own_wait_and_the_main_topic_with_the_users() {
        let some = |ms: &str| Some(ms.to_owned());
        let default = Kafka::builder("127.0.0.1:1").build().unwrap();
        assert_eq!(fetch_waits(&default), [None, some("25"), some("25")]);
        let for_all = Kafka::builder("127.0.0.1:1")
            .consumer_property("fetch.wait.max.ms", "100")
            .build()
            .unwrap();
        assert_eq!(fetch_waits(&for_all), [some("100"), some("100"), some("100")]);
        let both = Kafka::builder("127.0.0.1:1")
            .consumer_property("fetch.wait.max.ms", "100")
            .retry_fetch_wait(Duration::from_millis(5))
            .build()
            .unwrap();
        assert_eq!(fetch_waits(&both), [some("100"), some("5"), some("5")]);
    }

    #[test]
    fn a_retry_fetch_wait_out_of_range_names_its_variable() {
        for (ms, bound) in [(0, "give 1 to 500 ms"), (501, "give 1 to 500 ms")] {
            let error = Kafka::builder("127.0.0.1:1")
                .retry_fetch_wait(Duration::from_millis(ms))
                .build()
                .err()
                .expect("out of range");
            assert_eq!(
                error.to_string(),
                format!("invalid KAFKA_RETRY_FETCH_WAIT_MS: {ms} ms is out of range: {bound}")
            );
        }
    }

    #[test]
    fn exactly_once_refuses_a_retry_cluster_and_the_mock_cluster_naming_its_variable() {
        let retry_cluster = Kafka::builder("127.0.0.1:1")
            .retry_brokers("127.0.0.1:2")
            .exactly_once(true)
            .build()
            .err()
            .expect("two clusters");
        assert_eq!(
            retry_cluster.to_string(),
            "invalid KAFKA_EXACTLY_ONCE: a transaction stays on one cluster, and KAFKA_RETRY_BROKERS puts \
             retries on another: unset one of them"
        );
        let cluster = std::sync::Arc::new(crate::backend::kafka::EmbeddedKafka::start(1).unwrap());
        let mock = Kafka::embedded_builder(cluster)
            .exactly_once(true)
            .build()
            .err()
            .expect("the mock cluster");
        assert!(
            mock.to_string()
                .starts_with("invalid KAFKA_EXACTLY_ONCE: librdkafka's mock cluster"),
            "{mock}"
        );
        assert!(Kafka::builder("127.0.0.1:1").exactly_once(true).build().is_ok());
    }
}
