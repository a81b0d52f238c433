//! The soak, run by `scripts/soak.sh` (ignored here: not in CI). `SOAK_EVENTS` events (a
//! million) go through Apache Kafka with the retries and dead letters on `redis-server`
//! (`Tiered<Kafka, Redis>`) or, with `SOAK_STORE=postgres`, in PostgreSQL
//! (`Tiered<Kafka, Postgres>`), handled by three `rk-soak-worker` processes; `SOAK_KILLS` (20)
//! times a random worker is killed with SIGKILL at a random moment (when the successes pass a
//! random point between 2% and 75% of the run, at least 1 s after the last kill) and started
//! again at once, and halfway through the kills the broker is killed with SIGKILL and started
//! again on its data 3 s later.
//!
//! What is checked is read without retry-kafka: the events are written by confluent-kafka
//! (Python, librdkafka of its own), the successes are the workers' own log lines, the dead
//! letters are read with `redis-cli` or `psql`. At the end: 0 lost (every event succeeded or was
//! dead-lettered), exactly the invalid ones dead-lettered, the repeated successes counted and
//! within their bound, and every worker's RSS sampled every 2 s.
//!
//! The bound on repeats: a killed worker repeats what it finished but had not committed (Kafka
//! commits every second) and what was in flight; the others, whose partitions move at each
//! kill, repeat what they had acknowledged but not committed when revoked; while the broker is
//! down nothing commits. So the repeats are at most the attempts all workers made in the 2 s
//! before each kill, plus those they made from 2 s before the broker went down until 5 s after
//! it answered again.

use std::collections::HashSet;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use retry_kafka_suite::{spawn_dying_with_this_process, ApacheKafka, PostgresServer, RedisServer};

const TOPIC: &str = "soak.events";
const DLQ: &str = "soak.events.soak.dlq";
const PARTITIONS: u32 = 6;
const WORKERS: usize = 3;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// confluent-kafka's Python, as `scripts/install-test-deps.sh` installs it.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "confluent-kafka is not installed: run ./scripts/install-test-deps.sh"
    );
    python
}

/// Creates the topic and writes events 0..count to it with confluent-kafka.
fn produce(bootstrap: &str, count: u64) {
    let script = r#"
import sys
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
bootstrap, topic, partitions, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
admin = AdminClient({'bootstrap.servers': bootstrap})
for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
    future.result()
failed = []
def report(error, message):
    if error is not None:
        failed.append(error)
producer = Producer({'bootstrap.servers': bootstrap, 'linger.ms': 20, 'acks': 'all',
                     'queue.buffering.max.messages': 500000})
for i in range(count):
    while True:
        try:
            producer.produce(topic, b'{"id":%d}' % i, on_delivery=report)
            break
        except BufferError:
            producer.poll(0.1)
    if i % 20000 == 0:
        producer.poll(0)
left = producer.flush(300)
if left or failed:
    sys.exit(f"{left} not delivered, {len(failed)} failed: {failed[:3]}")
"#;
    let status = Command::new(python())
        .args([
            "-c",
            script,
            bootstrap,
            TOPIC,
            &PARTITIONS.to_string(),
            &count.to_string(),
        ])
        .status()
        .expect("run the producer");
    assert!(status.success(), "producing the events failed");
}

/// A worker slot: the running process, and every log it has written (one per start).
struct Slot {
    child: Child,
    logs: Vec<LogTail>,
    /// (seconds since the soak started, RSS MiB) of every sample, every start.
    rss: Vec<(f64, f64)>,
}

/// A worker's log, read as it grows.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogTail {
    /// The attempts logged since the last call: `(id, ok)`.
    fn new_attempts(&mut self) -> Vec<(u64, bool)> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        file.seek(SeekFrom::Start(self.offset)).unwrap();
        let mut bytes = std::mem::take(&mut self.partial);
        let read = file.read_to_end(&mut bytes).unwrap();
        self.offset += read as u64;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
        self.partial = bytes.split_off(complete);
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| {
                let mut parts = line.split(' ');
                let id = parts.next().unwrap().parse().unwrap();
                (id, parts.nth(1) == Some("ok"))
            })
            .collect()
    }
}

