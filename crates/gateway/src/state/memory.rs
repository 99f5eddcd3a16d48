//! The in-process implementation of [`StateStore`], used while Redis is unreachable (degraded
//! mode) and in unit tests. Same semantics as Redis (dedupe, numbering, leases, ordering,
//! at-most-once replies), none of the durability: what it holds is lost when the process exits,
//! which the seed accepts for conversations touched only during an outage.
//!
//! Accepting a message puts it on a bounded in-process queue that this replica's workers drain.

use super::{
    Acceptance, CommitOutcome, ConversationSnapshot, DeliveryDone, ReplyDeadLetter, Resolution,
    Session, StateError, StateStore, StoreLimits, TurnBegin, TurnCommit, TurnStart, WaitReason,
};
use crate::escalation::{self, Claim, Escalation};
use crate::events::{SessionEvent, StoredEvent};
use crate::message::{
    Channel, ConversationKey, DedupeId, HistoryEntry, InboundMessage, StoredReply,
};
use crate::person_message::{PersonMessage, Reservation, SendStatus};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
// Tokio's clock: the same as std's at run time, and one a paused test can move.
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Degraded mode keeps dedupe markers and replies for an hour, not days: they live in this
/// process's memory and die with it anyway.
const MEMORY_DEDUPE_TTL: Duration = Duration::from_secs(3_600);

/// A message accepted into the in-process queue, with its place in its conversation.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The message.
    pub msg: InboundMessage,
    /// Its sequence number in the conversation.
    pub seq: u64,
}

struct Conversation {
    history: VecDeque<HistoryEntry>,
    session: Session,
    seq_issued: u64,
    seq_done: u64,
    expires: Instant,
    /// The session's live events, oldest first, with the id of the newest ever written.
    events: VecDeque<StoredEvent>,
    last_event: (u64, u64),
}

impl Conversation {
    /// Appends events with ids ordered like Redis stream ids (`<ms>-<n>`), keeping `max`.
    fn append_events(&mut self, events: &[SessionEvent], max: usize) {
        for event in events {
            let ms = crate::message::now_ms();
            self.last_event = if ms > self.last_event.0 {
                (ms, 0)
            } else {
                (self.last_event.0, self.last_event.1 + 1)
            };
            let (ms, n) = self.last_event;
            self.events.push_back(StoredEvent {
                id: format!("{ms}-{n}"),
                json: serde_json::to_string(event).unwrap_or_default(),
            });
            while self.events.len() > max {
                self.events.pop_front();
            }
        }
    }
}

impl Conversation {
    fn new(expires: Instant) -> Conversation {
        Conversation {
            history: VecDeque::new(),
            session: Session::default(),
            seq_issued: 0,
            seq_done: 0,
            expires,
            events: VecDeque::new(),
            last_event: (0, 0),
        }
    }
}

/// Identity links kept in degraded mode; past this, new links are not remembered (the
/// customer's next message from another identity starts a conversation of its own).
const MEMORY_IDENTITIES: usize = 100_000;

/// Undeliverable replies kept in degraded mode (there is no Redis to hold them); bounded, and
/// each is also logged with its reason.
const MEMORY_DEAD_LETTERS: usize = 1_000;

#[derive(Default)]
struct Inner {
    delivered: HashMap<String, Instant>,
    dead_letters: VecDeque<String>,
    seen: HashMap<String, Instant>,
    replies: HashMap<String, (StoredReply, Instant)>,
    conversations: HashMap<ConversationKey, Conversation>,
    leases: HashMap<ConversationKey, (String, Instant)>,
    /// Each conversation's latest escalation made while Redis was down, until it expires.
    escalations: HashMap<ConversationKey, (Escalation, Instant)>,
    /// Links between platform identities (`channel:identity` → user), until they expire.
    identities: HashMap<String, (String, Instant)>,
    secrets: HashMap<String, Vec<u8>>,
    /// People's messages by conversation and idempotency key: id and status, until they
    /// expire.
    person_messages: HashMap<(ConversationKey, String), (String, SendStatus, Instant)>,
}

impl Inner {
    /// The live conversation (a fresh one when absent or expired).
    fn conversation(&mut self, key: &ConversationKey, now: Instant) -> &mut Conversation {
        let conversation = self
            .conversations
            .entry(key.clone())
            .or_insert_with(|| Conversation::new(now));
        if conversation.expires <= now {
            *conversation = Conversation::new(now);
        }
        conversation
    }

