//! Finding the Redis primary: the configured server, or the one the sentinels name.
//!
//! With Sentinel, the primary is asked of the sentinels (`SENTINEL get-master-addr-by-name`) and
//! checked (`ROLE` must say `master`: a sentinel can be behind); it is asked again whenever the
//! link loses it, and at once when a sentinel announces `+switch-master`. The redis crate's own
//! Sentinel client finds a primary once but does not follow a failover (redis-rs #1438), so this
//! module, driven by [`super::link::RedisLink`], is what follows it.

use super::StateError;
use super::link::classify;
use crate::config::{RedisConfig, RedisTarget, SentinelConfig};
use futures_util::StreamExt;
use redis::{ConnectionInfo, IntoConnectionInfo, Value};
use secrecy::ExposeSecret;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How to reach the primary.
pub struct PrimaryFinder {
    endpoint: Endpoint,
    /// Username and password for the Redis servers (not the sentinels), when configured.
    username: Option<String>,
    password: Option<String>,
    /// Bound on each connection attempt and each question.
    timeout: Duration,
    /// The CA that signed the servers' and sentinels' certificates (`redis.tls.caFile`).
    ca_pem: Option<Vec<u8>>,
    /// The sentinel that answered last, asked first next time.
    preferred: AtomicUsize,
}

enum Endpoint {
    Single(ConnectionInfo),
    Sentinel(SentinelConfig),
}

/// A primary found: a client for it and its address, for the log and `cluster status`.
pub struct Primary {
    /// Builds connections to the primary.
    pub client: redis::Client,
    /// `host:port`.
    pub address: String,
}

