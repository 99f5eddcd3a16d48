//! Redis key names (DESIGN §2). The part in braces is the Redis Cluster hash tag: every key an
//! atomic step touches shares one, so each step stays in one slot. Every name is built here and
//! nowhere else.
//!
//! Conversation and message keys follow a versioned [`KeyLayout`]: version 1 (one Redis, the
//! layout clawgate always had) tags a conversation's keys with the conversation and a message's
//! with the message; version 2 (a Redis Cluster, or `redis.shards`) puts each conversation in one
//! of `S` shards and tags its keys, its messages' keys and the shard's inbox stream with the
//! shard, so accepting a message (dedupe marker, sequence, inbox entry) is one slot.

use crate::message::{Channel, ConversationKey, DedupeId};
use std::sync::Arc;

/// The consumer group all replicas read the inbox through.
pub const GROUP: &str = "workers";
/// Messages that could not be processed, with the reason; kept until an operator re-drives them.
pub const DEADLETTER: &str = "oc:deadletter";
/// Written by a replica's health check while Redis refuses writes, to learn when it accepts
/// them again (expires by itself).
pub const HEALTH_PROBE: &str = "oc:health:probe";
/// Version of the inbox entry format, written in every entry's `v` field.
pub const ENTRY_VERSION: &str = "1";
/// The key layout the data in Redis was written with (`1`, or `2/<shards>`): a replica
/// configured for another layout refuses to write rather than split the state in two.
pub const LAYOUT: &str = "oc:layout";
/// Redis Cluster's slot count: shard tags are chosen to spread evenly over it.
const SLOTS: u32 = 16384;

/// How conversation and message keys are named (see the module documentation).
#[derive(Debug, Clone)]
pub enum KeyLayout {
    /// Version 1: a conversation's keys share its `{channel:user}` tag, a message's keys its
    /// `{channel:message}` tag, and the inbox is one stream.
    Unsharded,
    /// Version 2: the hash tag of each shard; a conversation's shard is a hash of its name.
    Sharded(Arc<[String]>),
}

impl KeyLayout {
    /// The layout for `shards` inbox shards (`None`: unsharded).
    pub fn new(shards: Option<u16>) -> KeyLayout {
        match shards {
            None => KeyLayout::Unsharded,
            Some(count) => KeyLayout::Sharded(shard_tags(count.max(1)).into()),
        }
    }

    /// The layout [`LAYOUT`] names (`1`, or `2/<shards>`); unsharded for anything else.
    pub fn from_version(version: &str) -> KeyLayout {
        match version
            .strip_prefix("2/")
            .and_then(|n| n.parse::<u16>().ok())
        {
            Some(shards) => KeyLayout::new(Some(shards)),
            None => KeyLayout::Unsharded,
        }
    }

    /// What [`LAYOUT`] holds for this layout.
    pub fn version(&self) -> String {
        match self {
            KeyLayout::Unsharded => "1".into(),
            KeyLayout::Sharded(tags) => format!("2/{}", tags.len()),
        }
    }

    /// Whether conversations are spread over shards.
    pub fn is_sharded(&self) -> bool {
        matches!(self, KeyLayout::Sharded(_))
    }

    /// Number of inbox streams.
    pub fn shards(&self) -> usize {
        match self {
            KeyLayout::Unsharded => 1,
            KeyLayout::Sharded(tags) => tags.len(),
        }
    }

    /// The shard of the conversation named `conversation` (`channel:user`). Part of layout 2:
    /// changing it moves conversations, so it never changes.
    pub fn shard_of(&self, conversation: &str) -> usize {
        match self {
            KeyLayout::Unsharded => 0,
            KeyLayout::Sharded(tags) => {
                usize::from(crc16::State::<crc16::XMODEM>::calculate(
                    conversation.as_bytes(),
                )) % tags.len()
            }
        }
    }

    /// The part of a conversation key after its prefix: `{channel:user}`, or
    /// `{shard}:channel:user`.
    fn conversation_part(&self, conversation: &str) -> String {
        match self {
            KeyLayout::Unsharded => format!("{{{conversation}}}"),
            KeyLayout::Sharded(tags) => {
                format!("{{{}}}:{conversation}", tags[self.shard_of(conversation)])
            }
        }
    }

    /// The part of a message key after its prefix: `{channel:message}`, or
    /// `{shard}:channel:message` in its conversation's shard.
    fn message_part(&self, id: &DedupeId) -> String {
        match self {
            KeyLayout::Unsharded => format!("{{{}}}", id.as_str()),
            KeyLayout::Sharded(tags) => format!(
                "{{{}}}:{}",
                tags[self.shard_of(id.conversation().as_str())],
                id.as_str()
            ),
        }
    }