    /// The conversation if it exists and has not expired (read-only: nothing is created).
    fn live_conversation(&self, key: &ConversationKey, now: Instant) -> Option<&Conversation> {
        self.conversations.get(key).filter(|c| c.expires > now)
    }

    /// The conversation's escalation if it has not expired.
    fn live_escalation(
        &mut self,
        conversation: &ConversationKey,
        now: Instant,
    ) -> Option<&mut Escalation> {
        self.escalations
            .get_mut(conversation)
            .filter(|(_, expires)| *expires > now)
            .map(|(record, _)| record)
    }

    fn live_reply(&self, id: &str, now: Instant) -> Option<StoredReply> {
        self.replies
            .get(id)
            .filter(|(_, expires)| *expires > now)
            .map(|(reply, _)| reply.clone())
    }

    fn release(&mut self, key: &ConversationKey, holder: &str) {
        if self.leases.get(key).is_some_and(|(h, _)| h == holder) {
            self.leases.remove(key);
        }
    }
}

/// In-process conversation state.
pub struct MemoryStore {
    /// All state behind one lock; critical sections are short and never await.
    inner: Mutex<Inner>,
    /// Where accepted messages go; bounded, so a long outage cannot exhaust memory.
    queue: mpsc::Sender<QueuedMessage>,
    /// TTLs and bounds.
    limits: StoreLimits,
}

