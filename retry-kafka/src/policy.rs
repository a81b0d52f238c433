//! Retry policy shared by every backend: which level a failure goes to, when it is due, and
//! what the topics (or streams) of each level are called.

use std::time::Duration;

use crate::error::ConfigError;
use crate::failure::ErrorKind;
use crate::handlers::{HandlerSpec, OnExhausted};

/// What a topic is for in a handler's topology: the policy decides it, and every topic the
/// runtime names to a backend carries it (a [`Topic`](crate::backend::Topic)), wherever a
/// backend may treat topics differently: [`Tiered`](crate::backend::Tiered) keeps retry levels,
/// dead letters and parked entries in its retry store, Kafka may keep them on a cluster of their
/// own, Redis keeps a retry level's records in a delay set until due.
///
/// Also importable as `retry_kafka::backend::TopicRole` and `retry_kafka::app::TopicRole`.
///
/// ```
/// use retry_kafka::backend::TopicRole;
///
/// assert_eq!(TopicRole::of_level(0), TopicRole::Main);
/// assert_eq!(TopicRole::of_level(2), TopicRole::Retry { level: 2 });
/// assert!(TopicRole::DeadLetter.is_derived() && !TopicRole::Main.is_derived());
/// assert!(TopicRole::Parked.is_derived());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopicRole {
    /// A main topic: what producers write and a handler's group reads first.
    Main,
    /// Retry level `level` (1-based) of a handler.
    Retry {
        /// The level, 1 for the first retry.
        level: u32,
    },
    /// A handler's dead-letter queue.
    DeadLetter,
    /// A handler's parking queue: dead letters that were replayed and failed again, kept for
    /// a person instead of cycling through replays.
    Parked,
    /// A key-ordered handler's held records: later records of a key whose failed record
    /// waits on a retry level, waiting unattempted behind it (`ordering = "key"`).
    Held,
}

impl TopicRole {
    /// The role of a handler's level `level`: 0 is the main topic, `n` retry level `n`.
    pub fn of_level(level: u32) -> Self {
        match level {
            0 => TopicRole::Main,
            level => TopicRole::Retry { level },
        }
    }

    /// Whether the topic is a retry level, a dead-letter or a parking queue: written only by
    /// the runtime (and by the replay tool).
    pub fn is_derived(self) -> bool {
        !matches!(self, TopicRole::Main)
    }
}

/// Where a failed message goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// To retry level `level` (1-based), due `delay` after the failure.
    Retry {
        /// The level, 1 for the first retry.
        level: u32,
        /// The level's fixed delay.
        delay: Duration,
    },
    /// To the dead-letter queue.
    DeadLetter,
    /// To the parking queue: a replayed dead letter failed again, and waits for a person.
    Park,
    /// Nowhere: the handler chose `on_exhausted = "drop"`.
    Drop,
}

/// A handler's retry levels and what happens after the last one (see the unit test below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    delays: Vec<Duration>,
    on_exhausted: OnExhausted,
}

impl RetryPolicy {
    /// A policy with one level per delay.
    pub fn new(delays: impl IntoIterator<Item = Duration>, on_exhausted: OnExhausted) -> Self {
        Self {
            delays: delays.into_iter().collect(),
            on_exhausted,
        }
    }

    /// The policy a handler declared.
    pub fn of(spec: &HandlerSpec) -> Self {
        Self::new(spec.retries(), spec.on_exhausted())
    }

    /// The number of retry levels.
    pub fn levels(&self) -> u32 {
        self.delays.len() as u32
    }

    /// The delay of level `level` (1-based).
    pub fn delay(&self, level: u32) -> Option<Duration> {
        level
            .checked_sub(1)
            .and_then(|i| self.delays.get(i as usize))
            .copied()
    }

    /// Attempts in all: the main topic's plus one per level.
    pub fn max_attempts(&self) -> u32 {
        self.levels() + 1
    }

    /// Where a message goes after failing with `kind` on level `failed_level` (0 = main topic).
    /// `replays` is its `rk-replays`: a dead letter that was replayed and runs out of attempts
    /// again is parked rather than dead-lettered, so replays never cycle.
    pub fn next(&self, failed_level: u32, kind: ErrorKind, replays: u32) -> Step {
        if kind.is_retryable() {
            if let Some(delay) = self.delay(failed_level + 1) {
                return Step::Retry {
                    level: failed_level + 1,
                    delay,
                };
            }
        }
        match self.on_exhausted {
            OnExhausted::DeadLetter if replays > 0 => Step::Park,
            OnExhausted::DeadLetter => Step::DeadLetter,
            OnExhausted::Drop => Step::Drop,
        }
    }
}

