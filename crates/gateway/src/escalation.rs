//! Handing a conversation to a person. A skill's `escalate` rule marks the conversation
//! `escalation_pending` (in its session, in the turn's atomic commit), the dispatcher's webhook
//! gets the conversation summary (signed, retried, dead-lettered when it keeps failing), and the
//! customer is told a person will follow up. While the hand-over is pending the bot does not
//! answer for the person: each message gets a holding answer and goes to the dispatcher too.
//! The dispatcher resolves it (`clawgate escalations resolve`, or the HTTP API), and the bot takes
//! the conversation back.

use crate::config::EscalationConfig;
use crate::message::{HistoryEntry, InboundMessage, Role};
use backon::Retryable;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// `pending` until the dispatcher resolves it.
pub const PENDING: &str = "pending";
/// After `resolve`.
pub const RESOLVED: &str = "resolved";
/// The `provider` of replies the gateway gives for a person (the hand-over notice and holding
/// answers): no model wrote them.
pub const PROVIDER: &str = "handover";
/// How many of the latest history entries the summary carries.
const TRANSCRIPT_ENTRIES: usize = 20;

/// One escalation as stored (`oc:escalation:{conversation}`) and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// Short reference the customer and the dispatcher quote (`ESC-3F9A12BC`); derived from the
    /// message that escalated, so a turn that runs twice makes the same one.
    pub reference: String,
    /// `channel:user`.
    pub conversation: String,
    /// The channel the customer writes on.
    pub channel: String,
    /// The customer on that channel.
    pub user: String,
    /// The skill whose rule escalated.
    pub skill: String,
    /// The customer's language.
    pub language: String,
    /// Which rule matched.
    pub reason: String,
    /// `pending` or `resolved`.
    pub status: String,
    /// When it was handed over (ms since the epoch).
    pub created_at: u64,
    /// One paragraph for the dispatcher.
    pub summary: String,
    /// The latest messages of the conversation, oldest first.
    pub transcript: Vec<TranscriptLine>,
    /// Whether the dispatcher's webhook took the hand-over (false: not configured, or it failed
    /// and the event is in the dead-letter stream).
    pub notified: bool,
    /// When it was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<u64>,
    /// Who resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    /// The dispatcher's note on resolving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where a person's reply goes on the customer's platform (a WhatsApp number or user id, a
    /// Telegram chat), when it differs from `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The business account the customer wrote to (WhatsApp phone number id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The dispatcher handling it (`POST …/claim`); others' replies are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// When it was claimed (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<u64>,
    /// When a person first answered the customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_reply_at: Option<u64>,
    /// Messages people sent the customer.
    #[serde(default)]
    pub agent_replies: u64,
}

/// What claiming an escalation came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller holds it now (or held it already).
    Claimed(Escalation),
    /// Another person holds it (`claimed_by`); taking it over must be asked for.
    HeldBy(Escalation),
    /// It was resolved.
    NotPending(Escalation),
    /// No escalation for the conversation.
    Unknown,
}

/// One message of the transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptLine {
    /// `user` or `assistant`.
    pub role: String,
    /// What was written.
    pub text: String,
    /// When (ms since the epoch).
    pub ts: u64,
}

impl Escalation {
    /// The escalation `msg` starts, with `history` before it (and `later` messages answered in
    /// the same turn).
    pub fn new(
        msg: &InboundMessage,
        later: &[&InboundMessage],
        history: &[HistoryEntry],
        skill: &str,
        language: &str,
        reason: String,
        now: u64,
    ) -> Escalation {
        let mut transcript: Vec<TranscriptLine> = history
            .iter()
            .map(|e| TranscriptLine {
                role: match e.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Agent => "agent",
                }
                .to_string(),
                text: e.text.clone(),
                ts: e.ts,
            })
            .collect();
        for m in std::iter::once(msg).chain(later.iter().copied()) {
            transcript.push(TranscriptLine {
                role: "user".into(),
                text: m.text.clone(),
                ts: m.received_at_ms,
            });
        }
        let skip = transcript.len().saturating_sub(TRANSCRIPT_ENTRIES);
        transcript.drain(..skip);
        let said: Vec<&str> = transcript
            .iter()
            .filter(|l| l.role == "user")
            .map(|l| l.text.as_str())
            .collect();
        let summary = format!(
            "{} customer {} (language {language}) handed over by skill {skill} ({reason}). \
             The customer wrote: {}",
            msg.channel,
            msg.user,
            said.iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        Escalation {
            reference: reference(msg.dedupe_id().as_str()),
            conversation: msg.conversation().to_string(),
            channel: msg.channel.as_str().to_string(),
            user: msg.user.clone(),
            skill: skill.to_string(),
            language: language.to_string(),
            reason,
            status: PENDING.into(),
            created_at: now,
            summary,
            transcript,
            notified: false,
            resolved_at: None,
            resolved_by: None,
            note: None,
            address: msg.reply_to.clone(),
            account: msg.account.clone(),
            claimed_by: None,
            claimed_at: None,
            first_reply_at: None,
            agent_replies: 0,
        }
    }

