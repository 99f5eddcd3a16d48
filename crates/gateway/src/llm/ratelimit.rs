//! A provider's request budget (the seed's `rateLimiting` block), enforced as one budget for the
//! whole cluster: a GCRA in Redis (`scripts/admit.lua`), never split per replica, so uneven load
//! across replicas wastes none of it.
//!
//! While Redis is unreachable each replica falls back to [`LocalLimiter`]: the budget divided by
//! the replicas last seen alive, so the cluster as a whole still stays within it.

use crate::config::RateLimitingConfig;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// GCRA parameters of one provider's budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Requests per minute for the whole cluster.
    pub per_minute: u64,
    /// Requests per minute one key (the account a message came in on) may use.
    pub per_key: Option<u64>,
    /// Requests allowed at once above the steady rate.
    pub burst: u64,
    /// Longest wait for room before the call spills to the next provider.
    pub max_wait: Duration,
}

impl Budget {
    /// The budget a `rateLimiting` block describes.
    pub fn from_config(config: &RateLimitingConfig) -> Budget {
        Budget {
            per_minute: config.requests_per_minute,
            per_key: config.requests_per_key,
            burst: config.burst_allowed.unwrap_or(0),
            max_wait: config.max_wait,
        }
    }

    /// Time between two requests at the steady rate of `per_minute`.
    pub fn interval(per_minute: u64) -> Duration {
        Duration::from_micros(60_000_000 / per_minute.max(1))
    }

    /// How far ahead of the steady rate a burst may run: `burst` intervals.
    pub fn tolerance(&self, per_minute: u64) -> Duration {
        Budget::interval(per_minute).saturating_mul(u32::try_from(self.burst).unwrap_or(u32::MAX))
    }
}

/// Why the local limiter refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// When the call would have fit.
    pub retry_after: Duration,
}

/// A replica's share of a budget while Redis is unreachable: `per_minute / replicas`.
pub struct LocalLimiter {
    /// The replica count the share was computed for (rebuilt when it changes).
    replicas: u32,
    /// The whole budget's share.
    budget: DefaultDirectRateLimiter,
    /// Each key's share, when keys are limited.
    per_key: Option<DefaultKeyedRateLimiter<String>>,
}

impl LocalLimiter {
    /// This replica's share of `budget` when `replicas` replicas are alive.
    pub fn new(budget: &Budget, replicas: u32) -> LocalLimiter {
        let replicas = replicas.max(1);
        LocalLimiter {
            replicas,
            budget: RateLimiter::direct(share(budget.per_minute, budget.burst, replicas)),
            per_key: budget
                .per_key
                .map(|per_key| RateLimiter::keyed(share(per_key, budget.burst, replicas))),
        }
    }

    /// The replica count the share was computed for.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Takes one request of `key`'s share and the budget's, or says when there would be room.
    pub fn check(&self, key: &str) -> Result<(), OverBudget> {
        let clock = DefaultClock::default();
        let refused = |not_until: governor::NotUntil<_>| OverBudget {
            retry_after: not_until.wait_time_from(clock.now()),
        };
        if let Some(per_key) = &self.per_key {
            per_key.check_key(&key.to_string()).map_err(refused)?;
        }
        self.budget.check().map_err(refused)
    }
}

/// `per_minute / replicas` per minute with a burst of `1 + burst / replicas`.
fn share(per_minute: u64, burst: u64, replicas: u32) -> Quota {
    let replicas = u64::from(replicas.max(1));
    let period = Budget::interval(per_minute).saturating_mul(replicas as u32);
    let burst = u32::try_from(1 + burst / replicas).unwrap_or(u32::MAX);
    Quota::with_period(period.max(Duration::from_micros(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_minute: u64, per_key: Option<u64>, burst: u64) -> Budget {
        Budget {
            per_minute,
            per_key,
            burst,
            max_wait: Duration::from_millis(250),
        }
    }

    #[test]
    fn gcra_parameters_follow_the_seed_block() {
        let b = budget(60, Some(30), 10);
        assert_eq!(Budget::interval(60), Duration::from_secs(1));
        assert_eq!(b.tolerance(60), Duration::from_secs(10));
        assert_eq!(Budget::interval(30), Duration::from_secs(2));
    }

    #[test]
    fn the_local_share_is_the_budget_divided_by_live_replicas() {
        // 60 per minute with a burst of 9 across 3 replicas: this replica takes 1 + 3 at once,
        // then must wait its share's interval (3 s).
        let limiter = LocalLimiter::new(&budget(60, None, 9), 3);
        for _ in 0..4 {
            assert_eq!(limiter.check("k"), Ok(()));
        }
        let refused = limiter.check("k").err().map(|o| o.retry_after);
        assert!(
            refused.is_some_and(|wait| wait > Duration::from_secs(2)
                && wait <= Duration::from_secs(3)),
            "{refused:?}"
        );
    }

    #[test]
    fn one_key_cannot_take_the_whole_local_share() {
        // A budget of one per millisecond, of which one key may use one per second.
        let limiter = LocalLimiter::new(&budget(60_000, Some(60), 0), 1);
        assert_eq!(limiter.check("whatsapp:1"), Ok(()));
        let refused = limiter.check("whatsapp:1").err().map(|o| o.retry_after);
        assert!(
            refused.is_some_and(|wait| wait > Duration::from_millis(900)),
            "{refused:?}"
        );
        // The budget itself has room again a millisecond later, for another key.
        #[allow(clippy::disallowed_methods)] // a plain unit test, no runtime to block
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(limiter.check("telegram:bot"), Ok(()));
    }
}
