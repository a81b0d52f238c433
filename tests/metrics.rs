//! Metrics and health over HTTP: the Prometheus endpoint scraped during a run shows exact
//! counts for a known workload, and `/readyz` turns 503 when a consumer stops on an error.
//!
//! The `metrics` recorder is global to a process, so these tests have a binary of their own;
//! both apps here share the recorder the first one installed, and their series differ by topic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use retry_kafka::app::{ConsumerState, Running};
use retry_kafka::backend::memory::InMemory;
use retry_kafka::backend::{
    Backend, Consumer, Delivered, Fetched, HandOffId, HandOffReports, OutboundRecord, Position, Publish,
    Subscription, Topic, TopicAdmin,
};
use retry_kafka::error::BackendError;
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// A real HTTP/1.1 GET over TCP, and the Prometheus text format

/// `GET path` on `addr`: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// Every sample of a scrape: `name{label="value",...}` (labels sorted) to its value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let key = match series.split_once('{') {
                None => series.to_owned(),
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort();
                    format!("{name}{{{}}}", labels.join(","))
                }
            };
            (key, value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `name` with exactly `labels` (in any order) in `scrape`; 0 when absent from it
/// (a counter that was registered but never bumped is still rendered, so absence is a miss
/// the caller's exact expectation catches).
fn sample(scrape: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort();
    scrape.get(&format!("{name}{{{}}}", labels.join(","))).copied()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn loopback() -> SocketAddr {
    // Port 0: the system picks a free one; `Running::metrics_addr` says which.
    ([127, 0, 0, 1], 0).into()
}

// ---------------------------------------------------------------------------------------------
// A known workload: 10 orders, 3 fail permanently (dead-lettered), 2 fail once then succeed

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(topic = "metrics.orders", key = "id")]
struct Order {
    id: u64,
    outcome: Outcome,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum Outcome {
    Succeed,
    FailPermanently,
    FailOnce,
}

#[retry_handler(topic = "metrics.orders", group = "metrics-billing", retries = ["50ms", "50ms"], dlq)]
async fn bill(order: Order, ctx: Context) -> Result<(), HandlerError> {
    match order.outcome {
        Outcome::Succeed => Ok(()),
        Outcome::FailPermanently => Err(HandlerError::permanent("card refused")),
        Outcome::FailOnce if ctx.attempt() == 1 => Err(HandlerError::transient("bank timeout")),
        Outcome::FailOnce => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_counts_a_known_workload_exactly() {
    let broker = InMemory::new();
    let app = App::builder()
        .backend(broker.clone())
        .handlers(|spec| spec.group() == "metrics-billing")
        .metrics_addr(loopback())
        .lag_interval(Duration::from_millis(50))
        .build()
        .expect("valid handlers");
    let running = app.start().await.expect("app starts");
    let addr = running.metrics_addr().expect("the endpoint is on");

    let outcomes = [
        [Outcome::Succeed; 5].as_slice(),
        &[Outcome::FailPermanently; 3],
        &[Outcome::FailOnce; 2],
    ]
    .concat();
    for (id, outcome) in outcomes.into_iter().enumerate() {
        let order = Order {
            id: id as u64,
            outcome,
        };
        app.producer().send(&order).await.expect("publish");
    }
    wait_until("every order has settled", || {
        let stats = running.stats();
        let stats = stats.handler("bill").expect("bill runs");
        stats.succeeded == 7 && stats.dead_lettered == 3 && stats.retried == vec![2, 0]
    })
    .await;
    assert_eq!(app.backlog().await.expect("backlog"), 0);

    let labels = |level: &'static str| {
        [
            ("topic", "metrics.orders"),
            ("group", "metrics-billing"),
            ("level", level),
        ]
    };
    let dead_letter = [("topic", "metrics.orders"), ("group", "metrics-billing")];
    // The lag reporter runs every 50 ms: wait for a round that saw everything settled.
    let mut scrape = BTreeMap::new();
    let mut lag_settled = false;
    for _ in 0..200 {
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        scrape = samples(&body);
        lag_settled = ["0", "1", "2"]
            .iter()
            .all(|level| sample(&scrape, "retry_kafka_consumer_lag", &labels(level)) == Some(0.0));
        if lag_settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(lag_settled, "consumer lag never reported 0 on every level");

    let value = |name: &str, labels: &[(&str, &str)]| sample(&scrape, name, labels);
    let failed = |level: &'static str, kind: &'static str| {
        let [topic, group, level] = labels(level);
        value("retry_kafka_failed_total", &[topic, group, level, ("kind", kind)])
    };
    // 10 attempts on the main topic (5 succeed, 3 fail permanently, 2 fail once), 2 on level 1.
    assert_eq!(value("retry_kafka_handled_total", &labels("0")), Some(5.0));
    assert_eq!(value("retry_kafka_handled_total", &labels("1")), Some(2.0));
    assert_eq!(value("retry_kafka_handled_total", &labels("2")), Some(0.0));
    assert_eq!(failed("0", "permanent"), Some(3.0));
    assert_eq!(failed("0", "transient"), Some(2.0));
    for kind in ["decode", "panic", "timeout"] {
        assert_eq!(failed("0", kind), Some(0.0), "kind {kind}");
    }
    for kind in ["transient", "permanent", "decode", "panic", "timeout"] {
        assert_eq!(failed("1", kind), Some(0.0), "level 1, kind {kind}");
    }
    assert_eq!(value("retry_kafka_retried_total", &labels("1")), Some(2.0));
    assert_eq!(value("retry_kafka_retried_total", &labels("2")), Some(0.0));
    // Only the series the handler can have: nothing goes past its last level, and with a
    // dead-letter queue nothing is dropped.
    assert_eq!(value("retry_kafka_retried_total", &labels("3")), None);
    assert_eq!(value("retry_kafka_dead_lettered_total", &dead_letter), Some(3.0));
    assert_eq!(value("retry_kafka_parked_total", &dead_letter), Some(0.0));
    assert_eq!(value("retry_kafka_dropped_total", &dead_letter), None);
    assert_eq!(
        value("retry_kafka_handler_duration_seconds_count", &labels("0")),
        Some(10.0)
    );
    assert_eq!(
        value("retry_kafka_handler_duration_seconds_count", &labels("1")),
        Some(2.0)
    );
    assert_eq!(
        value("retry_kafka_retry_lateness_seconds_count", &labels("1")),
        Some(2.0)
    );
    // The main topic has no due time: no lateness series.
    assert_eq!(
        value("retry_kafka_retry_lateness_seconds_count", &labels("0")),
        None
    );
    assert_eq!(
        value("retry_kafka_dead_letter_age_seconds_count", &dead_letter),
        Some(3.0)
    );
    // Histograms with buckets: the +Inf bucket holds every observation.
    let mut inf = labels("0").to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(
        value("retry_kafka_handler_duration_seconds_bucket", &inf),
        Some(10.0)
    );
    for level in ["0", "1", "2"] {
        assert_eq!(
            value("retry_kafka_in_flight", &labels(level)),
            Some(0.0),
            "level {level}"
        );
        assert_eq!(
            value("retry_kafka_assigned_partitions", &labels(level)),
            Some(4.0),
            "level {level}"
        );
        assert_eq!(
            value("retry_kafka_held_partitions", &labels(level)),
            Some(0.0),
            "level {level}"
        );
    }
    // No key or offset labels: every series of this app has topic, group and at most level,
    // kind and le.
    for series in scrape.keys().filter(|s| s.contains("metrics.orders")) {
        let labels = series.split_once('{').expect("labels").1;
        for label in labels.trim_end_matches('}').split(',') {
            let name = label.split_once('=').expect("name=value").0;
            assert!(
                ["topic", "group", "level", "kind", "le"].contains(&name),
                "unexpected label {name} in {series}"
            );
        }
    }

    let (status, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.contains("\"live\":true")), (200, true), "{body}");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.contains("\"ready\":true")), (200, true), "{body}");
    assert_eq!(get(addr, "/nothing").await.0, 404);

    running.shutdown().await.expect("clean shutdown");
    // The endpoint stopped with the app.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Every consumer drained and stopped cleanly.
    let report = app.health().report();
    assert!(report.consumers.iter().all(|c| c.state == ConsumerState::Stopped));
}

// ---------------------------------------------------------------------------------------------
// A consumer that stops on an error: the in-process broker behind a backend whose consumer of
// one topic reports that its client is gone (`BackendError::ConsumerStopped`, what Kafka's
// consumer returns when its poll thread has ended and Redis's when its reader task has), the
// one fetch error `Level::run` does not retry.

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(topic = "health.orders", key = "id")]
struct Parcel {
    id: u64,
}