impl MemoryStore {
    /// A store whose accepted messages arrive on the returned receiver (capacity `queue`).
    pub fn new(limits: StoreLimits, queue: usize) -> (MemoryStore, mpsc::Receiver<QueuedMessage>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let store = MemoryStore {
            inner: Mutex::new(Inner::default()),
            queue: tx,
            limits,
        };
        (store, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another task panicked mid-update; the maps stay usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops expired entries; called periodically so a long outage does not grow memory without
    /// bound.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.seen.retain(|_, expires| *expires > now);
        inner.delivered.retain(|_, expires| *expires > now);
        inner.replies.retain(|_, (_, expires)| *expires > now);
        inner.conversations.retain(|_, c| c.expires > now);
        inner.leases.retain(|_, (_, expires)| *expires > now);
        inner.escalations.retain(|_, (_, expires)| *expires > now);
        inner
            .person_messages
            .retain(|_, (_, _, expires)| *expires > now);
    }

    /// The second step of a person's message, under the lock.
    fn finish_in(
        &self,
        inner: &mut Inner,
        message: &PersonMessage,
        outcome: Result<(), &str>,
        now: Instant,
    ) -> Reservation {
        let key = (
            message.conversation.clone(),
            message.idempotency_key.clone(),
        );
        let Some((message_id, status, _)) = inner.person_messages.get_mut(&key) else {
            return Reservation::Unknown;
        };
        if *status != SendStatus::Sending {
            return Reservation::Existing {
                message_id: message_id.clone(),
                status: status.clone(),
            };
        }
        if let Err(reason) = outcome {
            *status = SendStatus::Failed(reason.to_string());
            return Reservation::New {
                status: status.clone(),
                first_reply: false,
            };
        }
        *status = SendStatus::Sent;
        let mut first_reply = false;
        if let Some((record, _)) = inner.escalations.get_mut(&message.conversation) {
            first_reply = record.first_reply_at.is_none();
            record.first_reply_at.get_or_insert(message.ts);
            record.agent_replies += 1;
        }
        let limit = self.limits.history_limit;
        let retention = self.limits.escalation_retention;
        let conversation = inner.conversation(&message.conversation, now);
        // It lives as long as a pending escalation keeps it.
        conversation.expires = conversation.expires.max(now + retention);
        conversation.history.push_back(message.history_entry());
        while conversation.history.len() > limit {
            conversation.history.pop_front();
        }
        if message.conversation.channel() == crate::message::Channel::Webchat {
            conversation.append_events(&[message.event()], self.limits.events_max_length);
        }
        Reservation::New {
            status: SendStatus::Sent,
            first_reply,
        }
    }

    fn dedupe_ttl(&self) -> Duration {
        self.limits.dedupe_ttl.min(MEMORY_DEDUPE_TTL)
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn accept(&self, msg: &InboundMessage) -> Result<Acceptance, StateError> {
        let now = Instant::now();
        let id = msg.dedupe_id();
        let mut inner = self.lock();
        if inner.seen.get(id.as_str()).is_some_and(|e| *e > now) {
            return Ok(Acceptance::Duplicate);
        }
        let permit = self.queue.try_reserve().map_err(|_| {
            StateError::Full("the in-process queue of degraded mode is full".into())
        })?;
        inner
            .seen
            .insert(id.as_str().to_string(), now + self.dedupe_ttl());
        let conversation = inner.conversation(&msg.conversation(), now);
        conversation.seq_issued += 1;
        conversation.expires = now + self.limits.conversation_ttl;
        let seq = conversation.seq_issued;
        if let Some(event) = SessionEvent::accepted(msg) {
            conversation.append_events(&[event], self.limits.events_max_length);
        }
        permit.send(QueuedMessage {
            msg: msg.clone(),
            seq,
        });
        Ok(Acceptance::Accepted { seq })
    }

    async fn begin_turn(&self, turn: &TurnBegin<'_>) -> Result<TurnStart, StateError> {
        let (msg, seq, holder) = (turn.msg, turn.held.seq, turn.held.holder);
        let now = Instant::now();
        let key = msg.conversation();
        let mut inner = self.lock();
        // The lease comes first: its holder may be sending this very reply right now.
        if inner
            .leases
            .get(&key)
            .is_some_and(|(h, expires)| h != holder && *expires > now)
        {
            return Ok(TurnStart::Wait(WaitReason::Lease));
        }
        if let Some(reply) = inner.live_reply(msg.dedupe_id().as_str(), now) {
            return Ok(TurnStart::Replied(reply));
        }
        let conversation = inner.conversation(&key, now);
        if !turn.skip_order_check
            && conversation.seq_done + 1 < seq
            && conversation.seq_issued >= seq
        {
            // A degraded-mode turn that failed is not retried: its successors cannot tell a
            // waiting predecessor from a lost one.
            return Ok(TurnStart::Wait(WaitReason::Gap));
        }
        let snapshot = ConversationSnapshot {
            history: conversation.history.iter().cloned().collect(),
            session: conversation.session.clone(),
            later: Vec::new(),
        };
        if turn.typing && conversation.session.escalation_pending.is_none() {
            let typing = SessionEvent::Typing {
                message_id: msg.message_id.clone(),
            };
            conversation.append_events(&[typing], self.limits.events_max_length);
        }
        inner
            .leases
            .insert(key, (holder.to_string(), now + self.limits.lease_ttl));
        Ok(TurnStart::Ready(snapshot))
    }

    async fn commit_turn(&self, commit: &TurnCommit<'_>) -> Result<CommitOutcome, StateError> {
        let now = Instant::now();
        let key = commit.msg.conversation();
        let id = commit.msg.dedupe_id();
        let dedupe_ttl = self.dedupe_ttl();
        let mut inner = self.lock();
        if let Some(existing) = inner.live_reply(id.as_str(), now) {
            inner.release(&key, commit.holder);
            return Ok(CommitOutcome::AlreadyReplied(existing));
        }
        inner.replies.insert(
            id.as_str().to_string(),
            (commit.reply.clone(), now + dedupe_ttl),
        );
        let limit = self.limits.history_limit;
        let retention = self.limits.escalation_retention;
        if let Some(escalation) = &commit.escalation {
            inner
                .escalations
                .insert(key.clone(), (escalation.clone(), now + retention));
        }
        let conversation = inner.conversation(&key, now);
        conversation.history.push_back(commit.user.clone());
        conversation.history.push_back(commit.assistant.clone());
        while conversation.history.len() > limit {
            conversation.history.pop_front();
        }
        conversation.seq_done = conversation.seq_done.max(commit.seq);
        conversation.expires = now + self.limits.conversation_ttl;
        let pairs = commit.session.iter().map(|(f, v)| (*f, v.clone()));
        let updates = Session::from_pairs(pairs);
        let session = &mut conversation.session;
        session.active_skill = updates.active_skill.or(session.active_skill.take());
        session.language = updates.language.or(session.language.take());
        session.last_message_at = updates.last_message_at.or(session.last_message_at);
        if updates.escalation_pending.is_some() {
            session.escalation_pending = updates.escalation_pending;
            session.escalation_skill = updates.escalation_skill;
        }
        // While a person has the conversation, it must not expire under them.
        if session.escalation_pending.is_some() {
            conversation.expires = now + retention.max(self.limits.conversation_ttl);
        }
        conversation.append_events(&commit.events, self.limits.events_max_length);
        if commit.release_lease {
            inner.release(&key, commit.holder);
        }
        Ok(CommitOutcome::Committed)
    }

    async fn skip_turn(
        &self,
        conversation: &ConversationKey,
        seq: u64,
        holder: &str,
    ) -> Result<(), StateError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let c = inner.conversation(conversation, now);
        c.seq_done = c.seq_done.max(seq);
        inner.release(conversation, holder);
        Ok(())
    }

    async fn renew_leases(&self, leases: &[(ConversationKey, String)]) -> Result<(), StateError> {
        let expires = Instant::now() + self.limits.lease_ttl;
        let mut inner = self.lock();
        for (key, holder) in leases {
            if let Some((h, e)) = inner.leases.get_mut(key)
                && h == holder
            {
                *e = expires;
            }
        }
        Ok(())
    }

    async fn release_lease(
        &self,
        conversation: &ConversationKey,
        holder: &str,
    ) -> Result<(), StateError> {
        self.lock().release(conversation, holder);
        Ok(())
    }

    async fn reply(&self, id: &DedupeId) -> Result<Option<StoredReply>, StateError> {
        Ok(self.lock().live_reply(id.as_str(), Instant::now()))
    }

    async fn seen(&self, id: &DedupeId) -> Result<bool, StateError> {
        let now = Instant::now();
        Ok(self.lock().seen.get(id.as_str()).is_some_and(|e| *e > now))
    }

    async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, StateError> {
        // This process's own: nothing is shared without Redis.
        Ok(self
            .lock()
            .secrets
            .entry(name.to_string())
            .or_insert_with(|| rand::random::<[u8; 32]>().to_vec())
            .clone())
    }

    async fn history(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Vec<HistoryEntry>, StateError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .live_conversation(conversation, now)
            .map(|c| c.history.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn delivered(&self, id: &DedupeId) -> Result<bool, StateError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .delivered
            .get(id.as_str())
            .is_some_and(|e| *e > now))
    }

    async fn mark_delivered(&self, id: &DedupeId, _outcome: &str) -> Result<(), StateError> {
        let expires = Instant::now() + self.dedupe_ttl();
        self.lock()
            .delivered
            .insert(id.as_str().to_string(), expires);
        Ok(())
    }

    async fn finish_delivery(&self, done: &DeliveryDone<'_>) -> Result<(), StateError> {
        self.mark_delivered(&done.msg.dedupe_id(), done.outcome)
            .await?;
        self.lock()
            .release(&done.msg.conversation(), done.held.holder);
        Ok(())
    }

    async fn dead_letter_reply(&self, letter: &ReplyDeadLetter<'_>) -> Result<(), StateError> {
        tracing::error!(
            channel = %letter.msg.channel,
            to = %letter.msg.user,
            reason = letter.reason,
            "reply could not be sent while Redis is down; kept in this process only"
        );
        let mut inner = self.lock();
        if inner.dead_letters.len() == MEMORY_DEAD_LETTERS {
            inner.dead_letters.pop_front();
        }
        inner.dead_letters.push_back(format!(
            "{} {}: {}",
            letter.msg.channel, letter.msg.user, letter.reason
        ));
        Ok(())
    }

    async fn linked_identities(
        &self,
        channel: Channel,
        identities: &[String],
    ) -> Result<Vec<Option<String>>, StateError> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(identities
            .iter()
            .map(|identity| {
                inner
                    .identities
                    .get(&format!("{channel}:{identity}"))
                    .filter(|(_, expires)| *expires > now)
                    .map(|(user, _)| user.clone())
            })
            .collect())
    }

