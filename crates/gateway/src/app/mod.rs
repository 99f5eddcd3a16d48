//! What every HTTP handler shares: the replica's state, the bearer-token check and the error
//! answer. Its own module so the router (`http`) and the channels' handlers (`channels`) both
//! use it without importing each other.

pub mod error;

use crate::config::RedisDownMode;
use crate::ingress::Ingress;
use crate::replies::ReplyWaiters;
use crate::state::link::RedisLink;
use crate::worker::WorkerPool;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    /// Web-chat event streams open on this replica.
    pub events: Arc<crate::event_stream::hub::EventHub>,
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
    /// Signs and checks web-chat session tokens.
    pub session_token_key: crate::session_token::TokenKey,
    /// The audit trail (for `/healthz`).
    pub audit: crate::audit::AuditLog,
    /// Where handlers start work that outlives their request (answering a button press).
    pub background: crate::background::Background,
}

/// The token of `Authorization: Bearer <token>`, or `""` without one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Whether `headers` carry `Authorization: Bearer <expected>`, compared in constant time.
pub fn bearer_matches(headers: &axum::http::HeaderMap, expected: &secrecy::SecretString) -> bool {
    use secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    bool::from(
        bearer_token(headers)
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    )
}
