//! Writing a turn's passing events (the model's deltas, resets) to the session's event stream in
//! order, without holding the model up. (The typing event is written when the turn begins.)
//!
//! The provider hands deltas to a [`TurnEvents`] (a channel); the [`EventWriter`] runs beside the
//! model call and writes whatever has queued up in one append: the first delta goes out at once,
//! and while an append is on its way the next deltas gather, so a fast model costs fewer writes
//! instead of more latency. The writer ends when the turn drops its `TurnEvents`; what it has not
//! written by then (with a model that answers at once: the whole answer's delta) it hands back,
//! and the commit writes it ahead of the answer, in the same step. Either way the answer always
//! comes after its deltas.

use super::hub::EventHub;
use crate::events::SessionEvent;
use crate::llm::AnswerSink;
use crate::message::ConversationKey;
use crate::state::StateStore;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

/// The sending side: what a turn (and its provider) reports.
pub struct TurnEvents {
    queue: mpsc::UnboundedSender<SessionEvent>,
    message_id: String,
}

/// The writing side, run beside the model call.
pub struct EventWriter<'a> {
    queue: mpsc::UnboundedReceiver<SessionEvent>,
    store: &'a dyn StateStore,
    hub: &'a EventHub,
    conversation: ConversationKey,
}

/// A turn's event channel for the answer to `message_id` in `conversation`.
pub fn channel<'a>(
    store: &'a dyn StateStore,
    hub: &'a EventHub,
    conversation: ConversationKey,
    message_id: &str,
) -> (TurnEvents, EventWriter<'a>) {
    let (queue, receiver) = mpsc::unbounded_channel();
    (
        TurnEvents {
            queue,
            message_id: message_id.to_string(),
        },
        EventWriter {
            queue: receiver,
            store,
            hub,
            conversation,
        },
    )
}

impl AnswerSink for TurnEvents {
    fn delta(&self, text: &str) {
        let _ = self.queue.send(SessionEvent::Delta {
            message_id: self.message_id.clone(),
            text: text.to_string(),
        });
    }

    fn reset(&self) {
        let _ = self.queue.send(SessionEvent::Reset {
            message_id: self.message_id.clone(),
        });
    }
}

impl EventWriter<'_> {
    /// Writes queued events while the model writes. Returns the events still unwritten when
    /// the turn's [`TurnEvents`] is dropped (the answer is complete): the commit writes those
    /// together with the answer, a round trip less per turn. A failed write is logged and
    /// skipped: these events are a courtesy, the committed answer is what counts.
    pub async fn run(mut self) -> Vec<SessionEvent> {
        while let Some(first) = self.queue.recv().await {
            let mut batch = vec![first];
            loop {
                match self.queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return coalesce(batch),
                }
            }
            let batch = coalesce(batch);
            match self.store.append_events(&self.conversation, &batch).await {
                Ok(()) => self.hub.wake(self.conversation.as_str()),
                Err(e) => {
                    tracing::debug!(conversation = %self.conversation, error = %e, "live events not written")
                }
            }
        }
        Vec::new()
    }
}

/// Joins adjacent deltas into one event: the widget shows the same text, with fewer events.
fn coalesce(events: Vec<SessionEvent>) -> Vec<SessionEvent> {
    let mut joined: Vec<SessionEvent> = Vec::with_capacity(events.len());
    for event in events {
        match (joined.last_mut(), event) {
            (
                Some(SessionEvent::Delta {
                    message_id: last_id,
                    text: last,
                }),
                SessionEvent::Delta { message_id, text },
            ) if *last_id == message_id => last.push_str(&text),
            (_, event) => joined.push(event),
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Channel;
    use crate::state::StoreLimits;
    use crate::state::memory::MemoryStore;

    fn delta(text: &str) -> SessionEvent {
        SessionEvent::Delta {
            message_id: "m1".into(),
            text: text.into(),
        }
    }

    /// Deltas around a reset, and the fallback's delta, as a turn sends them.
    fn send_a_restarted_answer(events: &TurnEvents) {
        events.delta("Je ");
        events.delta("pakket");
        events.reset();
        events.delta("Uw pakket");
    }

    /// The same events as written: adjacent deltas joined, nothing else changed.
    fn joined() -> Vec<SessionEvent> {
        vec![
            delta("Je pakket"),
            SessionEvent::Reset {
                message_id: "m1".into(),
            },
            delta("Uw pakket"),
        ]
    }

    async fn written(store: &MemoryStore, conversation: &ConversationKey) -> Vec<SessionEvent> {
        store
            .events_after(conversation, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_str(&e.json).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn deltas_written_while_another_write_is_out_arrive_joined_and_in_order() {
        let (store, _queue) = MemoryStore::new(StoreLimits::for_tests(), 8);
        let hub = EventHub::default();
        let conversation = ConversationKey::new(Channel::Webchat, "ws_1");
        let (events, writer) = channel(&store, &hub, conversation.clone(), "m1");
        send_a_restarted_answer(&events);
        // The model is still writing until the events are out.
        let model = async {
            while written(&store, &conversation).await.is_empty() {
                tokio::task::yield_now().await;
            }
            drop(events);
        };
        let (left, ()) = tokio::join!(writer.run(), model);
        assert_eq!(written(&store, &conversation).await, joined());
        assert_eq!(left, [], "nothing is left for the commit");
    }

    #[tokio::test]
    async fn events_still_queued_when_the_answer_is_complete_are_left_to_the_commit_in_order() {
        let (store, _queue) = MemoryStore::new(StoreLimits::for_tests(), 8);
        let hub = EventHub::default();
        let conversation = ConversationKey::new(Channel::Webchat, "ws_1");
        let (events, writer) = channel(&store, &hub, conversation.clone(), "m1");
        send_a_restarted_answer(&events);
        drop(events);
        assert_eq!(writer.run().await, joined());
        assert_eq!(written(&store, &conversation).await, []);
    }
}
