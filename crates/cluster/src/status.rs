//! `clawgate cluster status`: what the state file says runs, checked live (pids, `/readyz`,
//! Redis), with the counters the replicas publish in Redis.

use crate::process;
use crate::state::ClusterState;
use crate::supervisor::{answers, readiness_url, redis_connection, state_connection};
use clawgate_gateway::config::redis::redact;
use clawgate_gateway::message::now_ms;
use clawgate_gateway::state::connection::Connection;
use clawgate_gateway::state::keys;
use clawgate_gateway::state::observe;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// A running cluster as `cluster status` shows it; `--json` prints it serialized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Where `cluster up` keeps its state file, logs and generated configs.
    pub state_dir: String,
    /// Where nginx listens.
    pub listen: String,
    /// The process that keeps the others running.
    pub supervisor: SupervisorStatus,
    /// In the order `cluster up` numbered them.
    pub replicas: Vec<ReplicaStatus>,
    /// Where the replicas keep their state.
    pub redis: RedisStatus,
    /// The balancer in front of the replicas.
    pub nginx: NginxStatus,
}

/// The `cluster up` process that keeps the others running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// As its state file records it.
    pub pid: u32,
    /// That pid is alive.
    pub running: bool,
}

/// One gateway replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Its `gateway.replicaId`.
    pub id: String,
    /// `None` when its process is not running.
    pub pid: Option<u32>,
    /// Its own HTTP port on 127.0.0.1 (nginx's upstream).
    pub port: u16,
    /// Running and answering `/readyz` (overload aside).
    pub healthy: bool,
    /// Seconds since its current process started; `None` when not running.
    pub uptime_s: Option<u64>,
    /// Times the supervisor restarted it.
    pub restarts: u32,
    /// Turns it finished, as it counts them in Redis; `None` when Redis could not say.
    pub handled: Option<u64>,
}

/// The Redis the replicas keep their state in, and its servers and sentinels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisStatus {
    /// The replicas' Redis (its primary, with Sentinel) answers.
    pub up: bool,
    /// `single` or `sentinel`: how the cluster was started (or, for an external Redis, its URL).
    pub mode: String,
    /// The role of the Redis the replicas write to: the primary, once one answers.
    pub role: Option<String>,
    /// The primary's address, once one answers.
    pub primary: Option<String>,
    /// Every Redis server, primary first.
    pub nodes: Vec<RedisNode>,
    /// The managed sentinels (none without Sentinel).
    pub sentinels: Vec<SentinelStatus>,
    /// As configured; may hold a password (see [`redact`]).
    pub url: String,
    /// Started by `cluster up` (rather than an external Redis).
    pub managed: bool,
    /// The managed lone Redis's pid (`None` with Sentinel: see `nodes`).
    pub pid: Option<u32>,
    /// The primary's `used_memory`.
    pub used_memory_bytes: Option<u64>,
    /// Inbox entries no worker has read yet.
    pub inbox_lag: Option<u64>,
    /// Inbox entries read but not yet finished.
    pub inbox_pending: Option<u64>,
    /// A Redis Cluster's masters, with their share of the work (none for one Redis).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masters: Vec<MasterStatus>,
}

/// A master of a Redis Cluster and its share of the work.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MasterStatus {
    /// `host:port`.
    pub addr: String,
    /// The managed server's name (`redis-1`, …), when `cluster up` started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Slots it serves.
    pub slots: u32,
    /// The same, as ranges (`0-5460`).
    pub slot_ranges: Vec<String>,
    /// Its replicas' `host:port`.
    pub replicas: Vec<String>,
    /// Its `used_memory`.
    pub used_memory_bytes: Option<u64>,
    /// Inbox shards whose slot it serves.
    pub inbox_shards: u32,
    /// Entries those shards hold now.
    pub inbox_entries: u64,
}

/// One Redis server: the primary, a replica it reports, or a managed server it does not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedisNode {
    /// `host:port`.
    pub addr: String,
    /// `primary`, `replica` or `unknown` (not answering, or not replicating yet).
    pub role: String,
    /// Bytes of the primary's replication stream not applied yet (0 for the primary).
    pub lag: Option<u64>,
    /// The replication link's state as the primary reports it (`online`, `wait_bgsave`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Seconds since the replica last acknowledged the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_since_ack: Option<u64>,
    /// The managed server's name (`redis-1`, …); absent for one `cluster up` did not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A managed server's pid while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// One managed sentinel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentinelStatus {
    /// `sentinel-1`, …
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// While it runs.
    pub pid: Option<u32>,
    /// Answers and names a primary.
    pub up: bool,
}

