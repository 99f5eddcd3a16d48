//! The replica's link to Redis: one multiplexed connection shared by all tasks (to the primary,
//! or a cluster connection to every master), a health loop
//! that decides whether Redis is up, and the up/down signal the rest of the replica follows
//! (ingress switches to degraded mode, the inbox reader pauses, the reply listener resubscribes).
//! It owns the connection and its reconnect policy: under Sentinel it finds the primary again
//! (through [`PrimaryFinder`]) when the connection drops, when Redis answers `READONLY`, and when
//! a sentinel announces `+switch-master`. With `redis.ackReplicas`, it also holds the lanes that
//! acknowledged writes go through, each followed by a `WAIT` for the replicas. It knows the key
//! layout the deployment uses and refuses writes when Redis holds data of another layout.
//!
//! It never blocks start-up: the replica serves at once and learns Redis's state within one
//! health interval.

use super::StateError;
use super::connection::{ClusterSettings, Connection};
use super::keys::{self, KeyLayout};
use super::primary::PrimaryFinder;
use crate::config::{RedisConfig, RedisTarget};
use crate::telemetry;
use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the health loop pings Redis.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Failed pings after which the connection is rebuilt from scratch rather than left to its own
/// reconnect logic.
const REBUILD_AFTER_FAILURES: u32 = 3;

/// Connections acknowledged writes go through: a `WAIT` blocks its connection on the server, so
/// these are kept apart from the shared one; writes that queue behind a `WAIT` are covered by
/// the next (group commit).
const ACK_LANES: usize = 4;

/// Shared handle to Redis and its health.
pub struct RedisLink {
    /// Finds the primary: the configured server, or the one the sentinels name (`None` for a
    /// cluster, whose client finds its masters itself).
    finder: Option<PrimaryFinder>,
    /// How to reach a Redis Cluster, when the deployment is one.
    cluster: Option<ClusterSettings>,
    /// How conversation and message keys are named.
    keys: KeyLayout,
    /// Why this replica must not write: Redis holds data of another key layout (set once, at
    /// the first connection; only a restart with the right configuration clears it).
    layout_mismatch: std::sync::OnceLock<String>,
    /// Builds connections to the current primary; also used for dedicated connections (pub/sub,
    /// blocking reads). `None` until a primary was found.
    client: ArcSwapOption<redis::Client>,
    /// The current primary's `host:port`.
    primary: std::sync::Mutex<Option<String>>,
    /// Wakes the health loop to find the primary again now (a `+switch-master`, a `READONLY`).
    find_again: tokio::sync::Notify,
    /// Replicas a write must reach before it is acknowledged (`redis.ackReplicas`), and how long
    /// to wait for them.
    ack_replicas: u32,
    ack_timeout: Duration,
    /// The lanes for acknowledged writes (with `ack_replicas` > 0), to the current primary (or
    /// the cluster's masters).
    ack_lanes: ArcSwapOption<Vec<Connection>>,
    /// Round-robin position over `ack_lanes`.
    next_lane: std::sync::atomic::AtomicUsize,
    /// The shared multiplexed connection; `None` until the first connect succeeds or after it was
    /// dropped for a rebuild.
    manager: ArcSwapOption<Connection>,
    /// How many times `manager` was (re)built: see [`RedisLink::generation`].
    generation: AtomicU64,
    /// Bound on one command, and on each connection attempt.
    command_timeout: Duration,
    /// Last known state: true after a successful ping, false after any connection failure.
    up: AtomicBool,
    /// Consecutive failed pings, to decide when to rebuild.
    failures: AtomicU32,
    /// Up/down transitions for tasks that must react (`None` until the first health check).
    state: watch::Sender<Option<bool>>,
    /// When the current outage began (`None` while up), so ingress can tell a blip (a restart
    /// of a second) from an outage worth degrading for.
    down_since: std::sync::Mutex<Option<Instant>>,
    /// Whether Redis ever answered since start: a Redis that was never there is not restarting.
    ever_up: AtomicBool,
    /// Why Redis refuses writes (`MISCONF`, `OOM`, `READONLY`, `NOREPLICAS`), while it does:
    /// set by any caller that was refused and by the health loop, cleared when a test write
    /// goes through again.
    refusing: std::sync::Mutex<Option<String>>,
    /// What the replica does while Redis cannot be reached, for the operator's log (set by the
    /// server from `redis.downMode`).
    when_down: std::sync::OnceLock<String>,
    /// The last connection failure logged at warn level, so a repeated cause is not logged
    /// every half second.
    last_failure: std::sync::Mutex<Option<String>>,
}

