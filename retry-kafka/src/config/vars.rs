//! The name of every environment variable retry-kafka reads, each defined once.
//! [`Settings::from_env`](super::Settings::from_env) reads them; nothing else in the library
//! does. Tools that start a program or show a setting (the `retry-kafka` command) name them
//! from here.
//!
//! ```
//! use retry_kafka::settings::vars;
//!
//! let program = std::process::Command::new("./my-service")
//!     .env(vars::RETRY_KAFKA_PRINT_TOPOLOGY, "1"); // print the topology, connect nowhere
//! assert_eq!(vars::KAFKA_BROKERS, "KAFKA_BROKERS");
//! ```

/// Picks the backend: `kafka`, `kafka-embedded`, `redis`, `kafka+redis`, `kafka+postgres`,
/// `redis+postgres` or `memory` ([`Settings::backend`](super::Settings::backend)). Unset: the
/// one whose address is given.
pub const RETRY_KAFKA_BACKEND: &str = "RETRY_KAFKA_BACKEND";
/// The address `/metrics`, `/healthz` and `/readyz` are served on (feature `prometheus`), e.g.
/// `0.0.0.0:9090` ([`Settings::metrics_addr`](super::Settings::metrics_addr)).
pub const RETRY_KAFKA_METRICS_ADDR: &str = "RETRY_KAFKA_METRICS_ADDR";
/// `1` or `true`: print the program's topology as JSON and connect nowhere
/// ([`Settings::print_topology`](super::Settings::print_topology)); how `retry-kafka topics
/// plan --program` learns the handlers of a binary it did not build.
pub const RETRY_KAFKA_PRINT_TOPOLOGY: &str = "RETRY_KAFKA_PRINT_TOPOLOGY";
/// The program argument that asks for the topology as [`RETRY_KAFKA_PRINT_TOPOLOGY`] does,
/// when it is the first.
pub const PRINT_TOPOLOGY_ARG: &str = "--retry-kafka-topology";

/// Kafka's bootstrap servers ([`KafkaSettings::brokers`](super::KafkaSettings::brokers)).
pub const KAFKA_BROKERS: &str = "KAFKA_BROKERS";
/// The bootstrap servers of the cluster holding retry and DLQ topics, when not the main one.
pub const KAFKA_RETRY_BROKERS: &str = "KAFKA_RETRY_BROKERS";
/// `KAFKA_CLIENT_<NAME>`: a librdkafka property of every client, the name in capitals with `_`
/// for `.` (`KAFKA_CLIENT_SECURITY_PROTOCOL=SASL_SSL`).
pub const KAFKA_CLIENT_PREFIX: &str = "KAFKA_CLIENT_";
/// `KAFKA_CONSUMER_<NAME>`: a librdkafka property of consumers only
/// (`KAFKA_CONSUMER_SESSION_TIMEOUT_MS=10000`).
pub const KAFKA_CONSUMER_PREFIX: &str = "KAFKA_CONSUMER_";
/// `KAFKA_PRODUCER_<NAME>`: a librdkafka property of the producer only.
pub const KAFKA_PRODUCER_PREFIX: &str = "KAFKA_PRODUCER_";
/// The most time between a record's acknowledgement and the commit of its offset, in ms
/// (default 100): what a killed consumer repeats at most, at its rate.
pub const KAFKA_COMMIT_INTERVAL_MS: &str = "KAFKA_COMMIT_INTERVAL_MS";
/// Acknowledged records after which a consumer commits without waiting for the interval
/// (default 1000).
pub const KAFKA_COMMIT_RECORDS: &str = "KAFKA_COMMIT_RECORDS";
/// Work at risk, in ms (default 5000; 100 to 3,600,000): when a consumer's oldest acknowledged
/// but uncommitted record is older (the broker is gone, say), its level starts no attempt
/// until commits get through again; what ran meanwhile would run again.
pub const KAFKA_AT_RISK_MS: &str = "KAFKA_AT_RISK_MS";
/// Work at risk, in records (default 10000; at least 1): acknowledged records of one partition
/// waiting for their commit past which the level starts no attempt.
pub const KAFKA_AT_RISK_RECORDS: &str = "KAFKA_AT_RISK_RECORDS";

