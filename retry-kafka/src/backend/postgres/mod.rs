//! Retry levels, dead letters and parked entries as rows of a PostgreSQL table: the
//! [`RetryStore`] of [`Tiered<Kafka, Postgres>`](crate::backend::Tiered) and
//! `Tiered<Redis, Postgres>` (main topics stay on the first backend).
//!
//! A retry store, not a transport: [`Postgres`] does not implement
//! [`Backend`](crate::backend::Backend), so it can neither run an app alone nor carry main
//! topics (a compile error). Transport only, as for every backend. A failed message becomes a row of
//! `retry_kafka_records` with its due time; a level's workers claim due rows with
//! `FOR UPDATE SKIP LOCKED`, so any number of instances share a level without partitions to
//! assign, and a lease (`claimed_by`, `claimed_until_ms`) rather than a row lock marks a
//! claimed row: a lock would have to be held across the handler's call in an open
//! transaction, and a crashed worker's rows come back when its lease runs out. A hand-off
//! writes the next hop and marks its source handled in one statement; a unique key on the
//! source's coordinates, group, attempt and replay count makes a hand-off written again after
//! a crash a no-op. Dead letters are rows in state `dead_letter`, read through
//! [`Browse`] like any other backend's dead-letter queue.
//!
//! # Driver
//!
//! `tokio-postgres`, not `sqlx`: tokio-postgres pipelines the queries issued on one connection
//! in the order they are first polled, which is what the seam needs (a consumer's hand-offs to
//! one partition are written in the order they start, with many in flight and no pool); sqlx
//! runs one query per pooled connection at a time and its checked queries need a database at
//! build time. Queries are sent with their parameter types (`query_typed`), so no statement is
//! prepared per connection.
//!
//! # TLS
//!
//! libpq's parameters, in the URL (`?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem`) or on
//! [`PostgresBuilder`] ([`ssl_mode`](PostgresBuilder::ssl_mode),
//! [`ssl_root_cert`](PostgresBuilder::ssl_root_cert),
//! [`ssl_client_cert`](PostgresBuilder::ssl_client_cert)), with libpq's meanings (see
//! [`SslMode`]); rustls with ring, no OpenSSL. A refusal fails the first connection, so the
//! app's start, with a [`TlsError`] naming the setting.
//!
//! # Schema
//!
//! `sql/postgres.sql` in this crate, run at start in one transaction under an advisory lock
//! unless `retry_kafka_schema` says version 1 is there. A user without the right to create
//! tables gets [`BackendError::Refused`] naming the grant to ask for.
//!
//! | table | holds |
//! |---|---|
//! | `retry_kafka_schema` | the schema versions applied |
//! | `retry_kafka_partitions` | one row per topic partition: the next offset to give (a topic's partition count is its row count) |
//! | `retry_kafka_records` | one row per retry, dead letter or parked entry: topic, partition, offset, level, state, due time, key, payload, headers, the failure context's columns, the lease |
//!
//! # Files
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the [`Postgres`] handle, the migration, writes, and the trait impls ([`RetryStore`], [`Browse`]) |
//! | `builder.rs` | [`PostgresBuilder`], the settings and the environment variables |
//! | `consumer.rs` | [`PostgresConsumer`]: claims, acknowledgements, leases, the retention sweep |
//! | `link.rs` | how connections are made (the URL's settings and TLS); a connection made on first use and again after it broke; the `LISTEN` task |
//! | `conninfo.rs` | libpq's TLS parameters taken out of the URL (tokio-postgres knows `sslmode` up to `require` only) |
//! | `tls.rs` | TLS on rustls with libpq's semantics: [`SslMode`], the roots, the client certificate, the verifiers; a refusal as a [`TlsError`] naming the setting |
//! | `sql.rs` | every statement |
//! | `error.rs` | a `tokio-postgres` error as a `BackendError`, with what to grant when refused |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::follow::Followers;
use super::{
    Browse, Delivered, OutboundRecord, Page, PartitionCounts, Publish, Record, RetryStore, Topic, TopicAdmin,
    TopicRole,
};
use crate::clock::now_ms;
use crate::error::BackendError;
use crate::headers::{names, Headers};
use error::{explain, produce, transport, Doing};
use link::{Connector, Link, Listener};
use sql::params;

