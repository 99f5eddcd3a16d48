//! A web-chat session's live events: the customer's accepted messages, typing, the answer as the
//! model writes it, the final answer and hand-over notices.
//!
//! Events are kept in a bounded per-session Redis stream (`oc:events:{webchat:<session>}`,
//! expiring with the conversation), written in the same atomic step as what they announce where
//! there is one (accept, commit), so a replica dying in between can neither lose an answer's
//! event nor announce an answer that was never committed. Their stream ids are the SSE event ids:
//! any replica resumes a reconnecting widget exactly after its `Last-Event-ID`. The history
//! keeps only final answers; deltas live here only. This module is the vocabulary; the stores
//! write events, `event_stream` follows and publishes them.

use crate::message::{Channel, InboundMessage, StoredReply};
use serde::{Deserialize, Serialize};

/// One event of a session, as stored and as sent to the widget (`data:` of the SSE event, with
/// the same `type` as the SSE `event:` name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionEvent {
    /// A message of the customer's was accepted (also when sent from another tab or device).
    Message {
        /// The client's message id.
        message_id: String,
        /// What the customer wrote.
        text: String,
        /// When it was accepted, ms since the epoch.
        ts: u64,
    },
    /// A turn started on the customer's message: the agent is writing.
    Typing {
        /// The message being answered.
        message_id: String,
    },
    /// More of the answer, as the model writes it.
    Delta {
        /// The message being answered.
        message_id: String,
        /// The text to append.
        text: String,
    },
    /// The text streamed so far is void (the provider failed mid-answer); another provider's
    /// answer follows.
    Reset {
        /// The message being answered.
        message_id: String,
    },
    /// The final answer, as committed to the history.
    Answer {
        /// The message answered.
        message_id: String,
        /// Later messages of the customer this answer covers too.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        covers: Vec<String>,
        /// The whole answer.
        text: String,
        /// The skill that answered.
        skill: String,
        /// The provider that wrote it.
        provider: String,
        /// When it was committed, ms since the epoch.
        ts: u64,
    },
    /// A person of the team wrote to the customer (the conversation is handed over).
    Person {
        /// The message's id (`person-…`).
        message_id: String,
        /// What they wrote.
        text: String,
        /// Who wrote it.
        by: String,
        /// When it was sent, ms since the epoch.
        ts: u64,
    },
    /// The conversation was handed to a person.
    Handover {
        /// The message that handed it over.
        message_id: String,
        /// The hand-over's reference, for the customer to quote.
        reference: String,
    },
}

impl SessionEvent {
    /// The SSE event name (the `type` field).
    pub fn name(&self) -> &'static str {
        match self {
            SessionEvent::Message { .. } => "message",
            SessionEvent::Typing { .. } => "typing",
            SessionEvent::Delta { .. } => "delta",
            SessionEvent::Reset { .. } => "reset",
            SessionEvent::Answer { .. } => "answer",
            SessionEvent::Person { .. } => "person",
            SessionEvent::Handover { .. } => "handover",
        }
    }

    /// The event a message's acceptance writes, when its conversation keeps events.
    pub fn accepted(msg: &InboundMessage) -> Option<SessionEvent> {
        keeps_events(msg).then(|| SessionEvent::Message {
            message_id: msg.message_id.clone(),
            text: msg.text.clone(),
            ts: msg.received_at_ms,
        })
    }

    /// The answer event of a committed reply.
    pub fn answer(reply: &StoredReply, covers: Vec<String>) -> SessionEvent {
        SessionEvent::Answer {
            message_id: reply.message_id.clone(),
            covers,
            text: reply.text.clone(),
            skill: reply.skill.clone(),
            provider: reply.provider.clone(),
            ts: reply.ts,
        }
    }
}

/// Whether `msg`'s turn writes live events: web chat (a page follows them) and API requests
/// that asked for `stream: true`.
pub fn keeps_events(msg: &InboundMessage) -> bool {
    msg.channel == Channel::Webchat || msg.streamed
}

/// An event as read back, with its id (a Redis stream id, `<ms>-<n>`; ordered).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The SSE event id.
    pub id: String,
    /// The event's JSON.
    pub json: String,
}

/// Encodes events as the JSON array of JSON texts the stores' scripts take.
pub fn encode(events: &[SessionEvent]) -> String {
    if events.is_empty() {
        return String::new();
    }
    let texts: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap_or_default())
        .collect();
    serde_json::to_string(&texts).unwrap_or_default()
}

/// Orders stream ids (`<ms>-<n>`): `a` after `b`. An id that cannot be read sorts first, so a
/// garbled `Last-Event-ID` replays what is kept instead of skipping it.
pub fn is_after(a: &str, b: &str) -> bool {
    parse_id(a) > parse_id(b)
}

/// `(ms, n)` of a stream id; `(0, 0)` when unreadable.
pub fn parse_id(id: &str) -> (u64, u64) {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().and_then(|p| p.parse().ok());
    let n = parts.next().map_or(Some(0), |p| p.parse().ok());
    match (ms, n) {
        (Some(ms), Some(n)) => (ms, n),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_their_type_and_round_trip() {
        let event = SessionEvent::Delta {
            message_id: "m1".into(),
            text: "Je pakket".into(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "delta");
        assert_eq!(event.name(), "delta");
        let back: SessionEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert!(is_after("1700000000001-0", "1700000000000-5"));
        assert!(is_after("1700000000000-10", "1700000000000-9"));
        assert!(!is_after("1700000000000-9", "1700000000000-9"));
        assert!(is_after("1-0", "garbage"));
        assert_eq!(parse_id("1700000000000"), (1_700_000_000_000, 0));
    }

    #[test]
    fn only_web_chat_messages_write_an_accepted_event() {
        let web = InboundMessage::new(Channel::Webchat, "s", "m", "hoi".into(), "r");
        assert!(matches!(
            SessionEvent::accepted(&web),
            Some(SessionEvent::Message { .. })
        ));
        let wa = InboundMessage::new(Channel::Whatsapp, "316", "m", "hoi".into(), "r");
        assert_eq!(SessionEvent::accepted(&wa), None);
        assert_eq!(encode(&[]), "");
    }
}