    /// The suffix of a per-shard name: empty when unsharded, `:{shard}` when sharded.
    fn shard_part(&self, shard: usize) -> String {
        match self {
            KeyLayout::Unsharded => String::new(),
            KeyLayout::Sharded(tags) => format!(":{{{}}}", tags[shard]),
        }
    }

    /// The conversation (`channel:user`) a conversation key of this layout names.
    pub fn conversation_of(&self, key: &str) -> Option<String> {
        let (_, tagged) = key.split_once('{')?;
        match self {
            KeyLayout::Unsharded => tagged.strip_suffix('}').map(str::to_string),
            KeyLayout::Sharded(_) => tagged.split_once("}:").map(|(_, c)| c.to_string()),
        }
    }

    /// The history list.
    pub fn conversation(&self, c: &ConversationKey) -> String {
        format!("oc:conv:{}", self.conversation_part(c.as_str()))
    }

    /// The session hash (also holds the ordering counters).
    pub fn session(&self, c: &ConversationKey) -> String {
        format!("oc:session:{}", self.conversation_part(c.as_str()))
    }

    /// Accepted messages not yet answered, by sequence number, so a turn can answer the ones
    /// that arrived while the previous turn ran together with its own.
    pub fn pending(&self, c: &ConversationKey) -> String {
        format!("oc:pending:{}", self.conversation_part(c.as_str()))
    }

    /// The conversation's latest hand-over to a person (a hash).
    pub fn escalation(&self, c: &ConversationKey) -> String {
        self.escalation_of(c.as_str())
    }

    /// [`Self::escalation`] of a conversation named by its `channel:user` text (as the
    /// escalation index holds it).
    pub fn escalation_of(&self, conversation: &str) -> String {
        format!("oc:escalation:{}", self.conversation_part(conversation))
    }

    /// A web-chat session's live events (a stream, trimmed, expiring with the conversation).
    pub fn events(&self, c: &ConversationKey) -> String {
        format!("oc:events:{}", self.conversation_part(c.as_str()))
    }

    /// A person's message to the customer, by the idempotency key its sender gave (so a
    /// retried request sends it once).
    pub fn person_message(&self, c: &ConversationKey, idempotency_key: &str) -> String {
        format!(
            "oc:person:{}:{idempotency_key}",
            self.conversation_part(c.as_str())
        )
    }

    /// Who runs the conversation's current turn.
    pub fn lease(&self, c: &ConversationKey) -> String {
        format!("oc:lease:{}", self.conversation_part(c.as_str()))
    }

    /// The dedupe marker of a message.
    pub fn seen(&self, id: &DedupeId) -> String {
        format!("oc:seen:{}", self.message_part(id))
    }

    /// The reply produced for a message.
    pub fn replied(&self, id: &DedupeId) -> String {
        format!("oc:replied:{}", self.message_part(id))
    }

    /// The reply went out on its platform (or was dead-lettered), so a replica that claims the
    /// entry again does not send it twice.
    pub fn delivered(&self, id: &DedupeId) -> String {
        format!("oc:delivered:{}", self.message_part(id))
    }

    /// A glob matching the reply keys of every message of a web-chat or API `conversation`
    /// (their ids start with it), with `escape` applied to the literal part.
    pub fn replies_glob(
        &self,
        conversation: &ConversationKey,
        escape: fn(&str) -> String,
    ) -> String {
        let id = format!("{}:", conversation.as_str());
        match self {
            KeyLayout::Unsharded => format!("oc:replied:{}*", escape(&format!("{{{id}"))),
            KeyLayout::Sharded(tags) => format!(
                "oc:replied:{}*",
                escape(&format!(
                    "{{{}}}:{id}",
                    tags[self.shard_of(conversation.as_str())]
                ))
            ),
        }
    }

    /// Shard `shard`'s inbox stream of accepted messages.
    pub fn inbox(&self, shard: usize) -> String {
        format!("oc:inbox{}", self.shard_part(shard))
    }

    /// The inbox stream a conversation's messages go to.
    pub fn inbox_of(&self, c: &ConversationKey) -> String {
        self.inbox(self.shard_of(c.as_str()))
    }

    /// Every inbox stream, by shard.
    pub fn inboxes(&self) -> Vec<String> {
        (0..self.shards()).map(|shard| self.inbox(shard)).collect()
    }

