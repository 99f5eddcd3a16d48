//! One platform notification, message by message.
//!
//! A WhatsApp notification can carry several messages of several customers (and a Telegram
//! update one of many kinds). Each is read on its own into a [`Read`]: answered, counted and
//! left alone, a change of the customer's identity, or unreadable. One message that cannot be
//! read never costs the others: it goes to the dead-letter stream with the reason, and the
//! webhook is answered 200 once every other message is durable (retrying could not help it).
//! Only a body that is not a notification at all, or a bad signature, gets a 4xx.

use super::identity;
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::message::{Channel, InboundMessage};
use crate::state::Acceptance;
use crate::telemetry;
use serde::Serialize;
use std::collections::HashMap;

/// What reading a platform's messages needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// This replica's id (the ingress replica of what it reads).
    pub replica_id: &'a str,
    /// Messages sent longer ago are not answered (`channels.maxMessageAgeHours`).
    pub max_age: Option<std::time::Duration>,
}

/// One message of a notification, read: what it is and what to do with it.
#[derive(Debug)]
pub struct Read {
    /// The platform's name for its type (`text`, `reaction`, `callback_query`, …), from a fixed
    /// list (`unknown` for the rest), as counted in metrics.
    pub kind: &'static str,
    /// What to do with it.
    pub action: Action,
}

/// What ingress does with one read message.
#[derive(Debug)]
pub enum Action {
    /// Queue it for a turn (a text, or something unreadable to the agent that gets the
    /// text-only notice). `identities` are the ways the platform names the sender, most
    /// preferred first; when any is given, the conversation is the one they are linked to
    /// ([`identity`]), and the message's `user` is set accordingly.
    Answer {
        /// The message, `user` = the most preferred identity until resolved.
        msg: Box<InboundMessage>,
        /// Identities to resolve and link; empty when the channel has only one.
        identities: Vec<String>,
    },
    /// Counted, not answered (a reaction, an edit, a member update, a status).
    Ignore,
    /// Sent longer ago than `channels.maxMessageAgeHours`: a replay past the dedupe window,
    /// counted, not answered again.
    Stale,
    /// The customer is named differently from now on: the identities in `to` continue the
    /// conversation of the identities in `from`.
    Relink {
        /// The identities the customer had (most preferred first).
        from: Vec<String>,
        /// The identities the customer has now.
        to: Vec<String>,
    },
    /// It cannot be read (no sender, no id): dead-lettered with the reason.
    Unreadable {
        /// What is wrong with it, for the operator.
        reason: String,
        /// The message as it came.
        payload: String,
    },
}

impl Read {
    /// A message to answer whose sender has one identity.
    pub fn answer(kind: &'static str, msg: InboundMessage) -> Read {
        Read {
            kind,
            action: Action::Answer {
                msg: Box::new(msg),
                identities: Vec::new(),
            },
        }
    }

    /// A message of type `kind` to answer, sent at `sent_at` (Unix seconds, when the platform
    /// says): `read`, unless it is older than `max_age` (none: no limit).
    pub fn unless_stale(
        kind: &'static str,
        sent_at: Option<u64>,
        max_age: Option<std::time::Duration>,
        read: impl FnOnce() -> Read,
    ) -> Read {
        let now = crate::message::now_ms() / 1000;
        match (sent_at, max_age) {
            (Some(sent), Some(max_age)) if now.saturating_sub(sent) > max_age.as_secs() => Read {
                kind,
                action: Action::Stale,
            },
            _ => read(),
        }
    }

    /// A message counted and left alone.
    pub fn ignore(kind: &'static str) -> Read {
        Read {
            kind,
            action: Action::Ignore,
        }
    }

    /// A message that cannot be read.
    pub fn unreadable(kind: &'static str, reason: impl Into<String>, payload: String) -> Read {
        Read {
            kind,
            action: Action::Unreadable {
                reason: reason.into(),
                payload,
            },
        }
    }
}