mod builder;
mod conninfo;
mod consumer;
mod error;
mod follow;
mod link;
mod sql;
mod tls;
mod tls_error;

pub use builder::PostgresBuilder;
pub(crate) use builder::Settings;
pub use consumer::PostgresConsumer;
pub use tls::{SslMode, UnknownSslMode};
pub use tls_error::TlsError;

/// Retries, dead letters and parked entries in PostgreSQL, behind the main topics of another
/// backend.
///
/// ```no_run
/// use retry_kafka::backend::kafka::Kafka;
/// use retry_kafka::backend::postgres::Postgres;
/// use retry_kafka::backend::Tiered;
/// use retry_kafka::App;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let retries = Postgres::builder("postgres://app:secret@127.0.0.1:5432/app").build()?;
/// let app = App::builder().backend(Tiered::new(Kafka::from_env()?, retries)).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Postgres {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Arc<Connector>,
    settings: Settings,
    /// Writes and admin queries: one pipelined connection.
    writer: Link,
    /// Set once the schema is known to be there.
    migrated: OnceCell<()>,
    listener: Arc<Listener>,
    /// The `LISTEN` task, started by the first subscription; aborted with the last handle.
    listening: Mutex<Option<JoinHandle<()>>>,
    partitions: PartitionCounts,
    next_member: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.listening.get_mut().unwrap().take() {
            task.abort();
        }
    }
}

/// Where a hand-off's source row is: topic, partition, offset.
pub(crate) type Source = (Arc<str>, u32, u64);