#[retry_handler(topic = "health.orders", group = "health-shipping", retries = ["1s"], dlq)]
async fn ship(_parcel: Parcel) -> Result<(), HandlerError> {
    Ok(())
}

/// [`InMemory`], except that the consumers of `doomed` fail once `kill` is sent `true`.
#[derive(Clone)]
struct Stopping {
    inner: InMemory,
    doomed: &'static str,
    kill: watch::Receiver<bool>,
}

struct StoppingConsumer {
    inner: <InMemory as Backend>::Consumer,
    topic: String,
    kill: Option<watch::Receiver<bool>>,
}

impl TopicAdmin for Stopping {
    async fn partitions(&self, topic: &Topic) -> Result<Option<u32>, BackendError> {
        TopicAdmin::partitions(&self.inner, topic).await
    }

    async fn create_topic(&self, topic: &Topic, partitions: u32) -> Result<(), BackendError> {
        TopicAdmin::create_topic(&self.inner, topic, partitions).await
    }

    fn default_partitions(&self) -> Option<u32> {
        self.inner.default_partitions()
    }
}

impl Publish for Stopping {
    async fn send(&self, topic: &Topic, record: OutboundRecord) -> Result<Delivered, BackendError> {
        self.inner.send(topic, record).await
    }
}

impl Backend for Stopping {
    type Consumer = StoppingConsumer;

