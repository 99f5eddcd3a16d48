//! Erasing a customer on request (GDPR art. 17): `clawgate forget --customer channel:user`
//! removes their conversation, session, replies, escalation, live events, identity links and
//! pending work from Redis, and deletes their audit key, which leaves every audit text of theirs
//! unreadable. It reports what it removed.
//!
//! Kept on purpose: the dedupe markers (`oc:seen:{channel:message id}`, no content), so a
//! platform that resends an old webhook does not bring the message back. Not found: a WhatsApp
//! or Telegram reply to a message the history no longer holds (past `historyLimit`): its key
//! names only the platform's message id; it expires with the dedupe window (8 days).

use crate::audit::customer_keys;
use crate::message::{Channel, ConversationKey, DedupeId, HistoryEntry, InboundMessage};
use crate::state::connection::Connection;
use crate::state::link::{RedisLink, classify};
use crate::state::{StateError, keys};
use serde::Serialize;
use std::collections::BTreeSet;

/// Entries read per round when scanning the inbox and the dead-letter stream.
const SCAN_BATCH: usize = 1_000;

/// What [`forget_customer`] removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ForgetReport {
    /// `channel:user`.
    pub conversation: String,
    /// History entries (messages and answers) deleted.
    pub history_entries: u64,
    /// Stored replies deleted (by message id).
    pub replies: u64,
    /// Conversation keys deleted (history, session, pending, escalation, events, lease).
    pub keys: Vec<String>,
    /// Whether a pending hand-over was taken off the escalations list.
    pub escalation_listed: bool,
    /// Identity links (a WhatsApp user id or an old number) that led to this customer.
    pub identity_links: u64,
    /// Accepted messages not yet answered, taken out of the inbox.
    pub inbox_entries: u64,
    /// Dead-letter entries about this customer.
    pub dead_letters: u64,
    /// Whether the audit key existed (their audit texts are unreadable from now on).
    pub audit_key: bool,
}

/// Removes everything Redis keeps about `conversation`.
pub async fn forget_customer(
    link: &RedisLink,
    conversation: &ConversationKey,
) -> Result<ForgetReport, StateError> {
    let mut conn = link.connection()?;
    let layout = link.keys();
    let fail = |e: redis::RedisError| classify(&e);
    let mut report = ForgetReport {
        conversation: conversation.to_string(),
        ..ForgetReport::default()
    };
    let (channel, user) = conversation
        .as_str()
        .split_once(':')
        .unwrap_or((conversation.as_str(), ""));

    // Replies are keyed by message id: read the ids from the history before it goes.
    let history: Vec<String> = redis::cmd("LRANGE")
        .arg(layout.conversation(conversation))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .map_err(fail)?;
    report.history_entries = history.len() as u64;
    let message_ids: BTreeSet<String> = history
        .iter()
        .filter_map(|e| serde_json::from_str::<HistoryEntry>(e).ok())
        .map(|e| e.message_id)
        .filter(|id| !id.is_empty())
        .collect();
    if let Some(kind) = Channel::named(channel) {
        for id in &message_ids {
            let dedupe = DedupeId::new(kind, user, id);
            report.replies += delete(
                &mut conn,
                &[layout.replied(&dedupe), layout.delivered(&dedupe)],
            )
            .await?
            .min(1);
        }
        // Web-chat and API message ids carry the user: replies to messages the history no
        // longer holds (past `historyLimit`) are found by name too.
        if matches!(kind, Channel::Webchat | Channel::Api) {
            let replies = layout.replies_glob(conversation, glob_escape);
            let deliveries = replies.replacen("oc:replied:", "oc:delivered:", 1);
            for pattern in [replies, deliveries] {
                let removed = delete_matching(&mut conn, &pattern).await?;
                if pattern.starts_with("oc:replied") {
                    report.replies += removed;
                }
            }
        }
    }

    for key in [
        layout.conversation(conversation),
        layout.session(conversation),
        layout.pending(conversation),
        layout.escalation(conversation),
        layout.events(conversation),
        layout.lease(conversation),
    ] {
        let removed: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(fail)?;
        if removed > 0 {
            report.keys.push(key);
        }
    }
    let unlisted: i64 = redis::cmd("ZREM")
        .arg(layout.escalations_of(conversation.as_str()))
        .arg(conversation.as_str())
        .query_async(&mut conn)
        .await
        .map_err(fail)?;
    report.escalation_listed = unlisted > 0;
    report.identity_links = forget_identity_links(&mut conn, channel, user).await?;
    report.inbox_entries = remove_entries(
        &mut conn,
        &layout.inbox_of(conversation),
        conversation,
        true,
    )
    .await?;
    report.dead_letters = remove_entries(&mut conn, keys::DEADLETTER, conversation, false).await?;
    report.audit_key = customer_keys::shred(link, conversation.as_str()).await?;
    Ok(report)
}

