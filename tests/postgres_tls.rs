//! TLS to PostgreSQL against a real server with `ssl = on` and certificates made by `openssl`
//! for the test (a CA, a server certificate for 127.0.0.1 only, a client certificate for the
//! user `postgres`): retries walk their levels through the store over TLS under `require`,
//! `verify-ca`, `verify-full` and with a client certificate (each a case of the conformance
//! suite, its connections seen encrypted in `pg_stat_ssl`); and each refusal (a CA not
//! trusted, another host's certificate, a server without TLS, a client certificate missing
//! or from another CA, a file that is not there) fails the app's start at once, naming the
//! setting to change.

mod conformance;
mod kafka_support;
mod postgres_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kafka_support::KafkaHarness;
use postgres_support::{connect, test_settings, PostgresHarness};
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::postgres::{Postgres, SslMode, TlsError};
use retry_kafka::backend::{Topic, TopicAdmin, TopicRole};
use retry_kafka::error::BackendError;
use retry_kafka::App;
use retry_kafka_suite::{make_certificates_for, make_client_certificate, PostgresServer, ServerTls};

/// How long a refused start may take: one connection, no retries.
const AT_ONCE: Duration = Duration::from_secs(5);

/// A CA, a server certificate it signs for 127.0.0.1 only, and a client certificate for the
/// user `postgres`, in a directory removed on drop.
struct Certificates(PathBuf);

