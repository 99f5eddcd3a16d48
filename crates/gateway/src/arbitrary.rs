//! Generators of hostile input for the property tests of every parser of outside input
//! (WhatsApp, Telegram, web chat, OpenAI requests, config files, `SKILL.md`).
//!
//! Arbitrary JSON alone rarely reaches deep code (a random object almost never has an `entry`
//! holding `changes`), so objects take their keys from the field names these formats use, and
//! values of every type: the parsers meet the right names with the wrong shapes.

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Field names of the formats clawgate reads, mixed with a few it does not know.
const KEYS: &[&str] = &[
    "object",
    "entry",
    "id",
    "changes",
    "field",
    "value",
    "metadata",
    "phone_number_id",
    "contacts",
    "profile",
    "name",
    "username",
    "wa_id",
    "user_id",
    "messages",
    "from",
    "from_user_id",
    "timestamp",
    "type",
    "text",
    "body",
    "interactive",
    "button_reply",
    "list_reply",
    "title",
    "button",
    "system",
    "statuses",
    "status",
    "errors",
    "caption",
    "image",
    "reaction",
    "update_id",
    "message",
    "edited_message",
    "callback_query",
    "data",
    "chat",
    "date",
    "language_code",
    "new_chat_members",
    "channel_post",
    "my_chat_member",
    "session_id",
    "message_id",
    "language",
    "model",
    "role",
    "content",
    "user",
    "stream",
    "llm",
    "providers",
    "endpoint",
    "timeout",
    "maxRetries",
    "gateway",
    "redis",
    "channels",
    "workers",
    "rateLimiting",
    "unknownKey",
    "",
];

/// A JSON value of any shape, up to a few levels deep.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(KEYS).prop_map(|k| Value::String(k.to_string())),
        Just(Value::String("NL.1234567890".into())),
        Just(Value::String("31612345678".into())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<String, Value>>(),
                )
            }),
        ]
    })
}

/// Arbitrary bytes, and arbitrary JSON as bytes (half each).
pub fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json().prop_map(|v| v.to_string().into_bytes()),
    ]
}

/// Message types of both platforms, and some they may add.
const TYPES: &[&str] = &[
    "text",
    "interactive",
    "button",
    "system",
    "image",
    "reaction",
    "location",
    "unsupported",
    "user_changed_number",
    "user_changed_user_id",
    "hologram",
];

/// An object with keys from [`KEYS`], and the fields a platform message usually has (`id`,
/// `from`, `type`, …) set to plausible or hostile values.
fn message() -> impl Strategy<Value = Value> {
    let plausible = prop_oneof![
        prop::sample::select(TYPES).prop_map(|t| Value::String(t.to_string())),
        Just(Value::String("NL.1234567890".into())),
        Just(Value::String("31612345678".into())),
        Just(Value::String("wamid.HBgLMzE2".into())),
        json(),
    ];
    (
        prop::collection::vec((prop::sample::select(KEYS), plausible), 0..10),
        json(),
    )
        .prop_map(|(pairs, nested)| {
            let mut object: Map<String, Value> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            // A type-specific part, e.g. `text: {body}` or `system: {type, wa_id}`.
            if let Some(Value::String(kind)) = object.get("type").cloned() {
                object.insert(kind, nested);
            }
            Value::Object(object)
        })
}

/// A WhatsApp notification: the envelope right, the messages, contacts and statuses anything.
pub fn whatsapp_notification() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(message(), 0..6),
        prop::collection::vec(message(), 0..4),
        prop::collection::vec(json(), 0..3),
        json(),
    )
        .prop_map(|(messages, contacts, statuses, metadata)| {
            serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
                "changes": [{"field": "messages", "value": {"metadata": metadata,
                "contacts": contacts, "messages": messages, "statuses": statuses}}]}]})
        })
}

/// A Telegram update: `update_id` and one update kind holding anything message-like.
pub fn telegram_update() -> impl Strategy<Value = Value> {
    (
        any::<i64>(),
        prop::sample::select(
            &[
                "message",
                "edited_message",
                "callback_query",
                "channel_post",
                "my_chat_member",
                "unknown_kind",
            ][..],
        ),
        message(),
        message(),
    )
        .prop_map(|(id, kind, mut inner, chat)| {
            if let Value::Object(object) = &mut inner {
                object.insert("chat".into(), chat.clone());
                object.insert("message".into(), serde_json::json!({"chat": chat}));
            }
            serde_json::json!({"update_id": id, kind: inner})
        })
}
