//! Conversation state: the `StateStore` trait and its two implementations, Redis (the normal,
//! shared, durable store) and memory (the degraded-mode store used while Redis is unreachable).
//!
//! Every operation the turn pipeline needs is one call here and one round trip (one Lua script)
//! in Redis: accept (dedupe + number + enqueue), begin a turn (lease + order + history), commit a
//! turn (reply record + history + session + release + publish). Nothing is ever written by
//! read-modify-write from a replica, so two replicas can never overwrite each other.

pub mod connection;
pub mod keys;
pub mod link;
pub mod memory;
pub mod observe;
pub mod primary;
pub mod pubsub;
pub mod redis;

use crate::escalation::Escalation;
use crate::events::{SessionEvent, StoredEvent};
use crate::message::{
    Channel, ConversationKey, DedupeId, HistoryEntry, InboundMessage, StoredReply,
};
use crate::person_message::{PersonMessage, Reservation};
use async_trait::async_trait;
use std::time::Duration;

/// Why a state operation failed; decides between degrading, 503 and retrying.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The store cannot be reached (connection refused, dropped, timed out): degrade or retry.
    #[error("state store unreachable: {0}")]
    Unavailable(String),
    /// The store's queue is full (the inbox past `inboxMaxLength`, the in-process queue of
    /// degraded mode): answer 503 so the platform retries later; nothing was accepted.
    #[error("state store full: {0}")]
    Full(String),
    /// Redis answers but refuses writes because they would not be durable: its disk is full
    /// (`MISCONF`), its memory is (`OOM`), it is a replica (`READONLY`, a stale primary after a
    /// failover) or too few replicas are connected (`NOREPLICAS`). Answer 503 and wait; never
    /// switch to memory, which would answer without durability and lose the context.
    #[error("Redis refuses writes: {0}")]
    Refused(String),
    /// The store answered something this version cannot read (a bug or a foreign writer).
    #[error("unexpected answer from the state store: {0}")]
    Protocol(String),
}

impl StateError {
    /// True when the store is unreachable, as opposed to reachable but refusing.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StateError::Unavailable(_))
    }

    /// True when waiting may help: the store is unreachable, or refuses writes for now.
    pub fn is_transient(&self) -> bool {
        matches!(self, StateError::Unavailable(_) | StateError::Refused(_))
    }
}

/// Where an inbox entry is: its shard's stream and its id there. A turn starts only while its
/// entry is still in the inbox of the Redis it talks to (see [`TurnStart::NotQueued`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// The inbox stream (shard) holding it.
    pub stream: String,
    /// The stream entry id.
    pub id: String,
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.stream, self.id)
    }
}

/// What ingress learned when it offered a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Durably queued; `seq` is its position in its conversation (1-based).
    Accepted {
        /// Position in the conversation, given atomically with the dedupe marker.
        seq: u64,
    },
    /// Seen before (a platform retry, a client resend); nothing was queued.
    Duplicate,
}

/// A conversation's session hash (`oc:session:{…}`), the parts the pipeline reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    /// The skill of the previous turn, used to route ambiguous follow-ups.
    pub active_skill: Option<String>,
    /// The customer's language, once known.
    pub language: Option<String>,
    /// Milliseconds since the epoch of the last committed turn.
    pub last_message_at: Option<u64>,
    /// The reference of the conversation's pending hand-over to a person, if any.
    pub escalation_pending: Option<String>,
    /// The skill that handed it over (its texts are used while it is pending).
    pub escalation_skill: Option<String>,
}

impl Session {
    /// Builds a session from hash field/value pairs; unknown fields (sequence counters, later
    /// additions) are ignored.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Session {
        let mut session = Session::default();
        for (field, value) in pairs {
            match field {
                "active_skill" => session.active_skill = Some(value),
                "language" => session.language = Some(value),
                "last_message_at" => session.last_message_at = value.parse().ok(),
                "escalation_pending" => session.escalation_pending = Some(value),
                "escalation_skill" => session.escalation_skill = Some(value),
                _ => {}
            }
        }
        session
    }
}

/// History and session as loaded at the start of a turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationSnapshot {
    /// Oldest first, at most the configured history limit.
    pub history: Vec<HistoryEntry>,
    /// The session hash.
    pub session: Session,
    /// Later messages of the customer, with their sequence numbers, that this turn answers too
    /// (they arrived while the previous turn ran).
    pub later: Vec<(u64, InboundMessage)>,
}

