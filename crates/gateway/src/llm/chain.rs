//! The provider chain: try each provider in order, retry transient failures with jittered
//! backoff, fall through on anything else, and always end with an answer, inside the turn's
//! deadline.
//!
//! Before each attempt the provider's guard is asked: an open circuit breaker skips the provider
//! at once (no timeout wait during an outage), and a call its shared budget cannot take within a
//! short wait spills to the next provider instead of failing. Each attempt is bounded by its
//! provider's `timeout` and by what is left of the deadline minus a reserve for the last provider
//! (the template), so that one always answers in time. A timeout or a 429 is not retried but
//! falls through at once. Optionally a slow attempt is hedged: after the provider's p95 latency
//! the next provider is asked too and the first answer wins.

use super::breaker::Verdict;
use super::connections::Connections;
use super::guard::{Admission, ProviderGuards};
use super::ollama::OllamaProvider;
use super::openai::OpenAiProvider;
use super::ratelimit::Budget;
use super::template::TemplateProvider;
use super::{AnswerSink, Prompt, Provider, ProviderError};
use crate::config::{BreakerConfig, HedgingConfig, LlmConfig, ProviderKind};
use crate::state::link::RedisLink;
use crate::{retry, telemetry};
use backon::BackoffBuilder;
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Time kept back from the deadline for the last provider (the template answers in
/// microseconds; this covers scheduling).
const LAST_PROVIDER_RESERVE: Duration = Duration::from_millis(20);

/// One provider with its attempt bound and retry budget.
struct Link {
    provider: Arc<dyn Provider>,
    /// Bound on one attempt.
    timeout: Duration,
    /// Further attempts after a retryable failure.
    max_retries: u32,
    /// Longest wait for room in the provider's budget before spilling.
    max_wait: Duration,
}

/// An answer and who gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer text.
    pub text: String,
    /// Name of the provider that produced it.
    pub provider: String,
}

/// Why a provider gave no answer for this turn.
#[derive(Debug)]
enum Skip {
    /// Its breaker is open.
    BreakerOpen,
    /// Its budget had no room within the wait.
    OverBudget,
    /// The turn's deadline left no time for it.
    Deadline,
    /// It was asked and failed (after any retries).
    Failed(ProviderError),
}

impl Skip {
    /// The `reason` label of [`telemetry::PROVIDER_SKIPPED`], for providers not asked.
    fn reason(&self) -> Option<&'static str> {
        match self {
            Skip::BreakerOpen => Some("breaker_open"),
            Skip::OverBudget => Some("rate_limited"),
            Skip::Deadline => Some("deadline"),
            Skip::Failed(_) => None,
        }
    }
}

/// Providers in fallback order, their guards, the deadline and the hedging policy.
pub struct ProviderChain {
    links: Vec<Link>,
    /// Breakers and budgets, by position; the last provider is never guarded.
    guards: Arc<ProviderGuards>,
    /// Bound on one turn's walk down the chain.
    deadline: Duration,
    /// Whether slow attempts are hedged.
    hedging: HedgingConfig,
}

impl ProviderChain {
    /// The chain described by the `llm` block, sharing one HTTP client; breakers and budgets are
    /// shared through `link` (in-process only when `None`).
    pub fn from_config(
        config: &LlmConfig,
        client: &reqwest::Client,
        link: Option<Arc<RedisLink>>,
        replica_id: &str,
    ) -> ProviderChain {
        let mut links = Vec::new();
        let mut guarded = Vec::new();
        for p in &config.providers {
            let provider: Arc<dyn Provider> = match &p.kind {
                ProviderKind::OpenAiCompatible {
                    endpoint,
                    api_key,
                    model,
                    http,
                } => Arc::new(OpenAiProvider::new(
                    &p.name,
                    endpoint,
                    api_key.clone(),
                    model,
                    Connections::new(http, endpoint, client),
                )),
                ProviderKind::Ollama {
                    endpoint,
                    model,
                    http,
                } => Arc::new(OllamaProvider::new(
                    &p.name,
                    endpoint,
                    model,
                    Connections::new(http, endpoint, client),
                )),
                ProviderKind::Template => Arc::new(TemplateProvider::new(&p.name)),
            };
            let budget = p.rate_limit.as_ref().map(Budget::from_config);
            links.push(Link {
                provider,
                timeout: p.timeout,
                max_retries: p.max_retries,
                max_wait: budget.as_ref().map_or(Duration::ZERO, |b| b.max_wait),
            });
            // The template needs no breaker: it cannot fail.
            guarded.push(
                (!matches!(p.kind, ProviderKind::Template)).then(|| (p.name.clone(), budget)),
            );
        }
        let guards = ProviderGuards::new(
            link,
            replica_id.to_string(),
            config.circuit_breaker.clone(),
            guarded,
        );
        ProviderChain {
            links,
            guards: Arc::new(guards),
            deadline: config.deadline,
            hedging: config.hedging.clone(),
        }
    }

