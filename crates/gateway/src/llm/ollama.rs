//! Ollama's native chat API: `POST {endpoint}/api/chat` with `stream: false`.

use super::{Prompt, Provider, ProviderError, endpoint_url, post_json};
use async_trait::async_trait;
use serde_json::json;

/// A provider speaking Ollama's `/api/chat`.
pub struct OllamaProvider {
    name: String,
    url: String,
    model: String,
    client: reqwest::Client,
}

impl OllamaProvider {
    /// A provider named `name` at `endpoint`.
    pub fn new(name: &str, endpoint: &str, model: &str, client: reqwest::Client) -> OllamaProvider {
        OllamaProvider {
            name: name.to_string(),
            url: endpoint_url(endpoint, "api/chat"),
            model: model.to_string(),
            client,
        }
    }
}

#[async_trait]
impl Provider for OllamaProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, prompt: &Prompt) -> Result<String, ProviderError> {
        let body = json!({"model": self.model, "messages": prompt.messages, "stream": false});
        let answer = post_json(self.client.post(&self.url), &body).await?;
        answer
            .pointer("/message/content")
            .and_then(|c| c.as_str())
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string)
            .ok_or_else(|| ProviderError::InvalidResponse("no message.content".into()))
    }
}
