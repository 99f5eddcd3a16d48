//! The OpenAI-compatible API channel: any OpenAI client can talk to the agent.
//!
//! `POST /v1/chat/completions` with `Authorization: Bearer <channels.api.token>`. The conversation
//! is named by the `user` field or an `X-Clawgate-Session` header (`api:{user}`; without either,
//! each request is a conversation of its own). Only the newest user message is taken from
//! `messages`: the history lives in Redis, so every replica answers with the whole context. An
//! `Idempotency-Key` (or `X-Request-Id`) header makes a retried request safe: it gets the same
//! answer and adds no turn. `stream: true` answers as server-sent chunks.

use super::{Waited, accept_and_wait, check_id};
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::message::{Channel, InboundMessage, StoredReply};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;

/// The model name the agent answers to when a request names none.
const MODEL: &str = "clawgate";

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<RequestMessage>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
struct RequestMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let live = app.live.current();
    let Some(config) = &live.config.channels.api else {
        return Err(ApiError::not_found(
            "the API channel is not configured (channels.api.token)",
        ));
    };
    if crate::app::bearer_matches(headers, &config.token) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        ))
    }
}

/// Text of a message's `content`: a string, or the text parts of an array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn header_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The request and the text of its newest user message.
fn read_request(body: &[u8]) -> Result<(ChatRequest, String), ApiError> {
    let request: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected an OpenAI chat-completions request {{\"model\", \"messages\": [...]}}: {e}"
        ))
    })?;
    let text = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| content_text(&m.content))
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("`messages` must contain a user message with text"))?;
    Ok((request, text))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let (request, text) = read_request(&body?)?;
    let session = match header_value(&headers, "x-clawgate-session").or(request.user.as_deref()) {
        Some(session) => {
            check_id("user", session, false)?;
            session.to_string()
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let message_id = match header_value(&headers, "idempotency-key")
        .or_else(|| header_value(&headers, "x-request-id"))
    {
        Some(key) => {
            check_id("Idempotency-Key", key, true)?;
            key.to_string()
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let msg = InboundMessage::new(Channel::Api, &session, &message_id, text, &app.replica_id);
    let model = request.model.unwrap_or_else(|| MODEL.to_string());
    let reply = match accept_and_wait(&app, &msg, app.live.current().config.webchat.reply_wait)
        .await?
    {
        Waited::Replied(reply) => reply,
        Waited::Pending => {
            return Err(ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                code: "reply_pending",
                message: format!(
                    "the reply was not ready within {} s; it will be: repeat the request with Idempotency-Key: {message_id} to collect it",
                    app.live.current().config.webchat.reply_wait.as_secs()
                ),
            });
        }
    };
    let completion = Completion {
        id: format!("chatcmpl-{message_id}"),
        created: reply.ts / 1000,
        model,
        session,
    };
    Ok(if request.stream {
        completion.stream(&reply)
    } else {
        Json(completion.object(&reply)).into_response()
    })
}

/// What the answer objects share.
struct Completion {
    id: String,
    created: u64,
    model: String,
    session: String,
}

impl Completion {
    fn clawgate(&self, reply: &StoredReply) -> Value {
        json!({"session": self.session, "skill": reply.skill, "provider": reply.provider})
    }

    /// A `chat.completion` object.
    fn object(&self, reply: &StoredReply) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "clawgate": self.clawgate(reply),
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        Event::default().data(chunk.to_string())
    }

    /// Server-sent `chat.completion.chunk`s: the role, the text in word groups, the finish,
    /// then `[DONE]`.
    fn stream(&self, reply: &StoredReply) -> Response {
        let mut events = vec![self.chunk(json!({"role": "assistant", "content": ""}), None)];
        let words: Vec<&str> = reply.text.split_inclusive(' ').collect();
        for group in words.chunks(8) {
            events.push(self.chunk(json!({"content": group.concat()}), None));
        }
        events.push(self.chunk(json!({}), Some("stop")));
        events.push(Event::default().data("[DONE]"));
        let stream = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
        Sse::new(stream).into_response()
    }
}

/// `GET /v1/models`: the agent, as the one model this endpoint serves.
pub async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "clawgate"}],
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_user_message_with_text_is_the_customers() {
        let body = br#"{"model": "clawgate", "messages": [
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]}]}"#;
        let (_, text) = read_request(body).expect("a request");
        assert_eq!(text, "second");
        assert!(read_request(br#"{"messages": []}"#).is_err());
    }

    proptest::proptest! {
        /// Whatever an OpenAI client (or anyone with the token) sends, the answer is a request
        /// or a 400 with a reason, never a panic.
        #[test]
        fn any_body_is_a_request_or_a_reasoned_400(body in crate::arbitrary::body()) {
            if let Err(e) = read_request(&body) {
                proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }
    }
}
