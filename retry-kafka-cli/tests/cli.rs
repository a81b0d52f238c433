//! The `retry-kafka` tool against the real servers: Apache Kafka (KRaft, from Maven Central's
//! jars) and Debian's redis-server, each started by the test on a free loopback port.
//!
//! One scenario per server: a handler in this process fills its dead-letter queue; the tool
//! lists, filters and shows the entries, dry-runs a replay (nothing changes), replays fixed
//! entries (the handler processes them; one that fails again is parked), holds back an entry
//! replayed too often unless forced, resumes a replay killed mid-run without sending anything
//! twice, and checks topics against this binary's handlers.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use retry_kafka::app::App;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::postgres::Postgres;
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{
    Backend, Browse, OutboundRecord, Record, Tiered, Topic, TopicAdmin as _, TopicRole,
};
use retry_kafka::handler::ErrorKind;
use retry_kafka::headers::{FailureContext, Headers};
use retry_kafka::prelude::*;
use retry_kafka::settings::vars::RETRY_KAFKA_PRINT_TOPOLOGY;
use retry_kafka::Bytes;
use retry_kafka_suite::{ApacheKafka, PostgresServer, RedisCluster, RedisServer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(topic = "cli.orders", key = "id")]
struct Order {
    id: u64,
    note: String,
}

/// Orders whose handling still fails; the test "fixes" some before replaying.
static BROKEN: Mutex<BTreeMap<u64, ErrorKind>> = Mutex::new(BTreeMap::new());
/// (order id, attempt, replays) of every successful attempt.
static HANDLED: Mutex<Vec<(u64, u32, u32)>> = Mutex::new(Vec::new());
/// One scenario at a time: the handler's state above is the process's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[retry_handler(topic = "cli.orders", group = "cli", retries = ["100ms"], dlq)]
async fn charge(order: Order, ctx: Context) -> Result<(), HandlerError> {
    match BROKEN.lock().unwrap().get(&order.id) {
        Some(ErrorKind::Permanent) => Err(HandlerError::permanent(format!(
            "card of order {} declined",
            order.id
        ))),
        Some(_) => Err(HandlerError::transient(format!(
            "bank down for order {}",
            order.id
        ))),
        None => {
            HANDLED
                .lock()
                .unwrap()
                .push((order.id, ctx.attempt(), ctx.replays()));
            Ok(())
        }
    }
}

