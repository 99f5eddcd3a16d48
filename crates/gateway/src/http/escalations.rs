//! The dispatcher's side of escalations over HTTP, behind `Authorization: Bearer
//! <escalation.apiToken>`: list the conversations waiting for a person, read one, resolve one
//! (the bot then answers the customer again), claim one, and write to its customer. List, show
//! and resolve are also `clawgate escalations list | show | resolve`.

use crate::app::AppState;
use crate::app::error::ApiError;
use crate::escalation::Claim;
use crate::person_reply::{self, Outcome, PersonMessage};
use crate::state::{Resolution, StateError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Checks the escalation API token (`Authorization: Bearer <escalation.apiToken>`).
pub(super) fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let live = app.live.current();
    let Some(token) = &live.config.escalation.api_token else {
        return Err(ApiError::not_found(
            "the escalations API is not configured (escalation.apiToken)",
        ));
    };
    if crate::app::bearer_matches(headers, token) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "missing or wrong bearer token (Authorization: Bearer <escalation.apiToken>)",
        ))
    }
}

fn store_error(e: StateError) -> ApiError {
    ApiError::unavailable(format!("cannot read escalations now: {e}"))
}

/// `GET /v1/escalations`: the pending escalations, oldest first.
pub async fn list(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    let (store, _) = app.ingress.current_store();
    match store.escalations().await {
        Ok(pending) => Json(json!({"escalations": pending})).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

/// `GET /v1/escalations/{conversation or reference}`: the conversation's latest escalation and
/// its history (people's messages included, `role: "agent"`).
pub async fn show(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    headers: HeaderMap,
) -> Response {
    let shown = async {
        authorize(&app, &headers)?;
        let conversation = named_conversation(&app, &target).await?;
        let (store, _) = app.ingress.current_store();
        let escalation = store
            .escalation(&conversation)
            .await
            .map_err(store_error)?
            .ok_or_else(|| no_escalation(&target))?;
        let history = store.history(&conversation).await.map_err(store_error)?;
        Ok::<_, ApiError>(json!({"escalation": escalation, "history": history}))
    };
    match shown.await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

fn no_escalation(target: &str) -> ApiError {
    ApiError::not_found(format!(
        "no escalation for \"{target}\" (give a conversation as channel:user, or the reference of a pending escalation)"
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// `POST /v1/escalations/{conversation or reference}/resolve` with an optional
/// `{"by": "...", "note": "..."}`: ends the hand-over; 200 with the record (`resolved` says
/// whether this call resolved it or it had been resolved before).
pub async fn resolve(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    let request: ResolveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ResolveRequest::default()
    } else {
        match json_body(&body, "{\"by\": string, \"note\": string} (both optional)") {
            Ok(request) => request,
            Err(e) => return e.into_response(),
        }
    };
    let conversation = match named_conversation(&app, &target).await {
        Ok(conversation) => conversation,
        Err(e) => return e.into_response(),
    };
    let (store, _) = app.ingress.current_store();
    let by = request.by.unwrap_or_else(|| "api".into());
    let note = request.note.unwrap_or_default();
    match store.resolve_escalation(&conversation, &by, &note).await {
        Ok(Resolution::Resolved(e)) => {
            tracing::info!(conversation = %conversation, reference = %e.reference, by = %by, "escalation resolved; the bot answers the conversation again");
            Json(json!({"resolved": true, "escalation": e})).into_response()
        }
        Ok(Resolution::AlreadyResolved(e)) => {
            Json(json!({"resolved": false, "escalation": e})).into_response()
        }
        Ok(Resolution::Unknown) => no_escalation(&target).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

/// A person's name as given in `by`: what claims and replies are recorded under.
fn person(by: &str) -> Result<String, ApiError> {
    let by = by.trim();
    if by.is_empty() || by.chars().count() > 100 || by.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "`by` must name the person (1 to 100 characters, no control characters)",
        ));
    }
    Ok(by.to_string())
}

/// Reads a JSON body of type `T`, or says what was expected.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("expected {expected}: {e}")))
}

/// The conversation `target` names, or the error to answer.
async fn named_conversation(
    app: &AppState,
    target: &str,
) -> Result<crate::message::ConversationKey, ApiError> {
    let (store, _) = app.ingress.current_store();
    match crate::state::conversation_named(store, target).await {
        Ok(Some(conversation)) => Ok(conversation),
        Ok(None) => Err(no_escalation(target)),
        Err(e) => Err(store_error(e)),
    }
}

/// 409: another person holds the escalation.
fn held_by(holder: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": {
                "code": "claimed",
                "message": format!("{holder} is handling this conversation; send \"takeover\": true to take it over"),
            },
            "claimed_by": holder,
        })),
    )
        .into_response()
}