/// `text` with Redis glob characters escaped, to match it literally in a SCAN pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Deletes `names`, one command each (in a cluster they may live in different slots); how many
/// existed.
async fn delete(conn: &mut Connection, names: &[String]) -> Result<u64, StateError> {
    let mut removed = 0;
    for name in names {
        let existed: u64 = redis::cmd("DEL")
            .arg(name)
            .query_async(conn)
            .await
            .map_err(|e| classify(&e))?;
        removed += existed;
    }
    Ok(removed)
}

/// Every key matching `pattern` (on every master of a cluster).
async fn matching_keys(conn: &mut Connection, pattern: &str) -> Result<Vec<String>, StateError> {
    conn.scan_match(pattern, SCAN_BATCH)
        .await
        .map_err(|e| classify(&e))
}

/// Deletes every key matching `pattern`; how many.
async fn delete_matching(conn: &mut Connection, pattern: &str) -> Result<u64, StateError> {
    let names = matching_keys(conn, pattern).await?;
    delete(conn, &names).await
}

/// Deletes `oc:identity:{channel:*}` links whose target is `user`.
async fn forget_identity_links(
    conn: &mut Connection,
    channel: &str,
    user: &str,
) -> Result<u64, StateError> {
    let pattern = format!("oc:identity:{{{}:*", glob_escape(channel));
    let mut removed = 0;
    for name in matching_keys(conn, &pattern).await? {
        let target: Option<String> = redis::cmd("GET")
            .arg(&name)
            .query_async(conn)
            .await
            .map_err(|e| classify(&e))?;
        if target.as_deref() == Some(user) {
            removed += delete(conn, std::slice::from_ref(&name)).await?;
        }
    }
    Ok(removed)
}

/// Deletes the entries of `stream` that concern `conversation` (acknowledging inbox entries a
/// worker holds, so nobody claims them again); how many.
async fn remove_entries(
    conn: &mut Connection,
    stream: &str,
    conversation: &ConversationKey,
    acknowledge: bool,
) -> Result<u64, StateError> {
    let mut start = "-".to_string();
    let mut removed = 0;
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(conn)
            .await
            .map_err(|e| classify(&e))?;
        let Some(last) = reply.ids.last().map(|e| e.id.clone()) else {
            return Ok(removed);
        };
        let full_batch = reply.ids.len() == SCAN_BATCH;
        for entry in reply.ids {
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
            let about = serde_json::from_str::<InboundMessage>(&field("m"))
                .map(|m| m.conversation() == *conversation)
                .unwrap_or(false)
                || field("conversation") == conversation.as_str()
                // An unsent reply names its recipient.
                || format!("{}:{}", field("channel"), field("to")) == conversation.as_str();
            if !about {
                continue;
            }
            if acknowledge {
                let _: i64 = redis::cmd("XACK")
                    .arg(stream)
                    .arg(keys::GROUP)
                    .arg(&entry.id)
                    .query_async(conn)
                    .await
                    .map_err(|e| classify(&e))?;
            }
            let _: i64 = redis::cmd("XDEL")
                .arg(stream)
                .arg(&entry.id)
                .query_async(conn)
                .await
                .map_err(|e| classify(&e))?;
            removed += 1;
        }
        if !full_batch {
            return Ok(removed);
        }
        start = format!("({last}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_with_glob_characters_is_matched_literally() {
        assert_eq!(
            glob_escape("webchat:a*b?[c]\\:"),
            "webchat:a\\*b\\?\\[c\\]\\\\:"
        );
        assert_eq!(glob_escape("whatsapp:31612345678"), "whatsapp:31612345678");
    }
}