/// The balancer in front of the replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NginxStatus {
    /// While it runs.
    pub pid: Option<u32>,
    /// Its pid is alive.
    pub running: bool,
    /// nginx's own `/healthz` answers.
    pub balancer_healthz: bool,
}

impl ClusterStatus {
    /// Replicas listed, and how many of them are healthy.
    pub fn healthy_replicas(&self) -> (usize, usize) {
        let healthy = self.replicas.iter().filter(|r| r.healthy).count();
        (self.replicas.len(), healthy)
    }
}

/// The status of the cluster whose state is in `state_dir`: what the state file says runs,
/// checked live (pids, `/readyz`, Redis), with the counters the replicas publish in Redis.
pub async fn report(state_dir: &Path) -> std::io::Result<ClusterStatus> {
    let state = ClusterState::read(state_dir)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .no_proxy()
        .build()
        .map_err(std::io::Error::other)?;
    let alive = |pid: Option<u32>| pid.filter(|pid| process::signal(*pid, None));
    let cluster = state.redis.url.contains("+cluster://");
    let state_conn = state_connection(&state.redis.url).await;
    // The primary (one Redis, or the one Sentinel names): a cluster has none.
    let connection = match cluster {
        true => None,
        false => redis_connection(&state.redis.url).await,
    };
    let redis_up = state_conn.is_some();
    let masters = match &state_conn {
        Some(conn) if cluster => cluster_masters(conn.clone(), &state).await,
        _ => Vec::new(),
    };
    let primary = connection.as_ref().map(|(_, address)| address.clone());
    let nodes = match &connection {
        Some((conn, address)) => redis_nodes(conn.clone(), address, &state).await,
        None if cluster => cluster_nodes(&masters, &state),
        None => missing_nodes(&state, &[]),
    };
    let sentinels =
        futures_util::future::join_all(state.redis.sentinels.iter().map(|sentinel| async move {
            SentinelStatus {
                name: sentinel.name.clone(),
                addr: sentinel.addr.clone(),
                pid: alive(sentinel.pid),
                up: crate::redis_group::sentinel_master(&sentinel.addr)
                    .await
                    .is_some(),
            }
        }))
        .await;
    let mut counters = match state_conn {
        Some(conn) => redis_counters(conn, &state).await,
        None => RedisCounters {
            handled: vec![None; state.replicas.len()],
            ..RedisCounters::default()
        },
    };
    if cluster {
        counters.used_memory = masters.iter().map(|m| m.used_memory_bytes).sum();
    }
    let mut replicas = Vec::new();
    for (replica, handled) in state.replicas.iter().zip(&counters.handled) {
        let pid = alive(replica.process.pid);
        let healthy = pid.is_some() && answers(&http, &readiness_url(replica.port)).await;
        replicas.push(ReplicaStatus {
            id: replica.id.clone(),
            pid,
            port: replica.port,
            healthy,
            uptime_s: pid.map(|_| now_ms().saturating_sub(replica.process.started_at_ms) / 1000),
            restarts: replica.process.restarts,
            handled: *handled,
        });
    }
    let nginx_pid = alive(state.nginx.pid);
    Ok(ClusterStatus {
        state_dir: state_dir.display().to_string(),
        listen: state.listen.clone(),
        supervisor: SupervisorStatus {
            pid: state.supervisor_pid,
            running: process::signal(state.supervisor_pid, None),
        },
        replicas,
        redis: RedisStatus {
            up: redis_up,
            mode: state.redis.mode.clone(),
            role: (redis_up && !cluster).then(|| "primary".to_string()),
            primary,
            nodes,
            sentinels,
            url: state.redis.url.clone(),
            managed: state.redis.managed,
            pid: alive(state.redis.pid),
            used_memory_bytes: counters.used_memory,
            inbox_lag: counters.inbox_lag,
            inbox_pending: counters.inbox_pending,
            masters,
        },
        nginx: NginxStatus {
            pid: nginx_pid,
            running: nginx_pid.is_some(),
            balancer_healthz: answers(&http, &format!("http://{}/healthz", state.listen)).await,
        },
    })
}