impl RedisLink {
    /// A link to the configured Redis; no connection is attempted until
    /// [`RedisLink::run_health`] runs.
    pub fn new(config: &RedisConfig) -> Result<Arc<RedisLink>, StateError> {
        let command_timeout = config.command_timeout;
        let (finder, cluster) = match &config.target {
            RedisTarget::Cluster(cluster) => (None, Some(ClusterSettings::new(config, cluster))),
            _ => (Some(PrimaryFinder::new(config, command_timeout)?), None),
        };
        Ok(Arc::new(RedisLink {
            finder,
            cluster,
            keys: KeyLayout::new(config.shard_count()),
            layout_mismatch: std::sync::OnceLock::new(),
            client: ArcSwapOption::empty(),
            primary: std::sync::Mutex::new(None),
            find_again: tokio::sync::Notify::new(),
            ack_replicas: config.ack_replicas,
            ack_timeout: config.ack_timeout,
            ack_lanes: ArcSwapOption::empty(),
            next_lane: std::sync::atomic::AtomicUsize::new(0),
            manager: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            command_timeout,
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            state: watch::channel(None).0,
            down_since: std::sync::Mutex::new(None),
            ever_up: AtomicBool::new(false),
            refusing: std::sync::Mutex::new(None),
            when_down: std::sync::OnceLock::new(),
            last_failure: std::sync::Mutex::new(None),
        }))
    }

    /// Says what the replica does while Redis is unreachable, for the log line that reports it.
    pub fn set_when_down(&self, behaviour: impl Into<String>) {
        let _ = self.when_down.set(behaviour.into());
    }

    /// Why Redis refuses writes, while it does (reachable, but nothing would be durable), or why
    /// this replica must not write to it (another key layout).
    pub fn refusing(&self) -> Option<String> {
        if let Some(mismatch) = self.layout_mismatch.get() {
            return Some(mismatch.clone());
        }
        self.refusing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_refusing(&self, reason: Option<String>) {
        let mut refusing = self
            .refusing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*refusing, &reason) {
            (None, Some(reason)) => {
                tracing::error!(%reason, "Redis refuses writes; messages are refused with 503 (platforms retry) until it accepts them again, nothing is answered from memory")
            }
            (Some(_), None) => tracing::info!("Redis accepts writes again"),
            _ => {}
        }
        *refusing = reason;
    }

    /// How conversation and message keys are named in this deployment.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// How to open cluster connections, when the deployment is a Redis Cluster.
    pub fn cluster(&self) -> Option<&ClusterSettings> {
        self.cluster.as_ref()
    }

    /// Whether the primary is found through sentinels (and can move).
    fn is_sentinel(&self) -> bool {
        self.finder.as_ref().is_some_and(PrimaryFinder::is_sentinel)
    }

    /// A client for the current primary, for dedicated connections (not for a cluster: see
    /// [`Self::cluster`]).
    pub fn client(&self) -> Result<redis::Client, StateError> {
        self.client
            .load_full()
            .map(|c| (*c).clone())
            .ok_or_else(|| StateError::Unavailable("no Redis primary found yet".into()))
    }

