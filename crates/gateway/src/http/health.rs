//! Liveness, readiness and metrics endpoints. Liveness never depends on Redis (a replica that
//! cannot reach Redis still answers in degraded mode and must not be restarted for it);
//! readiness says whether a load balancer should send traffic here.

use crate::app::AppState;
use crate::config::RedisDownMode;
use crate::telemetry;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// `GET /healthz` (and `/livez`): always 200 while the process serves.
pub async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let redis_up = app.link.is_up();
    let refusing = app.link.refusing().filter(|_| redis_up);
    let draining = app.draining.load(Ordering::Acquire);
    let status = if draining {
        "draining"
    } else if !redis_up {
        "degraded"
    } else if refusing.is_some() {
        "refusing_writes"
    } else {
        "ok"
    };
    Json(json!({
        "status": status,
        "uptime_s": app.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "replica_id": app.replica_id,
        "redis": match (redis_up, &refusing) {
            (false, _) => "down",
            (true, Some(_)) => "refusing_writes",
            (true, None) => "up",
        },
        "redis_error": refusing,
        // Which server this replica writes to (a Sentinel group's current primary), and how
        // many Redis replicas must hold a message before it is acknowledged.
        "redis_primary": app.link.primary(),
        "redis_ack_replicas": app.link.ack_replicas(),
        "degraded": !redis_up,
        "redis_down_mode": match app.redis_down_mode {
            RedisDownMode::Degrade => "degrade",
            RedisDownMode::Reject => "reject",
        },
        "draining": draining,
        "turns_running": app.pool.running(),
        "requests_waiting": app.waiters.len(),
        "log_lines_dropped": crate::logging::dropped_lines(),
        // Records lost while the disk refused them are counted here, and answers go on.
        "audit": app.audit.status(),
        "skills": app.skills.current().names(),
        "skill_errors": app.skills.errors(),
        "providers": app.live.current().chain.names(),
        "config": app.live.health(),
    }))
    .into_response()
}

/// What `/readyz` may be told to leave out of its verdict.
#[derive(serde::Deserialize)]
pub struct ReadyQuery {
    /// Comma-separated reasons that do not fail readiness for this caller. A balancer that can
    /// only read the status code passes `ignore=overloaded`: overload is the shared inbox's lag,
    /// the same on every replica, so taking replicas out for it would only refuse the webhooks
    /// that make messages durable (with every replica out, all of them).
    #[serde(default)]
    ignore: String,
}

/// `GET /readyz[?ignore=overloaded]`: 200 when this replica should get traffic, else 503 with
/// what is failing (the ignored reasons still listed, under `ignored`).
pub async fn readyz(State(app): State<Arc<AppState>>, Query(query): Query<ReadyQuery>) -> Response {
    let mut failing = Vec::new();
    if app.link.watch().borrow().is_none() {
        failing.push("starting");
    }
    if app.draining.load(Ordering::Acquire) {
        failing.push("draining");
    }
    if !app.link.is_up() && app.redis_down_mode == RedisDownMode::Reject {
        failing.push("redis");
    }
    let refusing = app.link.refusing().filter(|_| app.link.is_up());
    if refusing.is_some() {
        failing.push("redis_refusing_writes");
    }
    if app.pool.overloaded() {
        failing.push("overloaded");
    }
    let ignored: Vec<&str> = query.ignore.split(',').map(str::trim).collect();
    let (ignored, failing): (Vec<&str>, Vec<&str>) = failing
        .into_iter()
        .partition(|reason| ignored.contains(reason));
    if failing.is_empty() && ignored.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else if failing.is_empty() {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "ignored": ignored})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "not_ready", "failing": failing, "ignored": ignored,
                "redis_error": refusing}),
            ),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let redis_up = app.link.is_up();
    metrics::gauge!(telemetry::REDIS_UP).set(if redis_up { 1.0 } else { 0.0 });
    let refusing = redis_up && app.link.refusing().is_some();
    metrics::gauge!(telemetry::REDIS_REFUSING_WRITES).set(if refusing { 1.0 } else { 0.0 });
    metrics::gauge!(telemetry::DEGRADED).set(if app.ingress.degraded() { 1.0 } else { 0.0 });
    crate::logging::dropped_lines();
    escalation_gauges(&app).await;
    let body = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The escalation gauges, read from the store at each scrape (they are cluster-wide: every
/// replica reports the same figures, so alert on `max`). Left as they were when the store
/// cannot be read.
async fn escalation_gauges(app: &AppState) {
    let (store, _) = app.ingress.current_store();
    let Ok(pending) = store.escalations().await else {
        return;
    };
    let claim_within = app.live.current().config.escalation.claim_within;
    let now = crate::message::now_ms();
    let unclaimed_ages: Vec<u64> = pending
        .iter()
        .filter(|e| e.claimed_by.is_none())
        .map(|e| now.saturating_sub(e.created_at))
        .collect();
    let overdue = unclaimed_ages
        .iter()
        .filter(|age| **age > claim_within.as_millis() as u64)
        .count();
    let oldest = unclaimed_ages.iter().max().copied().unwrap_or(0);
    metrics::gauge!(telemetry::ESCALATIONS_PENDING).set(pending.len() as f64);
    metrics::gauge!(telemetry::ESCALATIONS_UNCLAIMED_OVERDUE).set(overdue as f64);
    metrics::gauge!(telemetry::ESCALATION_OLDEST_UNCLAIMED).set(oldest as f64 / 1000.0);
}