/// How long a retry level's (and a held topic's) fetch waits at the broker for records, in
/// milliseconds (default 25; 1 to 500): a partition resumed as its retries come due is fetched
/// once the fetch under way returns. Lower it for retries on time to the millisecond in a
/// burst; each idle retry-level consumer then fetches that much more often.
pub const KAFKA_RETRY_FETCH_WAIT_MS: &str = "KAFKA_RETRY_FETCH_WAIT_MS";

/// `true` for exactly-once hand-offs (default false): each consumer's hand-offs to retry
/// levels and the dead letters commit in one Kafka transaction with the offsets of the records
/// they conclude. Not with `KAFKA_RETRY_BROKERS` (a transaction stays on one cluster).
pub const KAFKA_EXACTLY_ONCE: &str = "KAFKA_EXACTLY_ONCE";

/// The Redis server's URL, `redis://[:password@]host:port[/db]` or `rediss://`; or, for a
/// primary with replicas behind Redis Sentinel, the sentinels and the primary's name:
/// `redis+sentinel://[:password@]host:port,host:port,host:port/master-name[/db]` (the password
/// is the primary's; the same one-server key layout).
pub const REDIS_URL: &str = "REDIS_URL";
/// A Redis Cluster's nodes, comma-separated URLs (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`):
/// the cluster's key layout instead of [`REDIS_URL`]'s one server. One node is enough; more
/// let the client start while one of them is down.
pub const REDIS_CLUSTER_URLS: &str = "REDIS_CLUSTER_URLS";
/// How long a Redis member may go silent before its partitions are taken over, in ms.
pub const REDIS_SESSION_TIMEOUT_MS: &str = "REDIS_SESSION_TIMEOUT_MS";
/// How long acknowledged entries stay in a stream, in ms.
pub const REDIS_KEEP_ACKNOWLEDGED_MS: &str = "REDIS_KEEP_ACKNOWLEDGED_MS";
/// How many acknowledged entries a stream keeps at least.
pub const REDIS_KEEP_ACKNOWLEDGED_ENTRIES: &str = "REDIS_KEEP_ACKNOWLEDGED_ENTRIES";
/// `true`: every member of a group reads every partition, order per key given up.
pub const REDIS_UNORDERED: &str = "REDIS_UNORDERED";
/// The partition count of a Redis topic created on first use.
pub const REDIS_DEFAULT_PARTITIONS: &str = "REDIS_DEFAULT_PARTITIONS";
/// The path of a PEM file of root certificates to trust for `rediss://` (feature `redis-tls`).
pub const REDIS_TLS_CA_FILE: &str = "REDIS_TLS_CA_FILE";
/// How many replicas must acknowledge each entry the Redis backend publishes before the send
/// returns (`WAIT`; default 0: the primary's acknowledgement is enough). With a primary behind
/// Sentinel, `1` means a failover loses no entry whose send returned.
pub const REDIS_WAIT_REPLICAS: &str = "REDIS_WAIT_REPLICAS";

/// The PostgreSQL database's URL, for retries and dead letters beside Kafka or Redis.
pub const DATABASE_URL: &str = "DATABASE_URL";
/// Read when [`DATABASE_URL`] is not set.
pub const POSTGRES_URL: &str = "POSTGRES_URL";
/// How long a handled retry's row is kept, in ms.
pub const POSTGRES_KEEP_HANDLED_MS: &str = "POSTGRES_KEEP_HANDLED_MS";
/// How long a worker's claim on a row lasts unless renewed, in ms.
pub const POSTGRES_LEASE_MS: &str = "POSTGRES_LEASE_MS";
