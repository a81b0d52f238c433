//! Redis behaviour that needs real processes and a real `redis-server`: a worker killed with
//! SIGKILL loses nothing, two workers share a group and one finishes what the other left,
//! a server restart (append-only file on) loses nothing acknowledged and the consumers resume
//! by themselves, garbage written with `redis-cli XADD` is dead-lettered unchanged, a password
//! is required and named when missing, TLS works with a private CA, a wrong password, an
//! untrusted certificate and a plain URL for a TLS port fail at once naming the fix, retries
//! still move after the server forgets its scripts, and memory stays bounded after 100k
//! entries.

mod conformance;
mod process_support;
mod redis_support;

use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::{Duration, Instant};

use conformance::Harness;
use process_support::{expected_dead, publish_orders, wait_until_done, Worker, DLQ, TOPIC};
use redis_support::{
    assert_nothing_pending, assert_nothing_pending_on, connect, stream, test_backend, RedisHarness,
    RedisServer,
};
use retry_kafka::backend::redis::Redis;
use retry_kafka::backend::{Browse as _, Topic, TopicAdmin};
use retry_kafka::handler::ErrorKind;
use retry_kafka::headers::FailureContext;
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

fn spawn_worker(harness: &RedisHarness, name: &str) -> Worker {
    Worker::spawn(
        name,
        &[
            ("REDIS_URL", harness.server.url()),
            ("REDIS_SESSION_TIMEOUT_MS", "1500".into()),
            ("REDIS_KEEP_ACKNOWLEDGED_MS", "3600000".into()),
        ],
    )
}

