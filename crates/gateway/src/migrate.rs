//! Moving a deployment's state to another key layout or another Redis: `clawgate redis migrate`
//! takes what one Redis (layout 1, the unsharded layout clawgate always had) holds to a Redis
//! Cluster (layout 2, sharded), or to another layout on the same Redis, without losing a
//! conversation. Run with the replicas stopped: it refuses while a replica's heartbeat is fresh.
//!
//! Carried over: every conversation (history, session with its ordering counters, messages not
//! yet answered, escalation, live events), the dedupe markers, replies and delivery markers of
//! every message a history, a pending hash or the inbox names, the inbox (entries re-added to
//! their shard's stream, to be read afresh), the escalation index, the dead-letter stream,
//! identity links, audit keys and shared secrets. Not carried over: dedupe markers of messages
//! no history holds any more (a platform resending one of those would be answered again; they
//! are counted in the report), and what replicas rebuild (leases, breakers, rate budgets,
//! counters). On the same Redis the old keys are deleted afterwards; another source is left as
//! it was.

use crate::message::{Channel, ConversationKey, DedupeId, HistoryEntry, InboundMessage, now_ms};
use crate::state::connection::Connection;
use crate::state::keys::{self, KeyLayout};
use crate::state::link::classify;
use crate::state::{StateError, observe};
use serde::Serialize;
use std::collections::BTreeSet;

/// Keys read per `SCAN` round.
const SCAN_BATCH: usize = 1_000;
/// How recent a replica's heartbeat (`oc:replicas`) must be to count as running.
const REPLICA_ALIVE_MS: u64 = 15_000;

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MigrationReport {
    /// The layout the source held (`1`, or `2/<shards>`).
    pub from_layout: String,
    /// The layout the target holds now.
    pub to_layout: String,
    /// Conversations carried over.
    pub conversations: u64,
    /// Keys written to the target.
    pub keys: u64,
    /// Inbox entries re-added to their shard's stream.
    pub inbox_entries: u64,
    /// Dedupe, reply and delivery markers of messages no history names any more, left behind.
    pub markers_left: u64,
    /// Whether the old keys were deleted (source and target are the same Redis).
    pub in_place: bool,
}

/// Why a migration did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Replicas are running against the source.
    #[error(
        "replicas are running against the source ({0}); stop them first (or pass --force if they are gone)"
    )]
    ReplicasRunning(String),
    /// The target holds another deployment.
    #[error("the target already holds data in key layout {0}; migrate to an empty Redis")]
    TargetInUse(String),
    /// Redis failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where the data is and where it goes.
pub struct Migration {
    /// The source's connection.
    pub from: Connection,
    /// The target's connection (a clone of `from` to change the layout in place).
    pub to: Connection,
    /// Whether `to` is the same Redis as `from`.
    pub in_place: bool,
    /// The layout to write.
    pub layout: KeyLayout,
    /// Migrate even though replicas' heartbeats are fresh.
    pub force: bool,
}

impl Migration {
    /// Runs it (see the module documentation).
    pub async fn run(mut self) -> Result<MigrationReport, MigrateError> {
        let old = observe::recorded_layout(&mut self.from).await;
        let mut report = MigrationReport {
            from_layout: old.version(),
            to_layout: self.layout.version(),
            in_place: self.in_place,
            ..MigrationReport::default()
        };
        if !self.force {
            let alive: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(keys::REPLICAS)
                .arg(now_ms().saturating_sub(REPLICA_ALIVE_MS))
                .arg("+inf")
                .query_async(&mut self.from)
                .await
                .map_err(fail)?;
            if !alive.is_empty() {
                return Err(MigrateError::ReplicasRunning(alive.join(", ")));
            }
        }
        if self.in_place && old.version() == self.layout.version() {
            return Ok(report);
        }
        if !self.in_place {
            let recorded: Option<String> = redis::cmd("GET")
                .arg(keys::LAYOUT)
                .query_async(&mut self.to)
                .await
                .map_err(fail)?;
            if let Some(recorded) = recorded {
                return Err(MigrateError::TargetInUse(recorded));
            }
        }
        let mut moved: Vec<String> = Vec::new();

        // Conversations, found by any of their keys.
        let mut conversations = BTreeSet::new();
        for prefix in ["conv", "session", "pending", "escalation", "events"] {
            for key in self.scan(&format!("oc:{prefix}:*")).await? {
                if let Some(name) = old.conversation_of(&key) {
                    conversations.extend(ConversationKey::parse(&name));
                }
            }
        }
        let mut messages: BTreeSet<(ConversationKey, String)> = BTreeSet::new();
        for conversation in &conversations {
            let history: Vec<String> = redis::cmd("LRANGE")
                .arg(old.conversation(conversation))
                .arg(0)
                .arg(-1)
                .query_async(&mut self.from)
                .await
                .map_err(fail)?;
            let pending: Vec<String> = redis::cmd("HVALS")
                .arg(old.pending(conversation))
                .query_async(&mut self.from)
                .await
                .map_err(fail)?;
            for entry in history {
                if let Ok(entry) = serde_json::from_str::<HistoryEntry>(&entry)
                    && !entry.message_id.is_empty()
                {
                    messages.insert((conversation.clone(), entry.message_id));
                }
            }
            for message in pending {
                if let Ok(message) = serde_json::from_str::<InboundMessage>(&message) {
                    messages.insert((conversation.clone(), message.message_id));
                }
            }
            for (from, to) in [
                (
                    old.conversation(conversation),
                    self.layout.conversation(conversation),
                ),
                (old.session(conversation), self.layout.session(conversation)),
                (old.pending(conversation), self.layout.pending(conversation)),
                (
                    old.escalation(conversation),
                    self.layout.escalation(conversation),
                ),
                (old.events(conversation), self.layout.events(conversation)),
            ] {
                if self.copy(&from, &to).await? {
                    report.keys += 1;
                    moved.push(from);
                }
            }
            report.conversations += 1;
        }

        // The inbox: entries re-added to their shard, to be read afresh.
        for stream in old.inboxes() {
            if self.in_place && self.layout.inboxes().contains(&stream) {
                continue;
            }
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut self.from)
                .await
                .map_err(fail)?;
            for entry in entries.ids {
                let (Some(json), Some(seq)) =
                    (entry.get::<String>("m"), entry.get::<String>("seq"))
                else {
                    continue;
                };
                let Ok(message) = serde_json::from_str::<InboundMessage>(&json) else {
                    continue;
                };
                let conversation = message.conversation();
                let _: String = redis::cmd("XADD")
                    .arg(self.layout.inbox_of(&conversation))
                    .arg("*")
                    .arg("v")
                    .arg(
                        entry
                            .get::<String>("v")
                            .unwrap_or_else(|| keys::ENTRY_VERSION.into()),
                    )
                    .arg("seq")
                    .arg(seq)
                    .arg("id")
                    .arg(&message.message_id)
                    .arg("m")
                    .arg(&json)
                    .query_async(&mut self.to)
                    .await
                    .map_err(fail)?;
                messages.insert((conversation, message.message_id));
                report.inbox_entries += 1;
            }
            moved.push(stream);
        }