/// One turn of a message, as the steps that begin and end it name it: the message's number, the
/// lease holder token the turn takes the conversation with, and the inbox entry it came from.
#[derive(Debug, Clone, Copy)]
pub struct HeldTurn<'a> {
    /// The message's sequence number in the conversation, to tell its inbox entry from another's.
    pub seq: u64,
    /// The turn's lease holder token.
    pub holder: &'a str,
    /// The message's inbox entry; `None` when it did not come from the inbox (degraded mode).
    pub entry: Option<&'a EntryId>,
}

/// A platform turn whose reply went out (or was given up), for [`StateStore::finish_delivery`].
#[derive(Debug, Clone, Copy)]
pub struct DeliveryDone<'a> {
    /// The message answered.
    pub msg: &'a InboundMessage,
    /// `sent`, or `dead_letter` when the platform refused the reply.
    pub outcome: &'a str,
    /// The turn that ends with it.
    pub held: HeldTurn<'a>,
}

/// What a turn asks of [`StateStore::begin_turn`].
#[derive(Debug, Clone, Copy)]
pub struct TurnBegin<'a> {
    /// The message to answer.
    pub msg: &'a InboundMessage,
    /// The turn that begins.
    pub held: HeldTurn<'a>,
    /// Start even though an earlier message is not done (it was waited for long enough).
    pub skip_order_check: bool,
    /// Take the customer's later messages into this turn (when the store keeps them).
    pub take_later: bool,
    /// Write the session's typing event when the turn starts, in the same step: the customer
    /// sees the agent at work at once, without a round trip of its own. Not written while a
    /// person has the conversation (the agent does not answer then).
    pub typing: bool,
}

/// Why a turn cannot start yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Another worker holds the conversation's lease (its turn is running).
    Lease,
    /// An earlier message of the conversation is accepted and not answered yet (it waits for
    /// its own turn, e.g. for flood control): wait as long as it takes.
    Order,
    /// An earlier message of the conversation has not been answered and is nowhere to be
    /// found: wait up to `workers.orderWaitMs`, then go ahead without it.
    Gap,
    /// The customer's turns come faster than flood control allows; room in this long.
    Flood(Duration),
}

/// The answer to "may this message's turn start now?".
#[derive(Debug, Clone, PartialEq)]
pub enum TurnStart {
    /// The lease is ours; here is the conversation.
    Ready(ConversationSnapshot),
    /// The message was already answered (an entry claimed twice); this is the answer.
    Replied(StoredReply),
    /// Not yet; try again shortly.
    Wait(WaitReason),
    /// The entry is not in the inbox of the Redis answering now, so its message is not this
    /// turn's to answer: it was written to a primary that Sentinel failed over before the write
    /// reached a replica (so it was never acknowledged, and the platform or client sends it
    /// again), it was dead-lettered meanwhile, or Redis lost its data (restarted without
    /// persistence). Answering it anyway could put it ahead of the messages the new primary
    /// numbered before it.
    NotQueued,
}

/// Everything a committed turn writes, in one atomic step.
#[derive(Debug, Clone)]
pub struct TurnCommit<'a> {
    /// The message being answered.
    pub msg: &'a InboundMessage,
    /// Its sequence number in the conversation.
    pub seq: u64,
    /// The lease holder token of this turn.
    pub holder: &'a str,
    /// The customer's history entry.
    pub user: HistoryEntry,
    /// The agent's history entry.
    pub assistant: HistoryEntry,
    /// The reply record (at-most-once).
    pub reply: StoredReply,
    /// Session fields to set.
    pub session: Vec<(&'static str, String)>,
    /// Pub/sub channel of the replica waiting for this reply, when it is not this one.
    pub notify_channel: Option<String>,
    /// Release the lease with the commit; false when the reply must still be sent on a platform
    /// first, so the next turn's reply cannot overtake this one.
    pub release_lease: bool,
    /// Later messages this turn answers too.
    pub later: Vec<LaterMessage>,
    /// The hand-over this turn starts (the session fields marking it pending are in `session`).
    pub escalation: Option<Escalation>,
    /// The session events this turn writes (the answer, a hand-over notice); empty for
    /// channels without events.
    pub events: Vec<SessionEvent>,
    /// The message's inbox entry, acknowledged (and deleted) by the commit when nothing is left
    /// to do after it (a held request is answered by the commit's publish): a round trip less
    /// per turn, and no moment where the answer is on record but its entry still pending.
    /// `None` when the reply must still be sent on a platform, or in degraded mode.
    pub acknowledges: Option<&'a EntryId>,
}

