//! Health: what each consumer is doing, for the application to query and for `/healthz` and
//! `/readyz`.
//!
//! The state changes only on rare events (start, stop, assignment, hold, resume), under a lock
//! of its own per consumer; the one per-message write, the time of the last fetch, is a
//! relaxed atomic store.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::breaker::{BreakerState, CircuitBreaker};

use crate::shutdown::ShutdownHandle;

/// The health of every consumer of an app: [`App::health`](crate::App::health) and
/// [`Running::health`](crate::app::Running::health). Cheap to clone; a report is a snapshot.
///
/// ```
/// use retry_kafka::prelude::*;
/// use retry_kafka::app::ConsumerState;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # #[event(topic = "orders")]
/// # struct OrderPlaced { order_id: u64 }
///
/// #[retry_handler(group = "billing", retries = ["1s"], dlq)]
/// async fn charge(order: OrderPlaced) -> Result<(), HandlerError> { Ok(()) }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> retry_kafka::Result<()> {
/// let app = App::builder().backend(InMemory::new()).build()?;
/// let health = app.health();
/// assert!(!health.report().is_ready()); // nothing started yet
/// let running = app.start().await?;
/// let report = health.report();
/// assert!(report.is_ready() && report.is_live());
/// // One consumer per level: the main topic and retry level 1.
/// assert_eq!(report.consumers.len(), 2);
/// assert_eq!(report.consumers[1].topic, "orders.billing.retry.1");
/// assert_eq!(report.consumers[1].state, ConsumerState::Running);
/// running.shutdown().await?;
/// assert!(!health.report().is_ready());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Health {
    consumers: Arc<[Arc<ConsumerHealth>]>,
    shutdown: ShutdownHandle,
}

impl Health {
    pub(crate) fn new(consumers: Vec<Arc<ConsumerHealth>>, shutdown: ShutdownHandle) -> Self {
        Self {
            consumers: consumers.into(),
            shutdown,
        }
    }

    /// Every consumer's state now.
    pub fn report(&self) -> HealthReport {
        HealthReport {
            shutting_down: self.shutdown.is_shutdown(),
            consumers: self.consumers.iter().map(|c| c.report()).collect(),
        }
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.report().fmt(f)
    }
}

/// A snapshot of every consumer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Whether shutdown was requested.
    pub shutting_down: bool,
    /// One per handler and level, in the order the app starts them.
    pub consumers: Vec<ConsumerReport>,
}

impl HealthReport {
    /// Ready (`/readyz` answers 200): every consumer has started, none has stopped, and
    /// shutdown was not requested.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down && self.consumers.iter().all(|c| c.state == ConsumerState::Running)
    }

    /// Live (`/healthz` answers 200): no consumer has failed. A consumer that failed stays
    /// stopped until the process restarts, so restarting is what helps. Starting, idle and
    /// draining consumers are live.
    pub fn is_live(&self) -> bool {
        !self
            .consumers
            .iter()
            .any(|c| matches!(c.state, ConsumerState::Failed { .. }))
    }

    /// Why the app is not ready, one line per reason; empty when it is.
    ///
    /// ```
    /// use retry_kafka::app::HealthReport;
    /// # fn show(report: HealthReport) {
    /// for reason in report.not_ready_reasons() {
    ///     eprintln!("not ready: {reason}");
    /// }
    /// # }
    /// ```
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.shutting_down {
            reasons.push("shutting down".to_owned());
        }
        for consumer in &self.consumers {
            let what = match &consumer.state {
                ConsumerState::Running => continue,
                ConsumerState::Starting => "has not started".to_owned(),
                ConsumerState::Stopped => "stopped".to_owned(),
                ConsumerState::Failed { error } => format!("failed: {error}"),
            };
            reasons.push(format!("{consumer} {what}"));
        }
        reasons
    }

    /// The handlers whose circuit breaker is not closed (open or half-open), once each: their
    /// dependency is down, or being probed.
    pub fn open_breakers(&self) -> Vec<&'static str> {
        let mut handlers: Vec<&'static str> = self
            .consumers
            .iter()
            .filter(|c| c.breaker.is_some_and(|b| b != BreakerState::Closed))
            .map(|c| c.handler)
            .collect();
        handlers.dedup();
        handlers
    }

    /// The report as JSON, as `/healthz` and `/readyz` answer it: `ready`, `live`,
    /// `shutting_down`, `reasons` (why not ready), `open_breakers` (the handlers whose
    /// breaker is open or half-open) and `consumers` (each with `handler`, `topic`, `group`,
    /// `level`, `state`, `error` when failed, `assigned`, `held`, `last_poll_ms`, `breaker`,
    /// `commits_behind`).
    ///
    /// ```
    /// # fn show(report: retry_kafka::app::HealthReport) {
    /// let body = report.to_json();
    /// assert!(body.starts_with("{"));
    /// # }
    /// ```
    pub fn to_json(&self) -> String {
        let consumers: Vec<serde_json::Value> = self
            .consumers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "handler": c.handler,
                    "topic": c.topic,
                    "group": c.group,
                    "level": c.level,
                    "state": c.state.as_str(),
                    "error": match &c.state {
                        ConsumerState::Failed { error } => Some(error.as_str()),
                        _ => None,
                    },
                    "assigned": c.assigned,
                    "held": c.held,
                    "last_poll_ms": c.last_poll_ms,
                    "breaker": c.breaker.map(|b| b.as_str()),
                    "commits_behind": c.commits_behind,
                })
            })
            .collect();
        serde_json::json!({
            "ready": self.is_ready(),
            "live": self.is_live(),
            "shutting_down": self.shutting_down,
            "reasons": self.not_ready_reasons(),
            "open_breakers": self.open_breakers(),
            "consumers": consumers,
        })
        .to_string()
    }
}

