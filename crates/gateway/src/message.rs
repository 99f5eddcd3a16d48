//! The domain vocabulary every other module speaks: channels, conversation keys, inbound messages,
//! history entries and stored replies.
//!
//! Everything here is plain data that is serialised into Redis; changing a field name changes the
//! wire format shared by replicas of different versions, so fields are only ever added (with
//! `#[serde(default)]`), never renamed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `unsupported` kind of a text over its channel's limit (`channels.maxTextChars`): it gets
/// the too-long notice instead of a model's answer.
pub const TOO_LONG: &str = "too_long";

/// The channel a customer wrote on; replies go back on the same channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The web-chat widget and its HTTP API.
    Webchat,
    /// WhatsApp Cloud API webhooks.
    Whatsapp,
    /// Telegram Bot API webhooks.
    Telegram,
    /// The OpenAI-compatible chat-completions endpoint.
    Api,
}

impl Channel {
    /// The name used in Redis keys and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webchat => "webchat",
            Channel::Whatsapp => "whatsapp",
            Channel::Telegram => "telegram",
            Channel::Api => "api",
        }
    }

    /// The channel [`Channel::as_str`] names, as an operator or a config file writes it.
    pub fn named(name: &str) -> Option<Channel> {
        [
            Channel::Webchat,
            Channel::Whatsapp,
            Channel::Telegram,
            Channel::Api,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one customer's conversation on one channel, e.g. `webchat:abc` or
/// `whatsapp:31612345678`.
///
/// It is the Redis Cluster hash tag of every key of that conversation, so it must never contain
/// `{` or `}`; constructors of inbound messages validate their ids before building one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationKey(String);

impl ConversationKey {
    /// The conversation of `user` on `channel`.
    pub fn new(channel: Channel, user: &str) -> Self {
        ConversationKey(format!("{}:{user}", channel.as_str()))
    }

    /// The hash-tag content, `channel:user`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The channel of the conversation (keys are only built from a known channel).
    pub fn channel(&self) -> Channel {
        self.0
            .split_once(':')
            .and_then(|(channel, _)| Channel::named(channel))
            .unwrap_or(Channel::Webchat)
    }

    /// Reads `channel:user` as an operator types it; `None` for an unknown channel, an empty
    /// user, or braces (which would break the hash tag).
    pub fn parse(text: &str) -> Option<ConversationKey> {
        let (channel, user) = text.split_once(':')?;
        let channel = Channel::named(channel)?;
        (!user.is_empty() && !user.contains(['{', '}']))
            .then(|| ConversationKey::new(channel, user))
    }
}

impl fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A customer message as accepted at ingress, the unit the inbox carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Channel the message came from.
    pub channel: Channel,
    /// The channel-scoped sender: web-chat session id, WhatsApp `wa_id`, Telegram chat id.
    pub user: String,
    /// The platform's message id (web chat: the client's id, unique within its session).
    pub message_id: String,
    /// What the customer wrote.
    pub text: String,
    /// Milliseconds since the Unix epoch when ingress accepted the message.
    pub received_at_ms: u64,
    /// The replica whose HTTP request accepted the message: web-chat replies are published to it.
    pub ingress_replica: String,
    /// Language hint from the platform (e.g. Telegram's `language_code`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The business account that received it (WhatsApp `phone_number_id`): replies go out from
    /// the same number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// For a message the agent cannot read (image, voice note, location, …), its kind; `text`
    /// then holds the caption or a placeholder. Such messages get the text-only notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
    /// Where the platform takes the reply when that is not `user`: a WhatsApp customer who
    /// shares no phone number is answered at their business-scoped user id, while their
    /// conversation may be keyed on the number they wrote from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The client follows the answer as it is written (the OpenAI-compatible API's
    /// `stream: true`): the turn writes live events for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streamed: bool,
    /// The conversation so far as the client sent it, used instead of the stored history: a
    /// stateless OpenAI client (no `user`, no session header) sends the whole conversation with
    /// every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<ContextTurn>>,
}

/// One earlier message of a conversation a client sent along.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextTurn {
    /// Who wrote it.
    pub role: Role,
    /// What was written.
    pub text: String,
}

impl InboundMessage {
    /// A text message accepted now by `ingress_replica`; the optional fields start empty.
    pub fn new(
        channel: Channel,
        user: &str,
        message_id: &str,
        text: String,
        ingress_replica: &str,
    ) -> InboundMessage {
        InboundMessage {
            channel,
            user: user.to_string(),
            message_id: message_id.to_string(),
            text,
            received_at_ms: now_ms(),
            ingress_replica: ingress_replica.to_string(),
            language: None,
            account: None,
            unsupported: None,
            reply_to: None,
            streamed: false,
            context: None,
        }
    }