    /// The current primary's `host:port`, once found (a cluster's seed nodes).
    pub fn primary(&self) -> Option<String> {
        self.primary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replicas an acknowledged write must reach (`redis.ackReplicas`).
    pub fn ack_replicas(&self) -> u32 {
        self.ack_replicas
    }

    /// A lane for a write that must reach `ack_replicas` replicas before it is acknowledged:
    /// write on it, then [`RedisLink::wait_for_replicas`] on the same lane.
    pub fn ack_lane(&self) -> Result<Connection, StateError> {
        if !self.is_up() {
            return Err(StateError::Unavailable("Redis is down".into()));
        }
        if let Some(mismatch) = self.layout_mismatch.get() {
            return Err(StateError::Refused(mismatch.clone()));
        }
        let lanes = self
            .ack_lanes
            .load_full()
            .filter(|lanes| !lanes.is_empty())
            .ok_or_else(|| StateError::Unavailable("not connected to Redis".into()))?;
        let index = self.next_lane.fetch_add(1, Ordering::Relaxed) % lanes.len();
        Ok(lanes[index].clone())
    }

    /// `WAIT`s until `ack_replicas` replicas hold every write made on `lane` so far (in a
    /// cluster: the replicas of the master owning `key`, which took the write); a shortfall
    /// within `ackTimeoutMs` is a refusal (the caller answers 503, the platform retries, dedupe
    /// makes that safe).
    pub async fn wait_for_replicas(
        &self,
        lane: &mut Connection,
        key: &str,
    ) -> Result<(), StateError> {
        let started = Instant::now();
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.ack_replicas)
            .arg(self.ack_timeout.as_millis() as u64);
        let confirmed: Result<u64, _> = lane.query_at(key, &wait).await;
        metrics::histogram!(telemetry::REDIS_ACK_WAIT).record(started.elapsed().as_secs_f64());
        let confirmed = confirmed.map_err(|e| self.failed(&e))?;
        if confirmed < u64::from(self.ack_replicas) {
            metrics::counter!(telemetry::REDIS_ACK_SHORTFALLS).increment(1);
            return Err(StateError::Refused(format!(
                "NOREPLICAS: only {confirmed} of the {} Redis replicas redis.ackReplicas asks for confirmed the write within {} ms",
                self.ack_replicas,
                self.ack_timeout.as_millis()
            )));
        }
        Ok(())
    }

