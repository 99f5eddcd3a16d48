//! What all replicas share about each provider: its circuit breaker and its request budget, both
//! in Redis, with an in-process fallback while Redis is unreachable.
//!
//! Before each attempt the chain asks [`ProviderGuards::admit`] (one round trip: breaker state and
//! budget together; none for a provider without a budget while this replica knows its shared
//! breaker, whose changes are published on `oc:breaker-news:{provider}`); after it,
//! [`ProviderGuards::record`]. A failure is counted in Redis at once
//! (the next attempt must see it); successes are counted locally and sent in one batch a second,
//! or ahead of this replica's next failure, so the provider's key is not written on every turn
//! (on a Redis Cluster it would make one master the hot spot). A background loop keeps this
//! replica's heartbeat (for the local budget share), sends the successes, refreshes the breaker
//! gauges and probes open providers, one replica at a time cluster-wide.

use super::breaker::{BreakerState, LocalBreaker, Verdict};
use super::ratelimit::{Budget, LocalLimiter};
use super::{ChatMessage, Prompt, Provider};
use crate::config::BreakerConfig;
use crate::state::keys;
use crate::state::link::{RedisLink, classify};
use crate::state::pubsub::{self, Subscriber};
use crate::telemetry;
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/admit.lua")));
static RECORD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/breaker_record.lua")));
/// The same for a Redis Cluster, announcing on the shard channel of the breaker's own slot.
static RECORD_SHARDED: LazyLock<Script> = LazyLock::new(|| {
    pubsub::publishing_script(include_str!("scripts/breaker_record.lua"), "SPUBLISH")
});

/// How often the background loop beats, refreshes gauges and considers probes.
const TICK: Duration = Duration::from_secs(1);
/// A replica whose heartbeat is older than this no longer counts as alive.
const REPLICA_ALIVE: Duration = Duration::from_secs(5);
/// A breaker hash nobody wrote for this long is forgotten (a renamed provider).
const BREAKER_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Successful latencies remembered per provider for the hedging delay.
const LATENCY_SAMPLES: usize = 256;
/// Samples needed before a p95 is trusted.
const LATENCY_MIN_SAMPLES: usize = 20;
/// How long what this replica learned of a shared breaker admits calls without asking Redis.
/// Changes are announced at once; the background loop re-reads every state each [`TICK`], so
/// this bounds how long a lost announcement could mislead.
const KNOWN_FOR: Duration = Duration::from_secs(2);

/// Whether a provider may be asked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Ask it; `waited` is the time spent waiting for budget.
    Go {
        /// Time spent waiting for room in the budget.
        waited: Duration,
    },
    /// Its breaker is open: skip it.
    Open,
    /// Its budget has no room within the caller's longest wait: spill to the next provider.
    OverBudget {
        /// When there would have been room.
        retry_after: Duration,
    },
}

/// One provider's guard.
struct Guard {
    /// Provider name (metric label, key part).
    name: String,
    /// Its budget; `None` = unlimited.
    budget: Option<Budget>,
    /// The breaker followed while Redis is unreachable.
    breaker: Mutex<LocalBreaker>,
    /// This replica's budget share while Redis is unreachable (built on first use).
    local_limiter: Mutex<Option<LocalLimiter>>,
    /// Recent successful latencies, for the hedging delay.
    latencies: Mutex<LatencyWindow>,
    /// When this replica last probed it.
    last_probe: Mutex<Option<Instant>>,
    /// A probe by this replica is running.
    probing: AtomicBool,
    /// Successes counted locally and not yet in the shared breaker.
    unsent_successes: AtomicU32,
    /// The shared breaker's state as this replica last learned it, and when.
    known_shared: Mutex<Option<(BreakerState, Instant)>>,
}

/// Breakers and budgets of the chain's providers, by chain position.
pub struct ProviderGuards {
    /// Where the shared state lives; `None` runs on local state only (unit tests, no Redis).
    link: Option<Arc<RedisLink>>,
    /// This replica, as reported in the breaker hash and the heartbeat.
    replica_id: String,
    /// Breaker thresholds.
    settings: BreakerConfig,
    /// One per provider of the chain (`None` for providers never guarded, like the template).
    guards: Vec<Option<Guard>>,
    /// Replicas seen alive at the last heartbeat (at least 1): the divisor of a local share.
    live_replicas: AtomicU32,
    /// Probes of open providers, run off the loop; waited for when the loop stops.
    probes: TaskTracker,
    /// This replica follows the breakers' announcements: only then may an admission rely on
    /// what it knows of a shared breaker.
    news_followed: AtomicBool,
}

