//! OpenAI-compatible chat completions: `POST {endpoint}/chat/completions` with a Bearer key.
//! Speaks to OpenAI, Azure-style gateways, vLLM, LiteLLM and anything else with that API.

use super::connections::Connections;
use super::{ChatBody, Prompt, Provider, ProviderError, answer_text, endpoint_url, post_json};
use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The parts of a chat-completions answer clawgate reads.
#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

/// A provider speaking the OpenAI chat-completions API.
pub struct OpenAiProvider {
    name: String,
    url: String,
    /// `Bearer <key>`, built once and marked sensitive so it never shows in debug output;
    /// `None` when no key is configured.
    authorization: Option<HeaderValue>,
    model: String,
    connections: Connections,
}

impl OpenAiProvider {
    /// A provider named `name` at `endpoint`.
    pub fn new(
        name: &str,
        endpoint: &str,
        api_key: SecretString,
        model: &str,
        connections: Connections,
    ) -> OpenAiProvider {
        let authorization = Some(api_key.expose_secret())
            .filter(|key| !key.is_empty())
            .and_then(|key| HeaderValue::from_str(&format!("Bearer {key}")).ok())
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        OpenAiProvider {
            name: name.to_string(),
            url: endpoint_url(endpoint, "chat/completions"),
            authorization,
            model: model.to_string(),
            connections,
        }
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, prompt: &Prompt) -> Result<String, ProviderError> {
        let (client, _carried) = self.connections.carry();
        let mut request = client.post(&self.url);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let body = ChatBody {
            model: &self.model,
            messages: &prompt.messages,
            stream: false,
        };
        let answer: Completion = post_json(request, &body).await?;
        let content = answer
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content);
        answer_text(content, "choices[0].message.content")
    }
}
