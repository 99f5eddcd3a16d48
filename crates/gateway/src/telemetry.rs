//! Metric names, their help texts and histogram buckets, in one place; and the Prometheus
//! recorder. Code elsewhere records through the `metrics` macros with these constants only.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Audit records on disk (see `audit`).
pub const AUDIT_RECORDS_WRITTEN: &str = "clawgate_audit_records_written_total";
/// Audit records lost, by `reason`: `queue_full` (the writer fell behind), `write_failed` (the
/// disk refused them: full, read-only, missing), `unserializable`.
pub const AUDIT_RECORDS_DROPPED: &str = "clawgate_audit_records_dropped_total";

/// Messages durably accepted at ingress, by `channel` and `store` (`redis` | `memory`).
pub const MESSAGES_ACCEPTED: &str = "clawgate_messages_accepted_total";
/// Inbound messages recognised as duplicates (platform retries, client resends), by `channel`.
pub const MESSAGES_DUPLICATE: &str = "clawgate_messages_duplicate_total";
/// Messages refused at ingress (503), by `channel` and `reason`.
pub const MESSAGES_REJECTED: &str = "clawgate_messages_rejected_total";
/// Replies committed, by `channel` and `provider`.
pub const MESSAGES_REPLIED: &str = "clawgate_messages_replied_total";
/// Messages that could not be answered (dead-lettered), by `channel` and `reason`.
pub const MESSAGES_FAILED: &str = "clawgate_messages_failed_total";
/// Messages answered together with an earlier message of the same customer (flood control).
pub const MESSAGES_COALESCED: &str = "clawgate_messages_coalesced_total";
/// Turns that ended without an answer and gave their message back for another attempt, by
/// `reason` (`panic`, `error`).
pub const TURNS_FAILED: &str = "clawgate_turns_failed_total";
/// Turns whose result was discarded because another worker had answered the message already.
pub const TURNS_DISCARDED: &str = "clawgate_turns_discarded_total";
/// Time from acceptance to committed reply, seconds.
pub const TURN_DURATION: &str = "clawgate_turn_duration_seconds";
/// Turns running now.
pub const TURNS_IN_FLIGHT: &str = "clawgate_turns_in_flight";
/// Provider attempts, by `provider` and `outcome` (`ok`, `timeout`, `connect_error`, `http_5xx`,
/// `http_4xx`, `rate_limited`, `invalid_response`).
pub const PROVIDER_CALLS: &str = "clawgate_provider_calls_total";
/// Provider attempt latency, seconds, by `provider`.
pub const PROVIDER_LATENCY: &str = "clawgate_provider_latency_seconds";
/// Turns answered by a provider other than the first of the chain, by `provider`.
pub const PROVIDER_FALLBACKS: &str = "clawgate_provider_fallbacks_total";
/// Providers passed over without being asked, by `provider` and `reason` (`breaker_open`,
/// `rate_limited` = spilled to the next provider, `deadline` = the turn's deadline was spent).
pub const PROVIDER_SKIPPED: &str = "clawgate_provider_skipped_total";
/// Time a call waited for room in its provider's shared budget, seconds, by `provider`.
pub const PROVIDER_RATE_LIMIT_WAIT: &str = "clawgate_provider_rate_limit_wait_seconds";
/// 1 while a provider's circuit breaker is open, by `provider`.
pub const PROVIDER_BREAKER_OPEN: &str = "clawgate_provider_breaker_open";
/// Breaker state changes reported by this replica, by `provider` and `to` (`open`, `closed`).
pub const PROVIDER_BREAKER_TRANSITIONS: &str = "clawgate_provider_breaker_transitions_total";
/// Background probes of open providers, by `provider` and `outcome`.
pub const PROVIDER_PROBES: &str = "clawgate_provider_probes_total";
/// Hedged attempts, by `provider` (the slow one) and `winner` (`original`, `hedge`).
pub const PROVIDER_HEDGES: &str = "clawgate_provider_hedges_total";
/// Inbox entries not yet delivered to any worker (sampled).
pub const INBOX_LAG: &str = "clawgate_inbox_lag";
/// Inbox entries delivered but not yet acknowledged (sampled).
pub const INBOX_PENDING: &str = "clawgate_inbox_pending";
/// Entries taken over from replicas presumed dead.
pub const INBOX_CLAIMED: &str = "clawgate_inbox_claimed_total";
/// Reply sends to WhatsApp and Telegram, by `channel` and `outcome` (`sent`, `retryable_error`,
/// `refused`).
pub const EGRESS_SENDS: &str = "clawgate_egress_sends_total";
/// Replies that could not be delivered and went to the dead-letter stream, by `channel`.
pub const EGRESS_DEAD_LETTERS: &str = "clawgate_egress_dead_letters_total";
/// Messages of platform notifications as read, by `channel`, `type` (the platform's name for it:
/// `text`, `image`, `reaction`, `callback_query`, …; `unknown` for types not listed) and `action`
/// (`answer`, `unsupported` = answered with the text-only notice, `ignored`, `relinked`, `unreadable`).
pub const INBOUND_MESSAGES: &str = "clawgate_inbound_messages_total";
/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "clawgate_connections_open";
/// Connections asked to close to make room at `gateway.maxConnections` (oldest first; one with a
/// request in flight finishes it first).
pub const CONNECTIONS_EVICTED: &str = "clawgate_connections_evicted_total";
/// Client connections closed on arrival because `gateway.maxConnections` were open.
pub const CONNECTIONS_REFUSED: &str = "clawgate_connections_refused_total";
/// Log lines lost because stderr was full, closed or too slow (they are dropped, never waited
/// for).
pub const LOG_LINES_DROPPED: &str = "clawgate_log_lines_dropped_total";
/// Inbound webhook notifications that are not messages (WhatsApp `statuses`, Telegram edits), by
/// `channel` and `kind`.
pub const WEBHOOK_EVENTS: &str = "clawgate_webhook_events_total";
/// Dispatcher webhook events, by `event` (`escalation.created`, `escalation.message`) and
/// `outcome` (`sent`, `not_configured`, `dead_letter`).
pub const ESCALATION_EVENTS: &str = "clawgate_escalation_events_total";
/// Messages people sent customers of handed-over conversations, by `channel` and `outcome`
/// (`sent`, `window_closed`, `failed`).
pub const PERSON_REPLIES: &str = "clawgate_person_replies_total";
/// Time from a hand-over to the first message a person sent the customer, seconds.
pub const ESCALATION_FIRST_REPLY: &str = "clawgate_escalation_first_reply_seconds";
/// Pending escalations (a cluster-wide figure, read from Redis by each replica).
pub const ESCALATIONS_PENDING: &str = "clawgate_escalations_pending";
/// Pending escalations nobody claimed within `escalation.claimWithinMs` (the alert's figure).
pub const ESCALATIONS_UNCLAIMED_OVERDUE: &str = "clawgate_escalations_unclaimed_overdue";
/// Age of the oldest pending escalation nobody claimed, seconds (0 when none).
pub const ESCALATION_OLDEST_UNCLAIMED: &str = "clawgate_escalation_oldest_unclaimed_seconds";
/// Config reload attempts on a changed file, by `outcome` (`applied`, `rejected`).
pub const CONFIG_RELOADS: &str = "clawgate_config_reloads_total";
/// Model classifications of messages the skill triggers could not route, by `outcome`
/// (`matched`, `unmatched`, `no_model`, `timeout`).
pub const SKILL_CLASSIFICATIONS: &str = "clawgate_skill_classifications_total";
/// 1 while Redis answers.
pub const REDIS_UP: &str = "clawgate_redis_up";
/// Time a `WAIT` for `redis.ackReplicas` replicas took, seconds.
pub const REDIS_ACK_WAIT: &str = "clawgate_redis_ack_wait_seconds";
/// Acknowledgements refused because too few replicas confirmed the write in time.
pub const REDIS_ACK_SHORTFALLS: &str = "clawgate_redis_ack_shortfalls_total";
/// 1 while Redis answers but refuses writes (`MISCONF`, `OOM`, `READONLY`, `NOREPLICAS`):
/// messages get 503 until it accepts them again.
pub const REDIS_REFUSING_WRITES: &str = "clawgate_redis_refusing_writes";
/// 1 while the replica serves from in-process state.
pub const DEGRADED: &str = "clawgate_degraded";
/// Web-chat event streams (SSE) open on this replica.
pub const WEBCHAT_EVENT_STREAMS: &str = "clawgate_webchat_event_streams";
/// Session events sent to widgets, by type.
pub const WEBCHAT_EVENTS_SENT: &str = "clawgate_webchat_events_sent_total";

