//! The web-chat channel: `POST /v1/webchat/messages` accepts a message and, within the wait
//! budget, answers with the reply in the same response, whichever replica produced it; otherwise
//! 202 with where to fetch it. A client resending the same `message_id` gets the same reply and
//! adds no turn.
//!
//! Sessions are private: `POST /v1/webchat/sessions` issues a random session id and its token,
//! and with `webchat.sessionTokens: "required"` (the default) every other call on the session
//! needs `Authorization: Bearer <token>`; without it, 401, so nobody reads a conversation by
//! guessing its id.

use super::{Waited, accept_and_wait, check_id};
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::ingress::Origin;
use crate::message::{Channel, ConversationKey, DedupeId, InboundMessage, StoredReply};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Longest accepted message text, bytes.
const MAX_TEXT_BYTES: usize = 32 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    session_id: String,
    message_id: String,
    text: String,
    #[serde(default)]
    language: Option<String>,
}

/// Query parameters of `POST /v1/webchat/messages`.
#[derive(Deserialize)]
pub struct WaitQuery {
    /// Overrides the configured reply wait (capped by it), e.g. `0` to get 202 at once.
    wait_ms: Option<u64>,
}

fn parse_message(body: &[u8]) -> Result<PostMessage, ApiError> {
    let message: PostMessage = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected a JSON object {{\"session_id\", \"message_id\", \"text\"}}: {e}"
        ))
    })?;
    check_id("session_id", &message.session_id, false)?;
    check_id("message_id", &message.message_id, true)?;
    if message.text.trim().is_empty() {
        return Err(ApiError::bad_request("`text` must not be empty"));
    }
    if message.text.len() > MAX_TEXT_BYTES {
        return Err(ApiError::bad_request(format!(
            "`text` is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    if let Some(language) = &message.language
        && (language.is_empty()
            || language.len() > 16
            || !language
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(ApiError::bad_request(
            "`language` must be a language tag such as \"nl\" or \"en-GB\"",
        ));
    }
    Ok(message)
}

/// The reply body; `covered_by` names the earlier message whose turn answered this one too
/// (flood control), so a widget can show one answer for several messages.
fn replied(message_id: &str, reply: &StoredReply) -> Response {
    let mut body = json!({"text": reply.text, "skill": reply.skill, "provider": reply.provider});
    if let Some(covered_by) = &reply.covered_by {
        body["covered_by"] = json!(covered_by);
    }
    if let Some(replica) = &reply.replica {
        body["replica"] = json!(replica);
    }
    Json(json!({"message_id": message_id, "reply": body})).into_response()
}

fn reply_url(session_id: &str, message_id: &str) -> String {
    format!("/v1/webchat/sessions/{session_id}/messages/{message_id}")
}

fn pending(session_id: &str, message_id: &str) -> Response {
    let url = reply_url(session_id, message_id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, url.clone())],
        Json(json!({"message_id": message_id, "status": "pending", "reply_url": url})),
    )
        .into_response()
}

/// `POST /v1/webchat/sessions`: a new private session, `{"session_id", "token",
/// "expires_at"}` (Unix seconds). The widget keeps both for the browser session.
pub async fn create_session(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let live = app.live.current();
    let key = token_key(&app, &live).await?;
    let session_id = crate::session_token::new_session_id();
    let expires_at = crate::message::now_ms() / 1000 + live.config.webchat.token_ttl.as_secs();
    let token = crate::session_token::mint(&key, &session_id, expires_at);
    Ok(
        Json(json!({"session_id": session_id, "token": token, "expires_at": expires_at}))
            .into_response(),
    )
}

/// The key session tokens are signed with now (503 when it cannot be had).
async fn token_key(app: &AppState, live: &crate::live::Live) -> Result<Vec<u8>, ApiError> {
    let (store, origin) = app.ingress.current_store();
    app.session_token_key
        .get(
            live.config.webchat.token_secret.as_ref(),
            store,
            origin == Origin::Redis,
        )
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot check session tokens now: {e}")))
}

/// Whether the caller holds `session_id`'s token (always, with `sessionTokens: "off"`).
async fn authorize(app: &AppState, headers: &HeaderMap, session_id: &str) -> Result<(), ApiError> {
    authorize_token(app, crate::app::bearer_token(headers), session_id).await
}

/// Whether `presented` is `session_id`'s token (always, with `sessionTokens: "off"`); for the
/// event stream, whose browser API cannot set headers, the token may come in the query.
pub(super) async fn authorize_token(
    app: &AppState,
    presented: &str,
    session_id: &str,
) -> Result<(), ApiError> {
    let live = app.live.current();
    if !live.config.webchat.session_tokens {
        return Ok(());
    }
    let key = token_key(app, &live).await?;
    crate::session_token::verify(&key, session_id, presented, crate::message::now_ms() / 1000)
        .map_err(|e| ApiError::unauthorized(e.reason()))
}

/// `POST /v1/webchat/messages`.
pub async fn post_message(
    State(app): State<Arc<AppState>>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let message = parse_message(&body?)?;
    authorize(&app, &headers, &message.session_id).await?;
    // The body is dropped here: held across the wait, its bytes would pin the connection's 8 KiB
    // read buffer and make the server allocate another.
    let budget = app.live.current().config.webchat.reply_wait;
    let wait = match query.wait_ms {
        Some(ms) => Duration::from_millis(ms).min(budget),
        None => budget,
    };
    let mut inbound = InboundMessage::new(
        Channel::Webchat,
        &message.session_id,
        &message.message_id,
        message.text,
        &app.replica_id,
    );
    inbound.language = message.language.map(|l| l.to_lowercase());
    Ok(match accept_and_wait(&app, &inbound, wait).await? {
        Waited::Replied(reply) => replied(&message.message_id, &reply),
        Waited::Pending => pending(&message.session_id, &message.message_id),
    })
}

/// `GET /v1/webchat/sessions/{session_id}/messages`: the conversation's history, oldest first.
pub async fn history(
    State(app): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_id("session_id", &session_id, false)?;
    authorize(&app, &headers, &session_id).await?;
    let (store, origin) = app.ingress.current_store();
    let conversation = ConversationKey::new(Channel::Webchat, &session_id);
    let messages = store
        .history(&conversation)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the conversation: {e}")))?;
    Ok(Json(json!({
        "session_id": session_id,
        "source": if origin == Origin::Redis { "redis" } else { "memory" },
        "messages": messages,
    }))
    .into_response())
}

/// `GET /v1/webchat/sessions/{session_id}/messages/{message_id}`: the reply to one message, 202
/// while it is being worked on, 404 for a message never accepted.
pub async fn message_status(
    State(app): State<Arc<AppState>>,
    Path((session_id, message_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_id("session_id", &session_id, false)?;
    check_id("message_id", &message_id, true)?;
    authorize(&app, &headers, &session_id).await?;
    let id = DedupeId::new(Channel::Webchat, &session_id, &message_id);
    let (store, _) = app.ingress.current_store();
    let unavailable =
        |e: crate::state::StateError| ApiError::unavailable(format!("cannot read the reply: {e}"));
    if let Some(reply) = store.reply(&id).await.map_err(unavailable)? {
        return Ok(replied(&message_id, &reply));
    }
    if store.seen(&id).await.map_err(unavailable)? {
        return Ok(pending(&session_id, &message_id));
    }
    Err(ApiError::not_found(format!(
        "no message \"{message_id}\" in session \"{session_id}\""
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_rejected_with_a_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "expected a JSON object"),
            (
                br#"{"session_id": "s", "text": "hi"}"#,
                "missing field `message_id`",
            ),
            (
                br#"{"session_id": "a:b", "message_id": "1", "text": "hi"}"#,
                "`session_id` must be",
            ),
            (
                br#"{"session_id": "{x}", "message_id": "1", "text": "hi"}"#,
                "`session_id` must be",
            ),
            (
                br#"{"session_id": "s", "message_id": "1", "text": "  "}"#,
                "`text` must not be empty",
            ),
            (
                br#"{"session_id": "s", "message_id": "1", "text": "hi", "extra": 1}"#,
                "unknown field `extra`",
            ),
        ];
        for (body, expected) in cases {
            match parse_message(body) {
                Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(body)),
                Err(e) => {
                    assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    assert!(
                        e.message.contains(expected),
                        "{} does not contain {expected}",
                        e.message
                    );
                }
            }
        }
        assert!(
            parse_message(
                br#"{"session_id": "s-1", "message_id": "m:1", "text": "hi", "language": "nl"}"#
            )
            .is_ok()
        );
    }

    proptest::proptest! {
        /// Any body gets a message or a 400 with a reason, never a panic.
        #[test]
        fn any_body_is_a_message_or_a_reasoned_400(body in crate::arbitrary::body()) {
            if let Err(e) = parse_message(&body) {
                proptest::prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                proptest::prop_assert!(!e.message.is_empty());
            }
        }
    }
}
