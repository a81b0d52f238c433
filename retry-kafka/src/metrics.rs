//! What the consumers report through the [`metrics`] facade: the metric names, their labels,
//! and the handles each level registers once at start and bumps per message.
//!
//! Every handle is registered when the app starts, so the per-message path only bumps an
//! atomic behind a handle: no lookup, no allocation, no lock. Without a recorder the facade
//! hands out no-op handles and a bump is a branch on `None`. A recorder of your own must be
//! installed before [`App::start`](crate::App::start) to receive them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use tokio::sync::Notify;

use crate::breaker::BreakerHandles;
use crate::clock::now_ms;
use crate::failure::ErrorKind;
use crate::health::ConsumerHealth;
use crate::policy::Topology;
use crate::stats::Counters;

/// Attempts that succeeded. Labels: `topic`, `group`, `level`.
pub(crate) const HANDLED: &str = "retry_kafka_handled_total";
/// Attempts that failed. Labels: `topic`, `group`, `level`, `kind`.
pub(crate) const FAILED: &str = "retry_kafka_failed_total";
/// Messages durably handed to a retry level. Labels: `topic`, `group`, `level` (the level they
/// were handed to, 1-based).
pub(crate) const RETRIED: &str = "retry_kafka_retried_total";
/// Messages durably written to the dead-letter queue. Labels: `topic`, `group`.
pub(crate) const DEAD_LETTERED: &str = "retry_kafka_dead_lettered_total";
/// Replayed dead letters that failed again, durably written to the parking queue. Labels:
/// `topic`, `group`.
pub(crate) const PARKED: &str = "retry_kafka_parked_total";
/// Messages dropped after their last attempt (`on_exhausted = "drop"`). Labels: `topic`,
/// `group`.
pub(crate) const DROPPED: &str = "retry_kafka_dropped_total";
/// Attempts under way. Labels: `topic`, `group`, `level`.
pub(crate) const IN_FLIGHT: &str = "retry_kafka_in_flight";
/// How long an attempt took, in seconds (decode, handler, timeout). Labels: `topic`, `group`,
/// `level`.
pub(crate) const HANDLER_DURATION: &str = "retry_kafka_handler_duration_seconds";
/// How late a retry attempt started: its start minus its due time (`rk-due-at`), in seconds.
/// Labels: `topic`, `group`, `level` (1-based; the main topic has no due time).
pub(crate) const RETRY_LATENESS: &str = "retry_kafka_retry_lateness_seconds";
/// Age of a message when it reached the dead-letter queue: now minus its original timestamp
/// (or its first failure when the broker gave none), in seconds. Labels: `topic`, `group`.
pub(crate) const DEAD_LETTER_AGE: &str = "retry_kafka_dead_letter_age_seconds";
/// Partitions assigned to this process's consumers. Labels: `topic`, `group`, `level`.
pub(crate) const ASSIGNED_PARTITIONS: &str = "retry_kafka_assigned_partitions";
/// Partitions held (not fetched) because too many records wait in memory. Labels: `topic`,
/// `group`, `level`.
pub(crate) const HELD_PARTITIONS: &str = "retry_kafka_held_partitions";
/// Messages of the level's topic its group has not committed, as the backend reports it: asked
/// every second while the level settles messages and for two seconds after its last (so it
/// follows commits within about 3 s), and every `lag_interval` (15 s) besides. Labels:
/// `topic`, `group`, `level`.
pub(crate) const CONSUMER_LAG: &str = "retry_kafka_consumer_lag";
/// A handler's circuit breaker: 0 closed, 1 open, 2 half-open. Labels: `topic`, `group`.
pub(crate) const BREAKER_STATE: &str = "retry_kafka_breaker_state";
/// A handler's circuit breaker's transitions. Labels: `topic`, `group`, `to` (`open`,
/// `half-open`, `closed`).
pub(crate) const BREAKER_TRANSITIONS: &str = "retry_kafka_breaker_transitions_total";
/// Keys a key-ordered handler holds (a record of theirs on a retry level, or held back).
/// Labels: `topic`, `group`.
pub(crate) const HELD_KEYS: &str = "retry_kafka_held_keys";
/// Records of a key-ordered handler held back behind their key's retry, not attempted yet.
/// Labels: `topic`, `group`.
pub(crate) const HELD_RECORDS: &str = "retry_kafka_held_records";
/// How long a key-ordered handler's key was held, from its first retry to its last held
/// record's conclusion, in seconds. Labels: `topic`, `group`.
pub(crate) const KEY_HOLD: &str = "retry_kafka_key_hold_seconds";
/// Records of a key-ordered handler that failed for the last time and hold their key until an
/// operator replays or discards them (`on_dead_letter = "hold_key"`): alert on it above 0.
/// Labels: `topic`, `group`.
pub(crate) const DEAD_HELD: &str = "retry_kafka_dead_held_records";