    /// Shard `shard`'s conversations with a pending escalation (a sorted set scored by when it
    /// was handed over): what `clawgate escalations list` reads, over all shards.
    pub fn escalations(&self, shard: usize) -> String {
        format!("oc:escalations{}", self.shard_part(shard))
    }

    /// The escalation index a conversation is listed in.
    pub fn escalations_of(&self, conversation: &str) -> String {
        self.escalations(self.shard_of(conversation))
    }

    /// The pub/sub channel announcing new session events of shard `shard`'s conversations
    /// (the payload is the conversation), so every replica's open event streams read on. In a
    /// cluster it is a shard channel (`SPUBLISH`) of the shard's slot.
    pub fn events_channel(&self, shard: usize) -> String {
        format!("oc:events{}", self.shard_part(shard))
    }

    /// [`Self::events_channel`] of a conversation.
    pub fn events_channel_of(&self, c: &ConversationKey) -> String {
        self.events_channel(self.shard_of(c.as_str()))
    }

    /// Every events channel, by shard.
    pub fn events_channels(&self) -> Vec<String> {
        (0..self.shards())
            .map(|shard| self.events_channel(shard))
            .collect()
    }

    /// The channel on which replica `replica_id` hears about replies to requests of
    /// conversation `c` it holds open.
    pub fn reply_channel(&self, replica_id: &str, c: &ConversationKey) -> String {
        self.reply_channel_in(replica_id, self.shard_of(c.as_str()))
    }

    fn reply_channel_in(&self, replica_id: &str, shard: usize) -> String {
        match self {
            KeyLayout::Unsharded => format!("oc:replies:{replica_id}"),
            KeyLayout::Sharded(tags) => format!("oc:replies:{{{}}}:{replica_id}", tags[shard]),
        }
    }

    /// Every channel replica `replica_id` follows for replies, by shard.
    pub fn reply_channels(&self, replica_id: &str) -> Vec<String> {
        (0..self.shards())
            .map(|shard| self.reply_channel_in(replica_id, shard))
            .collect()
    }
}

/// The hash tag of each of `count` shards: shard `i`'s tag is the first `s<i>.<n>` whose slot
/// falls in the `i`-th of `count` equal ranges of the 16384 slots, so shards spread evenly over
/// masters that own contiguous slot ranges (as `redis-cli --cluster create` assigns them).
fn shard_tags(count: u16) -> Vec<String> {
    let count = u32::from(count);
    (0..count)
        .map(|shard| {
            let (low, high) = (shard * SLOTS / count, (shard + 1) * SLOTS / count);
            (0u32..)
                .map(|n| format!("s{shard}.{n}"))
                .find(|tag| {
                    let slot =
                        u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS;
                    (low..high.max(low + 1)).contains(&slot)
                })
                .unwrap_or_else(|| format!("s{shard}"))
        })
        .collect()
}

/// The Redis Cluster slot of `key` (of its hash tag, when it has one): where a cluster keeps it.
pub fn slot(key: &str) -> u16 {
    let tag = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    (u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS) as u16
}

/// `oc:identity:{channel:identity}`: the conversation user a platform identity was linked to
/// (a WhatsApp business-scoped user id to the phone number its conversation is keyed on, an
/// old number to the conversation it continues).
pub fn identity(channel: Channel, identity: &str) -> String {
    format!("oc:identity:{{{}:{identity}}}", channel.as_str())
}

/// `oc:auditkey:{channel:user}`: the key the customer's audit texts are sealed with; deleting it
/// erases them (named by the conversation's `channel:user` text, as audit records hold it).
pub fn audit_key_of(conversation: &str) -> String {
    format!("oc:auditkey:{{{conversation}}}")
}

/// `oc:secret:{name}`: a random key every replica shares (web-chat session tokens are signed
/// with it when `webchat.tokenSecret` is not set). Never expires.
pub fn secret(name: &str) -> String {
    format!("oc:secret:{{{name}}}")
}

/// `oc:metrics:gateway:{replica_id}`: one replica's counters (`handled`, `running`,
/// `updated_at`), refreshed every few seconds.
pub fn replica_metrics(replica_id: &str) -> String {
    format!("oc:metrics:gateway:{{{replica_id}}}")
}

/// Replicas seen alive, scored by their last heartbeat (ms): the divisor of a rate budget when a
/// replica must fall back to its local share.
pub const REPLICAS: &str = "oc:replicas";

/// `oc:breaker:{provider}`: the provider's circuit breaker, shared by all replicas.
pub fn breaker(provider: &str) -> String {
    format!("oc:breaker:{{{provider}}}")
}