/// What became of a notification's messages, as the webhook answers it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ingested {
    /// Messages durably accepted for a turn.
    pub accepted: usize,
    /// Messages seen before (a platform retry).
    pub duplicates: usize,
    /// Messages counted and left alone.
    pub ignored: usize,
    /// Messages that could not be read, now in the dead-letter stream.
    pub unreadable: usize,
}

/// What each of `identities` is linked to, as far as `links` knows.
fn known(links: &HashMap<String, String>, identities: &[String]) -> Vec<Option<String>> {
    identities.iter().map(|i| links.get(i).cloned()).collect()
}

/// Takes every read message of one notification, in order: links identities, accepts what is
/// to be answered, dead-letters what cannot be read. Fails (503) only when the state store
/// refuses; what was accepted before stays accepted, and dedupe makes the platform's retry safe.
pub async fn ingest(
    app: &AppState,
    channel: Channel,
    reads: Vec<Read>,
) -> Result<Ingested, ApiError> {
    let wanted: Vec<String> = reads
        .iter()
        .flat_map(|read| match &read.action {
            Action::Answer { identities, .. } => identities.clone(),
            Action::Relink { from, to } => from.iter().chain(to).cloned().collect(),
            _ => Vec::new(),
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut links: HashMap<String, String> = identity::linked(&app.ingress, channel, wanted).await;
    let max_text = app.live.current().config.channels.max_text(channel);
    let mut new_links = Vec::new();
    let mut ingested = Ingested::default();
    let mut learn = |links: &mut HashMap<String, String>, missing: Vec<(String, String)>| {
        for (identity, user) in missing {
            links.insert(identity.clone(), user.clone());
            new_links.push((identity, user));
        }
    };
    for read in reads {
        let action = match &read.action {
            Action::Answer { msg, .. } if crate::egress::utf16_len(&msg.text) > max_text => {
                "too_long"
            }
            Action::Answer { msg, .. } if msg.unsupported.is_some() => "unsupported",
            Action::Answer { .. } => "answer",
            Action::Ignore => "ignored",
            Action::Stale => "stale",
            Action::Relink { .. } => "relinked",
            Action::Unreadable { .. } => "unreadable",
        };
        metrics::counter!(telemetry::INBOUND_MESSAGES, "channel" => channel.as_str(), "type" => read.kind, "action" => action)
            .increment(1);
        match read.action {
            Action::Answer {
                mut msg,
                identities,
            } => {
                let missing = if identities.is_empty() {
                    Vec::new()
                } else {
                    let (user, missing) =
                        identity::resolve(&identities, &known(&links, &identities));
                    msg.reply_to = Some(identities[0].clone()).filter(|address| *address != user);
                    msg.user = user;
                    missing
                };
                if let Some(capped) = super::over_limit(&msg, max_text) {
                    *msg = capped;
                }
                match app.ingress.accept(&msg).await? {
                    (Acceptance::Accepted { .. }, _) => ingested.accepted += 1,
                    (Acceptance::Duplicate, _) => ingested.duplicates += 1,
                }
                learn(&mut links, missing);
            }
            Action::Relink { from, to } => {
                let (user, _) = identity::resolve(&from, &known(&links, &from));
                let missing = identity::missing_links(&to, &known(&links, &to), &user);
                tracing::info!(%channel, links = missing.len(), "a customer's identity changed; their new identity continues the conversation");
                learn(&mut links, missing);
                ingested.ignored += 1;
            }
            Action::Ignore => ingested.ignored += 1,
            Action::Stale => {
                tracing::info!(%channel, kind = read.kind, "a message older than the platform's retry window is not answered (a replay past dedupe)");
                ingested.ignored += 1;
            }
            Action::Unreadable { reason, payload } => {
                tracing::warn!(%channel, kind = read.kind, %reason, "a message of a notification cannot be read; dead-lettered, the others are taken");
                app.ingress
                    .dead_letter_unreadable(channel, &reason, &payload)
                    .await?;
                ingested.unreadable += 1;
            }
        }
    }
    identity::link(&app.ingress, channel, &new_links).await;
    Ok(ingested)
}
