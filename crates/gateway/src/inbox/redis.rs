//! Consuming the inbox through the `workers` consumer group: read new entries, take over entries
//! a dead replica left pending (`XAUTOCLAIM`), keep the entries this replica holds fresh so a slow
//! turn is never taken from a living replica, acknowledge and trim finished entries, and move
//! entries that keep failing to `oc:deadletter`.
//!
//! The inbox is one stream (`oc:inbox`) in the unsharded layout and one stream per shard in the
//! sharded one; every replica reads every shard through the same group, so no shard is left
//! unread when a replica dies and each entry goes to one consumer at a time. On one Redis a
//! single blocking read covers all shards; in a cluster each shard has its own blocking reader
//! (one read may not span slots), on a connection of its own to the shard's master.

use crate::message::{InboundMessage, now_ms};
pub use crate::state::EntryId;
use crate::state::StateError;
use crate::state::connection::Connection;
use crate::state::keys::{DEADLETTER, GROUP};
use crate::state::link::RedisLink;
use redis::AsyncConnectionConfig;
use redis::Value;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One inbox entry as delivered to this replica.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    /// Where the entry is.
    pub id: EntryId,
    /// How many times the group has delivered it (1 on first read).
    pub deliveries: u64,
    /// The message and its sequence number, or why the entry cannot be read.
    pub content: Result<(InboundMessage, u64), String>,
}

impl InboxEntry {
    fn from_stream(stream: &str, entry: &StreamId, deliveries: u64) -> InboxEntry {
        let content = match (entry.get::<String>("m"), entry.get::<u64>("seq")) {
            (Some(json), Some(seq)) => serde_json::from_str::<InboundMessage>(&json)
                .map(|msg| (msg, seq))
                .map_err(|e| format!("unreadable message: {e}")),
            _ => Err("entry lacks the `m` or `seq` field".to_string()),
        };
        InboxEntry {
            id: EntryId {
                stream: stream.to_string(),
                id: entry.id.clone(),
            },
            deliveries,
            content,
        }
    }
}

/// Inbox depth, sampled for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxStats {
    /// Entries in the stream (undelivered + pending, since finished entries are deleted).
    pub length: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
}

/// This replica's consumer of the inbox.
pub struct RedisInbox {
    link: Arc<RedisLink>,
    /// Consumer name in the group: the replica id.
    consumer: String,
}

impl RedisInbox {
    /// The consumer `consumer` (the replica id) over `link`.
    pub fn new(link: Arc<RedisLink>, consumer: &str) -> RedisInbox {
        RedisInbox {
            link,
            consumer: consumer.to_string(),
        }
    }

    fn fail(&self, e: redis::RedisError) -> StateError {
        self.link.failed(&e)
    }

    /// The inbox streams, by shard.
    pub fn streams(&self) -> Vec<String> {
        self.link.keys().inboxes()
    }

    /// How the streams are read: all at once by one blocking read (one Redis), or each by a
    /// reader of its own (a cluster, where one read may not span slots).
    pub fn readers(&self) -> Vec<Vec<String>> {
        match self.link.cluster() {
            Some(_) => self.streams().into_iter().map(|s| vec![s]).collect(),
            None => vec![self.streams()],
        }
    }

