//! `stream: true`: the answer as the model writes it, whichever replica runs the turn. The
//! request's turn writes live events (`message.streamed`); this replica follows the
//! conversation's events from just before the message was accepted and turns the ones about it
//! into `chat.completion.chunk`s. A provider failing mid-answer cannot take back text already
//! sent: the stream carries a chunk marked `"clawgate": {"reset": true}` and the fallback's
//! answer follows. A repeated request (same `Idempotency-Key`) gets the answer on record at once.

use super::{Completion, pending};
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::channels::event_follow::{follow, newest_event};
use crate::channels::{Waited, accept, wait_for_reply, within_limit};
use crate::events::{SessionEvent, StoredEvent};
use crate::message::{InboundMessage, StoredReply};
use crate::state::Acceptance;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Streams the answer to `msg`.
pub(super) async fn answer(
    app: Arc<AppState>,
    msg: InboundMessage,
    completion: Completion,
) -> Result<Response, ApiError> {
    let wait = app.live.current().config.webchat.reply_wait;
    let msg = within_limit(&app, &msg).into_owned();
    let conversation = msg.conversation();
    // Registered, and the cursor taken, before the message is accepted: no event of its turn
    // can come before them.
    let watch = app.events.watch(&conversation);
    let cursor = newest_event(&app, &conversation).await?;
    let (acceptance, origin) = accept(&app, &msg).await?;
    if acceptance == Acceptance::Duplicate {
        // A repeated request: the answer on record (or the one still being written), whole.
        let waiter = app.waiters.register(&msg.dedupe_id());
        return Ok(
            match wait_for_reply(&app, waiter, origin, true, wait).await {
                Waited::Replied(reply) => whole(&completion, &reply),
                Waited::Pending => pending(&msg.message_id, wait),
            },
        );
    }
    let answering = Answering {
        queue: VecDeque::from([completion.role_chunk()]),
        events: Box::pin(follow(app, conversation, cursor, watch)),
        message_id: msg.message_id,
        completion,
        wait,
        wrote: false,
        done: false,
    };
    let chunks = futures_util::stream::unfold(answering, next);
    Ok(Sse::new(chunks)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// An answer already on record, in one chunk.
fn whole(completion: &Completion, reply: &StoredReply) -> Response {
    let mut events = vec![completion.role_chunk(), completion.text_chunk(&reply.text)];
    events.extend(completion.closing(&reply.text, &reply.skill, &reply.provider));
    Sse::new(futures_util::stream::iter(
        events.into_iter().map(Ok::<_, Infallible>),
    ))
    .into_response()
}

/// One streamed answer in progress.
struct Answering {
    /// Chunks ready to send.
    queue: VecDeque<Event>,
    events: Pin<Box<dyn Stream<Item = StoredEvent> + Send>>,
    message_id: String,
    completion: Completion,
    /// Longest pause between two events before the answer is reported pending.
    wait: Duration,
    /// Whether answer text went out already.
    wrote: bool,
    /// The answer (or the error) is queued; the stream ends after the queue.
    done: bool,
}

async fn next(mut answering: Answering) -> Option<(Result<Event, Infallible>, Answering)> {
    loop {
        if let Some(chunk) = answering.queue.pop_front() {
            return Some((Ok(chunk), answering));
        }
        if answering.done {
            return None;
        }
        match tokio::time::timeout(answering.wait, answering.events.next()).await {
            Ok(Some(stored)) => answering.take(&stored),
            // The replica drains or the store cannot be read: the client repeats the request
            // with its Idempotency-Key and collects the answer.
            Ok(None) => return None,
            Err(_) => {
                let error = json!({"error": {
                    "message": format!("the reply was not ready within {} s; repeat the request with Idempotency-Key: {} to collect it", answering.wait.as_secs(), answering.message_id),
                    "type": "reply_pending",
                    "code": "reply_pending",
                }});
                answering
                    .queue
                    .push_back(Event::default().data(error.to_string()));
                answering.done = true;
            }
        }
    }
}

impl Answering {
    /// Queues the chunks one event of the conversation makes for this answer.
    fn take(&mut self, stored: &StoredEvent) {
        let Ok(event) = serde_json::from_str::<SessionEvent>(&stored.json) else {
            return;
        };
        let ours = |id: &str| id == self.message_id;
        match event {
            SessionEvent::Delta { message_id, text } if ours(&message_id) => {
                self.queue.push_back(self.completion.text_chunk(&text));
                self.wrote = true;
            }
            SessionEvent::Reset { message_id } if ours(&message_id) => {
                self.queue.push_back(self.completion.reset_chunk());
            }
            SessionEvent::Answer {
                message_id,
                covers,
                text,
                skill,
                provider,
                ..
            } if ours(&message_id) || covers.iter().any(|c| ours(c)) => {
                if !self.wrote {
                    self.queue.push_back(self.completion.text_chunk(&text));
                }
                self.queue
                    .extend(self.completion.closing(&text, &skill, &provider));
                self.done = true;
            }
            _ => {}
        }
    }
}
