//! When the poll thread commits. The offsets the runtime settles are stored as they come and
//! committed asynchronously every `interval` (and, when the user sets `records`, as soon as
//! that many were settled), so a consumer killed with SIGKILL repeats at most that much work
//! (librdkafka's auto-commit does it every second). Commits are not paced by their outcomes:
//! at 500,000 records a second a count of 1,000 makes 500 requests a second, which is why no
//! count is the default (`CommitPolicy::DEFAULT_RECORDS`). A failed one is sent again by
//! librdkafka's auto-commit, kept on as the backstop (`consumer::config`). librdkafka's
//! statistics (every `STATS_INTERVAL`) tell the poll thread what got through, whoever's commit
//! it was: settled work that waits past `at_risk_limit` or `at_risk_records` for it makes the
//! consumer's commits behind, and its level starts no attempt until they get through
//! (`settle.rs` keeps the count).
//!
//! The handle folds acknowledgements and sends them once per batch of records, which at a slow
//! handler's pace is seconds apart; so when the interval has passed the thread asks for them
//! (`AckRequest`), and commits once they came (or one more interval later, when the runtime
//! acknowledged nothing meanwhile).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::settle::RiskBound;
use crate::config::vars;
use crate::error::ConfigError;

/// How often librdkafka reports the committed offsets (`statistics.interval.ms`): the one
/// report of an asynchronous commit's outcome (`poll/mod.rs`). Each costs a parse of a few KiB of
/// JSON on the poll thread.
pub(super) const STATS_INTERVAL: Duration = Duration::from_millis(500);

/// How often a consumer commits what it settled ([`KafkaBuilder::commit_interval`] and
/// [`KafkaBuilder::commit_records`]).
///
/// [`KafkaBuilder::commit_interval`]: crate::backend::kafka::KafkaBuilder::commit_interval
/// [`KafkaBuilder::commit_records`]: crate::backend::kafka::KafkaBuilder::commit_records
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommitPolicy {
    pub(crate) interval: Duration,
    /// Settled records after which a commit starts before the interval is over; none by
    /// default (see [`DEFAULT_RECORDS`](Self::DEFAULT_RECORDS)).
    pub(crate) records: Option<u64>,
    /// Work at risk: the oldest acknowledgement still uncommitted may be this old at most...
    pub(crate) at_risk_limit: Duration,
    /// ...and this many acknowledged records per partition may wait for their commit, before
    /// the consumer says its commits are behind ([`Consumer::commits_behind`]).
    ///
    /// [`Consumer::commits_behind`]: crate::backend::Consumer::commits_behind
    pub(crate) at_risk_records: u64,
}

impl CommitPolicy {
    pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
    /// No count: measured on Apache Kafka 4.4.0, a commit every 1,000 records (the default
    /// until session 19) took the success path from ~0.9x to ~0.55x of a raw rdkafka loop's
    /// msg/s (hundreds of commits a second at full speed, each an OffsetCommit the broker
    /// appends, on the same cores); the interval alone makes ten a second per consumer and
    /// bounds what a kill repeats by time (docs/benchmarks.md, "Session 19").
    pub(crate) const DEFAULT_RECORDS: Option<u64> = None;
    /// A minute: a longer interval is more likely seconds given as milliseconds than meant.
    const MAX_INTERVAL: Duration = Duration::from_secs(60);
    pub(crate) const DEFAULT_AT_RISK_LIMIT: Duration = Duration::from_secs(5);
    pub(crate) const DEFAULT_AT_RISK_RECORDS: u64 = 10_000;
    /// An hour: past it, the bound is no bound.
    const MAX_AT_RISK_LIMIT: Duration = Duration::from_secs(3600);
    /// Below it, a commit merely on its way would stop attempts.
    const MIN_AT_RISK_LIMIT: Duration = Duration::from_millis(100);

    /// When settled records waiting for their commit are at risk: the settings, and never
    /// before a commit that got through could have been reported (two commit intervals: one
    /// is started every interval, and takes a round trip; and the statistics' interval).
    pub(crate) fn risk_bound(&self) -> RiskBound {
        let report_lag = 2 * self.interval + STATS_INTERVAL;
        RiskBound {
            age: self.at_risk_limit.max(report_lag),
            records: self.at_risk_records,
            report_lag,
        }
    }

    /// Fails naming the setting's variable when a value is out of range.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() || self.interval > Self::MAX_INTERVAL {
            return Err(ConfigError::Invalid {
                field: vars::KAFKA_COMMIT_INTERVAL_MS,
                reason: format!(
                    "{} ms is out of range: give 1 to {} ms",
                    self.interval.as_millis(),
                    Self::MAX_INTERVAL.as_millis()
                ),
            });
        }
        if self.records == Some(0) {
            return Err(ConfigError::Invalid {
                field: vars::KAFKA_COMMIT_RECORDS,
                reason: "0 records: give at least 1".into(),
            });
        }
        if self.at_risk_limit < Self::MIN_AT_RISK_LIMIT || self.at_risk_limit > Self::MAX_AT_RISK_LIMIT {
            return Err(ConfigError::Invalid {
                field: vars::KAFKA_AT_RISK_MS,
                reason: format!(
                    "{} ms is out of range: give {} to {} ms",
                    self.at_risk_limit.as_millis(),
                    Self::MIN_AT_RISK_LIMIT.as_millis(),
                    Self::MAX_AT_RISK_LIMIT.as_millis()
                ),
            });
        }
        if self.at_risk_records == 0 {
            return Err(ConfigError::Invalid {
                field: vars::KAFKA_AT_RISK_RECORDS,
                reason: "0 records: give at least 1".into(),
            });
        }
        Ok(())
    }
}