/// A handler that never runs here: `topics check` finds its retry topic too narrow.
#[retry_handler(topic = "cli.narrow", group = "cli-narrow", retries = ["1s"], dlq)]
async fn narrow(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

/// Run as a program by `topics plan --program` (with `RETRY_KAFKA_PRINT_TOPOLOGY=1`): prints
/// this binary's topology through `run()`. Run as a test: the plan `run()` would print.
#[tokio::test]
async fn program_mode() {
    if std::env::var_os(RETRY_KAFKA_PRINT_TOPOLOGY).is_some() {
        retry_kafka::run().await.expect("prints the topology");
        return;
    }
    let plan = App::builder()
        .backend(retry_kafka::backend::memory::InMemory::new())
        .build()
        .unwrap()
        .plan();
    let topics: Vec<(&str, TopicRole)> = plan.handlers.iter().flat_map(|h| h.topics()).collect();
    assert_eq!(topics.len(), 8);
    assert!(topics.contains(&("cli.orders.cli.parked", TopicRole::Parked)));
    assert!(topics.contains(&("cli.narrow.cli-narrow.retry.1", TopicRole::Retry { level: 1 })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_apache_kafka() {
    let _serial = SERIAL.lock().await;
    let broker = ApacheKafka::start();
    let backend = Kafka::builder(&broker.bootstrap)
        .replication_factor(1)
        .build()
        .expect("kafka backend");
    for (topic, partitions) in [("cli.orders", 2), ("cli.bulk", 2)] {
        backend
            .create_topic(&Topic::main(topic), partitions)
            .await
            .expect("create topic");
    }
    scenario(backend, Tool::new("--brokers", &broker.bootstrap)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_server() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let backend = Redis::builder(server.url())
        .default_partitions(2)
        .build()
        .expect("redis backend");
    scenario(backend, Tool::new("--redis-url", &server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let backend = Redis::cluster_builder(cluster.urls())
        .default_partitions(2)
        .build()
        .expect("redis cluster backend");
    scenario(
        backend,
        Tool::new("--redis-cluster-urls", &cluster.urls().join(",")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_server_with_retries_in_postgres() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let postgres = tokio::task::spawn_blocking(PostgresServer::start).await.unwrap();
    let main = Redis::builder(redis.url())
        .default_partitions(2)
        .build()
        .expect("redis backend");
    let retries = Postgres::builder(postgres.url())
        .build()
        .expect("postgres backend");
    let tool = Tool::new("--redis-url", &redis.url()).also("--database-url", &postgres.url());
    scenario(Tiered::new(main, retries), tool).await;
}

/// With no broker given, the tool says which flags to pass.
#[test]
fn without_a_broker_the_tool_names_the_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_retry-kafka"))
        .args(["dlq", "list", "--topic", "orders", "--group", "billing"])
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("RETRY_KAFKA_BACKEND")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: no broker given: pass --brokers HOST:PORT (Kafka) or --redis-url redis://HOST:PORT (Redis), \
         or set KAFKA_BROKERS or REDIS_URL as for the program"
    );
}

/// The `retry-kafka` binary, pointed at one server.
struct Tool {
    flag: &'static str,
    address: String,
    /// More flags with their addresses (the retry store's).
    more: Vec<(&'static str, String)>,
    dir: PathBuf,
}

impl Tool {
    fn new(flag: &'static str, address: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rk-cli-{}-{}",
            std::process::id(),
            flag.trim_start_matches('-')
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Tool {
            flag,
            address: address.to_owned(),
            more: Vec::new(),
            dir,
        }
    }

    /// The tool with `flag address` passed too.
    fn also(mut self, flag: &'static str, address: &str) -> Self {
        self.more.push((flag, address.to_owned()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_retry-kafka"));
        command
            .arg(self.flag)
            .arg(&self.address)
            .args(
                self.more
                    .iter()
                    .flat_map(|(flag, address)| [*flag, address.as_str()]),
            )
            .args(args)
            .current_dir(&self.dir)
            .env_remove("KAFKA_BROKERS")
            .env_remove("REDIS_URL")
            .env_remove("RETRY_KAFKA_BACKEND")
            .env_remove("DATABASE_URL")
            .env_remove("POSTGRES_URL");
        command
    }

    /// Runs the tool; fails the test unless it exits with `code`.
    fn run_expecting(&self, code: i32, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("the tool runs");
        assert_eq!(
            output.status.code(),
            Some(code),
            "retry-kafka {args:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn run(&self, args: &[&str]) -> String {
        String::from_utf8(self.run_expecting(0, args).stdout).unwrap()
    }

    /// Runs the tool with `--format json`: one object per line.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.extend(["--format", "json"]);
        self.run(&args)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

fn order(id: u64) -> Order {
    Order {
        id,
        note: format!("order {id}"),
    }
}

async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn records<B: Browse>(backend: &B, topic: &str, role: TopicRole) -> Vec<Record> {
    backend.read(&Topic::new(topic, role), &[]).await.expect("read")
}

async fn records_eventually<B: Browse>(
    backend: &B,
    topic: &str,
    role: TopicRole,
    count: usize,
) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = records(backend, topic, role).await;
        if found.len() >= count {
            assert_eq!(found.len(), count, "more records than expected on {topic}");
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} has {} records, not {count}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const DLQ: &str = "cli.orders.cli.dlq";
const PARKED: &str = "cli.orders.cli.parked";
/// `retry-kafka dlq <verb> --topic cli.orders --group cli <extra>`.
fn dlq<'a>(verb: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["dlq", verb, "--topic", "cli.orders", "--group", "cli"];
    args.extend(extra);
    args
}

async fn scenario<B: Backend + Browse>(backend: B, tool: Tool) {
    BROKEN.lock().unwrap().clear();
    HANDLED.lock().unwrap().clear();
    {
        let mut broken = BROKEN.lock().unwrap();
        broken.insert(1, ErrorKind::Permanent);
        broken.insert(2, ErrorKind::Permanent);
        broken.insert(3, ErrorKind::Transient);
        broken.insert(4, ErrorKind::Transient);
    }
    let app = App::builder()
        .backend(backend.clone())
        .handlers(|spec| spec.group() == "cli")
        .build()
        .expect("valid handlers");
    let running = app.start().await.expect("app starts");
    let producer = app.producer();
    for id in 1..=5 {
        producer.send(&order(id)).await.expect("publish");
    }
    // An undecodable payload: dead-lettered byte for byte, shown as hex.
    let garbage = OutboundRecord {
        key: Some(Bytes::from_static(b"9")),
        payload: Some(Bytes::from_static(&[0xff, 0x00, 0xfe])),
        ..Default::default()
    };
    producer
        .send_raw("cli.orders", garbage)
        .await
        .expect("publish garbage");
    let dead = records_eventually(&backend, DLQ, TopicRole::DeadLetter, 5).await;
    eventually("order 5 handled", Duration::from_secs(10), || {
        HANDLED.lock().unwrap().len() == 1
    })
    .await;

    // -- list, as JSON and as a table, and each filter
    let listed = tool.json(&dlq("list", &[]));
    assert_eq!(listed.len(), 5);
    let by_key = |key: &str| {
        listed
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no entry with key {key}: {listed:#?}"))
            .clone()
    };
    let one = by_key("1");
    assert_eq!(one["error_kind"], "permanent");
    assert_eq!(one["error_message"], "card of order 1 declined");
    assert_eq!(one["attempts"], 1);
    assert_eq!(one["replays"], 0);
    assert_eq!(one["group"], "cli");
    assert_eq!(one["original_topic"], "cli.orders");
    assert_eq!(one["payload_encoding"], "utf8");
    assert_eq!(one["payload"], r#"{"id":1,"note":"order 1"}"#);
    assert_eq!(one["headers"]["rk-error-kind"], "permanent");
    assert!(one["age_ms"].as_i64().unwrap() >= 0);
    let three = by_key("3");
    assert_eq!(
        (three["error_kind"].clone(), three["attempts"].clone()),
        ("transient".into(), 2.into())
    );
    let nine = by_key("9");
    assert_eq!(nine["error_kind"], "decode");
    assert_eq!(
        (nine["payload"].clone(), nine["payload_encoding"].clone()),
        ("ff00fe".into(), "hex".into())
    );
    // Positions and payloads match what the queue holds.
    for record in &dead {
        let entry = listed
            .iter()
            .find(|e| e["partition"] == record.partition && e["offset"] == record.offset)
            .expect("every record listed");
        assert_eq!(entry["queue"], DLQ);
        assert_eq!(entry["key"].as_str().map(str::as_bytes), record.key.as_deref());
    }

    let table = tool.run(&dlq("list", &[]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "a header and 5 rows:\n{table}");
    assert!(lines[0].contains("ENTRY") && lines[0].contains("KIND") && lines[0].contains("ERROR"));
    let kind_column = lines[0].find("KIND").unwrap();
    assert!(
        lines[1..].iter().all(|l| {
            let kind = &l[kind_column..];
            ["permanent", "transient", "decode"]
                .iter()
                .any(|k| kind.starts_with(k))
        }),
        "columns aligned:\n{table}"
    );

    let keys = |entries: Vec<Value>| -> Vec<String> {
        let mut keys: Vec<String> = entries
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    };
    let list = |extra: &[&str]| keys(tool.json(&dlq("list", extra)));
    assert_eq!(list(&["--kind", "permanent"]), ["1", "2"]);
    assert_eq!(
        list(&["--kind", "transient", "--kind", "decode"]),
        ["3", "4", "9"]
    );
    assert_eq!(list(&["--key", "3"]), ["3"]);
    assert_eq!(list(&["--grep", "declined"]), ["1", "2"]);
    assert_eq!(
        list(&["--grep", "order 4"]),
        ["4"],
        "matches the message or the payload"
    );
    assert_eq!(list(&["--since", "1h"]), ["1", "2", "3", "4", "9"]);
    assert_eq!(list(&["--until", "1h"]), Vec::<String>::new());
    let future = "2999-01-01T00:00:00Z";
    assert_eq!(list(&["--since", future]), Vec::<String>::new());
    assert_eq!(list(&["--until", future]).len(), 5);
    let position = format!("{}:{}", three["partition"], three["offset"]);
    assert_eq!(list(&["--entry", &position]), ["3"]);
    let bad = tool.run_expecting(1, &dlq("list", &["--kind", "flaky"]));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--kind \"flaky\" is not an error kind"));

    // -- show
    let shown = tool.run(&dlq("show", &["--entry", &position]));
    assert!(
        shown.contains("\"error_message\": \"bank down for order 3\""),
        "{shown}"
    );
    assert!(shown.contains("\"rk-original-topic\": \"cli.orders\""), "{shown}");

    // -- a dry run changes nothing
    let main_before = backend.end_offsets_of(&Topic::main("cli.orders")).await.unwrap();
    let dry = tool.json(&dlq("replay", &["--kind", "permanent", "--dry-run"]));
    assert_eq!(dry.len(), 2);
    assert!(dry
        .iter()
        .all(|e| e["action"] == "send" && e["target"] == "cli.orders"));
    assert_eq!(
        backend.end_offsets_of(&Topic::main("cli.orders")).await.unwrap(),
        main_before
    );
    assert_eq!(records(&backend, DLQ, TopicRole::DeadLetter).await, dead);
    assert!(
        !tool.dir.join(".retry-kafka").exists()
            || std::fs::read_dir(tool.dir.join(".retry-kafka"))
                .unwrap()
                .next()
                .is_none()
    );

    // -- replay: order 1 is fixed, order 2 still fails and is parked
    BROKEN.lock().unwrap().remove(&1);
    let out = tool.run(&dlq("replay", &["--kind", "permanent"]));
    assert!(
        out.contains("replayed 2 entries of cli.orders.cli.dlq onto cli.orders"),
        "{out}"
    );
    eventually(
        "order 1 handled after its replay",
        Duration::from_secs(20),
        || HANDLED.lock().unwrap().contains(&(1, 1, 1)),
    )
    .await;
    let parked = records_eventually(&backend, PARKED, TopicRole::Parked, 1).await;
    let context = FailureContext::from_headers(&parked[0].headers).unwrap();
    assert_eq!(
        (context.error_kind, context.replays),
        (ErrorKind::Permanent, Some(1))
    );
    assert_eq!(parked[0].key.as_deref(), Some(&b"2"[..]));
    assert_eq!(
        records(&backend, DLQ, TopicRole::DeadLetter).await.len(),
        5,
        "nothing cycles back"
    );
    let parked_listed = tool.json(&dlq("list", &["--parked"]));
    assert_eq!(parked_listed.len(), 1);
    assert_eq!(
        (
            parked_listed[0]["key"].clone(),
            parked_listed[0]["replays"].clone()
        ),
        ("2".into(), 1.into())
    );

    // -- the loop guard
    let parked_args = dlq("replay", &["--parked", "--max-replays", "1"]);
    let guarded = tool.run_expecting(3, &parked_args).stdout;
    let guarded = String::from_utf8_lossy(&guarded);
    assert!(guarded.contains("replayed 0 entries"), "{guarded}");
    assert!(guarded.contains("held back by the loop guard"), "{guarded}");
    let mut forced = parked_args.clone();
    forced.push("--force");
    let out = tool.run(&forced);
    assert!(out.contains("replayed 1 entries"), "{out}");
    let parked = records_eventually(&backend, PARKED, TopicRole::Parked, 2).await;
    assert_eq!(
        FailureContext::from_headers(&parked[1].headers).unwrap().replays,
        Some(2)
    );

    // -- the loop guard counts a dead letter's replays by their failures (issue 22): order 2's
    // dead letter never gets an rk-replays of its own, but its line was replayed twice (from
    // the queue, then as its parked copy); a third replay goes, a fourth is held back.
    let two = by_key("2");
    let origin = format!("{DLQ}/{}/{}", two["partition"], two["offset"]);
    let again = dlq("replay", &["--key", "2"]);
    let out = tool.run(&again);
    assert!(out.contains("replayed 1 entries"), "{out}");
    let parked = records_eventually(&backend, PARKED, TopicRole::Parked, 3).await;
    for copy in &parked {
        assert_eq!(copy.headers.get_str("rk-replay-origin"), Some(origin.as_str()));
    }
    let main_before = backend.end_offsets_of(&Topic::main("cli.orders")).await.unwrap();
    let held = tool.run_expecting(3, &again);
    let held = String::from_utf8_lossy(&held.stdout);
    assert!(
        held.contains("replayed 0 entries") && held.contains("held back by the loop guard"),
        "{held}"
    );
    assert_eq!(
        backend.end_offsets_of(&Topic::main("cli.orders")).await.unwrap(),
        main_before,
        "the fourth replay sent nothing"
    );
    let forced = tool.run(&[again.as_slice(), &["--force"]].concat());
    assert!(forced.contains("replayed 1 entries"), "{forced}");
    records_eventually(&backend, PARKED, TopicRole::Parked, 4).await;

    // -- onto a retry level: order 3 is fixed and runs as that level's attempt, at once
    BROKEN.lock().unwrap().remove(&3);
    let out = tool.run(&dlq("replay", &["--entry", &position, "--to-level", "1"]));
    assert!(
        out.contains("replayed 1 entries of cli.orders.cli.dlq onto cli.orders.cli.retry.1"),
        "{out}"
    );
    eventually(
        "order 3 handled on retry level 1",
        Duration::from_secs(20),
        || HANDLED.lock().unwrap().contains(&(3, 2, 1)),
    )
    .await;
    let bad = tool.run_expecting(1, &dlq("replay", &["--to-level", "0"]));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--to-level counts from 1"));

    running.shutdown().await.expect("clean shutdown");

    interrupted_replay_resumes(&backend, &tool).await;
    topics_check(&backend, &tool).await;
    let _ = std::fs::remove_dir_all(&tool.dir);
}

/// A replay killed mid-run and run again sends every entry exactly once.
async fn interrupted_replay_resumes<B: Backend + Browse>(backend: &B, tool: &Tool) {
    const ENTRIES: u64 = 600;
    let queue = "cli.bulk.cli-bulk.dlq";
    backend
        .create_topic(&Topic::new(queue, TopicRole::DeadLetter), 2)
        .await
        .expect("create queue");
    for n in 0..ENTRIES {
        let mut headers = Headers::new();
        FailureContext {
            original_topic: "cli.bulk".into(),
            original_partition: (n % 2) as u32,
            original_offset: n,
            original_timestamp_ms: None,
            group: "cli-bulk".into(),
            attempts: 1,
            due_at_ms: None,
            first_failure_at_ms: 1,
            last_failure_at_ms: 2,
            error_kind: ErrorKind::Transient,
            error_message: format!("failure {n}"),
            replays: None,
        }
        .write_to(&mut headers);
        let record = OutboundRecord {
            partition: Some((n % 2) as u32),
            key: Some(n.to_string().into()),
            payload: Some(format!("entry {n}").into()),
            headers,
        };
        backend
            .send(&Topic::new(queue, TopicRole::DeadLetter), record)
            .await
            .expect("write dead letter");
    }
    let args = [
        "dlq",
        "replay",
        "--topic",
        "cli.bulk",
        "--group",
        "cli-bulk",
        "--batch",
        "5",
        "--checkpoint",
        "bulk.json",
    ];
    let mut child = tool
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("replay starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = records(backend, "cli.bulk", TopicRole::Main).await.len() as u64;
        if sent >= 100 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "the replay sent only {sent} entries in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let at_kill = records(backend, "cli.bulk", TopicRole::Main).await.len() as u64;
    assert!(at_kill < ENTRIES, "killed mid-run: {at_kill} of {ENTRIES} sent");
    assert!(
        tool.dir.join("bulk.json").exists(),
        "the checkpoint stays after a kill"
    );

    let out = tool.run(&args);
    assert!(
        out.contains("more were sent by an earlier, interrupted run"),
        "{out}"
    );
    assert!(
        !tool.dir.join("bulk.json").exists(),
        "a finished replay removes its checkpoint"
    );
    let replayed = records(backend, "cli.bulk", TopicRole::Main).await;
    let origins: Vec<&str> = replayed
        .iter()
        .map(|r| {
            r.headers
                .get_str("rk-replay-of")
                .expect("replays say what they replay")
        })
        .collect();
    let distinct: HashSet<&str> = origins.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        origins.len(),
        "an entry was sent twice ({at_kill} sent before the kill)"
    );
    assert_eq!(origins.len() as u64, ENTRIES, "every entry sent once");
    for record in &replayed {
        assert_eq!(record.headers.get_str("rk-replays"), Some("1"));
        assert_eq!(
            record.headers.get_str("rk-attempts"),
            None,
            "a fresh attempt count"
        );
        let n: u64 = std::str::from_utf8(record.key.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(record.payload.as_deref(), Some(format!("entry {n}").as_bytes()));
    }
}

/// `topics plan` and `topics check` against this binary's handlers.
async fn topics_check<B: Backend + Browse>(backend: &B, tool: &Tool) {
    // cli.narrow: its retry level has fewer partitions than its main topic.
    for (topic, role, partitions) in [
        ("cli.narrow", TopicRole::Main, 3),
        ("cli.narrow.cli-narrow.retry.1", TopicRole::Retry { level: 1 }, 1),
        ("cli.narrow.cli-narrow.dlq", TopicRole::DeadLetter, 3),
        ("cli.narrow.cli-narrow.parked", TopicRole::Parked, 3),
    ] {
        backend
            .create_topic(&Topic::new(topic, role), partitions)
            .await
            .expect("create topic");
    }
    let program = std::env::current_exe().unwrap();
    let program = program.to_str().unwrap();
    let with_program = |verb: &'static str, format: &'static str| {
        vec![
            "topics",
            verb,
            "--format",
            format,
            "--program",
            program,
            "--",
            "--exact",
            "program_mode",
            "--nocapture",
            "--test-threads",
            "1",
        ]
    };
    let plan_args = with_program("plan", "json");
    let rows: Vec<Value> = tool
        .run(&plan_args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |topic: &str| {
        rows.iter()
            .find(|r| r["topic"] == topic)
            .unwrap_or_else(|| panic!("{topic}: {rows:#?}"))
    };
    assert_eq!(rows.len(), 8, "two handlers, four topics each: {rows:#?}");
    assert_eq!(row("cli.orders.cli.retry.1")["status"], "ok");
    assert_eq!(row("cli.orders.cli.parked")["role"], "parked");
    let narrow = row("cli.narrow.cli-narrow.retry.1");
    assert_eq!(
        (narrow["partitions"].clone(), narrow["needed"].clone()),
        (1.into(), 3.into())
    );
    assert_eq!(narrow["status"], "too few partitions");

    let check = tool.run_expecting(1, &with_program("check", "table"));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("1 of 8 topics do not match: cli.narrow.cli-narrow.retry.1 (too few partitions)"),
        "{stderr}"
    );

    // The plan of the one handler whose topics are right, saved as a file, checks out.
    let plan = App::builder()
        .backend(retry_kafka::backend::memory::InMemory::new())
        .handlers(|spec| spec.group() == "cli")
        .build()
        .unwrap()
        .plan();
    let file = tool.dir.join("plan.json");
    std::fs::write(&file, serde_json::to_string(&plan).unwrap()).unwrap();
    let ok = tool.run(&["topics", "check", "--topology", file.to_str().unwrap()]);
    assert_eq!(
        ok.lines().filter(|l| l.trim_end().ends_with("ok")).count(),
        4,
        "{ok}"
    );

    // A second handler on the same main topic, whose own topics are missing: the main topic is
    // a row of each handler but one topic, so 3 of 7 topics do not match (8 rows).
    let mut shared = serde_json::to_value(&plan).unwrap();
    let mut audit = shared["handlers"][0].clone();
    let rename = |name: &Value| Value::from(name.as_str().unwrap().replace(".cli.", ".cli-audit."));
    audit["handler"] = "cli::audit".into();
    audit["group"] = "cli-audit".into();
    audit["dead_letter"] = rename(&audit["dead_letter"]);
    audit["parked"] = rename(&audit["parked"]);
    for level in audit["retries"].as_array_mut().unwrap() {
        level["topic"] = rename(&level["topic"]);
    }
    shared["handlers"].as_array_mut().unwrap().push(audit);
    std::fs::write(&file, shared.to_string()).unwrap();
    let check = tool.run_expecting(1, &["topics", "check", "--topology", file.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).lines().count(),
        9,
        "a header and 8 rows"
    );
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("3 of 7 topics do not match: cli.orders.cli-audit.retry.1 (missing)"),
        "{stderr}"
    );
}