    /// Creates the consumer groups (and the streams) if missing, starting from each stream's
    /// first entry so messages accepted before any worker existed are processed.
    pub async fn ensure_group(&self) -> Result<(), StateError> {
        let conn = self.link.connection()?;
        let creations = self.streams().into_iter().map(|stream| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut conn)
                    .await
            }
        });
        for created in futures_util::future::join_all(creations).await {
            match created {
                Err(e) if e.code() != Some("BUSYGROUP") => return Err(self.fail(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// A connection of its own for blocking reads, so `BLOCK` never delays other commands (in a
    /// cluster: a cluster connection of its own, which reaches the master owning the shard and
    /// follows it when the slot moves).
    pub async fn read_connection(&self, block: Duration) -> Result<Connection, StateError> {
        let timeout = block + self.link.command_timeout();
        if let Some(cluster) = self.link.cluster() {
            return cluster
                .connect(timeout)
                .await
                .map(Connection::Cluster)
                .map_err(|e| self.fail(e));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.link.command_timeout()))
            .set_response_timeout(Some(timeout));
        self.link
            .client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map(Connection::Direct)
            .map_err(|e| self.fail(e))
    }

    /// Reads up to `count` new entries of `streams`, blocking up to `block` when there are none.
    pub async fn read(
        &self,
        conn: &mut Connection,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> Result<Vec<InboxEntry>, StateError> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(streams);
        for _ in streams {
            command.arg(">");
        }
        let read: Result<Option<StreamReadReply>, redis::RedisError> =
            command.query_async(conn).await;
        let reply = match read {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream or group vanished (Redis restarted without persistence).
                self.ensure_group().await?;
                None
            }
            Err(e) => return Err(self.fail(e)),
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .iter()
                    .flat_map(|k| k.ids.iter().map(|entry| (k.key.as_str(), entry)))
                    .map(|(stream, entry)| InboxEntry::from_stream(stream, entry, 1))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Takes over up to `count` entries that have been pending, unrefreshed, for at
    /// least `min_idle` (their replica is presumed dead), with their delivery counts.
    pub async fn claim_abandoned(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<InboxEntry>, StateError> {
        let mut entries = Vec::new();
        for stream in self.streams() {
            let room = count.saturating_sub(entries.len());
            if room == 0 {
                break;
            }
            entries.extend(self.claim_in(&stream, min_idle, room).await?);
        }
        Ok(entries)
    }

    async fn claim_in(
        &self,
        stream: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<InboxEntry>, StateError> {
        let mut conn = self.link.connection()?;
        let claimed: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
        {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(e)),
        };
        if !claimed.deleted_ids.is_empty() {
            // Pending ids whose entries were trimmed away: nothing left to process.
            let _: Result<i64, _> = redis::cmd("XACK")
                .arg(stream)
                .arg(GROUP)
                .arg(&claimed.deleted_ids)
                .query_async(&mut conn)
                .await;
        }
        if claimed.claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for entry in &claimed.claimed {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(GROUP)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let pending: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(claimed
            .claimed
            .iter()
            .zip(pending.iter())
            .map(|(entry, info)| {
                InboxEntry::from_stream(stream, entry, delivery_count(info).unwrap_or(1))
            })
            .collect())
    }

    /// Resets the idle time of entries this replica is working on (without counting a delivery),
    /// so `XAUTOCLAIM` elsewhere leaves them alone.
    pub async fn refresh(&self, ids: &[EntryId]) -> Result<(), StateError> {
        let mut by_stream: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for id in ids {
            by_stream.entry(&id.stream).or_default().push(&id.id);
        }
        let conn = self.link.connection()?;
        let refreshes = by_stream.into_iter().map(|(stream, ids)| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(ids)
                    .arg("JUSTID")
                    .query_async::<Value>(&mut conn)
                    .await
            }
        });
        for refreshed in futures_util::future::join_all(refreshes).await {
            refreshed.map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Gives up an entry this replica can no longer work on (its turn panicked or failed): its
    /// idle time is set past `claim_idle`, so the next `XAUTOCLAIM` anywhere takes it (counting
    /// a delivery, so an entry that keeps failing is dead-lettered after `maxDeliveries`).
    pub async fn release(&self, id: &EntryId, claim_idle: Duration) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let _: Value = redis::cmd("XCLAIM")
            .arg(&id.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(&id.id)
            .arg("IDLE")
            .arg(claim_idle.as_millis() as u64 + 1)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Acknowledges a finished entry and deletes it, so the stream holds only unfinished work.
    pub async fn ack(&self, id: &EntryId) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let _: Value = redis::pipe()
            .cmd("XACK")
            .arg(&id.stream)
            .arg(GROUP)
            .arg(&id.id)
            .cmd("XDEL")
            .arg(&id.stream)
            .arg(&id.id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Copies an entry to `oc:deadletter` with `reason`, then acknowledges it: in that order,
    /// so a crash between the two leaves the entry pending (and dead-lettered again by whoever
    /// claims it), never lost. (The dead-letter stream has a slot of its own in a cluster, so the
    /// two cannot be one transaction.)
    pub async fn dead_letter(
        &self,
        id: &EntryId,
        deliveries: u64,
        raw_message: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let _: Value = redis::cmd("XADD")
            .arg(DEADLETTER)
            .arg("*")
            .arg("kind")
            .arg("inbound")
            .arg("reason")
            .arg(reason)
            .arg("entry_id")
            .arg(&id.id)
            .arg("deliveries")
            .arg(deliveries)
            .arg("replica")
            .arg(&self.consumer)
            .arg("ts")
            .arg(now_ms())
            .arg("m")
            .arg(raw_message)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        self.ack(id).await
    }

    /// Inbox depth for metrics, over all shards.
    pub async fn stats(&self) -> Result<InboxStats, StateError> {
        let conn = self.link.connection()?;
        let samples = self.streams().into_iter().map(|stream| {
            let mut conn = conn.clone();
            async move {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&stream)
                    .cmd("XPENDING")
                    .arg(&stream)
                    .arg(GROUP)
                    .query_async::<(u64, Value)>(&mut conn)
                    .await
            }
        });
        let mut total = InboxStats {
            length: 0,
            pending: 0,
        };
        for sample in futures_util::future::join_all(samples).await {
            let (length, summary) = sample.map_err(|e| self.fail(e))?;
            total.length += length;
            total.pending += match summary {
                Value::Array(items) => items.first().and_then(as_u64).unwrap_or(0),
                _ => 0,
            };
        }
        Ok(total)
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    redis::from_redis_value_ref::<u64>(value).ok()
}

/// The delivery count out of an `XPENDING key group id id 1` reply: `[[id, consumer, idle, n]]`.
fn delivery_count(info: &Value) -> Option<u64> {
    match info {
        Value::Array(rows) => match rows.first() {
            Some(Value::Array(fields)) => fields.get(3).and_then(as_u64),
            _ => None,
        },
        _ => None,
    }
}