impl ProviderGuards {
    /// Guards for `providers` (name and budget, `None` for an unguarded position).
    pub fn new(
        link: Option<Arc<RedisLink>>,
        replica_id: String,
        settings: BreakerConfig,
        providers: Vec<Option<(String, Option<Budget>)>>,
    ) -> ProviderGuards {
        let guards = providers
            .into_iter()
            .map(|p| {
                p.map(|(name, budget)| Guard {
                    name,
                    budget,
                    breaker: Mutex::new(LocalBreaker::new(settings.clone())),
                    local_limiter: Mutex::new(None),
                    latencies: Mutex::new(LatencyWindow::default()),
                    last_probe: Mutex::new(None),
                    probing: AtomicBool::new(false),
                    unsent_successes: AtomicU32::new(0),
                    known_shared: Mutex::new(None),
                })
            })
            .collect();
        ProviderGuards {
            link,
            replica_id,
            settings,
            guards,
            live_replicas: AtomicU32::new(1),
            probes: TaskTracker::new(),
            news_followed: AtomicBool::new(false),
        }
    }

    /// Asks whether the provider at `position` may be called for a message of `rate_key`,
    /// waiting up to `max_wait` for budget. An unguarded position is always admitted.
    pub async fn admit(&self, position: usize, rate_key: &str, max_wait: Duration) -> Admission {
        let Some(guard) = self.guard(position) else {
            return Admission::Go {
                waited: Duration::ZERO,
            };
        };
        let admission = match self.known_admission(guard) {
            Some(admission) => admission,
            None => match self.admit_shared(guard, rate_key, max_wait).await {
                Some(admission) => admission,
                None => self.admit_local(guard, rate_key, max_wait).await,
            },
        };
        match admission {
            Admission::Go { waited } if !waited.is_zero() => {
                metrics::histogram!(telemetry::PROVIDER_RATE_LIMIT_WAIT, "provider" => guard.name.clone())
                    .record(waited.as_secs_f64());
            }
            _ => {}
        }
        admission
    }

    /// The admission without a round trip: for a provider without a budget (the breaker alone
    /// decides) whose shared breaker this replica learned of within [`KNOWN_FOR`] while
    /// following the announcements. A success on every turn thus costs Redis nothing, and the
    /// provider's slot is no hot spot on a cluster.
    fn known_admission(&self, guard: &Guard) -> Option<Admission> {
        if guard.budget.is_some() || !self.news_followed.load(Ordering::Acquire) {
            return None;
        }
        if !self.link.as_ref()?.is_up() {
            return None;
        }
        let (state, learned_at) = (*lock(&guard.known_shared))?;
        if learned_at.elapsed() > KNOWN_FOR {
            return None;
        }
        Some(match state {
            BreakerState::Open => Admission::Open,
            BreakerState::Closed => Admission::Go {
                waited: Duration::ZERO,
            },
        })
    }

