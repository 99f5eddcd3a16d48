//! WhatsApp Cloud API webhooks: the verification handshake and message notifications.
//!
//! A notification is trusted only when its `X-Hub-Signature-256` is the HMAC-SHA256 of the exact
//! body bytes under the app secret (compared in constant time); otherwise 401 and nothing is
//! queued. One POST may carry several messages from several customers; each is accepted in order
//! and the webhook is answered 200 once all of them are durable (a 503 makes Meta retry the whole
//! batch, and dedupe on the `wamid` makes that safe). Delivery `statuses` are counted, not
//! answered.

use super::batch::{self, Action, Read, Reading};
use crate::app::AppState;
use crate::app::error::ApiError;
use crate::message::is_business_scoped_id as is_bsuid;
use crate::message::{Channel, InboundMessage};
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
use serde_json::Value;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The header Meta signs notifications in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// A notification as far as it must be well-formed: `entry[].changes[].value`. Messages,
/// contacts and statuses are read one by one (one bad message costs only itself).
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
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    contacts: Vec<Value>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    statuses: Vec<Value>,
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
    let reading = Reading {
        replica_id: &app.replica_id,
        max_age: config_max_age(&app),
    };
    let reads = read_notification(notification, reading);
    let ingested = batch::ingest(&app, Channel::Whatsapp, reads).await?;
    Ok(Json(ingested).into_response())
}

/// `channels.maxMessageAgeHours` of the configuration in force.
fn config_max_age(app: &AppState) -> Option<std::time::Duration> {
    app.live.current().config.channels.max_message_age
}

/// Every message of a notification, read, in order; delivery statuses are counted.
fn read_notification(notification: Notification, reading: Reading<'_>) -> Vec<Read> {
    let mut reads = Vec::new();
    for change in notification.entry.into_iter().flat_map(|e| e.changes) {
        let value = change.value;
        for status in &value.statuses {
            count_status(status);
        }
        let account = value.metadata["phone_number_id"]
            .as_str()
            .map(str::to_string);
        for message in &value.messages {
            reads.push(read_message(
                message,
                &value.contacts,
                account.as_deref(),
                reading,
            ));
        }
    }
    reads
}

fn count_status(status: &Value) {
    let kind = match status["status"].as_str().unwrap_or("") {
        "sent" => "sent",
        "delivered" => "delivered",
        "read" => "read",
        "failed" => "failed",
        _ => "other",
    };
    metrics::counter!(telemetry::WEBHOOK_EVENTS, "channel" => "whatsapp", "kind" => kind)
        .increment(1);
    if kind == "failed" {
        tracing::warn!(errors = %status["errors"], "WhatsApp reports a reply that failed to deliver");
    }
}

/// Message types the agent cannot read: they get the text-only notice in the customer's
/// language.
const MEDIA_TYPES: [&str; 9] = [
    "image",
    "sticker",
    "audio",
    "video",
    "document",
    "location",
    "contacts",
    "order",
    "unsupported",
];

/// Message types that are counted and not answered: a reaction to a message, an edit or
/// deletion of an earlier one, the chat being opened.
const SILENT_TYPES: [&str; 4] = ["reaction", "edit", "revoke", "request_welcome"];

/// Reads one message of a notification (`contacts` are the notification's senders).
fn read_message(
    message: &Value,
    contacts: &[Value],
    account: Option<&str>,
    reading: Reading<'_>,
) -> Read {
    let kind = message_kind(message["type"].as_str().unwrap_or(""));
    let unreadable = |reason: String| Read::unreadable(kind, reason, message.to_string());
    let Some(sender) = Sender::of(message, contacts) else {
        return unreadable(
            "the message names no sender: no `from` phone number and no business-scoped user id (`from_user_id` or the contact's `user_id`)".into(),
        );
    };
    if kind == "system" {
        return read_system(message, sender);
    }
    if SILENT_TYPES.contains(&kind) {
        return Read::ignore(kind);
    }
    let id = message["id"].as_str().unwrap_or("");
    if id.is_empty() || id.len() > 256 || id.contains(['{', '}']) {
        return unreadable("message `id` must be a wamid".into());
    }
    let sent_at = message["timestamp"]
        .as_str()
        .and_then(|t| t.parse::<u64>().ok());
    Read::unless_stale(kind, sent_at, reading.max_age, || {
        let (text, unsupported) = message_text(message, kind);
        let identities = sender.identities();
        let mut msg = InboundMessage::new(
            Channel::Whatsapp,
            &identities[0],
            id,
            text,
            reading.replica_id,
        );
        msg.account = account.map(str::to_string);
        msg.unsupported = unsupported;
        Read {
            kind,
            action: Action::Answer {
                msg: Box::new(msg),
                identities,
            },
        }
    })
}