impl Postgres {
    fn new(connector: Connector, settings: Settings) -> Self {
        let connector = Arc::new(connector);
        Postgres {
            shared: Arc::new(Shared {
                writer: Link::new(connector.clone()),
                connector,
                settings,
                migrated: OnceCell::new(),
                listener: Listener::new(),
                listening: Mutex::new(None),
                partitions: PartitionCounts::default(),
                next_member: AtomicU64::new(0),
            }),
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub(crate) fn connector(&self) -> &Arc<Connector> {
        &self.shared.connector
    }

    /// The shared connection, once the schema is there. Returns without yielding once both
    /// are, so writes keep the order they are called in.
    async fn client(&self) -> Result<Arc<Client>, BackendError> {
        self.shared.migrated.get_or_try_init(|| self.migrate()).await?;
        self.shared.writer.client().await
    }

    /// Creates the tables unless they are there: on a connection of its own, in one
    /// transaction under an advisory lock. Fails with what to grant when the user may not.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), retry_kafka::error::BackendError> {
    /// let postgres = retry_kafka::backend::postgres::Postgres::builder("postgres://app@127.0.0.1/app")
    ///     .build()
    ///     .expect("a URL");
    /// postgres.migrate().await?; // also done on first use
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<(), BackendError> {
        let (client, connection) = self.shared.connector.connect().await?;
        let driver = tokio::spawn(connection);
        let result = async {
            match client.query(sql::SCHEMA_VERSION, &[]).await {
                Ok(rows) if !rows.is_empty() => return Ok(()),
                Ok(_) => {}
                Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
                Err(error) => return Err(transport(error)),
            }
            let who = client.query_one(sql::WHO, &[]).await.map_err(transport)?;
            let (user, schema): (String, String) = (who.get(0), who.get(1));
            let script = format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}); {} COMMIT;",
                sql::MIGRATION_LOCK,
                sql::MIGRATION
            );
            let applied = client.batch_execute(&script).await;
            if applied.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            applied.map_err(|error| {
                explain(
                    error,
                    Doing::Migrating {
                        user: &user,
                        schema: &schema,
                    },
                )
            })
        }
        .await;
        drop(client);
        let _ = driver.await;
        result
    }

    /// A name for a new member, unique across processes.
    pub(crate) fn member_name(&self) -> String {
        super::member_name(self.shared.next_member.fetch_add(1, Ordering::Relaxed))
    }

    /// Starts the `LISTEN` task if it is not running, and watches `topic`.
    pub(crate) fn watch(&self, topic: &str) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.shared.listener.watch(topic);
        let mut listening = self.shared.listening.lock().unwrap();
        if listening.is_none() {
            let listener = self.shared.listener.clone();
            *listening = Some(tokio::spawn(listener.run(self.shared.connector.clone())));
        }
        receiver
    }

    /// The partition count of `topic`, 0 when it does not exist.
    async fn count_partitions(&self, topic: &str) -> Result<u32, BackendError> {
        let load = async {
            let client = self.client().await?;
            let row = client
                .query_typed(sql::PARTITIONS, params![(&topic, Type::TEXT)])
                .await
                .map_err(transport)?;
            Ok(match row.first().map_or(0, |row| row.get::<_, i32>(0)) as u32 {
                0 => None,
                count => Some(count),
            })
        };
        Ok(self
            .shared
            .partitions
            .get_or_load(topic, load)
            .await?
            .unwrap_or(0))
    }

    /// Creates `topic` with `partitions` partitions unless it exists.
    async fn create(&self, topic: &str, partitions: u32) -> Result<(), BackendError> {
        let client = self.client().await?;
        let count = partitions.max(1) as i32;
        client
            .query_typed(
                sql::CREATE_TOPIC,
                params![(&topic, Type::TEXT), (&count, Type::INT4)],
            )
            .await
            .map_err(transport)?;
        Ok(())
    }

    /// Writes `record` to `topic` and, for a hand-off, marks `source` handled in the same
    /// statement. A record of a failure already written (the unique key) is not written again:
    /// the row found is returned.
    pub(crate) async fn write(
        &self,
        to: &Topic,
        record: &OutboundRecord,
        source: Option<&Source>,
    ) -> Result<Delivered, BackendError> {
        let (topic, role) = (&*to.name, to.role);
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, key) => {
                let count = match self.count_partitions(topic).await? {
                    0 => {
                        let count = self.shared.settings.default_partitions;
                        self.create(topic, count).await?;
                        count
                    }
                    count => count,
                };
                match key {
                    Some(key) => crate::partitioner::partition_for_key(key, count),
                    None => {
                        (self.shared.next_member.fetch_add(1, Ordering::Relaxed) % u64::from(count)) as u32
                    }
                }
            }
        };
        match self.insert(topic, role, partition, record, source).await? {
            Some(delivered) => Ok(delivered),
            None => {
                // No such partition yet: the topic was never created, or has fewer.
                let client = self.client().await?;
                let count = (partition + 1).max(self.shared.settings.default_partitions) as i32;
                client
                    .query_typed(
                        sql::GROW_TOPIC,
                        params![(&topic, Type::TEXT), (&count, Type::INT4)],
                    )
                    .await
                    .map_err(|e| produce(topic, e))?;
                self.shared.partitions.forget(topic);
                self.insert(topic, role, partition, record, source)
                    .await?
                    .ok_or_else(|| BackendError::Produce {
                        topic: topic.to_owned(),
                        source: format!("partition {partition} does not exist").into(),
                    })
            }
        }
    }

    /// One [`sql::WRITE`]; `None` when the partition does not exist.
    async fn insert(
        &self,
        topic: &str,
        role: TopicRole,
        partition: u32,
        record: &OutboundRecord,
        source: Option<&Source>,
    ) -> Result<Option<Delivered>, BackendError> {
        let client = self.client().await?;
        let headers = &record.headers;
        let number = |name: &str| headers.get_str(name).and_then(|v| v.trim().parse::<i64>().ok());
        let now = now_ms();
        let (level, state) = match role {
            TopicRole::Retry { level } => (Some(level as i32), "waiting"),
            TopicRole::DeadLetter => (None, "dead_letter"),
            TopicRole::Parked => (None, "parked"),
            // A retry store is asked about derived topics only (a Tiered backend keeps main
            // topics on its transport); a role added later waits like a retry.
            _ => (None, "waiting"),
        };
        let partition_i32 = partition as i32;
        let due = record.due_at_ms().unwrap_or(now);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name).collect();
        let values: Vec<&[u8]> = headers.iter().map(|(_, value)| value).collect();
        let source_topic = headers.get_str(names::ORIGINAL_TOPIC);
        let source_partition = number(names::ORIGINAL_PARTITION).map(|p| p as i32);
        let source_offset = number(names::ORIGINAL_OFFSET);
        let group = headers.get_str(names::GROUP);
        let attempts = number(names::ATTEMPTS).map(|a| a as i32);
        let replays = number(names::REPLAYS).unwrap_or(0) as i32;
        let error_kind = headers.get_str(names::ERROR_KIND);
        let error_message = headers.get_str(names::ERROR_MESSAGE);
        let (from_topic, from_partition, from_offset) = match source {
            Some((t, p, o)) => (Some(&**t), Some(*p as i32), Some(*o as i64)),
            None => (None, None, None),
        };
        let rows = client
            .query_typed(
                sql::WRITE,
                params![
                    (&topic, Type::TEXT),
                    (&partition_i32, Type::INT4),
                    (&level, Type::INT4),
                    (&state, Type::TEXT),
                    (&now, Type::INT8),
                    (&due, Type::INT8),
                    (&record.key.as_deref(), Type::BYTEA),
                    (&record.payload.as_deref(), Type::BYTEA),
                    (&names, Type::TEXT_ARRAY),
                    (&values, Type::BYTEA_ARRAY),
                    (&source_topic, Type::TEXT),
                    (&source_partition, Type::INT4),
                    (&source_offset, Type::INT8),
                    (&group, Type::TEXT),
                    (&attempts, Type::INT4),
                    (&replays, Type::INT4),
                    (&error_kind, Type::TEXT),
                    (&error_message, Type::TEXT),
                    (&from_topic, Type::TEXT),
                    (&from_partition, Type::INT4),
                    (&from_offset, Type::INT8),
                ],
            )
            .await
            .map_err(|e| produce(topic, e))?;
        Ok(rows.first().map(|row| Delivered {
            partition: row.get::<_, i32>(0) as u32,
            offset: row.get::<_, i64>(1) as u64,
        }))
    }

    /// Every row of `topic` (retries waiting or handled and kept, dead letters), partition by
    /// partition in offset order, from offset `from[p]` of partition `p`: [`Browse::read`].
    async fn read_from(&self, topic: &str, from: &[u64]) -> Result<Vec<Record>, BackendError> {
        let client = self.client().await?;
        let from: Vec<i64> = from.iter().map(|&o| o.min(i64::MAX as u64) as i64).collect();
        let rows = client
            .query_typed(
                sql::READ,
                params![(&topic, Type::TEXT), (&from, Type::INT8_ARRAY)],
            )
            .await
            .map_err(transport)?;
        Ok(rows.iter().map(|row| decode(row, 0)).collect())
    }

    /// Per partition of `topic`, the offset of its oldest row not handled yet (its end offset
    /// when every row is handled): how far the level's workers are, as a committed offset is
    /// on Kafka.
    ///
    /// ```no_run
    /// # async fn show(postgres: retry_kafka::backend::postgres::Postgres) -> Result<(), retry_kafka::error::BackendError> {
    /// let behind = postgres.handled_up_to("orders.billing.retry.1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn handled_up_to(&self, topic: &str) -> Result<Vec<u64>, BackendError> {
        let client = self.client().await?;
        let rows = client
            .query_typed(sql::HANDLED_UP_TO, params![(&topic, Type::TEXT)])
            .await
            .map_err(transport)?;
        Ok(rows.iter().map(|row| row.get::<_, i64>(0) as u64).collect())
    }
}

