//! What operators' tools read of a running deployment (`clawgate cluster status`, the load
//! test's monitor), through one typed API instead of raw Redis commands in every tool: a
//! replica's published counters, the inbox backlog, Redis's memory.

use super::connection::Connection;
pub use super::connection::{ClusterMaster, cluster_masters};
use super::keys::{self, KeyLayout};
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;

/// Field of `oc:metrics:gateway:{replica}` counting the turns the replica finished.
pub const HANDLED: &str = "handled";
/// Field counting the turns running now.
pub const RUNNING: &str = "running";
/// Field with the time (ms since the epoch) the replica last published.
pub const UPDATED_AT: &str = "updated_at";

/// Turns `replica_id` finished, as it last published them (`None` when it has not, yet); an
/// error when Redis did not answer, so the caller can reconnect.
pub async fn turns_handled(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    replica_id: &str,
) -> redis::RedisResult<Option<u64>> {
    redis::cmd("HGET")
        .arg(keys::replica_metrics(replica_id))
        .arg(HANDLED)
        .query_async(conn)
        .await
}

/// What a replica publishes about itself for the operators' tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCounters {
    /// Turns it finished since it started.
    pub handled: u64,
    /// Turns running now.
    pub running: u64,
}

/// How long a replica's published counters outlive its last publication: a stopped replica's
/// hash disappears by itself.
const COUNTERS_TTL_SECS: u64 = 60;

/// Publishes `counters` for `replica_id` (read back by [`turns_handled`]).
pub async fn publish_replica_counters(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    replica_id: &str,
    counters: ReplicaCounters,
) -> redis::RedisResult<()> {
    let key = keys::replica_metrics(replica_id);
    redis::pipe()
        .cmd("HSET")
        .arg(&key)
        .arg(HANDLED)
        .arg(counters.handled)
        .arg(RUNNING)
        .arg(counters.running)
        .arg(UPDATED_AT)
        .arg(crate::message::now_ms())
        .ignore()
        .cmd("EXPIRE")
        .arg(&key)
        .arg(COUNTERS_TTL_SECS)
        .ignore()
        .query_async(conn)
        .await
}

/// The inbox's consumer group as Redis sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Accepted messages no worker has taken yet.
    pub lag: Option<u64>,
    /// Taken and not finished.
    pub pending: Option<u64>,
}

/// The inbox backlog (`XINFO GROUPS` of every shard of the layout Redis records); all `None`
/// before the first replica made the group.
pub async fn inbox_backlog(conn: &mut (impl redis::aio::ConnectionLike + Send)) -> Backlog {
    let mut backlog = Backlog::default();
    for stream in recorded_layout(conn).await.inboxes() {
        let shard = shard_backlog(conn, &stream).await;
        let add = |total: Option<u64>, more: Option<u64>| match (total, more) {
            (None, None) => None,
            (total, more) => Some(total.unwrap_or(0) + more.unwrap_or(0)),
        };
        backlog = Backlog {
            lag: add(backlog.lag, shard.lag),
            pending: add(backlog.pending, shard.pending),
        };
    }
    backlog
}

/// The key layout the data in Redis was written with (unsharded when none is recorded).
pub async fn recorded_layout(conn: &mut (impl redis::aio::ConnectionLike + Send)) -> KeyLayout {
    let recorded: Option<String> = redis::cmd("GET")
        .arg(keys::LAYOUT)
        .query_async(conn)
        .await
        .ok()
        .flatten();
    KeyLayout::from_version(recorded.as_deref().unwrap_or("1"))
}

async fn shard_backlog(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    stream: &str,
) -> Backlog {
    let groups: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    let mut backlog = Backlog::default();
    for group in groups.into_iter().flatten() {
        let fields: HashMap<String, redis::Value> =
            redis::from_redis_value(group).unwrap_or_default();
        let number = |name: &str| {
            fields
                .get(name)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
        };
        if fields
            .get("name")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .is_some_and(|name| name == keys::GROUP)
        {
            backlog = Backlog {
                lag: number("lag"),
                pending: number("pending"),
            };
        }
    }
    backlog
}

/// Bytes Redis uses (`used_memory` of `INFO memory`).
pub async fn used_memory(conn: &mut (impl redis::aio::ConnectionLike + Send)) -> Option<u64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `INFO replication` of the server behind `conn`, as text (parsed by the caller's view).
pub async fn replication_info(conn: &mut MultiplexedConnection) -> Option<String> {
    redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .ok()
}

/// Whether the server behind `conn` answers `PING` (in a cluster: any one node).
pub async fn answers(conn: &mut Connection) -> bool {
    conn.query_any::<String>(&redis::cmd("PING")).await.is_ok()
}

/// What a sentinel knows of the primary it watches as `master_name` (`SENTINEL MASTER`), as
/// field/value strings (`num-slaves`, `num-other-sentinels`, `ip`, `port`, …).
pub async fn sentinel_master(
    conn: &mut MultiplexedConnection,
    master_name: &str,
) -> redis::RedisResult<Vec<String>> {
    redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(master_name)
        .query_async(conn)
        .await
}