    /// The stored hash's fields.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("reference", self.reference.clone()),
            ("conversation", self.conversation.clone()),
            ("channel", self.channel.clone()),
            ("user", self.user.clone()),
            ("skill", self.skill.clone()),
            ("language", self.language.clone()),
            ("reason", self.reason.clone()),
            ("status", self.status.clone()),
            ("created_at", self.created_at.to_string()),
            ("summary", self.summary.clone()),
            (
                "transcript",
                serde_json::to_string(&self.transcript).unwrap_or_else(|_| "[]".into()),
            ),
            ("notified", if self.notified { "1" } else { "0" }.into()),
        ];
        for (name, at) in [
            ("resolved_at", self.resolved_at),
            ("claimed_at", self.claimed_at),
            ("first_reply_at", self.first_reply_at),
        ] {
            if let Some(at) = at {
                fields.push((name, at.to_string()));
            }
        }
        if self.agent_replies > 0 {
            fields.push(("agent_replies", self.agent_replies.to_string()));
        }
        for (name, value) in [
            ("resolved_by", &self.resolved_by),
            ("note", &self.note),
            ("address", &self.address),
            ("account", &self.account),
            ("claimed_by", &self.claimed_by),
        ] {
            if let Some(value) = value {
                fields.push((name, value.clone()));
            }
        }
        fields
    }

    /// Reads a stored hash; `None` when it lacks the reference or the conversation.
    pub fn from_fields(fields: &BTreeMap<String, String>) -> Option<Escalation> {
        let get = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        Some(Escalation {
            reference: fields.get("reference")?.clone(),
            conversation: fields.get("conversation")?.clone(),
            channel: get("channel"),
            user: get("user"),
            skill: get("skill"),
            language: get("language"),
            reason: get("reason"),
            status: get("status"),
            created_at: number("created_at").unwrap_or(0),
            summary: get("summary"),
            transcript: serde_json::from_str(&get("transcript")).unwrap_or_default(),
            notified: get("notified") == "1",
            resolved_at: number("resolved_at"),
            resolved_by: fields.get("resolved_by").cloned(),
            note: fields.get("note").cloned(),
            address: fields.get("address").cloned(),
            account: fields.get("account").cloned(),
            claimed_by: fields.get("claimed_by").cloned().filter(|b| !b.is_empty()),
            claimed_at: number("claimed_at"),
            first_reply_at: number("first_reply_at"),
            agent_replies: number("agent_replies").unwrap_or(0),
        })
    }

    /// The webhook body announcing this hand-over.
    pub fn created_event(&self) -> Value {
        let mut event = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Some(object) = event.as_object_mut() {
            object.insert("event".into(), json!("escalation.created"));
        }
        event
    }
}

/// The webhook body forwarding a customer's message sent while the hand-over is pending.
pub fn message_event(reference: &str, msg: &InboundMessage) -> Value {
    json!({
        "event": "escalation.message",
        "reference": reference,
        "conversation": msg.conversation().to_string(),
        "channel": msg.channel.as_str(),
        "user": msg.user,
        "message_id": msg.message_id,
        "text": msg.text,
        "ts": msg.received_at_ms,
    })
}

/// `ESC-` and eight hex digits of a hash of `seed`.
fn reference(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    format!("ESC-{}", hex::encode_upper(&digest[..4]))
}

/// What the customer is told when the conversation is handed over, when the skill says nothing.
pub const DEFAULT_ANSWER: [(&str, &str); 3] = [
    (
        "en",
        "I have passed your conversation to a colleague (reference {reference}). A person will follow up with you here as soon as possible.",
    ),
    (
        "nl",
        "Ik heb je gesprek doorgegeven aan een collega (referentie {reference}). Een medewerker neemt hier zo snel mogelijk contact met je op.",
    ),
    (
        "de",
        "Ich habe Ihr Anliegen an einen Kollegen weitergegeben (Referenz {reference}). Ein Mitarbeiter meldet sich hier so schnell wie möglich bei Ihnen.",
    ),
];

/// What the customer is told about each message while a person has the conversation.
pub const DEFAULT_PENDING: [(&str, &str); 3] = [
    (
        "en",
        "A colleague is handling your case (reference {reference}) and has received this message too. They will reply here.",
    ),
    (
        "nl",
        "Een collega behandelt je melding (referentie {reference}) en heeft ook dit bericht ontvangen. Je krijgt hier antwoord.",
    ),
    (
        "de",
        "Ein Kollege bearbeitet Ihr Anliegen (Referenz {reference}) und hat auch diese Nachricht erhalten. Sie erhalten hier eine Antwort.",
    ),
];