    async fn link_identities(
        &self,
        channel: Channel,
        links: &[(String, String)],
    ) -> Result<(), StateError> {
        let now = Instant::now();
        let expires = now + self.dedupe_ttl();
        let mut inner = self.lock();
        if inner.identities.len() >= MEMORY_IDENTITIES {
            inner.identities.retain(|_, (_, until)| *until > now);
        }
        for (identity, user) in links {
            if inner.identities.len() < MEMORY_IDENTITIES {
                inner
                    .identities
                    .insert(format!("{channel}:{identity}"), (user.clone(), expires));
            }
        }
        Ok(())
    }

    async fn dead_letter_unreadable(
        &self,
        channel: Channel,
        reason: &str,
        _payload: &str,
    ) -> Result<(), StateError> {
        tracing::error!(%channel, reason, "a platform message could not be read while Redis is down; kept in this process only");
        let mut inner = self.lock();
        if inner.dead_letters.len() == MEMORY_DEAD_LETTERS {
            inner.dead_letters.pop_front();
        }
        inner
            .dead_letters
            .push_back(format!("{channel} unreadable: {reason}"));
        Ok(())
    }

    async fn dead_letter_escalation(
        &self,
        reference: &str,
        _key: &str,
        _event: &serde_json::Value,
        reason: &str,
    ) -> Result<(), StateError> {
        tracing::error!(
            reference,
            reason,
            "dispatcher webhook event could not be delivered while Redis is down; the escalation is kept in this process only"
        );
        Ok(())
    }