    /// The per-command bound.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// True while Redis answers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// How long Redis has been unreachable (`None` while it answers, and before the first health
    /// check).
    pub fn outage(&self) -> Option<Duration> {
        if self.is_up() {
            return None;
        }
        self.down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|since| since.elapsed())
    }

    /// Whether Redis answered at least once since this replica started.
    pub fn ever_up(&self) -> bool {
        self.ever_up.load(Ordering::Acquire)
    }

    fn set_down_since(&self, down: bool) {
        let mut since = self
            .down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (down, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    /// Follows up/down transitions; `None` means the first health check has not finished.
    pub fn watch(&self) -> watch::Receiver<Option<bool>> {
        self.state.subscribe()
    }

    /// Changes whenever the link connects anew, perhaps to another primary (a Sentinel
    /// failover): a connection of one's own opened under an older generation may lead to a
    /// server that is no longer the primary (a partition can keep it writable for a while), so
    /// it must be opened again. Read this before opening one.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The shared connection, or `Unavailable` while Redis is down (callers fail fast instead of
    /// queueing behind a dead socket).
    pub fn connection(&self) -> Result<Connection, StateError> {
        if !self.is_up() {
            return Err(StateError::Unavailable("Redis is down".into()));
        }
        // Data of another key layout: reading or writing it would split conversations.
        if let Some(mismatch) = self.layout_mismatch.get() {
            return Err(StateError::Refused(mismatch.clone()));
        }
        self.manager
            .load_full()
            .map(|m| (*m).clone())
            .ok_or_else(|| StateError::Unavailable("not connected to Redis".into()))
    }

    /// Records a failure seen by any caller, so ingress stops trying Redis at once instead of
    /// after the next ping.
    pub fn report(&self, error: &StateError) {
        if let StateError::Refused(reason) = error {
            if reason.starts_with("READONLY") && self.is_sentinel() {
                // The primary we know was demoted: a failover happened. Find the new one now.
                self.lose_primary("Redis answered READONLY: the primary was demoted");
                return;
            }
            self.set_refusing(Some(reason.clone()));
            return;
        }
        if let StateError::Unavailable(reason) = error
            && reason.starts_with("LOADING")
            && self.is_sentinel()
        {
            // A server still loading its data set is no primary to use: ask the sentinels again.
            self.lose_primary("Redis answered LOADING: asking the sentinels for the primary");
            return;
        }
        // In a cluster one command's failure speaks for one master (failing over, its slots
        // moving), not for the cluster: the health loop alone decides that it is down.
        if error.is_unavailable() && self.cluster.is_none() && self.up.swap(false, Ordering::AcqRel)
        {
            self.set_down_since(true);
            tracing::warn!(error = %error, "Redis unreachable; switching to degraded operation");
            self.state.send_replace(Some(false));
        }
    }

    /// What a failed command means, reported so the link reacts at once (a dropped connection,
    /// a demoted primary, a full disk) instead of at the next ping.
    pub fn failed(&self, e: &redis::RedisError) -> StateError {
        let error = classify(e);
        self.report(&error);
        error
    }

    /// Drops the connections to the primary and wakes the health loop to find it again: it
    /// moved (`+switch-master`) or was demoted (`READONLY`). Callers meanwhile wait as for a
    /// blip (up to `redis.degradeAfterMs`), they are not refused.
    fn lose_primary(&self, why: &str) {
        self.manager.store(None);
        self.ack_lanes.store(None);
        if self.up.swap(false, Ordering::AcqRel) {
            self.set_down_since(true);
            tracing::warn!(why, "finding the Redis primary again");
            self.state.send_replace(Some(false));
        }
        self.find_again.notify_one();
    }

    /// A link for a one-off command (the CLI): connects now and fails if Redis does not answer.
    pub async fn connect(config: &RedisConfig) -> Result<Arc<RedisLink>, StateError> {
        let link = RedisLink::new(config)?;
        link.check_once().await;
        if link.is_up() {
            Ok(link)
        } else {
            Err(StateError::Unavailable(format!(
                "Redis at {} does not answer",
                crate::config::redis::redact(&config.url)
            )))
        }
    }

    /// Pings Redis every half second until `cancel`, (re)connecting as needed; under Sentinel
    /// also follows the sentinels' `+switch-master` announcements.
    pub async fn run_health(self: Arc<Self>, cancel: CancellationToken) {
        let follow_switches = async {
            if let Some(finder) = self.finder.as_ref().filter(|f| f.is_sentinel()) {
                let switched = |to: String| {
                    if self.primary().as_deref() != Some(to.as_str()) {
                        self.lose_primary("a sentinel announced +switch-master");
                    }
                };
                finder.follow_switches(switched, cancel.clone()).await;
            }
        };
        let ping = async {
            loop {
                self.check_once().await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
                    _ = self.find_again.notified() => {}
                }
            }
        };
        tokio::join!(follow_switches, ping);
    }

    async fn check_once(&self) {
        let healthy = match self.ensure_manager().await {
            Some(mut manager) => self.probe(&mut manager).await,
            None => false,
        };
        self.set_down_since(!healthy);
        if healthy {
            self.ever_up.store(true, Ordering::Release);
            self.failures.store(0, Ordering::Release);
            *self
                .last_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            if !self.up.swap(true, Ordering::AcqRel) {
                tracing::info!("Redis is up");
            }
        } else {
            let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
            // Under Sentinel a dropped primary may have moved: find it again at once.
            if failures >= REBUILD_AFTER_FAILURES || self.is_sentinel() {
                self.manager.store(None);
                self.ack_lanes.store(None);
            }
            if self.up.swap(false, Ordering::AcqRel) {
                tracing::warn!("Redis stopped answering; switching to degraded operation");
            }
        }
        let now = Some(healthy);
        if *self.state.borrow() != now {
            self.state.send_replace(now);
        }
    }

    /// Pings Redis: true when it answers at all. An error reply means it is reachable but
    /// refuses (a full disk makes even `PING` answer `MISCONF`); while it refuses, a test write
    /// tells when it accepts writes again.
    async fn probe(&self, manager: &mut Connection) -> bool {
        let timeout = self.command_timeout;
        // A cluster is up while any of its nodes answers (a random one each try: one that is
        // failing over must not make the whole cluster look down).
        let mut tries_left = if self.cluster.is_some() { 3 } else { 1 };
        let ping = loop {
            let ping =
                tokio::time::timeout(timeout, manager.query_any::<String>(&redis::cmd("PING")))
                    .await;
            tries_left -= 1;
            if matches!(ping, Ok(Ok(_))) || tries_left == 0 {
                break ping;
            }
        };
        let reply = match ping {
            Ok(Ok(_)) if self.refusing().is_some() => {
                let mut write = redis::cmd("SET");
                write
                    .arg(super::keys::HEALTH_PROBE)
                    .arg(crate::message::now_ms())
                    .arg("PX")
                    .arg(10_000);
                match tokio::time::timeout(timeout, write.query_async::<()>(manager)).await {
                    Ok(result) => result,
                    Err(_) => return false,
                }
            }
            Ok(result) => result.map(|_| ()),
            Err(_) => return false,
        };
        match reply.map_err(|e| classify(&e)) {
            Ok(()) => {
                self.set_refusing(None);
                true
            }
            Err(StateError::Refused(reason)) => {
                self.set_refusing(Some(reason));
                true
            }
            Err(StateError::Unavailable(reason)) => {
                self.log_failure(reason);
                false
            }
            // Any other error reply still proves Redis is there.
            Err(_) => true,
        }
    }

    /// Logs a connection failure at warn level the first time its cause is seen (a wrong
    /// password and an unreachable host read differently), with what the replica does instead.
    fn log_connect_failure(&self, error: &redis::RedisError) {
        let cause = match classify(error) {
            StateError::Unavailable(reason) if is_auth_failure(error) => reason,
            _ => format!("cannot reach Redis ({error})"),
        };
        self.log_failure(cause);
    }

    fn log_failure(&self, cause: String) {
        let mut last = self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_deref() != Some(cause.as_str()) {
            let instead = self
                .when_down
                .get()
                .map(String::as_str)
                .unwrap_or("retrying");
            tracing::warn!(%cause, instead, "Redis is not available");
            *last = Some(cause);
        }
    }

    async fn ensure_manager(&self) -> Option<Connection> {
        if let Some(m) = self.manager.load_full() {
            return Some((*m).clone());
        }
        let manager = match (&self.finder, &self.cluster) {
            (Some(finder), _) => self.connect_primary(finder).await?,
            (None, Some(cluster)) => self.connect_cluster(cluster).await?,
            (None, None) => return None,
        };
        self.check_layout(&manager).await;
        self.manager.store(Some(Arc::new(manager.clone())));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Some(manager)
    }

    /// Connects to the cluster (and opens its acknowledgement lanes).
    async fn connect_cluster(&self, cluster: &ClusterSettings) -> Option<Connection> {
        let connect = cluster.connect(self.command_timeout);
        let connection = match tokio::time::timeout(self.command_timeout * 3, connect).await {
            Ok(Ok(connection)) => Connection::Cluster(connection),
            Ok(Err(e)) => {
                self.log_connect_failure(&e);
                return None;
            }
            Err(_) => {
                self.log_failure(format!(
                    "cannot reach the Redis Cluster through {} (timed out)",
                    cluster.describe()
                ));
                return None;
            }
        };
        if self.ack_replicas > 0 {
            let mut lanes = Vec::with_capacity(ACK_LANES);
            for _ in 0..ACK_LANES {
                match cluster
                    .connect(self.ack_timeout + self.command_timeout)
                    .await
                {
                    Ok(lane) => lanes.push(Connection::Cluster(lane)),
                    Err(e) => {
                        self.log_connect_failure(&e);
                        return None;
                    }
                }
            }
            self.ack_lanes.store(Some(Arc::new(lanes)));
        }
        let described = cluster.describe();
        let previous = self
            .primary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(described.clone());
        if previous.is_none() {
            tracing::info!(seeds = %described, shards = self.keys.shards(), "Redis Cluster");
        }
        Some(connection)
    }

    /// Records the key layout in Redis on first use, and refuses to write when Redis holds data
    /// of another layout (mixing them would split conversations in two).
    async fn check_layout(&self, connection: &Connection) {
        if self.layout_mismatch.get().is_some() {
            return;
        }
        let mut conn = connection.clone();
        let version = self.keys.version();
        let found = async {
            let set: Option<String> = redis::cmd("SET")
                .arg(keys::LAYOUT)
                .arg(&version)
                .arg("NX")
                .arg("GET")
                .query_async(&mut conn)
                .await?;
            // A deployment from before the layout was recorded left `oc:inbox`: layout 1.
            let legacy = match (&set, self.keys.is_sharded()) {
                (None, true) => {
                    let exists: bool = redis::cmd("EXISTS")
                        .arg("oc:inbox")
                        .query_async(&mut conn)
                        .await?;
                    exists
                }
                _ => false,
            };
            Ok::<_, redis::RedisError>(match (set, legacy) {
                (Some(stored), _) => Some(stored),
                (None, true) => Some("1".to_string()),
                (None, false) => None,
            })
        };
        match tokio::time::timeout(self.command_timeout, found).await {
            Ok(Ok(Some(stored))) if stored != version => {
                let reason = format!(
                    "LAYOUT: Redis holds data in key layout {stored}, this replica is configured for {version} (redis.shards / redis.cluster); refusing to write. Run `clawgate redis migrate` or configure the layout Redis holds"
                );
                tracing::error!(%reason, "wrong key layout");
                let _ = self.layout_mismatch.set(reason);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot check the key layout recorded in Redis")
            }
            Err(_) => tracing::warn!("checking the key layout recorded in Redis timed out"),
        }
    }

    /// Connects to the primary the finder names (and opens its acknowledgement lanes).
    async fn connect_primary(&self, finder: &PrimaryFinder) -> Option<Connection> {
        let primary = match finder.find().await {
            Ok(primary) => primary,
            Err(e) => {
                self.log_failure(match &e {
                    StateError::Unavailable(reason) if reason.starts_with("Redis refused") => {
                        reason.clone()
                    }
                    other => format!("cannot find the Redis primary ({other})"),
                });
                return None;
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connect = ConnectionManager::new_with_config(primary.client.clone(), config);
        let manager = match tokio::time::timeout(self.command_timeout * 2, connect).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(e)) => {
                self.log_connect_failure(&e);
                return None;
            }
            Err(_) => {
                self.log_connect_failure(&redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting timed out",
                )));
                return None;
            }
        };
        if self.ack_replicas > 0 && !self.open_ack_lanes(&primary.client).await {
            return None;
        }
        let previous = self
            .primary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(primary.address.clone());
        if previous.as_deref() != Some(primary.address.as_str()) {
            match (&previous, finder.sentinel()) {
                (Some(old), Some(sentinel)) => {
                    tracing::warn!(from = %old, to = %primary.address, master = %sentinel.master_name, "the Redis primary moved (Sentinel failover); following it")
                }
                _ => tracing::info!(primary = %primary.address, "Redis primary"),
            }
        }
        self.client.store(Some(Arc::new(primary.client)));
        Some(Connection::Single(manager))
    }

    /// Opens the lanes for acknowledged writes to the primary of `client`.
    async fn open_ack_lanes(&self, client: &redis::Client) -> bool {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.ack_timeout + self.command_timeout));
        let mut lanes = Vec::with_capacity(ACK_LANES);
        for _ in 0..ACK_LANES {
            let open = client.get_multiplexed_async_connection_with_config(&config);
            match tokio::time::timeout(self.command_timeout * 2, open).await {
                Ok(Ok(lane)) => lanes.push(Connection::Direct(lane)),
                Ok(Err(e)) => {
                    self.log_connect_failure(&e);
                    return false;
                }
                Err(_) => return false,
            }
        }
        self.ack_lanes.store(Some(Arc::new(lanes)));
        true
    }
}