/// `cluster status` without `--json`: one line per part, passwords redacted.
impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |v: bool| if v { "yes" } else { "no" };
        let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let pid = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        writeln!(
            f,
            "nginx      pid {}  listening on {}  balancer /healthz {}",
            pid(self.nginx.pid),
            self.listen,
            yes_no(self.nginx.balancer_healthz)
        )?;
        let redis = &self.redis;
        writeln!(
            f,
            "redis      up {}  {}  used memory {} bytes  inbox lag {}  pending {}",
            yes_no(redis.up),
            redact(&redis.url),
            or_dash(redis.used_memory_bytes),
            or_dash(redis.inbox_lag),
            or_dash(redis.inbox_pending),
        )?;
        if let Some(primary) = &redis.primary {
            writeln!(f, "           replicas write to the primary at {primary}")?;
        }
        for node in &redis.nodes {
            writeln!(
                f,
                "  {:<8} {}  {}  lag {} bytes  pid {}",
                node.name.as_deref().unwrap_or("redis"),
                node.addr,
                node.role,
                or_dash(node.lag),
                pid(node.pid),
            )?;
        }
        for master in &redis.masters {
            writeln!(
                f,
                "  master {}  slots {} ({})  inbox shards {}  entries {}  memory {} bytes  replicas {}",
                master.addr,
                master.slots,
                master.slot_ranges.join(","),
                master.inbox_shards,
                master.inbox_entries,
                or_dash(master.used_memory_bytes),
                master.replicas.join(","),
            )?;
        }
        for sentinel in &redis.sentinels {
            writeln!(
                f,
                "  {:<8} {}  up {}  pid {}",
                sentinel.name,
                sentinel.addr,
                yes_no(sentinel.up),
                pid(sentinel.pid),
            )?;
        }
        for r in &self.replicas {
            writeln!(
                f,
                "{:<10} pid {}  port {}  healthy {}  uptime {} s  restarts {}  turns handled {}",
                r.id,
                pid(r.pid),
                r.port,
                yes_no(r.healthy),
                or_dash(r.uptime_s),
                r.restarts,
                or_dash(r.handled),
            )?;
        }
        Ok(())
    }
}

/// Every Redis server: the primary (`addr`), the replicas it reports, and managed servers it
/// does not (down, or still resynchronising).
async fn redis_nodes(
    mut conn: redis::aio::MultiplexedConnection,
    primary: &str,
    state: &ClusterState,
) -> Vec<RedisNode> {
    let info = observe::replication_info(&mut conn)
        .await
        .unwrap_or_default();
    let replication = Replication::parse(&info);
    let mut nodes = vec![RedisNode {
        addr: primary.to_string(),
        role: "primary".into(),
        lag: Some(0),
        ..RedisNode::default()
    }];
    for replica in &replication.replicas {
        nodes.push(RedisNode {
            addr: replica.addr.clone(),
            role: "replica".into(),
            lag: Some(replication.offset.saturating_sub(replica.offset)),
            state: Some(replica.state.clone()),
            seconds_since_ack: Some(replica.seconds_since_ack),
            ..RedisNode::default()
        });
    }
    let listed: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    nodes.extend(missing_nodes(state, &listed));
    with_managed_processes(nodes, state)
}

/// A cluster's masters (from `CLUSTER NODES`), each with its memory and its share of the
/// inbox: the shards whose slot it serves, in the key layout Redis records.
async fn cluster_masters(mut conn: Connection, state: &ClusterState) -> Vec<MasterStatus> {
    let Ok(nodes) = conn
        .query_any::<String>(redis::cmd("CLUSTER").arg("NODES"))
        .await
    else {
        return Vec::new();
    };
    let layout = observe::recorded_layout(&mut conn).await;
    let mut shards = Vec::with_capacity(layout.shards());
    for stream in layout.inboxes() {
        let length: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        shards.push((keys::slot(&stream), length));
    }
    let mut masters = Vec::new();
    for master in observe::cluster_masters(&nodes) {
        let mut direct = match redis::Client::open(format!("redis://{}", master.addr)) {
            Ok(client) => client.get_multiplexed_async_connection().await.ok(),
            Err(_) => None,
        };
        let used_memory = match &mut direct {
            Some(direct) => observe::used_memory(direct).await,
            None => None,
        };
        let served: Vec<u64> = shards
            .iter()
            .filter(|(slot, _)| master.serves(*slot))
            .map(|(_, length)| *length)
            .collect();
        masters.push(MasterStatus {
            name: state
                .redis
                .servers
                .iter()
                .find(|s| s.addr == master.addr)
                .map(|s| s.name.clone()),
            addr: master.addr.clone(),
            slots: master.slot_count(),
            slot_ranges: master
                .slots
                .iter()
                .map(|(low, high)| format!("{low}-{high}"))
                .collect(),
            replicas: master.replicas.clone(),
            used_memory_bytes: used_memory,
            inbox_shards: served.len() as u32,
            inbox_entries: served.iter().sum(),
        });
    }
    masters
}