    async fn append_events(
        &self,
        conversation: &ConversationKey,
        events: &[SessionEvent],
    ) -> Result<(), StateError> {
        let now = Instant::now();
        let max = self.limits.events_max_length;
        let mut inner = self.lock();
        let c = inner.conversation(conversation, now);
        c.append_events(events, max);
        // The events live as long as the conversation; a session that has them is alive.
        c.expires = c.expires.max(now + self.limits.conversation_ttl);
        Ok(())
    }

    async fn events_after(
        &self,
        conversation: &ConversationKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StateError> {
        let now = Instant::now();
        let inner = self.lock();
        let Some(c) = inner.live_conversation(conversation, now) else {
            return Ok(Vec::new());
        };
        Ok(c.events
            .iter()
            .filter(|e| after.is_none_or(|after| crate::events::is_after(&e.id, after)))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn last_event_id(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Option<String>, StateError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .live_conversation(conversation, now)
            .and_then(|c| c.events.back())
            .map(|e| e.id.clone()))
    }

    async fn escalations(&self) -> Result<Vec<Escalation>, StateError> {
        let now = Instant::now();
        let mut pending: Vec<Escalation> = self
            .lock()
            .escalations
            .values()
            .filter(|(e, expires)| *expires > now && e.status == escalation::PENDING)
            .map(|(e, _)| e.clone())
            .collect();
        pending.sort_by_key(|e| e.created_at);
        Ok(pending)
    }

    async fn escalation(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Option<Escalation>, StateError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .escalations
            .get(conversation)
            .filter(|(_, expires)| *expires > now)
            .map(|(e, _)| e.clone()))
    }

    async fn waiting_messages(
        &self,
        _conversation: &ConversationKey,
    ) -> Result<Vec<InboundMessage>, StateError> {
        // The in-process queue is not kept per conversation; the history shows them after
        // their turn.
        Ok(Vec::new())
    }

    async fn claim_escalation(
        &self,
        conversation: &ConversationKey,
        by: &str,
        takeover: bool,
    ) -> Result<Claim, StateError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(record) = inner.live_escalation(conversation, now) else {
            return Ok(Claim::Unknown);
        };
        if record.status != escalation::PENDING {
            return Ok(Claim::NotPending(record.clone()));
        }
        match &record.claimed_by {
            Some(holder) if holder != by && !takeover => Ok(Claim::HeldBy(record.clone())),
            Some(holder) if holder == by => Ok(Claim::Claimed(record.clone())),
            _ => {
                record.claimed_by = Some(by.to_string());
                record.claimed_at = Some(crate::message::now_ms());
                Ok(Claim::Claimed(record.clone()))
            }
        }
    }

