//! The HTTP surface of a replica (DESIGN §5): the router and body limits; what handlers share
//! is in [`crate::app`], the channels' handlers in [`crate::channels`].

pub mod connections;
pub mod console;
pub mod customers;
pub mod escalations;
pub mod health;
pub mod widget;

use crate::app::AppState;
use crate::app::error::ApiError;
use crate::channels::{api, telegram, whatsapp};
use crate::channels::{webchat, webchat_events};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use std::sync::Arc;

/// Largest web-chat request body; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest webhook or API request body (a WhatsApp batch, a long conversation sent by an OpenAI
/// client); larger ones get 413.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 1024 * 1024;

/// The web-chat API, callable from the browsers of the pages `webchat.allowedOrigins` names
/// (CORS: preflights answered; the list is read from the live config, so an edit applies
/// without a restart). Other origins get no CORS headers and their browsers refuse the answer.
fn webchat_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    use axum::http::{HeaderName, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let live = state.live.clone();
    let allowed = AllowOrigin::predicate(move |origin, _request| {
        let origin = origin.as_bytes();
        live.current()
            .config
            .webchat
            .allowed_origins
            .iter()
            .any(|allowed| allowed.as_bytes() == origin)
    });
    let cors = CorsLayer::new()
        .allow_origin(allowed)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(std::time::Duration::from_secs(600));
    Router::new()
        .route("/v1/webchat/sessions", post(webchat::create_session))
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
            "/v1/webchat/sessions/{session_id}/events",
            get(webchat_events::events),
        )
        .layer(cors)
        .layer(axum::middleware::from_fn(preflight_no_content))
}

/// Answers a CORS preflight with 204 No Content (tower-http's CORS layer answers 200 with an
/// empty body; 204 is what the Fetch standard's examples and most servers send, and what
/// clients check for).
async fn preflight_no_content(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let preflight = request.method() == axum::http::Method::OPTIONS;
    let mut response = next.run(request).await;
    if preflight && response.status() == axum::http::StatusCode::OK {
        *response.status_mut() = axum::http::StatusCode::NO_CONTENT;
    }
    response
}

/// The router of a replica.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/livez", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/widget.js", get(widget::script))
        .route("/chat", get(widget::page))
        .merge(webchat_routes(&state))
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
        .route("/v1/models/{id}", get(api::model))
        .route("/console", get(console::page))
        .route("/v1/console/stream", get(console::stream))
        .route("/v1/escalations", get(escalations::list))
        .route("/v1/escalations/{target}", get(escalations::show))
        .route(
            "/v1/escalations/{target}/resolve",
            post(escalations::resolve),
        )
        .route("/v1/escalations/{target}/claim", post(escalations::claim))
        .route(
            "/v1/escalations/{target}/messages",
            post(escalations::message),
        )
        .route("/v1/customers/{customer}", delete(customers::forget))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