    fn name(&self) -> &'static str {
        "stopping"
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<StoppingConsumer, BackendError> {
        let kill = (*subscription.topic.name == *self.doomed).then(|| self.kill.clone());
        let topic = subscription.topic.name.to_string();
        Ok(StoppingConsumer {
            inner: self.inner.subscribe(subscription).await?,
            topic,
            kill,
        })
    }

    async fn lag(&self, topic: &Topic, group: &str) -> Result<u64, BackendError> {
        self.inner.lag(topic, group).await
    }
}

impl Consumer for StoppingConsumer {
    async fn next(&mut self) -> Result<Fetched, BackendError> {
        let Some(kill) = self.kill.as_mut() else {
            return self.inner.next().await;
        };
        tokio::select! {
            fetched = self.inner.next() => fetched,
            _ = kill.wait_for(|&kill| kill) => Err(BackendError::ConsumerStopped {
                topic: self.topic.clone(),
                source: "its poll thread ended".into(),
            }),
        }
    }

    fn hold(&mut self, partition: u32, offset: u64) {
        self.inner.hold(partition, offset)
    }

    fn resume(&mut self, partition: u32) {
        self.inner.resume(partition)
    }

    fn hand_off(&mut self, id: HandOffId, from: Position, to: Topic, record: OutboundRecord) {
        self.inner.hand_off(id, from, to, record)
    }

    fn hand_off_reports(&self) -> &HandOffReports {
        self.inner.hand_off_reports()
    }

    async fn ack(&mut self, partition: u32, offset: u64) -> Result<(), BackendError> {
        self.inner.ack(partition, offset).await
    }

