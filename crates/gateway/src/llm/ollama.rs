//! Ollama's native chat API: `POST {endpoint}/api/chat` with `stream: false`.

use super::connections::Connections;
use super::{ChatBody, Prompt, Provider, ProviderError, answer_text, endpoint_url, post_json};
use async_trait::async_trait;
use serde::Deserialize;

/// The parts of an `/api/chat` answer clawgate reads.
#[derive(Deserialize)]
struct ChatAnswer {
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

/// A provider speaking Ollama's `/api/chat`.
pub struct OllamaProvider {
    name: String,
    url: String,
    model: String,
    connections: Connections,
}

impl OllamaProvider {
    /// A provider named `name` at `endpoint`.
    pub fn new(
        name: &str,
        endpoint: &str,
        model: &str,
        connections: Connections,
    ) -> OllamaProvider {
        OllamaProvider {
            name: name.to_string(),
            url: endpoint_url(endpoint, "api/chat"),
            model: model.to_string(),
            connections,
        }
    }
}

#[async_trait]
impl Provider for OllamaProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, prompt: &Prompt) -> Result<String, ProviderError> {
        let body = ChatBody {
            model: &self.model,
            messages: &prompt.messages,
            stream: false,
        };
        let (client, _carried) = self.connections.carry();
        let answer: ChatAnswer = post_json(client.post(&self.url), &body).await?;
        answer_text(answer.message.and_then(|m| m.content), "message.content")
    }
}
