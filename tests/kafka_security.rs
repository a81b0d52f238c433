//! TLS and SASL for real: an Apache Kafka broker (`ApacheKafka::start_secured`) with a TLS
//! listener, a SASL/SCRAM-SHA-512-over-TLS one and a SASL/PLAIN one, certificates made by
//! `openssl` for the test. The tests build retry-kafka with its `kafka-ssl` feature (the
//! system's OpenSSL; Debian: libssl-dev and pkg-config, installed by the test script).
//!
//! On each listener an app handles orders, retries some and dead-letters others, so the main
//! topic, the retry level and the DLQ all go through it. A wrong password and an untrusted
//! certificate fail the app's start with an error that names the problem and not the secret.
//! An ACL that denies the app's principal WRITE on its retry topic holds the failed record
//! unacknowledged, with a warning that names the topic and the ACL, until the ACL goes.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use retry_kafka::backend::kafka::Kafka;
use std::sync::Arc;

use rdkafka::bindings::rd_kafka_AclOperation_t::{RD_KAFKA_ACL_OPERATION_ALL, RD_KAFKA_ACL_OPERATION_WRITE};
use retry_kafka::backend::{Backend as _, Browse as _, Topic, TopicAdmin as _, TopicRole};
use retry_kafka::prelude::*;
use retry_kafka_suite::{
    ApacheKafka, SecuredKafka, TopicAcl, PLAIN_PASSWORD, PLAIN_PRINCIPAL, PLAIN_USER, SCRAM_PASSWORD,
    SCRAM_USER,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

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

/// Every warning and error logged in this process, as text: what an operator would read.
static WARNINGS: Mutex<String> = Mutex::new(String::new());

struct Warnings;

impl std::io::Write for Warnings {
    fn write(&mut self, text: &[u8]) -> std::io::Result<usize> {
        WARNINGS.lock().unwrap().push_str(&String::from_utf8_lossy(text));
        Ok(text.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs to the test's output when `RUST_LOG` is set, and warnings to [`WARNINGS`].
fn init_tracing() {
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| Warnings)
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .try_init();
}

async fn secured_broker() -> SecuredKafka {
    init_tracing();
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

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "acl.payments", key = "id")]
struct Payment {
    id: u64,
}

const PAYMENTS_RETRY: &str = "acl.payments.acl-workers.retry.1";

/// `(id, attempt)` of every attempt of `pay`.
static PAID: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());

/// Fails the first attempt of payment 0, so it goes to the retry level.
#[retry_handler(group = "acl-workers", retries = ["200ms"], dlq)]
async fn pay(payment: Payment, ctx: Context) -> Result<(), HandlerError> {
    PAID.lock().unwrap().push((payment.id, ctx.attempt()));
    if payment.id == 0 && ctx.attempt() == 1 {
        return Err(HandlerError::transient("declined once"));
    }
    Ok(())
}

/// The lines logged so far that name the refused write to the retry topic.
fn denied_writes() -> Vec<String> {
    let needle = format!("not authorized to write to topic {PAYMENTS_RETRY:?}");
    WARNINGS
        .lock()
        .unwrap()
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_an_acl_denies_is_not_acknowledged_and_the_warning_names_the_topic_and_the_acl() {
    let broker = Arc::new(secured_broker().await);
    // Everyone may do everything on the retry topic but the app's principal, which may not write.
    let acls = [
        TopicAcl {
            topic: PAYMENTS_RETRY,
            principal: "User:*",
            operation: RD_KAFKA_ACL_OPERATION_ALL,
            allow: true,
        },
        TopicAcl {
            topic: PAYMENTS_RETRY,
            principal: PLAIN_PRINCIPAL,
            operation: RD_KAFKA_ACL_OPERATION_WRITE,
            allow: false,
        },
    ];
    let admin = broker.clone();
    tokio::task::spawn_blocking(move || admin.add_acls(&acls))
        .await
        .unwrap();

    let kafka = plain(&broker, PLAIN_PASSWORD);
    let main = Topic::main("acl.payments");
    kafka.create_topic(&main, 1).await.unwrap();
    let app = App::builder()
        .backend(kafka.clone())
        .handlers(|spec| spec.group() == "acl-workers")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let producer = app.producer();
    for id in 0..5 {
        producer.send(&Payment { id }).await.unwrap();
    }

    // Payment 0 failed and its hand-off to the retry topic is refused: the warning says why.
    let deadline = Instant::now() + Duration::from_secs(60);
    while denied_writes().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no two warnings of the refused write in 60 s; warnings:\n{}",
            WARNINGS.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warning = denied_writes().remove(0);
    eprintln!("the warning: {warning}");
    assert!(
        warning.contains("TOPIC_AUTHORIZATION_FAILED") && warning.contains("WRITE"),
        "{warning}"
    );
    assert!(!warning.contains("transport failure"), "{warning}");
    // Tried again, and never acknowledged: the group's committed offset has not passed it, so
    // a restart would run payment 0 (and the four behind it) again.
    assert_eq!(kafka.lag(&main, "acl-workers").await.unwrap(), 5);

    // The ACL goes: the write goes through on a later try, the retry succeeds, and the main
    // topic is acknowledged to its end.
    let admin = broker.clone();
    tokio::task::spawn_blocking(move || admin.remove_acls(&acls[1..]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let retried = PAID.lock().unwrap().contains(&(0, 2));
        let lag = kafka.lag(&main, "acl-workers").await.unwrap();
        if retried && lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "60 s after the ACL went: retried {retried}, lag {lag}; attempts {:?}",
            PAID.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paid: HashSet<u64> = PAID.lock().unwrap().iter().map(|&(id, _)| id).collect();
    assert_eq!(paid, (0..5).collect());
    running.shutdown().await.unwrap();
    eprintln!(
        "{} warnings of the refused write before the ACL went",
        denied_writes().len()
    );
}
