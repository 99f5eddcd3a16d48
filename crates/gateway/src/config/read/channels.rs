//! The `channels` section: WhatsApp, Telegram, the OpenAI-compatible API, and the limits and
//! notices they share.

use super::super::defaults::{
    DEFAULT_MAX_API_TEXT, DEFAULT_MAX_MESSAGE_AGE_HOURS, DEFAULT_MAX_TEXT, TOO_LONG_REPLY,
    UNSUPPORTED_REPLY,
};
use super::super::reader::{Object, Reader, join};
use super::super::schema::{ApiConfig, ChannelsConfig, TelegramConfig, WhatsappConfig};
use super::super::validation::check_endpoint;
use crate::message::Channel;
use secrecy::SecretString;
use std::time::Duration;

/// `channels`: each platform is off unless its block is there; a block needs all its secrets.
pub(super) fn read(r: &mut Reader, root: &Object) -> ChannelsConfig {
    let empty = Object::new();
    let c = r
        .section(
            root,
            "",
            "channels",
            &[
                "whatsapp",
                "telegram",
                "api",
                "unsupportedReply",
                "tooLongReply",
                "maxTextChars",
                "maxReplyParts",
                "maxMessageAgeHours",
            ],
        )
        .unwrap_or(&empty);
    let p = "channels.whatsapp";
    let whatsapp = r
        .section(
            c,
            "channels",
            "whatsapp",
            &[
                "verifyToken",
                "appSecret",
                "accessToken",
                "phoneNumberId",
                "apiBase",
                "apiVersion",
            ],
        )
        .map(|w| WhatsappConfig {
            verify_token: required_secret(r, w, p, "verifyToken", "the webhook verify token"),
            app_secret: required_secret(r, w, p, "appSecret", "the Meta app secret"),
            access_token: required_secret(r, w, p, "accessToken", "a Graph API access token"),
            phone_number_id: required_string(
                r,
                w,
                p,
                "phoneNumberId",
                "the business phone number id",
            ),
            api_base: api_base(r, w, p, "https://graph.facebook.com"),
            api_version: r
                .string(w, p, "apiVersion")
                .unwrap_or_else(|| "v21.0".into()),
        });
    let p = "channels.telegram";
    let telegram = r
        .section(
            c,
            "channels",
            "telegram",
            &["botToken", "secretToken", "apiBase"],
        )
        .map(|t| TelegramConfig {
            bot_token: required_secret(r, t, p, "botToken", "the bot token from @BotFather"),
            secret_token: required_secret(r, t, p, "secretToken", "the webhook secret token"),
            api_base: api_base(r, t, p, "https://api.telegram.org"),
        });
    let api = r
        .section(c, "channels", "api", &["token"])
        .map(|a| ApiConfig {
            token: required_secret(
                r,
                a,
                "channels.api",
                "token",
                "the bearer token clients present",
            ),
        });
    let mut unsupported_reply: std::collections::BTreeMap<String, String> = UNSUPPORTED_REPLY
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect();
    if let Some(replies) = r.object(c, "channels", "unsupportedReply") {
        for language in replies.keys() {
            if let Some(text) = r.string(replies, "channels.unsupportedReply", language) {
                unsupported_reply.insert(language.clone(), text);
            }
        }
    }
    let mut too_long_reply: std::collections::BTreeMap<String, String> = TOO_LONG_REPLY
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect();
    if let Some(replies) = r.object(c, "channels", "tooLongReply") {
        for language in replies.keys() {
            if let Some(text) = r.string(replies, "channels.tooLongReply", language) {
                too_long_reply.insert(language.clone(), text);
            }
        }
    }
    let mut max_text = std::collections::BTreeMap::from([
        (Channel::Whatsapp, DEFAULT_MAX_TEXT),
        (Channel::Telegram, DEFAULT_MAX_TEXT),
        (Channel::Webchat, DEFAULT_MAX_TEXT),
        (Channel::Api, DEFAULT_MAX_API_TEXT),
    ]);
    if let Some(limits) = r.object(c, "channels", "maxTextChars") {
        for name in limits.keys() {
            let path = "channels.maxTextChars";
            let Some(channel) = Channel::named(name) else {
                r.error(
                    format!("{path}.{name}"),
                    "unknown channel; expected whatsapp, telegram, webchat or api",
                );
                continue;
            };
            if let Some(limit) = r.integer(limits, path, name, 1, 1_000_000, "UTF-16 units") {
                max_text.insert(channel, limit as usize);
            }
        }
    }
    let max_reply_parts = r
        .integer(c, "channels", "maxReplyParts", 1, 100, "messages")
        .map_or(5, |n| n as usize);
    let max_message_age = r
        .integer(
            c,
            "channels",
            "maxMessageAgeHours",
            0,
            10 * 365 * 24,
            "hours, 0 = no limit",
        )
        .or(Some(DEFAULT_MAX_MESSAGE_AGE_HOURS))
        .filter(|hours| *hours > 0)
        .map(|hours| Duration::from_secs(hours * 3_600));
    ChannelsConfig {
        whatsapp,
        telegram,
        api,
        unsupported_reply,
        max_text,
        too_long_reply,
        max_reply_parts,
        max_message_age,
    }
}

pub(super) fn required_string(
    r: &mut Reader,
    obj: &Object,
    prefix: &str,
    key: &str,
    what: &str,
) -> String {
    let value = r.string(obj, prefix, key);
    if value.is_none() && obj.get(key).is_none() {
        r.error(join(prefix, key), format!("missing; expected {what}"));
    }
    value.unwrap_or_default()
}

fn required_secret(
    r: &mut Reader,
    obj: &Object,
    prefix: &str,
    key: &str,
    what: &str,
) -> SecretString {
    SecretString::from(required_string(r, obj, prefix, key, what))
}

fn api_base(r: &mut Reader, obj: &Object, prefix: &str, default: &str) -> String {
    match r.string(obj, prefix, "apiBase") {
        Some(base) => {
            check_endpoint(r, &base, &join(prefix, "apiBase"));
            base.trim_end_matches('/').to_string()
        }
        None => default.to_string(),
    }
}
