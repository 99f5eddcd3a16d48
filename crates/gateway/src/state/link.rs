//! The replica's link to Redis: one multiplexed connection shared by all tasks, a health loop
//! that decides whether Redis is up, and the up/down signal the rest of the replica follows
//! (ingress switches to degraded mode, the inbox reader pauses, the reply listener resubscribes).
//!
//! It never blocks start-up: the replica serves at once and learns Redis's state within one
//! health interval.

use super::StateError;
use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the health loop pings Redis.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Failed pings after which the connection is rebuilt from scratch rather than left to its own
/// reconnect logic.
const REBUILD_AFTER_FAILURES: u32 = 3;

/// Shared handle to Redis and its health.
pub struct RedisLink {
    /// Builds connections; also used for dedicated connections (pub/sub, blocking reads).
    client: redis::Client,
    /// The shared multiplexed connection; `None` until the first connect succeeds or after it was
    /// dropped for a rebuild.
    manager: ArcSwapOption<ConnectionManager>,
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
}

impl RedisLink {
    /// A link to `url`; no connection is attempted until [`RedisLink::run_health`] runs.
    pub fn new(url: &str, command_timeout: Duration) -> Result<Arc<RedisLink>, StateError> {
        let client = redis::Client::open(url)
            .map_err(|e| StateError::Protocol(format!("invalid Redis URL: {e}")))?;
        Ok(Arc::new(RedisLink {
            client,
            manager: ArcSwapOption::empty(),
            command_timeout,
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            state: watch::channel(None).0,
            down_since: std::sync::Mutex::new(None),
            ever_up: AtomicBool::new(false),
        }))
    }

    /// The Redis client, for dedicated connections.
    pub fn client(&self) -> &redis::Client {
        &self.client
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

    /// The shared connection, or `Unavailable` while Redis is down (callers fail fast instead of
    /// queueing behind a dead socket).
    pub fn connection(&self) -> Result<ConnectionManager, StateError> {
        if !self.is_up() {
            return Err(StateError::Unavailable("Redis is down".into()));
        }
        self.manager
            .load_full()
            .map(|m| (*m).clone())
            .ok_or_else(|| StateError::Unavailable("not connected to Redis".into()))
    }

    /// Records a failure seen by any caller, so ingress stops trying Redis at once instead of
    /// after the next ping.
    pub fn report(&self, error: &StateError) {
        if error.is_unavailable() && self.up.swap(false, Ordering::AcqRel) {
            self.set_down_since(true);
            tracing::warn!(error = %error, "Redis unreachable; switching to degraded operation");
            self.state.send_replace(Some(false));
        }
    }

    /// A link for a one-off command (the CLI): connects now and fails if Redis does not answer.
    pub async fn connect(
        url: &str,
        command_timeout: Duration,
    ) -> Result<Arc<RedisLink>, StateError> {
        let link = RedisLink::new(url, command_timeout)?;
        link.check_once().await;
        if link.is_up() {
            Ok(link)
        } else {
            Err(StateError::Unavailable(format!(
                "Redis at {} does not answer",
                redact(url)
            )))
        }
    }

    /// Pings Redis every half second until `cancel`, (re)connecting as needed.
    pub async fn run_health(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            self.check_once().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    }

    async fn check_once(&self) {
        let healthy = match self.ensure_manager().await {
            Some(mut manager) => {
                let ping = tokio::time::timeout(
                    self.command_timeout,
                    redis::cmd("PING").query_async::<String>(&mut manager),
                )
                .await;
                matches!(ping, Ok(Ok(_)))
            }
            None => false,
        };
        self.set_down_since(!healthy);
        if healthy {
            self.ever_up.store(true, Ordering::Release);
            self.failures.store(0, Ordering::Release);
            if !self.up.swap(true, Ordering::AcqRel) {
                tracing::info!("Redis is up");
            }
        } else {
            let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
            if failures >= REBUILD_AFTER_FAILURES {
                self.manager.store(None);
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

    async fn ensure_manager(&self) -> Option<ConnectionManager> {
        if let Some(m) = self.manager.load_full() {
            return Some((*m).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connect = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(self.command_timeout * 2, connect).await {
            Ok(Ok(manager)) => {
                self.manager.store(Some(Arc::new(manager.clone())));
                Some(manager)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot connect to Redis");
                None
            }
            Err(_) => None,
        }
    }
}

/// Classifies a Redis error: unreachable (degrade / retry), full (503) or unexpected.
pub fn classify(e: &redis::RedisError) -> StateError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StateError::Unavailable(e.to_string());
    }
    match e.code() {
        Some("OOM") => {
            StateError::Full("Redis is out of memory (maxmemory reached with noeviction)".into())
        }
        Some("READONLY" | "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "BUSY") => {
            StateError::Unavailable(e.to_string())
        }
        _ => StateError::Protocol(e.to_string()),
    }
}

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