fn spawn_worker(dir: &Path, slot: usize, start: usize, env: &[(&str, String)]) -> (Child, LogTail) {
    let log = dir.join(format!("worker-{slot}-{start}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_rk-soak-worker"));
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("WORKER_LOG", &log)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("worker-{slot}-{start}.err"))).unwrap());
    let child = spawn_dying_with_this_process(command).expect("start rk-soak-worker");
    (
        child,
        LogTail {
            path: log,
            offset: 0,
            partial: Vec::new(),
        },
    )
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Where the retries and dead letters are: `SOAK_STORE`, `redis` (the default) or `postgres`.
enum Store {
    Redis(RedisServer),
    Postgres(PostgresServer),
}

impl Store {
    fn start() -> Self {
        match std::env::var("SOAK_STORE").as_deref() {
            Ok("postgres") => Store::Postgres(PostgresServer::start()),
            Ok("redis") | Err(_) => Store::Redis(RedisServer::start()),
            Ok(other) => panic!("SOAK_STORE={other}: give redis or postgres"),
        }
    }

    /// The workers' settings for it, beside `KAFKA_BROKERS`.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Store::Redis(redis) => vec![
                ("REDIS_URL", redis.url()),
                ("RETRY_KAFKA_BACKEND", "kafka+redis".to_owned()),
                ("REDIS_SESSION_TIMEOUT_MS", "1500".to_owned()),
            ],
            Store::Postgres(postgres) => vec![
                ("DATABASE_URL", postgres.url()),
                ("RETRY_KAFKA_BACKEND", "kafka+postgres".to_owned()),
                ("POSTGRES_LEASE_MS", "1500".to_owned()),
            ],
        }
    }

    /// The ids of every dead letter (repeats included), read with `redis-cli` or `psql`.
    fn dead_letters(&self) -> Vec<u64> {
        let payloads = match self {
            Store::Redis(redis) => redis_payloads(redis),
            Store::Postgres(postgres) => {
                let query = format!(
                    "SELECT convert_from(payload, 'UTF8') FROM retry_kafka_records WHERE topic = '{DLQ}'"
                );
                let output = Command::new("psql")
                    .arg(postgres.url())
                    .args(["-At", "-c", &query])
                    .output()
                    .expect("psql runs");
                assert!(
                    output.status.success(),
                    "psql failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            }
        };
        payloads
            .iter()
            .map(|payload| {
                payload
                    .trim_start_matches("{\"id\":")
                    .trim_end_matches('}')
                    .parse()
                    .unwrap_or_else(|_| panic!("a dead letter's payload: {payload}"))
            })
            .collect()
    }
}

/// The payload of every entry of the dead-letter streams, read with `redis-cli`.
fn redis_payloads(redis: &RedisServer) -> Vec<String> {
    let mut payloads = Vec::new();
    for partition in 0..PARTITIONS {
        let output = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "--raw", "XRANGE"])
            .arg(format!("{{{DLQ}}}:{partition}"))
            .args(["-", "+"])
            .output()
            .expect("redis-cli runs");
        assert!(output.status.success(), "redis-cli XRANGE failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        payloads.extend(
            lines
                .windows(2)
                .filter(|pair| pair[0] == "payload")
                .map(|pair| pair[1].to_owned()),
        );
    }
    payloads
}

/// A small xorshift generator: the kills' moments and victims.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[low, high)`.
    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (self.next() % 1_000_000) as f64 / 1_000_000.0 * (high - low)
    }
}

