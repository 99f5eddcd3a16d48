//! The HTTP surface of a replica (DESIGN §5): router, shared state, body limits.

pub mod connections;
pub mod error;
pub mod escalations;
pub mod health;

use crate::channels::webchat;
use crate::channels::{api, telegram, whatsapp};
use crate::config::RedisDownMode;
use crate::ingress::Ingress;
use crate::replies::ReplyWaiters;
use crate::state::link::RedisLink;
use crate::worker::WorkerPool;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest web-chat request body; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest webhook or API request body (a WhatsApp batch, a long conversation sent by an OpenAI
/// client); larger ones get 413.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 1024 * 1024;

/// What handlers share.
pub struct AppState {
    /// This replica's id.
    pub replica_id: String,
    /// Process start, for `uptime_s`.
    pub started: Instant,
    /// Where accepted messages go.
    pub ingress: Ingress,
    /// Requests held open for replies.
    pub waiters: Arc<ReplyWaiters>,
    /// Redis health.
    pub link: Arc<RedisLink>,
    /// Redis-down behaviour, for health answers.
    pub redis_down_mode: RedisDownMode,
    /// The configuration, reloaded while the replica runs: web-chat wait, channel credentials
    /// (for verifying webhooks), the escalations API token, the provider names.
    pub live: Arc<crate::live::LiveConfig>,
    /// The worker pool, for health answers.
    pub pool: Arc<WorkerPool>,
    /// Loaded skill names, for health answers.
    pub skills: Arc<crate::skills::SkillLibrary>,
    /// Metrics renderer (absent if another recorder was installed first).
    pub metrics: Option<PrometheusHandle>,
    /// Set at SIGTERM: readiness fails so balancers stop sending traffic.
    pub draining: AtomicBool,
    /// Cancelled when requests held open must answer now (202) because the server stops.
    pub release_waiting: CancellationToken,
}

/// Whether `headers` carry `Authorization: Bearer <expected>`, compared in constant time.
pub fn bearer_matches(headers: &axum::http::HeaderMap, expected: &secrecy::SecretString) -> bool {
    use secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(
        presented
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    )
}

/// The router of a replica.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/livez", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/webchat/messages", post(webchat::post_message))
        .route(
            "/v1/webchat/sessions/{session_id}/messages",
            get(webchat::history),
        )
        .route(
            "/v1/webchat/sessions/{session_id}/messages/{message_id}",
            get(webchat::message_status),
        )
        .route(
            "/webhooks/whatsapp",
            get(whatsapp::verify)
                .post(whatsapp::receive)
                .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY_BYTES)),
        )
        .route(
            "/webhooks/telegram",
            post(telegram::receive).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY_BYTES)),
        )
        .route(
            "/v1/chat/completions",
            post(api::chat_completions).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY_BYTES)),
        )
        .route("/v1/models", get(api::models))
        .route("/v1/escalations", get(escalations::list))
        .route("/v1/escalations/{target}", get(escalations::show))
        .route(
            "/v1/escalations/{target}/resolve",
            post(escalations::resolve),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
