//! OpenAI-compatible chat completions: `POST {endpoint}/chat/completions` with a Bearer key.
//! Speaks to OpenAI, Azure-style gateways, vLLM, LiteLLM and anything else with that API.

use super::{Prompt, Provider, ProviderError, endpoint_url, post_json};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

/// A provider speaking the OpenAI chat-completions API.
pub struct OpenAiProvider {
    name: String,
    url: String,
    api_key: SecretString,
    model: String,
    client: reqwest::Client,
}

impl OpenAiProvider {
    /// A provider named `name` at `endpoint`.
    pub fn new(
        name: &str,
        endpoint: &str,
        api_key: SecretString,
        model: &str,
        client: reqwest::Client,
    ) -> OpenAiProvider {
        OpenAiProvider {
            name: name.to_string(),
            url: endpoint_url(endpoint, "chat/completions"),
            api_key,
            model: model.to_string(),
            client,
        }
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, prompt: &Prompt) -> Result<String, ProviderError> {
        let mut request = self.client.post(&self.url);
        if !self.api_key.expose_secret().is_empty() {
            request = request.bearer_auth(self.api_key.expose_secret());
        }
        let body = json!({"model": self.model, "messages": prompt.messages, "stream": false});
        let answer = post_json(request, &body).await?;
        answer
            .pointer("/choices/0/message/content")
            .and_then(|c| c.as_str())
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string)
            .ok_or_else(|| ProviderError::InvalidResponse("no choices[0].message.content".into()))
    }
}
