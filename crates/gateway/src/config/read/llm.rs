//! The `llm` section (the seed's block): providers in fallback order, budgets, the breaker,
//! hedging and the chain's deadline.

use super::super::reader::{self, Object, Reader, join, ms};
use super::super::schema::{
    BreakerConfig, HedgingConfig, HttpVersion, LlmConfig, ProviderConfig, ProviderHttp,
    ProviderKind, RateLimitingConfig,
};
use super::super::validation::check_endpoint;
use super::channels::required_string;
use secrecy::SecretString;
use serde_json::Value;
use std::time::Duration;

/// `llm`: a `template` provider is appended when none is listed, so a turn always gets an answer.
pub(super) fn read(r: &mut Reader, root: &Object) -> LlmConfig {
    let empty = Object::new();
    let l = r
        .section(
            root,
            "",
            "llm",
            &[
                "providers",
                "rateLimiting",
                "deadlineMs",
                "circuitBreaker",
                "hedging",
            ],
        )
        .unwrap_or(&empty);
    let mut providers = Vec::new();
    match l.get("providers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("llm.providers[{i}]");
                match item {
                    Value::Object(p) => {
                        if let Some(provider) = read_provider(r, p, &path) {
                            if providers
                                .iter()
                                .any(|q: &ProviderConfig| q.name == provider.name)
                            {
                                r.error(
                                    join(&path, "name"),
                                    format!(
                                        "duplicate provider name \"{}\"; names must be unique",
                                        provider.name
                                    ),
                                );
                            }
                            providers.push(provider);
                        }
                    }
                    other => r.error(
                        path,
                        format!(
                            "expected a provider object, found {}",
                            reader::describe(other)
                        ),
                    ),
                }
            }
        }
        Some(other) => r.error(
            "llm.providers",
            format!(
                "expected an array of providers, found {}",
                reader::describe(other)
            ),
        ),
    }
    if !providers
        .iter()
        .any(|p| matches!(p.kind, ProviderKind::Template))
    {
        providers.push(ProviderConfig {
            name: "template".into(),
            kind: ProviderKind::Template,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            rate_limit: None,
        });
    }

    let rate_limiting = read_rate_limiting(r, l, "llm");
    for provider in &mut providers {
        if provider.rate_limit.is_none()
            && matches!(provider.kind, ProviderKind::OpenAiCompatible { .. })
        {
            provider.rate_limit = rate_limiting.clone();
        }
    }
    let defaults = BreakerConfig::default();
    let circuit_breaker = match r.section(
        l,
        "llm",
        "circuitBreaker",
        &[
            "consecutiveFailures",
            "failureRatio",
            "minCalls",
            "windowMs",
            "probeIntervalMs",
        ],
    ) {
        None => defaults,
        Some(b) => {
            let p = "llm.circuitBreaker";
            BreakerConfig {
                consecutive_failures: r
                    .integer(b, p, "consecutiveFailures", 1, 1_000, "failed attempts")
                    .map_or(defaults.consecutive_failures, |n| n as u32),
                failure_ratio: r
                    .number(b, p, "failureRatio", 0.01, 1.0, "share of failed attempts")
                    .unwrap_or(defaults.failure_ratio),
                min_calls: r
                    .integer(b, p, "minCalls", 1, 100_000, "attempts")
                    .map_or(defaults.min_calls, |n| n as u32),
                window: r
                    .integer(b, p, "windowMs", 1_000, 3_600_000, "milliseconds")
                    .map_or(defaults.window, Duration::from_millis),
                probe_interval: r
                    .integer(b, p, "probeIntervalMs", 100, 600_000, "milliseconds")
                    .map_or(defaults.probe_interval, Duration::from_millis),
            }
        }
    };
    let hedging = match r.section(l, "llm", "hedging", &["enabled", "afterMs"]) {
        None => HedgingConfig::default(),
        Some(h) => HedgingConfig {
            enabled: r.boolean(h, "llm.hedging", "enabled").unwrap_or(false),
            after: r
                .integer(h, "llm.hedging", "afterMs", 1, 600_000, "milliseconds")
                .map(Duration::from_millis),
        },
    };
    LlmConfig {
        providers,
        rate_limiting,
        deadline: ms(
            r.integer(l, "llm", "deadlineMs", 100, 600_000, "milliseconds"),
            20_000,
        ),
        circuit_breaker,
        hedging,
    }
}

