//! OpenAI-compatible chat completions: `POST {endpoint}/chat/completions` with a Bearer key.
//! Speaks to OpenAI, Azure-style gateways, vLLM, LiteLLM and anything else with that API.

use super::connections::Connections;
use super::{
    ChatBody, Flow, OnDelta, Prompt, Provider, ProviderError, answer_text, endpoint_url, post_json,
    post_streaming,
};
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

/// One `data:` chunk of a streamed completion (`chat.completion.chunk`).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Message>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Reads one line of a streamed completion (server-sent events): `data: {chunk}` lines carry
/// the answer, `data: [DONE]` ends it; comments and other fields are skipped.
fn stream_line(
    line: &str,
    text: &mut String,
    finished: &mut bool,
    on_delta: OnDelta<'_>,
) -> Result<Flow, ProviderError> {
    let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
        return Ok(Flow::More);
    };
    if data == "[DONE]" {
        return if *finished || !text.is_empty() {
            Ok(Flow::Done)
        } else {
            Err(ProviderError::InvalidResponse(
                "an empty streamed answer".into(),
            ))
        };
    }
    let chunk: Chunk = serde_json::from_str(data)
        .map_err(|e| ProviderError::InvalidResponse(format!("unreadable stream chunk: {e}")))?;
    for choice in chunk.choices {
        if let Some(content) = choice.delta.and_then(|d| d.content)
            && !content.is_empty()
        {
            text.push_str(&content);
            on_delta(&content);
        }
        *finished |= choice.finish_reason.is_some();
    }
    Ok(Flow::More)
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
        let body = ChatBody::new(&self.model, prompt, false);
        let answer: Completion = post_json(self.request(&client), &body).await?;
        let content = answer
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content);
        answer_text(content, "choices[0].message.content")
    }

    async fn stream(
        &self,
        prompt: &Prompt,
        on_delta: OnDelta<'_>,
    ) -> Result<String, ProviderError> {
        let (client, _carried) = self.connections.carry();
        let body = ChatBody::new(&self.model, prompt, true);
        let (mut text, mut finished) = (String::new(), false);
        post_streaming(self.request(&client), &body, |line| {
            stream_line(line, &mut text, &mut finished, on_delta)
        })
        .await?;
        answer_text(Some(text), "streamed choices[0].delta.content")
    }
}

impl OpenAiProvider {
    /// A POST to the completions URL with the key.
    fn request(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let request = client.post(&self.url);
        match &self.authorization {
            Some(authorization) => request.header(AUTHORIZATION, authorization.clone()),
            None => request,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_streamed_completion_is_read_delta_by_delta() {
        let seen = Mutex::new(Vec::new());
        let on_delta = |d: &str| seen.lock().unwrap().push(d.to_string());
        let (mut text, mut finished) = (String::new(), false);
        let lines = [
            ": keep-alive",
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"content":"Je pakket"}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"content":" komt morgen."},"finish_reason":null}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#,
        ];
        for line in lines {
            assert!(matches!(
                stream_line(line, &mut text, &mut finished, &on_delta),
                Ok(Flow::More)
            ));
        }
        assert!(matches!(
            stream_line("data: [DONE]", &mut text, &mut finished, &on_delta),
            Ok(Flow::Done)
        ));
        assert_eq!(text, "Je pakket komt morgen.");
        assert_eq!(*seen.lock().unwrap(), ["Je pakket", " komt morgen."]);
    }

    #[test]
    fn a_garbled_chunk_or_an_empty_stream_fails_the_attempt() {
        let on_delta = |_: &str| {};
        let (mut text, mut finished) = (String::new(), false);
        assert!(stream_line("data: {nope", &mut text, &mut finished, &on_delta).is_err());
        assert!(stream_line("data: [DONE]", &mut text, &mut finished, &on_delta).is_err());
    }
}
