//! A fake of the messaging platforms' send APIs, as one HTTP server: Meta's Graph API
//! (`POST /{version}/{phone_number_id}/messages`, addressed by phone number in `to` or by
//! business-scoped user id in `recipient`) and Telegram's Bot API (`/bot{token}/sendMessage`,
//! `answerCallbackQuery`, `getMe`, `setWebhook`, `deleteWebhook`; parameters as JSON,
//! form-encoded as python-telegram-bot sends them, or in the query string), answering in their
//! real formats. A chat keeps its type in answers: positive ids are private chats, `-100…`
//! supergroups (or channels, once told with `{"chat_types": {"-100…": "channel"}}`), other
//! negative ids groups.
//!
//! It records every message it accepted (`GET /sent?channel=&to=` → `[{"channel", "to",
//! "text"}]` in send order, `DELETE /sent` clears), every answered button press
//! (`GET /callback-answers` → the `callback_query_id`s in order) and can be told to fail:
//! `POST /control {"fail_next": N, "status": 429 | 500 | 400, "retry_after": S, "error_code": C}`
//! fails the next N sends (Telegram 429s carry `parameters.retry_after`, WhatsApp errors carry
//! the Graph `error.code`, e.g. 130429 or 131047); `{"down": true}` fails every send with 500
//! until `{"down": false}`. `{"swallow_next": N}` answers the next N sends as delivered but
//! records nothing (a reply lost on the way), `{"duplicate_next": N}` records each of the next N
//! twice (a reply delivered twice): faults the load test's checks must catch.

use axum::extract::ConnectInfo;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One message the fake accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    /// `whatsapp` or `telegram`.
    pub channel: String,
    /// WhatsApp number as sent, or Telegram chat id as a string.
    pub to: String,
    /// The message text.
    pub text: String,
    /// The request field the address came in: `to` (a WhatsApp phone number), `recipient` (a
    /// WhatsApp business-scoped user id) or `chat_id` (Telegram).
    #[serde(default)]
    pub address_field: String,
    /// The IP address the send came from (which replica, in a test with several hosts).
    #[serde(default)]
    pub sender: String,
}

/// What a Bot API call carried: its JSON body, its form-encoded body, or its query string.
type Parameters = serde_json::Map<String, Value>;

#[derive(Default)]
struct Faults {
    fail_next: u64,
    status: u16,
    retry_after: Option<u64>,
    error_code: Option<i64>,
    down: bool,
    swallow_next: u64,
    duplicate_next: u64,
}

struct Shared {
    sent: Mutex<Vec<Sent>>,
    /// `callback_query_id`s answered, in order.
    callback_answers: Mutex<Vec<String>>,
    /// Chat types set through `/control` (by chat id), for ids whose sign does not tell.
    chat_types: Mutex<std::collections::HashMap<String, String>>,
    faults: Mutex<Faults>,
    attempts: Mutex<u64>,
    /// Whether `GET /sent` keeps a history (a long load test only needs the stream).
    keep: bool,
    /// Where every accepted message is also handed, when someone listens.
    stream: Option<mpsc::UnboundedSender<Sent>>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            sent: Mutex::new(Vec::new()),
            callback_answers: Mutex::new(Vec::new()),
            chat_types: Mutex::new(std::collections::HashMap::new()),
            faults: Mutex::new(Faults::default()),
            attempts: Mutex::new(0),
            keep: true,
            stream: None,
        }
    }
}

