//! Consuming `oc:inbox` through the `workers` consumer group: read new entries, take over entries
//! a dead replica left pending (`XAUTOCLAIM`), keep the entries this replica holds fresh so a slow
//! turn is never taken from a living replica, acknowledge and trim finished entries, and move
//! entries that keep failing to `oc:deadletter`.

use crate::message::{InboundMessage, now_ms};
use crate::state::StateError;
use crate::state::keys::{DEADLETTER, GROUP, INBOX};
use crate::state::link::RedisLink;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};
use std::sync::Arc;
use std::time::Duration;

/// One inbox entry as delivered to this replica.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    /// Stream entry id.
    pub id: String,
    /// How many times the group has delivered it (1 on first read).
    pub deliveries: u64,
    /// The message and its sequence number, or why the entry cannot be read.
    pub content: Result<(InboundMessage, u64), String>,
}

impl InboxEntry {
    fn from_stream(entry: &StreamId, deliveries: u64) -> InboxEntry {
        let content = match (entry.get::<String>("m"), entry.get::<u64>("seq")) {
            (Some(json), Some(seq)) => serde_json::from_str::<InboundMessage>(&json)
                .map(|msg| (msg, seq))
                .map_err(|e| format!("unreadable message: {e}")),
            _ => Err("entry lacks the `m` or `seq` field".to_string()),
        };
        InboxEntry {
            id: entry.id.clone(),
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

    /// Creates the consumer group (and the stream) if missing, starting from the stream's first
    /// entry so messages accepted before any worker existed are processed.
    pub async fn ensure_group(&self) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(INBOX)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(self.fail(e)),
            _ => Ok(()),
        }
    }

    /// A connection of its own for blocking reads, so `BLOCK` never delays other commands.
    pub async fn read_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, StateError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.link.command_timeout()))
            .set_response_timeout(Some(block + self.link.command_timeout()));
        self.link
            .client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Reads up to `count` new entries, blocking up to `block` when there are none.
    pub async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        count: usize,
        block: Duration,
    ) -> Result<Vec<InboxEntry>, StateError> {
        let read: Result<Option<StreamReadReply>, redis::RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(INBOX)
            .arg(">")
            .query_async(conn)
            .await;
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
                    .flat_map(|k| k.ids.iter())
                    .map(|entry| InboxEntry::from_stream(entry, 1))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Takes over up to `count` entries that have been pending, unrefreshed, for at least
    /// `min_idle` (their replica is presumed dead), with their delivery counts.
    pub async fn claim_abandoned(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<InboxEntry>, StateError> {
        let mut conn = self.link.connection()?;
        let claimed: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
            .arg(INBOX)
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
                .arg(INBOX)
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
                .arg(INBOX)
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
            .map(|(entry, info)| InboxEntry::from_stream(entry, delivery_count(info).unwrap_or(1)))
            .collect())
    }

    /// Resets the idle time of entries this replica is working on (without counting a delivery),
    /// so `XAUTOCLAIM` elsewhere leaves them alone.
    pub async fn refresh(&self, ids: &[String]) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.link.connection()?;
        let _: Value = redis::cmd("XCLAIM")
            .arg(INBOX)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Gives up an entry this replica can no longer work on (its turn panicked or failed): its
    /// idle time is set past `claim_idle`, so the next `XAUTOCLAIM` anywhere takes it (counting
    /// a delivery, so an entry that keeps failing is dead-lettered after `maxDeliveries`).
    pub async fn release(&self, id: &str, claim_idle: Duration) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let _: Value = redis::cmd("XCLAIM")
            .arg(INBOX)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(claim_idle.as_millis() as u64 + 1)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Acknowledges a finished entry and deletes it, so the stream holds only unfinished work.
    pub async fn ack(&self, id: &str) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let _: Value = redis::pipe()
            .cmd("XACK")
            .arg(INBOX)
            .arg(GROUP)
            .arg(id)
            .cmd("XDEL")
            .arg(INBOX)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Moves an entry to `oc:deadletter` with `reason`, then acknowledges it, atomically.
    pub async fn dead_letter(
        &self,
        id: &str,
        deliveries: u64,
        raw_message: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        let mut conn = self.link.connection()?;
        let _: Value = redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(DEADLETTER)
            .arg("*")
            .arg("kind")
            .arg("inbound")
            .arg("reason")
            .arg(reason)
            .arg("entry_id")
            .arg(id)
            .arg("deliveries")
            .arg(deliveries)
            .arg("replica")
            .arg(&self.consumer)
            .arg("ts")
            .arg(now_ms())
            .arg("m")
            .arg(raw_message)
            .cmd("XACK")
            .arg(INBOX)
            .arg(GROUP)
            .arg(id)
            .cmd("XDEL")
            .arg(INBOX)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Inbox depth for metrics.
    pub async fn stats(&self) -> Result<InboxStats, StateError> {
        let mut conn = self.link.connection()?;
        let (length, summary): (u64, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(INBOX)
            .cmd("XPENDING")
            .arg(INBOX)
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let pending = match summary {
            Value::Array(items) => items.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        Ok(InboxStats { length, pending })
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
