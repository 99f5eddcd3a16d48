//! The Redis implementation of [`StateStore`]: every operation is one Lua script, so each is
//! atomic and costs one round trip.
//!
//! In the sharded key layout (a Redis Cluster) every script's keys share their shard's slot, and
//! the scripts announce on shard channels (`SPUBLISH`) of that slot; in the unsharded layout of
//! one Redis they touch keys of several tags, which one server runs atomically all the same.

use super::connection::Connection;
use super::keys::KeyLayout;
use super::link::RedisLink;
use super::{
    Acceptance, CommitOutcome, ConversationSnapshot, DeliveryDone, ReplyDeadLetter, Resolution,
    Session, StateError, StateStore, StoreLimits, TurnBegin, TurnCommit, TurnStart, WaitReason,
    keys,
};
use crate::escalation::{Claim, Escalation};
use crate::events::{self, SessionEvent, StoredEvent};
use crate::message::{
    Channel, ConversationKey, DedupeId, HistoryEntry, InboundMessage, StoredReply,
};
use crate::person_message::{PersonMessage, Reservation, SendStatus};
use async_trait::async_trait;
use redis::{FromRedisValue, Script, ScriptInvocation, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

/// The scripts that write session events start with the shared `append_events` function; more
/// files before the script add their shared functions (`holds_entry` of `inbox_entry.lua`).
macro_rules! with_events {
    ($($file:literal),+) => {
        concat!(include_str!("scripts/events.lua"), $(include_str!($file)),+)
    };
}

/// The scripts that announce something on pub/sub, in one flavour per kind of channel.
struct Publishing {
    accept: Script,
    begin: Script,
    append_events: Script,
    commit: Script,
    person_message: Script,
    claim: Script,
    resolve: Script,
}

impl Publishing {
    /// The scripts announcing with `command` (`PUBLISH`, or `SPUBLISH` for a cluster's shard
    /// channels, which a script may only use in its own slot).
    fn with(command: &str) -> Publishing {
        let script = |text: &str| super::pubsub::publishing_script(text, command);
        Publishing {
            accept: script(with_events!("scripts/accept.lua")),
            begin: script(with_events!("scripts/inbox_entry.lua", "scripts/begin.lua")),
            append_events: script(with_events!("scripts/append_events.lua")),
            commit: script(with_events!(
                "scripts/inbox_entry.lua",
                "scripts/commit.lua"
            )),
            person_message: script(with_events!("scripts/person_message.lua")),
            claim: script(include_str!("scripts/claim_escalation.lua")),
            resolve: script(include_str!("scripts/resolve_escalation.lua")),
        }
    }
}

static PUBLISHING: LazyLock<Publishing> = LazyLock::new(|| Publishing::with("PUBLISH"));
static SHARD_PUBLISHING: LazyLock<Publishing> = LazyLock::new(|| Publishing::with("SPUBLISH"));
static SKIP: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/skip.lua")));
static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/renew_leases.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release_lease.lua")));
static FINISH_DELIVERY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/inbox_entry.lua"),
        include_str!("scripts/finish_delivery.lua")
    ))
});

/// Conversation state in Redis, shared by all replicas.
pub struct RedisStore {
    /// The shared connection and its health.
    link: Arc<RedisLink>,
    /// TTLs and bounds.
    limits: StoreLimits,
}

impl RedisStore {
    /// A store over `link`.
    pub fn new(link: Arc<RedisLink>, limits: StoreLimits) -> RedisStore {
        RedisStore { link, limits }
    }

    /// Forgets that `id` was accepted, so the same message is accepted again as a new turn
    /// (re-driving a dead-lettered message; nothing else may undo deduplication).
    pub async fn forget_acceptance(&self, id: &DedupeId) -> Result<(), StateError> {
        let key = self.keys().seen(id);
        let _: i64 = self
            .query_acknowledged(&key, redis::cmd("DEL").arg(&key))
            .await?;
        Ok(())
    }

    fn keys(&self) -> &KeyLayout {
        self.link.keys()
    }