/// Every kind in the order of [`kind_index`].
const KINDS: [ErrorKind; 5] = [
    ErrorKind::Transient,
    ErrorKind::Permanent,
    ErrorKind::Decode,
    ErrorKind::Panic,
    ErrorKind::Timeout,
];

fn kind_index(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::Transient => 0,
        ErrorKind::Permanent => 1,
        ErrorKind::Decode => 2,
        ErrorKind::Panic => 3,
        ErrorKind::Timeout => 4,
    }
}

/// Registers the metrics' help texts with the installed recorder (at every start; idempotent).
pub(crate) fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HANDLED, "Attempts that succeeded");
    describe_counter!(FAILED, "Attempts that failed, by error kind");
    describe_counter!(RETRIED, "Messages durably handed to a retry level");
    describe_counter!(DEAD_LETTERED, "Messages durably written to the dead-letter queue");
    describe_counter!(
        PARKED,
        "Replayed dead letters that failed again, written to the parking queue"
    );
    describe_counter!(DROPPED, "Messages dropped after their last attempt");
    describe_gauge!(IN_FLIGHT, "Attempts under way");
    describe_histogram!(HANDLER_DURATION, Unit::Seconds, "Duration of one attempt");
    describe_histogram!(
        RETRY_LATENESS,
        Unit::Seconds,
        "Start of a retry attempt minus its due time"
    );
    describe_histogram!(
        DEAD_LETTER_AGE,
        Unit::Seconds,
        "Age of a message when dead-lettered"
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Partitions assigned to this process's consumers"
    );
    describe_gauge!(
        HELD_PARTITIONS,
        "Partitions held while their records wait in memory"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Messages the group has not committed yet; follows commits within about 3 s while \
         messages settle, else refreshed every lag_interval (15 s by default)"
    );
    describe_gauge!(
        BREAKER_STATE,
        "A handler's circuit breaker: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(BREAKER_TRANSITIONS, "A handler's circuit breaker's transitions");
    describe_gauge!(
        HELD_KEYS,
        "Keys of a key-ordered handler held behind a record on a retry level"
    );
    describe_gauge!(
        HELD_RECORDS,
        "Records of a key-ordered handler held back behind their key's retry"
    );
    describe_histogram!(KEY_HOLD, Unit::Seconds, "How long a key was held");
    describe_gauge!(
        DEAD_HELD,
        "Records that failed for the last time and hold their key until replayed or discarded"
    );
}

/// The metric handles of a key-ordered handler's holds, on its main topic in `group`.
pub(crate) fn key_hold_handles(main_topic: &str, group: &str) -> KeyHoldHandles {
    let labels = [("topic", main_topic.to_owned()), ("group", group.to_owned())];
    KeyHoldHandles {
        keys: ::metrics::gauge!(HELD_KEYS, &labels),
        records: ::metrics::gauge!(HELD_RECORDS, &labels),
        dead: ::metrics::gauge!(DEAD_HELD, &labels),
        hold: ::metrics::histogram!(KEY_HOLD, &labels),
    }
}

/// A key-ordered handler's hold metrics: keys held, records held back, how long holds last.
pub(crate) struct KeyHoldHandles {
    pub(crate) keys: Gauge,
    pub(crate) records: Gauge,
    pub(crate) dead: Gauge,
    pub(crate) hold: Histogram,
}

impl Default for KeyHoldHandles {
    /// Handles that record nothing.
    fn default() -> Self {
        KeyHoldHandles {
            keys: Gauge::noop(),
            records: Gauge::noop(),
            dead: Gauge::noop(),
            hold: Histogram::noop(),
        }
    }
}

/// The metric handles of a handler's circuit breaker, on its main topic in `group`.
pub(crate) fn breaker_handles(main_topic: &str, group: &str) -> BreakerHandles {
    let labels = [("topic", main_topic.to_owned()), ("group", group.to_owned())];
    let entered = |to: &'static str| {
        let mut labels = labels.to_vec();
        labels.push(("to", to.to_owned()));
        ::metrics::counter!(BREAKER_TRANSITIONS, &labels)
    };
    BreakerHandles {
        state: ::metrics::gauge!(BREAKER_STATE, &labels),
        entered: [entered("open"), entered("half-open"), entered("closed")],
    }
}