    /// The shared admission; `None` when Redis cannot be asked.
    async fn admit_shared(
        &self,
        guard: &Guard,
        rate_key: &str,
        max_wait: Duration,
    ) -> Option<Admission> {
        let link = self.link.as_ref()?;
        let mut conn = link.connection().ok()?;
        let (interval, tolerance, key_interval, key_tolerance) = match &guard.budget {
            None => (0, 0, 0, 0),
            Some(b) => (
                Budget::interval(b.per_minute).as_micros(),
                b.tolerance(b.per_minute).as_micros(),
                b.per_key.map_or(0, |k| Budget::interval(k).as_micros()),
                b.per_key.map_or(0, |k| b.tolerance(k).as_micros()),
            ),
        };
        let asked_at = Instant::now();
        let result: redis::RedisResult<(String, u64)> = ADMIT
            .key(keys::breaker(&guard.name))
            .key(keys::rate_budget(&guard.name))
            .key(keys::rate_key_budget(&guard.name, rate_key))
            .arg(interval as u64)
            .arg(tolerance as u64)
            .arg(key_interval as u64)
            .arg(key_tolerance as u64)
            .arg(max_wait.as_micros() as u64)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((verdict, wait_us)) => {
                let state = if verdict == "open" {
                    BreakerState::Open
                } else {
                    BreakerState::Closed
                };
                learn(guard, state, asked_at);
                let wait = Duration::from_micros(wait_us);
                Some(match verdict.as_str() {
                    "open" => Admission::Open,
                    "over" => Admission::OverBudget { retry_after: wait },
                    _ => {
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        Admission::Go { waited: wait }
                    }
                })
            }
            Err(e) => {
                link.report(&classify(&e));
                None
            }
        }
    }

    /// The admission on this replica's own state (Redis unreachable).
    async fn admit_local(&self, guard: &Guard, rate_key: &str, max_wait: Duration) -> Admission {
        if lock(&guard.breaker).state() == BreakerState::Open {
            return Admission::Open;
        }
        let Some(budget) = &guard.budget else {
            return Admission::Go {
                waited: Duration::ZERO,
            };
        };
        let check = || {
            let replicas = self.live_replicas.load(Ordering::Relaxed);
            let mut limiter = lock(&guard.local_limiter);
            if limiter.as_ref().is_none_or(|l| l.replicas() != replicas) {
                *limiter = Some(LocalLimiter::new(budget, replicas));
            }
            limiter.as_ref().map_or(Ok(()), |l| l.check(rate_key))
        };
        match check() {
            Ok(()) => Admission::Go {
                waited: Duration::ZERO,
            },
            Err(over) if over.retry_after <= max_wait => {
                tokio::time::sleep(over.retry_after).await;
                match check() {
                    Ok(()) => Admission::Go {
                        waited: over.retry_after,
                    },
                    Err(again) => Admission::OverBudget {
                        retry_after: again.retry_after,
                    },
                }
            }
            Err(over) => Admission::OverBudget {
                retry_after: over.retry_after,
            },
        }
    }

    /// Counts a success at `position` without a Redis round trip: it only resets counters, so
    /// it joins the batch the background loop sends. `latency` feeds the hedging delay.
    pub fn record_success(&self, position: usize, latency: Duration) {
        let Some(guard) = self.guard(position) else {
            return;
        };
        lock(&guard.latencies).push(latency);
        lock(&guard.breaker).record(Verdict::Success);
        guard.unsent_successes.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts how an attempt at `position` ended; a failure reaches the shared breaker (with the
    /// successes before it) before this returns.
    pub async fn record(&self, position: usize, verdict: Verdict, latency: Duration) {
        match verdict {
            Verdict::Success => self.record_success(position, latency),
            Verdict::Failure => {
                if let Some(guard) = self.guard(position) {
                    self.count(guard, verdict, false).await;
                }
            }
        }
    }

    /// Sends the successes counted since the last batch to the shared breaker.
    async fn send_successes(&self, guard: &Guard) {
        let unsent = guard.unsent_successes.swap(0, Ordering::AcqRel);
        if unsent == 0 {
            return;
        }
        match self
            .count_shared(guard, Verdict::Success, false, unsent - 1)
            .await
        {
            Some(Some(state)) => report_change(&guard.name, state),
            Some(None) => {}
            // Not counted: they go with the next batch.
            None => {
                guard.unsent_successes.fetch_add(unsent, Ordering::AcqRel);
            }
        }
    }

    /// The delay after which a hedge is sent for the provider at `position`: its p95 latency,
    /// once enough answers were seen.
    pub fn p95(&self, position: usize) -> Option<Duration> {
        self.guard(position)
            .and_then(|g| lock(&g.latencies).quantile(0.95))
    }

    /// Applies an outcome to the local breaker and the shared one, and reports a change once: the
    /// shared breaker's when Redis answered, else the local one's.
    async fn count(&self, guard: &Guard, verdict: Verdict, probe: bool) {
        let local_change = {
            let mut breaker = lock(&guard.breaker);
            if probe {
                breaker.record_probe(verdict)
            } else {
                breaker.record(verdict)
            }
        };
        let earlier = if probe {
            0
        } else {
            guard.unsent_successes.swap(0, Ordering::AcqRel)
        };
        let change = match self.count_shared(guard, verdict, probe, earlier).await {
            Some(shared_change) => shared_change,
            None => {
                guard.unsent_successes.fetch_add(earlier, Ordering::AcqRel);
                local_change
            }
        };
        if let Some(state) = change {
            report_change(&guard.name, state);
        }
    }

    /// The shared count of `earlier` successes followed by `verdict`: `Some(change)` when Redis
    /// answered.
    async fn count_shared(
        &self,
        guard: &Guard,
        verdict: Verdict,
        probe: bool,
        earlier: u32,
    ) -> Option<Option<BreakerState>> {
        let link = self.link.as_ref()?;
        let mut conn = link.connection().ok()?;
        let s = &self.settings;
        let script = if link.cluster().is_some() {
            &RECORD_SHARDED
        } else {
            &RECORD
        };
        let asked_at = Instant::now();
        let result: redis::RedisResult<(String, u8)> = script
            .key(keys::breaker(&guard.name))
            .arg(u8::from(verdict == Verdict::Success))
            .arg(u8::from(probe))
            .arg(s.consecutive_failures)
            .arg((s.failure_ratio * 1000.0).round() as u64)
            .arg(s.min_calls)
            .arg(s.window.as_millis() as u64)
            .arg(&self.replica_id)
            .arg(BREAKER_TTL.as_millis() as u64)
            .arg(earlier)
            .arg(keys::breaker_news(&guard.name))
            .arg(&guard.name)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((state, changed)) => {
                let state = BreakerState::parse(&state);
                // Keep the local breaker in step with the shared one.
                lock(&guard.breaker).follow(state);
                learn(guard, state, asked_at);
                Some((changed == 1).then_some(state))
            }
            Err(e) => {
                link.report(&classify(&e));
                None
            }
        }
    }

    /// The breaker state of the provider at `position` as this replica sees it now.
    pub async fn state(&self, position: usize) -> Option<BreakerState> {
        let guard = self.guard(position)?;
        Some(match self.shared_state(guard).await {
            Some(state) => state,
            None => lock(&guard.breaker).state(),
        })
    }

    async fn shared_state(&self, guard: &Guard) -> Option<BreakerState> {
        let link = self.link.as_ref()?;
        let mut conn = link.connection().ok()?;
        let asked_at = Instant::now();
        let state: redis::RedisResult<Option<String>> = redis::cmd("HGET")
            .arg(keys::breaker(&guard.name))
            .arg("state")
            .query_async(&mut conn)
            .await;
        match state {
            Ok(state) => {
                let state = BreakerState::parse(state.as_deref().unwrap_or("closed"));
                lock(&guard.breaker).follow(state);
                learn(guard, state, asked_at);
                Some(state)
            }
            Err(e) => {
                link.report(&classify(&e));
                None
            }
        }
    }

    /// The background work until `cancel`: the loop ([`Self::beat`]) and, with Redis, following
    /// the breakers' announcements. `providers` are the chain's providers with their attempt
    /// timeouts, by position.
    pub async fn run(
        self: Arc<Self>,
        providers: Vec<(Arc<dyn Provider>, Duration)>,
        cancel: CancellationToken,
    ) {
        let news = async {
            let Some(link) = self.link.clone() else {
                return;
            };
            let channels = self
                .guards
                .iter()
                .flatten()
                .map(|guard| keys::breaker_news(&guard.name))
                .collect();
            let subscriber: Arc<dyn Subscriber> = self.clone();
            pubsub::follow(link, channels, subscriber, cancel.clone()).await;
        };
        tokio::join!(news, self.beat(providers, cancel.clone()));
    }

    /// The loop: heartbeat, breaker gauges (and the shared states re-read), probes of open
    /// providers.
    async fn beat(
        self: &Arc<Self>,
        providers: Vec<(Arc<dyn Provider>, Duration)>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.probes.close();
                    self.probes.wait().await;
                    for guard in self.guards.iter().flatten() {
                        self.send_successes(guard).await;
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            self.heartbeat().await;
            for (position, (provider, timeout)) in providers.iter().enumerate() {
                let Some(guard) = self.guard(position) else {
                    continue;
                };
                self.send_successes(guard).await;
                let Some(state) = self.state(position).await else {
                    continue;
                };
                metrics::gauge!(telemetry::PROVIDER_BREAKER_OPEN, "provider" => guard.name.clone())
                    .set(f64::from(u8::from(state == BreakerState::Open)));
                if state == BreakerState::Open && self.probe_due(guard).await {
                    let guards = self.clone();
                    let (provider, timeout) = (provider.clone(), *timeout);
                    self.probes
                        .spawn(async move { guards.probe(position, provider, timeout).await });
                }
            }
        }
    }

    /// Whether this replica should probe now: its own interval has passed and, with Redis, no
    /// other replica holds the probe slot.
    async fn probe_due(&self, guard: &Guard) -> bool {
        if guard.probing.load(Ordering::Acquire) {
            return false;
        }
        let interval = self.settings.probe_interval;
        {
            let mut last = lock(&guard.last_probe);
            if last.is_some_and(|t| t.elapsed() < interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let Some(link) = &self.link else {
            return true;
        };
        let Ok(mut conn) = link.connection() else {
            return true;
        };
        let taken: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(keys::breaker_probe(&guard.name))
            .arg(&self.replica_id)
            .arg("NX")
            .arg("PX")
            .arg(interval.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match taken {
            Ok(taken) => taken.is_some(),
            Err(e) => {
                link.report(&classify(&e));
                true
            }
        }
    }

    /// One probe: a minimal prompt, bounded by the provider's timeout.
    async fn probe(&self, position: usize, provider: Arc<dyn Provider>, timeout: Duration) {
        let Some(guard) = self.guard(position) else {
            return;
        };
        guard.probing.store(true, Ordering::Release);
        let prompt = Prompt {
            messages: vec![ChatMessage {
                role: "user",
                content: "Health check from clawgate: please answer OK.".into(),
            }],
            template_answer: String::new(),
        };
        let result = tokio::time::timeout(timeout, provider.complete(&prompt)).await;
        let verdict = match &result {
            Ok(Ok(_)) => Verdict::Success,
            _ => Verdict::Failure,
        };
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => e.outcome(),
            Err(_) => "timeout",
        };
        metrics::counter!(telemetry::PROVIDER_PROBES, "provider" => guard.name.clone(), "outcome" => outcome)
            .increment(1);
        tracing::debug!(provider = %guard.name, outcome, "probed an open provider");
        self.count(guard, verdict, true).await;
        guard.probing.store(false, Ordering::Release);
    }

    /// Records this replica as alive and learns how many are.
    async fn heartbeat(&self) {
        let Some(link) = &self.link else {
            return;
        };
        let Ok(mut conn) = link.connection() else {
            return;
        };
        let now = crate::message::now_ms();
        let result: redis::RedisResult<(i64, i64, u32)> = redis::pipe()
            .cmd("ZADD")
            .arg(keys::REPLICAS)
            .arg(now)
            .arg(&self.replica_id)
            .cmd("ZREMRANGEBYSCORE")
            .arg(keys::REPLICAS)
            .arg("-inf")
            .arg(now.saturating_sub(REPLICA_ALIVE.as_millis() as u64))
            .cmd("ZCARD")
            .arg(keys::REPLICAS)
            .query_async(&mut conn)
            .await;
        match result {
            Ok((_, _, live)) => self.live_replicas.store(live.max(1), Ordering::Relaxed),
            Err(e) => link.report(&classify(&e)),
        }
    }

    fn guard(&self, position: usize) -> Option<&Guard> {
        self.guards.get(position).and_then(Option::as_ref)
    }
}

/// Announcements of shared breaker changes (`state provider`), from whichever replica made them.
impl Subscriber for ProviderGuards {
    fn subscribed(&self) {
        // What was announced while unsubscribed is lost: ask Redis again before relying on it.
        for guard in self.guards.iter().flatten() {
            *lock(&guard.known_shared) = None;
        }
        self.news_followed.store(true, Ordering::Release);
    }

    fn message(&self, payload: &[u8]) {
        let Some((state, provider)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.split_once(' '))
        else {
            return;
        };
        if let Some(guard) = self.guards.iter().flatten().find(|g| g.name == provider) {
            let state = BreakerState::parse(state);
            lock(&guard.breaker).follow(state);
            learn(guard, state, Instant::now());
        }
    }
}

/// Remembers `state` of the shared breaker, as of `asked_at` (an announcement: now; an answer:
/// when its request was sent), unless an announcement that came since told something newer.
fn learn(guard: &Guard, state: BreakerState, asked_at: Instant) {
    let mut known = lock(&guard.known_shared);
    if known.is_none_or(|(_, learned_at)| learned_at <= asked_at) {
        *known = Some((state, Instant::now()));
    }
}

/// The ops alert: a log event and a metric when a provider's breaker opens (its traffic falls
/// back) and when it closes (the provider recovered).
fn report_change(provider: &str, state: BreakerState) {
    match state {
        BreakerState::Open => tracing::warn!(
            provider,
            "circuit opened: the provider is skipped and turns fall back to the next one until a probe succeeds"
        ),
        BreakerState::Closed => tracing::info!(
            provider,
            "circuit closed: the provider answered a probe and gets traffic again"
        ),
    }
    metrics::counter!(telemetry::PROVIDER_BREAKER_TRANSITIONS, "provider" => provider.to_string(), "to" => state.as_str())
        .increment(1);
    metrics::gauge!(telemetry::PROVIDER_BREAKER_OPEN, "provider" => provider.to_string())
        .set(f64::from(u8::from(state == BreakerState::Open)));
}

/// A mutex that a panicking holder cannot make unusable (the data are counters).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The last [`LATENCY_SAMPLES`] successful latencies of a provider.
#[derive(Debug, Default)]
struct LatencyWindow {
    /// Ring buffer of samples.
    samples: Vec<Duration>,
    /// Where the next sample goes once the buffer is full.
    next: usize,
}

impl LatencyWindow {
    fn push(&mut self, latency: Duration) {
        if self.samples.len() < LATENCY_SAMPLES {
            self.samples.push(latency);
        } else {
            self.samples[self.next] = latency;
            self.next = (self.next + 1) % LATENCY_SAMPLES;
        }
    }

    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.samples.len() < LATENCY_MIN_SAMPLES {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(index).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_guards(budget: Option<Budget>) -> ProviderGuards {
        ProviderGuards::new(
            None,
            "r1".into(),
            BreakerConfig {
                consecutive_failures: 2,
                ..BreakerConfig::default()
            },
            vec![Some(("primary".into(), budget)), None],
        )
    }

    #[tokio::test(start_paused = true)]
    async fn without_redis_the_local_breaker_decides() {
        let guards = local_guards(None);
        let go = Admission::Go {
            waited: Duration::ZERO,
        };
        assert_eq!(guards.admit(0, "k", Duration::ZERO).await, go);
        guards.record(0, Verdict::Failure, Duration::ZERO).await;
        guards.record(0, Verdict::Failure, Duration::ZERO).await;
        assert_eq!(guards.admit(0, "k", Duration::ZERO).await, Admission::Open);
        // The unguarded position (the template) is always asked.
        assert_eq!(guards.admit(1, "k", Duration::ZERO).await, go);
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_change_outranks_an_answer_to_an_earlier_question() {
        let guards = local_guards(None);
        let guard = guards.guard(0).expect("guarded");
        let known = || lock(&guard.known_shared).map(|(state, _)| state);
        let asked_before = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        Subscriber::message(&guards, b"open primary");
        assert_eq!(known(), Some(BreakerState::Open));
        // The local breaker follows, for when Redis is out of reach.
        assert_eq!(guards.state(0).await, Some(BreakerState::Open));
        // An answer to a question sent before the announcement is older news.
        learn(guard, BreakerState::Closed, asked_before);
        assert_eq!(known(), Some(BreakerState::Open));
        tokio::time::advance(Duration::from_millis(5)).await;
        learn(guard, BreakerState::Closed, Instant::now());
        assert_eq!(known(), Some(BreakerState::Closed));
        // Another provider's news and garbage change nothing; a new subscription forgets.
        Subscriber::message(&guards, b"open someone-else");
        Subscriber::message(&guards, b"\xff");
        assert_eq!(known(), Some(BreakerState::Closed));
        Subscriber::subscribed(&guards);
        assert_eq!(known(), None);
    }

    #[tokio::test]
    async fn without_redis_the_budget_spills_what_does_not_fit() {
        let guards = local_guards(Some(Budget {
            per_minute: 60,
            per_key: None,
            burst: 1,
            max_wait: Duration::ZERO,
        }));
        for _ in 0..2 {
            assert!(matches!(
                guards.admit(0, "k", Duration::ZERO).await,
                Admission::Go { .. }
            ));
        }
        assert!(matches!(
            guards.admit(0, "k", Duration::ZERO).await,
            Admission::OverBudget { .. }
        ));
    }

    #[test]
    fn the_hedging_delay_is_the_p95_of_recent_answers() {
        let mut window = LatencyWindow::default();
        for ms in 1..=10 {
            window.push(Duration::from_millis(ms));
        }
        assert_eq!(window.quantile(0.95), None, "too few samples to trust");
        for ms in 11..=100 {
            window.push(Duration::from_millis(ms));
        }
        assert_eq!(window.quantile(0.95), Some(Duration::from_millis(95)));
    }
}
