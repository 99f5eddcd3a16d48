//! The gateway under test as a customer's platform reaches it: web-chat requests, WhatsApp
//! Cloud API webhooks signed with the app secret, Telegram updates with the secret token. Each
//! call is one attempt; the customer decides about retrying, as the real platforms do.

use crate::plan::Channel;
use clawgate_gateway::config::Config;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why one attempt failed.
#[derive(Debug, Clone)]
pub struct Refused {
    /// What happened (status or transport error).
    pub reason: String,
    /// Whether a platform would try again (connection errors, 5xx, 429).
    pub retryable: bool,
}

/// The answer of a web-chat `POST`.
#[derive(Debug, Clone)]
pub enum WebchatAnswer {
    /// The reply came in the response.
    Reply(Reply),
    /// Accepted; the reply is to be fetched from this path.
    Pending(String),
}

/// A reply as the customer sees it.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The text.
    pub text: String,
    /// The replica that produced it, when the channel says (web chat).
    pub replica: Option<String>,
}

/// Credentials of a platform channel, from the gateway's config.
#[derive(Clone)]
struct Whatsapp {
    app_secret: SecretString,
    phone_number_id: String,
    api_base: String,
}

#[derive(Clone)]
struct Telegram {
    secret_token: SecretString,
    api_base: String,
}

/// How to reach the gateway on each channel.
#[derive(Clone)]
pub struct Target {
    http: reqwest::Client,
    base: String,
    whatsapp: Option<Whatsapp>,
    telegram: Option<Telegram>,
    /// Web-chat sessions as a widget holds them: the gateway issues each customer's session
    /// id and token (`POST /v1/webchat/sessions`) before the first message.
    sessions: Arc<Mutex<WebchatSessions>>,
}

/// The customers' web-chat sessions: by the load test's own name, and the tokens by the
/// gateway's session id.
#[derive(Default)]
struct WebchatSessions {
    by_name: HashMap<String, String>,
    tokens: HashMap<String, String>,
}

