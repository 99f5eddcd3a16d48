//! Sending replies on WhatsApp and Telegram: split to the platform's length limit, retry what a
//! retry can fix (5xx, network errors, throughput limits; waiting what the platform asks on 429),
//! and report what it cannot (a closed 24-hour window, a blocked bot) so the caller dead-letters
//! the reply instead of losing it.
//!
//! The bot token is part of Telegram's URLs, so transport errors are stripped of their URL before
//! they are logged or stored.

use crate::config::{ChannelsConfig, TelegramConfig, WhatsappConfig};
use crate::message::{Channel, InboundMessage};
use crate::{retry, telemetry};
use backon::BackoffBuilder;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::time::Duration;

/// Longest text one WhatsApp or Telegram message may carry, in UTF-16 code units: Telegram
/// counts its 4,096 that way (an emoji outside the Basic Multilingual Plane is two), and Meta,
/// which does not say how it counts, never gets more than that either.
pub const PLATFORM_TEXT_LIMIT: usize = 4096;
/// Attempts per chunk before the reply is given up (and dead-lettered).
const MAX_ATTEMPTS: u32 = 5;
/// Attempts to answer a button press: Telegram shows the spinner for a few seconds only, so a
/// late answer is worth little.
const CALLBACK_ATTEMPTS: u32 = 3;
/// Longest wait honoured from a platform's `retry_after`; longer asks are treated as failures.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why one send attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct SendError {
    /// What happened, safe to log (no tokens).
    pub reason: String,
    /// Whether another attempt may succeed, and after how long the platform asked to wait.
    pub retry: Retry,
}

/// Whether and when to retry a send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retry {
    /// Never: the platform refused for good (e.g. WhatsApp 131047, a blocked bot).
    No,
    /// Yes, after the usual backoff.
    Backoff,
    /// Yes, after the time the platform named.
    After(Duration),
}

/// A reply that could not be delivered; the caller dead-letters it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryFailure {
    /// The last error, safe to store.
    pub reason: String,
    /// Chunks that did go out before the failure.
    pub chunks_sent: usize,
}

/// WhatsApp Cloud API sender.
pub struct WhatsappClient {
    base: String,
    default_account: String,
    authorization: HeaderValue,
    client: reqwest::Client,
}

/// Telegram Bot API sender.
pub struct TelegramClient {
    /// `{apiBase}/bot{token}`, before the method name: holds the token, never logged.
    bot_url: String,
    client: reqwest::Client,
}

/// The platform senders that are configured.
pub struct Egress {
    whatsapp: Option<WhatsappClient>,
    telegram: Option<TelegramClient>,
    /// Most messages one reply goes out as (`channels.maxReplyParts`).
    max_parts: usize,
}

impl Egress {
    /// Senders for the configured platforms, sharing `client`.
    pub fn from_config(channels: &ChannelsConfig, client: &reqwest::Client) -> Egress {
        Egress {
            whatsapp: channels
                .whatsapp
                .as_ref()
                .map(|c| WhatsappClient::new(c, client.clone())),
            telegram: channels
                .telegram
                .as_ref()
                .map(|c| TelegramClient::new(c, client.clone())),
            max_parts: channels.max_reply_parts.max(1),
        }
    }

    /// Sends `text` to the customer who wrote `msg`, split and retried as needed.
    pub async fn deliver(&self, msg: &InboundMessage, text: &str) -> Result<(), DeliveryFailure> {
        self.send(msg.channel, msg.address(), msg.account.as_deref(), text)
            .await
    }

    /// Sends `text` to `to` on `channel` (from `account` on WhatsApp, when given).
    pub async fn send(
        &self,
        channel: Channel,
        to: &str,
        account: Option<&str>,
        text: &str,
    ) -> Result<(), DeliveryFailure> {
        let chunks = limit_parts(split_text(text, PLATFORM_TEXT_LIMIT), self.max_parts);
        for (sent, chunk) in chunks.iter().enumerate() {
            if let Err(reason) = self.send_chunk(channel, to, account, chunk).await {
                return Err(DeliveryFailure {
                    reason,
                    chunks_sent: sent,
                });
            }
        }
        Ok(())
    }

