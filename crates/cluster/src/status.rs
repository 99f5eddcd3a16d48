//! `clawgate cluster status`: what the state file says runs, checked live (pids, `/readyz`,
//! Redis), with the counters the replicas publish in Redis.

use crate::process;
use crate::state::ClusterState;
use crate::supervisor::{answers, readiness_url, redis_connection};
use clawgate_gateway::message::now_ms;
use clawgate_gateway::state::observe;
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
    let primary = connection.as_ref().map(|(_, address)| address.clone());
    let nodes = match &connection {
        Some((conn, address)) => redis_nodes(conn.clone(), address, &state).await,
        None => missing_nodes(&state, &[]),
    };
    let sentinels: Vec<Value> = futures_util::future::join_all(state.redis.sentinels.iter().map(
        |sentinel| async move {
            let up = crate::redis_group::sentinel_master(&sentinel.addr).await.is_some();
            json!({"name": sentinel.name, "addr": sentinel.addr, "pid": alive(sentinel.pid), "up": up})
        },
    ))
    .await;
    let counters = match connection {
        Some((conn, _)) => redis_counters(conn, &state).await,
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
            "mode": state.redis.mode,
            // The role of the Redis the replicas write to: the primary, once one answers.
            "role": redis_up.then_some("primary"),
            "primary": primary,
            "nodes": nodes,
            "sentinels": sentinels,
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

/// Every Redis server: the primary (`addr`), the replicas it reports, and managed servers it
/// does not (down, or still resynchronising), each with `role` and `lag`: how many bytes of
/// the primary's replication stream it has not applied yet (0 for the primary).
async fn redis_nodes(
    mut conn: redis::aio::MultiplexedConnection,
    primary: &str,
    state: &ClusterState,
) -> Vec<Value> {
    let info = observe::replication_info(&mut conn)
        .await
        .unwrap_or_default();
    let replication = Replication::parse(&info);
    let mut nodes = vec![json!({"addr": primary, "role": "primary", "lag": 0})];
    for replica in &replication.replicas {
        nodes.push(json!({
            "addr": replica.addr,
            "role": "replica",
            "lag": replication.offset.saturating_sub(replica.offset),
            "state": replica.state,
            "seconds_since_ack": replica.seconds_since_ack,
        }));
    }
    let listed: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["addr"].as_str().map(str::to_string))
        .collect();
    nodes.extend(missing_nodes(state, &listed));
    for node in &mut nodes {
        if let Some(managed) = state.redis.servers.iter().find(|s| node["addr"] == s.addr) {
            node["name"] = json!(managed.name);
            node["pid"] = json!(managed.pid.filter(|pid| process::signal(*pid, None)));
        }
    }
    nodes
}

/// Managed servers not among `listed`: not answering, or not (yet) replicating.
fn missing_nodes(state: &ClusterState, listed: &[String]) -> Vec<Value> {
    state
        .redis
        .servers
        .iter()
        .filter(|s| !listed.contains(&s.addr))
        .map(|s| json!({"addr": s.addr, "role": "unknown", "lag": null}))
        .collect()
}

/// The parts of `INFO replication` of a primary that tell its replicas' lag.
#[derive(Debug, Default, PartialEq)]
struct Replication {
    offset: u64,
    replicas: Vec<ReplicaLine>,
}

/// One `slaveN:ip=…,port=…,state=…,offset=…,lag=…` line.
#[derive(Debug, Default, PartialEq)]
struct ReplicaLine {
    addr: String,
    state: String,
    offset: u64,
    seconds_since_ack: u64,
}

impl Replication {
    fn parse(info: &str) -> Replication {
        let mut replication = Replication::default();
        for line in info.lines().map(str::trim) {
            if let Some(offset) = line.strip_prefix("master_repl_offset:") {
                replication.offset = offset.parse().unwrap_or(0);
                continue;
            }
            let Some((name, fields)) = line.split_once(':') else {
                continue;
            };
            if !name.starts_with("slave")
                || name
                    .strip_prefix("slave")
                    .is_some_and(|n| n.parse::<u32>().is_err())
            {
                continue;
            }
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .unwrap_or_default()
            };
            replication.replicas.push(ReplicaLine {
                addr: format!("{}:{}", field("ip"), field("port")),
                state: field("state").to_string(),
                offset: field("offset").parse().unwrap_or(0),
                seconds_since_ack: field("lag").parse().unwrap_or(0),
            });
        }
        replication
    }
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
    let backlog = observe::inbox_backlog(&mut conn).await;
    let mut handled = Vec::with_capacity(state.replicas.len());
    for replica in &state.replicas {
        handled.push(
            observe::turns_handled(&mut conn, &replica.id)
                .await
                .ok()
                .flatten(),
        );
    }
    RedisCounters {
        used_memory: observe::used_memory(&mut conn).await,
        inbox_lag: backlog.lag,
        inbox_pending: backlog.pending,
        handled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_reports_its_replicas_and_their_offsets() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=6401,state=online,offset=1200,lag=0\r\n\
            slave1:ip=127.0.0.1,port=6402,state=wait_bgsave,offset=0,lag=3\r\n\
            master_failover_state:no-failover\r\nmaster_repl_offset:1500\r\n";
        let replication = Replication::parse(info);
        assert_eq!(replication.offset, 1500);
        assert_eq!(
            replication.replicas,
            vec![
                ReplicaLine {
                    addr: "127.0.0.1:6401".into(),
                    state: "online".into(),
                    offset: 1200,
                    seconds_since_ack: 0
                },
                ReplicaLine {
                    addr: "127.0.0.1:6402".into(),
                    state: "wait_bgsave".into(),
                    offset: 0,
                    seconds_since_ack: 3
                },
            ]
        );
    }
}
