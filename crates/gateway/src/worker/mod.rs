//! The worker pool: feeds turns from the Redis inbox (new entries and entries abandoned by dead
//! replicas) and from the in-process queue of degraded mode, with bounded concurrency, and keeps
//! what it holds alive (entry idle times, conversation leases) while turns run.
//!
//! Two bounds: `slots` caps turns running at once (the configured concurrency); `held` caps
//! entries this replica holds, running or waiting for their conversation, so a replica never
//! hoards work that another replica could do.

mod delivery;
pub mod turn;

use crate::background::Background;
use crate::config::WorkersConfig;
use crate::inbox::redis::{EntryId, InboxEntry, RedisInbox};
use crate::message::{ConversationKey, InboundMessage};
use crate::state::StateStore;
use crate::state::link::RedisLink;
use crate::state::memory::{MemoryStore, QueuedMessage};
use crate::state::observe::{ReplicaCounters, publish_replica_counters};
use crate::state::redis::RedisStore;
use crate::telemetry;
use futures_util::FutureExt;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use turn::{TurnContext, TurnEnd, TurnError};

/// How long one `XREADGROUP` blocks; also the longest a stop request waits for the read loop.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// Most entries read or claimed in one command.
const BATCH: usize = 32;
/// Most entries refreshed or leases renewed in one command.
const HEARTBEAT_BATCH: usize = 128;

/// A message to answer and its place in its conversation.
#[derive(Debug, Clone)]
pub struct Job {
    /// The message.
    pub msg: InboundMessage,
    /// Its sequence number in the conversation.
    pub seq: u64,
    /// Its inbox entry (`None` for a degraded-mode message, which lives in this process only).
    pub entry: Option<EntryId>,
}

/// Conversation leases held by running turns, renewed by the heartbeat.
#[derive(Default)]
pub struct LeaseRegistry {
    leases: Mutex<HashMap<String, ConversationKey>>,
}

impl LeaseRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ConversationKey>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `holder` holds the lease of `conversation`, until the returned guard drops.
    pub fn hold(&self, holder: &str, conversation: ConversationKey) -> RenewedLease<'_> {
        self.lock().insert(holder.to_string(), conversation);
        RenewedLease {
            registry: self,
            holder: holder.to_string(),
        }
    }

    fn snapshot(&self) -> Vec<(ConversationKey, String)> {
        self.lock()
            .iter()
            .map(|(holder, conversation)| (conversation.clone(), holder.clone()))
            .collect()
    }
}

/// A lease the heartbeat renews; dropping it (also while a panicking turn unwinds) stops that.
pub struct RenewedLease<'a> {
    registry: &'a LeaseRegistry,
    holder: String,
}

impl Drop for RenewedLease<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.holder);
    }
}

/// What dead-lettering needs to know about an entry.
#[derive(Clone, Copy)]
struct EntryRef<'a> {
    id: &'a EntryId,
    deliveries: u64,
}

/// An inbox entry this replica works on, in `held_entries` (whose ids the heartbeat keeps
/// alive) for exactly as long as the guard lives: dropping it, also while a panicking turn
/// unwinds, lets the entry go idle so it can be claimed again.
struct HeldEntry {
    pool: Arc<WorkerPool>,
    id: EntryId,
}

impl HeldEntry {
    /// Holds `id`; `None` when this replica holds it already.
    fn take(pool: &Arc<WorkerPool>, id: &EntryId) -> Option<HeldEntry> {
        let fresh = pool
            .held_entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        fresh.then(|| HeldEntry {
            pool: pool.clone(),
            id: id.clone(),
        })
    }
}

impl Drop for HeldEntry {
    fn drop(&mut self) {
        self.pool
            .held_entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The text of a panic's payload, for the log.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A turn counted as running; dropping it uncounts it (also when the turn's task is cancelled).
struct RunningTurn<'a> {
    pool: &'a WorkerPool,
}