/// `texts` in `language` (else English, else any), else the default, with the reference filled.
pub fn customer_text(
    texts: Option<&BTreeMap<String, String>>,
    default: &[(&str, &str)],
    language: &str,
    reference: &str,
) -> String {
    let text = texts
        .and_then(|t| crate::language::by_language(t, language))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let defaults: BTreeMap<String, String> = default
                .iter()
                .map(|(l, t)| (l.to_string(), t.to_string()))
                .collect();
            crate::language::by_language(&defaults, language)
                .unwrap_or_default()
                .to_string()
        });
    text.replace("{reference}", reference)
}

/// Why a webhook event was not delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum NotDelivered {
    /// No `escalation.webhookUrl`: the escalation is recorded only.
    NotConfigured,
    /// Every attempt failed; the last reason.
    Failed(String),
}

/// The dispatcher's webhook client.
#[derive(Clone)]
pub struct Dispatcher {
    http: reqwest::Client,
    url: Option<String>,
    secret: Option<SecretString>,
    timeout: Duration,
    max_attempts: u32,
}

impl Dispatcher {
    /// A client for `config`'s webhook.
    pub fn new(config: &EscalationConfig, http: &reqwest::Client) -> Dispatcher {
        Dispatcher {
            http: http.clone(),
            url: config.webhook_url.clone(),
            secret: config.webhook_secret.clone(),
            timeout: config.timeout,
            max_attempts: config.max_attempts.max(1),
        }
    }

    /// POSTs `event` until the dispatcher answers 2xx, retrying connection errors, timeouts,
    /// 5xx, 408 and 429 with the gateway's jittered backoff, `maxAttempts` calls in all; other
    /// answers are final. `key` goes out as
    /// `Idempotency-Key`: a turn that runs twice (a replica died before committing) sends the
    /// same event with the same key, and the dispatcher can drop the second.
    pub async fn send(&self, event: &Value, key: &str) -> Result<(), NotDelivered> {
        let url = self.url.as_deref().ok_or(NotDelivered::NotConfigured)?;
        let body = event.to_string();
        let signature = self.secret.as_ref().map(|secret| sign(secret, &body));
        let kind = event["event"].as_str().unwrap_or("escalation");
        let attempt = || async {
            let mut request = self
                .http
                .post(url)
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .header("x-clawgate-event", kind);
            if let Some(signature) = &signature {
                request = request.header("x-clawgate-signature-256", signature);
            }
            match request.body(body.clone()).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => {
                    let status = response.status().as_u16();
                    Err(Refusal {
                        reason: format!("the dispatcher webhook answered HTTP {status}"),
                        retryable: status >= 500 || status == 408 || status == 429,
                    })
                }
                Err(e) if e.is_timeout() => Err(Refusal {
                    reason: format!(
                        "the dispatcher webhook did not answer within {} ms",
                        self.timeout.as_millis()
                    ),
                    retryable: true,
                }),
                Err(_) => Err(Refusal {
                    reason: "cannot reach the dispatcher webhook".into(),
                    retryable: true,
                }),
            }
        };
        attempt
            .retry(crate::retry::backoff(self.max_attempts - 1))
            .when(|refusal| refusal.retryable)
            .await
            .map_err(|refusal| NotDelivered::Failed(refusal.reason))
    }
}

/// Why one webhook attempt failed.
struct Refusal {
    reason: String,
    retryable: bool,
}

impl Dispatcher {}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret` (the same scheme as Meta's
/// `X-Hub-Signature-256`, which dispatch tools already know how to check).
pub fn sign(secret: &SecretString, body: &str) -> String {
    // HMAC takes keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
        return String::new();
    };
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Channel;

    fn message(text: &str) -> InboundMessage {
        InboundMessage::new(Channel::Webchat, "s1", "m7", text.to_string(), "r1")
    }

    #[test]
    fn the_reference_is_stable_for_a_message_and_the_record_round_trips() {
        let msg = message("my package arrived damaged");
        let a = Escalation::new(&msg, &[], &[], "complaints", "en", "keyword".into(), 5);
        let b = Escalation::new(&msg, &[], &[], "complaints", "en", "keyword".into(), 6);
        assert_eq!(a.reference, b.reference);
        assert!(a.reference.starts_with("ESC-") && a.reference.len() == 12);
        assert!(
            a.summary.contains("my package arrived damaged"),
            "{}",
            a.summary
        );
        let fields: BTreeMap<String, String> = a
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Escalation::from_fields(&fields), Some(a));
    }

    #[test]
    fn customer_texts_fall_back_to_english_then_the_default_and_carry_the_reference() {
        let skill = BTreeMap::from([("en".to_string(), "Ref {reference}".to_string())]);
        assert_eq!(
            customer_text(Some(&skill), &DEFAULT_ANSWER, "de", "ESC-1"),
            "Ref ESC-1"
        );
        assert!(customer_text(None, &DEFAULT_ANSWER, "nl", "ESC-1").contains("referentie ESC-1"));
    }

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let secret = SecretString::from("Jefe");
        assert_eq!(
            sign(&secret, "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
