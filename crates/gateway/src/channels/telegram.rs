//! Telegram Bot API webhooks.
//!
//! An update is trusted only when `X-Telegram-Bot-Api-Secret-Token` equals the configured secret
//! (compared in constant time; set it with `setWebhook`'s `secret_token`). The `update_id` is the
//! dedupe key. Edits of messages already answered are counted and not answered again; photos,
//! voice notes and other non-text messages get the text-only notice.

use super::batch::{self, Read, Reading};
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::message::{Channel, InboundMessage};
use crate::telemetry;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The header Telegram puts the webhook secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Message kinds the agent cannot read, in the order they are looked for: they get the
/// text-only notice in the customer's language.
const MEDIA_KINDS: [&str; 13] = [
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
    "dice",
];

/// Fields of a service message about the chat's members; such messages are not answered.
const MEMBER_FIELDS: [&str; 2] = ["new_chat_members", "left_chat_member"];

/// Fields of other service messages (titles, photos, pins, migrations…), not answered either.
const SERVICE_FIELDS: [&str; 10] = [
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "channel_chat_created",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "pinned_message",
    "message_auto_delete_timer_changed",
];

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
    let update: Value = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request(format!("not a Telegram Bot API update: {e}")))?;
    let Some(update_id) = update["update_id"].as_i64() else {
        return Err(ApiError::bad_request(
            "not a Telegram Bot API update: expected an object with a numeric `update_id`",
        ));
    };
    let reading = Reading {
        replica_id: &app.replica_id,
        max_age: live.config.channels.max_message_age,
    };
    let read = read_update(&update, update_id, reading);
    let ingested = batch::ingest(&app, Channel::Telegram, vec![read]).await?;
    // The button's spinner stops once the press is answered; the reply follows in the chat.
    // Answered after the press is durable, off the webhook's path.
    if let Some(id) = update.pointer("/callback_query/id").and_then(Value::as_str) {
        let id = id.to_string();
        app.background.spawn(async move {
            if let Err(reason) = live.egress.answer_callback_query(&id).await {
                tracing::warn!(%reason, "a button press could not be answered; the customer's button spins until Telegram gives up");
            }
        });
    }
    Ok(Json(json!({
        "ok": true,
        "accepted": ingested.accepted,
        "duplicates": ingested.duplicates,
        "ignored": ingested.ignored,
        "unreadable": ingested.unreadable,
    }))
    .into_response())
}

/// What to do with an update: messages and button presses are answered; edits, channel posts,
/// member updates and service messages are counted only.
fn read_update(update: &Value, update_id: i64, reading: Reading<'_>) -> Read {
    let update_key = update_id.to_string();
    if let Some(message) = update.get("message") {
        return read_message(message, &update_key, reading, update);
    }
    if let Some(press) = update.get("callback_query") {
        return read_callback_query(press, &update_key, reading.replica_id, update);
    }
    let kind = [
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "my_chat_member",
        "chat_member",
        "chat_join_request",
    ]
    .into_iter()
    .find(|k| update.get(*k).is_some())
    .map(|k| match k {
        "my_chat_member" | "chat_member" | "chat_join_request" => "member_update",
        other => other,
    })
    .unwrap_or("other");
    metrics::counter!(telemetry::WEBHOOK_EVENTS, "channel" => "telegram", "kind" => kind)
        .increment(1);
    Read::ignore(kind)
}

/// A message in a private chat or a group: text is answered, media gets the text-only notice,
/// service messages (members joining, titles, pins) are counted only.
fn read_message(message: &Value, update_key: &str, reading: Reading<'_>, update: &Value) -> Read {
    if MEMBER_FIELDS.iter().any(|f| message.get(*f).is_some()) {
        return Read::ignore("member_update");
    }
    if SERVICE_FIELDS.iter().any(|f| message.get(*f).is_some()) {
        return Read::ignore("service");
    }
    let Some(chat) = chat_id(&message["chat"]) else {
        return Read::unreadable(
            "message",
            "the message has no `chat.id` to answer in",
            update.to_string(),
        );
    };
    let (kind, text, unsupported) = match message["text"].as_str().filter(|t| !t.trim().is_empty())
    {
        Some(text) => ("text", text.to_string(), None),
        None => {
            let kind = MEDIA_KINDS
                .into_iter()
                .find(|k| message.get(*k).is_some())
                .unwrap_or("unknown");
            let caption = message["caption"].as_str().unwrap_or_default();
            (
                kind,
                format!("[{kind}] {caption}").trim().to_string(),
                Some(kind.to_string()),
            )
        }
    };
    Read::unless_stale(kind, message["date"].as_u64(), reading.max_age, || {
        let mut msg = InboundMessage::new(
            Channel::Telegram,
            &chat,
            update_key,
            text,
            reading.replica_id,
        );
        msg.language = language(&message["from"]);
        msg.unsupported = unsupported;
        Read::answer(kind, msg)
    })
}

