//! Re-driving the dead-letter stream (`oc:deadletter`, kept by [`crate::inbox::dead_letters`]):
//! list what could not be processed or sent, with the reason, and re-drive it once the cause is
//! fixed.
//!
//! Four kinds of entries: `inbound` (a message that kept failing to be processed; retrying queues
//! it again as a new turn at the end of its conversation), `outbound` (a reply that could not
//! be sent; retrying sends the stored reply again), `escalation` (a dispatcher-webhook event
//! that was not delivered; retrying posts it again with its idempotency key) and `unreadable` (a
//! message of a platform batch that could not be read, kept as it came; nothing to re-drive). A
//! retried entry leaves the stream only when the retry succeeded.

use crate::egress::Egress;
use crate::escalation::{Dispatcher, NotDelivered};
pub use crate::inbox::dead_letters::DeadLetter;
use crate::inbox::dead_letters::DeadLetterStream;
use crate::message::{Channel, DedupeId};
use crate::state::link::RedisLink;
use crate::state::redis::RedisStore;
use crate::state::{Acceptance, StateError, StateStore};
use std::sync::Arc;

/// What retrying one entry did.
#[derive(Debug, Clone, PartialEq)]
pub enum Redriven {
    /// The reply went out.
    Sent,
    /// The message is queued again.
    Requeued,
    /// The dispatcher took the escalation event.
    Dispatched,
}

/// What `deadletter retry` did with one id it was given (or one entry, with `--all`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryReport {
    /// The entry's stream id.
    pub id: String,
    /// Who the entry is for (see [`DeadLetter::subject`]); empty for an unknown id.
    pub subject: String,
    /// What happened.
    pub outcome: RetryOutcome,
}

/// The outcome of retrying one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryOutcome {
    /// No entry has that id.
    NoSuchEntry,
    /// Re-driven and removed from the stream.
    Done(Redriven),
    /// Failed again; the entry stays.
    StillFailing(String),
}

impl RetryReport {
    /// Whether this id still needs attention.
    pub fn failed(&self) -> bool {
        !matches!(self.outcome, RetryOutcome::Done(_))
    }
}

/// Reads and re-drives dead letters.
pub struct DeadLetters {
    stream: DeadLetterStream,
    store: RedisStore,
    egress: Egress,
    dispatcher: Dispatcher,
}

impl DeadLetters {
    /// Over a connected `link`, re-sending replies through `egress` and escalation events to
    /// `dispatcher`.
    pub fn new(
        link: Arc<RedisLink>,
        store: RedisStore,
        egress: Egress,
        dispatcher: Dispatcher,
    ) -> DeadLetters {
        DeadLetters {
            stream: DeadLetterStream::new(link),
            store,
            egress,
            dispatcher,
        }
    }

    /// Every entry, oldest first.
    pub async fn list(&self) -> Result<Vec<DeadLetter>, StateError> {
        self.stream.list().await
    }

    /// Retries the entries named by `ids` (every entry with `all`), oldest first; an id with no
    /// entry is reported as such.
    pub async fn retry_chosen(
        &self,
        ids: &[String],
        all: bool,
    ) -> Result<Vec<RetryReport>, StateError> {
        let letters = self.list().await?;
        let mut reports: Vec<RetryReport> = ids
            .iter()
            .filter(|id| !letters.iter().any(|l| &l.id == *id))
            .map(|id| RetryReport {
                id: id.clone(),
                subject: String::new(),
                outcome: RetryOutcome::NoSuchEntry,
            })
            .collect();
        for letter in letters.iter().filter(|l| all || ids.contains(&l.id)) {
            let outcome = match self.retry(letter).await {
                Ok(redriven) => RetryOutcome::Done(redriven),
                Err(reason) => RetryOutcome::StillFailing(reason),
            };
            reports.push(RetryReport {
                id: letter.id.clone(),
                subject: letter.subject(),
                outcome,
            });
        }
        Ok(reports)
    }

    /// Re-drives `letter`; on success it is removed from the stream.
    pub async fn retry(&self, letter: &DeadLetter) -> Result<Redriven, String> {
        let outcome = match letter.kind.as_str() {
            "outbound" => self.resend(letter).await?,
            "escalation" => self.redispatch(letter).await?,
            "unreadable" => {
                return Err("a platform message that could not be read cannot be re-driven; its `payload` field holds it as it came".into());
            }
            _ => self.requeue(letter).await?,
        };
        self.stream
            .remove(&letter.id)
            .await
            .map_err(|e| format!("retried, but could not remove the entry: {e}"))?;
        Ok(outcome)
    }

    async fn resend(&self, letter: &DeadLetter) -> Result<Redriven, String> {
        let field = |name: &str| letter.fields.get(name).map(String::as_str).unwrap_or("");
        let channel = match field("channel") {
            "whatsapp" => Channel::Whatsapp,
            "telegram" => Channel::Telegram,
            other => return Err(format!("cannot send replies on channel \"{other}\"")),
        };
        let account = Some(field("account")).filter(|a| !a.is_empty());
        self.egress
            .send(channel, field("to"), account, field("text"))
            .await
            .map_err(|failure| failure.reason)?;
        let id = DedupeId::new(channel, field("to"), field("message_id"));
        self.store
            .mark_delivered(&id, "sent")
            .await
            .map_err(|e| format!("sent, but could not record it: {e}"))?;
        Ok(Redriven::Sent)
    }

    async fn redispatch(&self, letter: &DeadLetter) -> Result<Redriven, String> {
        let event: serde_json::Value = letter
            .fields
            .get("event")
            .and_then(|e| serde_json::from_str(e).ok())
            .ok_or("the entry holds no readable event (field `event`)")?;
        let key = letter
            .fields
            .get("idempotency_key")
            .or_else(|| letter.fields.get("reference"))
            .map(String::as_str)
            .unwrap_or("");
        match self.dispatcher.send(&event, key).await {
            Ok(()) => Ok(Redriven::Dispatched),
            Err(NotDelivered::NotConfigured) => {
                Err("no dispatcher webhook is configured (escalation.webhookUrl)".into())
            }
            Err(NotDelivered::Failed(reason)) => Err(reason),
        }
    }

    async fn requeue(&self, letter: &DeadLetter) -> Result<Redriven, String> {
        let msg = letter
            .inbound_message()
            .ok_or("the entry holds no readable message (field `m`)")?;
        // The message was accepted once: forget that, so it is accepted again as a new turn.
        self.store
            .forget_acceptance(&msg.dedupe_id())
            .await
            .map_err(|e| e.to_string())?;
        match self.store.accept(&msg).await.map_err(|e| e.to_string())? {
            Acceptance::Accepted { .. } => Ok(Redriven::Requeued),
            Acceptance::Duplicate => Err("the message was accepted again meanwhile".into()),
        }
    }
}