/// `oc:breaker-news:{provider}`: where a change of the provider's shared breaker is announced
/// (`<state> <provider>`), in the breaker's own slot, so that replicas admit calls on what they
/// heard instead of asking Redis on every turn.
pub fn breaker_news(provider: &str) -> String {
    format!("oc:breaker-news:{{{provider}}}")
}

/// `oc:breaker:{provider}:probe`: held by the one replica probing an open provider.
pub fn breaker_probe(provider: &str) -> String {
    format!("oc:breaker:{{{provider}}}:probe")
}

/// `oc:rl:{provider}`: the GCRA state of the provider's cluster-wide budget.
pub fn rate_budget(provider: &str) -> String {
    format!("oc:rl:{{{provider}}}")
}

/// `oc:rl:{provider}:key:<key>`: the GCRA state of one key's share of that budget.
pub fn rate_key_budget(provider: &str, key: &str) -> String {
    format!("oc:rl:{{{provider}}}:key:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_design_schema() {
        let keys = KeyLayout::Unsharded;
        let c = ConversationKey::new(Channel::Whatsapp, "31612345678");
        assert_eq!(keys.conversation(&c), "oc:conv:{whatsapp:31612345678}");
        assert_eq!(keys.session(&c), "oc:session:{whatsapp:31612345678}");
        assert_eq!(keys.inbox_of(&c), "oc:inbox");
        let id = DedupeId::new(Channel::Webchat, "s", "m1");
        assert_eq!(keys.seen(&id), "oc:seen:{webchat:s:m1}");
        assert_eq!(keys.replied(&id), "oc:replied:{webchat:s:m1}");
        assert_eq!(keys.version(), "1");
        assert_eq!(
            keys.conversation_of(&keys.session(&c)).as_deref(),
            Some("whatsapp:31612345678")
        );
        let sharded = KeyLayout::new(Some(16));
        assert_eq!(
            sharded.conversation_of(&sharded.pending(&c)).as_deref(),
            Some("whatsapp:31612345678")
        );
        assert_eq!(
            identity(Channel::Whatsapp, "NL.1234567890"),
            "oc:identity:{whatsapp:NL.1234567890}"
        );
    }

    #[test]
    fn slots_follow_redis_cluster() {
        // Values from the Redis Cluster specification.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // An empty tag does not count: the whole key is hashed.
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
    }

    #[test]
    fn a_conversation_its_messages_and_its_inbox_share_one_slot_when_sharded() {
        let keys = KeyLayout::new(Some(16));
        assert_eq!(keys.version(), "2/16");
        for user in ["31612345678", "31687654321", "4915112345678", "15551234567"] {
            let c = ConversationKey::new(Channel::Whatsapp, user);
            let id = DedupeId::new(Channel::Whatsapp, user, "wamid.X");
            let shard_slot = slot(&keys.inbox_of(&c));
            for key in [
                keys.conversation(&c),
                keys.session(&c),
                keys.pending(&c),
                keys.lease(&c),
                keys.events(&c),
                keys.escalation(&c),
                keys.escalations_of(c.as_str()),
                keys.seen(&id),
                keys.replied(&id),
                keys.delivered(&id),
                keys.events_channel_of(&c),
                keys.reply_channel("r1", &c),
            ] {
                assert_eq!(
                    slot(&key),
                    shard_slot,
                    "{key} is not in the slot of its shard"
                );
            }
        }
    }

    #[test]
    fn shards_spread_evenly_over_the_slots() {
        for count in [1u16, 3, 16, 64] {
            let keys = KeyLayout::new(Some(count));
            let KeyLayout::Sharded(tags) = &keys else {
                unreachable!()
            };
            for (shard, tag) in tags.iter().enumerate() {
                let tag_slot = u32::from(slot(&format!("{{{tag}}}")));
                let (low, high) = (
                    shard as u32 * SLOTS / u32::from(count),
                    (shard as u32 + 1) * SLOTS / u32::from(count),
                );
                assert!(
                    (low..high).contains(&tag_slot),
                    "shard {shard} of {count} is in slot {tag_slot}"
                );
            }
        }
        // Conversations spread evenly over the shards.
        let keys = KeyLayout::new(Some(16));
        let mut per_shard = [0u32; 16];
        for n in 0..16_000 {
            per_shard[keys.shard_of(&format!("whatsapp:3161{n:07}"))] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (800..1200).contains(&n)),
            "{per_shard:?}"
        );
    }
}
