//! Ollama's native chat API: `POST {endpoint}/api/chat`, whole (`stream: false`) or streamed
//! as one JSON object per line.

use super::connections::Connections;
use super::{
    ChatBody, Flow, OnDelta, Prompt, Provider, ProviderError, answer_text, endpoint_url, post_json,
    post_streaming,
};
use async_trait::async_trait;
use serde::Deserialize;

/// The parts of an `/api/chat` answer (or of one line of a streamed one) clawgate reads.
#[derive(Deserialize)]
struct ChatAnswer {
    message: Option<Message>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Reads one line of a streamed answer: `{"message": {"content": …}, "done": false}` until
/// `"done": true`; `{"error": …}` fails the attempt.
fn stream_line(
    line: &str,
    text: &mut String,
    on_delta: OnDelta<'_>,
) -> Result<Flow, ProviderError> {
    let part: ChatAnswer = serde_json::from_str(line)
        .map_err(|e| ProviderError::InvalidResponse(format!("unreadable stream line: {e}")))?;
    if let Some(error) = part.error {
        return Err(ProviderError::InvalidResponse(format!(
            "the model stopped: {}",
            error.chars().take(200).collect::<String>()
        )));
    }
    if let Some(content) = part.message.and_then(|m| m.content)
        && !content.is_empty()
    {
        text.push_str(&content);
        on_delta(&content);
    }
    Ok(if part.done { Flow::Done } else { Flow::More })
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
        let body = ChatBody::new(&self.model, prompt, false);
        let (client, _carried) = self.connections.carry();
        let answer: ChatAnswer = post_json(client.post(&self.url), &body).await?;
        answer_text(answer.message.and_then(|m| m.content), "message.content")
    }

    async fn stream(
        &self,
        prompt: &Prompt,
        on_delta: OnDelta<'_>,
    ) -> Result<String, ProviderError> {
        let body = ChatBody::new(&self.model, prompt, true);
        let (client, _carried) = self.connections.carry();
        let mut text = String::new();
        post_streaming(client.post(&self.url), &body, |line| {
            stream_line(line, &mut text, on_delta)
        })
        .await?;
        answer_text(Some(text), "streamed message.content")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_answer_is_read_line_by_line_until_done() {
        let on_delta = |_: &str| {};
        let mut text = String::new();
        let more = r#"{"model":"m","message":{"role":"assistant","content":"Hallo"},"done":false}"#;
        assert!(matches!(
            stream_line(more, &mut text, &on_delta),
            Ok(Flow::More)
        ));
        let done = r#"{"model":"m","message":{"role":"assistant","content":"!"},"done":true,"done_reason":"stop"}"#;
        assert!(matches!(
            stream_line(done, &mut text, &on_delta),
            Ok(Flow::Done)
        ));
        assert_eq!(text, "Hallo!");
        assert!(stream_line(r#"{"error":"model not found"}"#, &mut text, &on_delta).is_err());
    }
}
