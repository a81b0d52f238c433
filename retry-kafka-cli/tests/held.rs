//! `retry-kafka held` and `dlq list`'s HELD column against Apache Kafka (KRaft, from Maven
//! Central's jars, started by the test on a free loopback port): two key-ordered handlers of
//! one topic. `ledger` keeps account 1's first posting on a one-hour level, so its later
//! postings wait on the held topic; `audit` retries account 3's first posting once and then
//! fails its second for good, so the dead letter is a follower that waited behind it. `vault`
//! (`on_dead_letter = "hold_key"`) fails the first postings of accounts 2 and 4 for good: they
//! hold their accounts until `held replay` (after a fix) and `held discard` resolve them.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use retry_kafka::app::App;
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Topic, TopicAdmin as _};
use retry_kafka::prelude::*;
use retry_kafka_suite::ApacheKafka;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const TOPIC: &str = "held.postings";

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "held.postings", key = "account")]
struct Posting {
    account: u64,
    seq: u64,
}

/// Account 1's first posting fails and waits an hour: its account is held meanwhile.
#[retry_handler(group = "ledger", retries = ["1h"], dlq, ordering = "key")]
async fn ledger(posting: Posting) -> Result<(), HandlerError> {
    match (posting.account, posting.seq) {
        (1, 0) => Err(HandlerError::transient("ledger of account 1 locked")),
        _ => Ok(()),
    }
}

/// Account 3's first posting fails once; its second, held behind it, is invalid.
#[retry_handler(group = "audit", retries = ["200ms"], dlq, ordering = "key")]
async fn audit(posting: Posting, ctx: Context) -> Result<(), HandlerError> {
    match (posting.account, posting.seq, ctx.attempt()) {
        (3, 0, 1) => Err(HandlerError::transient("audit log busy")),
        (3, 1, _) => Err(HandlerError::permanent("posting 3/1 is invalid")),
        _ => Ok(()),
    }
}

/// Account 2's first posting is refused until this is set; account 4's always is.
static VAULT_FIXED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Successes of `vault`, (account, seq) in order.
static VAULT_DONE: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

#[retry_handler(group = "vault", retries = ["200ms"], dlq, ordering = "key", on_dead_letter = "hold_key")]
async fn vault(posting: Posting) -> Result<(), HandlerError> {
    let refused = match (posting.account, posting.seq) {
        (2, 0) => !VAULT_FIXED.load(std::sync::atomic::Ordering::SeqCst),
        (4, 0) => true,
        _ => false,
    };
    if refused {
        return Err(HandlerError::permanent(format!(
            "posting {}/{} refused",
            posting.account, posting.seq
        )));
    }
    VAULT_DONE.lock().unwrap().push((posting.account, posting.seq));
    Ok(())
}

fn vault_done(account: u64) -> Vec<u64> {
    VAULT_DONE
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.0 == account)
        .map(|d| d.1)
        .collect()
}

/// `held --format json` of `group`, asked again until `until` holds (what handlers did is
/// committed within the commit interval).
fn held_until(brokers: &str, group: &str, what: &str, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = json_lines(&stdout_of(
            brokers,
            &["held", "--topic", TOPIC, "--group", group, "--format", "json"],
        ));
        if until(&held) {
            return held;
        }
        assert!(Instant::now() < deadline, "{what}: {held:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tool(brokers: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retry-kafka"))
        .args(["--brokers", brokers])
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("RETRY_KAFKA_BACKEND")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run retry-kafka")
}

