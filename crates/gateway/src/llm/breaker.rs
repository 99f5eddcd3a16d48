//! Circuit breaker per provider: after enough failed attempts the chain skips the provider at
//! once instead of waiting out its timeout on every turn, and a background probe (one replica at
//! a time) closes the breaker when the provider answers again.
//!
//! The breaker every replica follows lives in Redis (`scripts/breaker_record.lua` applies the
//! same rules as [`LocalBreaker`] atomically, on Redis's clock), so one replica's discovery spares
//! the others their timeouts. [`LocalBreaker`] is the same state machine in process memory: it is
//! what a replica follows while Redis is unreachable, and it is kept warm all the time so that
//! switch costs nothing.

use crate::config::BreakerConfig;
use tokio::time::Instant;

/// Whether a provider is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Asked as usual.
    Closed,
    /// Skipped without being asked, until a probe succeeds.
    Open,
}

impl BreakerState {
    /// The name used in Redis, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
        }
    }

    /// Parses the name stored in Redis; anything unknown counts as closed (a provider is never
    /// skipped because of a value this version does not understand).
    pub fn parse(value: &str) -> BreakerState {
        if value == "open" {
            BreakerState::Open
        } else {
            BreakerState::Closed
        }
    }
}

/// How one attempt ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider answered.
    Success,
    /// The provider failed (unreachable, timed out, 5xx, unusable answer, refused the request).
    Failure,
}

/// The breaker's state machine in process memory.
#[derive(Debug)]
pub struct LocalBreaker {
    /// Thresholds.
    settings: BreakerConfig,
    /// Current state.
    state: BreakerState,
    /// Failed attempts since the last success.
    consecutive: u32,
    /// Start of the failure-ratio window.
    window_start: Instant,
    /// Attempts in the window.
    calls: u32,
    /// Failed attempts in the window.
    failures: u32,
}

impl LocalBreaker {
    /// A closed breaker with `settings`.
    pub fn new(settings: BreakerConfig) -> LocalBreaker {
        LocalBreaker {
            settings,
            state: BreakerState::Closed,
            consecutive: 0,
            window_start: Instant::now(),
            calls: 0,
            failures: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Counts a turn's attempt; returns the new state when this attempt changed it. Outcomes of
    /// attempts still running when the breaker opened do not count: only a probe closes it.
    pub fn record(&mut self, verdict: Verdict) -> Option<BreakerState> {
        if self.state == BreakerState::Open {
            return None;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= self.settings.window {
            // A new ratio window; a run of consecutive failures goes on across it.
            self.window_start = now;
            self.calls = 0;
            self.failures = 0;
        }
        self.calls += 1;
        match verdict {
            Verdict::Success => {
                self.consecutive = 0;
                None
            }
            Verdict::Failure => {
                self.failures += 1;
                self.consecutive += 1;
                let ratio_exceeded = self.calls >= self.settings.min_calls
                    && f64::from(self.failures)
                        >= self.settings.failure_ratio * f64::from(self.calls);
                if self.consecutive >= self.settings.consecutive_failures || ratio_exceeded {
                    self.state = BreakerState::Open;
                    Some(BreakerState::Open)
                } else {
                    None
                }
            }
        }
    }

    /// Counts a background probe: a successful probe closes an open breaker with fresh counters.
    pub fn record_probe(&mut self, verdict: Verdict) -> Option<BreakerState> {
        if self.state == BreakerState::Open && verdict == Verdict::Success {
            self.state = BreakerState::Closed;
            self.reset(Instant::now());
            Some(BreakerState::Closed)
        } else {
            None
        }
    }

    /// Takes the state the shared breaker reports, so the local one is current when Redis goes
    /// away.
    pub fn follow(&mut self, state: BreakerState) {
        if self.state != state {
            self.state = state;
            self.reset(Instant::now());
        }
    }

    fn reset(&mut self, now: Instant) {
        self.window_start = now;
        self.calls = 0;
        self.failures = 0;
        self.consecutive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_calls: 10,
            window: Duration::from_secs(30),
            probe_interval: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let mut breaker = LocalBreaker::new(settings());
        assert_eq!(breaker.record(Verdict::Failure), None);
        assert_eq!(breaker.record(Verdict::Failure), None);
        assert_eq!(breaker.record(Verdict::Success), None);
        assert_eq!(breaker.record(Verdict::Failure), None);
        assert_eq!(breaker.record(Verdict::Failure), None);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.record(Verdict::Failure), Some(BreakerState::Open));
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_ratio_over_the_window_opens_it() {
        let mut breaker = LocalBreaker::new(settings());
        // Alternating success and failure never makes three in a row, but half of ten fail.
        let mut opened = None;
        for i in 0..10 {
            let verdict = if i % 2 == 0 {
                Verdict::Success
            } else {
                Verdict::Failure
            };
            opened = opened.or(breaker.record(verdict));
        }
        assert_eq!(opened, Some(BreakerState::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ratio_window_forgets_old_failures() {
        let mut breaker = LocalBreaker::new(settings());
        for i in 0..8 {
            let verdict = if i % 2 == 0 {
                Verdict::Success
            } else {
                Verdict::Failure
            };
            breaker.record(verdict);
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        for _ in 0..9 {
            breaker.record(Verdict::Success);
        }
        assert_eq!(breaker.record(Verdict::Failure), None);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_successful_probe_closes_an_open_breaker() {
        let mut breaker = LocalBreaker::new(settings());
        for _ in 0..3 {
            breaker.record(Verdict::Failure);
        }
        // A straggling turn that succeeds after the breaker opened does not close it.
        assert_eq!(breaker.record(Verdict::Success), None);
        assert_eq!(breaker.record_probe(Verdict::Failure), None);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.record_probe(Verdict::Success),
            Some(BreakerState::Closed)
        );
        // Fresh counters: it takes three new failures to open it again.
        assert_eq!(breaker.record(Verdict::Failure), None);
        assert_eq!(breaker.record(Verdict::Failure), None);
        assert_eq!(breaker.record(Verdict::Failure), Some(BreakerState::Open));
    }
}
