//! The replica's audit writer: takes events off the queue in batches, keeps of each text what
//! `audit.text` says (sealing it under the customer's key), and writes the batch with blocking
//! file I/O on Tokio's blocking pool, so no turn ever waits on the disk.

use super::customer_keys::CustomerKeys;
use super::files::AuditFiles;
use super::record::{AuditRecord, rfc3339, seal, text_hash};
use super::{AuditEvent, Counters};
use crate::config::AuditText;
use crate::telemetry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records written per batch at most.
const BATCH: usize = 512;

/// What the writer needs besides its queue and files.
pub(super) struct Settings {
    pub text: AuditText,
    pub replica_id: String,
}

/// Writes until `stop`, then what is still queued.
pub(super) async fn run(
    mut events: mpsc::Receiver<AuditEvent>,
    counters: Arc<Counters>,
    files: AuditFiles,
    mut keys: CustomerKeys,
    settings: Settings,
    stop: CancellationToken,
) {
    let mut files = Some(files);
    loop {
        let first = tokio::select! {
            event = events.recv() => event,
            _ = stop.cancelled() => {
                events.close();
                events.recv().await
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let mut lines = Vec::with_capacity(batch.len());
        for event in batch {
            let record = to_record(event, &settings, &mut keys).await;
            match serde_json::to_vec(&record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    lines.push(line);
                }
                Err(_) => counters.drop_records(1, "unserializable"),
            }
        }
        let Some(mut owned) = files.take() else {
            break;
        };
        let written = tokio::task::spawn_blocking(move || {
            let outcome = owned.write(&lines);
            (owned, outcome)
        })
        .await;
        let Ok((owned, outcome)) = written else {
            tracing::error!("the audit writer's file task failed; no more audit records");
            break;
        };
        counters
            .bytes_on_disk
            .store(owned.bytes_on_disk(), Ordering::Relaxed);
        files = Some(owned);
        counters
            .written
            .fetch_add(outcome.written, Ordering::Relaxed);
        metrics::counter!(telemetry::AUDIT_RECORDS_WRITTEN).increment(outcome.written);
        counters.drop_records(outcome.dropped, "write_failed");
        if let Some(error) = &outcome.error {
            tracing::warn!(%error, dropped = outcome.dropped, "audit records could not be written; answers go on");
        }
        counters.set_error(outcome.error);
    }
    if let Some(mut files) = files {
        let _ = tokio::task::spawn_blocking(move || files.rotate()).await;
    }
}

async fn to_record(event: AuditEvent, settings: &Settings, keys: &mut CustomerKeys) -> AuditRecord {
    let (sealed, text_sha256) = match settings.text {
        AuditText::Full => {
            let sealed = match keys.key_for(&event.conversation).await {
                Some(key) => seal(&key, &event.conversation, &event.text),
                None => None,
            };
            (sealed, None)
        }
        AuditText::Hash => (None, Some(text_hash(&event.text))),
        AuditText::Omit => (None, None),
    };
    AuditRecord {
        ts: rfc3339(event.ts_ms),
        ts_ms: event.ts_ms,
        direction: event.direction,
        channel: event.channel.as_str().to_string(),
        conversation: event.conversation,
        message_id: event.message_id,
        replica: settings.replica_id.clone(),
        outcome: event.outcome.to_string(),
        skill: event.skill,
        provider: event.provider,
        latency_ms: event.latency_ms,
        sealed,
        text_sha256,
        text: None,
        erased: None,
    }
}