impl Shared {
    /// Records a message the platform accepted (applying swallow and duplicate faults); returns
    /// how many messages it has accepted in all.
    fn record(&self, message: Sent) -> usize {
        let copies = {
            let mut faults = self.faults();
            if faults.swallow_next > 0 {
                faults.swallow_next -= 1;
                0
            } else if faults.duplicate_next > 0 {
                faults.duplicate_next -= 1;
                2
            } else {
                1
            }
        };
        let mut sent = self.sent();
        for _ in 0..copies {
            if let Some(stream) = &self.stream {
                let _ = stream.send(message.clone());
            }
            if self.keep {
                sent.push(message.clone());
            }
        }
        sent.len()
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, Vec<Sent>> {
        lock(&self.sent)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    /// Counts an attempt and returns the failure to inject, if any: (status, retry_after, code).
    fn next_fault(&self) -> Option<(StatusCode, Option<u64>, Option<i64>)> {
        *lock(&self.attempts) += 1;
        let mut faults = self.faults();
        if faults.down {
            return Some((StatusCode::INTERNAL_SERVER_ERROR, None, None));
        }
        if faults.fail_next == 0 {
            return None;
        }
        faults.fail_next -= 1;
        let status =
            StatusCode::from_u16(faults.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Some((status, faults.retry_after, faults.error_code))
    }
}

/// A running fake, for in-process use.
#[derive(Clone)]
pub struct MockPlatforms {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Stops the server (and frees its port) when the last handle is dropped; `None` for
    /// [`MockPlatforms::spawn`], which serves until the runtime ends.
    _server: Option<Arc<StopOnDrop>>,
}

/// Aborts a server task when dropped.
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MockPlatforms {
    /// Binds `127.0.0.1:0` and serves in the background until the runtime ends.
    pub async fn spawn() -> std::io::Result<MockPlatforms> {
        let shared = Arc::new(Shared::default());
        let addr = crate::serve_locally(router(shared.clone())).await?;
        Ok(MockPlatforms {
            addr,
            shared,
            _server: None,
        })
    }

    /// Serves on `listener` in the background until the last handle is dropped; every accepted
    /// message is also handed to the returned receiver (how the load test collects replies).
    /// `keep` keeps the `GET /sent` history too.
    pub fn spawn_on(
        listener: TcpListener,
        keep: bool,
    ) -> std::io::Result<(MockPlatforms, mpsc::UnboundedReceiver<Sent>)> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            keep,
            stream: Some(tx),
            ..Shared::default()
        });
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = crate::serve_forever(listener, app).await;
        });
        let guard = Arc::new(StopOnDrop(server.abort_handle()));
        Ok((
            MockPlatforms {
                addr,
                shared,
                _server: Some(guard),
            },
            rx,
        ))
    }

    /// Answers the next `n` sends as delivered but records nothing.
    pub fn swallow_next(&self, n: u64) {
        self.shared.faults().swallow_next = n;
    }

    /// Records each of the next `n` sends twice.
    pub fn duplicate_next(&self, n: u64) {
        self.shared.faults().duplicate_next = n;
    }

    /// Base URL to configure as `apiBase`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.sent().clone()
    }

    /// The `callback_query_id`s of the button presses answered so far, in order.
    pub fn callback_answers(&self) -> Vec<String> {
        lock(&self.shared.callback_answers).clone()
    }

    /// Send attempts received so far, failed ones included.
    pub fn attempts(&self) -> u64 {
        *lock(&self.shared.attempts)
    }

    /// Fails the next `n` sends with `status` (and `retry_after` seconds for Telegram 429s).
    pub fn fail_next(
        &self,
        n: u64,
        status: u16,
        retry_after: Option<u64>,
        error_code: Option<i64>,
    ) {
        let mut faults = self.shared.faults();
        faults.fail_next = n;
        faults.status = status;
        faults.retry_after = retry_after;
        faults.error_code = error_code;
    }

    /// Makes every send fail with 500 (`true`) or work again (`false`).
    pub fn set_down(&self, down: bool) {
        self.shared.faults().down = down;
    }
}

/// Serves the fake on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    crate::serve_forever(listener, router(Arc::new(Shared::default()))).await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{version}/{phone_number_id}/messages", post(whatsapp_send))
        .route("/{bot}/{method}", post(telegram_call).get(telegram_call))
        .route("/sent", get(list_sent).delete(clear_sent))
        .route("/callback-answers", get(list_callback_answers))
        .route("/control", post(control))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
}