/// The platform's type name from the fixed list counted in metrics (`unknown` for others, which
/// get the text-only notice too).
fn message_kind(kind: &str) -> &'static str {
    ["text", "interactive", "button", "system"]
        .into_iter()
        .chain(MEDIA_TYPES)
        .chain(SILENT_TYPES)
        .find(|k| *k == kind)
        .unwrap_or("unknown")
}

/// How WhatsApp names the sender of a message: the phone number (`from`, withheld for a
/// customer with a username), and the business-scoped user id (BSUID, in every messages webhook
/// since April 2026: the message's `from_user_id` or the contact's `user_id`).
#[derive(Debug, Clone, PartialEq)]
struct Sender {
    phone: Option<String>,
    bsuid: Option<String>,
}

impl Sender {
    /// The sender of `message`, matched to its contact by phone number or BSUID (or the only
    /// contact, when the message names neither); `None` when nothing names them.
    fn of(message: &Value, contacts: &[Value]) -> Option<Sender> {
        let from = message["from"].as_str().filter(|f| !f.is_empty());
        let phone = from.filter(|f| is_wa_id(f)).map(str::to_string);
        let own_bsuid = message["from_user_id"]
            .as_str()
            .or(from.filter(|f| is_bsuid(f)))
            .filter(|id| is_bsuid(id));
        if from.is_some() && phone.is_none() && own_bsuid.is_none() {
            return None;
        }
        let contact = contacts
            .iter()
            .find(|c| {
                let wa_id = c["wa_id"].as_str();
                let user_id = c["user_id"].as_str();
                (phone.is_some() && wa_id == phone.as_deref())
                    || (own_bsuid.is_some() && user_id == own_bsuid)
            })
            .or(match (contacts, &phone, own_bsuid) {
                ([only], None, None) => Some(only),
                _ => None,
            });
        let phone = phone.or_else(|| {
            contact
                .and_then(|c| c["wa_id"].as_str())
                .filter(|id| is_wa_id(id))
                .map(str::to_string)
        });
        let bsuid = own_bsuid
            .or_else(|| contact.and_then(|c| c["user_id"].as_str()))
            .filter(|id| is_bsuid(id))
            .map(str::to_string);
        (phone.is_some() || bsuid.is_some()).then_some(Sender { phone, bsuid })
    }

    /// Phone number first (conversations are keyed on it when it is known), then the BSUID.
    fn identities(&self) -> Vec<String> {
        self.phone.iter().chain(&self.bsuid).cloned().collect()
    }
}