    /// A chain of `(provider, timeout, max_retries)` in fallback order, with in-process breakers
    /// (default thresholds) on all but the last, no budgets and a one-minute deadline.
    pub fn new(links: Vec<(Arc<dyn Provider>, Duration, u32)>) -> ProviderChain {
        let count = links.len();
        let guarded = links
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| (i + 1 < count).then(|| (p.name().to_string(), None)))
            .collect();
        ProviderChain {
            links: links
                .into_iter()
                .map(|(provider, timeout, max_retries)| Link {
                    provider,
                    timeout,
                    max_retries,
                    max_wait: Duration::ZERO,
                })
                .collect(),
            guards: Arc::new(ProviderGuards::new(
                None,
                "local".into(),
                BreakerConfig::default(),
                guarded,
            )),
            deadline: Duration::from_secs(60),
            hedging: HedgingConfig::default(),
        }
    }

    /// The same chain with another turn deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> ProviderChain {
        self.deadline = deadline;
        self
    }

    /// The same chain with another hedging policy.
    pub fn with_hedging(mut self, hedging: HedgingConfig) -> ProviderChain {
        self.hedging = hedging;
        self
    }

    /// Names of the providers, in order.
    pub fn names(&self) -> Vec<&str> {
        self.links.iter().map(|l| l.provider.name()).collect()
    }

    /// Runs the guards' background loop (heartbeat, breaker gauges, probes) until `cancel`.
    pub async fn run_guards(&self, cancel: CancellationToken) {
        let providers = self
            .links
            .iter()
            .map(|l| (l.provider.clone(), l.timeout))
            .collect();
        self.guards.clone().run(providers, cancel).await;
    }

    /// Asks the providers in turn until one answers, within the deadline. `rate_key` names the
    /// account the message came in on: its share of each budget is limited separately.
    pub async fn complete(&self, prompt: &Prompt, rate_key: &str) -> Completion {
        let deadline = Instant::now() + self.deadline;
        self.walk(0, prompt, rate_key, deadline, None).await
    }

    /// Like [`ProviderChain::complete`], with the answer handed to `sink` as the model writes
    /// it. A provider that fails before its first delta falls through unseen; one that fails
    /// after it resets the sink, and the next provider's answer follows.
    pub async fn complete_streaming(
        &self,
        prompt: &Prompt,
        rate_key: &str,
        sink: &dyn AnswerSink,
    ) -> Completion {
        let deadline = Instant::now() + self.deadline;
        let gate = Gate::new(sink);
        self.walk(0, prompt, rate_key, deadline, Some(&gate)).await
    }

    /// The chain from `from` on.
    fn walk<'a>(
        &'a self,
        from: usize,
        prompt: &'a Prompt,
        rate_key: &'a str,
        deadline: Instant,
        gate: Option<&'a Gate<'a>>,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            for position in from..self.links.len() {
                if let Some(after) = self.hedge_delay(position, deadline) {
                    return self
                        .hedged(position, after, prompt, rate_key, deadline, gate)
                        .await;
                }
                match self.ask(position, prompt, rate_key, deadline, gate).await {
                    Ok(text) => return self.answered(position, text),
                    Err(skip) => self.skipped(position, &skip),
                }
            }
            // Only reachable with a chain that ends in a failing provider; the config always
            // appends a template provider, so this is defence in depth, not a path.
            Completion {
                text: prompt.template_answer.clone(),
                provider: "template".into(),
            }
        })
    }

    /// Asks the provider at `position` and, if it has not answered after `after`, the next one
    /// too; the first answer wins. When both fail the walk goes on after the next one.
    async fn hedged(
        &self,
        position: usize,
        after: Duration,
        prompt: &Prompt,
        rate_key: &str,
        deadline: Instant,
        gate: Option<&Gate<'_>>,
    ) -> Completion {
        let provider = self.links[position].provider.name().to_string();
        let original = self.ask(position, prompt, rate_key, deadline, gate);
        tokio::pin!(original);
        tokio::select! {
            result = &mut original => {
                return match result {
                    Ok(text) => self.answered(position, text),
                    Err(skip) => {
                        self.skipped(position, &skip);
                        self.walk(position + 1, prompt, rate_key, deadline, gate).await
                    }
                };
            }
            _ = tokio::time::sleep(after) => {}
        }
        let hedge = self.ask(position + 1, prompt, rate_key, deadline, gate);
        tokio::pin!(hedge);
        let won = |winner: &'static str| {
            metrics::counter!(telemetry::PROVIDER_HEDGES, "provider" => provider.clone(), "winner" => winner)
                .increment(1);
        };
        let (first, first_position, second, second_position) = tokio::select! {
            result = &mut original => match result {
                Ok(text) => {
                    won("original");
                    return self.answered(position, text);
                }
                Err(skip) => (skip, position, hedge.await, position + 1),
            },
            result = &mut hedge => match result {
                Ok(text) => {
                    won("hedge");
                    return self.answered(position + 1, text);
                }
                Err(skip) => (skip, position + 1, original.await, position),
            },
        };
        self.skipped(first_position, &first);
        match second {
            Ok(text) => {
                won(if second_position == position {
                    "original"
                } else {
                    "hedge"
                });
                self.answered(second_position, text)
            }
            Err(skip) => {
                self.skipped(second_position, &skip);
                self.walk(position + 2, prompt, rate_key, deadline, gate)
                    .await
            }
        }
    }

    /// When to hedge the attempt at `position`: only with hedging on, when the next provider is
    /// a model (a hedge to the template would replace slow answers with canned ones) and when
    /// the delay fits in the deadline.
    fn hedge_delay(&self, position: usize, deadline: Instant) -> Option<Duration> {
        if !self.hedging.enabled || position + 2 >= self.links.len() {
            return None;
        }
        let after = self.hedging.after.or_else(|| self.guards.p95(position))?;
        (Instant::now() + after < deadline).then_some(after)
    }

    /// One provider's part of the turn: admission, attempts and retries, all inside the
    /// deadline.
    async fn ask(
        &self,
        position: usize,
        prompt: &Prompt,
        rate_key: &str,
        deadline: Instant,
        gate: Option<&Gate<'_>>,
    ) -> Result<String, Skip> {
        let link = &self.links[position];
        let last = position + 1 == self.links.len();
        // Everyone but the last provider leaves the reserve for it.
        let end = if last {
            deadline
        } else {
            deadline - LAST_PROVIDER_RESERVE
        };
        let mut backoff = retry::backoff(link.max_retries).build();
        loop {
            let remaining = end.saturating_duration_since(Instant::now());
            if remaining.is_zero() && !last {
                return Err(Skip::Deadline);
            }
            match self
                .guards
                .admit(position, rate_key, link.max_wait.min(remaining))
                .await
            {
                Admission::Go { .. } => {}
                Admission::Open => return Err(Skip::BreakerOpen),
                Admission::OverBudget { .. } => return Err(Skip::OverBudget),
            }
            let remaining = end.saturating_duration_since(Instant::now());
            // The last provider always gets its own timeout: it is the template, which answers
            // at once, or a chain's explicit last resort.
            let timeout = if last {
                link.timeout
            } else {
                link.timeout.min(remaining)
            };
            let started = Instant::now();
            let result = attempt(link, prompt, timeout, gate).await;
            let latency = started.elapsed();
            match breaker_verdict(&result, timeout < link.timeout) {
                // A success only resets counters: it joins the batch the guards send once a
                // second, so the answer waits for no Redis round trip.
                Some(Verdict::Success) => self.guards.record_success(position, latency),
                // A failure is counted before the next attempt or provider, which must see it.
                Some(verdict) => self.guards.record(position, verdict, latency).await,
                None => {}
            }
            let error = match result {
                Ok(text) => return Ok(text),
                Err(error) => error,
            };
            let retry_after = error
                .is_retryable()
                .then(|| backoff.next())
                .flatten()
                .filter(|delay| Instant::now() + *delay < end);
            if let Some(delay) = retry_after {
                tracing::info!(provider = link.provider.name(), %error, ?delay, "provider attempt failed; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(Skip::Failed(error));
        }
    }

    fn answered(&self, position: usize, text: String) -> Completion {
        let provider = self.links[position].provider.name().to_string();
        if position > 0 {
            metrics::counter!(telemetry::PROVIDER_FALLBACKS, "provider" => provider.clone())
                .increment(1);
        }
        Completion { text, provider }
    }

    fn skipped(&self, position: usize, skip: &Skip) {
        let provider = self.links[position].provider.name();
        match (skip, skip.reason()) {
            (Skip::Failed(error), _) => {
                tracing::warn!(provider, %error, "provider failed; falling through to the next");
            }
            (_, Some(reason)) => {
                metrics::counter!(telemetry::PROVIDER_SKIPPED, "provider" => provider.to_string(), "reason" => reason)
                    .increment(1);
                tracing::debug!(provider, reason, "provider skipped");
            }
            (_, None) => {}
        }
    }
}

/// What an attempt tells the breaker: a 429 says nothing about the provider's health (the budget
/// handles it), and a timeout the deadline shortened says nothing either.
fn breaker_verdict(
    result: &Result<String, ProviderError>,
    shortened_by_deadline: bool,
) -> Option<Verdict> {
    match result {
        Ok(_) => Some(Verdict::Success),
        Err(ProviderError::RateLimited) => None,
        Err(ProviderError::Timeout(_)) if shortened_by_deadline => None,
        Err(_) => Some(Verdict::Failure),
    }
}

/// Decides whose deltas reach the sink when attempts overlap (retries, fallbacks, hedges): the
/// first attempt to write owns the stream; a later one is heard only once the owner failed,
/// starting with everything it wrote so far. Whatever wins, the final answer replaces the
/// streamed text.
struct Gate<'a> {
    sink: &'a dyn AnswerSink,
    owner: Mutex<Option<u64>>,
    attempts: AtomicU64,
}