/// One consumer: a handler's main topic or one of its retry levels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerReport {
    /// The handler's full name.
    pub handler: &'static str,
    /// The topic this consumer reads (the main topic on level 0, else the retry topic).
    pub topic: String,
    /// The handler's consumer group.
    pub group: String,
    /// 0 for the main topic, `n` for retry level `n`.
    pub level: u32,
    /// Whether it runs, and why it stopped.
    pub state: ConsumerState,
    /// Partitions assigned to it, ascending.
    pub assigned: Vec<u32>,
    /// Partitions it holds (stopped fetching while their records wait in memory), ascending.
    pub held: Vec<u32>,
    /// When a fetch last returned something (a record or an assignment change), epoch ms;
    /// `None` before the first. An idle topic delivers nothing, so this ages while all is well.
    pub last_poll_ms: Option<i64>,
    /// The handler's circuit breaker (`breaker` on the handler), shared by its consumers;
    /// `None` without one. An open breaker leaves the app ready and live: restarting or
    /// unrouting the consumer does not bring its dependency back.
    pub breaker: Option<BreakerState>,
    /// It starts no attempt because the work it settled waits past its bound for a commit
    /// (Kafka, the broker gone: `KAFKA_AT_RISK_MS`); it goes on once commits get through. Like
    /// an open breaker, it leaves the app ready and live: a restart would not bring the broker
    /// back, and would run that work again.
    pub commits_behind: bool,
}

impl fmt::Display for ConsumerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "consumer of topic {:?} (level {}) in group {:?} ({})",
            self.topic, self.level, self.group, self.handler
        )
    }
}

/// Where a consumer is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerState {
    /// Not started yet (the app is provisioning topics and joining groups).
    Starting,
    /// Fetching and handling.
    Running,
    /// Stopped after a shutdown request, having drained.
    Stopped,
    /// Stopped on an error it cannot recover from; the app must be restarted.
    Failed {
        /// The error, as its message and causes.
        error: String,
    },
}

impl ConsumerState {
    /// `starting`, `running`, `stopped` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsumerState::Starting => "starting",
            ConsumerState::Running => "running",
            ConsumerState::Stopped => "stopped",
            ConsumerState::Failed { .. } => "failed",
        }
    }
}

/// One consumer's live state, shared by its loop (writer) and [`Health`] (reader).
pub(crate) struct ConsumerHealth {
    handler: &'static str,
    topic: String,
    group: String,
    level: u32,
    state: Mutex<State>,
    /// Epoch ms of the last fetch that returned something; 0 before the first.
    last_poll_ms: AtomicI64,
    /// The handler's breaker, once the app started it.
    breaker: OnceLock<Arc<CircuitBreaker>>,
    /// The consumer loop starts no attempt: its consumer's commits are behind.
    commits_behind: AtomicBool,
}

struct State {
    state: ConsumerState,
    assigned: BTreeSet<u32>,
    held: BTreeSet<u32>,
}

impl ConsumerHealth {
    pub(crate) fn new(handler: &'static str, topic: &str, group: &str, level: u32) -> Arc<Self> {
        Arc::new(Self {
            handler,
            topic: topic.to_owned(),
            group: group.to_owned(),
            level,
            state: Mutex::new(State {
                state: ConsumerState::Starting,
                assigned: BTreeSet::new(),
                held: BTreeSet::new(),
            }),
            last_poll_ms: AtomicI64::new(0),
            breaker: OnceLock::new(),
            commits_behind: AtomicBool::new(false),
        })
    }

    /// Whether the consumer loop starts no attempt because its commits are behind.
    pub(crate) fn commits_behind(&self, behind: bool) {
        self.commits_behind.store(behind, Relaxed);
    }