    async fn reserve_person_message(
        &self,
        message: &PersonMessage,
        delivered_now: bool,
    ) -> Result<Reservation, StateError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let key = (
            message.conversation.clone(),
            message.idempotency_key.clone(),
        );
        if let Some((message_id, status, _)) = inner
            .person_messages
            .get(&key)
            .filter(|(_, _, expires)| *expires > now)
        {
            return Ok(Reservation::Existing {
                message_id: message_id.clone(),
                status: status.clone(),
            });
        }
        let Some(record) = inner.live_escalation(&message.conversation, now) else {
            return Ok(Reservation::Unknown);
        };
        if record.status != escalation::PENDING {
            return Ok(Reservation::NotPending);
        }
        match &record.claimed_by {
            Some(holder) if holder != &message.by && !message.takeover => {
                return Ok(Reservation::HeldBy(holder.clone()));
            }
            Some(holder) if holder == &message.by => {}
            _ => {
                record.claimed_by = Some(message.by.clone());
                record.claimed_at = Some(message.ts);
            }
        }
        let expires = now + self.dedupe_ttl();
        inner.person_messages.insert(
            key,
            (message.message_id.clone(), SendStatus::Sending, expires),
        );
        if delivered_now {
            return Ok(self.finish_in(&mut inner, message, Ok(()), now));
        }
        Ok(Reservation::New {
            status: SendStatus::Sending,
            first_reply: false,
        })
    }

    async fn finish_person_message(
        &self,
        message: &PersonMessage,
        outcome: Result<(), &str>,
    ) -> Result<Reservation, StateError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(self.finish_in(&mut inner, message, outcome, now))
    }

    async fn resolve_escalation(
        &self,
        conversation: &ConversationKey,
        by: &str,
        note: &str,
    ) -> Result<Resolution, StateError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(record) = inner.live_escalation(conversation, now) else {
            return Ok(Resolution::Unknown);
        };
        if record.status != escalation::PENDING {
            return Ok(Resolution::AlreadyResolved(record.clone()));
        }
        record.status = escalation::RESOLVED.into();
        record.resolved_at = Some(crate::message::now_ms());
        record.resolved_by = Some(by.to_string());
        record.note = Some(note.to_string()).filter(|n| !n.is_empty());
        let resolved = record.clone();
        let ttl = self.limits.conversation_ttl;
        if let Some(c) = inner.conversations.get_mut(conversation) {
            c.session.escalation_pending = None;
            c.session.escalation_skill = None;
            c.expires = now + ttl;
        }
        Ok(Resolution::Resolved(resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Channel, Role, now_ms};
    use crate::state::HeldTurn;

    fn limits() -> StoreLimits {
        StoreLimits::for_tests()
    }

    fn message(id: &str) -> InboundMessage {
        InboundMessage::new(Channel::Webchat, "s1", id, format!("text {id}"), "r1")
    }

    /// A turn of `msg` as the worker begins it, without typing event or inbox entry.
    fn turn<'a>(msg: &'a InboundMessage, seq: u64, holder: &'a str) -> TurnBegin<'a> {
        TurnBegin {
            msg,
            held: HeldTurn {
                seq,
                holder,
                entry: None,
            },
            skip_order_check: false,
            take_later: false,
            typing: false,
        }
    }

    fn commit<'a>(msg: &'a InboundMessage, seq: u64, holder: &'a str) -> TurnCommit<'a> {
        let entry = |role, text: &str| HistoryEntry {
            role,
            text: text.into(),
            ts: now_ms(),
            message_id: msg.message_id.clone(),
            skill: None,
            provider: None,
            by: None,
        };
        TurnCommit {
            msg,
            seq,
            holder,
            user: entry(Role::User, &msg.text),
            assistant: entry(Role::Assistant, "answer"),
            reply: StoredReply {
                message_id: msg.message_id.clone(),
                text: format!("answer to {}", msg.message_id),
                skill: "general".into(),
                provider: "template".into(),
                ts: now_ms(),
                covered_by: None,
                replica: None,
            },
            session: vec![("active_skill", "general".into())],
            notify_channel: None,
            release_lease: true,
            later: Vec::new(),
            escalation: None,
            events: Vec::new(),
            acknowledges: None,
        }
    }

    #[tokio::test]
    async fn duplicates_are_not_queued_and_sequence_numbers_count_up() {
        let (store, mut rx) = MemoryStore::new(limits(), 10);
        assert_eq!(
            store.accept(&message("m1")).await.ok(),
            Some(Acceptance::Accepted { seq: 1 })
        );
        assert_eq!(
            store.accept(&message("m1")).await.ok(),
            Some(Acceptance::Duplicate)
        );
        assert_eq!(
            store.accept(&message("m2")).await.ok(),
            Some(Acceptance::Accepted { seq: 2 })
        );
        assert_eq!(rx.recv().await.map(|q| q.seq), Some(1));
        assert_eq!(rx.recv().await.map(|q| q.seq), Some(2));
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_without_marking_the_message_seen() {
        let (store, _rx) = MemoryStore::new(limits(), 1);
        assert!(store.accept(&message("m1")).await.is_ok());
        assert!(matches!(
            store.accept(&message("m2")).await,
            Err(StateError::Full(_))
        ));
        assert!(!store.seen(&message("m2").dedupe_id()).await.unwrap_or(true));
    }

    #[tokio::test]
    async fn the_second_message_waits_for_the_first_and_replies_are_at_most_once() {
        let (store, _rx) = MemoryStore::new(limits(), 10);
        let (m1, m2) = (message("m1"), message("m2"));
        for m in [&m1, &m2] {
            assert!(store.accept(m).await.is_ok());
        }
        assert_eq!(
            store.begin_turn(&turn(&m2, 2, "w2")).await.ok(),
            Some(TurnStart::Wait(WaitReason::Gap))
        );
        assert!(matches!(
            store.begin_turn(&turn(&m1, 1, "w1")).await,
            Ok(TurnStart::Ready(_))
        ));
        assert_eq!(
            store.begin_turn(&turn(&m2, 2, "w2")).await.ok(),
            Some(TurnStart::Wait(WaitReason::Lease))
        );
        assert_eq!(
            store.commit_turn(&commit(&m1, 1, "w1")).await.ok(),
            Some(CommitOutcome::Committed)
        );
        // A second worker that ran the same message loses: the first reply stays on record.
        assert!(matches!(
            store.commit_turn(&commit(&m1, 1, "w3")).await,
            Ok(CommitOutcome::AlreadyReplied(_))
        ));
        match store.begin_turn(&turn(&m2, 2, "w2")).await {
            Ok(TurnStart::Ready(snapshot)) => {
                assert_eq!(snapshot.history.len(), 2);
                assert_eq!(snapshot.session.active_skill.as_deref(), Some("general"));
            }
            other => panic!("m2 should be ready, got {other:?}"),
        }
        // m1 came back (claimed again): while m2's turn holds the lease it waits (the holder
        // may be sending a reply), then it finds its reply on record.
        assert_eq!(
            store.begin_turn(&turn(&m1, 1, "w9")).await.ok(),
            Some(TurnStart::Wait(WaitReason::Lease))
        );
        assert!(store.release_lease(&m2.conversation(), "w2").await.is_ok());
        assert!(matches!(
            store.begin_turn(&turn(&m1, 1, "w9")).await,
            Ok(TurnStart::Replied(_))
        ));
    }

    #[tokio::test]
    async fn a_platform_turn_holds_its_conversation_until_its_reply_is_marked_delivered() {
        let (store, _rx) = MemoryStore::new(limits(), 10);
        let on_whatsapp = |id| {
            let mut m = message(id);
            m.channel = Channel::Whatsapp;
            m
        };
        let (m1, m2) = (on_whatsapp("m1"), on_whatsapp("m2"));
        for m in [&m1, &m2] {
            assert!(store.accept(m).await.is_ok());
        }
        assert!(matches!(
            store.begin_turn(&turn(&m1, 1, "w1")).await,
            Ok(TurnStart::Ready(_))
        ));
        // The reply still has to be sent: the commit keeps the lease.
        let mut committed = commit(&m1, 1, "w1");
        committed.release_lease = false;
        assert_eq!(
            store.commit_turn(&committed).await.ok(),
            Some(CommitOutcome::Committed)
        );
        assert_eq!(
            store.begin_turn(&turn(&m2, 2, "w2")).await.ok(),
            Some(TurnStart::Wait(WaitReason::Lease))
        );
        let done = |holder| DeliveryDone {
            msg: &m1,
            outcome: "sent",
            held: HeldTurn {
                seq: 1,
                holder,
                entry: None,
            },
        };
        // Another worker's marker for the same message does not free the lease it never held.
        assert!(store.finish_delivery(&done("w9")).await.is_ok());
        assert_eq!(
            store.begin_turn(&turn(&m2, 2, "w2")).await.ok(),
            Some(TurnStart::Wait(WaitReason::Lease))
        );
        assert!(store.finish_delivery(&done("w1")).await.is_ok());
        assert!(store.delivered(&m1.dedupe_id()).await.unwrap_or(false));
        assert!(matches!(
            store.begin_turn(&turn(&m2, 2, "w2")).await,
            Ok(TurnStart::Ready(_))
        ));
    }

    #[tokio::test]
    async fn history_is_capped_oldest_first() {
        let (store, _rx) = MemoryStore::new(limits(), 10);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let m = message(id);
            assert!(store.accept(&m).await.is_ok());
            assert!(matches!(
                store.begin_turn(&turn(&m, i as u64 + 1, "w")).await,
                Ok(TurnStart::Ready(_))
            ));
            assert!(
                store
                    .commit_turn(&commit(&m, i as u64 + 1, "w"))
                    .await
                    .is_ok()
            );
        }
        let history = store
            .history(&message("x").conversation())
            .await
            .unwrap_or_default();
        let ids: Vec<&str> = history.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, vec!["b", "b", "c", "c"]);
    }

    /// Runs one whole turn of `m` (accept, begin, commit) as worker `holder`.
    async fn answer(store: &MemoryStore, m: &InboundMessage, seq: u64, holder: &str) {
        assert!(matches!(
            store.begin_turn(&turn(m, seq, holder)).await,
            Ok(TurnStart::Ready(_))
        ));
        assert!(store.commit_turn(&commit(m, seq, holder)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_conversation_is_forgotten_only_after_its_ttl_without_turns() {
        let (store, _rx) = MemoryStore::new(limits(), 10);
        let m1 = message("m1");
        assert!(store.accept(&m1).await.is_ok());
        answer(&store, &m1, 1, "w").await;
        let conversation = m1.conversation();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            store.history(&conversation).await.map(|h| h.len()).ok(),
            Some(2)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            store.history(&conversation).await.map(|h| h.len()).ok(),
            Some(0),
            "60 s after the last turn the conversation is gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_id_is_a_duplicate_until_the_dedupe_window_ends() {
        let (store, _rx) = MemoryStore::new(limits(), 10);
        assert!(matches!(
            store.accept(&message("m1")).await,
            Ok(Acceptance::Accepted { .. })
        ));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            store.accept(&message("m1")).await.ok(),
            Some(Acceptance::Duplicate)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            matches!(
                store.accept(&message("m1")).await,
                Ok(Acceptance::Accepted { .. })
            ),
            "the marker expired with the dedupe window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_nobody_renews_passes_to_another_worker_after_its_ttl() {
        let (store, _rx) = MemoryStore::new(limits(), 10);
        let (m1, m2) = (message("m1"), message("m2"));
        for m in [&m1, &m2] {
            assert!(store.accept(m).await.is_ok());
        }
        // w1 takes m1's turn and dies without committing or releasing.
        assert!(matches!(
            store.begin_turn(&turn(&m1, 1, "w1")).await,
            Ok(TurnStart::Ready(_))
        ));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            store.begin_turn(&turn(&m1, 1, "w2")).await.ok(),
            Some(TurnStart::Wait(WaitReason::Lease)),
            "the lease still holds"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            matches!(
                store.begin_turn(&turn(&m1, 1, "w2")).await,
                Ok(TurnStart::Ready(_))
            ),
            "5 s after it was taken the lease is free"
        );
    }

    #[tokio::test]
    async fn one_person_holds_an_escalation_and_their_retried_message_is_kept_once() {
        let (store, _rx) = MemoryStore::new(limits(), 16);
        let msg = message("m1");
        let conversation = msg.conversation();
        let record = Escalation::new(
            &msg,
            &[],
            &[],
            "complaints",
            "nl",
            "damaged".into(),
            now_ms(),
        );
        store.lock().escalations.insert(
            conversation.clone(),
            (record, Instant::now() + Duration::from_secs(60)),
        );
        let claimed = store.claim_escalation(&conversation, "Ana", false).await;
        assert!(matches!(claimed, Ok(Claim::Claimed(_))), "{claimed:?}");
        let refused = store.claim_escalation(&conversation, "Bob", false).await;
        assert!(matches!(&refused, Ok(Claim::HeldBy(e)) if e.claimed_by.as_deref() == Some("Ana")));

        let person = |by: &str, key: &str| PersonMessage {
            conversation: conversation.clone(),
            idempotency_key: key.into(),
            by: by.into(),
            takeover: false,
            message_id: format!("person-{key}"),
            text: "Hallo, met Ana.".into(),
            ts: now_ms(),
        };
        assert_eq!(
            store
                .reserve_person_message(&person("Bob", "b1"), true)
                .await
                .ok(),
            Some(Reservation::HeldBy("Ana".into()))
        );
        let first = store
            .reserve_person_message(&person("Ana", "a1"), true)
            .await;
        assert_eq!(
            first.ok(),
            Some(Reservation::New {
                status: SendStatus::Sent,
                first_reply: true
            })
        );
        let again = store
            .reserve_person_message(&person("Ana", "a1"), true)
            .await;
        assert_eq!(
            again.ok(),
            Some(Reservation::Existing {
                message_id: "person-a1".into(),
                status: SendStatus::Sent
            })
        );
        let history = store.history(&conversation).await.unwrap_or_default();
        let agent: Vec<_> = history.iter().filter(|e| e.role == Role::Agent).collect();
        assert_eq!(agent.len(), 1, "{history:?}");
        assert_eq!(agent[0].by.as_deref(), Some("Ana"));
    }
}
