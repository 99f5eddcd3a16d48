//! Redis key names (DESIGN §2). The part in braces is the Redis Cluster hash tag, so all keys of
//! one conversation share a slot. Every name is built here and nowhere else.

use crate::message::{Channel, ConversationKey, DedupeId};

/// The durable inbox stream of accepted messages.
pub const INBOX: &str = "oc:inbox";
/// The consumer group all replicas read the inbox through.
pub const GROUP: &str = "workers";
/// Messages that could not be processed, with the reason; kept until an operator re-drives them.
pub const DEADLETTER: &str = "oc:deadletter";
/// Written by a replica's health check while Redis refuses writes, to learn when it accepts
/// them again (expires by itself).
pub const HEALTH_PROBE: &str = "oc:health:probe";
/// Version of the inbox entry format, written in every entry's `v` field.
pub const ENTRY_VERSION: &str = "1";

/// `oc:conv:{channel:user}`: the history list.
pub fn conversation(c: &ConversationKey) -> String {
    format!("oc:conv:{{{c}}}")
}

/// `oc:session:{channel:user}`: the session hash (also holds the ordering counters).
pub fn session(c: &ConversationKey) -> String {
    format!("oc:session:{{{c}}}")
}

/// `oc:pending:{channel:user}`: accepted messages not yet answered, by sequence number, so a turn
/// can answer the ones that arrived while the previous turn ran together with its own.
pub fn pending(c: &ConversationKey) -> String {
    format!("oc:pending:{{{c}}}")
}

/// `oc:escalation:{channel:user}`: the conversation's latest hand-over to a person (a hash).
pub fn escalation(c: &ConversationKey) -> String {
    escalation_of(c.as_str())
}

/// [`escalation`] of a conversation named by its `channel:user` text (as the
/// [`ESCALATIONS`] index holds it).
pub fn escalation_of(conversation: &str) -> String {
    format!("oc:escalation:{{{conversation}}}")
}

/// Conversations with a pending escalation (sorted set scored by when it was handed over): what
/// `clawgate escalations list` reads.
pub const ESCALATIONS: &str = "oc:escalations";

/// `oc:identity:{channel:identity}`: the conversation user a platform identity was linked to
/// (a WhatsApp business-scoped user id to the phone number its conversation is keyed on, an
/// old number to the conversation it continues).
pub fn identity(channel: Channel, identity: &str) -> String {
    format!("oc:identity:{{{}:{identity}}}", channel.as_str())
}

/// `oc:events:{channel:user}`: a web-chat session's live events (a stream, trimmed, expiring
/// with the conversation).
pub fn events(c: &ConversationKey) -> String {
    format!("oc:events:{{{c}}}")
}

/// The pub/sub channel that announces new session events (the payload is the conversation), so
/// every replica's open event streams read on.
pub const EVENTS_CHANNEL: &str = "oc:events";

/// `oc:auditkey:{channel:user}`: the key the customer's audit texts are sealed with; deleting it
/// erases them (named by the conversation's `channel:user` text, as audit records hold it).
pub fn audit_key_of(conversation: &str) -> String {
    format!("oc:auditkey:{{{conversation}}}")
}

/// `oc:lease:{channel:user}`: who runs the conversation's current turn.
pub fn lease(c: &ConversationKey) -> String {
    format!("oc:lease:{{{c}}}")
}

/// `oc:seen:{channel:msg_id}`: dedupe marker.
pub fn seen(id: &DedupeId) -> String {
    format!("oc:seen:{{{}}}", id.as_str())
}

/// `oc:replied:{channel:msg_id}`: the reply produced for a message.
pub fn replied(id: &DedupeId) -> String {
    format!("oc:replied:{{{}}}", id.as_str())
}

/// `oc:delivered:{channel:msg_id}`: the reply went out on its platform (or was dead-lettered), so
/// a replica that claims the entry again does not send it twice.
pub fn delivered(id: &DedupeId) -> String {
    format!("oc:delivered:{{{}}}", id.as_str())
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

/// Pub/sub channel on which a replica hears about replies to requests it holds open.
pub fn reply_channel(replica_id: &str) -> String {
    format!("oc:replies:{replica_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_design_schema() {
        let c = ConversationKey::new(Channel::Whatsapp, "31612345678");
        assert_eq!(conversation(&c), "oc:conv:{whatsapp:31612345678}");
        assert_eq!(session(&c), "oc:session:{whatsapp:31612345678}");
        let id = DedupeId::new(Channel::Webchat, "s", "m1");
        assert_eq!(seen(&id), "oc:seen:{webchat:s:m1}");
        assert_eq!(replied(&id), "oc:replied:{webchat:s:m1}");
        assert_eq!(
            identity(Channel::Whatsapp, "NL.1234567890"),
            "oc:identity:{whatsapp:NL.1234567890}"
        );
    }
}