impl<'a> Gate<'a> {
    fn new(sink: &'a dyn AnswerSink) -> Gate<'a> {
        Gate {
            sink,
            owner: Mutex::new(None),
            attempts: AtomicU64::new(0),
        }
    }

    /// A new attempt's number.
    fn attempt(&self) -> u64 {
        self.attempts.fetch_add(1, Ordering::Relaxed)
    }

    /// Attempt `attempt` wrote `delta`; `so_far` is all it wrote, `delta` included.
    fn delta(&self, attempt: u64, so_far: &str, delta: &str) {
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        match *owner {
            None => {
                *owner = Some(attempt);
                self.sink.delta(so_far);
            }
            Some(current) if current == attempt => self.sink.delta(delta),
            Some(_) => {}
        }
    }

    /// Attempt `attempt` failed: if it owned the stream, what it wrote is void.
    fn failed(&self, attempt: u64) {
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        if *owner == Some(attempt) {
            *owner = None;
            self.sink.reset();
        }
    }
}

/// One bounded attempt, recorded in the provider metrics; streamed through `gate` when given.
async fn attempt(
    link: &Link,
    prompt: &Prompt,
    timeout: Duration,
    gate: Option<&Gate<'_>>,
) -> Result<String, ProviderError> {
    let started = Instant::now();
    let answered = match gate {
        None => tokio::time::timeout(timeout, link.provider.complete(prompt)).await,
        Some(gate) => {
            let attempt = gate.attempt();
            let so_far = Mutex::new(String::new());
            let on_delta = |delta: &str| {
                let mut text = so_far.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(delta);
                gate.delta(attempt, &text, delta);
            };
            let answered =
                tokio::time::timeout(timeout, link.provider.stream(prompt, &on_delta)).await;
            if !matches!(answered, Ok(Ok(_))) {
                gate.failed(attempt);
            }
            answered
        }
    };
    let result = match answered {
        Ok(Err(ProviderError::Timeout(_))) | Err(_) => Err(ProviderError::Timeout(timeout)),
        Ok(result) => result,
    };
    let provider = link.provider.name().to_string();
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics::histogram!(telemetry::PROVIDER_LATENCY, "provider" => provider.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(telemetry::PROVIDER_CALLS, "provider" => provider, "outcome" => outcome)
        .increment(1);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A provider whose behaviour the test scripts: fail the first `failures` calls with
    /// `error`, hang forever, or answer after `latency`.
    struct Scripted {
        name: &'static str,
        failures: u32,
        error: Option<ProviderError>,
        hang: bool,
        latency: Duration,
        calls: AtomicU32,
    }

    impl Scripted {
        fn ok(name: &'static str) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                failures: 0,
                error: None,
                hang: false,
                latency: Duration::ZERO,
                calls: AtomicU32::new(0),
            })
        }
        fn failing(name: &'static str, failures: u32, error: ProviderError) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                failures,
                error: Some(error),
                hang: false,
                latency: Duration::ZERO,
                calls: AtomicU32::new(0),
            })
        }
        fn slow(name: &'static str, latency: Duration) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                failures: 0,
                error: None,
                hang: false,
                latency,
                calls: AtomicU32::new(0),
            })
        }
        fn hanging(name: &'static str) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                failures: 0,
                error: None,
                hang: true,
                latency: Duration::ZERO,
                calls: AtomicU32::new(0),
            })
        }
    }

    #[async_trait]
    impl Provider for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        async fn complete(&self, _prompt: &Prompt) -> Result<String, ProviderError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.latency).await;
            match &self.error {
                Some(e) if call < self.failures => Err(e.clone()),
                _ => Ok(format!("answer from {}", self.name)),
            }
        }
    }

    fn prompt() -> Prompt {
        Prompt {
            messages: vec![],
            template_answer: "canned".into(),
        }
    }

    fn server_error() -> ProviderError {
        ProviderError::Status {
            status: 500,
            detail: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_on_the_same_provider() {
        let primary = Scripted::failing("primary", 2, server_error());
        let chain = ProviderChain::new(vec![
            (primary.clone(), Duration::from_secs(10), 2),
            (Scripted::ok("fallback"), Duration::from_secs(10), 0),
        ]);
        let answer = chain.complete(&prompt(), "k").await;
        assert_eq!(answer.provider, "primary");
        assert_eq!(primary.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_fall_through_to_the_next_provider() {
        let primary = Scripted::failing("primary", 10, server_error());
        let chain = ProviderChain::new(vec![
            (primary.clone(), Duration::from_secs(10), 1),
            (Scripted::ok("fallback"), Duration::from_secs(10), 0),
        ]);
        assert_eq!(chain.complete(&prompt(), "k").await.provider, "fallback");
        assert_eq!(primary.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_provider_costs_one_timeout_then_falls_through() {
        let primary = Scripted::hanging("primary");
        let chain = ProviderChain::new(vec![
            (primary.clone(), Duration::from_secs(10), 2),
            (Scripted::ok("fallback"), Duration::from_secs(10), 0),
        ]);
        let started = tokio::time::Instant::now();
        assert_eq!(chain.complete(&prompt(), "k").await.provider, "fallback");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(primary.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_and_client_errors_fall_through_without_retry() {
        for error in [
            ProviderError::RateLimited,
            ProviderError::Status {
                status: 401,
                detail: String::new(),
            },
        ] {
            let primary = Scripted::failing("primary", 10, error);
            let chain = ProviderChain::new(vec![
                (primary.clone(), Duration::from_secs(10), 3),
                (
                    Arc::new(TemplateProvider::new("template")),
                    Duration::from_secs(1),
                    0,
                ),
            ]);
            let answer = chain.complete(&prompt(), "k").await;
            assert_eq!(
                answer,
                Completion {
                    text: "canned".into(),
                    provider: "template".into()
                }
            );
            assert_eq!(primary.calls.load(Ordering::SeqCst), 1);
        }
    }

    fn template() -> Arc<dyn Provider> {
        Arc::new(TemplateProvider::new("template"))
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_breaker_opens_a_hanging_primary_costs_no_time() {
        let primary = Scripted::hanging("primary");
        let chain = ProviderChain::new(vec![
            (primary.clone(), Duration::from_secs(10), 0),
            (Scripted::ok("fallback"), Duration::from_secs(10), 0),
            (template(), Duration::from_secs(1), 0),
        ]);
        // The default breaker opens after five consecutive failures: five turns wait out the
        // timeout, the sixth skips the primary at once.
        for _ in 0..5 {
            let started = Instant::now();
            assert_eq!(chain.complete(&prompt(), "k").await.provider, "fallback");
            assert_eq!(started.elapsed(), Duration::from_secs(10));
        }
        let started = Instant::now();
        assert_eq!(chain.complete(&prompt(), "k").await.provider, "fallback");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(primary.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_shorter_than_the_timeout_still_gets_the_template_answer_in_time() {
        let chain = ProviderChain::new(vec![
            (Scripted::hanging("primary"), Duration::from_secs(10), 2),
            (Scripted::hanging("fallback"), Duration::from_secs(30), 1),
            (template(), Duration::from_secs(1), 0),
        ])
        .with_deadline(Duration::from_secs(2));
        let started = Instant::now();
        let answer = chain.complete(&prompt(), "k").await;
        assert_eq!(answer.provider, "template");
        assert_eq!(answer.text, "canned");
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_deadline_would_be_passed() {
        let primary = Scripted::failing("primary", 100, server_error());
        let chain = ProviderChain::new(vec![
            (primary.clone(), Duration::from_secs(10), 10),
            (template(), Duration::from_secs(1), 0),
        ])
        .with_deadline(Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(chain.complete(&prompt(), "k").await.provider, "template");
        assert!(started.elapsed() <= Duration::from_millis(300));
        assert!(primary.calls.load(Ordering::SeqCst) < 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_is_hedged_and_the_first_answer_wins() {
        let primary = Scripted::slow("primary", Duration::from_secs(5));
        let fallback = Scripted::slow("fallback", Duration::from_millis(300));
        let chain = ProviderChain::new(vec![
            (primary.clone(), Duration::from_secs(10), 0),
            (fallback.clone(), Duration::from_secs(10), 0),
            (template(), Duration::from_secs(1), 0),
        ])
        .with_hedging(HedgingConfig {
            enabled: true,
            after: Some(Duration::from_millis(200)),
        });
        let started = Instant::now();
        assert_eq!(chain.complete(&prompt(), "k").await.provider, "fallback");
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(primary.calls.load(Ordering::SeqCst), 1);

        // A primary that answers before the hedge delay is never hedged.
        let fast = ProviderChain::new(vec![
            (
                Scripted::slow("primary", Duration::from_millis(100)),
                Duration::from_secs(10),
                0,
            ),
            (fallback.clone(), Duration::from_secs(10), 0),
            (template(), Duration::from_secs(1), 0),
        ])
        .with_hedging(HedgingConfig {
            enabled: true,
            after: Some(Duration::from_millis(200)),
        });
        assert_eq!(fast.complete(&prompt(), "k").await.provider, "primary");
        assert_eq!(fallback.calls.load(Ordering::SeqCst), 1);
    }
}
