//! `clawgate cluster status`: what the state file says runs, checked live (pids, `/readyz`,
//! Redis), with the counters the replicas publish in Redis.

use crate::process;
use crate::state::ClusterState;
use crate::supervisor::{answers, readiness_url, redis_connection};
use clawgate_gateway::message::now_ms;
use clawgate_gateway::state::keys;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// The status report of the cluster whose state is in `state_dir`, as JSON:
/// `{"replicas": [{"id", "pid", "port", "healthy", …}], "redis": {"up", …}, "nginx": {"pid", …}}`.
pub async fn report(state_dir: &Path) -> std::io::Result<Value> {
    let state = ClusterState::read(state_dir)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .no_proxy()
        .build()
        .map_err(std::io::Error::other)?;
    let alive = |pid: Option<u32>| pid.filter(|pid| process::signal(*pid, None));
    let connection = redis_connection(&state.redis.url).await;
    let redis_up = connection.is_some();
    let counters = match connection {
        Some(conn) => redis_counters(conn, &state).await,
        None => RedisCounters {
            handled: vec![None; state.replicas.len()],
            ..RedisCounters::default()
        },
    };
    let mut replicas = Vec::new();
    for (replica, handled) in state.replicas.iter().zip(&counters.handled) {
        let pid = alive(replica.process.pid);
        let healthy = pid.is_some() && answers(&http, &readiness_url(replica.port)).await;
        replicas.push(json!({
            "id": replica.id,
            "pid": pid,
            "port": replica.port,
            "healthy": healthy,
            "uptime_s": pid.map(|_| now_ms().saturating_sub(replica.process.started_at_ms) / 1000),
            "restarts": replica.process.restarts,
            "handled": handled,
        }));
    }
    let nginx_pid = alive(state.nginx.pid);
    Ok(json!({
        "state_dir": state_dir.display().to_string(),
        "listen": state.listen,
        "supervisor": {"pid": state.supervisor_pid, "running": process::signal(state.supervisor_pid, None)},
        "replicas": replicas,
        "redis": {
            "up": redis_up,
            "url": state.redis.url,
            "managed": state.redis.managed,
            "pid": alive(state.redis.pid),
            "used_memory_bytes": counters.used_memory,
            "inbox_lag": counters.inbox_lag,
            "inbox_pending": counters.inbox_pending,
        },
        "nginx": {
            "pid": nginx_pid,
            "running": nginx_pid.is_some(),
            "balancer_healthz": answers(&http, &format!("http://{}/healthz", state.listen)).await,
        },
    }))
}

/// What Redis knows about the cluster; `None` where it could not say.
#[derive(Debug, Default)]
struct RedisCounters {
    used_memory: Option<u64>,
    inbox_lag: Option<u64>,
    inbox_pending: Option<u64>,
    /// Turns each replica finished, in replica order.
    handled: Vec<Option<u64>>,
}

async fn redis_counters(
    mut conn: redis::aio::MultiplexedConnection,
    state: &ClusterState,
) -> RedisCounters {
    let mut counters = RedisCounters {
        handled: vec![None; state.replicas.len()],
        ..RedisCounters::default()
    };
    let info: redis::RedisResult<String> = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await;
    counters.used_memory = info.ok().and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
    });
    let groups: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys::INBOX)
        .query_async(&mut conn)
        .await;
    if let Ok(groups) = groups {
        for group in groups {
            let fields: std::collections::HashMap<String, redis::Value> =
                redis::from_redis_value(group).unwrap_or_default();
            let number = |name: &str| {
                fields
                    .get(name)
                    .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
            };
            counters.inbox_lag = number("lag");
            counters.inbox_pending = number("pending");
        }
    }
    for (slot, replica) in counters.handled.iter_mut().zip(&state.replicas) {
        let handled: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
            .arg(keys::replica_metrics(&replica.id))
            .arg("handled")
            .query_async(&mut conn)
            .await;
        *slot = handled.ok().flatten();
    }
    counters
}
