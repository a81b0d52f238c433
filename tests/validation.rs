//! The whole set of handlers and the settings are checked before any I/O, with messages that
//! name what is wrong.

use retry_kafka::app::TopicNaming;
use retry_kafka::error::ConfigError;
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(topic = "val.orders")]
struct Order {
    id: u64,
}

#[retry_handler(group = "val-dup", dlq)]
async fn first_claim(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

#[retry_handler(group = "val-dup", dlq)]
async fn second_claim(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

// Its retry topic, `val.orders.val-a.retry.1`, is the main topic of the handler below.
#[retry_handler(group = "val-a", retries = ["1s"], dlq)]
async fn makes_a_retry_topic(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

#[retry_handler(topic = "val.orders.val-a.retry.1", group = "val-b", dlq)]
async fn reads_that_topic(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

fn build(
    keep: impl Fn(&retry_kafka::handler::HandlerSpec) -> bool + Send + Sync + 'static,
) -> Result<(), ConfigError> {
    App::builder()
        .backend(InMemory::new())
        .handlers(keep)
        .build()
        .map(drop)
}

#[test]
fn two_handlers_on_one_topic_and_group_are_rejected_by_name() {
    let error = build(|spec| spec.group() == "val-dup").unwrap_err();
    assert!(matches!(error, ConfigError::DuplicateHandler { .. }));
    let message = error.to_string();
    assert!(
        message.contains("validation::first_claim") && message.contains("validation::second_claim"),
        "{message}"
    );
    assert!(
        message.contains("\"val.orders\"") && message.contains("\"val-dup\""),
        "{message}"
    );
    assert!(
        message.contains("tests/validation.rs:"),
        "the message points at the source: {message}"
    );
}

#[test]
fn a_topic_in_two_roles_is_rejected() {
    let error = build(|spec| ["val-a", "val-b"].contains(&spec.group())).unwrap_err();
    assert_eq!(
        error.to_string(),
        "topic \"val.orders.val-a.retry.1\" is a main topic (of `validation::reads_that_topic`) and also a retry \
         topic of `validation::makes_a_retry_topic`; rename a group or change the topic naming"
    );
    // Each alone is fine.
    build(|spec| spec.group() == "val-a").unwrap();
    build(|spec| spec.group() == "val-b").unwrap();
}

#[test]
fn topic_naming_is_checked() {
    let error = TopicNaming::new("{topic}.retry.{level}", "{topic}.{group}.dlq").unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid retry_topic_pattern: pattern \"{topic}.retry.{level}\" lacks {group}"
    );
    let error = TopicNaming::new("{topic}.{group}.retry", "{topic}.{group}.dlq").unwrap_err();
    assert!(error.to_string().contains("lacks {level}"));
    let error = TopicNaming::new("{topic}.{group}.retry.{level}", "dead-letters").unwrap_err();
    assert!(matches!(
        error,
        ConfigError::Invalid {
            field: "dead_letter_topic_pattern",
            ..
        }
    ));

    let slashes = TopicNaming::new("{topic}/{group}/{level}", "{topic}.{group}.dlq").unwrap();
    let error = App::builder()
        .backend(InMemory::new())
        .handlers(|spec| spec.group() == "val-a")
        .topic_naming(slashes)
        .build()
        .map(drop)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid topic_naming: it makes the topic name \"val.orders/val-a/1\"; use 1-249 of [a-zA-Z0-9._-]"
    );
}

#[test]
fn no_handlers_is_an_error_that_explains_linking() {
    let error = build(|_| false).unwrap_err();
    assert_eq!(error, ConfigError::NoHandlers);
    assert!(error.to_string().contains("use that_crate as _;"));
}

#[tokio::test]
async fn run_without_a_backend_fails_naming_the_setting() {
    // One test touches the environment, so no other test races with it.
    std::env::remove_var(retry_kafka::settings::vars::RETRY_KAFKA_BACKEND);
    std::env::remove_var("KAFKA_BROKERS");
    std::env::remove_var("REDIS_URL");
    std::env::remove_var("DATABASE_URL");
    std::env::remove_var("POSTGRES_URL");
    let error = retry_kafka::run().await.unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("no backend configured"), "{message}");
    assert!(
        message.contains("KAFKA_BROKERS") && message.contains("RETRY_KAFKA_BACKEND"),
        "{message}"
    );

    std::env::set_var(retry_kafka::settings::vars::RETRY_KAFKA_BACKEND, "kafka");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid KAFKA_BROKERS: not set; give the bootstrap servers, e.g. localhost:9092"
    );

    std::env::set_var(retry_kafka::settings::vars::RETRY_KAFKA_BACKEND, "kafak");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid RETRY_KAFKA_BACKEND: unknown backend \"kafak\"; this build supports \"kafka\", \
         \"kafka-embedded\", \"redis\", \"kafka+redis\", \"kafka+postgres\", \"redis+postgres\" and \
         \"memory\""
    );

    std::env::set_var(retry_kafka::settings::vars::RETRY_KAFKA_BACKEND, "redis");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid REDIS_URL: not set; give the server's URL, e.g. redis://127.0.0.1:6379"
    );
    std::env::set_var("REDIS_URL", "redis://127.0.0.1:1");
    std::env::set_var("REDIS_SESSION_TIMEOUT_MS", "10s");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid REDIS_SESSION_TIMEOUT_MS: \"10s\" is not a whole number"
    );
    std::env::remove_var("REDIS_SESSION_TIMEOUT_MS");
    std::env::set_var("REDIS_URL", "http://127.0.0.1:1");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert!(
        message.starts_with("invalid REDIS_URL: http://127.0.0.1:1: "),
        "{message}"
    );
    // A cluster's nodes beside one server's URL: which layout is meant must be said.
    std::env::set_var("REDIS_CLUSTER_URLS", "redis://127.0.0.1:1,redis://127.0.0.1:2");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert!(
        message.starts_with("invalid REDIS_CLUSTER_URLS: REDIS_URL is set too; set one of them"),
        "{message}"
    );
    std::env::remove_var("REDIS_CLUSTER_URLS");
    // Sentinels without the primary's name, a sentinel URL given as a cluster's node.
    std::env::set_var("REDIS_URL", "redis+sentinel://:secret@127.0.0.1:1,127.0.0.1:2");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert!(
        message
            .starts_with("invalid REDIS_URL: redis+sentinel://:***@127.0.0.1:1,127.0.0.1:2: no master name"),
        "{message}"
    );
    std::env::remove_var("REDIS_URL");
    std::env::set_var("REDIS_CLUSTER_URLS", "redis+sentinel://127.0.0.1:1/orders");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert!(
        message
            .starts_with("invalid REDIS_CLUSTER_URLS: redis+sentinel://127.0.0.1:1/orders names sentinels"),
        "{message}"
    );
    std::env::remove_var("REDIS_CLUSTER_URLS");
    std::env::set_var("REDIS_URL", "redis://127.0.0.1:1");

    // Both set: the choice must be made, and the message names the three.
    std::env::remove_var(retry_kafka::settings::vars::RETRY_KAFKA_BACKEND);
    std::env::set_var("KAFKA_BROKERS", "127.0.0.1:1");
    let message = retry_kafka::run().await.unwrap_err().to_string();
    assert!(message.contains("\"kafka+redis\""), "{message}");
    std::env::remove_var("KAFKA_BROKERS");
    std::env::remove_var("REDIS_URL");
    std::env::remove_var(retry_kafka::settings::vars::RETRY_KAFKA_BACKEND);
}