/// A row as a [`Record`], its columns from `first` on in the order [`sql::READ`] gives.
pub(crate) fn decode(row: &Row, first: usize) -> Record {
    let names: Vec<String> = row.get(first + 5);
    let values: Vec<Vec<u8>> = row.get(first + 6);
    let mut headers = Headers::new();
    for (name, value) in names.iter().zip(values) {
        headers.insert_read(name, value.into());
    }
    Record {
        partition: row.get::<_, i32>(first) as u32,
        offset: row.get::<_, i64>(first + 1) as u64,
        timestamp_ms: Some(row.get(first + 2)),
        key: row.get::<_, Option<Vec<u8>>>(first + 3).map(Into::into),
        payload: row.get::<_, Option<Vec<u8>>>(first + 4).map(Into::into),
        headers,
    }
}

/// Rows of every state, retries handled and kept included.
///
/// ```no_run
/// use retry_kafka::backend::{Browse, Topic, TopicRole};
///
/// # async fn show(postgres: retry_kafka::backend::postgres::Postgres) -> Result<(), retry_kafka::error::BackendError> {
/// let dlq = Topic::new("orders.billing.dlq", TopicRole::DeadLetter);
/// for record in postgres.read(&dlq, &[]).await? {
///     println!("{}/{}: {:?}", record.partition, record.offset, record.headers.get_str("rk-error-message"));
/// }
/// # Ok(()) }
/// ```
impl Browse for Postgres {
    async fn read(&self, topic: &Topic, from: &[u64]) -> Result<Vec<Record>, BackendError> {
        self.read_from(&topic.name, from).await
    }

