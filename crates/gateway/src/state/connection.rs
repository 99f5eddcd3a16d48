//! One connection type for every deployment: the shared connection to a lone Redis or a
//! Sentinel-managed primary, or a Redis Cluster connection that follows the topology (`MOVED`,
//! `ASK`, failovers) by itself. Callers send commands, scripts and single-slot pipelines through
//! it without knowing which.

use super::StateError;
use super::link::classify;
use super::primary::PrimaryFinder;
use crate::config::{ClusterConfig, RedisConfig, RedisTarget};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use secrecy::ExposeSecret;
use std::time::Duration;

/// A connection to wherever the state lives.
#[derive(Clone)]
pub enum Connection {
    /// The primary (one Redis, or the one Sentinel names), reconnecting by itself.
    Single(ConnectionManager),
    /// A dedicated connection to the primary (an acknowledgement lane: its `WAIT` must follow
    /// its own writes).
    Direct(MultiplexedConnection),
    /// The multiplexed connections of a cluster client, one per node.
    Cluster(ClusterConnection),
}

impl Connection {
    /// Runs `cmd` on the node that owns `key`'s slot (a `WAIT` must reach the master that took
    /// the write it confirms; a lone Redis has only that one).
    pub async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Connection::Single(conn) => cmd.query_async(conn).await,
            Connection::Direct(conn) => cmd.query_async(conn).await,
            Connection::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let value = conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// Every key matching `pattern`, read with `SCAN` in batches of `batch` (Redis is never
    /// blocked by a long walk); in a cluster, on every master.
    pub async fn scan_match(&mut self, pattern: &str, batch: usize) -> RedisResult<Vec<String>> {
        let masters = match self {
            Connection::Cluster(conn) => {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
                cluster_masters(&nodes)
                    .into_iter()
                    .filter_map(|master| {
                        let (host, port) = master.addr.rsplit_once(':')?;
                        Some(Some((host.to_string(), port.parse::<u16>().ok()?)))
                    })
                    .collect()
            }
            _ => vec![None],
        };
        let mut all = Vec::new();
        for master in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(batch);
                let (next, names): (u64, Vec<String>) = match (&mut *self, &master) {
                    (Connection::Cluster(conn), Some((host, port))) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        redis::from_redis_value(conn.route_command(scan, routing).await?)?
                    }
                    (conn, _) => scan.query_async(conn).await?,
                };
                all.extend(names);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(all)
    }

    /// Runs `cmd` on any one node: a health check must not fail because one master is failing
    /// over (its slots' commands fail meanwhile; the others' go on).
    pub async fn query_any<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Connection::Single(conn) => cmd.query_async(conn).await,
            Connection::Direct(conn) => cmd.query_async(conn).await,
            Connection::Cluster(conn) => {
                let value = conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

impl Connection {
    /// A connection of its own to the deployment `config` names (for tools: no health loop, no
    /// layout check): the primary (a Sentinel deployment's, found through its sentinels) or the
    /// cluster.
    pub async fn open(config: &RedisConfig) -> Result<Connection, StateError> {
        let timeout = config.command_timeout;
        let opened = async {
            match &config.target {
                RedisTarget::Cluster(cluster) => ClusterSettings::new(config, cluster)
                    .connect(timeout)
                    .await
                    .map(Connection::Cluster)
                    .map_err(|e| classify(&e)),
                _ => {
                    let primary = PrimaryFinder::new(config, timeout)?.find().await?;
                    primary
                        .client
                        .get_multiplexed_async_connection()
                        .await
                        .map(Connection::Direct)
                        .map_err(|e| classify(&e))
                }
            }
        };
        match tokio::time::timeout(timeout * 3, opened).await {
            Ok(result) => result,
            Err(_) => Err(StateError::Unavailable(format!(
                "Redis at {} does not answer",
                crate::config::redis::redact(&config.url)
            ))),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Direct(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Direct(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A master of a Redis Cluster as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMaster {
    /// The node id.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Its replicas' `host:port`.
    pub replicas: Vec<String>,
}

impl ClusterMaster {
    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&slot))
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|(low, high)| u32::from(high - low) + 1)
            .sum()
    }
}

/// The masters serving slots, with their replicas, from a `CLUSTER NODES` answer (failed nodes
/// left out).
pub fn cluster_masters(nodes: &str) -> Vec<ClusterMaster> {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|line| line.split_whitespace().collect())
        .filter(|fields: &Vec<&str>| fields.len() >= 8 && !fields[2].contains("fail"))
        .collect();
    let addr = |fields: &[&str]| fields[1].split('@').next().unwrap_or_default().to_string();
    lines
        .iter()
        .filter(|fields| fields[2].split(',').any(|flag| flag == "master"))
        .map(|fields| ClusterMaster {
            id: fields[0].to_string(),
            addr: addr(fields),
            // Ranges `a-b` or single slots; `[slot->-id]` marks a migration in progress.
            slots: fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((low, high)) => Some((low.parse().ok()?, high.parse().ok()?)),
                    None => range.parse().ok().map(|slot| (slot, slot)),
                })
                .collect(),
            replicas: lines
                .iter()
                .filter(|other| other[3] == fields[0])
                .map(|other| addr(other))
                .collect(),
        })
        .filter(|master| !master.slots.is_empty())
        .collect()
}