/// 409: the escalation was resolved.
fn not_pending(target: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": {
                "code": "not_pending",
                "message": format!("the escalation of \"{target}\" is resolved: the bot answers this customer again"),
            },
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    by: String,
    #[serde(default)]
    takeover: bool,
}

/// `POST /v1/escalations/{conversation or reference}/claim` `{"by", "takeover"?}`: assigns the
/// escalation to one person; 409 `claimed` with `claimed_by` while another holds it.
pub async fn claim(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claimed = async {
        authorize(&app, &headers)?;
        let request: ClaimRequest =
            json_body(&body, "{\"by\": string, \"takeover\": bool (optional)}")?;
        let by = person(&request.by)?;
        let conversation = named_conversation(&app, &target).await?;
        let (store, _) = app.ingress.current_store();
        store
            .claim_escalation(&conversation, &by, request.takeover)
            .await
            .map_err(store_error)
    };
    match claimed.await {
        Ok(Claim::Claimed(e)) => {
            tracing::info!(conversation = %e.conversation, reference = %e.reference, by = e.claimed_by.as_deref().unwrap_or(""), "escalation claimed");
            Json(json!({"claimed": true, "escalation": e})).into_response()
        }
        Ok(Claim::HeldBy(e)) => held_by(e.claimed_by.as_deref().unwrap_or("someone")),
        Ok(Claim::NotPending(_)) => not_pending(&target),
        Ok(Claim::Unknown) => no_escalation(&target).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    text: String,
    by: String,
    #[serde(default)]
    takeover: bool,
}

/// Longest message a person may send, in characters (the egress splits it into parts).
const MAX_PERSON_TEXT: usize = 10_000;

/// `Idempotency-Key`: a retried request with the same key sends nothing twice.
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(uuid::Uuid::new_v4().to_string());
    };
    let key = value.to_str().unwrap_or_default();
    let valid = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if valid {
        Ok(key.to_string())
    } else {
        Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 128 characters of letters, digits, '-', '_', '.' or ':'",
        ))
    }
}

/// `POST /v1/escalations/{conversation or reference}/messages` `{"text", "by", "takeover"?}`:
/// sends a person's message to the customer on their channel, once per `Idempotency-Key`;
/// 200 once sent, 202 while the platform has not confirmed, 409 when another person holds the
/// escalation, 422 `window_closed` when WhatsApp's 24-hour window is closed.
pub async fn message(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sent = async {
        authorize(&app, &headers)?;
        let request: MessageRequest = json_body(
            &body,
            "{\"text\": string, \"by\": string, \"takeover\": bool (optional)}",
        )?;
        let by = person(&request.by)?;
        let text = request.text.trim().to_string();
        if text.is_empty() || text.chars().count() > MAX_PERSON_TEXT {
            return Err(ApiError::bad_request(format!(
                "`text` must hold 1 to {MAX_PERSON_TEXT} characters"
            )));
        }
        let idempotency_key = idempotency_key(&headers)?;
        let conversation = named_conversation(&app, &target).await?;
        let (store, _) = app.ingress.current_store();
        let Some(escalation) = store.escalation(&conversation).await.map_err(store_error)? else {
            return Err(no_escalation(&target));
        };
        let message = PersonMessage {
            conversation,
            idempotency_key,
            by,
            takeover: request.takeover,
            message_id: format!("person-{}", uuid::Uuid::new_v4().simple()),
            text,
            ts: crate::message::now_ms(),
        };
        person_reply::send(
            app.ingress.current_store_shared(),
            app.live.current(),
            &app.background,
            &escalation,
            message,
        )
        .await
        .map_err(store_error)
    };
    match sent.await {
        Ok(Outcome::Sent {
            message_id,
            repeated,
        }) => Json(json!({"status": "sent", "message_id": message_id, "repeated": repeated}))
            .into_response(),
        Ok(Outcome::Sending { message_id }) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "sending", "message_id": message_id})),
        )
            .into_response(),
        Ok(Outcome::WindowClosed { message_id, reason }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": {
                    "code": "window_closed",
                    "message": "not sent: WhatsApp's 24-hour customer service window is closed (the customer last wrote more than 24 hours ago), so WhatsApp only delivers an approved template message now. Send one from WhatsApp Manager, or wait until the customer writes again; retrying this message will not help.",
                },
                "message_id": message_id,
                "reason": reason,
            })),
        )
            .into_response(),
        Ok(Outcome::Failed { message_id, reason }) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "error": {"code": "send_failed", "message": format!("not sent: {reason}")},
                "message_id": message_id,
            })),
        )
            .into_response(),
        Ok(Outcome::HeldBy(holder)) => held_by(&holder),
        Ok(Outcome::NotPending) => not_pending(&target),
        Ok(Outcome::Unknown) => no_escalation(&target).into_response(),
        Err(e) => e.into_response(),
    }
}
