//! Following a session's events from a cursor, for as long as the client listens: read what the
//! store holds after the cursor, then wait for the hub's wake-up (or a slow poll) and read again.
//! Shared by the web chat's event stream and the OpenAI-compatible API's `stream: true`.
//! The stream ends when the replica drains (the client reconnects elsewhere) or the store cannot
//! be read.

use crate::app::AppState;
use crate::app::error::ApiError;
use crate::event_stream::hub::Watch;
use crate::events::StoredEvent;
use crate::message::ConversationKey;
use futures_util::Stream;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Events read from the store at once.
const READ_BATCH: usize = 100;
/// A stream re-reads the store this often even without a wake-up (a missed publish).
const POLL: Duration = Duration::from_secs(10);

/// The id of `conversation`'s newest event (`0-0` when it has none): where a stream that
/// resumes from nothing starts, so it carries only what comes next.
pub async fn newest_event(
    app: &AppState,
    conversation: &ConversationKey,
) -> Result<String, ApiError> {
    Ok(app
        .ingress
        .current_store()
        .0
        .last_event_id(conversation)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the conversation's events: {e}")))?
        .unwrap_or_else(|| "0-0".to_string()))
}

/// `conversation`'s events after `cursor`, as they come; `watch` must be registered before the
/// cursor was taken, so nothing written in between goes unnoticed.
pub fn follow(
    app: Arc<AppState>,
    conversation: ConversationKey,
    cursor: String,
    watch: Watch,
) -> impl Stream<Item = StoredEvent> + Send {
    let follow = Follow {
        app,
        conversation,
        cursor,
        buffer: VecDeque::new(),
        watch,
    };
    futures_util::stream::unfold(follow, next)
}

/// One open stream's place in its session.
struct Follow {
    app: Arc<AppState>,
    conversation: ConversationKey,
    /// The id of the last event sent.
    cursor: String,
    /// Events read but not sent yet.
    buffer: VecDeque<StoredEvent>,
    watch: Watch,
}

/// The next event of the stream; `None` ends it.
async fn next(mut follow: Follow) -> Option<(StoredEvent, Follow)> {
    loop {
        if let Some(event) = follow.buffer.pop_front() {
            follow.cursor = event.id.clone();
            return Some((event, follow));
        }
        if follow.app.release_waiting.is_cancelled() {
            return None;
        }
        let app = follow.app.clone();
        let (store, _) = app.ingress.current_store();
        match store
            .events_after(&follow.conversation, Some(&follow.cursor), READ_BATCH)
            .await
        {
            Ok(events) if !events.is_empty() => follow.buffer.extend(events),
            Ok(_) => {
                tokio::select! {
                    _ = follow.watch.news(POLL) => {}
                    _ = app.release_waiting.cancelled() => return None,
                }
            }
            Err(e) => {
                tracing::debug!(conversation = %follow.conversation, error = %e, "event stream ends: the store cannot be read");
                return None;
            }
        }
    }
}