/// A `rateLimiting` block under `parent` (the `llm` block or one provider).
fn read_rate_limiting(r: &mut Reader, parent: &Object, prefix: &str) -> Option<RateLimitingConfig> {
    let rl = r.section(
        parent,
        prefix,
        "rateLimiting",
        &[
            "requestsPerMinute",
            "requestsPerKey",
            "burstAllowed",
            "maxWaitMs",
        ],
    )?;
    let p = join(prefix, "rateLimiting");
    let requests_per_minute = r.integer(
        rl,
        &p,
        "requestsPerMinute",
        1,
        10_000_000,
        "requests per minute",
    );
    if requests_per_minute.is_none() && rl.get("requestsPerMinute").is_none() {
        r.error(
            join(&p, "requestsPerMinute"),
            "missing; expected an integer (requests per minute)",
        );
    }
    Some(RateLimitingConfig {
        requests_per_minute: requests_per_minute.unwrap_or(60),
        requests_per_key: r.integer(
            rl,
            &p,
            "requestsPerKey",
            1,
            10_000_000,
            "requests per minute",
        ),
        burst_allowed: r.integer(rl, &p, "burstAllowed", 0, 10_000_000, "requests"),
        max_wait: ms(
            r.integer(rl, &p, "maxWaitMs", 0, 60_000, "milliseconds"),
            250,
        ),
    })
}

fn read_provider(r: &mut Reader, p: &Object, path: &str) -> Option<ProviderConfig> {
    r.check_keys(
        p,
        path,
        &[
            "name",
            "type",
            "endpoint",
            "apiKey",
            "model",
            "timeout",
            "maxRetries",
            "rateLimiting",
            "httpVersion",
            "streamsPerConnection",
        ],
    );
    let name = r.string(p, path, "name");
    if name.is_none() && p.get("name").is_none() {
        r.error(
            join(path, "name"),
            "missing; expected the provider's unique name",
        );
    }
    let kinds = ["openai-compatible", "ollama", "template"];
    let kind = r.choice(p, path, "type", &kinds);
    if kind.is_none() && p.get("type").is_none() {
        r.error(
            join(path, "type"),
            "missing; expected one of \"openai-compatible\", \"ollama\", \"template\"",
        );
    }
    let timeout = ms(
        r.integer(p, path, "timeout", 1, 600_000, "milliseconds"),
        30_000,
    );
    let max_retries = r
        .integer(p, path, "maxRetries", 0, 10, "retries")
        .unwrap_or(0) as u32;

    let http = ProviderHttp {
        version: match r
            .choice(p, path, "httpVersion", &["auto", "1.1", "2"])
            .as_deref()
        {
            Some("1.1") => HttpVersion::Http1,
            Some("2") => HttpVersion::Http2,
            _ => HttpVersion::Auto,
        },
        streams_per_connection: r
            .integer(p, path, "streamsPerConnection", 1, 1_000, "streams")
            .map_or(ProviderHttp::default().streams_per_connection, |n| {
                n as usize
            }),
    };
    let required = |r: &mut Reader, key: &str, what: &str| required_string(r, p, path, key, what);
    let kind = match kind?.as_str() {
        "openai-compatible" => {
            let endpoint = required(
                r,
                "endpoint",
                "the API base URL, e.g. \"https://api.openai.com/v1\"",
            );
            check_endpoint(r, &endpoint, &join(path, "endpoint"));
            ProviderKind::OpenAiCompatible {
                endpoint,
                api_key: SecretString::from(
                    r.string_or_empty(p, path, "apiKey").unwrap_or_default(),
                ),
                model: required(r, "model", "a model name, e.g. \"gpt-4o-mini\""),
                http,
            }
        }
        "ollama" => {
            let endpoint = required(
                r,
                "endpoint",
                "the Ollama base URL, e.g. \"http://ollama:11434\"",
            );
            check_endpoint(r, &endpoint, &join(path, "endpoint"));
            ProviderKind::Ollama {
                endpoint,
                model: required(r, "model", "a model name, e.g. \"llama3.1:8b\""),
                http,
            }
        }
        _ => ProviderKind::Template,
    };
    let rate_limit = read_rate_limiting(r, p, path);
    Some(ProviderConfig {
        name: name?,
        kind,
        timeout,
        max_retries,
        rate_limit,
    })
}
