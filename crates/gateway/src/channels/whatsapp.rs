//! WhatsApp Cloud API webhooks: the verification handshake and message notifications.
//!
//! A notification is trusted only when its `X-Hub-Signature-256` is the HMAC-SHA256 of the exact
//! body bytes under the app secret (compared in constant time); otherwise 401 and nothing is
//! queued. One POST may carry several messages from several customers; each is accepted in order
//! and the webhook is answered 200 once all of them are durable (a 503 makes Meta retry the whole
//! batch, and dedupe on the `wamid` makes that safe). Delivery `statuses` are counted, not
//! answered.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::message::{Channel, InboundMessage};
use crate::state::Acceptance;
use crate::telemetry;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The header Meta signs notifications in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Deserialize, Default)]
struct ChangeValue {
    metadata: Option<Metadata>,
    #[serde(default)]
    messages: Vec<WaMessage>,
    #[serde(default)]
    statuses: Vec<Status>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct WaMessage {
    from: String,
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    /// The type-specific part (`text`, `interactive`, `image`, …), read by [`message_text`].
    #[serde(flatten)]
    content: Map<String, Value>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    status: String,
    #[serde(default)]
    errors: Vec<Value>,
}

/// `GET /webhooks/whatsapp`: Meta's verification handshake.
pub async fn verify(
    State(app): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let live = app.live.current();
    let Some(config) = &live.config.channels.whatsapp else {
        return ApiError::not_found("the whatsapp channel is not configured").into_response();
    };
    let token_ok = params.get("hub.verify_token").is_some_and(|token| {
        bool::from(
            token
                .as_bytes()
                .ct_eq(config.verify_token.expose_secret().as_bytes()),
        )
    });
    match (params.get("hub.mode").map(String::as_str), params.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if token_ok => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge.clone(),
        )
            .into_response(),
        _ => ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "verification failed: expected hub.mode=subscribe, the configured hub.verify_token and a hub.challenge".into(),
        }
        .into_response(),
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the body, in constant time.
pub fn check_signature(headers: &HeaderMap, body: &[u8], app_secret: &str) -> Result<(), ApiError> {
    let header = headers
        .get(SIGNATURE_HEADER)
        .ok_or_else(|| ApiError::unauthorized("missing X-Hub-Signature-256 header"))?;
    let digest = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| {
            ApiError::unauthorized("malformed X-Hub-Signature-256: expected sha256=<hex>")
        })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .map_err(|_| ApiError::unauthorized("the app secret cannot key an HMAC"))?;
    mac.update(body);
    mac.verify_slice(&digest)
        .map_err(|_| ApiError::unauthorized("X-Hub-Signature-256 does not match the body"))
}

/// `POST /webhooks/whatsapp`: verify, parse, accept every message, answer when all are durable.
pub async fn receive(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let live = app.live.current();
    let Some(config) = &live.config.channels.whatsapp else {
        return Err(ApiError::not_found(
            "the whatsapp channel is not configured",
        ));
    };
    let body = body?;
    check_signature(&headers, &body, config.app_secret.expose_secret())?;
    let notification: Notification = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("not a WhatsApp Cloud API notification: {e}"))
    })?;
    drop(body);
    let messages = inbound_messages(notification, &app.replica_id)?;
    let (mut accepted, mut duplicates) = (0, 0);
    for msg in &messages {
        match app.ingress.accept(msg).await? {
            (Acceptance::Accepted { .. }, _) => accepted += 1,
            (Acceptance::Duplicate, _) => duplicates += 1,
        }
    }
    Ok(Json(json!({"accepted": accepted, "duplicates": duplicates})).into_response())
}