/// One level's handles and health, and its handler's [`Counters`] (what `App::stats` shows),
/// registered once at start; the consumer loop calls these hooks and nothing else. Only the
/// series the handler can have are registered (a registered series is exported, 0 or not): no
/// `retried` on its last level, no lateness on the main topic, dead letters and parked
/// entries only with a dead-letter queue, drops only without one.
pub(crate) struct LevelMetrics {
    level: u32,
    counters: Arc<Counters>,
    handled: Counter,
    /// One per [`ErrorKind`], in the order of [`kind_index`].
    failed: [Counter; 5],
    /// Handed on to the next level (`level + 1`), the only level a failure goes to; none on
    /// the last level.
    retried: Option<Counter>,
    dead_lettered: Option<Counter>,
    parked: Option<Counter>,
    dropped: Option<Counter>,
    in_flight: Gauge,
    /// What `in_flight` holds for this consumer, to take back what is left when it stops.
    running: AtomicU64,
    duration: Histogram,
    /// On retry levels only: the main topic has no due time.
    lateness: Option<Histogram>,
    dead_letter_age: Option<Histogram>,
    assigned: Gauge,
    held: Gauge,
    /// The level's lag, when the app reports it.
    lag: Option<LevelLag>,
    pub(crate) health: Arc<ConsumerHealth>,
}

/// A level's lag gauge, and what tells the lag task that the level settled messages (their
/// acknowledgements, then commits, follow: its lag is about to move).
struct LevelLag {
    gauge: Gauge,
    /// Set on every settled message, cleared by the lag task when it looks.
    moved: AtomicBool,
    /// The lag task's, shared by every level: woken when a level's `moved` is set.
    wake: Arc<Notify>,
}

impl LevelMetrics {
    /// Registers the handles of `level` of the handler whose topics are `topology`, in
    /// `group`; with `lag` (the lag task's wake-up), its lag gauge too.
    pub(crate) fn new(
        topology: &Topology,
        group: &str,
        level: u32,
        counters: Arc<Counters>,
        health: Arc<ConsumerHealth>,
        lag: Option<Arc<Notify>>,
    ) -> Self {
        let main_topic = topology.main.as_str();
        let labels = [
            ("topic", main_topic.to_owned()),
            ("group", group.to_owned()),
            ("level", level.to_string()),
        ];
        let dead_letter = [("topic", main_topic.to_owned()), ("group", group.to_owned())];
        let next = [
            ("topic", main_topic.to_owned()),
            ("group", group.to_owned()),
            ("level", (level + 1).to_string()),
        ];
        let failed = KINDS.map(|kind| {
            let mut labels = labels.to_vec();
            labels.push(("kind", kind.as_str().to_owned()));
            counter!(FAILED, &labels)
        });
        let keeps_dead_letters = topology.dead_letter.is_some();
        let is_last = level as usize >= topology.retries.len();
        Self {
            level,
            counters,
            handled: counter!(HANDLED, &labels),
            failed,
            retried: (!is_last).then(|| counter!(RETRIED, &next)),
            dead_lettered: keeps_dead_letters.then(|| counter!(DEAD_LETTERED, &dead_letter)),
            parked: keeps_dead_letters.then(|| counter!(PARKED, &dead_letter)),
            dropped: (!keeps_dead_letters).then(|| counter!(DROPPED, &dead_letter)),
            in_flight: gauge!(IN_FLIGHT, &labels),
            running: AtomicU64::new(0),
            duration: histogram!(HANDLER_DURATION, &labels),
            lateness: (level > 0).then(|| histogram!(RETRY_LATENESS, &labels)),
            dead_letter_age: keeps_dead_letters.then(|| histogram!(DEAD_LETTER_AGE, &dead_letter)),
            assigned: gauge!(ASSIGNED_PARTITIONS, &labels),
            held: gauge!(HELD_PARTITIONS, &labels),
            // Registered only when reported: a gauge never set would export a false 0.
            lag: lag.map(|wake| LevelLag {
                gauge: gauge!(CONSUMER_LAG, &labels),
                moved: AtomicBool::new(false),
                wake,
            }),
            health,
        }
    }

