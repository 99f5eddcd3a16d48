//! `GET /v1/webchat/sessions/{id}/events`: a session's live events as server-sent events.
//!
//! Every event carries its id (the Redis stream id); a reconnecting `EventSource` sends the last
//! one as `Last-Event-ID` and any replica resumes right after it, so the widget sees every event
//! once and in order across reconnections and replica deaths. A first connection (no id) starts
//! at the session's newest event: the widget reads the history for what came before. The
//! stream opens with a `ready` event whose id is where it starts, so even a client that saw no
//! event yet resumes from there. The stream ends when the replica drains (the client reconnects
//! elsewhere) and when the store cannot be read.

use super::check_id;
use super::event_follow::{follow, newest_event};
use super::webchat::authorize_token;
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::events::StoredEvent;
use crate::message::{Channel, ConversationKey};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::Event;
use futures_util::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Comment lines keep idle connections (and the proxies on their way) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a browser reconnects after the stream ends.
const RECONNECT: Duration = Duration::from_millis(500);

/// Query parameters of the event stream.
#[derive(Deserialize)]
pub struct EventsQuery {
    /// The session token, for clients that cannot set `Authorization` (`EventSource`).
    token: Option<String>,
    /// Where to resume when the client cannot send `Last-Event-ID` (a reloaded page).
    last_event_id: Option<String>,
}

/// `GET /v1/webchat/sessions/{session_id}/events`.
pub async fn events(
    State(app): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_id("session_id", &session_id, false)?;
    let presented = match crate::app::bearer_token(&headers) {
        "" => query.token.as_deref().unwrap_or(""),
        token => token,
    };
    authorize_token(&app, presented, &session_id).await?;
    let conversation = ConversationKey::new(Channel::Webchat, &session_id);
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query.last_event_id)
        .filter(|id| !id.is_empty());
    // Registered before the first read, so nothing written meanwhile goes unnoticed.
    let watch = app.events.watch(&conversation);
    let start = match resume {
        Some(id) => id,
        None => newest_event(&app, &conversation).await?,
    };
    let ready = Event::default()
        .id(start.clone())
        .event("ready")
        .retry(RECONNECT)
        .data(r#"{"type":"ready"}"#);
    let events = follow(app, conversation, start, watch).map(|event| Ok(to_sse(event)));
    let stream =
        futures_util::stream::once(async move { Ok::<_, Infallible>(ready) }).chain(events);
    Ok(crate::event_stream::unbuffered_sse(stream, KEEP_ALIVE))
}

/// An SSE event named by the stored event's `type`.
fn to_sse(event: StoredEvent) -> Event {
    #[derive(Deserialize)]
    struct Named {
        r#type: String,
    }
    let name = serde_json::from_str::<Named>(&event.json)
        .map(|n| n.r#type)
        .unwrap_or_else(|_| "message".to_string());
    metrics::counter!(crate::telemetry::WEBCHAT_EVENTS_SENT, "type" => name.clone()).increment(1);
    Event::default().id(event.id).event(name).data(event.json)
}