/// A button press: the button's data is the customer's text, answered in the chat the button
/// was in (or the presser's private chat for a button of an inline message).
fn read_callback_query(press: &Value, update_key: &str, replica_id: &str, update: &Value) -> Read {
    let chat = chat_id(&press["message"]["chat"]).or_else(|| chat_id(&press["from"]));
    let Some(chat) = chat else {
        return Read::unreadable(
            "callback_query",
            "the button press names no chat and no user to answer",
            update.to_string(),
        );
    };
    let Some(data) = press["data"].as_str() else {
        // A game button: the press is answered, there is no text to answer.
        return Read::ignore("callback_query");
    };
    let mut msg = InboundMessage::new(
        Channel::Telegram,
        &chat,
        update_key,
        data.to_string(),
        replica_id,
    );
    msg.language = language(&press["from"]);
    Read::answer("callback_query", msg)
}

/// A chat's (or user's) numeric id as text.
fn chat_id(chat: &Value) -> Option<String> {
    chat["id"].as_i64().map(|id| id.to_string())
}

/// The sender's language from their `language_code` (`de-AT` → `de`).
fn language(from: &Value) -> Option<String> {
    from["language_code"]
        .as_str()
        .and_then(|code| code.split('-').next())
        .map(str::to_lowercase)
        .filter(|code| !code.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::batch::Action;

    fn read(name: &str) -> Read {
        let path = format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"));
        let update: Value = serde_json::from_slice(&bytes).expect("fixture");
        let id = update["update_id"].as_i64().expect("update_id");
        read_update(
            &update,
            id,
            Reading {
                replica_id: "r1",
                max_age: None,
            },
        )
    }

    fn parse(name: &str) -> Option<InboundMessage> {
        match read(name).action {
            Action::Answer { msg, .. } => Some(*msg),
            _ => None,
        }
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
        let voice = parse("telegram-voice.json").expect("a message");
        assert_eq!(voice.unsupported.as_deref(), Some("voice"));
    }

    #[test]
    fn a_button_press_is_the_customer_saying_the_buttons_data_in_its_chat() {
        let press = read("telegram-callback-query.json");
        assert_eq!(press.kind, "callback_query");
        let msg = parse("telegram-callback-query.json").expect("a message");
        assert_eq!(msg.text, "Morgen zwischen 09:00 und 12:00 bitte");
        assert_eq!(msg.conversation().as_str(), "telegram:5123456789");
        assert_eq!(msg.dedupe_id().as_str(), "telegram:100010");
        assert_eq!(msg.language.as_deref(), Some("de"));
    }

    #[test]
    fn channel_posts_member_updates_and_service_messages_are_counted_not_answered() {
        for (name, kind) in [
            ("telegram-channel-post.json", "channel_post"),
            ("telegram-edited-channel-post.json", "edited_channel_post"),
            ("telegram-my-chat-member.json", "member_update"),
            ("telegram-new-members.json", "member_update"),
            ("telegram-edited.json", "edited_message"),
        ] {
            let read = read(name);
            assert_eq!(read.kind, kind, "{name}");
            assert!(matches!(read.action, Action::Ignore), "{name}");
        }
    }

    #[test]
    fn a_group_message_is_answered_in_the_group() {
        let msg = parse("telegram-supergroup-text.json").expect("a message");
        assert_eq!(msg.conversation().as_str(), "telegram:-1009876543210");
    }

    proptest::proptest! {
        /// Any update, of any shape, is read as one thing without a panic.
        #[test]
        fn reading_any_update_never_panics(
            update in proptest::prop_oneof![crate::arbitrary::json(), crate::arbitrary::telegram_update()],
            id in proptest::prelude::any::<i64>(),
        ) {
            let _ = read_update(&update, id, Reading { replica_id: "r1", max_age: None });
        }
    }
}