    /// A message settled (handled, handed on or dropped): the level's lag is about to move.
    /// Costs a relaxed load per message; the lag task is woken once until it looks again.
    fn settled(&self) {
        if let Some(lag) = &self.lag {
            if !lag.moved.load(Relaxed) && !lag.moved.swap(true, Relaxed) {
                lag.wake.notify_one();
            }
        }
    }

    /// Whether the level settled messages since the lag task last asked (and forgets it).
    pub(crate) fn take_lag_moved(&self) -> bool {
        self.lag
            .as_ref()
            .is_some_and(|lag| lag.moved.swap(false, Relaxed))
    }

    /// Sets the level's lag gauge.
    pub(crate) fn set_lag(&self, messages: u64) {
        if let Some(lag) = &self.lag {
            lag.gauge.set(messages as f64);
        }
    }

    /// A fetch returned something: the consumer is polling.
    pub(crate) fn polled(&self) {
        self.health.polled(now_ms());
    }

    /// An attempt starts: it is in flight, and on a retry level (`due` is its `rk-due-at`, as
    /// the loop read it), how late it is.
    pub(crate) fn started(&self, due: Option<i64>) {
        self.in_flight.increment(1.0);
        self.running.fetch_add(1, Relaxed);
        if let (Some(due), Some(lateness)) = (due, &self.lateness) {
            lateness.record(seconds(now_ms() - due));
        }
    }

    /// An attempt that started at `started` finished (whatever its outcome).
    pub(crate) fn concluded(&self, started: Instant) {
        self.in_flight.decrement(1.0);
        self.running.fetch_sub(1, Relaxed);
        self.duration.record(started.elapsed().as_secs_f64());
    }

    pub(crate) fn handled(&self) {
        self.counters.succeeded();
        self.handled.increment(1);
        self.settled();
    }

    pub(crate) fn failed(&self, kind: ErrorKind) {
        self.counters.failed();
        self.failed[kind_index(kind)].increment(1);
    }

    pub(crate) fn dropped(&self) {
        self.counters.dropped();
        bump(&self.dropped);
        self.settled();
    }

    /// A failure was durably written to retry `level`.
    pub(crate) fn retried(&self, level: u32) {
        debug_assert_eq!(level, self.level + 1, "a failure goes to the next level");
        self.counters.retried(level);
        bump(&self.retried);
        self.settled();
    }

    /// A failure was durably written to the dead-letter queue; `failing_since_ms` is the
    /// message's original timestamp, or else its first failure (epoch ms).
    pub(crate) fn dead_lettered(&self, failing_since_ms: Option<i64>) {
        self.counters.dead_lettered();
        bump(&self.dead_lettered);
        if let (Some(since), Some(age)) = (failing_since_ms, &self.dead_letter_age) {
            age.record(seconds(now_ms() - since));
        }
        self.settled();
    }

    /// A replayed dead letter that failed again was durably written to the parking queue.
    pub(crate) fn parked(&self) {
        self.counters.parked();
        bump(&self.parked);
        self.settled();
    }

    pub(crate) fn assigned(&self, partitions: &[u32]) {
        let added = self.health.assigned(partitions);
        self.assigned.increment(added as f64);
    }

    pub(crate) fn revoked(&self, partitions: &[u32]) {
        let (assigned, held) = self.health.revoked(partitions);
        self.assigned.decrement(assigned as f64);
        self.held.decrement(held as f64);
    }

    pub(crate) fn held(&self, partition: u32) {
        if self.health.held(partition) {
            self.held.increment(1.0);
        }
    }

    pub(crate) fn resumed(&self, partition: u32) {
        if self.health.resumed(partition) {
            self.held.decrement(1.0);
        }
    }

    /// The consumer stopped (cleanly or not): it holds no partition and runs nothing any more.
    pub(crate) fn stopped(&self, error: Option<String>) {
        let (assigned, held) = self.health.stopped(error);
        self.assigned.decrement(assigned as f64);
        self.held.decrement(held as f64);
        self.in_flight.decrement(self.running.swap(0, Relaxed) as f64);
    }
}

/// Adds one to a counter the handler has.
fn bump(counter: &Option<Counter>) {
    if let Some(counter) = counter {
        counter.increment(1);
    }
}

/// Milliseconds as seconds, never negative (an attempt that started early is 0 s late).
fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_counter() {
        let indexes: Vec<usize> = KINDS.iter().map(|&kind| kind_index(kind)).collect();
        assert_eq!(indexes, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn lateness_is_never_negative() {
        assert_eq!(seconds(-250), 0.0);
        assert_eq!(seconds(1500), 1.5);
    }
}
