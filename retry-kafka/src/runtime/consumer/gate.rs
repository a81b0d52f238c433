//! A handler's `rate` as one level's consumer meets it: a token per attempt, and when none is
//! left, the instant the next one comes (no attempt starts before it).

use std::sync::Arc;

use tokio::time::Instant;

use crate::rate::AttemptRate;

/// The rate gate of one level; open always for a handler without a `rate`.
pub(super) struct RateGate {
    /// The handler's limiter, shared by its levels.
    rate: Option<Arc<AttemptRate>>,
    /// No attempt starts before this (the next token).
    throttled_until: Option<Instant>,
}

impl RateGate {
    pub(super) fn new(rate: Option<Arc<AttemptRate>>) -> Self {
        Self {
            rate,
            throttled_until: None,
        }
    }

    /// Takes a token for one attempt, or notes when the next one comes.
    pub(super) fn admit(&mut self) -> bool {
        let Some(rate) = &self.rate else {
            return true;
        };
        if let Some(at) = self.throttled_until {
            if at > Instant::now() {
                return false;
            }
            self.throttled_until = None;
        }
        match rate.admit() {
            Ok(()) => true,
            Err(at) => {
                self.throttled_until = Some(at);
                false
            }
        }
    }

    /// When the next token comes, while attempts wait for one.
    pub(super) fn throttled_until(&self) -> Option<Instant> {
        self.throttled_until
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rate::Rate;

    #[test]
    fn without_a_rate_the_gate_is_open() {
        let mut gate = RateGate::new(None);
        assert!((0..1000).all(|_| gate.admit()));
        assert_eq!(gate.throttled_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_tokens_the_gate_says_when_the_next_one_comes() {
        let rate = Rate::new(1, Duration::from_secs(1)).unwrap();
        let mut gate = RateGate::new(Some(Arc::new(AttemptRate::new(rate))));
        assert!(gate.admit());
        assert!(!gate.admit());
        let next = gate.throttled_until().expect("throttled");
        assert_eq!(next, Instant::now() + Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!gate.admit(), "not before the token");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(gate.admit());
        assert_eq!(gate.throttled_until(), None);
    }
}