        // The markers of every message named above.
        for (conversation, message_id) in &messages {
            let Some(channel) =
                Channel::named(conversation.as_str().split(':').next().unwrap_or(""))
            else {
                continue;
            };
            let user = conversation.as_str().split_once(':').map_or("", |(_, u)| u);
            let id = DedupeId::new(channel, user, message_id);
            for (from, to) in [
                (old.seen(&id), self.layout.seen(&id)),
                (old.replied(&id), self.layout.replied(&id)),
                (old.delivered(&id), self.layout.delivered(&id)),
            ] {
                if self.copy(&from, &to).await? {
                    report.keys += 1;
                    moved.push(from);
                }
            }
        }
        for prefix in ["seen", "replied", "delivered"] {
            let all = self.scan(&format!("oc:{prefix}:*")).await?;
            report.markers_left += all.iter().filter(|k| !moved.contains(k)).count() as u64;
        }

        // The escalation index, per shard.
        for shard in 0..old.shards() {
            let index = old.escalations(shard);
            if self.in_place
                && (0..self.layout.shards()).any(|s| self.layout.escalations(s) == index)
            {
                continue;
            }
            let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&index)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut self.from)
                .await
                .map_err(fail)?;
            for (member, score) in members {
                let _: i64 = redis::cmd("ZADD")
                    .arg(self.layout.escalations_of(&member))
                    .arg(score)
                    .arg(&member)
                    .query_async(&mut self.to)
                    .await
                    .map_err(fail)?;
            }
            moved.push(index);
        }

        // Keys named the same in every layout.
        if !self.in_place {
            let mut same = vec![keys::DEADLETTER.to_string()];
            for pattern in ["oc:identity:*", "oc:auditkey:*", "oc:secret:*"] {
                same.extend(self.scan(pattern).await?);
            }
            for key in same {
                if self.copy(&key, &key).await? {
                    report.keys += 1;
                }
            }
        }
        let _: () = redis::cmd("SET")
            .arg(keys::LAYOUT)
            .arg(self.layout.version())
            .query_async(&mut self.to)
            .await
            .map_err(fail)?;
        if self.in_place {
            for key in moved {
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut self.from)
                    .await
                    .map_err(fail)?;
            }
        }
        Ok(report)
    }

    async fn scan(&mut self, pattern: &str) -> Result<Vec<String>, StateError> {
        self.from
            .scan_match(pattern, SCAN_BATCH)
            .await
            .map_err(|e| classify(&e))
    }

    /// Copies `from` (source) to `to` (target) with its time to live; false when `from` does
    /// not exist.
    async fn copy(&mut self, from: &str, to: &str) -> Result<bool, StateError> {
        if self.in_place && from == to {
            return Ok(false);
        }
        let dumped: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(from)
            .query_async(&mut self.from)
            .await
            .map_err(fail)?;
        let Some(dumped) = dumped else {
            return Ok(false);
        };
        let ttl: i64 = redis::cmd("PTTL")
            .arg(from)
            .query_async(&mut self.from)
            .await
            .map_err(fail)?;
        let _: () = redis::cmd("RESTORE")
            .arg(to)
            .arg(ttl.max(0))
            .arg(dumped)
            .arg("REPLACE")
            .query_async(&mut self.to)
            .await
            .map_err(fail)?;
        Ok(true)
    }
}

fn fail(e: redis::RedisError) -> StateError {
    classify(&e)
}
