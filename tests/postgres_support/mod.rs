//! PostgreSQL test support: the conformance harness over `Tiered<M, Postgres>` (main topics on
//! Kafka's mock cluster or on `redis-server`, retries and dead letters in a real PostgreSQL
//! server started on a free loopback port and stopped on drop).

#![allow(dead_code)]

use std::time::Duration;

use retry_kafka::backend::postgres::{Postgres, PostgresBuilder};
use retry_kafka::backend::{Browse, Record, RetryStore, Tiered, Topic, TopicRole};
pub use retry_kafka_suite::PostgresServer;

use crate::conformance::Harness;

/// Settings for tests: a short lease (a killed worker's rows return within 1.5 s), and handled
/// rows kept for an hour so a test can read a whole topic afterwards.
pub fn test_settings(url: &str) -> PostgresBuilder {
    Postgres::builder(url)
        .lease(Duration::from_millis(1500))
        .keep_handled(Duration::from_secs(3600))
}

pub fn test_backend(url: &str) -> Postgres {
    test_settings(url).build().expect("postgres backend")
}

/// A PostgreSQL server of the test's own.
pub async fn start_server() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start).await.unwrap()
}

/// The conformance harness on `Tiered<main, Postgres>`.
pub struct PostgresHarness<M: Harness> {
    pub main: M,
    pub postgres: Postgres,
    pub server: PostgresServer,
}

impl<M: Harness> PostgresHarness<M> {
    pub async fn start(main: M) -> Self {
        retry_kafka_suite::init_test_tracing();
        let server = start_server().await;
        let postgres = test_backend(&server.url());
        PostgresHarness {
            main,
            postgres,
            server,
        }
    }
}

impl<M: Harness> Harness for PostgresHarness<M> {
    type Backend = Tiered<M::Backend, Postgres>;

    fn backend(&self) -> Self::Backend {
        Tiered::new(self.main.backend(), self.postgres.clone())
    }

    async fn create_topic(&self, topic: &str, partitions: u32) {
        // The cases create main topics only.
        self.main.create_topic(topic, partitions).await;
    }

    async fn records(&self, topic: &str) -> Vec<Record> {
        let role = retry_kafka_suite::role_of(topic);
        if role.is_derived() {
            self.postgres
                .read(&Topic::new(topic, role), &[])
                .await
                .expect("read rows")
        } else {
            self.main.records(topic).await
        }
    }

    /// On PostgreSQL, per partition, the oldest row not handled yet (rows are the work; a
    /// level has one group).
    async fn committed(&self, topic: &str, group: &str) -> Vec<u64> {
        if retry_kafka_suite::role_of(topic).is_derived() {
            self.postgres.handled_up_to(topic).await.expect("handled up to")
        } else {
            self.main.committed(topic, group).await
        }
    }

    /// Workers claim due rows with `FOR UPDATE SKIP LOCKED`: no member owns a retry level's
    /// partitions.
    fn retries_are_claimed_when_due(&self) -> bool {
        true
    }

    async fn end_offsets(&self, topic: &str) -> Vec<u64> {
        let role = retry_kafka_suite::role_of(topic);
        if role.is_derived() {
            self.postgres
                .end_offsets_of(&Topic::new(topic, role))
                .await
                .expect("end offsets")
        } else {
            self.main.end_offsets(topic).await
        }
    }
}

/// Rows of `topic` in `state`, counted with SQL.
pub async fn rows_in_state(server: &PostgresServer, topic: &str, state: &str) -> i64 {
    let client = connect(&server.url()).await;
    let row = client
        .query_one(
            "SELECT count(*) FROM retry_kafka_records WHERE topic = $1 AND state = $2",
            &[&topic, &state],
        )
        .await
        .expect("count rows");
    row.get(0)
}

/// A connection of the test's own.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(connection);
    client
}

/// Waits until no row of `topic` waits any more.
pub async fn assert_nothing_waiting(postgres: &Postgres, topic: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let lag = postgres
            .backlog(&Topic::new(topic, TopicRole::Retry { level: 1 }))
            .await
            .unwrap();
        if lag == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{lag} rows of {topic} still wait"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
