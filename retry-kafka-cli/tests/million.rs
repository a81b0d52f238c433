//! The `retry-kafka` tool at scale, on Apache Kafka: a dead-letter queue of many entries (a
//! million with `RK_DLQ_ENTRIES=1000000`; `scripts/dlq-million.sh` runs that with the tool built
//! in release), listed with a filter and replayed whole, the tool's peak RSS measured (the
//! kernel's `ru_maxrss` of the child, from `wait4`) and held to a bound that does not grow
//! with the queue: the tool reads a page at a time and sends a batch at a time.
//!
//! `RK_TOOL` runs another build of the tool (the script's release build); the figures are
//! printed on stderr (`--nocapture` shows them).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use retry_kafka::backend::kafka::Kafka;
use retry_kafka::backend::{Browse as _, OutboundRecord, Publish as _, Topic, TopicAdmin as _, TopicRole};
use retry_kafka::handler::ErrorKind;
use retry_kafka::headers::{FailureContext, Headers};
use retry_kafka_suite::ApacheKafka;

/// Entries by default: enough for many pages and batches in a debug build within CI's time.
const DEFAULT_ENTRIES: u64 = 200_000;
/// The tool's peak RSS may not pass this, whatever the queue's size: a page, a batch,
/// librdkafka's buffers and the runtime (measured: docs/tool.md's figures).
const MAX_RSS_MIB: u64 = 200;
/// Every tenth entry failed for good: what `list --kind permanent` selects.
const PERMANENT_EVERY: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_dead_letters_in_bounded_memory() {
    let entries: u64 = std::env::var("RK_DLQ_ENTRIES")
        .ok()
        .map(|n| n.parse().expect("RK_DLQ_ENTRIES is a number"))
        .unwrap_or(DEFAULT_ENTRIES);
    let broker = ApacheKafka::start();
    let backend = Kafka::builder(&broker.bootstrap)
        .replication_factor(1)
        .build()
        .expect("kafka backend");
    let dlq = Topic::new("bulk.orders.bulk.dlq", TopicRole::DeadLetter);
    for topic in [
        Topic::main("bulk.orders"),
        dlq.clone(),
        Topic::new("bulk.orders.bulk.parked", TopicRole::Parked),
    ] {
        backend.create_topic(&topic, 4).await.expect("create topic");
    }

    let started = Instant::now();
    stream::iter(0..entries)
        .map(|n| backend.send(&dlq, dead_letter(n)))
        .buffer_unordered(10_000)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("write dead letters");
    eprintln!("wrote {entries} dead letters in {:.1?}", started.elapsed());

    let tool = std::env::var_os("RK_TOOL").unwrap_or_else(|| env!("CARGO_BIN_EXE_retry-kafka").into());
    let dir = std::env::temp_dir().join(format!("rk-million-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let mut command = Command::new(&tool);
        command
            .args(["--brokers", &broker.bootstrap])
            .args(args)
            .current_dir(&dir)
            .env_remove("KAFKA_BROKERS")
            .env_remove("REDIS_URL")
            .env_remove("RETRY_KAFKA_BACKEND");
        measured(command)
    };
    let queue = ["--topic", "bulk.orders", "--group", "bulk"];

    let list = run(&[
        &["dlq", "list"][..],
        &queue,
        &["--kind", "permanent", "--format", "json"],
    ]
    .concat());
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    assert_eq!(
        list.lines,
        entries.div_ceil(PERMANENT_EVERY),
        "every permanent failure listed"
    );
    eprintln!(
        "list --kind permanent of {entries}: {} lines in {:.1?}, peak RSS {} MiB",
        list.lines,
        list.elapsed,
        list.peak_rss_kib / 1024
    );

    // --progress: a progress line a second on stderr though it is a pipe; stdout stays the
    // summary alone.
    let replay = run(&[&["dlq", "replay"][..], &queue, &["--progress"]].concat());
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    assert_eq!(replay.lines, 1, "stdout is the summary");
    assert!(replay.stderr.contains(" entries read, "), "{}", replay.stderr);
    let ends = backend.end_offsets_of(&Topic::main("bulk.orders")).await.unwrap();
    assert_eq!(ends.iter().sum::<u64>(), entries, "every entry replayed once");
    eprintln!(
        "replay of {entries}: {:.1?}, peak RSS {} MiB",
        replay.elapsed,
        replay.peak_rss_kib / 1024
    );

    for (what, run) in [("list", &list), ("replay", &replay)] {
        assert!(
            run.peak_rss_kib < MAX_RSS_MIB * 1024,
            "{what} of {entries} entries peaked at {} MiB of RSS",
            run.peak_rss_kib / 1024
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn dead_letter(n: u64) -> OutboundRecord {
    let mut headers = Headers::new();
    FailureContext {
        original_topic: "bulk.orders".into(),
        original_partition: (n % 4) as u32,
        original_offset: n,
        original_timestamp_ms: None,
        group: "bulk".into(),
        attempts: 4,
        due_at_ms: None,
        first_failure_at_ms: 1,
        last_failure_at_ms: 2,
        error_kind: if n.is_multiple_of(PERMANENT_EVERY) {
            ErrorKind::Permanent
        } else {
            ErrorKind::Transient
        },
        error_message: format!("bank down for order {n}"),
        replays: None,
    }
    .write_to(&mut headers);
    OutboundRecord {
        partition: Some((n % 4) as u32),
        key: Some(n.to_string().into()),
        payload: Some(format!(r#"{{"id":{n},"note":"order {n}"}}"#).into()),
        headers,
    }
}

/// A finished run of the tool: its exit code, how many lines it printed, its stderr, how long
/// it took and its peak resident set.
struct Measured {
    code: Option<i32>,
    lines: u64,
    stderr: String,
    elapsed: Duration,
    peak_rss_kib: u64,
}

/// Runs `command`, counting its stdout's lines as they come (nothing kept), and reaps it with
/// `wait4` for its own `ru_maxrss`.
// The child is reaped by wait4, not Child::wait: std's wait gives no rusage.
#[allow(clippy::zombie_processes)]
fn measured(mut command: Command) -> Measured {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tool runs");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let lines = BufReader::new(stdout).split(b'\n').map(Result::unwrap).count() as u64;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value; wait4 fills it for the child it reaps.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which std's Child has not reaped (never waited on).
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, child.id() as libc::pid_t, "wait4");
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        lines,
        stderr: errors.join().unwrap(),
        elapsed: started.elapsed(),
        // Linux gives ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss as u64,
    }
}