/// The messages of a notification, in order; delivery statuses are counted and dropped.
fn inbound_messages(
    notification: Notification,
    replica_id: &str,
) -> Result<Vec<InboundMessage>, ApiError> {
    let mut messages = Vec::new();
    for change in notification.entry.into_iter().flat_map(|e| e.changes) {
        let value = change.value;
        for status in &value.statuses {
            let kind = match status.status.as_str() {
                "sent" => "sent",
                "delivered" => "delivered",
                "read" => "read",
                "failed" => "failed",
                _ => "other",
            };
            metrics::counter!(telemetry::WEBHOOK_EVENTS, "channel" => "whatsapp", "kind" => kind)
                .increment(1);
            if kind == "failed" {
                tracing::warn!(errors = ?status.errors, "WhatsApp reports a reply that failed to deliver");
            }
        }
        let account = value.metadata.and_then(|m| m.phone_number_id);
        for message in value.messages {
            if !is_wa_id(&message.from) {
                return Err(ApiError::bad_request(format!(
                    "message `from` must be a WhatsApp id (digits), found \"{}\"",
                    message.from
                )));
            }
            if message.id.is_empty() || message.id.len() > 256 || message.id.contains(['{', '}']) {
                return Err(ApiError::bad_request("message `id` must be a wamid"));
            }
            let (text, unsupported) = message_text(&message);
            let mut msg = InboundMessage::new(
                Channel::Whatsapp,
                &message.from,
                &message.id,
                text,
                replica_id,
            );
            msg.account = account.clone();
            msg.unsupported = unsupported;
            messages.push(msg);
        }
    }
    Ok(messages)
}

fn is_wa_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The customer's text: `text.body`, the title of a button or list reply, a template button's
/// text; for anything else (image, audio, location, …) the caption or a placeholder, and the
/// kind, which earns the text-only notice.
fn message_text(message: &WaMessage) -> (String, Option<String>) {
    // `object` is the type-specific part, e.g. `text` → {"body": …}; `path` a pointer into it.
    let field = |object: &str, path: &str| {
        message
            .content
            .get(object)
            .and_then(|v| v.pointer(path))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let text = match message.kind.as_str() {
        "text" => field("text", "/body"),
        "interactive" => field("interactive", "/button_reply/title")
            .or_else(|| field("interactive", "/list_reply/title")),
        "button" => field("button", "/text"),
        _ => None,
    };
    match text {
        Some(text) if !text.trim().is_empty() => (text, None),
        _ => {
            let kind = if message.kind.is_empty() {
                "unknown"
            } else {
                &message.kind
            };
            let caption = field(kind, "/caption").unwrap_or_default();
            (
                format!("[{kind}] {caption}").trim().to_string(),
                Some(kind.to_string()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../../shared/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap_or_default()
    }

    fn signed(body: &[u8], secret: &str) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body);
        let mut headers = HeaderMap::new();
        let value = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&value).expect("header"),
        );
        headers
    }

    #[test]
    fn the_fixture_signature_vector_verifies() {
        let vector = String::from_utf8(fixture("whatsapp-signature.txt")).unwrap_or_default();
        let field = |name: &str| {
            vector
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        let mut headers = HeaderMap::new();
        let signature = field("X-Hub-Signature-256:");
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&signature).expect("header"),
        );
        let body = fixture("whatsapp-text.json");
        assert!(check_signature(&headers, &body, &field("app_secret:")).is_ok());
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert_eq!(
            check_signature(&headers, &tampered, &field("app_secret:")).map_err(|e| e.status),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            check_signature(&HeaderMap::new(), &body, "x").map_err(|e| e.status),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert!(check_signature(&signed(&body, "other"), &body, "secret").is_err());
    }

    fn parse(name: &str) -> Vec<InboundMessage> {
        let notification: Notification = serde_json::from_slice(&fixture(name)).expect("fixture");
        inbound_messages(notification, "r1").expect("messages")
    }

    #[test]
    fn reads_every_message_of_a_batch_in_order() {
        let messages = parse("whatsapp-multi.json");
        let senders: Vec<&str> = messages.iter().map(|m| m.user.as_str()).collect();
        assert_eq!(senders, vec!["31612345678", "32470123456", "31612345678"]);
        assert_eq!(messages[1].text, "My package VC100200300BE arrived damaged");
        assert!(
            messages
                .iter()
                .all(|m| m.account.as_deref() == Some("106540352242922"))
        );
        assert!(messages.iter().all(|m| m.message_id.starts_with("wamid.")));
    }

    #[test]
    fn button_replies_carry_their_title_and_images_are_unsupported() {
        let button = parse("whatsapp-interactive-button.json");
        assert_eq!(
            (button[0].text.as_str(), button[0].unsupported.as_deref()),
            ("18:00-21:00", None)
        );
        let image = parse("whatsapp-image.json");
        assert_eq!(image[0].unsupported.as_deref(), Some("image"));
        assert_eq!(image[0].text, "[image] the box");
        assert!(parse("whatsapp-status.json").is_empty());
        assert!(parse("whatsapp-status-failed.json").is_empty());
    }
}
