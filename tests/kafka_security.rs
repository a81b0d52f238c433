//! TLS and SASL for real: an Apache Kafka broker (`ApacheKafka::start_secured`) with a TLS
//! listener, a SASL/SCRAM-SHA-512-over-TLS one and a SASL/PLAIN one, certificates made by
//! `openssl` for the test. The tests build retry-kafka with its `kafka-ssl` feature (the
//! system's OpenSSL; Debian: libssl-dev and pkg-config, installed by the test script).
//!
//! On each listener an app handles orders, retries some and dead-letters others, so the main
//! topic, the retry level and the DLQ all go through it. A wrong password and an untrusted
//! certificate fail the app's start with an error that names the problem and not the secret.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Browse as _, Topic, TopicAdmin as _, TopicRole};
use retry_kafka::prelude::*;
use retry_kafka_suite::{ApacheKafka, SecuredKafka, PLAIN_PASSWORD, PLAIN_USER, SCRAM_PASSWORD, SCRAM_USER};
use serde::{Deserialize, Serialize};

const DLQ: &str = "secure.orders.secure-workers.dlq";

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "secure.orders", key = "id")]
struct Order {
    id: u64,
}

static HANDLED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Fails the first attempt of every 5th order (one 200 ms level) and every attempt of orders
/// ending in 9 (dead-lettered).
#[retry_handler(group = "secure-workers", retries = ["200ms"], dlq)]
async fn work(order: Order, ctx: Context) -> Result<(), HandlerError> {
    if order.id % 10 == 9 {
        return Err(HandlerError::permanent("invalid"));
    }
    if order.id.is_multiple_of(5) && ctx.attempt() == 1 {
        return Err(HandlerError::transient("once more"));
    }
    HANDLED.lock().unwrap().push(order.id);
    Ok(())
}

fn tls(broker: &SecuredKafka) -> Kafka {
    Kafka::builder(broker.tls.clone())
        .property("security.protocol", "SSL")
        .property("ssl.ca.location", broker.ca_file.display().to_string())
        .replication_factor(1)
        .build()
        .unwrap()
}

fn scram(broker: &SecuredKafka, password: &str) -> Kafka {
    Kafka::builder(broker.sasl_ssl.clone())
        .property("security.protocol", "SASL_SSL")
        .property("ssl.ca.location", broker.ca_file.display().to_string())
        .property("sasl.mechanism", "SCRAM-SHA-512")
        .property("sasl.username", SCRAM_USER)
        .property("sasl.password", password)
        .replication_factor(1)
        .build()
        .unwrap()
}

fn plain(broker: &SecuredKafka, password: &str) -> Kafka {
    Kafka::builder(broker.sasl_plaintext.clone())
        .property("security.protocol", "SASL_PLAINTEXT")
        .property("sasl.mechanism", "PLAIN")
        .property("sasl.username", PLAIN_USER)
        .property("sasl.password", password)
        .replication_factor(1)
        .build()
        .unwrap()
}

/// Runs the app on `kafka` for orders `ids`; checks every order was handled or dead-lettered
/// (payload byte for byte) as the handler decides.
async fn round_trip(listener: &str, kafka: Kafka, ids: std::ops::Range<u64>) {
    kafka
        .create_topic(&Topic::main("secure.orders"), 2)
        .await
        .unwrap();
    let app = App::builder()
        .backend(kafka.clone())
        .handlers(|spec| spec.group() == "secure-workers")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let producer = app.producer();
    for id in ids.clone() {
        producer.send(&Order { id }).await.unwrap();
    }
    let expected_handled: HashSet<u64> = ids.clone().filter(|id| id % 10 != 9).collect();
    let expected_dead: HashSet<u64> = ids.clone().filter(|id| id % 10 == 9).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let handled: HashSet<u64> = HANDLED.lock().unwrap().iter().copied().collect();
        let records = kafka
            .read(&Topic::new(DLQ, TopicRole::DeadLetter), &[])
            .await
            .unwrap_or_default();
        let dead: HashSet<u64> = records
            .iter()
            .filter_map(|r| serde_json::from_slice::<Order>(r.payload.as_deref()?).ok())
            .map(|order| order.id)
            .filter(|id| ids.contains(id))
            .collect();
        if expected_handled.is_subset(&handled) && dead == expected_dead {
            for record in &records {
                let order: Order = serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
                assert_eq!(
                    record.payload.as_deref().unwrap(),
                    serde_json::to_vec(&order).unwrap(),
                    "the dead letter's payload is the order's bytes"
                );
            }
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "{listener}: after 60 s handled {:?} of {expected_handled:?}, dead-lettered {dead:?} of {expected_dead:?}",
            handled.intersection(&expected_handled).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    running.shutdown().await.unwrap();
    eprintln!(
        "{listener}: {} orders handled ({} after a retry), {} dead-lettered",
        expected_handled.len(),
        ids.filter(|id| id.is_multiple_of(5) && id % 10 != 9).count(),
        dead.len()
    );
}

async fn secured_broker() -> SecuredKafka {
    retry_kafka_suite::init_test_tracing();
    tokio::task::spawn_blocking(ApacheKafka::start_secured)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_runs_over_tls_over_scram_sha_512_and_over_sasl_plain() {
    let broker = secured_broker().await;
    round_trip("TLS", tls(&broker), 0..40).await;
    round_trip(
        "SASL/SCRAM-SHA-512 over TLS",
        scram(&broker, SCRAM_PASSWORD),
        40..80,
    )
    .await;
    round_trip("SASL/PLAIN", plain(&broker, PLAIN_PASSWORD), 80..120).await;
}

/// Starts an app on `kafka`, which must fail within 60 s; returns the error as a person reads it.
async fn start_error(kafka: Kafka) -> String {
    let app = App::builder()
        .backend(kafka)
        .handlers(|spec| spec.group() == "secure-workers")
        .build()
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(60), app.start()).await {
        Ok(Err(error)) => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
        Ok(Ok(running)) => {
            running.shutdown().await.unwrap();
            panic!("the app started")
        }
        Err(_) => panic!("the app's start neither failed nor finished in 60 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_certificate_fails_the_start_naming_the_problem() {
    let broker = secured_broker().await;

    let wrong = "not-the-scram-password-123";
    let error = start_error(scram(&broker, wrong)).await;
    eprintln!("wrong SCRAM password: {error}");
    assert!(error.to_lowercase().contains("authentication"), "{error}");
    assert!(!error.contains(wrong), "the password is printed: {error}");

    let wrong = "not-the-plain-password-456";
    let error = start_error(plain(&broker, wrong)).await;
    eprintln!("wrong PLAIN password: {error}");
    assert!(error.to_lowercase().contains("authentication"), "{error}");
    assert!(!error.contains(wrong), "the password is printed: {error}");

    // No CA given: the broker's certificate is signed by a CA the client does not trust.
    let untrusting = Kafka::builder(broker.tls.clone())
        .property("security.protocol", "SSL")
        .replication_factor(1)
        .build()
        .unwrap();
    let error = start_error(untrusting).await;
    eprintln!("untrusted certificate: {error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}