/// What resolving an escalation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// It was pending and is now resolved; the bot answers the conversation again.
    Resolved(Escalation),
    /// It had been resolved already.
    AlreadyResolved(Escalation),
    /// The conversation has no escalation (or it expired).
    Unknown,
}

/// A later message answered by an earlier message's turn: its own reply record (the same text,
/// `covered_by` the turn's message) and history entry.
#[derive(Debug, Clone)]
pub struct LaterMessage {
    /// Its sequence number in the conversation.
    pub seq: u64,
    /// Its dedupe id (the key of its reply record).
    pub id: DedupeId,
    /// The customer's history entry.
    pub user: HistoryEntry,
    /// Its reply record.
    pub reply: StoredReply,
    /// Pub/sub channel of the replica holding its web-chat request, when it is not this one.
    pub notify_channel: Option<String>,
}

/// A reply that could not be sent, kept in `oc:deadletter` for `clawgate deadletter retry`.
#[derive(Debug, Clone)]
pub struct ReplyDeadLetter<'a> {
    /// The message the reply answers (channel, recipient, account).
    pub msg: &'a InboundMessage,
    /// The whole reply text.
    pub text: &'a str,
    /// Why it could not be sent.
    pub reason: &'a str,
    /// Chunks of a split reply that did go out.
    pub chunks_sent: usize,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// This turn's reply is the one on record.
    Committed,
    /// Another worker committed first (an entry claimed twice); its reply is the one on record
    /// and this turn's result is discarded.
    AlreadyReplied(StoredReply),
}

/// Lifetimes and bounds the stores enforce.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Conversation and session lifetime, refreshed on every turn.
    pub conversation_ttl: Duration,
    /// History entries kept per conversation.
    pub history_limit: usize,
    /// How long dedupe markers and reply records live (platforms retry for days).
    pub dedupe_ttl: Duration,
    /// Lifetime of a conversation lease between renewals.
    pub lease_ttl: Duration,
    /// Inbox length above which ingress refuses.
    pub inbox_max_length: u64,
    /// Most later messages one turn answers together (0 = every message gets its own turn).
    pub coalesce_max: usize,
    /// Flood control: time between two turns of one customer at the steady rate (zero = off).
    pub flood_interval: Duration,
    /// Flood control: how far ahead of that rate a customer may run.
    pub flood_tolerance: Duration,
    /// How long a pending escalation keeps its conversation alive, and a resolved one readable.
    pub escalation_retention: Duration,
    /// Session events kept per conversation (`webchat.eventsMaxLength`).
    pub events_max_length: usize,
}

impl StoreLimits {
    /// The limits a configuration asks for.
    pub fn from_config(config: &crate::config::Config) -> StoreLimits {
        StoreLimits {
            conversation_ttl: config.conversations.ttl,
            history_limit: config.conversations.history_limit,
            dedupe_ttl: DEDUPE_TTL,
            lease_ttl: config.workers.lease_ttl,
            inbox_max_length: config.workers.inbox_max_length,
            coalesce_max: if config.conversations.flood_control.coalesce {
                COALESCE_MAX
            } else {
                0
            },
            flood_interval: config.conversations.flood_control.turn_interval(),
            flood_tolerance: config.conversations.flood_control.turn_interval() * FLOOD_BURST,
            escalation_retention: config.escalation.retention,
            events_max_length: config.webchat.events_max_length,
        }
    }
}

#[cfg(test)]
impl StoreLimits {
    /// Short lifetimes and small bounds for unit tests of the stores and their users.
    pub(crate) fn for_tests() -> StoreLimits {
        StoreLimits {
            conversation_ttl: Duration::from_secs(60),
            history_limit: 4,
            dedupe_ttl: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(5),
            inbox_max_length: 100,
            coalesce_max: 0,
            flood_interval: Duration::ZERO,
            flood_tolerance: Duration::ZERO,
            escalation_retention: Duration::from_secs(600),
            events_max_length: 100,
        }
    }
}

/// Most later messages one turn answers together; more wait for the next turn.
const COALESCE_MAX: usize = 50;
/// Turns a customer may take at once above the flood-control rate.
const FLOOD_BURST: u32 = 2;

/// WhatsApp retries an unacknowledged webhook for up to 7 days; keep markers a day longer.
pub const DEDUPE_TTL: Duration = Duration::from_secs(8 * 86_400);