    /// One step of `person_message.lua` (see there), acknowledged like an accepted message.
    async fn person_message_step(
        &self,
        message: &PersonMessage,
        step: &str,
        delivered_now: bool,
        reason: &str,
    ) -> Result<Reservation, StateError> {
        let c = &message.conversation;
        let key = self.keys().escalation(c);
        let entry = serde_json::to_string(&message.history_entry())
            .map_err(|e| StateError::Protocol(e.to_string()))?;
        let events = if c.channel() == crate::message::Channel::Webchat {
            events::encode(&[message.event()])
        } else {
            String::new()
        };
        let (outcome, message_id, status, why, holder, first): (
            String,
            String,
            String,
            String,
            String,
            i64,
        ) = self
            .invoke_acknowledged(
                &key,
                self.publishing()
                    .person_message
                    .key(&key)
                    .key(self.keys().person_message(c, &message.idempotency_key))
                    .key(self.keys().conversation(c))
                    .key(self.keys().events(c))
                    .arg(step)
                    .arg(&message.by)
                    .arg(u8::from(message.takeover))
                    .arg(message.ts)
                    .arg(&message.message_id)
                    .arg(entry)
                    .arg(self.limits.history_limit)
                    .arg(secs(self.limits.dedupe_ttl))
                    .arg(u8::from(delivered_now))
                    .arg(events)
                    .arg(self.limits.events_max_length)
                    .arg(self.keys().events_channel_of(c))
                    .arg(c.as_str())
                    .arg(reason),
            )
            .await?;
        Ok(match outcome.as_str() {
            "new" => Reservation::New {
                status: SendStatus::parse(&status, &why),
                first_reply: first == 1,
            },
            "existing" => Reservation::Existing {
                message_id,
                status: SendStatus::parse(&status, &why),
            },
            "held" => Reservation::HeldBy(holder),
            "not_pending" => Reservation::NotPending,
            _ => Reservation::Unknown,
        })
    }

    /// The scripts that announce, in the flavour the deployment's channels need.
    fn publishing(&self) -> &'static Publishing {
        if self.link.cluster().is_some() {
            &SHARD_PUBLISHING
        } else {
            &PUBLISHING
        }
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StateError> {
        let mut conn = self.link.connection()?;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.link.failed(&e))
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StateError> {
        let mut conn = self.link.connection()?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.link.failed(&e))
    }

    /// Runs a script whose writes must reach `redis.ackReplicas` replicas before the caller
    /// acknowledges anything (an accepted message, a reply about to go out on a platform): on an
    /// acknowledgement lane, then `WAIT`. Without `ackReplicas`, like [`Self::invoke`].
    /// `key` is one of the script's keys (in a cluster, the `WAIT` goes to its master).
    async fn invoke_acknowledged<T: FromRedisValue>(
        &self,
        key: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StateError> {
        if self.link.ack_replicas() == 0 {
            return self.invoke(invocation).await;
        }
        let mut lane = self.link.ack_lane()?;
        let result = invocation.invoke_async(&mut lane).await;
        self.replicated(result, &mut lane, key).await
    }

    /// One command whose write must reach `redis.ackReplicas` replicas before the caller goes
    /// on (the marker that a platform reply went out: lost in a failover, the reply would be
    /// sent again). Without `ackReplicas`, like [`Self::query`].
    async fn query_acknowledged<T: FromRedisValue>(
        &self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StateError> {
        if self.link.ack_replicas() == 0 {
            return self.query(cmd).await;
        }
        let mut lane = self.link.ack_lane()?;
        let result = cmd.query_async(&mut lane).await;
        self.replicated(result, &mut lane, key).await
    }

    /// The result of a write to `key` made on `lane`, once `WAIT` confirmed it on the replicas.
    async fn replicated<T>(
        &self,
        result: redis::RedisResult<T>,
        lane: &mut Connection,
        key: &str,
    ) -> Result<T, StateError> {
        let value = result.map_err(|e| self.link.failed(&e))?;
        self.link.wait_for_replicas(lane, key).await?;
        Ok(value)
    }

    /// Sends `commands` at once (each to its own slot's master in a cluster, where one pipeline
    /// may not span slots); the answers in order.
    async fn query_each<T: FromRedisValue>(
        &self,
        commands: Vec<redis::Cmd>,
    ) -> Result<Vec<T>, StateError> {
        let conn = self.link.connection()?;
        let answers = commands.iter().map(|cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<T>(&mut conn).await }
        });
        futures_util::future::join_all(answers)
            .await
            .into_iter()
            .map(|answer| answer.map_err(|e| self.link.failed(&e)))
            .collect()
    }
}