impl Drop for RunningTurn<'_> {
    fn drop(&mut self) {
        self.pool.running.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(telemetry::TURNS_IN_FLIGHT).decrement(1.0);
    }
}

/// How often the inbox is sampled and the replica's counters published.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The replica's workers.
pub struct WorkerPool {
    ctx: Arc<TurnContext>,
    link: Arc<RedisLink>,
    redis: Arc<RedisStore>,
    memory: Arc<MemoryStore>,
    inbox: RedisInbox,
    config: WorkersConfig,
    /// Turns running at once.
    slots: Arc<Semaphore>,
    /// Redis entries held at once, running or waiting.
    held: Arc<Semaphore>,
    /// Ids of the Redis entries held, refreshed by the heartbeat.
    held_entries: Mutex<HashSet<EntryId>>,
    redis_leases: LeaseRegistry,
    memory_leases: LeaseRegistry,
    /// Every turn, so shutdown can wait for them.
    turns: TaskTracker,
    /// Turns running or waiting for their conversation now (the slots also count the read
    /// loop's reservation, so they cannot tell).
    running: AtomicUsize,
    /// Inbox entries waiting for any worker, cluster-wide, at the last sample.
    lag: AtomicU64,
    /// Turns this replica finished with a reply (Redis entries), for `oc:metrics:gateway:{id}`.
    handled: AtomicU64,
    /// Cancelled when the replica stops taking work: the loops end, waiting turns give up.
    stop: CancellationToken,
}

impl WorkerPool {
    /// A pool over the given stores.
    pub fn new(
        ctx: Arc<TurnContext>,
        link: Arc<RedisLink>,
        redis: Arc<RedisStore>,
        memory: Arc<MemoryStore>,
        config: WorkersConfig,
    ) -> Arc<WorkerPool> {
        let inbox = RedisInbox::new(link.clone(), &ctx.replica_id);
        Arc::new(WorkerPool {
            slots: Arc::new(Semaphore::new(config.concurrency)),
            held: Arc::new(Semaphore::new(config.concurrency * 2)),
            ctx,
            link,
            redis,
            memory,
            inbox,
            config,
            held_entries: Mutex::new(HashSet::new()),
            redis_leases: LeaseRegistry::default(),
            memory_leases: LeaseRegistry::default(),
            turns: TaskTracker::new(),
            running: AtomicUsize::new(0),
            handled: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            stop: CancellationToken::new(),
        })
    }

    /// Starts the feeding loops, and the upkeep (heartbeat, stats) on `background`, which ends it
    /// after the drain.
    pub fn start(
        self: &Arc<Self>,
        memory_queue: mpsc::Receiver<QueuedMessage>,
        background: &Background,
    ) -> TaskTracker {
        let stop = self.stop.clone();
        let loops = TaskTracker::new();
        for streams in self.inbox.readers() {
            loops.spawn(self.clone().read_loop(streams, stop.clone()));
        }
        loops.spawn(self.clone().claim_loop(stop.clone()));
        loops.spawn(self.clone().memory_loop(memory_queue, stop));
        background.spawn(self.clone().heartbeat_loop(background.stopping()));
        background.spawn(self.clone().stats_loop(background.stopping()));
        loops.close();
        loops
    }