    async fn close(self) -> Result<(), BackendError> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_a_consumer_stops_and_health_says_which_and_why() {
    let (kill, killed) = watch::channel(false);
    let backend = Stopping {
        inner: InMemory::new(),
        doomed: "health.orders.health-shipping.retry.1",
        kill: killed,
    };
    let app = App::builder()
        .backend(backend)
        .handlers(|spec| spec.group() == "health-shipping")
        .metrics_addr(loopback())
        .build()
        .expect("valid handlers");
    let health = app.health();
    assert_eq!(
        health
            .report()
            .consumers
            .iter()
            .map(|c| c.state.clone())
            .collect::<Vec<_>>(),
        vec![ConsumerState::Starting, ConsumerState::Starting]
    );
    let running: Running = app.start().await.expect("app starts");
    let addr = running.metrics_addr().expect("the endpoint is on");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"reasons\":[]"), "{body}");
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    app.producer().send(&Parcel { id: 1 }).await.expect("publish");
    wait_until("the parcel is handled", || {
        running.stats().handler("ship").is_some_and(|s| s.succeeded == 1)
    })
    .await;

    kill.send(true).expect("the consumer listens");
    wait_until("the retry consumer has failed", || {
        matches!(health.report().consumers[1].state, ConsumerState::Failed { .. })
    })
    .await;

    let report = health.report();
    let expected_error = "the consumer of topic \"health.orders.health-shipping.retry.1\" stopped: \
                          its poll thread ended";
    let failed = &report.consumers[1];
    assert_eq!(
        (
            failed.handler.rsplit("::").next(),
            failed.topic.as_str(),
            failed.group.as_str(),
            failed.level
        ),
        (
            Some("ship"),
            "health.orders.health-shipping.retry.1",
            "health-shipping",
            1
        )
    );
    assert_eq!(
        failed.state,
        ConsumerState::Failed {
            error: expected_error.into()
        }
    );
    assert_eq!(failed.assigned, Vec::<u32>::new());
    assert_eq!(report.consumers[0].state, ConsumerState::Running);
    assert_eq!(report.consumers[0].assigned, vec![0, 1, 2, 3]);
    assert!(report.consumers[0].last_poll_ms.is_some());
    assert!(!report.is_ready());
    assert!(!report.is_live());
    let reason = format!(
        "consumer of topic \"health.orders.health-shipping.retry.1\" (level 1) in group \"health-shipping\" ({}) failed: {expected_error}",
        failed.handler
    );
    assert_eq!(report.not_ready_reasons(), vec![reason.clone()]);

    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["ready"], false);
    assert_eq!(body["reasons"], serde_json::json!([reason]));
    assert_eq!(body["consumers"][1]["state"], "failed");
    assert_eq!(body["consumers"][1]["error"], expected_error);
    assert_eq!(body["consumers"][0]["state"], "running");
    // Liveness: a consumer that failed stays stopped until a restart, so /healthz says so too.
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");

    let error = running.shutdown().await.expect_err("a consumer failed");
    assert_eq!(
        format!("{error}"),
        format!("consumer of topic \"health.orders.health-shipping.retry.1\" in group \"health-shipping\" stopped: {expected_error}")
    );
}

// ---------------------------------------------------------------------------------------------
// On Apache Kafka: the lag gauge follows the commits soon after the last message settles (its
// period is an hour here, so only that can bring it to 0), and each handler exports only the
// series it can have.

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(topic = "lag.invoices", key = "id")]
struct Invoice {
    id: u64,
}

/// Holds every attempt of `invoice` until the test opens it.
static OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One retry level and a dead-letter queue: every 4th invoice fails once.
#[retry_handler(topic = "lag.invoices", group = "lag-billing", retries = ["50ms"], dlq)]
async fn invoice(invoice: Invoice, ctx: Context) -> Result<(), HandlerError> {
    while !OPEN.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if invoice.id.is_multiple_of(4) && ctx.attempt() == 1 {
        return Err(HandlerError::transient("try later"));
    }
    Ok(())
}

