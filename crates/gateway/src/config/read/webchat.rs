//! The `webchat` section: reply wait, allowed origins, session tokens, live events.

use super::super::reader::{Object, Reader, ms};
use super::super::schema::WebchatConfig;
use super::super::validation::check_origin;
use secrecy::SecretString;
use std::time::Duration;

/// `webchat`: how the widget and its API behave.
pub(super) fn read(r: &mut Reader, root: &Object) -> WebchatConfig {
    let empty = Object::new();
    let wc = r
        .section(
            root,
            "",
            "webchat",
            &[
                "replyWaitMs",
                "allowedOrigins",
                "sessionTokens",
                "tokenSecret",
                "tokenTtlSeconds",
                "eventsMaxLength",
                "streaming",
                "title",
            ],
        )
        .unwrap_or(&empty);
    let allowed_origins: Vec<String> = r
        .value(
            wc,
            "webchat",
            "allowedOrigins",
            "an array of origins such as \"https://track.example.nl\"",
            |v| {
                v.as_array()?
                    .iter()
                    .map(|o| o.as_str().map(str::to_string))
                    .collect()
            },
        )
        .unwrap_or_default();
    for (i, origin) in allowed_origins.iter().enumerate() {
        if let Err(message) = check_origin(origin) {
            r.error(format!("webchat.allowedOrigins[{i}]"), message);
        }
    }
    WebchatConfig {
        reply_wait: ms(
            r.integer(wc, "webchat", "replyWaitMs", 0, 600_000, "milliseconds"),
            30_000,
        ),
        allowed_origins,
        session_tokens: r
            .choice(wc, "webchat", "sessionTokens", &["required", "off"])
            .is_none_or(|choice| choice == "required"),
        token_secret: r
            .string(wc, "webchat", "tokenSecret")
            .map(SecretString::from),
        token_ttl: Duration::from_secs(
            r.integer(wc, "webchat", "tokenTtlSeconds", 60, 90 * 86_400, "seconds")
                .unwrap_or(86_400),
        ),
        events_max_length: r
            .integer(wc, "webchat", "eventsMaxLength", 10, 100_000, "events")
            .unwrap_or(500) as usize,
        streaming: r.boolean(wc, "webchat", "streaming").unwrap_or(true),
        title: r
            .string(wc, "webchat", "title")
            .unwrap_or_else(|| "Chat".to_string()),
    }
}
