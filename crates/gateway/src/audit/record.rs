//! One audit line, as written to the files and as `clawgate audit search` prints it, and the
//! sealing of its text under the customer's key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A message in from the customer, or a reply out to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// An accepted inbound message.
    In,
    /// A reply handed to the customer.
    Out,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 time with milliseconds, UTC.
    pub ts: String,
    /// The same, in ms since the epoch (for sorting and filtering).
    pub ts_ms: u64,
    /// `in` or `out`.
    pub direction: Direction,
    /// `whatsapp`, `telegram`, `webchat` or `api`.
    pub channel: String,
    /// `channel:user`.
    pub conversation: String,
    /// The customer's message id (a reply carries the id of the message it answers).
    pub message_id: String,
    /// The replica that wrote the record.
    pub replica: String,
    /// `accepted`, `sent`, `answered` or `dead_letter`.
    pub outcome: String,
    /// The skill that answered (replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill: Option<String>,
    /// The provider (or template) that wrote the answer (replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// From the message's arrival to the reply (replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The text, encrypted under the customer's key: base64 of nonce and ciphertext
    /// (`audit.text = "full"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// The text's SHA-256, hex (`audit.text = "hash"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    /// The text, opened for reading (never written to the files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Set when a search found the text sealed under a key that is gone (the customer was
    /// forgotten, or the key expired with the retention period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<bool>,
}

/// A customer's audit key.
pub type CustomerKey = [u8; 32];

/// Seals `text` under `key`, bound to `conversation` (a sealed text cannot be moved to another
/// customer's record).
pub fn seal(key: &CustomerKey, conversation: &str, text: &str) -> Option<String> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let nonce_bytes: [u8; 12] = rand::random();
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce_bytes),
            Payload {
                msg: text.as_bytes(),
                aad: conversation.as_bytes(),
            },
        )
        .ok()?;
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&sealed);
    Some(BASE64.encode(out))
}

/// Opens what [`seal`] made; `None` when the key or the conversation does not match.
pub fn open(key: &CustomerKey, conversation: &str, sealed: &str) -> Option<String> {
    let bytes = BASE64.decode(sealed).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(12);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let plain = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: conversation.as_bytes(),
            },
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

/// The SHA-256 of `text`, hex.
pub fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `ms` since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_text_opens_only_with_its_key_and_conversation() {
        let key: CustomerKey = [7; 32];
        let sealed = seal(&key, "whatsapp:31612345678", "Mijn pakket is kapot").unwrap();
        assert!(!sealed.contains("pakket"));
        assert_eq!(
            open(&key, "whatsapp:31612345678", &sealed).as_deref(),
            Some("Mijn pakket is kapot")
        );
        assert_eq!(open(&[8; 32], "whatsapp:31612345678", &sealed), None);
        assert_eq!(open(&key, "whatsapp:31699999999", &sealed), None);
        assert_eq!(open(&key, "whatsapp:31612345678", "not base64!"), None);
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339(1_764_720_000_123), "2025-12-03T00:00:00.123Z");
    }
}
