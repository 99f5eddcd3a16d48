//! The dead-letter stream `oc:deadletter`: what could not be processed (inbound entries that
//! kept failing, unreadable platform messages) or sent (replies, dispatcher events), each with
//! its reason. Writers add to it inside their own atomic steps; this module reads and removes.

use crate::message::InboundMessage;
use crate::state::StateError;
use crate::state::keys;
use crate::state::link::{RedisLink, classify};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One dead-letter entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Stream entry id (also when it was dead-lettered, in ms).
    pub id: String,
    /// `inbound` or `outbound`.
    pub kind: String,
    /// Why it is here.
    pub reason: String,
    /// Every field of the entry.
    pub fields: BTreeMap<String, String>,
}

impl DeadLetter {
    /// The channel the entry belongs to, when known.
    pub fn channel(&self) -> String {
        self.fields
            .get("channel")
            .cloned()
            .or_else(|| {
                self.inbound_message()
                    .map(|m| m.channel.as_str().to_string())
            })
            .unwrap_or_else(|| "?".into())
    }

    /// Who it concerns: the reply's recipient, or the message's conversation.
    pub fn subject(&self) -> String {
        self.fields
            .get("to")
            .or_else(|| self.fields.get("conversation"))
            .cloned()
            .or_else(|| self.inbound_message().map(|m| m.conversation().to_string()))
            .unwrap_or_else(|| "?".into())
    }

    pub(crate) fn inbound_message(&self) -> Option<InboundMessage> {
        serde_json::from_str(self.fields.get("m")?).ok()
    }
}

/// The stream, for listing and removing entries.
pub struct DeadLetterStream {
    link: Arc<RedisLink>,
}

impl DeadLetterStream {
    /// The stream of the Redis behind `link`.
    pub fn new(link: Arc<RedisLink>) -> DeadLetterStream {
        DeadLetterStream { link }
    }

    /// Every entry, oldest first.
    pub async fn list(&self) -> Result<Vec<DeadLetter>, StateError> {
        let mut conn = self.link.connection()?;
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::DEADLETTER)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e))?;
        Ok(entries
            .ids
            .into_iter()
            .map(|entry| {
                let fields: BTreeMap<String, String> = entry
                    .map
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.clone(), redis::from_redis_value_ref::<String>(v).ok()?))
                    })
                    .collect();
                DeadLetter {
                    id: entry.id,
                    kind: fields
                        .get("kind")
                        .cloned()
                        .unwrap_or_else(|| "inbound".into()),
                    reason: fields.get("reason").cloned().unwrap_or_default(),
                    fields,
                }
            })
            .collect())
    }

    /// Removes the entry `id` (after it was re-driven).
    pub async fn remove(&self, id: &str) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let _: i64 = redis::cmd("XDEL")
            .arg(keys::DEADLETTER)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}
