//! The dispatcher's side of escalations over HTTP, behind `Authorization: Bearer
//! <escalation.apiToken>`: list the conversations waiting for a person, read one, resolve one
//! (the bot then answers the customer again). The same as `clawgate escalations list | resolve`.

use crate::app::AppState;
use crate::app::error::ApiError;
use crate::state::{Resolution, StateError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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

/// `GET /v1/escalations/{conversation or reference}`: the conversation's latest escalation.
pub async fn show(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    let (store, _) = app.ingress.current_store();
    let found = match crate::state::conversation_named(store, &target).await {
        Ok(Some(conversation)) => store.escalation(&conversation).await,
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(e)) => Json(json!({"escalation": e})).into_response(),
        Ok(None) => no_escalation(&target).into_response(),
        Err(e) => store_error(e).into_response(),
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
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return ApiError::bad_request(format!(
                    "expected {{\"by\": string, \"note\": string}} (both optional): {e}"
                ))
                .into_response();
            }
        }
    };
    let (store, _) = app.ingress.current_store();
    let conversation = match crate::state::conversation_named(store, &target).await {
        Ok(Some(conversation)) => conversation,
        Ok(None) => return no_escalation(&target).into_response(),
        Err(e) => return store_error(e).into_response(),
    };
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