/// How retry and dead-letter topics (Redis: streams) are named.
///
/// Patterns use `{topic}`, `{group}` and, for retries, `{level}`. Each must contain `{group}`
/// so two groups consuming one topic never share a retry level.
///
/// ```
/// use retry_kafka::app::TopicNaming;
/// let naming = TopicNaming::default();
/// assert_eq!(naming.retry("orders", "billing", 2), "orders.billing.retry.2");
/// assert_eq!(naming.dead_letter("orders", "billing"), "orders.billing.dlq");
/// assert_eq!(naming.parked("orders", "billing"), "orders.billing.parked");
/// assert_eq!(naming.held("orders", "billing"), "orders.billing.held");
///
/// let custom = TopicNaming::new("{group}-{topic}-retry-{level}", "{group}-{topic}-dlt")
///     .unwrap()
///     .with_parked("{group}-{topic}-parked")
///     .unwrap();
/// assert_eq!(custom.retry("orders", "billing", 1), "billing-orders-retry-1");
/// assert_eq!(custom.parked("orders", "billing"), "billing-orders-parked");
/// assert!(TopicNaming::new("{topic}.retry.{level}", "{topic}.dlq").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNaming {
    retry: String,
    dead_letter: String,
    parked: String,
    held: String,
}

impl Default for TopicNaming {
    fn default() -> Self {
        Self {
            retry: "{topic}.{group}.retry.{level}".into(),
            dead_letter: "{topic}.{group}.dlq".into(),
            parked: "{topic}.{group}.parked".into(),
            held: "{topic}.{group}.held".into(),
        }
    }
}

impl TopicNaming {
    /// Custom patterns for retry and dead-letter topics; checked for the placeholders they
    /// need. The parking queue keeps its default pattern unless [`with_parked`](Self::with_parked).
    pub fn new(retry: impl Into<String>, dead_letter: impl Into<String>) -> Result<Self, ConfigError> {
        let (retry, dead_letter) = (retry.into(), dead_letter.into());
        needs("retry_topic_pattern", &retry, &["{group}", "{level}"])?;
        needs("dead_letter_topic_pattern", &dead_letter, &["{group}"])?;
        Ok(Self {
            retry,
            dead_letter,
            ..Self::default()
        })
    }

    /// A custom pattern for the parking queue (default `{topic}.{group}.parked`).
    pub fn with_parked(mut self, parked: impl Into<String>) -> Result<Self, ConfigError> {
        let parked = parked.into();
        needs("parked_topic_pattern", &parked, &["{group}"])?;
        self.parked = parked;
        Ok(self)
    }

    /// The topic of retry level `level` (1-based).
    pub fn retry(&self, topic: &str, group: &str, level: u32) -> String {
        self.retry
            .replace("{topic}", topic)
            .replace("{group}", group)
            .replace("{level}", &level.to_string())
    }

    /// The dead-letter topic.
    pub fn dead_letter(&self, topic: &str, group: &str) -> String {
        self.dead_letter
            .replace("{topic}", topic)
            .replace("{group}", group)
    }

    /// The parking queue: replayed dead letters that failed again.
    pub fn parked(&self, topic: &str, group: &str) -> String {
        self.parked.replace("{topic}", topic).replace("{group}", group)
    }

    /// A custom pattern for a key-ordered handler's held topic (default `{topic}.{group}.held`).
    pub fn with_held(mut self, held: impl Into<String>) -> Result<Self, ConfigError> {
        let held = held.into();
        needs("held_topic_pattern", &held, &["{group}"])?;
        self.held = held;
        Ok(self)
    }

    /// A key-ordered handler's held topic: later records of keys whose failed record waits.
    pub fn held(&self, topic: &str, group: &str) -> String {
        self.held.replace("{topic}", topic).replace("{group}", group)
    }
}

fn needs(field: &'static str, pattern: &str, placeholders: &[&str]) -> Result<(), ConfigError> {
    match placeholders.iter().find(|p| !pattern.contains(**p)) {
        Some(missing) => Err(ConfigError::Invalid {
            field,
            reason: format!("pattern {pattern:?} lacks {missing}"),
        }),
        None => Ok(()),
    }
}

/// The topics one handler reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The main topic.
    pub main: String,
    /// Retry level topics, level 1 first.
    pub retries: Vec<String>,
    /// The dead-letter topic, when the handler keeps dead letters.
    pub dead_letter: Option<String>,
    /// The parking queue (replayed dead letters that failed again), with the dead-letter topic.
    pub parked: Option<String>,
    /// The held topic of a key-ordered handler (`ordering = "key"`).
    pub held: Option<String>,
}

