//! Retry policy shared by every backend: which level a failure goes to, when it is due, and
//! what the topics (or streams) of each level are called.

use std::time::Duration;

use crate::backend::TopicRole;
use crate::error::ConfigError;
use crate::handlers::{ErrorKind, HandlerSpec, OnExhausted};

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
    pub fn next(&self, failed_level: u32, kind: ErrorKind) -> Step {
        if kind.is_retryable() {
            if let Some(delay) = self.delay(failed_level + 1) {
                return Step::Retry {
                    level: failed_level + 1,
                    delay,
                };
            }
        }
        match self.on_exhausted {
            OnExhausted::DeadLetter => Step::DeadLetter,
            OnExhausted::Drop => Step::Drop,
        }
    }
}

/// How retry and dead-letter topics (Redis: streams) are named.
///
/// Patterns use `{topic}`, `{group}` and, for retries, `{level}`. Both must contain `{group}`
/// so two groups consuming one topic never share a retry level.
///
/// ```
/// use retry_kafka::app::TopicNaming;
/// let naming = TopicNaming::default();
/// assert_eq!(naming.retry("orders", "billing", 2), "orders.billing.retry.2");
/// assert_eq!(naming.dead_letter("orders", "billing"), "orders.billing.dlq");
///
/// let custom = TopicNaming::new("{group}-{topic}-retry-{level}", "{group}-{topic}-dlt").unwrap();
/// assert_eq!(custom.retry("orders", "billing", 1), "billing-orders-retry-1");
/// assert!(TopicNaming::new("{topic}.retry.{level}", "{topic}.dlq").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNaming {
    retry: String,
    dead_letter: String,
}

impl Default for TopicNaming {
    fn default() -> Self {
        Self {
            retry: "{topic}.{group}.retry.{level}".into(),
            dead_letter: "{topic}.{group}.dlq".into(),
        }
    }
}

impl TopicNaming {
    /// Custom patterns; checked for the placeholders they need.
    pub fn new(retry: impl Into<String>, dead_letter: impl Into<String>) -> Result<Self, ConfigError> {
        let (retry, dead_letter) = (retry.into(), dead_letter.into());
        for (field, pattern, needs) in [
            ("retry_topic_pattern", &retry, &["{group}", "{level}"][..]),
            ("dead_letter_topic_pattern", &dead_letter, &["{group}"][..]),
        ] {
            for placeholder in needs {
                if !pattern.contains(placeholder) {
                    return Err(ConfigError::Invalid {
                        field,
                        reason: format!("pattern {pattern:?} lacks {placeholder}"),
                    });
                }
            }
        }
        Ok(Self { retry, dead_letter })
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
}

impl Topology {
    /// The topology of `spec` under `naming`.
    pub fn of(spec: &HandlerSpec, naming: &TopicNaming) -> Self {
        let (topic, group) = (spec.topic(), spec.group());
        Self {
            main: topic.to_owned(),
            retries: (1..=spec.retries().len() as u32)
                .map(|level| naming.retry(topic, group, level))
                .collect(),
            dead_letter: (spec.on_exhausted() == OnExhausted::DeadLetter)
                .then(|| naming.dead_letter(topic, group)),
        }
    }

    /// The topic of level `level`: 0 is the main topic.
    pub fn level(&self, level: u32) -> &str {
        match level {
            0 => &self.main,
            n => &self.retries[n as usize - 1],
        }
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
    /// };
    /// assert_eq!(topology.consumer_group("billing", 0), "billing");
    /// assert_eq!(topology.consumer_group("billing", 1), "orders.billing.retry.1");
    /// ```
    pub fn consumer_group<'a>(&'a self, group: &'a str, level: u32) -> &'a str {
        match level {
            0 => group,
            n => &self.retries[n as usize - 1],
        }
    }

    /// Every topic the handler writes to, with its role.
    pub fn derived(&self) -> impl Iterator<Item = (&str, TopicRole)> {
        let retries = (1..)
            .zip(&self.retries)
            .map(|(level, topic)| (topic.as_str(), TopicRole::Retry { level }));
        retries.chain(
            self.dead_letter
                .as_deref()
                .map(|topic| (topic, TopicRole::DeadLetter)),
        )
    }
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
            policy.next(0, ErrorKind::Transient),
            Step::Retry {
                level: 1,
                delay: Duration::from_secs(10)
            }
        );
        assert_eq!(
            policy.next(1, ErrorKind::Timeout),
            Step::Retry {
                level: 2,
                delay: Duration::from_secs(60)
            }
        );
        // The last level's failure, and any permanent failure, is dead-lettered.
        assert_eq!(policy.next(2, ErrorKind::Transient), Step::DeadLetter);
        assert_eq!(policy.next(0, ErrorKind::Permanent), Step::DeadLetter);
    }
}