/// Drops what fails: no dead-letter queue.
#[retry_handler(topic = "lag.invoices", group = "lag-discarding", on_exhausted = "drop")]
async fn discard(_invoice: Invoice) -> Result<(), HandlerError> {
    Err(HandlerError::permanent("not wanted here"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_follows_the_commits_and_each_handler_exports_only_its_series() {
    const INVOICES: u64 = 200;
    let broker = tokio::task::spawn_blocking(retry_kafka_suite::ApacheKafka::shared)
        .await
        .unwrap();
    let kafka = retry_kafka::backend::kafka::Kafka::builder(broker.bootstrap.clone())
        .replication_factor(1)
        .build()
        .unwrap();
    kafka.create_topic(&Topic::main("lag.invoices"), 2).await.unwrap();
    let app = App::builder()
        .backend(kafka)
        .handlers(|spec| spec.topic() == "lag.invoices")
        .metrics_addr(loopback())
        .lag_interval(Duration::from_secs(3600))
        .build()
        .expect("valid handlers");
    for id in 0..INVOICES {
        app.producer().send(&Invoice { id }).await.expect("publish");
    }
    let running = app.start().await.expect("app starts");
    let addr = running.metrics_addr().expect("the endpoint is on");
    let billing = |level: &'static str| {
        [
            ("topic", "lag.invoices"),
            ("group", "lag-billing"),
            ("level", level),
        ]
    };
    let discarding = [
        ("topic", "lag.invoices"),
        ("group", "lag-discarding"),
        ("level", "0"),
    ];
    let scrape = || async { samples(&get(addr, "/metrics").await.1) };

    // The first round, at start, sees the invoices nobody has settled yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lag = sample(&scrape().await, "retry_kafka_consumer_lag", &billing("0"));
        if lag == Some(INVOICES as f64) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "billing's lag read {lag:?}, not {INVOICES}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    OPEN.store(true, std::sync::atomic::Ordering::SeqCst);
    let retried = INVOICES.div_ceil(4);
    wait_until("every invoice has settled", || {
        let stats = running.stats();
        let billed = stats.handler("invoice").expect("invoice runs");
        let discarded = stats.handler("discard").expect("discard runs");
        billed.succeeded == INVOICES && billed.retried == vec![retried] && discarded.dropped == INVOICES
    })
    .await;
    let settled = std::time::Instant::now();
    let lags = [billing("0"), billing("1"), discarding];
    let mut scraped = scrape().await;
    while !lags
        .iter()
        .all(|labels| sample(&scraped, "retry_kafka_consumer_lag", labels) == Some(0.0))
    {
        assert!(
            settled.elapsed() < Duration::from_secs(5),
            "5 s after the last invoice settled the lag reads {:?}",
            lags.map(|labels| sample(&scraped, "retry_kafka_consumer_lag", &labels))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        scraped = scrape().await;
    }
    eprintln!(
        "the lag gauge read 0 on every level {} ms after the last invoice settled (period: 1 h)",
        settled.elapsed().as_millis()
    );

    let value = |name: &str, labels: &[(&str, &str)]| sample(&scraped, name, labels);
    let dead_letter = |group| [("topic", "lag.invoices"), ("group", group)];
    // One retry level: retried to level 1 only; lateness on level 1 only.
    assert_eq!(
        value("retry_kafka_retried_total", &billing("1")),
        Some(retried as f64)
    );
    assert_eq!(value("retry_kafka_retried_total", &billing("2")), None);
    assert_eq!(
        value("retry_kafka_retry_lateness_seconds_count", &billing("1")),
        Some(retried as f64)
    );
    assert_eq!(
        value("retry_kafka_retry_lateness_seconds_count", &billing("0")),
        None
    );
    // A dead-letter queue: dead letters and parked entries, no drops.
    assert_eq!(
        value("retry_kafka_dead_lettered_total", &dead_letter("lag-billing")),
        Some(0.0)
    );
    assert_eq!(
        value("retry_kafka_parked_total", &dead_letter("lag-billing")),
        Some(0.0)
    );
    assert_eq!(
        value("retry_kafka_dropped_total", &dead_letter("lag-billing")),
        None
    );
    // No retry level and no dead-letter queue: drops only.
    assert_eq!(
        value("retry_kafka_dropped_total", &dead_letter("lag-discarding")),
        Some(INVOICES as f64)
    );
    for name in [
        "retry_kafka_dead_lettered_total",
        "retry_kafka_parked_total",
        "retry_kafka_dead_letter_age_seconds_count",
    ] {
        assert_eq!(value(name, &dead_letter("lag-discarding")), None, "{name}");
    }
    assert_eq!(
        value(
            "retry_kafka_retried_total",
            &[
                ("topic", "lag.invoices"),
                ("group", "lag-discarding"),
                ("level", "1")
            ]
        ),
        None
    );
    running.shutdown().await.expect("clean shutdown");
}

// ---------------------------------------------------------------------------------------------
// A key-ordered handler's holds: keys held, records held back, how long a hold lasted

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(topic = "holds.accounts", key = "account")]
struct Entry {
    account: u64,
    seq: u64,
}

#[retry_handler(group = "holds-ledger", retries = ["400ms"], dlq, ordering = "key")]
async fn post_entry(entry: Entry, ctx: Context) -> Result<(), HandlerError> {
    if (entry.account, entry.seq) == (1, 0) && ctx.attempt() == 1 {
        return Err(HandlerError::transient("ledger busy"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holds_of_a_key_ordered_handler_are_gauged_and_timed() {
    let app = App::builder()
        .backend(InMemory::new())
        .handlers(|spec| spec.group() == "holds-ledger")
        .metrics_addr(loopback())
        .build()
        .expect("valid handlers");
    let running = app.start().await.expect("app starts");
    let addr = running.metrics_addr().expect("the endpoint is on");
    let labels = [("topic", "holds.accounts"), ("group", "holds-ledger")];
    let scrape = || async { samples(&get(addr, "/metrics").await.1) };
    assert_eq!(
        sample(&scrape().await, "retry_kafka_held_keys", &labels),
        Some(0.0)
    );

    // Account 1's first entry fails once: its next two wait behind it. Account 2 flows.
    for (account, seq) in [(1, 0), (1, 1), (2, 0), (1, 2)] {
        app.producer()
            .send(&Entry { account, seq })
            .await
            .expect("publish");
    }
    let mut held = None;
    for _ in 0..100 {
        let now = scrape().await;
        let pair = (
            sample(&now, "retry_kafka_held_keys", &labels),
            sample(&now, "retry_kafka_held_records", &labels),
        );
        if pair == (Some(1.0), Some(2.0)) {
            held = Some(pair);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        held,
        Some((Some(1.0), Some(2.0))),
        "one key held, two records behind it"
    );

    wait_until("every entry has settled", || {
        let stats = running.stats();
        let stats = stats.handler("post_entry").expect("post_entry runs");
        stats.succeeded == 4
    })
    .await;
    let mut settled = BTreeMap::new();
    for _ in 0..100 {
        settled = scrape().await;
        if sample(&settled, "retry_kafka_held_keys", &labels) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sample(&settled, "retry_kafka_held_keys", &labels), Some(0.0));
    assert_eq!(sample(&settled, "retry_kafka_held_records", &labels), Some(0.0));
    assert_eq!(
        sample(&settled, "retry_kafka_key_hold_seconds_count", &labels),
        Some(1.0),
        "one hold ended"
    );
    let lasted = sample(&settled, "retry_kafka_key_hold_seconds_sum", &labels).unwrap();
    // The retry's due time is a whole epoch millisecond (`rk-due-at`), taken when the record
    // failed, a moment before its hold began: on the hold's clock the retry may start up to
    // ~1 ms short of the delay (0.3994 s was seen).
    assert!(
        (0.398..5.0).contains(&lasted),
        "the hold lasted the retry's delay and more: {lasted} s"
    );
    running.shutdown().await.expect("clean stop");
}
