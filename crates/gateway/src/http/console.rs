//! The dispatcher console: `GET /console`, one page built into the binary (like the web-chat
//! widget), and `GET /v1/console/stream`, the server-sent events it follows. The page signs in
//! with the escalation API token (kept in the browser session only) and sends it as a bearer
//! header on every call, the stream included (read with `fetch`, so the token never sits in a
//! URL or an access log).
//!
//! The stream sends `escalations` (the pending escalations, newest first) and, with
//! `?conversation=channel:user`, `conversation` (that escalation and its history) whenever they
//! change. Any replica serves any dispatcher: the scripts that change an escalation or a
//! handed-over conversation (on whichever replica) publish its name and `escalations` on the
//! events channel every replica follows, and the stream reads the store again when woken, or
//! after [`POLL`] in case a wake-up was lost.

use super::escalations::authorize;
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::escalation::Escalation;
use crate::event_stream::hub::{ESCALATIONS_NEWS, Watch};
use crate::message::ConversationKey;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const CONSOLE_HTML: &str = include_str!("../../console/console.html");
/// How often the stream reads the store without a wake-up.
const POLL: Duration = Duration::from_secs(2);
/// Comment lines keep idle streams (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /console`.
pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::HeaderName::from_static("x-frame-options"),
                HeaderValue::from_static("DENY"),
            ),
        ],
        CONSOLE_HTML,
    )
        .into_response()
}

/// Query parameters of the stream.
#[derive(Deserialize)]
pub struct StreamQuery {
    /// The conversation open in the console (`channel:user`).
    conversation: Option<String>,
}

/// One console stream's state.
struct Follow {
    app: Arc<AppState>,
    conversation: Option<ConversationKey>,
    /// Woken when the pending escalations change.
    list: Watch,
    /// Woken when the open conversation changes.
    opened: Option<Watch>,
    sent: Sent,
    /// Events to send before reading again (last first).
    queued: Vec<Event>,
    /// Nothing was read yet: read at once.
    first: bool,
}

/// What the stream has sent last, to send only changes.
struct Sent {
    escalations: Option<Value>,
    conversation: Option<Value>,
}

/// `GET /v1/console/stream[?conversation=channel:user]`.
pub async fn stream(
    State(app): State<Arc<AppState>>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let conversation = match query.conversation.filter(|c| !c.is_empty()) {
        Some(text) => Some(ConversationKey::parse(&text).ok_or_else(|| {
            ApiError::bad_request("`conversation` must be channel:user, e.g. whatsapp:31612345678")
        })?),
        None => None,
    };
    let follow = Follow {
        list: app.events.watch_name(ESCALATIONS_NEWS),
        opened: conversation
            .as_ref()
            .map(|c| app.events.watch_name(c.as_str())),
        sent: Sent {
            escalations: None,
            conversation: None,
        },
        queued: Vec::new(),
        first: true,
        app,
        conversation,
    };
    let events = futures_util::stream::unfold(follow, |mut follow| async move {
        loop {
            if let Some(event) = follow.queued.pop() {
                return Some((Ok::<_, Infallible>(event), follow));
            }
            if !follow.first {
                let opened = async {
                    match follow.opened.as_mut() {
                        Some(watch) => watch.news(POLL).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = follow.app.release_waiting.cancelled() => return None,
                    _ = follow.list.news(POLL) => {}
                    _ = opened => {}
                }
            }
            follow.first = false;
            follow.queued =
                changes(&follow.app, follow.conversation.as_ref(), &mut follow.sent).await;
            follow.queued.reverse();
        }
    });
    Ok(crate::event_stream::unbuffered_sse(events, KEEP_ALIVE))
}

/// The events for what changed since `sent`; nothing when the store cannot be read (the next
/// poll tries again).
async fn changes(
    app: &AppState,
    conversation: Option<&ConversationKey>,
    sent: &mut Sent,
) -> Vec<Event> {
    let (store, _) = app.ingress.current_store();
    let mut events = Vec::new();
    if let Ok(mut pending) = store.escalations().await {
        pending.sort_by_key(|e| std::cmp::Reverse(e.created_at));
        let listed: Vec<Value> = pending.iter().map(listed).collect();
        let escalations = json!(listed);
        if sent.escalations.as_ref() != Some(&escalations) {
            let data = json!({"escalations": escalations, "now": crate::message::now_ms()});
            events.push(Event::default().event("escalations").data(data.to_string()));
            sent.escalations = Some(escalations);
        }
    }
    if let Some(conversation) = conversation {
        let read = async {
            let escalation = store.escalation(conversation).await?;
            let history = store.history(conversation).await?;
            // Accepted, but their turn has not run yet (flood control may hold it).
            let waiting: Vec<Value> = store
                .waiting_messages(conversation)
                .await?
                .into_iter()
                .filter(|m| !history.iter().any(|h| h.message_id == m.message_id))
                .map(
                    |m| json!({"message_id": m.message_id, "text": m.text, "ts": m.received_at_ms}),
                )
                .collect();
            Ok::<_, crate::state::StateError>(json!({
                "conversation": conversation.as_str(),
                "escalation": escalation,
                "history": history,
                "waiting": waiting,
            }))
        };
        if let Ok(view) = read.await
            && sent.conversation.as_ref() != Some(&view)
        {
            let mut data = view.clone();
            data["now"] = json!(crate::message::now_ms());
            events.push(
                Event::default()
                    .event("conversation")
                    .data(data.to_string()),
            );
            sent.conversation = Some(view);
        }
    }
    events
}

/// An escalation as the list shows it: without the transcript, with the customer's last words.
fn listed(e: &Escalation) -> Value {
    let last = e
        .transcript
        .iter()
        .rev()
        .find(|l| l.role == "user")
        .map(|l| l.text.clone())
        .unwrap_or_default();
    json!({
        "reference": e.reference,
        "conversation": e.conversation,
        "channel": e.channel,
        "user": e.user,
        "language": e.language,
        "skill": e.skill,
        "reason": e.reason,
        "created_at": e.created_at,
        "claimed_by": e.claimed_by,
        "agent_replies": e.agent_replies,
        "last_message": last,
    })
}