fn graph_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(
            json!({"error": {"message": format!("(#{code}) {message}"), "type": "OAuthException",
            "code": code, "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "MockTrace"}}),
        ),
    )
        .into_response()
}

async fn whatsapp_send(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > "Bearer ".len() && v.starts_with("Bearer "));
    if !authorized {
        return graph_error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token");
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // A phone number in `to` takes precedence; a customer who shares none is addressed by their
    // business-scoped user id in `recipient`.
    let (Some(to), Some(text)) = (
        request["to"].as_str().or(request["recipient"].as_str()),
        request.pointer("/text/body").and_then(Value::as_str),
    ) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter: expected to (or recipient) and text.body",
        );
    };
    if request["messaging_product"] != "whatsapp" || request["type"] != "text" {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter: messaging_product/type",
        );
    }
    if let Some((status, _, code)) = shared.next_fault() {
        let code = code.unwrap_or(if status == StatusCode::TOO_MANY_REQUESTS {
            130429
        } else {
            1
        });
        return graph_error(status, code, "mock: injected failure");
    }
    let count = shared.record(Sent {
        channel: "whatsapp".into(),
        to: to.to_string(),
        text: text.to_string(),
        address_field: if request["to"].is_string() {
            "to"
        } else {
            "recipient"
        }
        .into(),
        sender: peer.ip().to_string(),
    });
    let wamid = format!("wamid.MOCK{phone_number_id}{count:08}");
    Json(
        json!({"messaging_product": "whatsapp", "contacts": [contact(to)],
        "messages": [{"id": wamid}]}),
    )
    .into_response()
}

/// The contact of a send answer: `wa_id` for a phone number, `user_id` for a BSUID.
fn contact(address: &str) -> Value {
    if address.bytes().all(|b| b.is_ascii_digit()) {
        json!({"input": address, "wa_id": address})
    } else {
        json!({"input": address, "user_id": address})
    }
}

/// A poisoned lock only means a handler panicked mid-update; the data stays usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A Bot API failure answer.
fn telegram_failure(status: StatusCode, description: &str, retry_after: Option<u64>) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(seconds) = retry_after {
        body["parameters"] = json!({"retry_after": seconds});
    }
    (status, Json(body)).into_response()
}

/// The parameters of a Bot API call, wherever the client put them. Form and query values are
/// strings (python-telegram-bot JSON-encodes numbers and objects into them).
fn telegram_parameters(headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Parameters {
    let form = |bytes: &[u8]| -> Parameters {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parameters = if content_type.starts_with("application/x-www-form-urlencoded") {
        form(body)
    } else {
        serde_json::from_slice::<Parameters>(body).unwrap_or_default()
    };
    for (key, value) in form(query.unwrap_or("").as_bytes()) {
        parameters.entry(key).or_insert(value);
    }
    parameters
}

/// A chat id as Telegram answers it: a number, or an `@channelusername`.
fn chat_id_value(parameter: &Value) -> Option<Value> {
    match parameter {
        Value::Number(n) => Some(Value::Number(n.clone())),
        Value::String(s) => Some(
            s.parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(s.as_str())),
        ),
        _ => None,
    }
}

/// `/bot{token}/{method}`: the Bot API methods clawgate and the official client libraries call.
async fn telegram_call(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path((bot, method)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if bot.len() <= 3 || !bot.starts_with("bot") {
        return telegram_failure(StatusCode::NOT_FOUND, "Not Found", None);
    }
    let parameters = telegram_parameters(&headers, query.as_deref(), &body);
    match method.as_str() {
        "sendMessage" => telegram_send(&shared, &parameters, peer.ip()),
        "answerCallbackQuery" => {
            match parameters.get("callback_query_id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => {
                    lock(&shared.callback_answers).push(id.to_string());
                    Json(json!({"ok": true, "result": true})).into_response()
                }
                _ => telegram_failure(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: query is too old and response timeout expired or query ID is invalid",
                    None,
                ),
            }
        }
        "getMe" => {
            let id: i64 = bot[3..]
                .split(':')
                .next()
                .and_then(|id| id.parse().ok())
                .unwrap_or(7_000_000_001);
            Json(json!({"ok": true, "result": {"id": id, "is_bot": true,
                "first_name": "Mock Bot", "username": "mock_clawgate_bot",
                "can_join_groups": true, "can_read_all_group_messages": false,
                "supports_inline_queries": false}}))
            .into_response()
        }
        "setWebhook" | "deleteWebhook" => {
            Json(json!({"ok": true, "result": true, "description": "Webhook was set"}))
                .into_response()
        }
        _ => telegram_failure(StatusCode::NOT_FOUND, "Not Found: method not found", None),
    }
}

fn telegram_send(shared: &Shared, parameters: &Parameters, sender: std::net::IpAddr) -> Response {
    let Some(chat_id) = parameters.get("chat_id").and_then(chat_id_value) else {
        return telegram_failure(
            StatusCode::BAD_REQUEST,
            "Bad Request: chat_id is empty",
            None,
        );
    };
    let Some(text) = parameters
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return telegram_failure(
            StatusCode::BAD_REQUEST,
            "Bad Request: message text is empty",
            None,
        );
    };
    if let Some((status, retry_after, _)) = shared.next_fault() {
        let description = match retry_after {
            Some(seconds) => format!("Too Many Requests: retry after {seconds}"),
            None => "mock: injected failure".to_string(),
        };
        return telegram_failure(status, &description, retry_after);
    }
    let to = match &chat_id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let chat_type = lock(&shared.chat_types)
        .get(&to)
        .cloned()
        .unwrap_or_else(|| chat_type(&to).to_string());
    let count = shared.record(Sent {
        channel: "telegram".into(),
        to,
        text: text.to_string(),
        address_field: "chat_id".into(),
        sender: sender.to_string(),
    });
    Json(
        json!({"ok": true, "result": {"message_id": count, "date": 0,
        "chat": {"id": chat_id, "type": chat_type}, "text": text}}),
    )
    .into_response()
}