/// A cluster's servers: each master and its replicas, then managed servers in neither role
/// (down, or not yet rejoined).
fn cluster_nodes(masters: &[MasterStatus], state: &ClusterState) -> Vec<RedisNode> {
    let mut nodes = Vec::new();
    for master in masters {
        nodes.push(RedisNode {
            addr: master.addr.clone(),
            role: "master".into(),
            ..RedisNode::default()
        });
        for replica in &master.replicas {
            nodes.push(RedisNode {
                addr: replica.clone(),
                role: "replica".into(),
                ..RedisNode::default()
            });
        }
    }
    let listed: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    nodes.extend(missing_nodes(state, &listed));
    with_managed_processes(nodes, state)
}

/// `nodes` with the name and live pid of those `cluster up` started.
fn with_managed_processes(mut nodes: Vec<RedisNode>, state: &ClusterState) -> Vec<RedisNode> {
    for node in &mut nodes {
        if let Some(managed) = state.redis.servers.iter().find(|s| node.addr == s.addr) {
            node.name = Some(managed.name.clone());
            node.pid = managed.pid.filter(|pid| process::signal(*pid, None));
        }
    }
    nodes
}

/// Managed servers not among `listed`: not answering, or not (yet) replicating.
fn missing_nodes(state: &ClusterState, listed: &[String]) -> Vec<RedisNode> {
    state
        .redis
        .servers
        .iter()
        .filter(|s| !listed.contains(&s.addr))
        .map(|s| RedisNode {
            addr: s.addr.clone(),
            role: "unknown".into(),
            ..RedisNode::default()
        })
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

async fn redis_counters(mut conn: Connection, state: &ClusterState) -> RedisCounters {
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

    fn a_status() -> ClusterStatus {
        ClusterStatus {
            state_dir: "/tmp/c".into(),
            listen: "127.0.0.1:8080".into(),
            supervisor: SupervisorStatus {
                pid: 10,
                running: true,
            },
            replicas: vec![
                ReplicaStatus {
                    id: "replica-1".into(),
                    pid: Some(11),
                    port: 18789,
                    healthy: true,
                    uptime_s: Some(5),
                    restarts: 0,
                    handled: Some(7),
                },
                ReplicaStatus {
                    id: "replica-2".into(),
                    pid: None,
                    port: 18790,
                    healthy: false,
                    uptime_s: None,
                    restarts: 2,
                    handled: None,
                },
            ],
            redis: RedisStatus {
                up: true,
                mode: "single".into(),
                role: Some("primary".into()),
                primary: Some("127.0.0.1:6400".into()),
                nodes: vec![],
                sentinels: vec![],
                url: "redis://:hunter2@127.0.0.1:6400".into(),
                managed: true,
                pid: Some(12),
                used_memory_bytes: Some(1024),
                inbox_lag: Some(0),
                inbox_pending: None,
                masters: vec![],
            },
            nginx: NginxStatus {
                pid: Some(13),
                running: true,
                balancer_healthz: true,
            },
        }
    }

    #[test]
    fn the_json_keeps_every_field_and_says_null_for_what_is_not_running() {
        let json = serde_json::to_value(a_status()).unwrap();
        assert_eq!(json["replicas"][0]["pid"], 11);
        assert!(json["replicas"][1]["pid"].is_null());
        assert_eq!(json["replicas"][1]["restarts"], 2);
        assert_eq!(json["redis"]["inbox_lag"], 0);
        assert!(json["redis"]["inbox_pending"].is_null());
        let back: ClusterStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.healthy_replicas(), (2, 1));
    }

    #[test]
    fn the_text_shows_each_part_and_never_the_redis_password() {
        let text = a_status().to_string();
        assert!(
            text.contains("replica-1  pid 11  port 18789  healthy yes"),
            "{text}"
        );
        assert!(
            text.contains("replica-2  pid -  port 18790  healthy no"),
            "{text}"
        );
        assert!(text.contains("inbox lag 0  pending -"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

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