/// Whether Redis refused this replica's credentials (none given, wrong, or not allowed).
fn is_auth_failure(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Classifies a Redis error: unreachable (degrade / retry), full (503) or unexpected.
pub fn classify(e: &redis::RedisError) -> StateError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StateError::Unavailable(e.to_string());
    }
    // A Redis that will not let this replica in cannot be used: as good as unreachable.
    if is_auth_failure(e) {
        return StateError::Unavailable(format!(
            "Redis refused the credentials ({e}): check redis.username / redis.password"
        ));
    }
    match e.code() {
        Some("OOM") => StateError::Refused(
            "OOM: Redis is out of memory (maxmemory reached with noeviction)".into(),
        ),
        Some("MISCONF") => StateError::Refused(
            "MISCONF: Redis cannot persist to disk (a full or failing disk); it refuses writes until it can".into(),
        ),
        Some("READONLY") => StateError::Refused(
            "READONLY: connected to a Redis replica, not the primary (a failover happened?)".into(),
        ),
        Some("NOREPLICAS") => StateError::Refused(
            "NOREPLICAS: too few Redis replicas are connected for min-replicas-to-write".into(),
        ),
        // A cluster moving a slot or promoting a replica: the client follows, the caller retries.
        Some("LOADING" | "MASTERDOWN" | "TRYAGAIN" | "BUSY" | "CLUSTERDOWN" | "MOVED" | "ASK") => {
            StateError::Unavailable(e.to_string())
        }
        _ => StateError::Protocol(e.to_string()),
    }
}