/// `user_changed_number` (a new number, and with it a new BSUID) and `user_changed_user_id`
/// continue the customer's conversation under the new identity; other system messages are
/// counted only.
fn read_system(message: &Value, sender: Sender) -> Read {
    let system = &message["system"];
    let new_identities: Vec<String> = match system["type"].as_str().unwrap_or("") {
        "user_changed_number" | "customer_changed_number" => [
            system["wa_id"]
                .as_str()
                .or(system["new_wa_id"].as_str())
                .filter(|id| is_wa_id(id)),
            system["user_id"].as_str().filter(|id| is_bsuid(id)),
        ]
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect(),
        "user_changed_user_id" => system["user_id"]
            .as_str()
            .filter(|id| is_bsuid(id))
            .map(str::to_string)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    if new_identities.is_empty() {
        return Read::ignore("system");
    }
    Read {
        kind: "system",
        action: Action::Relink {
            from: sender.identities(),
            to: new_identities,
        },
    }
}

/// A WhatsApp id: the phone number in international format, digits only.
fn is_wa_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The customer's text: `text.body`, the title of a button or list reply, a template button's
/// text; for anything else (image, audio, location, …) the caption or a placeholder, and the
/// kind, which earns the text-only notice.
fn message_text(message: &Value, kind: &str) -> (String, Option<String>) {
    let field = |pointer: &str| {
        message
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let text = match kind {
        "text" => field("/text/body"),
        "interactive" => field("/interactive/button_reply/title")
            .or_else(|| field("/interactive/list_reply/title")),
        "button" => field("/button/text"),
        _ => None,
    };
    match text {
        Some(text) if !text.trim().is_empty() => (text, None),
        _ => {
            let caption = message
                .get(kind)
                .and_then(|part| part.get("caption"))
                .and_then(Value::as_str)
                .unwrap_or_default();
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
        let path = format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
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

    fn reads(name: &str) -> Vec<Read> {
        let notification: Notification = serde_json::from_slice(&fixture(name)).expect("fixture");
        read_notification(
            notification,
            Reading {
                replica_id: "r1",
                max_age: None,
            },
        )
    }

    /// The messages to answer, with the identities their sender is named by.
    fn parse(name: &str) -> Vec<(InboundMessage, Vec<String>)> {
        reads(name)
            .into_iter()
            .filter_map(|read| match read.action {
                Action::Answer { msg, identities } => Some((*msg, identities)),
                _ => None,
            })
            .collect()
    }

    fn kinds_and_actions(name: &str) -> Vec<(&'static str, &'static str)> {
        reads(name)
            .iter()
            .map(|read| {
                let action = match &read.action {
                    Action::Answer { msg, .. } if msg.unsupported.is_some() => "unsupported",
                    Action::Answer { .. } => "answer",
                    Action::Ignore => "ignore",
                    Action::Relink { .. } => "relink",
                    Action::Unreadable { .. } => "unreadable",
                    Action::Stale => "stale",
                };
                (read.kind, action)
            })
            .collect()
    }

    #[test]
    fn reads_every_message_of_a_batch_in_order() {
        let messages = parse("whatsapp-multi.json");
        let senders: Vec<&str> = messages.iter().map(|(m, _)| m.user.as_str()).collect();
        assert_eq!(senders, vec!["31612345678", "32470123456", "31612345678"]);
        assert_eq!(
            messages[1].0.text,
            "My package VC100200300BE arrived damaged"
        );
        assert!(
            messages
                .iter()
                .all(|(m, _)| m.account.as_deref() == Some("106540352242922"))
        );
        assert!(
            messages
                .iter()
                .all(|(m, _)| m.message_id.starts_with("wamid."))
        );
    }

    #[test]
    fn button_replies_carry_their_title_and_images_are_unsupported() {
        let button = parse("whatsapp-interactive-button.json");
        assert_eq!(
            (
                button[0].0.text.as_str(),
                button[0].0.unsupported.as_deref()
            ),
            ("18:00-21:00", None)
        );
        let image = parse("whatsapp-image.json");
        assert_eq!(image[0].0.unsupported.as_deref(), Some("image"));
        assert_eq!(image[0].0.text, "[image] the box");
        assert!(reads("whatsapp-status.json").is_empty());
        assert!(reads("whatsapp-status-failed.json").is_empty());
    }

    #[test]
    fn a_customer_with_a_username_is_named_by_their_business_scoped_id() {
        let messages = parse("whatsapp-username.json");
        assert_eq!(messages.len(), 1);
        let (msg, identities) = &messages[0];
        assert_eq!(identities, &vec!["NL.1234567890".to_string()]);
        assert_eq!(msg.user, "NL.1234567890");
        assert_eq!(msg.text, "Waar is mijn pakket? VC482913577NL");
    }

    #[test]
    fn a_customer_named_both_ways_is_keyed_on_the_number_first() {
        let messages = parse("whatsapp-phone-and-bsuid.json");
        assert_eq!(
            messages[0].1,
            vec!["31612345678".to_string(), "NL.1234567890".to_string()]
        );
        assert_eq!(messages[0].0.user, "31612345678");
    }

    #[test]
    fn one_bad_message_costs_only_itself() {
        assert_eq!(
            kinds_and_actions("whatsapp-mixed-batch.json"),
            vec![
                ("text", "answer"),
                ("unknown", "unsupported"),
                ("text", "unreadable"),
                ("location", "unsupported"),
            ]
        );
        let unreadable = reads("whatsapp-mixed-batch.json")
            .into_iter()
            .find_map(|read| match read.action {
                Action::Unreadable { reason, payload } => Some((reason, payload)),
                _ => None,
            })
            .expect("one unreadable message");
        assert!(unreadable.0.contains("no sender"), "{}", unreadable.0);
        assert!(unreadable.1.contains("no sender Meta would send"));
    }

    #[test]
    fn every_message_type_has_a_deliberate_answer() {
        assert_eq!(
            kinds_and_actions("whatsapp-reaction.json"),
            vec![("reaction", "ignore")]
        );
        let media = kinds_and_actions("whatsapp-media-kinds.json");
        assert_eq!(media.len(), 8);
        assert!(
            media.iter().all(|(_, action)| *action == "unsupported"),
            "{media:?}"
        );
        let replies = parse("whatsapp-list-and-template-replies.json");
        let texts: Vec<&str> = replies.iter().map(|(m, _)| m.text.as_str()).collect();
        assert_eq!(texts, vec!["18:00-21:00", "Andere dag"]);
    }

    #[test]
    fn identity_changes_continue_the_conversation_under_the_new_identity() {
        let relinks: Vec<(Vec<String>, Vec<String>)> = [
            "whatsapp-changed-number.json",
            "whatsapp-changed-user-id.json",
        ]
        .iter()
        .flat_map(|name| reads(name))
        .filter_map(|read| match read.action {
            Action::Relink { from, to } => Some((from, to)),
            _ => None,
        })
        .collect();
        assert_eq!(
            relinks,
            vec![
                (
                    vec!["31612345678".to_string()],
                    vec!["31687654321".to_string(), "NL.5550001111".to_string()]
                ),
                (
                    vec!["NL.1234567890".to_string()],
                    vec!["NL.7770002222".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn business_scoped_ids_are_told_from_numbers_and_junk() {
        assert!(is_bsuid("NL.1234567890"));
        assert!(is_bsuid("US.ENT.11815799212886844830"));
        assert!(!is_bsuid("31612345678"));
        assert!(!is_bsuid("nl.123"));
        assert!(!is_bsuid("NL."));
        assert!(!is_bsuid("NL.12{3}"));
        assert!(is_wa_id("31612345678"));
        assert!(!is_wa_id("+31 6"));
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        /// Whatever Meta (or an attacker with the app secret) sends, reading never panics, and
        /// every message of a notification is read as exactly one thing.
        #[test]
        fn reading_any_notification_never_panics(
            body in proptest::prop_oneof![
                crate::arbitrary::body(),
                crate::arbitrary::whatsapp_notification().prop_map(|v| v.to_string().into_bytes()),
            ]
        ) {
            if let Ok(notification) = serde_json::from_slice::<Notification>(&body) {
                let messages: usize = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("entry").cloned())
                    .and_then(|e| e.as_array().cloned())
                    .map(|entries| {
                        entries
                            .iter()
                            .flat_map(|e| e["changes"].as_array().cloned().unwrap_or_default())
                            .map(|c| c["value"]["messages"].as_array().map_or(0, Vec::len))
                            .sum()
                    })
                    .unwrap_or(0);
                let reads = read_notification(
                    notification,
                    Reading { replica_id: "r1", max_age: Some(std::time::Duration::from_secs(3600)) },
                );
                proptest::prop_assert_eq!(reads.len(), messages);
            }
        }
    }
}
