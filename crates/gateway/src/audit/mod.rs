//! The audit trail: one JSON line per accepted inbound message and per reply sent, so an
//! operator can answer "what did the bot tell this customer last Tuesday?".
//!
//! Written off the hot path: ingress and the workers hand records to a bounded queue and never
//! wait; one writer task per replica seals the texts, appends them to files it rotates by size,
//! compresses, and deletes oldest first to stay within `audit.maxTotalBytes` and
//! `audit.retentionDays`. A record that cannot be queued or written (a full or read-only disk) is
//! counted as dropped and the replica keeps answering; writing resumes by itself when it can.
//!
//! Texts are encrypted with a key of the customer's own kept in Redis (`oc:auditkey:{…}`):
//! `clawgate forget` deletes the key, and every record of that customer becomes unreadable
//! without touching the files ("crypto-shredding").

pub mod customer_keys;
pub mod files;
pub mod record;
pub mod search;
mod writer;

use crate::background::Background;
use crate::config::AuditConfig;
use crate::message::{Channel, InboundMessage, StoredReply, now_ms};
use crate::state::link::RedisLink;
use crate::telemetry;
pub use record::{AuditRecord, Direction};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

/// What happened, as ingress and the workers report it; the writer turns it into a record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// When it happened (ms since the epoch).
    pub ts_ms: u64,
    /// A message in, or a reply out.
    pub direction: Direction,
    /// Where the customer wrote.
    pub channel: Channel,
    /// `channel:user`.
    pub conversation: String,
    /// The customer's message id (a reply carries the id of the message it answers).
    pub message_id: String,
    /// The skill that answered (replies).
    pub skill: Option<String>,
    /// The provider (or template) that wrote the answer (replies).
    pub provider: Option<String>,
    /// From the message's arrival to the reply (replies).
    pub latency_ms: Option<u64>,
    /// `accepted`, `sent` (platform API), `answered` (held request), `dead_letter`.
    pub outcome: &'static str,
    /// The text, before `audit.text` decides what is kept of it.
    pub text: String,
}

impl AuditEvent {
    /// A message accepted now.
    pub fn accepted(msg: &InboundMessage) -> AuditEvent {
        AuditEvent {
            ts_ms: now_ms(),
            direction: Direction::In,
            channel: msg.channel,
            conversation: msg.conversation().to_string(),
            message_id: msg.message_id.clone(),
            skill: None,
            provider: None,
            latency_ms: None,
            outcome: "accepted",
            text: msg.text.clone(),
        }
    }

    /// `reply` to `msg` handed to the customer now, with `outcome`.
    pub fn replied(msg: &InboundMessage, reply: &StoredReply, outcome: &'static str) -> AuditEvent {
        let now = now_ms();
        AuditEvent {
            ts_ms: now,
            direction: Direction::Out,
            channel: msg.channel,
            conversation: msg.conversation().to_string(),
            message_id: msg.message_id.clone(),
            skill: Some(reply.skill.clone()),
            provider: Some(reply.provider.clone()),
            latency_ms: Some(now.saturating_sub(msg.received_at_ms)),
            outcome,
            text: reply.text.clone(),
        }
    }
}

/// Counters the writer keeps for `/healthz` and the metrics.
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    bytes_on_disk: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn drop_records(&self, count: u64, reason: &'static str) {
        if count == 0 {
            return;
        }
        self.dropped.fetch_add(count, Ordering::Relaxed);
        metrics::counter!(telemetry::AUDIT_RECORDS_DROPPED, "reason" => reason).increment(count);
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// The audit trail as `/healthz` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditStatus {
    /// Whether `audit.dir` is set.
    pub enabled: bool,
    /// This replica's folder.
    pub dir: Option<PathBuf>,
    /// Records written since the replica started.
    pub written: u64,
    /// Records lost since it started: the queue was full, or the disk refused them.
    pub dropped: u64,
    /// What its files take now.
    pub bytes_on_disk: u64,
    /// The last write error, until a write succeeds again.
    pub last_error: Option<String>,
}

/// Where ingress and the workers hand audit events: cheap to clone, never blocks.
#[derive(Clone, Default)]
pub struct AuditLog {
    queue: Option<mpsc::Sender<AuditEvent>>,
    counters: Arc<Counters>,
    dir: Option<PathBuf>,
}

impl AuditLog {
    /// No audit trail (`audit.dir` unset): events are ignored.
    pub fn disabled() -> AuditLog {
        AuditLog::default()
    }

    /// Starts the writer of `replica_id` on `background`, keys of customers in the Redis behind
    /// `link`; disabled when `config.dir` is unset.
    pub fn start(
        config: &AuditConfig,
        replica_id: &str,
        link: Arc<RedisLink>,
        background: &Background,
    ) -> AuditLog {
        let Some(root) = &config.dir else {
            return AuditLog::disabled();
        };
        let dir = files::replica_dir(root, replica_id);
        let (queue, events) = mpsc::channel(config.queue);
        let counters = Arc::new(Counters::default());
        let files = files::AuditFiles::open(dir.clone(), config);
        counters
            .bytes_on_disk
            .store(files.bytes_on_disk(), Ordering::Relaxed);
        let keys = customer_keys::CustomerKeys::new(link, config.retention);
        background.spawn(writer::run(
            events,
            counters.clone(),
            files,
            keys,
            writer::Settings {
                text: config.text,
                replica_id: replica_id.to_string(),
            },
            background.stopping(),
        ));
        AuditLog {
            queue: Some(queue),
            counters,
            dir: Some(dir),
        }
    }

    /// Records `msg` as accepted.
    pub fn accepted(&self, msg: &InboundMessage) {
        self.record(|| AuditEvent::accepted(msg));
    }

    /// Records `reply` to `msg` as handed to the customer with `outcome`.
    pub fn replied(&self, msg: &InboundMessage, reply: &StoredReply, outcome: &'static str) {
        self.record(|| AuditEvent::replied(msg, reply, outcome));
    }

    /// Queues the event `make` builds for the writer; when the queue is full it is dropped and
    /// counted. With no audit trail nothing is built: the hot path pays nothing for it.
    fn record(&self, make: impl FnOnce() -> AuditEvent) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(make()).is_err() {
            self.counters.drop_records(1, "queue_full");
        }
    }

    /// Where the trail stands.
    pub fn status(&self) -> AuditStatus {
        AuditStatus {
            enabled: self.queue.is_some(),
            dir: self.dir.clone(),
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            bytes_on_disk: self.counters.bytes_on_disk.load(Ordering::Relaxed),
            last_error: self
                .counters
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}
