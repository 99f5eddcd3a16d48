//! The operator's side of a customer's data over HTTP, behind `Authorization: Bearer
//! <gateway.adminToken>`: `DELETE /v1/customers/{channel:user}` erases them (as `clawgate
//! forget`) and answers what was removed.

use crate::app::AppState;
use crate::app::error::ApiError;
use crate::forget::forget_customer;
use crate::message::ConversationKey;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `DELETE /v1/customers/{channel:user}`: 200 with the report, 400 for an id that names no
/// conversation, 401 without the admin token, 404 when no admin token is configured, 503 while
/// Redis cannot be reached.
pub async fn forget(
    State(app): State<Arc<AppState>>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Response {
    let live = app.live.current();
    let Some(token) = &live.config.gateway.admin_token else {
        return ApiError::not_found("the operator endpoints are off (gateway.adminToken)")
            .into_response();
    };
    if !crate::app::bearer_matches(&headers, token) {
        return ApiError::unauthorized(
            "missing or wrong bearer token (Authorization: Bearer <gateway.adminToken>)",
        )
        .into_response();
    }
    let Some(conversation) = ConversationKey::parse(&customer) else {
        return ApiError::bad_request(format!(
            "\"{customer}\" names no customer; expected channel:user, e.g. whatsapp:31612345678"
        ))
        .into_response();
    };
    match forget_customer(&app.link, &conversation).await {
        Ok(report) => {
            tracing::info!(conversation = %conversation, "customer forgotten on request");
            Json(report).into_response()
        }
        Err(e) => {
            ApiError::unavailable(format!("cannot erase the customer now: {e}")).into_response()
        }
    }
}