    /// The platform address the reply goes to.
    pub fn address(&self) -> &str {
        self.reply_to.as_deref().unwrap_or(&self.user)
    }

    /// The conversation this message belongs to.
    pub fn conversation(&self) -> ConversationKey {
        ConversationKey::new(self.channel, &self.user)
    }

    /// The id that makes a message unique for dedupe and at-most-once replies.
    pub fn dedupe_id(&self) -> DedupeId {
        DedupeId::new(self.channel, &self.user, &self.message_id)
    }

    /// The key whose share of a provider's budget this message spends (`requestsPerKey`): the
    /// channel and the business account it came in on, so one busy account cannot take the
    /// whole budget from the others.
    pub fn rate_key(&self) -> String {
        format!(
            "{}:{}",
            self.channel,
            self.account.as_deref().unwrap_or("default")
        )
    }
}

/// The identity of an inbound message for dedupe (`oc:seen:{…}`) and replies (`oc:replied:{…}`).
///
/// Web-chat and API clients number their own messages, so there the session is part of the id
/// (`webchat:session:msg`); platform message ids are globally unique (`whatsapp:wamid…`).
/// It also knows its conversation: in the sharded key layout a message's keys live in its
/// conversation's shard, so that accepting and answering it each stay in one cluster slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeId {
    id: String,
    conversation: ConversationKey,
}

impl DedupeId {
    /// The dedupe id of message `message_id` from `user` on `channel`.
    pub fn new(channel: Channel, user: &str, message_id: &str) -> Self {
        let id = match channel {
            Channel::Webchat | Channel::Api => {
                format!("{}:{user}:{message_id}", channel.as_str())
            }
            Channel::Whatsapp | Channel::Telegram => {
                format!("{}:{message_id}", channel.as_str())
            }
        };
        DedupeId {
            id,
            conversation: ConversationKey::new(channel, user),
        }
    }

    /// The id as key names carry it.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The conversation the message belongs to.
    pub fn conversation(&self) -> &ConversationKey {
        &self.conversation
    }
}

/// Who wrote a history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The customer.
    User,
    /// The agent.
    Assistant,
    /// A person of the team, answering a handed-over conversation (the console, or
    /// `POST /v1/escalations/{id}/messages`).
    Agent,
}

/// One message of a conversation's history, one JSON object per element of `oc:conv:{…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Who wrote it.
    pub role: Role,
    /// What was written.
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The inbound message id this entry belongs to (the assistant entry carries its question's).
    #[serde(default)]
    pub message_id: String,
    /// The skill that handled the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill: Option<String>,
    /// The provider that produced an assistant entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The person who wrote an `agent` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The reply produced for one inbound message, kept under `oc:replied:{…}` so that a message is
/// answered at most once and a repeated request gets the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReply {
    /// The inbound message id this answers.
    pub message_id: String,
    /// The answer text.
    pub text: String,
    /// The skill that handled the turn.
    pub skill: String,
    /// The provider that produced the text.
    pub provider: String,
    /// Milliseconds since the Unix epoch when the reply was committed.
    pub ts: u64,
    /// Set when this message was answered together with an earlier one of the same customer
    /// (flood control): that message's id. Its reply went out once, for that message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
    /// The replica whose turn produced it (how an operator or the load test sees the spread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// Milliseconds since the Unix epoch, the timestamp unit of everything stored.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A WhatsApp business-scoped user id (BSUID; Meta's send API takes it as `recipient`, not
/// `to`): a two-letter country code, a period, then up to 128 letters and
/// digits (a parent BSUID has `ENT.` after the country code), e.g. `NL.1234567890`.
pub fn is_business_scoped_id(id: &str) -> bool {
    let Some((country, rest)) = id.split_once('.') else {
        return false;
    };
    let rest = rest.strip_prefix("ENT.").unwrap_or(rest);
    country.len() == 2
        && country.bytes().all(|b| b.is_ascii_uppercase())
        && !rest.is_empty()
        && rest.len() <= 128
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webchat_dedupe_ids_include_the_session_platform_ids_do_not() {
        assert_eq!(
            DedupeId::new(Channel::Webchat, "s1", "m1").as_str(),
            "webchat:s1:m1"
        );
        assert_eq!(
            DedupeId::new(Channel::Whatsapp, "316", "wamid.X").as_str(),
            "whatsapp:wamid.X"
        );
        assert_eq!(
            ConversationKey::new(Channel::Telegram, "42").as_str(),
            "telegram:42"
        );
    }
}