#[tokio::test]
async fn kafka_commit_and_at_risk_settings_out_of_range_are_refused_naming_their_variable() {
    use retry_kafka::backend::kafka::Kafka;
    use retry_kafka::settings::{BackendChoice, Settings};
    use std::time::Duration;

    let message =
        |builder: retry_kafka::backend::kafka::KafkaBuilder| builder.build().err().unwrap().to_string();
    assert_eq!(
        message(Kafka::builder("127.0.0.1:9092").commit_interval(Duration::ZERO)),
        "invalid KAFKA_COMMIT_INTERVAL_MS: 0 ms is out of range: give 1 to 60000 ms"
    );
    assert_eq!(
        message(Kafka::builder("127.0.0.1:9092").commit_records(0)),
        "invalid KAFKA_COMMIT_RECORDS: 0 records: give at least 1"
    );
    assert_eq!(
        message(Kafka::builder("127.0.0.1:9092").at_risk_limit(Duration::from_millis(50))),
        "invalid KAFKA_AT_RISK_MS: 50 ms is out of range: give 100 to 3600000 ms"
    );
    assert_eq!(
        message(Kafka::builder("127.0.0.1:9092").at_risk_records(0)),
        "invalid KAFKA_AT_RISK_RECORDS: 0 records: give at least 1"
    );
    // From the environment's variables, as run() reads them: refused before any I/O.
    let settings = Settings::from_vars([
        ("KAFKA_BROKERS", "127.0.0.1:9092"),
        ("KAFKA_COMMIT_INTERVAL_MS", "120000"),
    ])
    .unwrap();
    assert_eq!(settings.choice(), Ok(BackendChoice::Kafka));
    /// Work that never runs: the backend is refused first.
    struct Nothing;
    impl retry_kafka::settings::WithBackend for Nothing {
        type Output = ();
        async fn run<B: retry_kafka::backend::Backend + retry_kafka::backend::Browse>(self, _: B) {}
    }
    let error = settings.with_backend(Nothing).await.unwrap_err().to_string();
    assert_eq!(
        error,
        "invalid KAFKA_COMMIT_INTERVAL_MS: 120000 ms is out of range: give 1 to 60000 ms"
    );
    let settings = Settings::from_vars([
        ("KAFKA_BROKERS", "127.0.0.1:9092"),
        ("KAFKA_AT_RISK_MS", "7200000"),
    ])
    .unwrap();
    let error = settings.with_backend(Nothing).await.unwrap_err().to_string();
    assert_eq!(
        error,
        "invalid KAFKA_AT_RISK_MS: 7200000 ms is out of range: give 100 to 3600000 ms"
    );
    // Exactly-once with the retries outside Kafka: they cannot join its transactions.
    for (store, vars) in [
        (
            "Redis",
            [
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("RETRY_KAFKA_BACKEND", "kafka+redis"),
            ],
        ),
        (
            "PostgreSQL",
            [
                ("DATABASE_URL", "postgres://127.0.0.1:1/db"),
                ("RETRY_KAFKA_BACKEND", "kafka+postgres"),
            ],
        ),
    ] {
        let mut all = vec![
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("KAFKA_EXACTLY_ONCE", "true"),
        ];
        all.extend(vars);
        let settings = Settings::from_vars(all).unwrap();
        let error = settings.with_backend(Nothing).await.unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "invalid KAFKA_EXACTLY_ONCE: exactly-once needs the retries and dead letters in Kafka, and here \
                 they are kept in {store}, which cannot take part in a Kafka transaction; unset it, or keep the \
                 retries in Kafka (RETRY_KAFKA_BACKEND=kafka)"
            )
        );
    }
}