    /// Answers a Telegram button press (`answerCallbackQuery`), retried like a reply chunk.
    pub async fn answer_callback_query(&self, id: &str) -> Result<(), String> {
        let Some(telegram) = &self.telegram else {
            return Err("the telegram channel is not configured for sending".into());
        };
        let mut backoff = retry::backoff(CALLBACK_ATTEMPTS - 1).build();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match telegram.answer_callback_query(id).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let wait = match error.retry {
                Retry::No => None,
                Retry::After(after) => Some(after.min(MAX_RETRY_AFTER)),
                Retry::Backoff => backoff.next(),
            };
            match wait {
                Some(wait) if attempt < CALLBACK_ATTEMPTS => tokio::time::sleep(wait).await,
                _ => return Err(error.reason),
            }
        }
    }

    async fn send_chunk(
        &self,
        channel: Channel,
        to: &str,
        account: Option<&str>,
        chunk: &str,
    ) -> Result<(), String> {
        let mut backoff = retry::backoff(MAX_ATTEMPTS - 1).build();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match (channel, &self.whatsapp, &self.telegram) {
                (Channel::Whatsapp, Some(w), _) => w.send(to, account, chunk).await,
                (Channel::Telegram, _, Some(t)) => t.send(to, chunk).await,
                _ => Err(SendError {
                    reason: format!("the {channel} channel is not configured for sending"),
                    retry: Retry::No,
                }),
            };
            let outcome = match &result {
                Ok(()) => "sent",
                Err(SendError {
                    retry: Retry::No, ..
                }) => "refused",
                Err(_) => "retryable_error",
            };
            metrics::counter!(telemetry::EGRESS_SENDS, "channel" => channel.as_str(), "outcome" => outcome)
                .increment(1);
            let error = match result {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let wait = match error.retry {
                Retry::No => return Err(error.reason),
                Retry::After(after) if after > MAX_RETRY_AFTER => {
                    return Err(format!("{} (asked to wait {after:?})", error.reason));
                }
                Retry::After(after) => Some(after),
                Retry::Backoff => backoff.next(),
            };
            match wait {
                Some(wait) if attempt < MAX_ATTEMPTS => {
                    tracing::info!(%channel, attempt, ?wait, reason = %error.reason, "sending a reply failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(format!("{} (after {attempt} attempts)", error.reason)),
            }
        }
    }
}

/// A transport failure with the URL (which may hold a token) removed.
fn transport_error(e: reqwest::Error) -> SendError {
    SendError {
        reason: format!("cannot reach the platform: {}", e.without_url()),
        retry: Retry::Backoff,
    }
}

async fn json_body(response: reqwest::Response) -> Value {
    response.json().await.unwrap_or(Value::Null)
}

impl WhatsappClient {
    fn new(config: &WhatsappConfig, client: reqwest::Client) -> WhatsappClient {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", config.access_token.expose_secret()))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token"));
        authorization.set_sensitive(true);
        WhatsappClient {
            base: format!("{}/{}", config.api_base, config.api_version),
            default_account: config.phone_number_id.clone(),
            authorization,
            client,
        }
    }

    /// `POST {apiBase}/{version}/{phoneNumberId}/messages` with one text message.
    async fn send(&self, to: &str, account: Option<&str>, text: &str) -> Result<(), SendError> {
        let account = account.unwrap_or(&self.default_account);
        // A customer who shares no phone number is addressed by their business-scoped user id,
        // which the send API takes as `recipient` instead of `to`.
        let address_field = if crate::message::is_business_scoped_id(to) {
            "recipient"
        } else {
            "to"
        };
        let body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            address_field: to,
            "type": "text",
            "text": {"preview_url": false, "body": text},
        });
        let response = self
            .client
            .post(format!("{}/{account}/messages", self.base))
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let error = json_body(response).await;
        let code = error.pointer("/error/code").and_then(Value::as_i64);
        let message = error
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        let reason = format!(
            "WhatsApp answered HTTP {} (code {}): {message}",
            status.as_u16(),
            code.unwrap_or(0)
        );
        // 130429 throughput, 131056 pair rate limit, 4 / 80007 app rate limits: wait and retry.
        // 131047 (24-hour window closed) and other 4xx: a retry cannot help.
        let retry = match code {
            Some(130429 | 131056 | 4 | 80007) => Retry::Backoff,
            _ if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
                Retry::Backoff
            }
            _ => Retry::No,
        };
        Err(SendError { reason, retry })
    }
}

impl TelegramClient {
    fn new(config: &TelegramConfig, client: reqwest::Client) -> TelegramClient {
        TelegramClient {
            bot_url: format!(
                "{}/bot{}",
                config.api_base,
                config.bot_token.expose_secret()
            ),
            client,
        }
    }

    /// `POST {apiBase}/bot{token}/sendMessage`.
    async fn send(&self, chat_id: &str, text: &str) -> Result<(), SendError> {
        // Telegram takes numeric chat ids as numbers and channel usernames as strings.
        let chat_id: Value = chat_id
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(chat_id));
        self.call("sendMessage", &json!({"chat_id": chat_id, "text": text}))
            .await
    }

    /// `POST {apiBase}/bot{token}/answerCallbackQuery`: stops the spinner on the button the
    /// customer pressed.
    async fn answer_callback_query(&self, id: &str) -> Result<(), SendError> {
        self.call("answerCallbackQuery", &json!({"callback_query_id": id}))
            .await
    }

    /// Calls a Bot API method; an error says whether a retry may help.
    async fn call(&self, method: &str, parameters: &Value) -> Result<(), SendError> {
        let response = self
            .client
            .post(format!("{}/{method}", self.bot_url))
            .json(parameters)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let answer = json_body(response).await;
        if status.is_success() && answer["ok"] == true {
            return Ok(());
        }
        let description = answer["description"].as_str().unwrap_or("no description");
        let reason = format!("Telegram answered HTTP {}: {description}", status.as_u16());
        let retry = match answer
            .pointer("/parameters/retry_after")
            .and_then(Value::as_u64)
        {
            Some(seconds) => Retry::After(Duration::from_secs(seconds)),
            None if status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error() =>
            {
                Retry::Backoff
            }
            None => Retry::No,
        };
        Err(SendError { reason, retry })
    }
}

