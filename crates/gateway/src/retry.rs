//! The one retry policy: exponential backoff with full jitter, so replicas retrying the same
//! failed provider do not hammer it in lockstep.

use backon::ExponentialBuilder;
use std::time::Duration;

/// Backoff for up to `max_retries` further attempts: 100 ms doubling to at most 2 s, jittered.
pub fn backoff(max_retries: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(max_retries as usize)
        .with_jitter()
}

/// Backoff for a state write that failed because Redis is unreachable: short first waits (a
/// blip), growing to 1 s, for up to about 15 s before the turn gives up and leaves its inbox entry
/// to be claimed again.
pub fn state_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(20)
        .with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn provider_retries_are_bounded_in_number_and_in_each_wait() {
        let delays: Vec<Duration> = backoff(3).build().collect();
        assert_eq!(delays.len(), 3, "{delays:?}");
        // Jitter adds at most the delay itself: 100 ms doubling, capped at 2 s.
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "{delays:?}"
        );
        assert!(
            backoff(0).build().next().is_none(),
            "no retries when none are allowed"
        );
    }

    #[test]
    fn state_retries_ride_out_a_failover_of_about_fifteen_seconds() {
        let delays: Vec<Duration> = state_backoff().build().collect();
        assert_eq!(delays.len(), 20);
        let total: Duration = delays.iter().sum();
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
        assert!(
            total >= Duration::from_secs(8) && total <= Duration::from_secs(40),
            "{total:?}"
        );
    }
}
