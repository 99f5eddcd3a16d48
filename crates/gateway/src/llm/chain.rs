//! The provider chain: try each provider in order, retry transient failures with jittered
//! backoff, fall through on anything else, and always end with an answer.
//!
//! Each attempt is bounded by its provider's `timeout`; a timeout or a 429 is not retried but
//! falls through at once, so a hanging primary costs one timeout per turn, not `maxRetries + 1`.

use super::ollama::OllamaProvider;
use super::openai::OpenAiProvider;
use super::template::TemplateProvider;
use super::{Prompt, Provider, ProviderError};
use crate::config::{LlmConfig, ProviderKind};
use crate::{retry, telemetry};
use backon::Retryable;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One provider with its attempt bound and retry budget.
struct Link {
    provider: Arc<dyn Provider>,
    /// Bound on one attempt.
    timeout: Duration,
    /// Further attempts after a retryable failure.
    max_retries: u32,
}

/// An answer and who gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer text.
    pub text: String,
    /// Name of the provider that produced it.
    pub provider: String,
}

/// Providers in fallback order.
pub struct ProviderChain {
    links: Vec<Link>,
}

impl ProviderChain {
    /// The chain described by the `llm` block, sharing one HTTP client.
    pub fn from_config(config: &LlmConfig, client: &reqwest::Client) -> ProviderChain {
        let links =
            config
                .providers
                .iter()
                .map(|p| {
                    let provider: Arc<dyn Provider> =
                        match &p.kind {
                            ProviderKind::OpenAiCompatible {
                                endpoint,
                                api_key,
                                model,
                            } => Arc::new(OpenAiProvider::new(
                                &p.name,
                                endpoint,
                                api_key.clone(),
                                model,
                                client.clone(),
                            )),
                            ProviderKind::Ollama { endpoint, model } => Arc::new(
                                OllamaProvider::new(&p.name, endpoint, model, client.clone()),
                            ),
                            ProviderKind::Template => Arc::new(TemplateProvider::new(&p.name)),
                        };
                    (provider, p.timeout, p.max_retries)
                })
                .collect();
        ProviderChain::new(links)
    }

    /// A chain of `(provider, timeout, max_retries)` in fallback order.
    pub fn new(links: Vec<(Arc<dyn Provider>, Duration, u32)>) -> ProviderChain {
        ProviderChain {
            links: links
                .into_iter()
                .map(|(provider, timeout, max_retries)| Link {
                    provider,
                    timeout,
                    max_retries,
                })
                .collect(),
        }
    }

    /// Names of the providers, in order.
    pub fn names(&self) -> Vec<&str> {
        self.links.iter().map(|l| l.provider.name()).collect()
    }

    /// Asks each provider in turn until one answers.
    pub async fn complete(&self, prompt: &Prompt) -> Completion {
        for (position, link) in self.links.iter().enumerate() {
            let provider = link.provider.name();
            let result = (|| attempt(link, prompt))
                .retry(retry::backoff(link.max_retries))
                .when(ProviderError::is_retryable)
                .notify(|error, delay| {
                    tracing::info!(provider, %error, ?delay, "provider attempt failed; retrying");
                })
                .await;
            match result {
                Ok(text) => {
                    if position > 0 {
                        metrics::counter!(telemetry::PROVIDER_FALLBACKS, "provider" => provider.to_string())
                            .increment(1);
                    }
                    return Completion {
                        text,
                        provider: provider.to_string(),
                    };
                }
                Err(error) => {
                    tracing::warn!(provider, %error, "provider failed; falling through to the next");
                }
            }
        }
        // Only reachable with a chain that ends in a failing provider; the config always
        // appends a template provider, so this is defence in depth, not a path.
        Completion {
            text: prompt.template_answer.clone(),
            provider: "template".into(),
        }
    }
}

/// One bounded attempt, recorded in the provider metrics.
async fn attempt(link: &Link, prompt: &Prompt) -> Result<String, ProviderError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(link.timeout, link.provider.complete(prompt)).await {
        Ok(Err(ProviderError::Timeout(_))) | Err(_) => Err(ProviderError::Timeout(link.timeout)),
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
    /// `error`, or hang forever.
    struct Scripted {
        name: &'static str,
        failures: u32,
        error: Option<ProviderError>,
        hang: bool,
        calls: AtomicU32,
    }

    impl Scripted {
        fn ok(name: &'static str) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                failures: 0,
                error: None,
                hang: false,
                calls: AtomicU32::new(0),
            })
        }
        fn failing(name: &'static str, failures: u32, error: ProviderError) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                failures,
                error: Some(error),
                hang: false,
                calls: AtomicU32::new(0),
            })
        }
        fn hanging(name: &'static str) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                failures: 0,
                error: None,
                hang: true,
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
        let answer = chain.complete(&prompt()).await;
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
        assert_eq!(chain.complete(&prompt()).await.provider, "fallback");
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
        assert_eq!(chain.complete(&prompt()).await.provider, "fallback");
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
            let answer = chain.complete(&prompt()).await;
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
}