/// How long a link between platform identities lives after it was last written: a customer who
/// writes again within it keeps their conversation (and its escalations) across identities.
pub const IDENTITY_TTL: Duration = Duration::from_secs(90 * 86_400);

/// The operations the turn pipeline and ingress need from conversation state.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Dedupes, numbers and enqueues `msg` in one atomic step; `Accepted` means durable (Redis)
    /// or queued in-process (memory). A web-chat message's `message` event is written in the
    /// same step.
    async fn accept(&self, msg: &InboundMessage) -> Result<Acceptance, StateError>;

    /// Tries to start a turn (see [`TurnBegin`]): not yet answered, lease free, predecessors
    /// done, within flood control, and its inbox entry (when it came from one) still in the
    /// inbox. On `Ready` the lease is held by the turn, and the typing event is written when
    /// asked for and no person has the conversation.
    async fn begin_turn(&self, begin: &TurnBegin<'_>) -> Result<TurnStart, StateError>;

    /// Records the turn atomically; at most one commit per message id wins.
    async fn commit_turn(&self, commit: &TurnCommit<'_>) -> Result<CommitOutcome, StateError>;

    /// Marks message `seq` as done without a reply (it went to the dead-letter stream), so later
    /// messages of the conversation are not held up, and releases the lease if `holder` has it.
    async fn skip_turn(
        &self,
        conversation: &ConversationKey,
        seq: u64,
        holder: &str,
    ) -> Result<(), StateError>;

    /// Extends the leases in `leases` that are still held by the given holders.
    async fn renew_leases(&self, leases: &[(ConversationKey, String)]) -> Result<(), StateError>;

    /// Releases a lease if `holder` still has it.
    async fn release_lease(
        &self,
        conversation: &ConversationKey,
        holder: &str,
    ) -> Result<(), StateError>;

    /// The reply on record for a message, if any.
    async fn reply(&self, id: &DedupeId) -> Result<Option<StoredReply>, StateError>;

    /// Whether a message id was accepted (dedupe marker present).
    async fn seen(&self, id: &DedupeId) -> Result<bool, StateError>;

    /// A conversation's history, oldest first.
    async fn history(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Vec<HistoryEntry>, StateError>;

    /// Whether the reply to a message has been handed to its platform (or dead-lettered).
    async fn delivered(&self, id: &DedupeId) -> Result<bool, StateError>;

    /// Records that the reply to a message was sent (`outcome` = `sent`) or given up
    /// (`dead_letter`).
    async fn mark_delivered(&self, id: &DedupeId, outcome: &str) -> Result<(), StateError>;

    /// Ends a platform turn once its reply went out: [`Self::mark_delivered`], the lease
    /// released if the turn still holds it, and its inbox entry acknowledged (while the entry is
    /// still this message's), in one step, so no sent reply's entry is left pending.
    async fn finish_delivery(&self, done: &DeliveryDone<'_>) -> Result<(), StateError>;

    /// The conversation users that platform `identities` of `channel` are linked to, in the same
    /// order (`None` where an identity is linked to nothing).
    async fn linked_identities(
        &self,
        channel: Channel,
        identities: &[String],
    ) -> Result<Vec<Option<String>>, StateError>;

    /// Links each `(identity, user)`: later messages that carry only that identity continue
    /// `user`'s conversation. Links live [`IDENTITY_TTL`], renewed whenever they are written.
    async fn link_identities(
        &self,
        channel: Channel,
        links: &[(String, String)],
    ) -> Result<(), StateError>;

    /// Keeps a platform message that could not be read (no sender, no id), with the reason and
    /// the message as it came, so one bad message in a batch costs nothing but itself and an
    /// operator can see it (`clawgate deadletter list`; kind `unreadable`).
    async fn dead_letter_unreadable(
        &self,
        channel: Channel,
        reason: &str,
        payload: &str,
    ) -> Result<(), StateError>;

    /// Keeps a reply that could not be sent, with the reason, for an operator to re-drive.
    async fn dead_letter_reply(&self, letter: &ReplyDeadLetter<'_>) -> Result<(), StateError>;

    /// Keeps a dispatcher-webhook event that could not be delivered (kind `escalation`), with
    /// the reason and its idempotency `key`, for `clawgate deadletter retry`.
    async fn dead_letter_escalation(
        &self,
        reference: &str,
        key: &str,
        event: &serde_json::Value,
        reason: &str,
    ) -> Result<(), StateError>;

    /// Appends events to a session's event stream (bounded, expiring with the conversation) and
    /// announces them to every replica.
    async fn append_events(
        &self,
        conversation: &ConversationKey,
        events: &[SessionEvent],
    ) -> Result<(), StateError>;

    /// A session's events after `after` (from the oldest kept when `None`), oldest first, at
    /// most `limit`.
    async fn events_after(
        &self,
        conversation: &ConversationKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StateError>;

    /// The id of a session's newest event, if it has any.
    async fn last_event_id(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Option<String>, StateError>;

    /// A conversation's accepted messages whose turn has not committed yet, in arrival order
    /// (what a dispatcher sees before the bot's holding answer). Empty in degraded mode.
    async fn waiting_messages(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Vec<InboundMessage>, StateError>;

    /// The pending escalations, oldest first.
    async fn escalations(&self) -> Result<Vec<Escalation>, StateError>;

    /// A random secret named `name` that every replica on this store shares: made by the first
    /// to ask (32 random bytes), then read by all.
    async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, StateError>;

    /// A conversation's latest escalation, pending or resolved.
    async fn escalation(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Option<Escalation>, StateError>;

    /// Assigns a conversation's pending escalation to `by`, atomically (two claims at once get
    /// one winner); someone else's claim is replaced only when `takeover`.
    async fn claim_escalation(
        &self,
        conversation: &ConversationKey,
        by: &str,
        takeover: bool,
    ) -> Result<crate::escalation::Claim, StateError>;

    /// The first step of a person's message: checks the escalation and the claim (claiming it
    /// for them when nobody holds it) and records the message as sending under its
    /// idempotency key, or returns what that key recorded before. `delivered_now` (web chat)
    /// finishes it in the same step.
    async fn reserve_person_message(
        &self,
        message: &PersonMessage,
        delivered_now: bool,
    ) -> Result<Reservation, StateError>;

    /// The second step: the platform took it (`Ok`: into the history) or refused it (the
    /// reason is kept).
    async fn finish_person_message(
        &self,
        message: &PersonMessage,
        outcome: Result<(), &str>,
    ) -> Result<Reservation, StateError>;

    /// Ends a conversation's pending escalation (`by` and `note` are recorded on it) in one
    /// atomic step: the session is no longer marked, so the bot answers again.
    async fn resolve_escalation(
        &self,
        conversation: &ConversationKey,
        by: &str,
        note: &str,
    ) -> Result<Resolution, StateError>;
}

/// Runs a state operation, retrying with [`crate::retry::state_backoff`] while Redis is
/// unreachable or refuses writes (a full disk, a failover); any other error, or the last one, is
/// returned.
pub async fn while_unavailable<T, F, Fut>(operation: F) -> Result<T, StateError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StateError>>,
{
    use backon::Retryable;
    operation
        .retry(crate::retry::state_backoff())
        .when(StateError::is_transient)
        .await
}

/// The conversation `target` names: a conversation key (`whatsapp:31612345678`) or the
/// reference of a pending escalation (`ESC-3F9A12BC`). `None` when it names neither.
pub async fn conversation_named(
    store: &dyn StateStore,
    target: &str,
) -> Result<Option<ConversationKey>, StateError> {
    if let Some(key) = ConversationKey::parse(target) {
        return Ok(Some(key));
    }
    Ok(store
        .escalations()
        .await?
        .into_iter()
        .find(|e| e.reference.eq_ignore_ascii_case(target))
        .and_then(|e| ConversationKey::parse(&e.conversation)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_redis_blip_is_waited_out_and_the_operation_goes_on() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result = while_unavailable(|| async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0..3 => Err(StateError::Unavailable("connection refused".into())),
                _ => Ok("done"),
            }
        })
        .await;
        assert_eq!(result.ok(), Some("done"));
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        // Three short waits (50 ms doubling, jittered), not the give-up time.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_redis_refuses_are_retried_for_about_fifteen_seconds_then_given_up() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), StateError> = while_unavailable(|| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(StateError::Refused("MISCONF disk full".into()))
        })
        .await;
        assert!(matches!(result, Err(StateError::Refused(_))));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            21,
            "first try and 20 retries"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(8) && waited <= Duration::from_secs(40),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_inbox_is_not_retried_the_caller_answers_503_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), StateError> = while_unavailable(|| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(StateError::Full("inbox past inboxMaxLength".into()))
        })
        .await;
        assert!(matches!(result, Err(StateError::Full(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