#[retry_handler(group = "val-ordered", retries = ["1s"], dlq, ordering = "key")]
async fn ordered(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test]
async fn key_ordering_on_a_backend_that_cannot_keep_it_is_refused_before_any_io() {
    // Nothing listens there: the refusal comes before a connection is tried. Unordered Redis
    // consumers read every partition in every member: no process owns a key's partition.
    let redis = retry_kafka::backend::redis::Redis::builder("redis://127.0.0.1:1")
        .unordered()
        .build()
        .unwrap();
    let app = App::builder()
        .backend(redis)
        .handlers(|spec| spec.group() == "val-ordered")
        .build()
        .unwrap();
    let started = tokio::time::timeout(std::time::Duration::from_secs(5), app.start())
        .await
        .expect("refused at once, before any I/O");
    let error = started.err().expect("refused");
    let message = format!("{error:?}");
    assert!(message.contains("`validation::ordered`"), "{message}");
    assert!(message.contains("ordering = \"key\""), "{message}");
    assert!(message.contains("redis backend"), "{message}");
    assert!(message.contains("not `unordered`"), "{message}");
    // In-process, it runs and has a held topic.
    let app = App::builder()
        .backend(InMemory::new())
        .handlers(|spec| spec.group() == "val-ordered")
        .build()
        .unwrap();
    assert_eq!(
        app.topology(0).held.as_deref(),
        Some("val.orders.val-ordered.held")
    );
}