impl Topology {
    /// The topology of `spec` under `naming`.
    pub fn of(spec: &HandlerSpec, naming: &TopicNaming) -> Self {
        let (topic, group) = (spec.topic(), spec.group());
        let keeps_dead_letters = spec.on_exhausted() == OnExhausted::DeadLetter;
        Self {
            main: topic.to_owned(),
            retries: (1..=spec.retries().len() as u32)
                .map(|level| naming.retry(topic, group, level))
                .collect(),
            dead_letter: keeps_dead_letters.then(|| naming.dead_letter(topic, group)),
            parked: keeps_dead_letters.then(|| naming.parked(topic, group)),
            held: spec.ordering().by_key().then(|| naming.held(topic, group)),
        }
    }

    /// The topic of `role`, if this handler has one.
    ///
    /// ```
    /// # use retry_kafka::app::Topology;
    /// # use retry_kafka::backend::TopicRole;
    /// let topology = Topology {
    ///     main: "orders".into(),
    ///     retries: vec!["orders.billing.retry.1".into()],
    ///     dead_letter: None,
    ///     parked: None,
    ///     held: None,
    /// };
    /// assert_eq!(topology.topic(TopicRole::Retry { level: 1 }), Some("orders.billing.retry.1"));
    /// assert_eq!(topology.topic(TopicRole::Retry { level: 2 }), None);
    /// assert_eq!(topology.topic(TopicRole::DeadLetter), None);
    /// ```
    pub fn topic(&self, role: TopicRole) -> Option<&str> {
        match role {
            TopicRole::Main => Some(&self.main),
            TopicRole::Retry { level } => level
                .checked_sub(1)
                .and_then(|i| self.retries.get(i as usize))
                .map(String::as_str),
            TopicRole::DeadLetter => self.dead_letter.as_deref(),
            TopicRole::Parked => self.parked.as_deref(),
            TopicRole::Held => self.held.as_deref(),
        }
    }

    /// The topic of level `level`: 0 is the main topic.
    pub fn level(&self, level: u32) -> &str {
        match level {
            0 => &self.main,
            n => &self.retries[n as usize - 1],
        }
    }

    /// The consumer group that reads the held topic: named like it, as a retry level's.
    pub fn held_group(&self) -> Option<&str> {
        self.held.as_deref()
    }

    /// The consumer group that reads level `level`: the handler's own group on the main topic,
    /// and on a retry level a group named like the level's topic.
    ///
    /// Each level is a group of its own, so a member joining or leaving one level never
    /// rebalances (and pauses) another, and every group reads exactly one topic.
    ///
    /// ```
    /// # use retry_kafka::app::Topology;
    /// let topology = Topology {
    ///     main: "orders".into(),
    ///     retries: vec!["orders.billing.retry.1".into()],
    ///     dead_letter: Some("orders.billing.dlq".into()),
    ///     parked: Some("orders.billing.parked".into()),
    ///     held: None,
    /// };
    /// assert_eq!(topology.consumer_group("billing", 0), "billing");
    /// assert_eq!(topology.consumer_group("billing", 1), "orders.billing.retry.1");
    /// ```
    pub fn consumer_group<'a>(&'a self, group: &'a str, level: u32) -> &'a str {
        match level {
            0 => group,
            n => derived_group(&self.retries[n as usize - 1]),
        }
    }

    /// Every topic the handler writes to, with its role.
    pub fn derived(&self) -> impl Iterator<Item = (&str, TopicRole)> {
        let retries = (1..)
            .zip(&self.retries)
            .map(|(level, topic)| (topic.as_str(), TopicRole::Retry { level }));
        let kept = [
            (self.dead_letter.as_deref(), TopicRole::DeadLetter),
            (self.parked.as_deref(), TopicRole::Parked),
            (self.held.as_deref(), TopicRole::Held),
        ];
        retries.chain(
            kept.into_iter()
                .filter_map(|(topic, role)| topic.map(|topic| (topic, role))),
        )
    }
}
/// The topics every handler of a program needs, as the program prints it for tools (see
/// [`App::print_plan`](crate::App::print_plan)): what `retry-kafka topics plan` and
/// `topics check` compare with a cluster. JSON, versioned by `schema`.
///
/// ```
/// use retry_kafka::app::TopologyPlan;
///
/// let plan: TopologyPlan = serde_json::from_str(r#"{
///   "schema": 1,
///   "handlers": [{
///     "handler": "billing::charge", "topic": "orders", "group": "billing",
///     "retries": [{"level": 1, "topic": "orders.billing.retry.1", "group": "orders.billing.retry.1", "delay_ms": 10000}],
///     "dead_letter": "orders.billing.dlq", "parked": "orders.billing.parked"
///   }]
/// }"#).unwrap();
/// assert_eq!(plan.handlers[0].retries[0].delay_ms, 10_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct TopologyPlan {
    /// The format's version: 1.
    pub schema: u32,
    /// One entry per handler.
    pub handlers: Vec<HandlerPlan>,
}