impl Target {
    /// The gateway at `base`, with the platform credentials of `config` (none: web chat only).
    pub fn new(base: &str, config: Option<&Config>) -> Result<Target, reqwest::Error> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let channels = config.map(|c| &c.channels);
        Ok(Target {
            http,
            base: base.trim_end_matches('/').to_string(),
            whatsapp: channels
                .and_then(|c| c.whatsapp.as_ref())
                .map(|w| Whatsapp {
                    app_secret: w.app_secret.clone(),
                    phone_number_id: w.phone_number_id.clone(),
                    api_base: w.api_base.clone(),
                }),
            telegram: channels
                .and_then(|c| c.telegram.as_ref())
                .map(|t| Telegram {
                    secret_token: t.secret_token.clone(),
                    api_base: t.api_base.clone(),
                }),
            sessions: Arc::default(),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, WebchatSessions> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The gateway's session id for the customer's session `name`, created on first use.
    async fn session(&self, name: &str) -> Result<String, Refused> {
        if let Some(id) = self.sessions().by_name.get(name) {
            return Ok(id.clone());
        }
        let response = self
            .http
            .post(self.url("/v1/webchat/sessions"))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let (Some(id), Some(token)) = (body["session_id"].as_str(), body["token"].as_str()) else {
            return Err(refused(status, &body));
        };
        let mut sessions = self.sessions();
        sessions.by_name.insert(name.to_string(), id.to_string());
        sessions.tokens.insert(id.to_string(), token.to_string());
        Ok(id.to_string())
    }

    /// `Authorization: Bearer <token>` for the session a web-chat path names.
    fn bearer_for(&self, path: &str) -> Option<String> {
        let id = path
            .strip_prefix("/v1/webchat/sessions/")?
            .split('/')
            .next()?;
        self.sessions()
            .tokens
            .get(id)
            .map(|token| format!("Bearer {token}"))
    }

    /// The HTTP client (shared by the run's other calls to the gateway).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether the gateway's config enables `channel`.
    pub fn enables(&self, channel: Channel) -> bool {
        match channel {
            Channel::Webchat => true,
            Channel::Whatsapp => self.whatsapp.is_some(),
            Channel::Telegram => self.telegram.is_some(),
        }
    }

    /// Where the gateway sends replies on `channel` (the `apiBase` the load test must serve).
    pub fn api_base(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Webchat => None,
            Channel::Whatsapp => self.whatsapp.as_ref().map(|w| w.api_base.as_str()),
            Channel::Telegram => self.telegram.as_ref().map(|t| t.api_base.as_str()),
        }
    }

    /// One web-chat message.
    pub async fn webchat(
        &self,
        session: &str,
        message_id: &str,
        text: &str,
    ) -> Result<WebchatAnswer, Refused> {
        let session = self.session(session).await?;
        let bearer = self
            .bearer_for(&format!("/v1/webchat/sessions/{session}"))
            .unwrap_or_default();
        let body = json!({"session_id": session, "message_id": message_id, "text": text});
        let response = self
            .http
            .post(self.url("/v1/webchat/messages"))
            .header(reqwest::header::AUTHORIZATION, bearer)
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200 => Ok(WebchatAnswer::Reply(reply_of(&body))),
            202 => Ok(WebchatAnswer::Pending(
                body["reply_url"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        format!("/v1/webchat/sessions/{session}/messages/{message_id}")
                    }),
            )),
            _ => Err(refused(status, &body)),
        }
    }

    /// Fetches a pending web-chat reply: `Ok(None)` while it is not ready.
    pub async fn webchat_reply(&self, path: &str) -> Result<Option<Reply>, Refused> {
        match self.get(path).await? {
            (200, body) => Ok(Some(reply_of(&body))),
            (202, _) => Ok(None),
            (status, body) => Err(refused(status, &body)),
        }
    }

    /// The stored history of a web-chat session, oldest first.
    pub async fn webchat_history(&self, session: &str) -> Result<Vec<Value>, Refused> {
        let session = self.session(session).await?;
        match self
            .get(&format!("/v1/webchat/sessions/{session}/messages"))
            .await?
        {
            (200, body) => Ok(body["messages"].as_array().cloned().unwrap_or_default()),
            (status, body) => Err(refused(status, &body)),
        }
    }

    /// `GET base + path`: the status and the JSON body (null when it is not JSON).
    async fn get(&self, path: &str) -> Result<(u16, Value), Refused> {
        let mut request = self.http.get(self.url(path));
        if let Some(bearer) = self.bearer_for(path) {
            request = request.header(reqwest::header::AUTHORIZATION, bearer);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// One WhatsApp text message as Meta posts it: a signed Cloud API notification.
    pub async fn whatsapp(&self, wa_id: &str, wamid: &str, text: &str) -> Result<(), Refused> {
        let Some(w) = &self.whatsapp else {
            return Err(not_enabled("whatsapp"));
        };
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "102290129340398",
                "changes": [{
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "31850000000", "phone_number_id": w.phone_number_id},
                        "contacts": [{"profile": {"name": "Load Test"}, "wa_id": wa_id}],
                        "messages": [{
                            "from": wa_id, "id": wamid, "timestamp": unix_seconds().to_string(),
                            "type": "text", "text": {"body": text},
                        }],
                    },
                }],
            }],
        })
        .to_string();
        let signature = sign(&w.app_secret, body.as_bytes());
        let response = self
            .http
            .post(self.url("/webhooks/whatsapp"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        acknowledged(response).await
    }

    /// One Telegram text message as the Bot API posts it.
    pub async fn telegram(
        &self,
        chat_id: &str,
        update_id: u64,
        message_id: &str,
        text: &str,
        language: &str,
    ) -> Result<(), Refused> {
        let Some(t) = &self.telegram else {
            return Err(not_enabled("telegram"));
        };
        let chat: i64 = chat_id.parse().unwrap_or_default();
        let message_id: i64 = message_id.parse().unwrap_or_default();
        let body = json!({
            "update_id": update_id,
            "message": {
                "message_id": message_id,
                "from": {"id": chat, "is_bot": false, "first_name": "Load", "language_code": language},
                "chat": {"id": chat, "first_name": "Load", "type": "private"},
                "date": unix_seconds(),
                "text": text,
            },
        });
        let response = self
            .http
            .post(self.url("/webhooks/telegram"))
            .header(
                "x-telegram-bot-api-secret-token",
                t.secret_token.expose_secret(),
            )
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        acknowledged(response).await
    }
}

fn reply_of(body: &Value) -> Reply {
    Reply {
        text: body["reply"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        replica: body["reply"]["replica"].as_str().map(str::to_string),
    }
}

async fn acknowledged(response: reqwest::Response) -> Result<(), Refused> {
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Err(refused(status, &body))
}

fn refused(status: u16, body: &Value) -> Refused {
    let detail = body["error"]["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or("");
    Refused {
        reason: format!("HTTP {status} {detail}").trim_end().to_string(),
        retryable: status >= 500 || status == 429 || status == 408,
    }
}

fn transport(e: reqwest::Error) -> Refused {
    Refused {
        reason: if e.is_timeout() {
            "timed out".into()
        } else if e.is_connect() {
            "connection refused".into()
        } else {
            "connection failed".into()
        },
        retryable: true,
    }
}

fn not_enabled(channel: &str) -> Refused {
    Refused {
        reason: format!("the gateway's config does not enable {channel}"),
        retryable: false,
    }
}

fn sign(secret: &SecretString, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