impl PrimaryFinder {
    /// The finder for a configuration; fails only on a URL that cannot be read.
    pub fn new(config: &RedisConfig, timeout: Duration) -> Result<PrimaryFinder, StateError> {
        let endpoint = match &config.target {
            RedisTarget::Single(url) => Endpoint::Single(
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| StateError::Protocol(format!("invalid Redis URL: {e}")))?,
            ),
            RedisTarget::Sentinel(sentinel) => Endpoint::Sentinel(sentinel.clone()),
            RedisTarget::Cluster(_) => {
                return Err(StateError::Protocol(
                    "a Redis Cluster has no single primary to find".into(),
                ));
            }
        };
        Ok(PrimaryFinder {
            endpoint,
            username: config.username.clone(),
            password: config
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string()),
            timeout,
            ca_pem: config.tls.as_ref().map(|tls| tls.ca_pem.clone()),
            preferred: AtomicUsize::new(0),
        })
    }

    /// A client for `info`: over TLS it trusts `redis.tls.caFile` when one is configured, else
    /// the system's roots.
    fn open_client(&self, info: ConnectionInfo) -> Result<redis::Client, StateError> {
        let opened = match (info.addr(), &self.ca_pem) {
            (redis::ConnectionAddr::TcpTls { .. }, Some(ca)) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => redis::Client::open(info),
        };
        opened.map_err(|e| StateError::Protocol(format!("invalid Redis connection settings: {e}")))
    }

    /// Whether the primary is found through sentinels (and can change).
    pub fn is_sentinel(&self) -> bool {
        matches!(self.endpoint, Endpoint::Sentinel(_))
    }

    /// The master name and sentinels, under Sentinel.
    pub fn sentinel(&self) -> Option<&SentinelConfig> {
        match &self.endpoint {
            Endpoint::Sentinel(sentinel) => Some(sentinel),
            Endpoint::Single(_) => None,
        }
    }

    /// The server's connection info with the configured credentials applied.
    fn with_credentials(&self, info: ConnectionInfo) -> ConnectionInfo {
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        info.set_redis_settings(settings)
    }

    /// The primary now: the configured server, or the one the sentinels name and that says it
    /// is the master.
    pub async fn find(&self) -> Result<Primary, StateError> {
        match &self.endpoint {
            Endpoint::Single(info) => {
                let info = self.with_credentials(info.clone());
                let address = describe(&info);
                let client = self.open_client(info)?;
                Ok(Primary { client, address })
            }
            Endpoint::Sentinel(sentinel) => self.ask_sentinels(sentinel).await,
        }
    }

    async fn ask_sentinels(&self, sentinel: &SentinelConfig) -> Result<Primary, StateError> {
        let count = sentinel.nodes.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_error = StateError::Unavailable("no sentinel is configured".into());
        for offset in 0..count {
            let index = (first + offset) % count;
            match self.ask_one(sentinel, &sentinel.nodes[index]).await {
                Ok(primary) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(primary);
                }
                Err(e) => {
                    tracing::debug!(sentinel = %sentinel.nodes[index], error = %e, "sentinel did not give a usable primary");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn ask_one(&self, sentinel: &SentinelConfig, node: &str) -> Result<Primary, StateError> {
        let mut conn = self.connect(&self.sentinel_client(sentinel, node)?).await?;
        let answer: Option<(String, u16)> = self
            .bounded(
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&sentinel.master_name)
                    .query_async(&mut conn),
            )
            .await?;
        let (host, port) = answer.ok_or_else(|| {
            StateError::Unavailable(format!(
                "sentinel {node} does not know a master named \"{}\"",
                sentinel.master_name
            ))
        })?;
        let info = server_info(&host, port, sentinel.tls)?;
        let client = self.open_client(self.with_credentials(info))?;
        let mut primary = self.connect(&client).await?;
        let role: Vec<Value> = self
            .bounded(redis::cmd("ROLE").query_async(&mut primary))
            .await?;
        let says = role
            .first()
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default();
        if says != "master" {
            return Err(StateError::Unavailable(format!(
                "sentinel {node} names {host}:{port}, which says it is a {says}"
            )));
        }
        Ok(Primary {
            client,
            address: format!("{host}:{port}"),
        })
    }

    /// A client for one sentinel, with the sentinels' own credentials.
    fn sentinel_client(
        &self,
        sentinel: &SentinelConfig,
        node: &str,
    ) -> Result<redis::Client, StateError> {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| StateError::Protocol(format!("sentinel \"{node}\" is not host:port")))?;
        let mut info = server_info(host, port, sentinel.tls)?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &sentinel.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &sentinel.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        self.open_client(info)
    }

    async fn connect(
        &self,
        client: &redis::Client,
    ) -> Result<redis::aio::MultiplexedConnection, StateError> {
        self.bounded(client.get_multiplexed_async_connection())
            .await
    }

    async fn bounded<T>(
        &self,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(result) => result.map_err(|e| classify(&e)),
            Err(_) => Err(StateError::Unavailable("timed out".into())),
        }
    }

    /// Calls `switched` (with the new primary's address) whenever a sentinel announces that our
    /// master moved, until `cancel`: one subscription per sentinel, renewed after a disconnect,
    /// so a failover is followed at once rather than when a command fails.
    pub async fn follow_switches(
        &self,
        switched: impl Fn(String) + Send + Sync,
        cancel: CancellationToken,
    ) {
        let Endpoint::Sentinel(sentinel) = &self.endpoint else {
            return;
        };
        let watchers = sentinel
            .nodes
            .iter()
            .map(|node| self.follow_one(sentinel, node, &switched, &cancel));
        futures_util::future::join_all(watchers).await;
    }

    async fn follow_one(
        &self,
        sentinel: &SentinelConfig,
        node: &str,
        switched: &(impl Fn(String) + Send + Sync),
        cancel: &CancellationToken,
    ) {
        while !cancel.is_cancelled() {
            let subscribed = async {
                let client = self.sentinel_client(sentinel, node)?;
                let mut pubsub = self.bounded(client.get_async_pubsub()).await?;
                self.bounded(pubsub.subscribe("+switch-master")).await?;
                Ok::<_, StateError>(pubsub)
            };
            match subscribed.await {
                Ok(pubsub) => {
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            _ = cancel.cancelled() => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        // "<master name> <old ip> <old port> <new ip> <new port>"
                        let payload: String = message.get_payload().unwrap_or_default();
                        let fields: Vec<&str> = payload.split_whitespace().collect();
                        if let [name, _, _, ip, port] = fields[..]
                            && name == sentinel.master_name
                        {
                            switched(format!("{ip}:{port}"));
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(sentinel = %node, error = %e, "cannot follow the sentinel's failovers; trying again")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

fn server_info(host: &str, port: u16, tls: bool) -> Result<ConnectionInfo, StateError> {
    let scheme = if tls { "rediss" } else { "redis" };
    format!("{scheme}://{host}:{port}")
        .as_str()
        .into_connection_info()
        .map_err(|e| StateError::Protocol(e.to_string()))
}

/// `host:port` of a connection, for the log.
fn describe(info: &ConnectionInfo) -> String {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        other => other.to_string(),
    }
}