/// How to open cluster connections: the seed nodes, credentials and TLS of `redis.cluster`.
#[derive(Clone)]
pub struct ClusterSettings {
    nodes: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    ca_pem: Option<Vec<u8>>,
    /// Bound on connecting and on one answer.
    timeout: Duration,
}

impl ClusterSettings {
    /// The settings of `cluster` within `config`.
    pub fn new(config: &RedisConfig, cluster: &ClusterConfig) -> ClusterSettings {
        let scheme = if cluster.tls { "rediss" } else { "redis" };
        ClusterSettings {
            nodes: cluster
                .nodes
                .iter()
                .map(|node| format!("{scheme}://{node}"))
                .collect(),
            username: config.username.clone(),
            password: config
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string()),
            // Giving the client certificates turns TLS on, so the CA goes only to a cluster
            // spoken to over TLS (as `redis.tls.caFile` applies only to a `rediss://` Redis).
            ca_pem: config
                .tls
                .as_ref()
                .filter(|_| cluster.tls)
                .map(|tls| tls.ca_pem.clone()),
            timeout: config.command_timeout,
        }
    }

    /// A client builder whose answers may take `response_timeout` (longer for blocking reads).
    /// A command to a slot whose master just failed is retried a few times, briefly, while the
    /// cluster promotes its replica; beyond that the caller's own retry policy takes over.
    pub fn builder(&self, response_timeout: Duration) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(self.timeout)
            .response_timeout(response_timeout)
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(300);
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        if let Some(ca) = &self.ca_pem {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            });
        }
        builder
    }

    /// A connection whose answers may take `response_timeout`.
    pub async fn connect(&self, response_timeout: Duration) -> RedisResult<ClusterConnection> {
        self.builder(response_timeout)
            .build()?
            .get_async_connection()
            .await
    }

    /// The seed nodes, `host:port`, for the log.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.split_once("://").map_or(n.as_str(), |(_, rest)| rest))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_name_the_serving_masters_and_their_replicas() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922 [10923->-c3]
c3 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
e5 127.0.0.1:7005@17005 master,fail - 0 0 4 disconnected
";
        let masters = cluster_masters(nodes);
        assert_eq!(masters.len(), 3);
        assert_eq!(masters[0].addr, "127.0.0.1:7001");
        assert_eq!(masters[0].replicas, vec!["127.0.0.1:7004".to_string()]);
        assert_eq!(masters[1].slots, vec![(5461, 10922)]);
        assert_eq!(masters[0].slot_count(), 5461);
        assert!(masters[2].serves(16383) && !masters[2].serves(0));
    }
}