fn stdout_of(brokers: &str, args: &[&str]) -> String {
    let output = tool(brokers, args);
    assert!(
        output.status.success(),
        "retry-kafka {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_shows_held_keys_and_held_dead_letters() {
    let broker = ApacheKafka::start();
    let brokers = broker.bootstrap.clone();
    let backend = Kafka::builder(&brokers)
        .replication_factor(1)
        .build()
        .expect("kafka backend");
    backend.create_topic(&Topic::main(TOPIC), 2).await.unwrap();
    let app = App::builder().backend(backend.clone()).build().unwrap();
    let running = app.start().await.unwrap();
    let producer = Producer::new(backend.clone());
    for seq in 0..4 {
        for account in 1..=4 {
            producer.send(&Posting { account, seq }).await.unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = app.stats();
        let (ledger, audit) = (stats.handler("ledger").unwrap(), stats.handler("audit").unwrap());
        // ledger: every posting but account 1's four; audit: every one but the dead letter.
        if ledger.succeeded == 12 && audit.succeeded == 15 && audit.dead_lettered == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger {} succeeded, audit {} succeeded and {} dead-lettered",
            ledger.succeeded,
            audit.succeeded,
            audit.dead_lettered
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the handlers acknowledged is committed within the commit interval.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let held = json_lines(&stdout_of(
        &brokers,
        &["held", "--topic", TOPIC, "--group", "ledger", "--format", "json"],
    ));
    assert_eq!(held.len(), 1, "only account 1 is held: {held:#?}");
    let account_1 = &held[0];
    assert_eq!(account_1["key"], "1");
    assert_eq!(account_1["followers"], 3, "its postings 1, 2 and 3 wait");
    let heads = account_1["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 1, "{account_1:#}");
    assert_eq!(heads[0]["level"], 1);
    assert_eq!(
        account_1["behind"], heads[0]["main_offset"],
        "the followers wait behind the head's main-topic record"
    );
    assert!(account_1["held_since"].is_string() && account_1["held_for_ms"].as_i64().unwrap() >= 0);

    let table = stdout_of(&brokers, &["held", "--topic", TOPIC, "--group", "ledger"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("KEY") && lines[0].contains("FOLLOWERS"),
        "{table}"
    );
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[1].contains("level 1@") && lines[1].contains(" 3 "),
        "{table}"
    );

    // audit's holds all ended: nothing held.
    let none = stdout_of(
        &brokers,
        &["held", "--topic", TOPIC, "--group", "audit", "--format", "json"],
    );
    assert_eq!(none, "", "audit holds nothing any more");

    // The dead letter waited behind account 3's first posting, and says so.
    let dead = json_lines(&stdout_of(
        &brokers,
        &[
            "dlq", "list", "--topic", TOPIC, "--group", "audit", "--format", "json",
        ],
    ));
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["key"], "3");
    assert!(dead[0]["held_at"].is_string(), "{:#}", dead[0]);
    let behind = dead[0]["held_behind"].as_u64().expect("rk-held-behind");
    let table = stdout_of(&brokers, &["dlq", "list", "--topic", TOPIC, "--group", "audit"]);
    assert!(
        table.lines().next().unwrap().contains("HELD") && table.contains(&format!("behind {behind}")),
        "{table}"
    );

    // A handler without key order has no held topic: the tool says what to check.
    let output = tool(&brokers, &["held", "--topic", TOPIC, "--group", "nobody"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("held.postings.nobody.held does not exist") && error.contains("ordering = \"key\""),
        "{error}"
    );

    // vault: accounts 2 and 4 held by their dead-held first postings, three postings behind each.
    let held = held_until(&brokers, "vault", "two dead-held keys", |held| {
        held.len() == 2
            && held
                .iter()
                .all(|k| k["dead"].as_array().is_some_and(|d| d.len() == 1) && k["followers"] == 3)
    });
    let entry_of = |key: &str| {
        let held = held.iter().find(|k| k["key"] == key).unwrap();
        let dead = &held["dead"][0];
        assert_eq!(dead["error_kind"], "permanent", "{held:#}");
        assert_eq!(dead["queue"], "dlq");
        assert_eq!(dead["resolution"], Value::Null);
        format!("{}:{}", held["partition"], dead["offset"])
    };
    let (entry_2, entry_4) = (entry_of("2"), entry_of("4"));
    assert_eq!(
        (vault_done(1).len(), vault_done(3).len()),
        (4, 4),
        "the other accounts flow"
    );
    assert!(vault_done(2).is_empty() && vault_done(4).is_empty());
    let table = stdout_of(&brokers, &["held", "--topic", TOPIC, "--group", "vault"]);
    assert!(
        table.contains(&format!(
            "dead@{} (permanent)",
            entry_2.split(':').nth(1).unwrap()
        )),
        "{table}"
    );
    let dead = stdout_of(
        &brokers,
        &[
            "dlq", "list", "--topic", TOPIC, "--group", "vault", "--format", "json",
        ],
    );
    assert_eq!(
        dead, "",
        "a dead-held posting waits on the held topic, not in the DLQ"
    );

    // A selection is required, and one that matches nothing says where to look.
    let output = tool(
        &brokers,
        &["held", "discard", "--topic", TOPIC, "--group", "vault"],
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = tool(
        &brokers,
        &[
            "held", "replay", "--topic", TOPIC, "--group", "vault", "--key", "9",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("retry-kafka held --topic held.postings --group vault"));
    // A dry run writes nothing.
    let output = tool(
        &brokers,
        &[
            "held",
            "replay",
            "--topic",
            TOPIC,
            "--group",
            "vault",
            "--key",
            "2",
            "--dry-run",
        ],
    );
    assert!(output.status.success());
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        out.contains(&entry_2) && out.contains("replay") && err.contains("dry run: 1 records"),
        "{out}{err}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(vault_done(2).is_empty(), "nothing replayed by a dry run");

    // Fixed: account 2's posting replayed (before its later ones), account 4's discarded.
    VAULT_FIXED.store(true, std::sync::atomic::Ordering::SeqCst);
    let replayed = stdout_of(
        &brokers,
        &[
            "held", "replay", "--topic", TOPIC, "--group", "vault", "--key", "2",
        ],
    );
    assert!(
        replayed.contains(&entry_2) && replayed.contains("replay"),
        "{replayed}"
    );
    let discarded = stdout_of(
        &brokers,
        &[
            "held", "discard", "--topic", TOPIC, "--group", "vault", "--entry", &entry_4,
        ],
    );
    assert!(discarded.contains("discard to dlq"), "{discarded}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while vault_done(2).len() < 4 || vault_done(4).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "resolved: {:?}",
            VAULT_DONE.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        vault_done(2),
        [0, 1, 2, 3],
        "the replayed posting first, then the rest in order"
    );
    assert_eq!(vault_done(4), [1, 2, 3], "after the discard, the rest in order");
    held_until(
        &brokers,
        "vault",
        "nothing held once resolved",
        <[Value]>::is_empty,
    );
    let dead = json_lines(&stdout_of(
        &brokers,
        &[
            "dlq", "list", "--topic", TOPIC, "--group", "vault", "--format", "json",
        ],
    ));
    assert_eq!(dead.len(), 1, "the discarded posting: {dead:#?}");
    assert_eq!(dead[0]["key"], "4");
    assert_eq!(dead[0]["payload"], r#"{"account":4,"seq":0}"#);
    assert_eq!(dead[0]["error_message"], "posting 4/0 refused");
    running.shutdown().await.unwrap();
}