impl Default for CommitPolicy {
    fn default() -> Self {
        Self {
            interval: Self::DEFAULT_INTERVAL,
            records: Self::DEFAULT_RECORDS,
            at_risk_limit: Self::DEFAULT_AT_RISK_LIMIT,
            at_risk_records: Self::DEFAULT_AT_RISK_RECORDS,
        }
    }
}

/// The poll thread's commit schedule: what was settled since the last commit started, and
/// whether that commit is still in flight.
pub(super) struct CommitSchedule {
    policy: CommitPolicy,
    /// Records settled (their offsets stored) since the last commit started.
    settled: u64,
    /// When the last commit started.
    last: Instant,
}

impl CommitSchedule {
    pub(super) fn new(policy: CommitPolicy) -> Self {
        Self {
            policy,
            settled: 0,
            last: Instant::now(),
        }
    }

    pub(super) fn policy(&self) -> &CommitPolicy {
        &self.policy
    }

    /// `records` more records settled, their offsets stored.
    pub(super) fn settled(&mut self, records: u64) {
        self.settled += records;
    }

    /// Whether the interval since the last commit has passed: time to ask for the
    /// acknowledgements the handle holds.
    pub(super) fn interval_passed(&self, now: Instant) -> bool {
        now.duration_since(self.last) >= self.policy.interval
    }

    /// Whether to start a commit now: something was settled since the last one, and the count
    /// is reached or the interval has passed and the acknowledgements asked for came
    /// (`acks_in`; after two intervals, without them).
    pub(super) fn due(&self, now: Instant, acks_in: bool) -> bool {
        if self.settled == 0 {
            return false;
        }
        let elapsed = now.duration_since(self.last);
        self.policy.records.is_some_and(|records| self.settled >= records)
            || (elapsed >= self.policy.interval && (acks_in || elapsed >= 2 * self.policy.interval))
    }

    /// A commit of everything settled so far started at `now`.
    pub(super) fn started(&mut self, now: Instant) {
        self.settled = 0;
        self.last = now;
    }
}

/// The poll thread's request for the acknowledgements the handle holds: raised by the thread,
/// cleared by the handle once it sent them (sent first, so a thread that sees it cleared finds
/// them in its channel). One relaxed load per acknowledgement on the handle's side.
#[derive(Default)]
pub(super) struct AckRequest(AtomicBool);

impl AckRequest {
    pub(super) fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(super) fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The acknowledgements held were sent.
    pub(super) fn answered(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Whether the last request was answered: what the handle sent before is in the channel.
    pub(super) fn is_answered(&self) -> bool {
        !self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CommitPolicy {
        CommitPolicy::default()
    }

    #[test]
    fn commits_after_the_interval_or_the_count_whichever_first() {
        let start = Instant::now();
        let mut schedule = CommitSchedule::new(CommitPolicy {
            records: Some(1000),
            ..policy()
        });
        schedule.last = start;
        let later = |ms| start + Duration::from_millis(ms);
        // Nothing settled: nothing to commit, however long it has been.
        assert!(!schedule.due(later(500), true));
        schedule.settled(10);
        assert!(!schedule.interval_passed(later(99)));
        assert!(!schedule.due(later(99), true));
        assert!(schedule.interval_passed(later(100)));
        // The acknowledgements asked for have not come: wait for them, one interval at most.
        assert!(!schedule.due(later(100), false));
        assert!(schedule.due(later(100), true));
        assert!(schedule.due(later(200), false));
        schedule.started(later(100));
        // The count, before the interval.
        schedule.settled(999);
        assert!(!schedule.due(later(110), true));
        schedule.settled(1);
        assert!(schedule.due(later(110), false));
        schedule.started(later(110));
        assert!(!schedule.due(later(110), true));
    }

    #[test]
    fn by_default_only_the_interval_starts_a_commit() {
        let start = Instant::now();
        let mut schedule = CommitSchedule::new(policy());
        schedule.last = start;
        schedule.settled(1_000_000);
        assert!(!schedule.due(start + Duration::from_millis(99), true));
        assert!(schedule.due(start + Duration::from_millis(100), true));
    }

    #[test]
    fn an_interval_or_a_count_out_of_range_is_named() {
        assert!(policy().check().is_ok());
        let refusals = [
            (
                CommitPolicy {
                    interval: Duration::ZERO,
                    ..policy()
                },
                "invalid KAFKA_COMMIT_INTERVAL_MS: 0 ms is out of range: give 1 to 60000 ms",
            ),
            (
                CommitPolicy {
                    records: Some(0),
                    ..policy()
                },
                "invalid KAFKA_COMMIT_RECORDS: 0 records: give at least 1",
            ),
            (
                CommitPolicy {
                    at_risk_limit: Duration::from_millis(99),
                    ..policy()
                },
                "invalid KAFKA_AT_RISK_MS: 99 ms is out of range: give 100 to 3600000 ms",
            ),
            (
                CommitPolicy {
                    at_risk_records: 0,
                    ..policy()
                },
                "invalid KAFKA_AT_RISK_RECORDS: 0 records: give at least 1",
            ),
        ];
        for (refused, message) in refusals {
            assert_eq!(refused.check().unwrap_err().to_string(), message);
        }
        // Never less than two commit intervals, whatever is given.
        let slow = CommitPolicy {
            interval: Duration::from_secs(10),
            ..policy()
        };
        assert!(slow.check().is_ok());
        assert_eq!(slow.risk_bound().age, Duration::from_millis(20_500));
        assert_eq!(
            policy().risk_bound(),
            RiskBound {
                age: Duration::from_secs(5),
                records: 10_000,
                report_lag: Duration::from_millis(700),
            }
        );
    }
}