    async fn end_offsets_of(&self, topic: &Topic) -> Result<Vec<u64>, BackendError> {
        let client = self.client().await?;
        let topic = &*topic.name;
        let rows = client
            .query_typed(sql::END_OFFSETS, params![(&topic, Type::TEXT)])
            .await
            .map_err(transport)?;
        Ok(rows.iter().map(|row| row.get::<_, i64>(0) as u64).collect())
    }

    async fn read_page(&self, topic: &Topic, page: Page) -> Result<Vec<Record>, BackendError> {
        let client = self.client().await?;
        let topic = &*topic.name;
        let partition = page.partition() as i32;
        let [from, until, limit] =
            [page.from(), page.until(), page.limit() as u64].map(|n| n.min(i64::MAX as u64) as i64);
        let rows = client
            .query_typed(
                sql::READ_PAGE,
                params![
                    (&topic, Type::TEXT),
                    (&partition, Type::INT4),
                    (&from, Type::INT8),
                    (&until, Type::INT8),
                    (&limit, Type::INT8)
                ],
            )
            .await
            .map_err(transport)?;
        Ok(rows.iter().map(|row| decode(row, 0)).collect())
    }
}

impl TopicAdmin for Postgres {
    /// The first call an app's start makes: connects, creates the schema if needed, and
    /// explains a refusal (a wrong password, a missing grant).
    async fn partitions(&self, topic: &Topic) -> Result<Option<u32>, BackendError> {
        Ok(match self.count_partitions(&topic.name).await? {
            0 => None,
            count => Some(count),
        })
    }

    async fn create_topic(&self, topic: &Topic, partitions: u32) -> Result<(), BackendError> {
        self.create(&topic.name, partitions).await
    }
}

/// A row written for a failure from a main topic; the unique key on the failure's source makes
/// a write repeated after a crash a no-op.
impl Publish for Postgres {
    async fn send(&self, topic: &Topic, record: OutboundRecord) -> Result<Delivered, BackendError> {
        self.write(topic, &record, None).await
    }
}

/// Workers of a level share its due rows (`SKIP LOCKED`), not partitions.
impl RetryStore for Postgres {
    type Consumer = PostgresConsumer;

    async fn consume(&self, level: Topic) -> Result<PostgresConsumer, BackendError> {
        debug_assert!(level.role.is_derived(), "a retry store keeps derived topics only");
        let partitions = self.count_partitions(&level.name).await?;
        PostgresConsumer::start(self.clone(), level, partitions, None).await
    }

    /// A worker that claims only the rows of the partitions the main member of `followers`
    /// holds (`follow.rs`).
    fn can_follow(&self) -> bool {
        true
    }

    async fn consume_following(
        &self,
        level: Topic,
        followers: &Arc<Followers>,
    ) -> Result<PostgresConsumer, BackendError> {
        let partitions = self.count_partitions(&level.name).await?;
        PostgresConsumer::start(self.clone(), level, partitions, Some(followers)).await
    }

    /// The rows of `partitions` not handled yet.
    async fn unacknowledged(&self, topic: &Topic, partitions: &[u32]) -> Result<Vec<Record>, BackendError> {
        let client = self.client().await?;
        let name = &*topic.name;
        let partitions: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        let rows = client
            .query_typed(
                sql::WAITING,
                params![(&name, Type::TEXT), (&partitions, Type::INT4_ARRAY)],
            )
            .await
            .map_err(transport)?;
        Ok(rows.iter().map(|row| decode(row, 0)).collect())
    }

    /// Rows of the topic not handled yet, due or not.
    async fn backlog(&self, topic: &Topic) -> Result<u64, BackendError> {
        let client = self.client().await?;
        let topic = &*topic.name;
        let rows = client
            .query_typed(sql::LAG, params![(&topic, Type::TEXT)])
            .await
            .map_err(transport)?;
        Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0)) as u64)
    }
}