async fn server() -> RedisHarness {
    tokio::task::spawn_blocking(RedisHarness::start).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_and_restarted_loses_nothing() {
    let harness = server().await;
    // Repeats are bounded by what was acknowledged but not yet sent (XACK) at the kill.
    // The workers run until the check below: what is pending is theirs to finish.
    let _workers = process_support::a_killed_worker_restarted_loses_nothing(
        &harness,
        |name| spawn_worker(&harness, name),
        100,
    )
    .await;
    assert_nothing_pending(&harness, TOPIC, "proc-workers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_group_and_one_finishes_what_a_killed_one_left() {
    let harness = server().await;
    // The workers run until the check below: what is pending is theirs to finish.
    let _workers = process_support::a_survivor_finishes_what_a_killed_worker_left(&harness, |name| {
        spawn_worker(&harness, name)
    })
    .await;
    assert_nothing_pending(&harness, TOPIC, "proc-workers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_loses_nothing_acknowledged_and_workers_resume() {
    let mut harness = tokio::task::spawn_blocking(|| RedisHarness::start_with(None, true))
        .await
        .unwrap();
    harness.create_topic(TOPIC, 2).await;
    publish_orders(&harness, 0..300).await;
    let worker = spawn_worker(&harness, "restart");
    worker.wait_for_attempts(60, "the worker did not get going").await;
    // Counted as the server goes down: records the worker fetched already may still be
    // attempted from its memory while the server is away (their hand-offs wait for it).
    let at_restart = worker.attempts().len();
    tokio::task::block_in_place(|| harness.server.restart(Duration::from_millis(1500)));
    assert!(
        at_restart < 300,
        "the restart came too late to matter ({at_restart} attempts)"
    );

    // Published after the restart: the worker must be reading again by itself.
    publish_orders(&harness, 300..350).await;
    let (dead, repeats) = wait_until_done(&harness, &[&worker], 350).await;
    assert_eq!(dead, expected_dead(350));
    eprintln!("redis restarted after {at_restart} attempts: all 350 done, {repeats} repeats");
    assert_nothing_pending(&harness, TOPIC, "proc-workers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_redis_cli_is_dead_lettered_unchanged() {
    let harness = server().await;
    harness.create_topic(TOPIC, 1).await;
    let worker = spawn_worker(&harness, "garbage");
    let cli = RedisServer::binary().with_file_name("redis-cli");
    assert!(cli.is_file(), "redis-cli is not installed next to redis-server");
    let status = Command::new(&cli)
        .args([
            "-p",
            &harness.server.port.to_string(),
            "XADD",
            &stream(TOPIC, 0),
            "*",
        ])
        .args([
            "payload".as_ref(),
            std::ffi::OsStr::from_bytes(b"\x01\x02garbage\xff{"),
        ])
        .args(["origin", "legacy-billing", "key", "some-key"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "redis-cli XADD failed");
    publish_orders(&harness, 1..2).await;

    let dead = &process_support::garbage_dead_letter(&harness, &worker).await;
    assert_eq!(dead.payload.as_deref(), Some(&b"\x01\x02garbage\xff{"[..]));
    assert_eq!(dead.key.as_deref(), Some(&b"some-key"[..]));
    assert_eq!(dead.headers.get("origin"), Some(&b"legacy-billing"[..]));
    let context = FailureContext::from_headers(&dead.headers).unwrap();
    assert_eq!((context.error_kind, context.attempts), (ErrorKind::Decode, 1));
    assert_eq!(context.original_topic, TOPIC);
    // The DLQ entry's own fields: the original ones unchanged, then the failure context.
    let mut conn = harness.connection().await;
    let fields: redis::Value = redis::cmd("XRANGE")
        .arg(stream(DLQ, 0))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = format!("{fields:?}");
    for name in ["rk-schema", "rk-error-kind", "rk-original-topic", "rk-attempts"] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "redis.secure", key = "id")]
struct Secure {
    id: u64,
}

#[retry_handler(group = "redis-secure", retries = ["100ms"], dlq)]
async fn secure(_event: Secure) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_server_works_with_the_password_and_names_it_without() {
    init();
    let server = tokio::task::spawn_blocking(|| RedisServer::start_with(Some("s3cret pass"), false))
        .await
        .unwrap();
    let app = |url: String| {
        App::builder()
            .backend(test_backend(&url))
            .handlers(|s| s.group() == "redis-secure")
            .build()
            .unwrap()
    };

    let without = app(server.url_without_password())
        .start()
        .await
        .err()
        .expect("no password: start fails");
    let message = without.to_string();
    assert!(message.contains("NOAUTH"), "{message}");
    assert!(
        message.contains("redis://:password@host:port"),
        "the fix is named: {message}"
    );
    let wrong = app(format!("redis://:wrong@127.0.0.1:{}", server.port))
        .start()
        .await
        .err()
        .expect("wrong password");
    assert!(wrong.to_string().contains("password was refused"), "{wrong}");
    assert!(
        !wrong.to_string().contains("wrong@"),
        "the password is not printed: {wrong}"
    );

    let app = app(server.url().replace(' ', "%20"));
    let running = app.start().await.expect("starts with the password");
    app.producer().send(&Secure { id: 1 }).await.unwrap();
    conformance::succeeded_eventually(
        &app,
        "secure",
        1,
        Duration::from_secs(10),
        "the event was not handled",
    )
    .await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_works_with_the_servers_root_certificate_and_fails_clearly_without() {
    init();
    let server = tokio::task::spawn_blocking(RedisServer::start_tls).await.unwrap();
    let app = |redis: Redis| {
        App::builder()
            .backend(redis)
            .handlers(|s| s.group() == "redis-secure")
            .build()
            .unwrap()
    };
    assert!(server.url().starts_with("rediss://"));

    // Only the system's roots: the self-signed certificate is refused, and start says why.
    let untrusted = app(Redis::builder(server.url()).build().unwrap())
        .start()
        .await
        .err()
        .expect("untrusted");
    let message = untrusted.to_string();
    assert!(message.contains("refused a PING"), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    // Trusted through REDIS_TLS_CA_FILE, as run() reads it.
    std::env::set_var("REDIS_URL", server.url());
    std::env::set_var("REDIS_TLS_CA_FILE", server.ca_file());
    let redis = Redis::from_env().expect("TLS settings from the environment");
    std::env::remove_var("REDIS_URL");
    std::env::remove_var("REDIS_TLS_CA_FILE");
    let app = app(redis);
    let running = app.start().await.expect("starts over TLS");
    app.producer().send(&Secure { id: 2 }).await.unwrap();
    conformance::succeeded_eventually(
        &app,
        "secure",
        1,
        Duration::from_secs(10),
        "the event was not handled over TLS",
    )
    .await;
    running.shutdown().await.unwrap();
}

/// A refusal that no retry mends fails `start` and `send` at once (within 2 s; these took
/// ~7.5 s of reconnects), says what to change, and never prints the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_fail_at_once_and_name_what_to_change() {
    init();
    let protected = tokio::task::spawn_blocking(|| RedisServer::start_with(Some("s3cret pass"), false))
        .await
        .unwrap();
    let tls = tokio::task::spawn_blocking(RedisServer::start_tls).await.unwrap();
    let password = "hunter2-never-printed";
    let cases = [
        (
            "a wrong password",
            format!("redis://:{password}@127.0.0.1:{}", protected.port),
            "password was refused",
        ),
        (
            "an untrusted certificate",
            format!("rediss://:{password}@127.0.0.1:{}", tls.port),
            "REDIS_TLS_CA_FILE",
        ),
        (
            "a plain URL for a TLS port",
            format!("redis://:{password}@127.0.0.1:{}", tls.port),
            "rediss://",
        ),
    ];
    for (case, url, hint) in cases {
        let app = App::builder()
            .backend(Redis::builder(&url).build().unwrap())
            .handlers(|s| s.group() == "redis-secure")
            .build()
            .unwrap();
        let started = Instant::now();
        let error = app.start().await.err().expect(case).to_string();
        assert_refused_at_once(case, "start", started, &error, hint, password);

        // A producer of its own: a backend that never reached the server.
        let producer = Producer::new(Redis::builder(&url).build().unwrap());
        let started = Instant::now();
        let error = producer.send(&Secure { id: 3 }).await.expect_err(case);
        assert_refused_at_once(case, "send", started, &error.to_string(), hint, password);
    }
}

/// `error`, from `what` begun at `started`, came within 2 s, names `hint` and not `password`.
fn assert_refused_at_once(case: &str, what: &str, started: Instant, error: &str, hint: &str, password: &str) {
    let took = started.elapsed();
    eprintln!("{case}: {what} failed in {took:?}: {error}");
    assert!(
        took < Duration::from_secs(2),
        "{case}: {what} failed after {took:?}: {error}"
    );
    assert!(
        error.contains(hint),
        "{case}: {what} names the fix ({hint}): {error}"
    );
    assert!(
        !error.contains(password),
        "{case}: {what} prints the password: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_that_vanishes_is_created_again() {
    let harness = server().await;
    harness.create_topic("redis.secure", 1).await;
    let app = App::builder()
        .backend(harness.backend())
        .handlers(|s| s.group() == "redis-secure")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    app.producer().send(&Secure { id: 1 }).await.unwrap();
    conformance::succeeded_eventually(
        &app,
        "secure",
        1,
        Duration::from_secs(10),
        "the first event handled",
    )
    .await;
    // An operator (or a FLUSH of the group) removes it while the consumer reads.
    let mut conn = harness.connection().await;
    let destroyed: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(stream("redis.secure", 0))
        .arg("redis-secure")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(destroyed, 1);
    app.producer().send(&Secure { id: 2 }).await.unwrap();
    // The group comes back from the start of the stream: event 1 again (its progress was in the
    // group), then event 2.
    conformance::succeeded_eventually(
        &app,
        "secure",
        3,
        Duration::from_secs(10),
        "the consumer to carry on",
    )
    .await;
    running.shutdown().await.unwrap();
    assert_eq!(harness.committed("redis.secure", "redis-secure").await, [2]);
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "redis.flushed", key = "id")]
struct Flushed {
    id: u64,
}

#[retry_handler(group = "redis-flushed", retries = ["200ms"], dlq)]
async fn flushed(_event: Flushed, ctx: Context) -> Result<(), HandlerError> {
    if ctx.attempt() < 2 {
        return Err(HandlerError::transient("once more"));
    }
    Ok(())
}

/// Scripts run by their SHA1: a server that forgot them (`SCRIPT FLUSH`, as after a restart)
/// gets them again, and retries still move when due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_move_after_the_server_forgets_the_scripts() {
    let harness = server().await;
    let app = App::builder()
        .backend(harness.backend())
        .handlers(|s| s.group() == "redis-flushed")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    app.producer().send(&Flushed { id: 1 }).await.unwrap();
    conformance::succeeded_eventually(&app, "flushed", 1, Duration::from_secs(10), "the first retry").await;
    let mut conn = harness.connection().await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    app.producer().send(&Flushed { id: 2 }).await.unwrap();
    conformance::succeeded_eventually(
        &app,
        "flushed",
        2,
        Duration::from_secs(10),
        "a retry after SCRIPT FLUSH",
    )
    .await;
    running.shutdown().await.unwrap();
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "redis.timely", key = "id")]
struct Timely {
    id: u64,
}

static TIMELY: std::sync::Mutex<Vec<(u64, u32, Instant)>> = std::sync::Mutex::new(Vec::new());

#[retry_handler(group = "redis-timely", retries = ["300ms", "700ms"], dlq)]
async fn timely(event: Timely, ctx: Context) -> Result<(), HandlerError> {
    TIMELY
        .lock()
        .unwrap()
        .push((event.id, ctx.attempt(), Instant::now()));
    if ctx.attempt() < 3 {
        return Err(HandlerError::transient("not yet"));
    }
    Ok(())
}

/// Retries wait in a sorted set and move when due: each attempt starts at its due time, not
/// before, and late only by the mover's poll (50 ms) and scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_start_at_their_due_time() {
    let harness = server().await;
    harness.create_topic("redis.timely", 2).await;
    let app = App::builder()
        .backend(harness.backend())
        .handlers(|s| s.group() == "redis-timely")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    for id in 0..10 {
        app.producer().send(&Timely { id }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    conformance::succeeded_eventually(
        &app,
        "timely",
        10,
        Duration::from_secs(20),
        "not every event reached its third attempt",
    )
    .await;
    running.shutdown().await.unwrap();
    let attempts = TIMELY.lock().unwrap().clone();
    let at = |id: u64, attempt: u32| attempts.iter().find(|a| a.0 == id && a.1 == attempt).unwrap().2;
    let mut lateness = Vec::new();
    for id in 0..10 {
        for (attempt, delay) in [(2, 300), (3, 700)] {
            let waited = at(id, attempt).duration_since(at(id, attempt - 1));
            assert!(
                waited >= Duration::from_millis(delay - 2),
                "attempt {attempt} of {id} after {waited:?}"
            );
            lateness.push(waited.as_millis() as u64 - delay);
        }
    }
    lateness.sort_unstable();
    let (median, worst) = (lateness[lateness.len() / 2], lateness[lateness.len() - 1]);
    eprintln!("retry lateness over 20 retries: median {median} ms, worst {worst} ms");
    assert!(
        median <= 100 && worst <= 500,
        "retries started late: median {median} ms, worst {worst} ms"
    );
}

#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "redis.bulk", key = "id")]
struct Bulk {
    id: u64,
}

#[retry_handler(group = "redis-bulk", retries = ["200ms"], dlq, concurrency = 8)]
async fn bulk(event: Bulk, ctx: Context) -> Result<(), HandlerError> {
    if event.id % 1000 == 7 && ctx.attempt() == 1 {
        return Err(HandlerError::transient("one in a thousand fails once"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_after_100k_entries() {
    init();
    let server = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let backend = Redis::builder(server.url())
        .session_timeout(Duration::from_millis(1500))
        .trim_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    backend.create_topic(&Topic::main("redis.bulk"), 2).await.unwrap();
    let app = App::builder()
        .backend(backend.clone())
        .handlers(|s| s.group() == "redis-bulk")
        .build()
        .unwrap();
    let running = app.start().await.unwrap();
    let mut conn = connect(&server.url()).await;
    let used = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let baseline = used(
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap(),
    );

    const COUNT: u64 = 100_000;
    let producer = app.producer();
    let mut sends = futures::stream::FuturesUnordered::new();
    let mut peak_len = 0u64;
    for id in 0..COUNT {
        let producer = producer.clone();
        sends.push(async move { producer.send(&Bulk { id }).await });
        if sends.len() >= 64 {
            use futures::StreamExt;
            sends.next().await.unwrap().unwrap();
        }
        if id % 10_000 == 0 {
            peak_len = peak_len.max(stream_lengths(&mut conn, "redis.bulk").await);
        }
    }
    futures::StreamExt::for_each(sends, |r| async {
        r.unwrap();
    })
    .await;
    // Sampling the backlog on the way (an async read, so not `succeeded_eventually`).
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.stats().handler("bulk").unwrap().succeeded < COUNT {
        assert!(
            Instant::now() < deadline,
            "not all entries were processed: {:?}",
            app.stats()
        );
        peak_len = peak_len.max(stream_lengths(&mut conn, "redis.bulk").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Trimming runs every 200 ms on the owner of each stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = stream_lengths(&mut conn, "redis.bulk").await
            + stream_lengths(&mut conn, "redis.bulk.redis-bulk.retry.1").await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} acknowledged entries were never trimmed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut usage = 0u64;
    for p in 0..2 {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(stream("redis.bulk", p))
            .query_async(&mut conn)
            .await
            .unwrap();
        usage += bytes.unwrap_or(0);
    }
    let after = used(
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap(),
    );
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    eprintln!(
        "100k entries processed: longest backlog seen {peak_len} entries; streams now 0 entries, {usage} bytes; \
         used_memory {baseline} -> {after} bytes; {keys} keys"
    );
    assert!(usage < 8 * 1024, "two empty streams use {usage} bytes");
    assert!(
        after < baseline + 2 * 1024 * 1024,
        "used_memory grew from {baseline} to {after}"
    );
    assert!(keys < 20, "{keys} keys left");
    let stats = app.stats();
    let stats = stats.handler("bulk").unwrap();
    assert_eq!((stats.retried[0], stats.dead_lettered), (100, 0));
    running.shutdown().await.unwrap();
    assert_nothing_pending_on(&backend, "redis.bulk", "redis-bulk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_acknowledged_entries_and_never_an_unacknowledged_one() {
    init();
    let server = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let backend = Redis::builder(server.url())
        .session_timeout(Duration::from_millis(1500))
        .trim_interval(Duration::from_millis(100))
        .keep_acknowledged_entries(5)
        .build()
        .unwrap();
    backend
        .create_topic(&Topic::main("redis.secure"), 1)
        .await
        .unwrap();
    let app = App::builder()
        .backend(backend.clone())
        .handlers(|s| s.group() == "redis-secure")
        .build()
        .unwrap();
    // A second group that reads nothing: what it has not acknowledged must stay.
    let mut conn = connect(&server.url()).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream("redis.secure", 0))
        .arg("idle-group")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let running = app.start().await.unwrap();
    for id in 0..20 {
        app.producer().send(&Secure { id }).await.unwrap();
    }
    conformance::succeeded_eventually(
        &app,
        "secure",
        20,
        Duration::from_secs(10),
        "not everything was handled",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stream_len(&mut conn, "redis.secure").await,
        20,
        "the idle group still needs every entry"
    );

    // The idle group goes; now only the newest 5 acknowledged entries stay.
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(stream("redis.secure", 0))
        .arg("idle-group")
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream_len(&mut conn, "redis.secure").await != 5 {
        assert!(
            Instant::now() < deadline,
            "the stream was not trimmed to 5 entries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
    let kept: Vec<u64> = backend
        .read(&Topic::main("redis.secure"), &[])
        .await
        .unwrap()
        .iter()
        .map(process_support::order_id)
        .collect();
    assert_eq!(kept, [15, 16, 17, 18, 19]);
}

async fn stream_len(conn: &mut redis::aio::MultiplexedConnection, topic: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream(topic, 0))
        .query_async(conn)
        .await
        .unwrap()
}

async fn stream_lengths(conn: &mut redis::aio::MultiplexedConnection, topic: &str) -> u64 {
    let mut total = 0;
    for p in 0..2 {
        let len: u64 = redis::cmd("XLEN")
            .arg(stream(topic, p))
            .query_async(conn)
            .await
            .unwrap();
        total += len;
    }
    total
}

fn init() {
    redis_support::init_tracing();
}
