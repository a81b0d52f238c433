//! Worker processes (`rk-worker`, which runs `retry_kafka::run()` as a service does) for the
//! process-level tests of every network backend, and what those tests check about them.

#![allow(dead_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use retry_kafka::backend::Record;
use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

use crate::conformance::Harness;

/// The worker's main topic and dead-letter topic.
pub const TOPIC: &str = "proc.orders";
pub const DLQ: &str = "proc.orders.proc-workers.dlq";

/// The worker's event (the same definition as in `src/bin/rk-worker.rs`).
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "proc.orders", key = "id")]
pub struct Order {
    pub id: u64,
}

/// A `rk-worker` process; killed with SIGKILL on drop if still running.
pub struct Worker {
    child: Child,
    log: PathBuf,
    /// The name it was started with.
    pub name: String,
}

impl Worker {
    /// Starts a worker with `env` (the backend's settings) and no backend setting inherited
    /// from this process.
    pub fn spawn(name: &str, env: &[(&str, String)]) -> Self {
        Self::spawn_program(env!("CARGO_BIN_EXE_rk-worker"), name, env)
    }

    /// Starts `program` (a worker binary of this package) as [`spawn`](Worker::spawn) does.
    pub fn spawn_program(program: &str, name: &str, env: &[(&str, String)]) -> Self {
        let log = std::env::temp_dir().join(format!("rk-worker-{}-{name}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new(program);
        for (name, _) in std::env::vars() {
            if name.starts_with("KAFKA_")
                || name.starts_with("REDIS_")
                || name.starts_with("POSTGRES_")
                || name == "DATABASE_URL"
                || name == "RETRY_KAFKA_BACKEND"
            {
                command.env_remove(name);
            }
        }
        command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("WORKER_LOG", &log)
            // RK_WORKER_LOG=debug (say) shows what the workers do.
            .env(
                "RUST_LOG",
                std::env::var("RK_WORKER_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Dies with this test process, however it ends.
        let child = retry_kafka_suite::spawn_dying_with_this_process(command).expect("start rk-worker");
        Worker {
            child,
            log,
            name: name.to_owned(),
        }
    }

    /// Every line of the worker's log: one per attempt finished.
    pub fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // A line the worker is writing as this reads may be there in part: up to the last
        // newline only.
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete.lines().map(str::to_owned).collect()
    }

    /// `(id, attempt, ok)` for every attempt this worker finished.
    pub fn attempts(&self) -> Vec<(u64, u32, bool)> {
        self.lines()
            .iter()
            .map(|line| {
                let mut parts = line.split(' ');
                let id = parts.next().unwrap().parse().unwrap();
                let attempt = parts.next().unwrap().parse().unwrap();
                (id, attempt, parts.next() == Some("ok"))
            })
            .collect()
    }

    /// Waits until this worker has finished `count` attempts.
    pub async fn wait_for_attempts(&self, count: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.attempts().len() < count {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().unwrap();
    }

    /// Stops the worker as a service manager does: SIGTERM, then waits for it to drain and
    /// exit (30 s at most, then SIGKILL).
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                eprintln!("a worker did not stop within 30 s of SIGTERM; killing it");
                self.kill();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

pub async fn publish_orders<H: Harness>(harness: &H, ids: std::ops::Range<u64>) {
    let producer = Producer::new(harness.backend());
    for id in ids {
        producer.send(&Order { id }).await.unwrap();
    }
}

/// Waits until every order is done: succeeded (by any worker) or dead-lettered. Returns the
/// dead-lettered ids and how many successful attempts were repeats.
pub async fn wait_until_done<H: Harness>(
    harness: &H,
    workers: &[&Worker],
    count: u64,
) -> (HashSet<u64>, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let attempts: Vec<(u64, u32, bool)> = workers.iter().flat_map(|w| w.attempts()).collect();
        let succeeded: HashSet<u64> = attempts.iter().filter(|a| a.2).map(|a| a.0).collect();
        let dead: HashSet<u64> = harness.records(DLQ).await.iter().map(order_id).collect();
        let missing: Vec<u64> = (0..count)
            .filter(|id| !succeeded.contains(id) && !dead.contains(id))
            .collect();
        if missing.is_empty() {
            let successes = attempts.iter().filter(|a| a.2).count();
            return (dead, successes - succeeded.len());
        }
        assert!(Instant::now() < deadline, "orders never finished: {missing:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `id` of a JSON event, as the workers' events and the tests' carry it.
pub fn order_id(record: &Record) -> u64 {
    let event: serde_json::Value = serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
    event["id"].as_u64().unwrap()
}

/// Waits until the garbage written by a foreign client is in the DLQ and the valid order 1
/// published after it was handled (the consumer carried on); returns the one dead letter.
pub async fn garbage_dead_letter<H: Harness>(harness: &H, worker: &Worker) -> Record {
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let records = harness.records(DLQ).await;
        if !records.is_empty() && worker.attempts().iter().any(|a| a.0 == 1 && a.2) {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "garbage never reached the DLQ, or order 1 was never handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    dead.into_iter().next().unwrap()
}

/// The orders the worker's handler rejects as invalid.
pub fn expected_dead(count: u64) -> HashSet<u64> {
    (0..count).filter(|id| id % 50 == 13).collect()
}

/// Publishes 400 orders, SIGKILLs the first worker after 100 attempts and starts a second:
/// every order is done, exactly the invalid ones are dead-lettered, and fewer than
/// `max_repeats` successes are repeated. Returns the workers, still running, for checks of
/// their own.
pub async fn a_killed_worker_restarted_loses_nothing<H: Harness>(
    harness: &H,
    spawn: impl Fn(&str) -> Worker,
    max_repeats: usize,
) -> [Worker; 2] {
    a_killed_worker_restarted_loses_nothing_within(harness, spawn, |_| max_repeats).await
}

/// [`a_killed_worker_restarted_loses_nothing`] with the bound on repeats made from the first
/// worker's pace before the kill, in attempts per second.
pub async fn a_killed_worker_restarted_loses_nothing_within<H: Harness>(
    harness: &H,
    spawn: impl Fn(&str) -> Worker,
    max_repeats: impl FnOnce(f64) -> usize,
) -> [Worker; 2] {
    harness.create_topic(TOPIC, 4).await;
    publish_orders(harness, 0..400).await;
    let mut first = spawn("first");
    first
        .wait_for_attempts(20, "the first worker did not get going")
        .await;
    let (paced_from, pace_start) = (first.attempts().len(), Instant::now());
    first
        .wait_for_attempts(100, "the first worker stopped before 100 attempts")
        .await;
    first.kill();
    let done_before_kill = first.attempts().len();
    let pace = (done_before_kill - paced_from) as f64 / pace_start.elapsed().as_secs_f64();
    let max_repeats = max_repeats(pace);

    let second = spawn("second");
    let (dead, repeats) = wait_until_done(harness, &[&first, &second], 400).await;
    assert_eq!(
        dead,
        expected_dead(400),
        "exactly the invalid orders are dead-lettered"
    );
    eprintln!(
        "SIGKILL after {done_before_kill} attempts ({pace:.0}/s): every order done; {repeats} successful attempts \
         were repeats (bound {max_repeats}), {} dead letters for {} invalid orders",
        harness.records(DLQ).await.len(),
        dead.len()
    );
    assert!(repeats < max_repeats, "{repeats} repeats, bound {max_repeats}");
    [first, second]
}

/// Two workers share the group until both have work; one is killed, 200 more orders are
/// published, and the survivor does every one of them. Returns the workers, the survivor still
/// running, for checks of their own, and how many orders were published.
pub async fn a_survivor_finishes_what_a_killed_worker_left<H: Harness>(
    harness: &H,
    spawn: impl Fn(&str) -> Worker,
) -> ([Worker; 2], u64) {
    harness.create_topic(TOPIC, 4).await;
    let mut first = spawn("a");
    let second = spawn("b");
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.attempts().is_empty() || second.attempts().is_empty() {
        assert!(Instant::now() < deadline, "both workers never got partitions");
        publish_orders(harness, published..published + 20).await;
        published += 20;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.kill();
    publish_orders(harness, published..published + 200).await;
    published += 200;
    let (dead, repeats) = wait_until_done(harness, &[&first, &second], published).await;
    assert_eq!(dead, expected_dead(published));
    let by_survivor: HashSet<u64> = second.attempts().iter().map(|a| a.0).collect();
    let after_kill: HashSet<u64> = (published - 200..published).collect();
    assert!(
        after_kill.is_subset(&by_survivor),
        "the survivor did all the work after the kill"
    );
    eprintln!("two workers, one killed: {published} orders done, {repeats} repeated successes");
    ([first, second], published)
}

/// What a storm of workers left: every worker that ran (those still running first, one per
/// slot, started again where a slot was empty at the end) and how often one joined, left
/// (SIGTERM) or was killed (SIGKILL).
pub struct Storm {
    pub workers: Vec<Worker>,
    /// What happened when (since `started`), for a failure's message.
    pub timeline: Vec<String>,
    pub joins: u32,
    pub leaves: u32,
    pub kills: u32,
}

/// Three worker slots, from `started` for `length`: every `every` the next slot's worker
/// leaves (SIGTERM and SIGKILL in turn) or, when the slot is empty, one joins. `spawn` starts
/// a worker by name.
pub async fn storm(
    spawn: impl Fn(&str) -> Worker,
    started: Instant,
    length: Duration,
    every: Duration,
) -> Storm {
    let mut slots: [Option<Worker>; 3] = [Some(spawn("w0")), Some(spawn("w1")), Some(spawn("w2"))];
    let mut retired: Vec<Worker> = Vec::new();
    let mut timeline = Vec::new();
    let (mut joins, mut leaves, mut kills) = (0, 0, 0);
    let mut step = 0;
    while started.elapsed() < length {
        tokio::time::sleep(every).await;
        let slot = step % 3;
        match slots[slot].take() {
            Some(mut worker) => {
                // Leaving in turn politely (SIGTERM: the app drains and leaves its group) and
                // not (SIGKILL: the group notices when the session times out).
                let at = started.elapsed();
                if (leaves + kills) % 2 == 0 {
                    tokio::task::block_in_place(|| worker.terminate());
                    leaves += 1;
                    timeline.push(format!(
                        "{at:.1?} SIGTERM {} (left at {:.1?})",
                        worker.name,
                        started.elapsed()
                    ));
                } else {
                    worker.kill();
                    kills += 1;
                    timeline.push(format!("{at:.1?} SIGKILL {}", worker.name));
                }
                retired.push(worker);
            }
            None => {
                let name = format!("w{slot}-{step}");
                timeline.push(format!("{:.1?} start {name}", started.elapsed()));
                slots[slot] = Some(spawn(&name));
                joins += 1;
            }
        }
        step += 1;
    }
    let running = slots
        .into_iter()
        .enumerate()
        .map(|(slot, worker)| worker.unwrap_or_else(|| spawn(&format!("w{slot}-final"))));
    Storm {
        workers: running.chain(retired).collect(),
        timeline,
        joins,
        leaves,
        kills,
    }
}
