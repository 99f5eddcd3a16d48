//! Where an accepted message goes: Redis when it answers; the in-process store when it does not
//! and the replica runs in `degrade` mode; nowhere (503) in `reject` mode, when Redis is full or
//! while the replica drains in degraded mode (in-process work would die with it).

use crate::audit::AuditLog;
use crate::config::RedisDownMode;
use crate::message::{Channel, InboundMessage};
use crate::state::link::RedisLink;
use crate::state::memory::MemoryStore;
use crate::state::redis::RedisStore;
use crate::state::{Acceptance, StateError, StateStore};
use crate::telemetry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Longest single wait for Redis during a blip before checking again.
const BLIP_POLL: Duration = Duration::from_millis(100);

/// Which store holds an accepted message (and so its reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Durable in Redis, processed by any replica.
    Redis,
    /// In this process only (degraded mode).
    Memory,
}

/// Why ingress refused a message; every variant means 503 and "retry later".
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// Redis is down and the replica is configured to reject, or is draining.
    #[error("{0}")]
    Unavailable(String),
    /// Redis or the in-process queue is full.
    #[error("{0}")]
    Full(String),
    /// Redis refuses writes (full disk or memory, a replica, too few replicas): nothing would be
    /// durable, so nothing is accepted, in Redis or in memory.
    #[error("{0}; retry later")]
    Refused(String),
    /// Redis answered something unexpected.
    #[error("state store error: {0}")]
    Store(String),
}

/// Routes accepted messages to the right store.
pub struct Ingress {
    link: Arc<RedisLink>,
    redis: Arc<RedisStore>,
    memory: Arc<MemoryStore>,
    mode: RedisDownMode,
    /// How long an outage lasts before messages are answered from memory: within it, ingress
    /// waits for Redis, so a restart of a second costs latency, not context.
    degrade_after: Duration,
    /// Set at SIGTERM: degraded-mode intake stops, Redis intake continues (others process it).
    draining: AtomicBool,
    /// Where accepted messages are recorded.
    audit: AuditLog,
}

impl Ingress {
    /// Ingress over both stores.
    pub fn new(
        link: Arc<RedisLink>,
        redis: Arc<RedisStore>,
        memory: Arc<MemoryStore>,
        mode: RedisDownMode,
        degrade_after: Duration,
        audit: AuditLog,
    ) -> Ingress {
        Ingress {
            link,
            redis,
            memory,
            mode,
            degrade_after,
            draining: AtomicBool::new(false),
            audit,
        }
    }

    /// Stops degraded-mode intake.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True while Redis is unreachable and messages are processed in-process.
    pub fn degraded(&self) -> bool {
        !self.link.is_up() && self.mode == RedisDownMode::Degrade
    }

    /// Dedupes and enqueues `msg`; on success the message will be answered.
    pub async fn accept(&self, msg: &InboundMessage) -> Result<(Acceptance, Origin), IngressError> {
        let channel = msg.channel.as_str();
        let result = self.route(msg).await;
        match &result {
            Ok((Acceptance::Accepted { .. }, origin)) => {
                self.audit.accepted(msg);
                let store = match origin {
                    Origin::Redis => "redis",
                    Origin::Memory => "memory",
                };
                metrics::counter!(telemetry::MESSAGES_ACCEPTED, "channel" => channel, "store" => store)
                    .increment(1);
            }
            Ok((Acceptance::Duplicate, _)) => {
                metrics::counter!(telemetry::MESSAGES_DUPLICATE, "channel" => channel).increment(1);
            }
            Err(e) => {
                let reason = match e {
                    IngressError::Unavailable(_) => "unavailable",
                    IngressError::Full(_) => "full",
                    IngressError::Refused(_) => "refused",
                    IngressError::Store(_) => "store_error",
                };
                metrics::counter!(telemetry::MESSAGES_REJECTED, "channel" => channel, "reason" => reason)
                    .increment(1);
            }
        }
        result
    }

