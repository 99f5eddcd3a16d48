//! Language-model providers and the chain that falls back across them.
//!
//! A provider turns a [`Prompt`] into answer text or a typed [`ProviderError`]; the chain decides,
//! from the error's fields and never from its message, whether to retry, fall through or answer.

pub mod breaker;
pub mod chain;
pub mod connections;
pub mod guard;
pub mod ollama;
pub mod openai;
pub mod ratelimit;
pub mod template;

use async_trait::async_trait;
use serde::Serialize;
use std::time::Duration;

/// One message of the conversation sent to a model, in the role vocabulary both OpenAI and
/// Ollama use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// What a turn asks the providers.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// System prompt, history and the new message, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The skill's canned answer in the customer's language, used by the template provider.
    pub template_answer: String,
}

/// Why a provider attempt failed. The chain reads the variant, never the text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The endpoint could not be reached (refused, DNS, reset).
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    /// No complete answer within the provider's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// HTTP 429: the provider's rate limit.
    #[error("rate limited by the provider (HTTP 429)")]
    RateLimited,
    /// Any other non-success HTTP status.
    #[error("HTTP {status} from the provider: {detail}")]
    Status {
        /// The status code.
        status: u16,
        /// Start of the response body, for the log.
        detail: String,
    },
    /// A success status with a body that holds no answer.
    #[error("unusable answer from the provider: {0}")]
    InvalidResponse(String),
}

impl ProviderError {
    /// Whether another attempt at the same provider may help: connection errors and 5xx are
    /// transient; a timeout or a 429 is not retried (it would spend the turn's time on the
    /// provider that is already slow or saturated) but falls through to the next provider.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect(_) => true,
            ProviderError::Status { status, .. } => *status >= 500,
            ProviderError::Timeout(_)
            | ProviderError::RateLimited
            | ProviderError::InvalidResponse(_) => false,
        }
    }

    /// The `outcome` label of the provider-call metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProviderError::Connect(_) => "connect_error",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::RateLimited => "rate_limited",
            ProviderError::Status { status, .. } if *status >= 500 => "http_5xx",
            ProviderError::Status { .. } => "http_4xx",
            ProviderError::InvalidResponse(_) => "invalid_response",
        }
    }
}

/// Receives an answer as the model writes it, so a customer reads it before it is complete.
pub trait AnswerSink: Send + Sync {
    /// More text of the answer.
    fn delta(&self, text: &str);
    /// The text sent so far is void (its provider failed mid-answer); another answer follows.
    fn reset(&self);
}

/// Called with each piece of an answer a provider streams.
pub type OnDelta<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A source of answers.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The configured name, recorded on every answer.
    fn name(&self) -> &str;

    /// One attempt; the chain bounds it with the provider's timeout.
    async fn complete(&self, prompt: &Prompt) -> Result<String, ProviderError>;

    /// One attempt that hands the answer to `on_delta` as it is written and returns it whole.
    /// Providers that cannot stream answer at once (nothing streamed: the whole answer follows
    /// as the turn's final answer).
    async fn stream(
        &self,
        prompt: &Prompt,
        on_delta: OnDelta<'_>,
    ) -> Result<String, ProviderError> {
        let _ = on_delta;
        self.complete(prompt).await
    }
}

/// The request body both chat APIs accept: serialised straight from the prompt, so no copy of
/// the conversation is held while the model thinks.
#[derive(Serialize)]
pub(crate) struct ChatBody<'a> {
    pub model: &'a str,
    pub messages: &'a [ChatMessage],
    pub stream: bool,
}

impl<'a> ChatBody<'a> {
    /// The body asking `model` to answer `prompt`, streamed or whole.
    pub fn new(model: &'a str, prompt: &'a Prompt, stream: bool) -> ChatBody<'a> {
        ChatBody {
            model,
            messages: &prompt.messages,
            stream,
        }
    }
}

/// Sends `body` as JSON and returns the successful response, mapping transport and status
/// failures to [`ProviderError`]. Shared by the HTTP providers.
async fn post(
    request: reqwest::RequestBuilder,
    body: &ChatBody<'_>,
) -> Result<reqwest::Response, ProviderError> {
    let response = request.json(body).send().await.map_err(transport_error)?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(ProviderError::RateLimited);
    }
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(ProviderError::Status {
            status: status.as_u16(),
            detail: text.chars().take(200).collect(),
        });
    }
    Ok(response)
}

/// Sends `body` as JSON and parses the answer as `T`.
pub(crate) async fn post_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    body: &ChatBody<'_>,
) -> Result<T, ProviderError> {
    post(request, body)
        .await?
        .json()
        .await
        .map_err(|e| ProviderError::InvalidResponse(format!("unexpected answer: {e}")))
}

/// Whether a streamed answer goes on after a line.
pub(crate) enum Flow {
    /// More lines follow.
    More,
    /// The answer is complete.
    Done,
}

/// Sends `body` (with `stream: true`) and hands each line of the streamed response to `line`
/// as it arrives, until it says the answer is complete. A stream that ends before that is a
/// failed attempt: the answer is incomplete.
pub(crate) async fn post_streaming(
    request: reqwest::RequestBuilder,
    body: &ChatBody<'_>,
    mut line: impl FnMut(&str) -> Result<Flow, ProviderError> + Send,
) -> Result<(), ProviderError> {
    let mut response = post(request, body).await?;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(transport_error)?;
        let Some(chunk) = chunk else {
            return Err(ProviderError::Connect(
                "the streamed answer ended before it was complete".into(),
            ));
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw);
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                continue;
            }
            if let Flow::Done = line(text)? {
                return Ok(());
            }
        }
    }
}

/// Non-empty answer text, or the error naming the field that lacked it.
pub(crate) fn answer_text(content: Option<String>, field: &str) -> Result<String, ProviderError> {
    content
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| ProviderError::InvalidResponse(format!("no {field} in the answer")))
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(Duration::ZERO)
    } else {
        ProviderError::Connect(e.to_string())
    }
}

/// Trims a configured endpoint so `{endpoint}/path` never has a double slash.
pub(crate) fn endpoint_url(endpoint: &str, path: &str) -> String {
    format!("{}/{path}", endpoint.trim_end_matches('/'))
}