/// Turn and provider latency buckets, seconds: from a cached answer to a slow local model.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Human response time buckets, seconds: from half a minute to a working day.
const HUMAN_BUCKETS: &[f64] = &[
    30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle for `/metrics`.
pub fn install() -> Option<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Some(handle.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(TURN_DURATION.into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(PROVIDER_LATENCY.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(PROVIDER_RATE_LIMIT_WAIT.into()),
                LATENCY_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(ESCALATION_FIRST_REPLY.into()), HUMAN_BUCKETS)
        });
    let handle = match builder.and_then(|b| b.install_recorder()) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
            return None;
        }
    };
    describe();
    zero_series();
    Some(HANDLE.get_or_init(|| handle).clone())
}

/// Series that exist from the start at 0, so "nothing was accepted" reads as 0 rather than as
/// a missing series, and `rate()` counts the first message after a restart.
fn zero_series() {
    for channel in ["whatsapp", "telegram", "webchat", "api"] {
        for store in ["redis", "memory"] {
            metrics::counter!(MESSAGES_ACCEPTED, "channel" => channel, "store" => store)
                .absolute(0);
        }
        metrics::counter!(MESSAGES_DUPLICATE, "channel" => channel).absolute(0);
    }
    metrics::counter!(AUDIT_RECORDS_WRITTEN).absolute(0);
    for reason in ["queue_full", "write_failed"] {
        metrics::counter!(AUDIT_RECORDS_DROPPED, "reason" => reason).absolute(0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(AUDIT_RECORDS_WRITTEN, "Audit records written to disk.");
    describe_counter!(
        AUDIT_RECORDS_DROPPED,
        "Audit records lost (queue full, disk full or read-only), by reason."
    );
    describe_counter!(MESSAGES_ACCEPTED, "Messages durably accepted at ingress.");
    describe_gauge!(
        WEBCHAT_EVENT_STREAMS,
        "Web-chat event streams (SSE) open on this replica."
    );
    describe_counter!(
        WEBCHAT_EVENTS_SENT,
        "Session events sent to widgets, by type."
    );
    describe_counter!(
        MESSAGES_DUPLICATE,
        "Inbound messages recognised as duplicates."
    );
    describe_counter!(MESSAGES_REJECTED, "Messages refused at ingress with 503.");
    describe_counter!(MESSAGES_REPLIED, "Replies committed.");
    describe_counter!(
        MESSAGES_FAILED,
        "Messages that could not be answered (dead-lettered)."
    );
    describe_counter!(
        MESSAGES_COALESCED,
        "Messages answered together with an earlier message of the same customer."
    );
    describe_counter!(
        TURNS_DISCARDED,
        "Turn results discarded because the message was already answered."
    );
    describe_histogram!(
        TURN_DURATION,
        metrics::Unit::Seconds,
        "Time from acceptance to committed reply."
    );
    describe_gauge!(TURNS_IN_FLIGHT, "Turns running now.");
    describe_counter!(PROVIDER_CALLS, "Provider attempts by outcome.");
    describe_histogram!(
        PROVIDER_LATENCY,
        metrics::Unit::Seconds,
        "Provider attempt latency."
    );
    describe_counter!(
        PROVIDER_FALLBACKS,
        "Turns answered by a provider other than the first."
    );
    describe_counter!(
        PROVIDER_SKIPPED,
        "Providers passed over without being asked, by reason."
    );
    describe_histogram!(
        PROVIDER_RATE_LIMIT_WAIT,
        metrics::Unit::Seconds,
        "Time a call waited for room in its provider's shared budget."
    );
    describe_gauge!(
        PROVIDER_BREAKER_OPEN,
        "1 while a provider's circuit breaker is open."
    );
    describe_counter!(
        PROVIDER_BREAKER_TRANSITIONS,
        "Circuit breaker state changes reported by this replica."
    );
    describe_counter!(PROVIDER_PROBES, "Background probes of open providers.");
    describe_counter!(PROVIDER_HEDGES, "Hedged provider attempts, by winner.");
    describe_gauge!(INBOX_LAG, "Inbox entries not yet delivered to a worker.");
    describe_counter!(
        PERSON_REPLIES,
        "Messages people sent customers of handed-over conversations, by channel and outcome."
    );
    describe_histogram!(
        ESCALATION_FIRST_REPLY,
        "Time from a hand-over to a person's first message to the customer, seconds."
    );
    describe_gauge!(ESCALATIONS_PENDING, "Pending escalations, cluster-wide.");
    describe_gauge!(
        ESCALATIONS_UNCLAIMED_OVERDUE,
        "Pending escalations nobody claimed within escalation.claimWithinMs."
    );
    describe_gauge!(
        ESCALATION_OLDEST_UNCLAIMED,
        "Age of the oldest pending escalation nobody claimed, seconds."
    );
    describe_gauge!(
        INBOX_PENDING,
        "Inbox entries delivered but not acknowledged."
    );
    describe_counter!(
        INBOX_CLAIMED,
        "Inbox entries taken over from replicas presumed dead."
    );
    describe_counter!(
        EGRESS_SENDS,
        "Reply sends to messaging platforms by outcome."
    );
    describe_counter!(
        EGRESS_DEAD_LETTERS,
        "Replies that could not be delivered (dead-lettered)."
    );
    describe_counter!(
        TURNS_FAILED,
        "Turns that panicked or failed and gave their message back for another attempt."
    );
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open now.");
    describe_counter!(
        CONNECTIONS_EVICTED,
        "Connections asked to close to make room at gateway.maxConnections."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed on arrival because gateway.maxConnections were open."
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because stderr was full, closed or too slow."
    );
    describe_counter!(
        INBOUND_MESSAGES,
        "Messages of platform notifications as read, by type and what was done with them."
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        "Webhook notifications that are not messages to answer."
    );
    describe_gauge!(REDIS_UP, "1 while Redis answers.");
    describe_histogram!(
        REDIS_ACK_WAIT,
        "Time a WAIT for redis.ackReplicas replicas took, seconds."
    );
    describe_counter!(
        REDIS_ACK_SHORTFALLS,
        "Writes refused because too few replicas confirmed them within redis.ackTimeoutMs."
    );
    describe_gauge!(
        REDIS_REFUSING_WRITES,
        "1 while Redis answers but refuses writes (full disk or memory, a replica)."
    );
    describe_gauge!(
        DEGRADED,
        "1 while the replica serves from in-process state."
    );
}