#[test]
#[ignore = "the soak: ./scripts/soak.sh"]
fn a_million_events_through_kills_and_a_broker_restart() {
    retry_kafka_suite::init_test_tracing();
    let events = env_or("SOAK_EVENTS", 1_000_000);
    let kills = env_or("SOAK_KILLS", 20) as usize;
    let seed = env_or("SOAK_SEED", std::process::id() as u64 | 1);
    let mut random = Random(seed);
    let dir = std::env::temp_dir().join(format!("retry-kafka-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut broker = ApacheKafka::start();
    let store = Store::start();
    let started = Instant::now();
    produce(&broker.bootstrap, events);
    let produced_in = started.elapsed();
    eprintln!(
        "soak: {events} events written in {:.1} s (seed {seed})",
        produced_in.as_secs_f64()
    );

    let mut env = vec![
        ("KAFKA_BROKERS", broker.bootstrap.clone()),
        ("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ("KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "500".to_owned()),
    ];
    env.extend(store.env());
    let mut slots: Vec<Slot> = (0..WORKERS)
        .map(|slot| {
            let (child, log) = spawn_worker(&dir, slot, 0, &env);
            Slot {
                child,
                logs: vec![log],
                rss: Vec::new(),
            }
        })
        .collect();

    let expected_dead: HashSet<u64> = (0..events).filter(|id| id % 100 == 37).collect();
    let expected_successes = events - expected_dead.len() as u64;
    let mut succeeded = vec![0u32; events as usize];
    let (mut unique_successes, mut attempts) = (0u64, 0u64);
    // (when, attempts logged by then, repeated successes by then), every round: the repeats'
    // bound reads it, and where the repeats came from.
    let mut history: Vec<(Instant, u64, u64)> = Vec::new();
    let mut repeated = 0u64;
    let consuming = Instant::now();
    // The kills' moments: when the successes pass random points between 2% and 75% of the
    // run (so every kill lands mid-run whatever the speed), at least 1 s apart.
    let mut kill_points: Vec<u64> = (0..kills)
        .map(|_| (random.between(0.02, 0.75) * expected_successes as f64) as u64)
        .collect();
    kill_points.sort_unstable();
    let mut next_kill = consuming;
    let mut kill_times = Vec::new();
    let mut broker_window: Option<(Instant, Instant)> = None;
    let mut next_rss = consuming;
    let deadline = consuming + Duration::from_secs(env_or("SOAK_LIMIT_S", 3600));
    let dead = loop {
        for slot in &mut slots {
            for log in &mut slot.logs {
                for (id, ok) in log.new_attempts() {
                    attempts += 1;
                    if ok {
                        let count = &mut succeeded[id as usize];
                        unique_successes += u64::from(*count == 0);
                        repeated += u64::from(*count > 0);
                        *count += 1;
                    }
                }
            }
        }
        let now = Instant::now();
        history.push((now, attempts, repeated));
        if now >= next_rss {
            next_rss = now + Duration::from_secs(2);
            for slot in &mut slots {
                // A process just forked, not yet the worker, reads under 1 MiB.
                if let Some(rss) = rss_mib(slot.child.id()).filter(|&rss| rss >= 1.0) {
                    slot.rss.push((now.duration_since(consuming).as_secs_f64(), rss));
                }
            }
        }
        if unique_successes == expected_successes {
            let dead = store.dead_letters();
            let unique: HashSet<u64> = dead.iter().copied().collect();
            if unique.len() >= expected_dead.len() {
                break dead;
            }
        }
        assert!(
            now < deadline,
            "after {:.0} s: {unique_successes} of {expected_successes} successes",
            now.duration_since(consuming).as_secs_f64()
        );
        let kill_due = kill_points
            .get(kill_times.len())
            .is_some_and(|&point| unique_successes >= point);
        if kill_due && now >= next_kill {
            assert!(
                unique_successes < expected_successes,
                "the run finished after {} of {kills} kills: give SOAK_EVENTS more",
                kill_times.len()
            );
            let victim = (random.next() % WORKERS as u64) as usize;
            let slot = &mut slots[victim];
            slot.child.kill().expect("SIGKILL a worker");
            slot.child.wait().unwrap();
            kill_times.push(now);
            let (child, log) = spawn_worker(&dir, victim, slot.logs.len(), &env);
            slot.child = child;
            slot.logs.push(log);
            eprintln!(
                "soak: kill {} (worker {victim}) at {:.1} s, {unique_successes} successes so far",
                kill_times.len(),
                now.duration_since(consuming).as_secs_f64()
            );
            if kill_times.len() == kills / 2 {
                let down = Instant::now();
                broker.restart(Duration::from_secs(3));
                broker_window = Some((down, Instant::now()));
                eprintln!(
                    "soak: the broker was killed and answered again {:.1} s later",
                    down.elapsed().as_secs_f64()
                );
            }
            next_kill = Instant::now() + Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let took = consuming.elapsed();

    // (attempts, repeated successes) all workers logged by `when`, by the history.
    let at = |when: Instant| {
        history
            .iter()
            .rev()
            .find(|(time, ..)| *time <= when)
            .map_or((0, 0), |&(_, attempts, repeated)| (attempts, repeated))
    };
    let attempts_between = |from: Instant, to: Instant| at(to).0 - at(from).0;
    let mut bound: u64 = kill_times
        .iter()
        .map(|&kill| attempts_between(kill - Duration::from_secs(2), kill))
        .sum();
    if let Some((down, up)) = broker_window {
        bound += attempts_between(down - Duration::from_secs(2), up + Duration::from_secs(5));
    }
    let total_successes: u64 = succeeded.iter().map(|&count| u64::from(count)).sum();
    let repeats = total_successes - unique_successes;
    // Repeats logged from the broker's going down until 20 s after it answered again.
    let broker_repeats =
        broker_window.map_or(0, |(down, up)| at(up + Duration::from_secs(20)).1 - at(down).1);
    let unique_dead: HashSet<u64> = dead.iter().copied().collect();
    let lost: Vec<u64> = (0..events)
        .filter(|&id| succeeded[id as usize] == 0 && !unique_dead.contains(&id))
        .collect();
    let wrongly_dead = unique_dead.symmetric_difference(&expected_dead).count();

    eprintln!(
        "soak: {events} events, {WORKERS} workers, {} kills, one broker restart: settled in {:.1} s \
         ({:.0} events/s); {} lost; {repeats} repeated successes (bound {bound}: attempts in the 2 s \
         before each kill and around the broker's restart); {} dead letters for {} invalid events \
         ({} repeated)",
        kill_times.len(),
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64(),
        lost.len(),
        dead.len(),
        expected_dead.len(),
        dead.len() - unique_dead.len()
    );
    eprintln!(
        "soak: of the repeats, {broker_repeats} were logged from the broker's going down until 20 s \
         after it answered again, {} at other times ({:.0} per kill)",
        repeats - broker_repeats,
        (repeats - broker_repeats) as f64 / kill_times.len().max(1) as f64
    );
    for (index, slot) in slots.iter().enumerate() {
        let values: Vec<f64> = slot.rss.iter().map(|&(_, rss)| rss).collect();
        let (low, high) = values
            .iter()
            .fold((f64::MAX, 0.0f64), |(low, high), &v| (low.min(v), high.max(v)));
        let last: Vec<String> = slot
            .rss
            .iter()
            .rev()
            .take(5)
            .map(|(_, rss)| format!("{rss:.0}"))
            .collect();
        eprintln!(
            "soak: worker {index}: {} starts, {} RSS samples, {low:.0} to {high:.0} MiB (last: {} MiB)",
            slot.logs.len(),
            values.len(),
            last.join(", ")
        );
    }
    assert!(
        lost.is_empty(),
        "{} events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(
        wrongly_dead, 0,
        "the dead letters are not exactly the invalid events"
    );
    assert_eq!(kill_times.len(), kills);
    assert!(
        repeats <= bound,
        "{repeats} repeated successes, over the bound {bound}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
