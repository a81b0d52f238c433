//! What lets one level's consumer start an attempt: the handler's `rate` (a token per attempt)
//! and its circuit breaker (closed, or half-open with a probe's place free). When either says
//! no, the gate keeps the instant to ask again: no attempt starts before it.

use std::sync::Arc;

use tokio::time::Instant;

use crate::breaker::CircuitBreaker;
use crate::rate::AttemptRate;

/// The gate of one level; open always for a handler without a `rate` or a `breaker`.
pub(super) struct RateGate {
    /// The handler's limiter, shared by its levels.
    rate: Option<Arc<AttemptRate>>,
    /// The handler's breaker, shared by its levels.
    breaker: Option<Arc<CircuitBreaker>>,
    /// No attempt starts before this (the next token, the cool-down's end).
    throttled_until: Option<Instant>,
}

impl RateGate {
    pub(super) fn new(rate: Option<Arc<AttemptRate>>, breaker: Option<Arc<CircuitBreaker>>) -> Self {
        Self {
            rate,
            breaker,
            throttled_until: None,
        }
    }

    /// Lets one attempt start (taking its token, or its probe's place), or notes when to ask
    /// again.
    pub(super) fn admit(&mut self) -> bool {
        if self.rate.is_none() && self.breaker.is_none() {
            return true;
        }
        if let Some(at) = self.throttled_until {
            if at > Instant::now() {
                return false;
            }
            self.throttled_until = None;
        }
        // The token first: a probe's place taken for an attempt the rate then refused would
        // stay taken. A token the breaker refuses is lost; the rate is a cap, not a quota.
        let admitted = match &self.rate {
            Some(rate) => rate.admit(),
            None => Ok(()),
        }
        .and_then(|()| self.breaker.as_ref().map_or(Ok(()), |breaker| breaker.admit()));
        match admitted {
            Ok(()) => true,
            Err(at) => {
                self.throttled_until = Some(at);
                false
            }
        }
    }

    /// When to ask again, while attempts wait for a token or the breaker.
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
        let mut gate = RateGate::new(None, None);
        assert!((0..1000).all(|_| gate.admit()));
        assert_eq!(gate.throttled_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_tokens_the_gate_says_when_the_next_one_comes() {
        let rate = Rate::new(1, Duration::from_secs(1)).unwrap();
        let mut gate = RateGate::new(Some(Arc::new(AttemptRate::new(rate))), None);
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
