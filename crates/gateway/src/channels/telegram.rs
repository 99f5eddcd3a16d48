//! Telegram Bot API webhooks.
//!
//! An update is trusted only when `X-Telegram-Bot-Api-Secret-Token` equals the configured secret
//! (compared in constant time; set it with `setWebhook`'s `secret_token`). The `update_id` is the
//! dedupe key. Edits of messages already answered are counted and not answered again; photos,
//! voice notes and other non-text messages get the text-only notice.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::message::{Channel, InboundMessage};
use crate::state::Acceptance;
use crate::telemetry;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The header Telegram puts the webhook secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Message kinds the agent cannot read, in the order they are looked for.
const MEDIA_KINDS: [&str; 12] = [
    "photo",
    "video",
    "voice",
    "audio",
    "document",
    "sticker",
    "animation",
    "video_note",
    "location",
    "contact",
    "poll",
    "venue",
];

#[derive(Deserialize)]
struct Update {
    update_id: i64,
    message: Option<TgMessage>,
    edited_message: Option<TgMessage>,
}

#[derive(Deserialize)]
struct TgMessage {
    chat: Chat,
    from: Option<User>,
    text: Option<String>,
    caption: Option<String>,
    /// Everything else (`photo`, `voice`, …), to name what could not be read.
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Deserialize)]
struct User {
    language_code: Option<String>,
}

/// `POST /webhooks/telegram`.
pub async fn receive(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let live = app.live.current();
    let Some(config) = &live.config.channels.telegram else {
        return Err(ApiError::not_found(
            "the telegram channel is not configured",
        ));
    };
    let secret_ok = headers.get(SECRET_HEADER).is_some_and(|value| {
        bool::from(
            value
                .as_bytes()
                .ct_eq(config.secret_token.expose_secret().as_bytes()),
        )
    });
    if !secret_ok {
        return Err(ApiError::unauthorized(
            "missing or wrong X-Telegram-Bot-Api-Secret-Token",
        ));
    }
    let update: Update = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request(format!("not a Telegram Bot API update: {e}")))?;
    let Some(msg) = inbound_message(update, &app.replica_id) else {
        return Ok(Json(json!({"ok": true, "accepted": 0})).into_response());
    };
    let accepted = match app.ingress.accept(&msg).await? {
        (Acceptance::Accepted { .. }, _) => 1,
        (Acceptance::Duplicate, _) => 0,
    };
    Ok(Json(json!({"ok": true, "accepted": accepted})).into_response())
}

/// The message to answer in an update, if any: edits and other update kinds are counted only.
fn inbound_message(update: Update, replica_id: &str) -> Option<InboundMessage> {
    let Some(message) = update.message else {
        let kind = if update.edited_message.is_some() {
            "edited_message"
        } else {
            "other"
        };
        metrics::counter!(telemetry::WEBHOOK_EVENTS, "channel" => "telegram", "kind" => kind)
            .increment(1);
        return None;
    };
    let (text, unsupported) = match message.text.filter(|t| !t.trim().is_empty()) {
        Some(text) => (text, None),
        None => {
            let kind = MEDIA_KINDS
                .iter()
                .find(|k| message.other.contains_key(**k))
                .copied()
                .unwrap_or("unknown");
            let caption = message.caption.unwrap_or_default();
            (
                format!("[{kind}] {caption}").trim().to_string(),
                Some(kind.to_string()),
            )
        }
    };
    let mut msg = InboundMessage::new(
        Channel::Telegram,
        &message.chat.id.to_string(),
        &update.update_id.to_string(),
        text,
        replica_id,
    );
    msg.language = message
        .from
        .and_then(|u| u.language_code)
        .and_then(|code| code.split('-').next().map(str::to_lowercase))
        .filter(|code| !code.is_empty());
    msg.unsupported = unsupported;
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Option<InboundMessage> {
        let path = format!(
            "{}/../../../shared/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let update: Update =
            serde_json::from_slice(&std::fs::read(path).unwrap_or_default()).expect("fixture");
        inbound_message(update, "r1")
    }

    #[test]
    fn a_text_message_is_keyed_by_update_id_in_its_chat_with_the_user_language() {
        let msg = parse("telegram-text.json").expect("a message");
        assert_eq!(msg.conversation().as_str(), "telegram:5123456789");
        assert_eq!(msg.dedupe_id().as_str(), "telegram:100001");
        assert_eq!(msg.language.as_deref(), Some("de"));
        assert!(msg.text.starts_with("Dispatch request: 14 parcels"));
        assert_eq!(msg.unsupported, None);
    }

    #[test]
    fn edits_are_not_answered_and_photos_are_unsupported() {
        assert!(parse("telegram-edited.json").is_none());
        let photo = parse("telegram-photo.json").expect("a message");
        assert_eq!(photo.unsupported.as_deref(), Some("photo"));
        assert_eq!(photo.text, "[photo] damaged label");
    }
}