/// The type of a chat as its id tells: `private` for users, `supergroup` for `-100…` ids,
/// `group` for other negative ids, `channel` for `@usernames`.
fn chat_type(chat_id: &str) -> &'static str {
    if chat_id.starts_with('@') {
        "channel"
    } else if chat_id.starts_with("-100") {
        "supergroup"
    } else if chat_id.starts_with('-') {
        "group"
    } else {
        "private"
    }
}

async fn list_callback_answers(State(shared): State<Arc<Shared>>) -> Response {
    Json(lock(&shared.callback_answers).clone()).into_response()
}

#[derive(Deserialize)]
struct SentQuery {
    channel: Option<String>,
    to: Option<String>,
}

async fn list_sent(State(shared): State<Arc<Shared>>, Query(q): Query<SentQuery>) -> Response {
    let sent: Vec<Sent> = shared
        .sent()
        .iter()
        .filter(|s| q.channel.as_ref().is_none_or(|c| &s.channel == c))
        .filter(|s| q.to.as_ref().is_none_or(|t| &s.to == t))
        .cloned()
        .collect();
    Json(sent).into_response()
}

async fn clear_sent(State(shared): State<Arc<Shared>>) -> Response {
    shared.sent().clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    fail_next: Option<u64>,
    status: Option<u16>,
    retry_after: Option<u64>,
    error_code: Option<i64>,
    down: Option<bool>,
    swallow_next: Option<u64>,
    duplicate_next: Option<u64>,
    chat_types: Option<std::collections::HashMap<String, String>>,
}

async fn control(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let control: Control = match crate::control_body(
        &body,
        r#"{"fail_next", "status", "retry_after", "error_code", "down", "swallow_next", "duplicate_next", "chat_types"}"#,
    ) {
        Ok(control) => control,
        Err(refused) => return *refused,
    };
    if let Some(types) = control.chat_types {
        lock(&shared.chat_types).extend(types);
    }
    let mut faults = shared.faults();
    if let Some(n) = control.fail_next {
        faults.fail_next = n;
        faults.status = control.status.unwrap_or(500);
        faults.retry_after = control.retry_after;
        faults.error_code = control.error_code;
    }
    if let Some(down) = control.down {
        faults.down = down;
    }
    if let Some(n) = control.swallow_next {
        faults.swallow_next = n;
    }
    if let Some(n) = control.duplicate_next {
        faults.duplicate_next = n;
    }
    Json(
        json!({"fail_next": faults.fail_next, "status": faults.status, "down": faults.down,
        "swallow_next": faults.swallow_next, "duplicate_next": faults.duplicate_next}),
    )
    .into_response()
}
