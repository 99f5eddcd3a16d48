//! One connection type for every deployment: the shared connection to a lone Redis or a
//! Sentinel-managed primary, or a Redis Cluster connection that follows the topology (`MOVED`,
//! `ASK`, failovers) by itself. Callers send commands, scripts and single-slot pipelines through
//! it without knowing which.

use crate::config::{ClusterConfig, RedisConfig};
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
                masters(&nodes)
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

/// The masters' `host:port` in a `CLUSTER NODES` answer (those not marked failed).
fn masters(nodes: &str) -> Vec<Option<(String, u16)>> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some(Some((host.to_string(), port.parse().ok()?)))
        })
        .collect()
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
            ca_pem: config.tls.as_ref().map(|tls| tls.ca_pem.clone()),
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