fn secs(d: std::time::Duration) -> u64 {
    d.as_secs().max(1)
}

fn text(value: &Value) -> Option<String> {
    redis::from_redis_value_ref::<String>(value).ok()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|e| StateError::Protocol(format!("cannot encode: {e}")))
}

/// What the commit publishes to the replica holding a web-chat request (read by
/// `ReplyWaiters::listen`); empty when nobody elsewhere waits.
fn notify_payload(channel: Option<&String>, id: &DedupeId, reply: &StoredReply) -> String {
    match channel {
        Some(_) => serde_json::json!({"id": id.as_str(), "reply": reply}).to_string(),
        None => String::new(),
    }
}

fn parse_reply(json: &str) -> Result<StoredReply, StateError> {
    serde_json::from_str(json)
        .map_err(|e| StateError::Protocol(format!("unreadable reply record: {e}")))
}

/// Parses history elements, skipping (and logging) any that this version cannot read rather than
/// failing the customer's turn.
fn parse_history(values: &[Value]) -> Vec<HistoryEntry> {
    values
        .iter()
        .filter_map(|v| {
            let raw = text(v)?;
            match serde_json::from_str(&raw) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable history entry");
                    None
                }
            }
        })
        .collect()
}

/// Parses `seq, message JSON, ...` pairs of later messages, stopping at the first unreadable one
/// (the ones after it then get turns of their own).
fn parse_later(values: &[Value]) -> Vec<(u64, InboundMessage)> {
    let mut later = Vec::new();
    for pair in values.chunks_exact(2) {
        let seq = redis::from_redis_value_ref::<u64>(&pair[0]).ok();
        let msg = text(&pair[1]).and_then(|raw| serde_json::from_str(&raw).ok());
        match (seq, msg) {
            (Some(seq), Some(msg)) => later.push((seq, msg)),
            _ => break,
        }
    }
    later
}

