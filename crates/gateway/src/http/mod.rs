//! The HTTP surface of a replica (DESIGN §5): the router and body limits; what handlers share
//! is in [`crate::app`], the channels' handlers in [`crate::channels`].

pub mod connections;
pub mod escalations;
pub mod health;

use crate::app::AppState;
use crate::app::error::ApiError;
use crate::channels::webchat;
use crate::channels::{api, telegram, whatsapp};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;

/// Largest web-chat request body; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest webhook or API request body (a WhatsApp batch, a long conversation sent by an OpenAI
/// client); larger ones get 413.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 1024 * 1024;

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
