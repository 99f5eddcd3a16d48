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
            refusing: std::sync::Mutex::new(None),
            when_down: std::sync::OnceLock::new(),
            last_failure: std::sync::Mutex::new(None),
        }))
    }

    /// Says what the replica does while Redis is unreachable, for the log line that reports it.
    pub fn set_when_down(&self, behaviour: impl Into<String>) {
        let _ = self.when_down.set(behaviour.into());
    }

    /// Why Redis refuses writes, while it does (reachable, but nothing would be durable).
    pub fn refusing(&self) -> Option<String> {
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
        if let StateError::Refused(reason) = error {
            self.set_refusing(Some(reason.clone()));
            return;
        }
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

    /// Pings Redis: true when it answers at all. An error reply means it is reachable but
    /// refuses (a full disk makes even `PING` answer `MISCONF`); while it refuses, a test write
    /// tells when it accepts writes again.
    async fn probe(&self, manager: &mut ConnectionManager) -> bool {
        let timeout = self.command_timeout;
        let ping =
            tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(manager)).await;
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
                self.log_connect_failure(&e);
                None
            }
            Err(_) => {
                self.log_connect_failure(&redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting timed out",
                )));
                None
            }
        }
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
        Some("LOADING" | "MASTERDOWN" | "TRYAGAIN" | "BUSY") => {
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
