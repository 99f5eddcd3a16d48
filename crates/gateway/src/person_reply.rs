//! A person's message to a customer whose conversation is handed over
//! (`POST /v1/escalations/{id}/messages`, the console's reply box): sent on the customer's
//! channel through the same egress as the bot's answers (split, retried, 429s waited out),
//! once per idempotency key, and kept in the history as an `agent` entry, so the bot that takes
//! the conversation back sees what the person said.
//!
//! Two steps around the send, each atomic in the store: `reserve` (the escalation is pending
//! and this person holds it, or nobody does and now they do; the message is recorded as
//! sending), then `finish` (sent: the history entry; failed: the reason). On web chat the
//! event the widget follows is the delivery, so `reserve` finishes at once.

use crate::background::Background;
use crate::escalation::Escalation;
use crate::live::Live;
use crate::message::Channel;
pub use crate::person_message::{PersonMessage, Reservation, SendStatus};
use crate::state::{StateError, StateStore, while_unavailable};
use crate::telemetry;
use std::sync::Arc;
use std::time::Duration;

/// How long the request waits for the platform before answering 202 (the send goes on).
const SEND_WAIT: Duration = Duration::from_secs(10);
/// WhatsApp's code for a closed 24-hour customer-service window.
const WINDOW_CLOSED: &str = "(code 131047)";

/// What the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The customer has it (`repeated`: an earlier request with the same key sent it).
    Sent {
        /// The message's id.
        message_id: String,
        /// An earlier request with this idempotency key sent it.
        repeated: bool,
    },
    /// Still being sent; asking again with the same key tells how it ended.
    Sending {
        /// The message's id.
        message_id: String,
    },
    /// WhatsApp's 24-hour window is closed: only a template message may be sent now.
    WindowClosed {
        /// The message's id.
        message_id: String,
        /// The platform's words.
        reason: String,
    },
    /// The platform refused it for another reason.
    Failed {
        /// The message's id.
        message_id: String,
        /// The platform's words.
        reason: String,
    },
    /// Another person holds the escalation.
    HeldBy(String),
    /// The escalation was resolved.
    NotPending,
    /// No escalation for the conversation.
    Unknown,
}

impl Outcome {
    fn of_status(message_id: String, status: SendStatus, repeated: bool) -> Outcome {
        match status {
            SendStatus::Sent => Outcome::Sent {
                message_id,
                repeated,
            },
            SendStatus::Sending => Outcome::Sending { message_id },
            SendStatus::Failed(reason) if reason.contains(WINDOW_CLOSED) => {
                Outcome::WindowClosed { message_id, reason }
            }
            SendStatus::Failed(reason) => Outcome::Failed { message_id, reason },
        }
    }
}

/// Sends `message` to the customer of `escalation`: reserved in the store, delivered (web-chat
/// event, or the platform's API on a task that outlives a slow platform), finished in the store.
/// Waits up to [`SEND_WAIT`] for the platform.
pub async fn send(
    store: Arc<dyn StateStore>,
    live: Arc<Live>,
    background: &Background,
    escalation: &Escalation,
    message: PersonMessage,
) -> Result<Outcome, StateError> {
    let channel = message.conversation.channel();
    let on_platform = matches!(channel, Channel::Whatsapp | Channel::Telegram);
    let reservation = store.reserve_person_message(&message, !on_platform).await?;
    let first_reply = match reservation {
        Reservation::Unknown => return Ok(Outcome::Unknown),
        Reservation::NotPending => return Ok(Outcome::NotPending),
        Reservation::HeldBy(holder) => return Ok(Outcome::HeldBy(holder)),
        Reservation::Existing { message_id, status } => {
            return Ok(Outcome::of_status(message_id, status, true));
        }
        Reservation::New {
            status: SendStatus::Sent,
            first_reply,
        } => first_reply,
        Reservation::New { .. } => {
            let (done, finished) = tokio::sync::oneshot::channel();
            let address = escalation
                .address
                .clone()
                .unwrap_or_else(|| escalation.user.clone());
            let account = escalation.account.clone();
            let created_at = escalation.created_at;
            let message_id = message.message_id.clone();
            background.spawn(async move {
                let sent = live
                    .egress
                    .send(channel, &address, account.as_deref(), &message.text)
                    .await
                    .map_err(|failure| failure.reason);
                let outcome = sent.as_ref().map(|_| ()).map_err(String::as_str);
                let finished = while_unavailable(|| store.finish_person_message(&message, outcome))
                    .await;
                let result = match finished {
                    Ok(Reservation::New { status, first_reply }) => {
                        count(channel, &status, first_reply, created_at, message.ts);
                        Ok(Outcome::of_status(message.message_id.clone(), status, false))
                    }
                    Ok(Reservation::Existing { message_id, status }) => {
                        Ok(Outcome::of_status(message_id, status, true))
                    }
                    Ok(_) => Ok(Outcome::Unknown),
                    Err(e) => {
                        tracing::error!(conversation = %message.conversation, error = %e, "a person's message went out but could not be recorded");
                        Err(e)
                    }
                };
                let _ = done.send(result);
            });
            return match tokio::time::timeout(SEND_WAIT, finished).await {
                Ok(Ok(result)) => result,
                _ => Ok(Outcome::Sending { message_id }),
            };
        }
    };
    count(
        channel,
        &SendStatus::Sent,
        first_reply,
        escalation.created_at,
        message.ts,
    );
    Ok(Outcome::Sent {
        message_id: message.message_id,
        repeated: false,
    })
}

/// The metrics of a finished message: replies by outcome, and the time to the first one.
fn count(channel: Channel, status: &SendStatus, first_reply: bool, created_at: u64, ts: u64) {
    let outcome = match status {
        SendStatus::Sent => "sent",
        SendStatus::Failed(reason) if reason.contains(WINDOW_CLOSED) => "window_closed",
        SendStatus::Failed(_) => "failed",
        SendStatus::Sending => return,
    };
    metrics::counter!(telemetry::PERSON_REPLIES, "channel" => channel.as_str(), "outcome" => outcome)
        .increment(1);
    if first_reply {
        metrics::histogram!(telemetry::ESCALATION_FIRST_REPLY)
            .record(ts.saturating_sub(created_at) as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_whatsapp_window_is_told_apart_from_other_refusals() {
        let closed = SendStatus::Failed(
            "WhatsApp answered HTTP 400 (code 131047): Re-engagement message".into(),
        );
        assert!(matches!(
            Outcome::of_status("p".into(), closed, false),
            Outcome::WindowClosed { .. }
        ));
        let other =
            SendStatus::Failed("WhatsApp answered HTTP 400 (code 131026): undeliverable".into());
        assert!(matches!(
            Outcome::of_status("p".into(), other, false),
            Outcome::Failed { .. }
        ));
        assert_eq!(
            Outcome::of_status("p".into(), SendStatus::Sent, true),
            Outcome::Sent {
                message_id: "p".into(),
                repeated: true
            }
        );
    }
}