    async fn route(&self, msg: &InboundMessage) -> Result<(Acceptance, Origin), IngressError> {
        let arrived = tokio::time::Instant::now();
        let mut last_error = None;
        loop {
            if self.link.is_up() {
                match self.redis.accept(msg).await {
                    Ok(acceptance) => return Ok((acceptance, Origin::Redis)),
                    Err(StateError::Full(reason)) => return Err(IngressError::Full(reason)),
                    // A refusal that made the link let go of the primary (READONLY: it was
                    // demoted by a failover) is waited out like a blip while the new one is
                    // found; any other refusal is answered at once.
                    Err(StateError::Refused(reason)) if self.link.is_up() => {
                        return Err(IngressError::Refused(reason));
                    }
                    Err(StateError::Refused(_)) => {}
                    Err(StateError::Protocol(reason)) => {
                        return Err(IngressError::Store(reason));
                    }
                    Err(e @ StateError::Unavailable(_)) => last_error = Some(e),
                }
            }
            if !self.wait_out_blip(arrived.elapsed()).await {
                break;
            }
        }
        if let Some(error) = last_error.filter(|_| self.link.is_up()) {
            // Redis answers, but not for this message (in a cluster: its master is failing
            // over, or the client has not found the new one yet).
            tracing::warn!(%error, waited_ms = arrived.elapsed().as_millis() as u64, "Redis did not take the message in time");
        }
        match self.mode {
            RedisDownMode::Reject => Err(IngressError::Unavailable(
                "Redis is unreachable and this gateway runs with redis.downMode = \"reject\"; retry later".into(),
            )),
            RedisDownMode::Degrade if self.draining.load(Ordering::Acquire) => Err(
                IngressError::Unavailable("this replica is shutting down; retry on another".into()),
            ),
            RedisDownMode::Degrade => match self.memory.accept(msg).await {
                Ok(acceptance) => Ok((acceptance, Origin::Memory)),
                Err(e) => Err(IngressError::Full(e.to_string())),
            },
        }
    }

    /// In degrade mode, while the outage (or this message's wait, whichever is longer) is
    /// younger than `degrade_after`: waits a little for Redis and returns true (try it again).
    /// False once it is an outage worth degrading for.
    async fn wait_out_blip(&self, waited: Duration) -> bool {
        if self.mode != RedisDownMode::Degrade
            || self.draining.load(Ordering::Acquire)
            || !self.link.ever_up()
        {
            // A Redis this replica never reached is not restarting: answer from memory at once.
            return false;
        }
        let down_for = self.link.outage().unwrap_or(Duration::ZERO).max(waited);
        let Some(left) = self.degrade_after.checked_sub(down_for) else {
            return false;
        };
        if left.is_zero() {
            return false;
        }
        let mut state = self.link.watch();
        let _ =
            tokio::time::timeout(left.min(BLIP_POLL), state.wait_for(|up| *up == Some(true))).await;
        true
    }

    /// Keeps a platform message that could not be read in the dead-letter stream of the store
    /// that answers now (in-process, logged, while Redis is unreachable).
    pub async fn dead_letter_unreadable(
        &self,
        channel: Channel,
        reason: &str,
        payload: &str,
    ) -> Result<(), IngressError> {
        let (store, _) = self.current_store();
        store
            .dead_letter_unreadable(channel, reason, payload)
            .await
            .map_err(|e| match e {
                StateError::Full(reason) => IngressError::Full(reason),
                StateError::Refused(reason) => IngressError::Refused(reason),
                StateError::Unavailable(reason) => IngressError::Unavailable(reason),
                StateError::Protocol(reason) => IngressError::Store(reason),
            })
    }

    /// The store holding messages of `origin`.
    pub fn store(&self, origin: Origin) -> &dyn StateStore {
        match origin {
            Origin::Redis => &*self.redis,
            Origin::Memory => &*self.memory,
        }
    }

    /// [`Self::current_store`], owned, for work that outlives the request (a person's reply
    /// still being sent).
    pub fn current_store_shared(&self) -> Arc<dyn StateStore> {
        if self.link.is_up() {
            self.redis.clone()
        } else {
            self.memory.clone()
        }
    }

    /// The store to read conversations from now: Redis when it answers, else the in-process one.
    pub fn current_store(&self) -> (&dyn StateStore, Origin) {
        if self.link.is_up() {
            (&*self.redis, Origin::Redis)
        } else {
            (&*self.memory, Origin::Memory)
        }
    }
}
