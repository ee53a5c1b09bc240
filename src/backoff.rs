//! How long to wait before trying again: exponential backoff with "equal jitter". The agent's sender
//! uses it between failed batches, the collector's alert delivery between failed deliveries.

use std::time::Duration;

use rand::Rng;

/// A doubling wait: `initial` after the first failure, twice that after the second, never more than
/// `max`; each wait is then a random point in the upper half of that, so a fleet or a queue of
/// deliveries that failed together does not retry at the same instant, yet never retries sooner
/// than half the nominal wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` consecutive failures (the first failure is 1; 0 counts as 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=spread))
    }

    /// The longest wait after `failures` consecutive failures: `initial * 2^(failures-1)`, capped.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << exponent).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_within_their_upper_half() {
        let backoff = Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.ceiling(0), Duration::from_secs(2));
        assert_eq!(backoff.ceiling(1), Duration::from_secs(2));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(8));
        assert_eq!(backoff.ceiling(5), Duration::from_secs(32));
        assert_eq!(backoff.ceiling(6), Duration::from_secs(60));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(60));
        for _ in 0..50 {
            let first = backoff.delay(1);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2));
            let third = backoff.delay(3);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8));
            let late = backoff.delay(40);
            assert!(late >= Duration::from_secs(30) && late <= Duration::from_secs(60));
        }
    }

    #[test]
    fn waits_are_spread_not_fixed() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let first = backoff.delay(1);
        assert!(
            (0..100).any(|_| backoff.delay(1) != first),
            "a hundred waits were all {first:?}"
        );
    }
}
