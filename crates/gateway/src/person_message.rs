//! A person's message to a handed-over customer as the stores keep it: the message, where its
//! sending stands, and what a store made of it. The flow that sends it is `person_reply`.

use crate::events::SessionEvent;
use crate::message::{ConversationKey, HistoryEntry, Role};

/// One message a person sends.
#[derive(Debug, Clone)]
pub struct PersonMessage {
    /// The handed-over conversation.
    pub conversation: ConversationKey,
    /// The sender's `Idempotency-Key` (or a fresh one): a retried request sends nothing twice.
    pub idempotency_key: String,
    /// Who writes (the dispatcher's name).
    pub by: String,
    /// Take the escalation over from another person holding it.
    pub takeover: bool,
    /// `person-<uuid>`.
    pub message_id: String,
    /// What they write.
    pub text: String,
    /// When it was sent (ms since the epoch).
    pub ts: u64,
}

impl PersonMessage {
    /// The history entry it becomes once it reached the customer.
    pub fn history_entry(&self) -> HistoryEntry {
        HistoryEntry {
            role: Role::Agent,
            text: self.text.clone(),
            ts: self.ts,
            message_id: self.message_id.clone(),
            skill: None,
            provider: None,
            by: Some(self.by.clone()),
        }
    }

    /// The web-chat event that shows it in the widget.
    pub fn event(&self) -> SessionEvent {
        SessionEvent::Person {
            message_id: self.message_id.clone(),
            text: self.text.clone(),
            by: self.by.clone(),
            ts: self.ts,
        }
    }
}

/// Where a person's message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// Reserved; the platform has not confirmed yet.
    Sending,
    /// The customer has it.
    Sent,
    /// The platform refused it, with the reason.
    Failed(String),
}

impl SendStatus {
    /// Reads the stored status (`sending`, `sent`, `failed`).
    pub fn parse(status: &str, reason: &str) -> SendStatus {
        match status {
            "sent" => SendStatus::Sent,
            "failed" => SendStatus::Failed(reason.to_string()),
            _ => SendStatus::Sending,
        }
    }
}

/// What the store made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Taken now; `first_reply` when it is the first a person sent on this escalation.
    New {
        /// Sending (a platform sends it next) or sent (web chat).
        status: SendStatus,
        /// The first message a person sent on this escalation.
        first_reply: bool,
    },
    /// The idempotency key was used before: that message's state.
    Existing {
        /// The earlier message's id.
        message_id: String,
        /// Where it stands.
        status: SendStatus,
    },
    /// Another person holds the escalation (named).
    HeldBy(String),
    /// The escalation was resolved.
    NotPending,
    /// No escalation for the conversation.
    Unknown,
}