/// Splits `text` into pieces of at most `limit` UTF-16 code units (see [`PLATFORM_TEXT_LIMIT`]),
/// preferring paragraph breaks, then line breaks, then sentence ends, then spaces; a single
/// unbroken run longer than `limit` is cut (never inside a character).
pub fn split_text(text: &str, limit: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while utf16_len(rest) > limit {
        let window_end = utf16_prefix_end(rest, limit);
        let window = &rest[..window_end];
        let cut = ["\n\n", "\n", ". ", "! ", "? ", "; ", " "]
            .iter()
            .filter_map(|sep| window.rfind(sep).map(|i| i + sep.len()))
            .find(|&i| i > window.len() / 4)
            .unwrap_or(window_end);
        pieces.push(rest[..cut].trim_end().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces
}

/// What marks a reply cut to `channels.maxReplyParts` messages.
const CUT_MARK: &str = " […]";

/// At most `max` parts; when there were more, the last one kept ends with [`CUT_MARK`] (and
/// stays within the platform's limit).
fn limit_parts(mut parts: Vec<String>, max: usize) -> Vec<String> {
    if parts.len() <= max {
        return parts;
    }
    tracing::info!(
        parts = parts.len(),
        max,
        "reply cut to channels.maxReplyParts messages"
    );
    parts.truncate(max);
    if let Some(last) = parts.last_mut() {
        let room = PLATFORM_TEXT_LIMIT - utf16_len(CUT_MARK);
        last.truncate(utf16_prefix_end(last, room));
        last.push_str(CUT_MARK);
    }
    parts
}

/// Length in UTF-16 code units, as Telegram counts message lengths.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The byte index where the longest prefix of `text` of at most `limit` UTF-16 units ends (at
/// least one character, so a split always advances).
pub(crate) fn utf16_prefix_end(text: &str, limit: usize) -> usize {
    let mut units = 0;
    for (index, c) in text.char_indices() {
        units += c.len_utf16();
        if units > limit {
            return if index == 0 { c.len_utf8() } else { index };
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_text("  hello  ", 10), vec!["hello"]);
    }

    #[test]
    fn splits_at_paragraphs_then_sentences_and_never_exceeds_the_limit() {
        let text = format!(
            "{}\n\n{}. {}",
            "a".repeat(30),
            "b".repeat(30),
            "c".repeat(30)
        );
        let pieces = split_text(&text, 50);
        assert_eq!(
            pieces,
            vec![
                "a".repeat(30),
                format!("{}.", "b".repeat(30)),
                "c".repeat(30)
            ]
        );
        let long = "word ".repeat(2000);
        for piece in split_text(&long, PLATFORM_TEXT_LIMIT) {
            assert!(utf16_len(&piece) <= PLATFORM_TEXT_LIMIT);
            assert!(!piece.starts_with(' ') && !piece.ends_with(' '));
        }
    }

    #[test]
    fn counts_utf16_units_as_telegram_does() {
        // 3,000 emoji are 6,000 UTF-16 units: two parts, each within the limit.
        let text = "🚚".repeat(3000);
        let pieces = split_text(&text, PLATFORM_TEXT_LIMIT);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| utf16_len(p) <= PLATFORM_TEXT_LIMIT));
        assert_eq!(pieces.concat(), text);
        assert_eq!(utf16_len("a🚚é"), 4);
    }

    #[test]
    fn a_reply_is_cut_to_the_most_parts_and_says_so() {
        let parts = limit_parts(split_text(&"x".repeat(50_000), PLATFORM_TEXT_LIMIT), 3);
        assert_eq!(parts.len(), 3);
        assert!(parts[2].ends_with(CUT_MARK));
        assert!(parts.iter().all(|p| utf16_len(p) <= PLATFORM_TEXT_LIMIT));
        assert_eq!(limit_parts(vec!["a".into()], 3), vec!["a".to_string()]);
    }

    #[test]
    fn counts_characters_not_bytes_and_cuts_unbroken_runs() {
        let text = "é".repeat(25);
        let pieces = split_text(&text, 10);
        assert_eq!(
            pieces.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(pieces.concat(), text);
    }
}