    /// Stops taking new work: the feeding loops end (the returned tracker of [`Self::start`]
    /// completes) and turns still waiting for their conversation give up.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits up to `grace` for running turns; true when all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.turns.close();
        tokio::time::timeout(grace, self.turns.wait()).await.is_ok()
    }

    /// Whether the inbox holds more entries waiting for a worker than readiness allows: the
    /// cluster is behind, and the balancer should hear so.
    pub fn overloaded(&self) -> bool {
        let limit = self
            .config
            .ready_max_lag
            .unwrap_or(self.config.inbox_max_length / 2);
        self.lag.load(Ordering::Relaxed) > limit
    }

    /// Turns running now, including those waiting for an earlier turn of their conversation.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Counts a turn in the health answer and the in-flight gauge for as long as it lives.
    fn track_turn(&self) -> RunningTurn<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(telemetry::TURNS_IN_FLIGHT).increment(1.0);
        RunningTurn { pool: self }
    }

    /// Gives up an entry at once so any replica retries it (after a panic or a failed turn),
    /// instead of leaving it until `claimIdleMs` passes.
    async fn release(&self, id: &EntryId) {
        if let Err(e) = self.inbox.release(id, self.config.claim_idle).await {
            tracing::warn!(entry = %id, error = %e, "could not release the entry; it is retried once it has been idle for claimIdleMs");
        }
    }

    /// Reads `streams` (every inbox shard on one Redis; one shard per loop in a cluster) for as
    /// long as the replica takes work.
    async fn read_loop(self: Arc<Self>, streams: Vec<String>, stop: CancellationToken) {
        let mut link_state = self.link.watch();
        let mut conn = None;
        let mut group_ready = false;
        while !stop.is_cancelled() {
            if !self.link.is_up() {
                conn = None;
                group_ready = false;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = link_state.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            if !group_ready {
                match self.inbox.ensure_group().await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot create the inbox consumer group");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            let permits = tokio::select! {
                _ = stop.cancelled() => return,
                permits = self.permits() => permits,
            };
            let Some((held, slot)) = permits else { return };
            // A connection opened before the link connected anew may lead to a primary that was
            // failed over yet still answers (a partition kept it from being demoted): reading
            // its inbox would starve the new primary's and hand out entries it alone holds.
            let generation = self.link.generation();
            if conn
                .as_ref()
                .is_some_and(|(opened, _)| *opened != generation)
            {
                conn = None;
            }
            let c = match &mut conn {
                Some((_, c)) => c,
                None => match self.inbox.read_connection(READ_BLOCK).await {
                    Ok(c) => &mut conn.insert((generation, c)).1,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let extra = self
                .slots
                .available_permits()
                .min(self.held.available_permits())
                .min(BATCH - 1);
            match self.inbox.read(c, &streams, 1 + extra, READ_BLOCK).await {
                Ok(entries) => self.start_entries(entries, Some((held, slot))).await,
                Err(e) => {
                    conn = None;
                    if !e.is_unavailable() {
                        tracing::warn!(error = %e, "reading the inbox failed");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn claim_loop(self: Arc<Self>, stop: CancellationToken) {
        let interval =
            (self.config.claim_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if !self.link.is_up() {
                continue;
            }
            let room = self
                .slots
                .available_permits()
                .min(self.held.available_permits())
                .min(BATCH);
            if room == 0 {
                continue;
            }
            match self
                .inbox
                .claim_abandoned(self.config.claim_idle, room)
                .await
            {
                Ok(entries) => {
                    let (ours, theirs): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| {
                        self.held_entries
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains(&e.id)
                    });
                    if !ours.is_empty() {
                        tracing::debug!(
                            count = ours.len(),
                            "re-took entries this replica is already working on"
                        );
                    }
                    if !theirs.is_empty() {
                        tracing::info!(
                            count = theirs.len(),
                            "took over inbox entries left by an unresponsive replica"
                        );
                        metrics::counter!(telemetry::INBOX_CLAIMED).increment(theirs.len() as u64);
                    }
                    self.start_entries(theirs, None).await;
                }
                Err(e) if !e.is_unavailable() => {
                    tracing::warn!(error = %e, "claiming abandoned inbox entries failed");
                }
                Err(_) => {}
            }
        }
    }

    /// One held-entry permit and one turn slot, waiting for both.
    async fn permits(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let held = self.held.clone().acquire_owned().await.ok()?;
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        Some((held, slot))
    }

    async fn start_entries(
        self: &Arc<Self>,
        entries: Vec<InboxEntry>,
        mut first: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    ) {
        if self.stop.is_cancelled() {
            // A read that was blocking when the drain began can still hand this replica new
            // entries: give them back at once, for a replica that is not leaving.
            for entry in &entries {
                self.release(&entry.id).await;
            }
            if !entries.is_empty() {
                tracing::info!(
                    entries = entries.len(),
                    "draining: entries read after the stop were given back"
                );
            }
            return;
        }
        for entry in entries {
            let permits = match first.take() {
                Some(p) => Some(p),
                None => self.permits().await,
            };
            let Some((held, slot)) = permits else { return };
            let Some(held_entry) = HeldEntry::take(self, &entry.id) else {
                continue;
            };
            let pool = self.clone();
            self.turns.spawn(async move {
                let _held = held;
                let _running = pool.track_turn();
                let finished = AssertUnwindSafe(pool.process_entry(entry, slot))
                    .catch_unwind()
                    .await;
                if let Err(panic) = finished {
                    metrics::counter!(telemetry::TURNS_FAILED, "reason" => "panic").increment(1);
                    tracing::error!(entry = %held_entry.id, panic = %panic_message(&panic), "a turn panicked; its entry is released for another attempt");
                    pool.release(&held_entry.id).await;
                }
                // Dropping `held_entry` here (also when the task unwinds) stops the heartbeat
                // from keeping the entry alive.
                drop(held_entry);
            });
        }
    }

    /// Runs one entry's turn and acknowledges it; the entry's message moves into the turn (one
    /// copy per turn, not two).
    async fn process_entry(&self, entry: InboxEntry, slot: OwnedSemaphorePermit) {
        let InboxEntry {
            id,
            deliveries,
            content,
        } = entry;
        let entry = EntryRef {
            id: &id,
            deliveries,
        };
        let (msg, seq) = match content {
            Ok(content) => content,
            Err(reason) => {
                self.dead_letter(entry, "", &reason, None).await;
                return;
            }
        };
        if deliveries > self.config.max_deliveries {
            let raw = serde_json::to_string(&msg).unwrap_or_default();
            let reason = format!(
                "delivered {deliveries} times without completing (limit {})",
                self.config.max_deliveries
            );
            self.dead_letter(entry, &raw, &reason, Some((&msg, seq)))
                .await;
            return;
        }
        let job = Job {
            msg,
            seq,
            entry: Some(id.clone()),
        };
        match turn::run(
            &self.ctx,
            &*self.redis,
            &self.redis_leases,
            &job,
            &self.slots,
            slot,
            Some(&self.stop),
        )
        .await
        {
            // The worker that won the commit delivers and acknowledges; acking here could lose
            // the reply if that worker dies before sending it.
            Ok(TurnEnd::Discarded) => {}
            // Not in this Redis's inbox: an acknowledgement could only hit another entry.
            Ok(TurnEnd::NotQueued) => {}
            // The commit acknowledged the entry with the answer.
            Ok(TurnEnd::Replied {
                acknowledged: true, ..
            }) => {
                self.handled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(TurnEnd::Replied { .. } | TurnEnd::AlreadyAnswered(_)) => {
                self.handled.fetch_add(1, Ordering::Relaxed);
                let acked = crate::state::while_unavailable(|| self.inbox.ack(&id)).await;
                if let Err(e) = acked {
                    // The reply is on record; whoever claims the entry finds it and just acks.
                    tracing::warn!(entry = %entry.id, error = %e, "could not acknowledge a finished entry");
                }
            }
            Err(TurnError::Stopped) => {}
            Err(e) => {
                metrics::counter!(telemetry::TURNS_FAILED, "reason" => "error").increment(1);
                tracing::warn!(entry = %entry.id, error = %e, "turn failed; its entry is released for another attempt");
                self.release(entry.id).await;
            }
        }
    }

    async fn dead_letter(
        &self,
        entry: EntryRef<'_>,
        raw: &str,
        reason: &str,
        job: Option<(&InboundMessage, u64)>,
    ) {
        tracing::error!(entry = %entry.id, reason, "moving inbox entry to the dead-letter stream");
        let channel = job.map(|(m, _)| m.channel.as_str()).unwrap_or("unknown");
        metrics::counter!(telemetry::MESSAGES_FAILED, "channel" => channel, "reason" => "dead_letter").increment(1);
        if let Err(e) = self
            .inbox
            .dead_letter(entry.id, entry.deliveries, raw, reason)
            .await
        {
            tracing::warn!(entry = %entry.id, error = %e, "dead-lettering failed; the entry stays pending");
            return;
        }
        if let Some((msg, seq)) = job
            && let Err(e) = self.redis.skip_turn(&msg.conversation(), seq, "").await
        {
            tracing::warn!(error = %e, "could not release the conversation after dead-lettering");
        }
    }

    async fn memory_loop(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<QueuedMessage>,
        stop: CancellationToken,
    ) {
        loop {
            let queued = tokio::select! {
                biased;
                queued = queue.recv() => queued,
                _ = stop.cancelled() => {
                    // Degraded-mode messages exist only here: finish those already accepted.
                    queue.close();
                    queue.recv().await
                }
            };
            let Some(QueuedMessage { msg, seq }) = queued else {
                return;
            };
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let pool = self.clone();
            self.turns.spawn(async move {
                let _running = pool.track_turn();
                let job = Job {
                    msg,
                    seq,
                    entry: None,
                };
                let result = AssertUnwindSafe(turn::run(
                    &pool.ctx,
                    &*pool.memory,
                    &pool.memory_leases,
                    &job,
                    &pool.slots,
                    slot,
                    None,
                ))
                .catch_unwind()
                .await;
                match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        metrics::counter!(telemetry::TURNS_FAILED, "reason" => "error").increment(1);
                        tracing::warn!(error = %e, "degraded-mode turn failed");
                    }
                    Err(panic) => {
                        metrics::counter!(telemetry::TURNS_FAILED, "reason" => "panic").increment(1);
                        tracing::error!(panic = %panic_message(&panic), "a degraded-mode turn panicked; its message is lost with it (it lived in this process only)");
                    }
                }
            });
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = (self.config.claim_idle / 3).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let ids: Vec<EntryId> = self
                .held_entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            if self.link.is_up() {
                // In batches: one command over thousands of keys would block Redis (and every
                // webhook's acceptance behind it) for milliseconds.
                for batch in ids.chunks(HEARTBEAT_BATCH) {
                    if let Err(e) = self.inbox.refresh(batch).await {
                        tracing::debug!(error = %e, "refreshing held inbox entries failed");
                    }
                }
                for batch in self.redis_leases.snapshot().chunks(HEARTBEAT_BATCH) {
                    if let Err(e) = self.redis.renew_leases(batch).await {
                        tracing::debug!(error = %e, "renewing conversation leases failed");
                    }
                }
            }
            let _ = self
                .memory
                .renew_leases(&self.memory_leases.snapshot())
                .await;
        }
    }

    /// Writes this replica's counters to `oc:metrics:gateway:{replica_id}` for `clawgate cluster
    /// status`; the hash expires when the replica stops refreshing it.
    async fn publish_counters(&self) {
        let Ok(mut conn) = self.link.connection() else {
            return;
        };
        let counters = ReplicaCounters {
            handled: self.handled.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed) as u64,
        };
        let result = publish_replica_counters(&mut conn, &self.ctx.replica_id, counters).await;
        if let Err(e) = result {
            self.link.report(&crate::state::link::classify(&e));
        }
    }

    /// Samples the inbox (lag, pending: metrics and readiness) and publishes this replica's
    /// counters every [`STATS_INTERVAL`].
    async fn stats_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(STATS_INTERVAL) => {}
            }
            self.memory.sweep();
            if self.link.is_up()
                && let Ok(stats) = self.inbox.stats().await
            {
                metrics::gauge!(telemetry::INBOX_PENDING).set(stats.pending as f64);
                let lag = stats.length.saturating_sub(stats.pending);
                self.lag.store(lag, Ordering::Relaxed);
                metrics::gauge!(telemetry::INBOX_LAG).set(lag as f64);
            }
            self.publish_counters().await;
        }
    }
}