/// One handler's part of a [`TopologyPlan`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct HandlerPlan {
    /// The handler's full name.
    pub handler: String,
    /// Its main topic.
    pub topic: String,
    /// Its consumer group on the main topic.
    pub group: String,
    /// Its retry levels, level 1 first.
    pub retries: Vec<LevelPlan>,
    /// Its dead-letter queue, if it keeps dead letters.
    pub dead_letter: Option<String>,
    /// Its parking queue, if it keeps dead letters.
    pub parked: Option<String>,
    /// Its held topic, if it keeps each key's order (`ordering = "key"`); absent from plans
    /// of handlers that do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// One retry level of a [`HandlerPlan`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct LevelPlan {
    /// The level, 1 for the first retry.
    pub level: u32,
    /// The level's topic.
    pub topic: String,
    /// The consumer group that reads it.
    pub group: String,
    /// Its delay, ms.
    pub delay_ms: u64,
}

impl TopologyPlan {
    /// The plan of `handlers` with their topologies.
    pub(crate) fn of<'a>(handlers: impl IntoIterator<Item = (&'a HandlerSpec, &'a Topology)>) -> Self {
        Self {
            schema: 1,
            handlers: handlers
                .into_iter()
                .map(|(spec, topology)| HandlerPlan {
                    handler: spec.name().to_owned(),
                    topic: topology.main.clone(),
                    group: spec.group().to_owned(),
                    retries: (1..)
                        .zip(spec.retries())
                        .map(|(level, delay)| LevelPlan {
                            level,
                            topic: topology.level(level).to_owned(),
                            group: topology.consumer_group(spec.group(), level).to_owned(),
                            delay_ms: delay.as_millis() as u64,
                        })
                        .collect(),
                    dead_letter: topology.dead_letter.clone(),
                    parked: topology.parked.clone(),
                    held: topology.held.clone(),
                })
                .collect(),
        }
    }
}

impl HandlerPlan {
    /// The handler's topics with their roles: the main topic first, then the retry levels,
    /// the dead-letter and the parking queue.
    pub fn topics(&self) -> impl Iterator<Item = (&str, TopicRole)> {
        let levels = self
            .retries
            .iter()
            .map(|l| (l.topic.as_str(), TopicRole::Retry { level: l.level }));
        let kept = [
            (self.dead_letter.as_deref(), TopicRole::DeadLetter),
            (self.parked.as_deref(), TopicRole::Parked),
            (self.held.as_deref(), TopicRole::Held),
        ];
        std::iter::once((self.topic.as_str(), TopicRole::Main))
            .chain(levels)
            .chain(kept.into_iter().filter_map(|(t, role)| t.map(|t| (t, role))))
    }
}

/// The consumer group that reads a topic the framework derives and consumes itself (a retry
/// level, a held topic): named like the topic, so each is its own group whatever the handler's
/// group, and the tool finds it from the topic's name. The one place this rule is written.
pub(crate) fn derived_group(topic: &str) -> &str {
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_goes_to_the_next_level_then_to_the_dead_letters() {
        let policy = RetryPolicy::new(
            [Duration::from_secs(10), Duration::from_secs(60)],
            OnExhausted::DeadLetter,
        );
        // A transient failure on the main topic (level 0) goes to level 1, due in 10 s.
        assert_eq!(
            policy.next(0, ErrorKind::Transient, 0),
            Step::Retry {
                level: 1,
                delay: Duration::from_secs(10)
            }
        );
        assert_eq!(
            policy.next(1, ErrorKind::Timeout, 0),
            Step::Retry {
                level: 2,
                delay: Duration::from_secs(60)
            }
        );
        // The last level's failure, and any permanent failure, is dead-lettered.
        assert_eq!(policy.next(2, ErrorKind::Transient, 0), Step::DeadLetter);
        assert_eq!(policy.next(0, ErrorKind::Permanent, 0), Step::DeadLetter);
        // A replayed dead letter that fails again is parked, not dead-lettered again.
        assert_eq!(policy.next(2, ErrorKind::Transient, 1), Step::Park);
        assert_eq!(policy.next(0, ErrorKind::Permanent, 3), Step::Park);
        assert_eq!(
            policy.next(0, ErrorKind::Transient, 1),
            Step::Retry {
                level: 1,
                delay: Duration::from_secs(10)
            }
        );
    }
}