impl Certificates {
    fn make(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("retry-kafka-pg-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("certificate directory");
        make_certificates_for(&dir, "IP:127.0.0.1");
        make_client_certificate(&dir, "postgres");
        Certificates(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("a UTF-8 temp dir").to_owned()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_tls_server(certificates: &Certificates, client_certificates: bool) -> PostgresServer {
    let dir: PathBuf = certificates.0.clone();
    tokio::task::spawn_blocking(move || {
        PostgresServer::start_tls(ServerTls {
            certificates: &dir,
            client_certificates,
        })
    })
    .await
    .unwrap()
}

/// `postgres://postgres@{host}:{port}/postgres?application_name={application}&{params}`; a
/// `localhost` is reached at 127.0.0.1 (`hostaddr`), where the server listens, whatever the
/// resolver says.
fn url(server: &PostgresServer, host: &str, application: &str, params: &str) -> String {
    let mut url = format!(
        "postgres://postgres@{host}:{}/postgres?application_name={application}",
        server.port
    );
    if host == "localhost" {
        url.push_str("&hostaddr=127.0.0.1");
    }
    if !params.is_empty() {
        url = format!("{url}&{params}");
    }
    url
}

/// Main topics on librdkafka's mock cluster.
fn kafka() -> KafkaHarness {
    retry_kafka_suite::init_test_tracing();
    KafkaHarness {
        backend: Kafka::embedded().expect("embedded cluster"),
        broker: None,
    }
}

/// The conformance harness on `Tiered<Kafka mock, postgres>`, its server `server`.
fn harness(server: PostgresServer, postgres: Postgres) -> PostgresHarness<KafkaHarness> {
    PostgresHarness {
        main: kafka(),
        postgres,
        server,
    }
}

/// Every connection `application` has open is encrypted, with the client certificate of
/// `postgres` when `client_dn` (asked of the server, over a plain connection of the test's own).
async fn assert_encrypted(server: &PostgresServer, application: &str, client_dn: bool) {
    let client = connect(&server.url()).await;
    let rows = client
        .query(
            "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "{application} has no connection open");
    for row in rows {
        assert!(
            row.get::<_, bool>(0),
            "a connection of {application} is plain text"
        );
        if client_dn {
            let dn: Option<String> = row.get(1);
            assert!(
                dn.as_deref().is_some_and(|dn| dn.contains("CN=postgres")),
                "{dn:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_checking_the_certificate() {
    let certificates = Certificates::make("require");
    let server = start_tls_server(&certificates, false).await;
    // No CA given: libpq's `require` encrypts and trusts any certificate.
    let postgres = test_settings(&url(&server, "127.0.0.1", "rk-require", "sslmode=require"))
        .build()
        .unwrap();
    let harness = harness(server, postgres);
    conformance::transient_failure_walks_the_levels_then_dead_letters(&harness).await;
    assert_encrypted(&harness.server, "rk-require", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_checks_the_chain_and_not_the_host_name() {
    let certificates = Certificates::make("verify-ca");
    let server = start_tls_server(&certificates, false).await;
    // Set in code; `localhost` is not in the certificate, which verify-ca does not look at.
    let postgres = test_settings(&url(&server, "localhost", "rk-verify-ca", ""))
        .ssl_mode(SslMode::VerifyCa)
        .ssl_root_cert(certificates.file("ca.pem"))
        .build()
        .unwrap();
    let harness = harness(server, postgres);
    conformance::payload_bytes_are_identical_across_attempts(&harness).await;
    assert_encrypted(&harness.server, "rk-verify-ca", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_chain_and_the_host_name() {
    let certificates = Certificates::make("verify-full");
    let server = start_tls_server(&certificates, false).await;
    let params = format!("sslmode=verify-full&sslrootcert={}", certificates.file("ca.pem"));
    let postgres = test_settings(&url(&server, "127.0.0.1", "rk-verify-full", &params))
        .build()
        .unwrap();
    let harness = harness(server, postgres);
    conformance::a_retry_kept_in_memory_runs_when_due_and_not_before(&harness).await;
    assert_encrypted(&harness.server, "rk-verify-full", false).await;
}

/// A server that wants a client certificate: given, retries flow; not given, or signed by a CA
/// the server does not trust, the start fails at once naming `sslcert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_the_server_requires_one() {
    let certificates = Certificates::make("client");
    let server = start_tls_server(&certificates, true).await;
    let params = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        certificates.file("ca.pem"),
        certificates.file("client.pem"),
        certificates.file("client.key")
    );
    let postgres = test_settings(&url(&server, "127.0.0.1", "rk-client-cert", &params))
        .build()
        .unwrap();
    let harness = harness(server, postgres);
    conformance::many_failures_in_flight_on_one_partition_keep_their_order(&harness).await;
    assert_encrypted(&harness.server, "rk-client-cert", true).await;

    let verify_full = |application: &str| {
        test_settings(&url(&harness.server, "127.0.0.1", application, ""))
            .ssl_mode(SslMode::VerifyFull)
            .ssl_root_cert(certificates.file("ca.pem"))
    };
    let message = start_fails_at_once(&harness.main, verify_full("rk-no-client-cert").build().unwrap()).await;
    assert!(
        message.contains("sslcert not given: the server requires a client certificate"),
        "{message}"
    );

    let stranger = Certificates::make("client-stranger");
    let postgres = verify_full("rk-stranger")
        .ssl_client_cert(stranger.file("client.pem"), stranger.file("client.key"))
        .build()
        .unwrap();
    let message = start_fails_at_once(&harness.main, postgres).await;
    let refused = format!(
        "sslcert={}: the server refused this client certificate",
        stranger.file("client.pem")
    );
    assert!(message.contains(&refused), "{message}");
}

/// Starts an app on `Tiered<kafka, postgres>`, which must fail within [`AT_ONCE`]
/// with [`BackendError::Refused`]; its message.
async fn start_fails_at_once(kafka: &KafkaHarness, postgres: Postgres) -> String {
    let error = start_error(kafka, postgres).await;
    let message = format!("{error:?}");
    assert!(
        matches!(error, retry_kafka::Error::Backend(BackendError::Refused { .. })),
        "{message}"
    );
    eprintln!("{message}\n");
    message
}

/// The error of an app's start on `Tiered<kafka, postgres>`, which must come within
/// [`AT_ONCE`].
async fn start_error(kafka: &KafkaHarness, postgres: Postgres) -> retry_kafka::Error {
    use conformance::Harness as _;
    // The main topic is on Kafka; its retry levels are what the start asks PostgreSQL about.
    let main = Topic::main("conf.success");
    if kafka.backend.partitions(&main).await.unwrap().is_none() {
        kafka.create_topic("conf.success", 1).await;
    }
    let app = App::builder()
        .backend(retry_kafka::backend::Tiered::new(kafka.backend.clone(), postgres))
        .handlers(|spec| spec.group() == "conf-success")
        .build()
        .expect("valid handlers");
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), app.start())
        .await
        .expect("the start returns");
    let elapsed = started.elapsed();
    let error = match result {
        Ok(running) => {
            running.shutdown().await.unwrap();
            panic!("the app started");
        }
        Err(error) => error,
    };
    assert!(elapsed < AT_ONCE, "the start failed after {elapsed:?}: {error:?}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_fail_the_start_at_once_naming_the_setting() {
    let certificates = Certificates::make("refusals");
    let stranger = Certificates::make("stranger");
    let server = start_tls_server(&certificates, false).await;
    let backend = |host: &str, params: &str| {
        test_settings(&url(&server, host, "rk-refused", params))
            .build()
            .unwrap()
    };
    let strange_ca = stranger.file("ca.pem");
    let ca = certificates.file("ca.pem");
    let kafka = kafka();

    // A CA that did not sign the server's certificate: under verify-ca, and under require
    // once a root certificate is given (libpq's rule).
    for mode in ["verify-ca", "require"] {
        let postgres = backend("127.0.0.1", &format!("sslmode={mode}&sslrootcert={strange_ca}"));
        let message = start_fails_at_once(&kafka, postgres).await;
        let expected = format!(
            "sslmode={mode}: the server's certificate is not signed by a CA in sslrootcert={strange_ca}"
        );
        assert!(message.contains(&expected), "{message}");
    }

    // The certificate is for 127.0.0.1 only.
    let postgres = backend("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let message = start_fails_at_once(&kafka, postgres).await;
    assert!(
        message.contains("sslmode=verify-full: the server's certificate is for 127.0.0.1, not localhost"),
        "{message}"
    );

    // A file that is not there: the TLS error, typed, is the source.
    let missing = certificates.file("missing.pem");
    let postgres = backend("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={missing}"));
    let error = start_error(&kafka, postgres).await;
    let message = format!("{error:?}");
    assert!(
        message.contains(&format!("sslrootcert={missing}: cannot read it")),
        "{message}"
    );
    let tls = std::iter::successors(std::error::Error::source(&error), |e| e.source())
        .find_map(|e| e.downcast_ref::<TlsError>());
    assert!(matches!(tls, Some(TlsError::Unreadable { .. })), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_is_refused_unless_the_mode_allows_plain_text() {
    let server = postgres_support::start_server().await;
    let backend = |params: &str| {
        test_settings(&url(&server, "127.0.0.1", "rk-plain", params))
            .build()
            .unwrap()
    };
    let level = Topic::new("orders.billing.retry.1", TopicRole::Retry { level: 1 });
    // prefer (the default) and disable connect in plain text.
    for params in ["sslmode=prefer", "sslmode=disable", ""] {
        backend(params).create_topic(&level, 1).await.unwrap();
    }
    let kafka = kafka();
    for mode in ["require", "verify-ca", "verify-full"] {
        let message = start_fails_at_once(&kafka, backend(&format!("sslmode={mode}"))).await;
        let expected = format!("sslmode={mode}: the server does not accept TLS connections");
        assert!(message.contains(&expected), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_encrypts_when_the_server_accepts_tls() {
    let certificates = Certificates::make("prefer");
    let server = start_tls_server(&certificates, false).await;
    let postgres = test_settings(&url(&server, "127.0.0.1", "rk-prefer", ""))
        .build()
        .unwrap();
    let level = Topic::new("orders.billing.retry.1", TopicRole::Retry { level: 1 });
    postgres.create_topic(&level, 1).await.unwrap();
    assert_eq!(postgres.partitions(&level).await.unwrap(), Some(1));
    assert_encrypted(&server, "rk-prefer", false).await;
}