/// `field, value, ...` as a map.
fn parse_hash(values: &[Value]) -> BTreeMap<String, String> {
    let strings: Vec<String> = values.iter().filter_map(text).collect();
    strings
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

fn parse_session(values: &[Value]) -> Session {
    let strings: Vec<String> = values.iter().filter_map(text).collect();
    Session::from_pairs(
        strings
            .chunks_exact(2)
            .map(|pair| (pair[0].as_str(), pair[1].clone())),
    )
}

#[async_trait]
impl StateStore for RedisStore {
    async fn accept(&self, msg: &InboundMessage) -> Result<Acceptance, StateError> {
        let json = to_json(msg)?;
        let conversation = msg.conversation();
        let keys = self.keys();
        let seen = keys.seen(&msg.dedupe_id());
        let result: i64 = self
            .invoke_acknowledged(
                &seen,
                self.publishing()
                    .accept
                    .key(&seen)
                    .key(keys.session(&conversation))
                    .key(keys.inbox_of(&conversation))
                    .key(keys.pending(&conversation))
                    .key(keys.events(&conversation))
                    .arg(secs(self.limits.dedupe_ttl))
                    .arg(secs(self.limits.conversation_ttl))
                    .arg(self.limits.inbox_max_length.div_ceil(keys.shards() as u64))
                    .arg(keys::ENTRY_VERSION)
                    .arg(json)
                    .arg("1")
                    .arg(events::encode(
                        &SessionEvent::accepted(msg).into_iter().collect::<Vec<_>>(),
                    ))
                    .arg(self.limits.events_max_length)
                    .arg(keys.events_channel_of(&conversation))
                    .arg(conversation.as_str())
                    .arg(&msg.message_id),
            )
            .await?;
        match result {
            0 => Ok(Acceptance::Duplicate),
            seq if seq > 0 => Ok(Acceptance::Accepted { seq: seq as u64 }),
            _ => Err(StateError::Full(format!(
                "the inbox holds {} messages or more",
                self.limits.inbox_max_length
            ))),
        }
    }

    async fn begin_turn(&self, turn: &TurnBegin<'_>) -> Result<TurnStart, StateError> {
        let msg = turn.msg;
        let conversation = msg.conversation();
        let keys = self.keys();
        let mut begin = self.publishing().begin.prepare_invoke();
        begin
            .key(keys.replied(&msg.dedupe_id()))
            .key(keys.session(&conversation))
            .key(keys.lease(&conversation))
            .key(keys.conversation(&conversation))
            .key(keys.pending(&conversation))
            .key(keys.events(&conversation));
        let held = turn.held;
        if let Some(entry) = held.entry {
            // The entry's stream shares the conversation's slot (its shard's hash tag).
            begin.key(&entry.stream);
        }
        let typing = if turn.typing {
            events::encode(&[SessionEvent::Typing {
                message_id: msg.message_id.clone(),
            }])
        } else {
            String::new()
        };
        let reply: Vec<Value> = self
            .invoke(
                begin
                    .arg(held.seq)
                    .arg(held.holder)
                    .arg(self.limits.lease_ttl.as_millis() as u64)
                    .arg(if turn.skip_order_check { "1" } else { "0" })
                    .arg(if turn.take_later {
                        self.limits.coalesce_max
                    } else {
                        0
                    })
                    .arg(if msg.channel == Channel::Api {
                        // API callers are services behind a bearer token, not people
                        // resending in panic: their throughput is theirs to use.
                        0
                    } else {
                        self.limits.flood_interval.as_millis() as u64
                    })
                    .arg(self.limits.flood_tolerance.as_millis() as u64)
                    .arg(held.entry.map_or("", |e| e.id.as_str()))
                    .arg(&msg.message_id)
                    .arg(typing)
                    .arg(self.limits.events_max_length)
                    .arg(keys.events_channel_of(&conversation))
                    .arg(conversation.as_str())
                    .arg(secs(self.limits.conversation_ttl)),
            )
            .await?;
        let status = reply.first().and_then(text).unwrap_or_default();
        match (status.as_str(), reply.get(1), reply.get(2)) {
            ("wait", Some(reason), Some(Value::Int(ms)))
                if text(reason).as_deref() == Some("flood") =>
            {
                Ok(TurnStart::Wait(WaitReason::Flood(
                    std::time::Duration::from_millis((*ms).max(1) as u64),
                )))
            }
            ("replied", Some(json), _) => Ok(TurnStart::Replied(parse_reply(
                &text(json).unwrap_or_default(),
            )?)),
            ("wait", Some(reason), _) => Ok(TurnStart::Wait(match text(reason).as_deref() {
                Some("order") => WaitReason::Order,
                Some("gap") => WaitReason::Gap,
                _ => WaitReason::Lease,
            })),
            ("ready", Some(Value::Array(history)), Some(Value::Array(session))) => {
                Ok(TurnStart::Ready(ConversationSnapshot {
                    history: parse_history(history),
                    session: parse_session(session),
                    later: match reply.get(3) {
                        Some(Value::Array(later)) => parse_later(later),
                        _ => Vec::new(),
                    },
                }))
            }
            ("ready", _, _) => Ok(TurnStart::Ready(ConversationSnapshot::default())),
            ("not_queued", _, _) => Ok(TurnStart::NotQueued),
            _ => Err(StateError::Protocol(format!(
                "begin script answered {reply:?}"
            ))),
        }
    }

    async fn commit_turn(&self, commit: &TurnCommit<'_>) -> Result<CommitOutcome, StateError> {
        let conversation = commit.msg.conversation();
        let reply_json = to_json(&commit.reply)?;
        let payload = notify_payload(
            commit.notify_channel.as_ref(),
            &commit.msg.dedupe_id(),
            &commit.reply,
        );
        let mut later = Vec::with_capacity(commit.later.len());
        for m in &commit.later {
            let reply = to_json(&m.reply)?;
            let payload = notify_payload(m.notify_channel.as_ref(), &m.id, &m.reply);
            later.push(serde_json::json!({
                "seq": m.seq,
                "entry": to_json(&m.user)?,
                "reply": reply,
                "channel": m.notify_channel.as_deref().unwrap_or(""),
                "payload": payload,
            }));
        }
        let keys = self.keys();
        let replied = keys.replied(&commit.msg.dedupe_id());
        let mut invocation = self.publishing().commit.prepare_invoke();
        invocation
            .key(&replied)
            .key(keys.conversation(&conversation))
            .key(keys.session(&conversation))
            .key(keys.lease(&conversation))
            .key(keys.pending(&conversation))
            .key(keys.escalation(&conversation))
            .key(keys.escalations_of(conversation.as_str()))
            .key(keys.events(&conversation));
        for m in &commit.later {
            invocation.key(keys.replied(&m.id));
        }
        let escalation = match &commit.escalation {
            Some(e) => to_json(&e.to_fields().into_iter().collect::<BTreeMap<_, _>>())?,
            None => String::new(),
        };
        invocation
            .arg(&reply_json)
            .arg(secs(self.limits.dedupe_ttl))
            .arg(to_json(&commit.user)?)
            .arg(to_json(&commit.assistant)?)
            .arg(self.limits.history_limit)
            .arg(secs(self.limits.conversation_ttl))
            .arg(commit.seq)
            .arg(commit.holder)
            .arg(commit.notify_channel.as_deref().unwrap_or(""))
            .arg(payload)
            .arg(if commit.release_lease { "1" } else { "0" })
            .arg(serde_json::Value::Array(later).to_string())
            .arg(escalation)
            .arg(secs(self.limits.escalation_retention))
            .arg(events::encode(&commit.events))
            .arg(self.limits.events_max_length)
            .arg(keys.events_channel_of(&conversation))
            .arg(conversation.as_str())
            .arg(commit.acknowledges.map_or("", |e| e.id.as_str()))
            .arg(keys::GROUP)
            .arg(&commit.msg.message_id);
        if let Some(entry) = commit.acknowledges {
            // Last, after the later messages' reply keys; it shares the conversation's slot.
            invocation.key(&entry.stream);
        }
        for (field, value) in &commit.session {
            invocation.arg(*field).arg(value);
        }
        // A reply must survive a failover before anyone sees it: a new primary that lost it
        // would answer the message again (on a platform: a second message to the customer), and
        // a web-chat customer's next turn would miss it from the conversation.
        let result: Vec<Value> = self.invoke_acknowledged(&replied, &invocation).await?;
        match (result.first(), result.get(1)) {
            (Some(Value::Int(1)), _) => Ok(CommitOutcome::Committed),
            (Some(Value::Int(0)), Some(existing)) => Ok(CommitOutcome::AlreadyReplied(
                parse_reply(&text(existing).unwrap_or_default())?,
            )),
            _ => Err(StateError::Protocol(format!(
                "commit script answered {result:?}"
            ))),
        }
    }

    async fn skip_turn(
        &self,
        conversation: &ConversationKey,
        seq: u64,
        holder: &str,
    ) -> Result<(), StateError> {
        let _: i64 = self
            .invoke(
                SKIP.key(self.keys().session(conversation))
                    .key(self.keys().lease(conversation))
                    .arg(seq)
                    .arg(holder)
                    .arg(secs(self.limits.conversation_ttl)),
            )
            .await?;
        Ok(())
    }

    async fn renew_leases(&self, leases: &[(ConversationKey, String)]) -> Result<(), StateError> {
        if leases.is_empty() {
            return Ok(());
        }
        // One script per shard: in a cluster a script's keys must share a slot.
        let mut by_shard: BTreeMap<usize, Vec<&(ConversationKey, String)>> = BTreeMap::new();
        for lease in leases {
            by_shard
                .entry(self.keys().shard_of(lease.0.as_str()))
                .or_default()
                .push(lease);
        }
        let renewals = by_shard.into_values().map(|leases| async move {
            let mut invocation = RENEW.prepare_invoke();
            invocation.arg(self.limits.lease_ttl.as_millis() as u64);
            for (conversation, holder) in leases {
                invocation.key(self.keys().lease(conversation)).arg(holder);
            }
            let _: i64 = self.invoke(&invocation).await?;
            Ok::<_, StateError>(())
        });
        futures_util::future::join_all(renewals)
            .await
            .into_iter()
            .collect()
    }

    async fn release_lease(
        &self,
        conversation: &ConversationKey,
        holder: &str,
    ) -> Result<(), StateError> {
        let _: i64 = self
            .invoke(RELEASE.key(self.keys().lease(conversation)).arg(holder))
            .await?;
        Ok(())
    }

    async fn reply(&self, id: &DedupeId) -> Result<Option<StoredReply>, StateError> {
        let json: Option<String> = self
            .query(redis::cmd("GET").arg(self.keys().replied(id)))
            .await?;
        json.map(|j| parse_reply(&j)).transpose()
    }

    async fn seen(&self, id: &DedupeId) -> Result<bool, StateError> {
        self.query(redis::cmd("EXISTS").arg(self.keys().seen(id)))
            .await
    }

    async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, StateError> {
        let key = keys::secret(name);
        let candidate = hex::encode(rand::random::<[u8; 32]>());
        // The first replica's candidate wins; replicated like an accepted message, so a
        // failover cannot hand out a second secret.
        let _: Value = self
            .query_acknowledged(&key, redis::cmd("SET").arg(&key).arg(&candidate).arg("NX"))
            .await?;
        let secret: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        let secret = secret.ok_or_else(|| StateError::Protocol(format!("{key} vanished")))?;
        hex::decode(&secret).map_err(|e| StateError::Protocol(format!("{key} is not hex: {e}")))
    }

    async fn history(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Vec<HistoryEntry>, StateError> {
        let values: Vec<Value> = self
            .query(
                redis::cmd("LRANGE")
                    .arg(self.keys().conversation(conversation))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        Ok(parse_history(&values))
    }

    async fn delivered(&self, id: &DedupeId) -> Result<bool, StateError> {
        self.query(redis::cmd("EXISTS").arg(self.keys().delivered(id)))
            .await
    }

    async fn mark_delivered(&self, id: &DedupeId, outcome: &str) -> Result<(), StateError> {
        let key = self.keys().delivered(id);
        self.query_acknowledged(
            &key,
            redis::cmd("SET")
                .arg(&key)
                .arg(outcome)
                .arg("EX")
                .arg(secs(self.limits.dedupe_ttl)),
        )
        .await
    }

    async fn finish_delivery(&self, done: &DeliveryDone<'_>) -> Result<(), StateError> {
        let keys = self.keys();
        let delivered = keys.delivered(&done.msg.dedupe_id());
        let mut finish = FINISH_DELIVERY.prepare_invoke();
        finish
            .key(&delivered)
            .key(keys.lease(&done.msg.conversation()));
        let held = done.held;
        if let Some(entry) = held.entry {
            // In a cluster the entry's stream shares the conversation's slot (its shard's tag).
            finish.key(&entry.stream);
        }
        finish
            .arg(done.outcome)
            .arg(secs(self.limits.dedupe_ttl))
            .arg(held.holder)
            .arg(held.entry.map_or("", |e| e.id.as_str()))
            .arg(keys::GROUP)
            .arg(held.seq)
            .arg(&done.msg.message_id);
        // Like the marker alone: lost in a failover, the reply would be sent again.
        let _: i64 = self.invoke_acknowledged(&delivered, &finish).await?;
        Ok(())
    }

    async fn dead_letter_reply(&self, letter: &ReplyDeadLetter<'_>) -> Result<(), StateError> {
        let msg = letter.msg;
        let _: String = self
            .query(
                redis::cmd("XADD")
                    .arg(keys::DEADLETTER)
                    .arg("*")
                    .arg("kind")
                    .arg("outbound")
                    .arg("reason")
                    .arg(letter.reason)
                    .arg("channel")
                    .arg(msg.channel.as_str())
                    .arg("to")
                    .arg(msg.address())
                    .arg("account")
                    .arg(msg.account.as_deref().unwrap_or(""))
                    .arg("text")
                    .arg(letter.text)
                    .arg("message_id")
                    .arg(&msg.message_id)
                    .arg("chunks_sent")
                    .arg(letter.chunks_sent)
                    .arg("replica")
                    .arg(&msg.ingress_replica)
                    .arg("ts")
                    .arg(crate::message::now_ms()),
            )
            .await?;
        Ok(())
    }

    async fn linked_identities(
        &self,
        channel: Channel,
        identities: &[String],
    ) -> Result<Vec<Option<String>>, StateError> {
        if identities.is_empty() {
            return Ok(Vec::new());
        }
        let lookups = identities
            .iter()
            .map(|identity| {
                let mut get = redis::cmd("GET");
                get.arg(keys::identity(channel, identity));
                get
            })
            .collect();
        self.query_each(lookups).await
    }

    async fn link_identities(
        &self,
        channel: Channel,
        links: &[(String, String)],
    ) -> Result<(), StateError> {
        if links.is_empty() {
            return Ok(());
        }
        let writes = links
            .iter()
            .map(|(identity, user)| {
                let mut set = redis::cmd("SET");
                set.arg(keys::identity(channel, identity))
                    .arg(user)
                    .arg("EX")
                    .arg(secs(super::IDENTITY_TTL));
                set
            })
            .collect();
        let _: Vec<Value> = self.query_each(writes).await?;
        Ok(())
    }

    async fn dead_letter_unreadable(
        &self,
        channel: Channel,
        reason: &str,
        payload: &str,
    ) -> Result<(), StateError> {
        let _: String = self
            .query(
                redis::cmd("XADD")
                    .arg(keys::DEADLETTER)
                    .arg("*")
                    .arg("kind")
                    .arg("unreadable")
                    .arg("reason")
                    .arg(reason)
                    .arg("channel")
                    .arg(channel.as_str())
                    .arg("payload")
                    .arg(payload)
                    .arg("ts")
                    .arg(crate::message::now_ms()),
            )
            .await?;
        Ok(())
    }

    async fn dead_letter_escalation(
        &self,
        reference: &str,
        key: &str,
        event: &serde_json::Value,
        reason: &str,
    ) -> Result<(), StateError> {
        let _: String = self
            .query(
                redis::cmd("XADD")
                    .arg(keys::DEADLETTER)
                    .arg("*")
                    .arg("kind")
                    .arg("escalation")
                    .arg("reason")
                    .arg(reason)
                    .arg("reference")
                    .arg(reference)
                    .arg("channel")
                    .arg(event["channel"].as_str().unwrap_or(""))
                    .arg("conversation")
                    .arg(event["conversation"].as_str().unwrap_or(""))
                    .arg("idempotency_key")
                    .arg(key)
                    .arg("event")
                    .arg(event.to_string())
                    .arg("ts")
                    .arg(crate::message::now_ms()),
            )
            .await?;
        Ok(())
    }

    async fn append_events(
        &self,
        conversation: &ConversationKey,
        events: &[SessionEvent],
    ) -> Result<(), StateError> {
        if events.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .invoke(
                self.publishing()
                    .append_events
                    .key(self.keys().events(conversation))
                    .arg(events::encode(events))
                    .arg(self.limits.events_max_length)
                    .arg(secs(self.limits.conversation_ttl))
                    .arg(self.keys().events_channel_of(conversation))
                    .arg(conversation.as_str()),
            )
            .await?;
        Ok(())
    }

    async fn events_after(
        &self,
        conversation: &ConversationKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StateError> {
        let start = match after {
            // Exclusive: the client has that one.
            Some(id) => {
                let (ms, n) = events::parse_id(id);
                format!("({ms}-{n}")
            }
            None => "-".to_string(),
        };
        let mut command = redis::cmd("XRANGE");
        command
            .arg(self.keys().events(conversation))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        let entries: Vec<(String, Vec<(String, String)>)> = self.query(&command).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let json = fields.into_iter().find(|(f, _)| f == "e")?.1;
                Some(StoredEvent { id, json })
            })
            .collect())
    }

    async fn last_event_id(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Option<String>, StateError> {
        let mut command = redis::cmd("XREVRANGE");
        command
            .arg(self.keys().events(conversation))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let entries: Vec<(String, Value)> = self.query(&command).await?;
        Ok(entries.into_iter().next().map(|(id, _)| id))
    }

    async fn escalations(&self) -> Result<Vec<Escalation>, StateError> {
        let indexes = (0..self.keys().shards())
            .map(|shard| {
                let mut range = redis::cmd("ZRANGE");
                range.arg(self.keys().escalations(shard)).arg(0).arg(-1);
                range
            })
            .collect();
        let members: Vec<String> = self
            .query_each::<Vec<String>>(indexes)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let reads = members
            .iter()
            .map(|member| {
                let mut read = redis::cmd("HGETALL");
                read.arg(self.keys().escalation_of(member));
                read
            })
            .collect();
        let records: Vec<Vec<Value>> = self.query_each(reads).await?;
        Ok(records
            .iter()
            .filter_map(|fields| Escalation::from_fields(&parse_hash(fields)))
            .filter(|e| e.status == crate::escalation::PENDING)
            .collect())
    }

    async fn escalation(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Option<Escalation>, StateError> {
        let fields: Vec<Value> = self
            .query(redis::cmd("HGETALL").arg(self.keys().escalation(conversation)))
            .await?;
        Ok(Escalation::from_fields(&parse_hash(&fields)))
    }

    async fn waiting_messages(
        &self,
        conversation: &ConversationKey,
    ) -> Result<Vec<InboundMessage>, StateError> {
        let fields: Vec<Value> = self
            .query(redis::cmd("HGETALL").arg(self.keys().pending(conversation)))
            .await?;
        let mut waiting: Vec<(u64, InboundMessage)> = parse_hash(&fields)
            .into_iter()
            .filter_map(|(seq, json)| Some((seq.parse().ok()?, serde_json::from_str(&json).ok()?)))
            .collect();
        waiting.sort_by_key(|(seq, _)| *seq);
        Ok(waiting.into_iter().map(|(_, msg)| msg).collect())
    }

    async fn claim_escalation(
        &self,
        conversation: &ConversationKey,
        by: &str,
        takeover: bool,
    ) -> Result<Claim, StateError> {
        let key = self.keys().escalation(conversation);
        let result: Vec<Value> = self
            .invoke_acknowledged(
                &key,
                self.publishing()
                    .claim
                    .key(&key)
                    .arg(by)
                    .arg(u8::from(takeover))
                    .arg(crate::message::now_ms())
                    .arg(self.keys().events_channel_of(conversation))
                    .arg(conversation.as_str()),
            )
            .await?;
        let outcome = match result.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => return Ok(Claim::Unknown),
        };
        let record = match result.get(1) {
            Some(Value::Array(fields)) => Escalation::from_fields(&parse_hash(fields)),
            _ => None,
        };
        Ok(match (outcome.as_str(), record) {
            ("claimed", Some(e)) => Claim::Claimed(e),
            ("held", Some(e)) => Claim::HeldBy(e),
            ("not_pending", Some(e)) => Claim::NotPending(e),
            _ => Claim::Unknown,
        })
    }

    async fn reserve_person_message(
        &self,
        message: &PersonMessage,
        delivered_now: bool,
    ) -> Result<Reservation, StateError> {
        self.person_message_step(message, "reserve", delivered_now, "")
            .await
    }

    async fn finish_person_message(
        &self,
        message: &PersonMessage,
        outcome: Result<(), &str>,
    ) -> Result<Reservation, StateError> {
        match outcome {
            Ok(()) => self.person_message_step(message, "sent", false, "").await,
            Err(reason) => {
                self.person_message_step(message, "failed", false, reason)
                    .await
            }
        }
    }

    async fn resolve_escalation(
        &self,
        conversation: &ConversationKey,
        by: &str,
        note: &str,
    ) -> Result<Resolution, StateError> {
        let result: Vec<Value> = self
            .invoke(
                self.publishing()
                    .resolve
                    .key(self.keys().escalation(conversation))
                    .key(self.keys().session(conversation))
                    .key(self.keys().escalations_of(conversation.as_str()))
                    .key(self.keys().conversation(conversation))
                    .arg(crate::message::now_ms())
                    .arg(by)
                    .arg(note)
                    .arg(secs(self.limits.conversation_ttl))
                    .arg(secs(self.limits.escalation_retention))
                    .arg(conversation.as_str())
                    .arg(self.keys().events_channel_of(conversation)),
            )
            .await?;
        let record = |fields: Option<&Value>| match fields {
            Some(Value::Array(fields)) => Escalation::from_fields(&parse_hash(fields))
                .ok_or_else(|| StateError::Protocol("unreadable escalation record".into())),
            other => Err(StateError::Protocol(format!(
                "resolve script answered {other:?}"
            ))),
        };
        match result.first() {
            Some(Value::Int(1)) => Ok(Resolution::Resolved(record(result.get(1))?)),
            Some(Value::Int(2)) => Ok(Resolution::AlreadyResolved(record(result.get(1))?)),
            _ => Ok(Resolution::Unknown),
        }
    }
}