    /// Reports `breaker`'s state from now on.
    pub(crate) fn watch(&self, breaker: Arc<CircuitBreaker>) {
        let _ = self.breaker.set(breaker);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn polled(&self, now_ms: i64) {
        self.last_poll_ms.store(now_ms, Relaxed);
    }

    pub(crate) fn running(&self) {
        self.lock().state = ConsumerState::Running;
    }

    /// Returns how many of `partitions` were not assigned before.
    pub(crate) fn assigned(&self, partitions: &[u32]) -> usize {
        let mut state = self.lock();
        partitions.iter().filter(|&&p| state.assigned.insert(p)).count()
    }

    /// Returns how many of `partitions` were assigned, and how many of them held.
    pub(crate) fn revoked(&self, partitions: &[u32]) -> (usize, usize) {
        let mut state = self.lock();
        let assigned = partitions.iter().filter(|p| state.assigned.remove(p)).count();
        let held = partitions.iter().filter(|p| state.held.remove(p)).count();
        (assigned, held)
    }

    /// Returns whether `partition` was not held before.
    pub(crate) fn held(&self, partition: u32) -> bool {
        self.lock().held.insert(partition)
    }

    /// Returns whether `partition` was held.
    pub(crate) fn resumed(&self, partition: u32) -> bool {
        self.lock().held.remove(&partition)
    }

    /// Marks the consumer stopped (failed, with `error`); returns how many partitions it had
    /// assigned and held.
    pub(crate) fn stopped(&self, error: Option<String>) -> (usize, usize) {
        let mut state = self.lock();
        state.state = match error {
            Some(error) => ConsumerState::Failed { error },
            None => ConsumerState::Stopped,
        };
        let counts = (state.assigned.len(), state.held.len());
        state.assigned.clear();
        state.held.clear();
        counts
    }

    pub(crate) fn report(&self) -> ConsumerReport {
        let state = self.lock();
        let last_poll_ms = self.last_poll_ms.load(Relaxed);
        ConsumerReport {
            handler: self.handler,
            topic: self.topic.clone(),
            group: self.group.clone(),
            level: self.level,
            state: state.state.clone(),
            assigned: state.assigned.iter().copied().collect(),
            held: state.held.iter().copied().collect(),
            last_poll_ms: (last_poll_ms != 0).then_some(last_poll_ms),
            breaker: self.breaker.get().map(|breaker| breaker.state()),
            commits_behind: self.commits_behind.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(consumers: &[Arc<ConsumerHealth>]) -> Health {
        Health::new(consumers.to_vec(), ShutdownHandle::default())
    }

    #[test]
    fn ready_once_every_consumer_runs_and_not_after_one_fails() {
        let main = ConsumerHealth::new("app::charge", "orders", "billing", 0);
        let retry = ConsumerHealth::new("app::charge", "orders.billing.retry.1", "billing", 1);
        let health = health(&[main.clone(), retry.clone()]);
        main.running();
        let report = health.report();
        assert!(!report.is_ready());
        assert!(report.is_live());
        assert_eq!(
            report.not_ready_reasons(),
            vec!["consumer of topic \"orders.billing.retry.1\" (level 1) in group \"billing\" (app::charge) has not started"]
        );
        retry.running();
        assert!(health.report().is_ready());

        assert_eq!(retry.assigned(&[0, 1, 1, 2]), 3);
        assert!(retry.held(1));
        assert!(!retry.held(1));
        assert_eq!(retry.revoked(&[1, 5]), (1, 1));
        retry.polled(1_000);
        assert_eq!(retry.stopped(Some("the reader task ended".into())), (2, 0));
        let report = health.report();
        assert!(!report.is_ready());
        assert!(!report.is_live());
        assert_eq!(
            report.consumers[1],
            ConsumerReport {
                handler: "app::charge",
                topic: "orders.billing.retry.1".into(),
                group: "billing".into(),
                level: 1,
                state: ConsumerState::Failed {
                    error: "the reader task ended".into()
                },
                assigned: vec![],
                held: vec![],
                last_poll_ms: Some(1_000),
                breaker: None,
                commits_behind: false,
            }
        );
        assert_eq!(report.consumers[0].last_poll_ms, None);
    }

    #[test]
    fn shutting_down_is_live_but_not_ready() {
        let main = ConsumerHealth::new("app::charge", "orders", "billing", 0);
        let health = health(std::slice::from_ref(&main));
        main.running();
        health.shutdown.shutdown();
        let report = health.report();
        assert!(report.is_live());
        assert!(!report.is_ready());
        assert_eq!(report.not_ready_reasons(), vec!["shutting down"]);
        assert_eq!(
            report.to_json(),
            r#"{"consumers":[{"assigned":[],"breaker":null,"commits_behind":false,"error":null,"group":"billing","handler":"app::charge","held":[],"last_poll_ms":null,"level":0,"state":"running","topic":"orders"}],"live":true,"open_breakers":[],"ready":false,"reasons":["shutting down"],"shutting_down":true}"#
        );
    }
}
