//! A fake LLM provider: one HTTP server speaking both the OpenAI chat-completions API
//! (`POST /v1/chat/completions`, `POST /chat/completions`, `GET /v1/models`) and Ollama's
//! (`POST /api/chat`, `GET /api/tags`).
//!
//! Its answer is deterministic and shows what it was sent, e.g.
//! `[mock] user_turns=3 last="where is my parcel?"`, so a test can prove that a replica saw the
//! whole conversation. `POST /control` switches its behaviour at run time:
//! `{"mode": "ok" | "error" | "rate_limited" | "hang" | "slow"}`, `{"latency_ms": N}`,
//! `{"jitter_ms": N}`, `{"slow_ms": N}`, `{"fail_next": N}` (N answers with HTTP 500, then back
//! to the mode), `{"reply": "text"}` (answer this instead of the echo, as a model scripted for a
//! scenario; `""` goes back to the echo). `GET /stats` counts requests by outcome;
//! `GET /requests/last` answers the JSON body of the last chat request (404 before the first),
//! so a check can read the prompt a gateway sent.
//!
//! A request with `"stream": true` is answered as the real APIs stream: OpenAI's server-sent
//! `chat.completion.chunk` events ending in `data: [DONE]` (with a usage chunk when
//! `stream_options.include_usage`), Ollama's one JSON object per line ending with
//! `"done": true`; one chunk per word, `{"chunk_ms": N}` apart. `{"cut_next": N}` breaks the
//! next N streamed answers off halfway (the connection drops), as a provider dying mid-answer.

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// How the mock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// 200 with the deterministic answer, after the configured latency.
    Ok,
    /// HTTP 500 with an OpenAI-style error body.
    Error,
    /// HTTP 429 with `Retry-After: 1`.
    RateLimited,
    /// Accepts the request and never answers.
    Hang,
    /// Like `ok`, but after `slow_ms` instead of the latency.
    Slow,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Ok => "ok",
            Mode::Error => "error",
            Mode::RateLimited => "rate_limited",
            Mode::Hang => "hang",
            Mode::Slow => "slow",
        }
    }
}

/// Start-up settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Initial behaviour.
    pub mode: Mode,
    /// Delay before each answer, milliseconds.
    pub latency_ms: u64,
    /// Uniform random extra delay in `0..=jitter_ms`, milliseconds.
    pub jitter_ms: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mode: Mode::Ok,
            latency_ms: 0,
            jitter_ms: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Behaviour {
    mode: Mode,
    latency_ms: u64,
    jitter_ms: u64,
    slow_ms: u64,
    fail_next: u64,
    /// A scripted answer that replaces the echo (what a real model would say to a given prompt).
    reply: Option<String>,
    /// Pause between two chunks of a streamed answer.
    chunk_ms: u64,
    /// Streamed answers still to break off halfway.
    cut_next: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    answered: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    hung: AtomicU64,
    bad_requests: AtomicU64,
    /// Chat requests that came over HTTP/2.
    http2_requests: AtomicU64,
}

/// Distinct client connections (peer addresses) are remembered up to this many.
const MAX_PEERS: usize = 100_000;

struct Shared {
    behaviour: Mutex<Behaviour>,
    /// When the latest streamed answer's first words went out (for latency benchmarks).
    first_words_sent: Mutex<Option<(std::time::Instant, std::time::SystemTime)>>,
    counters: Counters,
    /// The client addresses chat requests came from: one per connection.
    peers: Mutex<HashSet<SocketAddr>>,
    /// The JSON body of the last chat request that was JSON.
    last_request: Mutex<Option<Value>>,
}

impl Shared {
    fn behaviour(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.behaviour.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the connection and HTTP version a chat request came over.
    /// Keeps `body` as the last request when it is JSON.
    fn remember(&self, body: &[u8]) {
        if let Ok(request) = serde_json::from_slice::<Value>(body) {
            *self.last_request.lock().unwrap_or_else(|p| p.into_inner()) = Some(request);
        }
    }

    fn note_transport(&self, version: Version, peer: SocketAddr) {
        if version == Version::HTTP_2 {
            self.counters.http2_requests.fetch_add(1, Ordering::SeqCst);
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() < MAX_PEERS {
            peers.insert(peer);
        }
    }

    fn connections(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A running mock, for in-process use.
#[derive(Clone)]
pub struct MockLlm {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockLlm {
    /// Binds `127.0.0.1:0` and serves in the background until the runtime ends.
    pub async fn spawn(options: Options) -> std::io::Result<MockLlm> {
        let shared = shared(options);
        let addr = crate::serve_locally(router(shared.clone())).await?;
        Ok(MockLlm { addr, shared })
    }

    /// Serves on `listener` (a test network's address) in the background until the runtime
    /// ends.
    pub fn spawn_on(
        listener: tokio::net::TcpListener,
        options: Options,
    ) -> std::io::Result<MockLlm> {
        let shared = shared(options);
        let addr = crate::serve_on(listener, router(shared.clone()))?;
        Ok(MockLlm { addr, shared })
    }

    /// Base URL for an `openai-compatible` provider (`…/v1`).
    pub fn openai_endpoint(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Base URL for an `ollama` provider.
    pub fn ollama_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the behaviour.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.behaviour().mode = mode;
    }

    /// Sets the answer latency.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.behaviour().latency_ms = latency.as_millis() as u64;
    }

    /// Makes the next `n` requests fail with HTTP 500.
    pub fn fail_next(&self, n: u64) {
        self.shared.behaviour().fail_next = n;
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::SeqCst)
    }

    /// Answers `text` instead of the echo (`None`: the echo again).
    pub fn set_reply(&self, text: Option<&str>) {
        self.shared.behaviour().reply = text.map(str::to_string);
    }

    /// The JSON body of the last chat request, if one came.
    pub fn last_request(&self) -> Option<Value> {
        self.shared
            .last_request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Chat requests that came over HTTP/2 so far.
    pub fn http2_requests(&self) -> u64 {
        self.shared.counters.http2_requests.load(Ordering::SeqCst)
    }

    /// Distinct client connections chat requests came over so far.
    pub fn connections(&self) -> usize {
        self.shared.connections()
    }

    /// Sets the pause between two chunks of a streamed answer.
    pub fn set_chunk_pause(&self, pause: Duration) {
        self.shared.behaviour().chunk_ms = pause.as_millis() as u64;
    }

    /// Breaks the next `n` streamed answers off halfway.
    pub fn cut_next(&self, n: u64) {
        self.shared.behaviour().cut_next = n;
    }

    /// When the latest streamed answer's first words were handed to the connection: monotonic
    /// and wall-clock time (a browser in the same machine compares with the latter).
    pub fn first_words_sent(&self) -> Option<(std::time::Instant, std::time::SystemTime)> {
        *self
            .shared
            .first_words_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Successful answers sent so far.
    pub fn answered(&self) -> u64 {
        self.shared.counters.answered.load(Ordering::SeqCst)
    }
}

fn shared(options: Options) -> Arc<Shared> {
    Arc::new(Shared {
        behaviour: Mutex::new(Behaviour {
            mode: options.mode,
            latency_ms: options.latency_ms,
            jitter_ms: options.jitter_ms,
            slow_ms: 5_000,
            fail_next: 0,
            reply: None,
            chunk_ms: 0,
            cut_next: 0,
        }),
        counters: Counters::default(),
        peers: Mutex::new(HashSet::new()),
        first_words_sent: Mutex::new(None),
        last_request: Mutex::new(None),
    })
}

/// Serves the mock on `listener` until the process ends.
pub async fn serve(listener: TcpListener, options: Options) -> std::io::Result<()> {
    crate::serve_forever(listener, router(shared(options))).await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/chat/completions", post(openai_chat))
        .route("/api/chat", post(ollama_chat))
        .route("/v1/models", get(openai_models))
        .route("/models", get(openai_models))
        .route("/api/tags", get(ollama_tags))
        .route("/control", post(control).get(show_control))
        .route("/stats", get(stats))
        .route("/requests/last", get(last_request))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
}

/// What the mock saw in a request.
struct Seen {
    model: String,
    user_turns: usize,
    last_user: String,
    prompt_chars: usize,
    /// `"stream": true`.
    stream: bool,
    /// `"stream_options": {"include_usage": true}`.
    include_usage: bool,
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        // OpenAI content parts: [{"type": "text", "text": "…"}, …]
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn read_request(body: &[u8]) -> Result<Seen, String> {
    let request: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` must be an array")?;
    let mut user_turns = 0;
    let mut last_user = String::new();
    let mut prompt_chars = 0;
    for message in messages {
        let text = content_text(message.get("content").unwrap_or(&Value::Null));
        prompt_chars += text.chars().count();
        if message.get("role").and_then(Value::as_str) == Some("user") {
            user_turns += 1;
            last_user = text;
        }
    }
    Ok(Seen {
        model: request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("mock")
            .to_string(),
        user_turns,
        last_user,
        prompt_chars,
        stream: request.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
    })
}

fn answer_text(seen: &Seen) -> String {
    // The last text verbatim, quotes included: checks look for `last="<text>"` as sent.
    format!(
        "[mock] user_turns={} last=\"{}\"",
        seen.user_turns, seen.last_user
    )
}

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

/// Applies the behaviour: `Ok(scripted answer, if any)` to answer, `Err(response)` to fail
/// instead.
async fn behave(shared: &Shared) -> Result<Option<String>, Response> {
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let (mode, delay_ms, reply) = {
        let mut b = shared.behaviour();
        let mode = if b.fail_next > 0 {
            b.fail_next -= 1;
            Mode::Error
        } else {
            b.mode
        };
        let jitter = if b.jitter_ms > 0 {
            rand::random_range(0..=b.jitter_ms)
        } else {
            0
        };
        let delay = if mode == Mode::Slow {
            b.slow_ms
        } else {
            b.latency_ms + jitter
        };
        (mode, delay, b.reply.clone())
    };
    match mode {
        Mode::Hang => {
            counters.hung.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok(None)
        }
        Mode::Error => {
            counters.errors.fetch_add(1, Ordering::SeqCst);
            Err(openai_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "mock: injected server error",
            ))
        }
        Mode::RateLimited => {
            counters.rate_limited.fetch_add(1, Ordering::SeqCst);
            let mut response = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "mock: rate limit reached",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(response)
        }
        Mode::Ok | Mode::Slow => {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            Ok(reply)
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /requests/last`.
async fn last_request(State(shared): State<Arc<Shared>>) -> Response {
    let last = shared
        .last_request
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match last {
        Some(request) => Json(request).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no chat request has come yet"})),
        )
            .into_response(),
    }
}

async fn openai_chat(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    version: Version,
    body: axum::body::Bytes,
) -> Response {
    shared.note_transport(version, peer);
    shared.remember(&body);
    let seen = match read_request(&body) {
        Ok(seen) => seen,
        Err(reason) => {
            shared.counters.bad_requests.fetch_add(1, Ordering::SeqCst);
            return openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", &reason);
        }
    };
    let scripted = match behave(&shared).await {
        Ok(scripted) => scripted,
        Err(response) => return response,
    };
    let id = shared.counters.answered.fetch_add(1, Ordering::SeqCst) + 1;
    let text = scripted.unwrap_or_else(|| answer_text(&seen));
    let completion_tokens = text.split_whitespace().count();
    let prompt_tokens = seen.prompt_chars / 4 + 1;
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if seen.stream {
        // One `chat.completion.chunk` frame with these choices and, for the last, the usage.
        let frame = |choices: Value, usage: Option<&Value>| {
            let mut chunk = json!({
                "id": format!("chatcmpl-mock-{id}"),
                "object": "chat.completion.chunk",
                "created": unix_seconds(),
                "model": seen.model,
                "choices": choices,
            });
            if let Some(usage) = usage {
                chunk["usage"] = usage.clone();
            }
            format!("data: {chunk}\n\n")
        };
        let chunk = |delta: Value, finish: Value| {
            frame(
                json!([{"index": 0, "delta": delta, "finish_reason": finish}]),
                None,
            )
        };
        let mut frames = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        frames.extend(words(&text).map(|w| chunk(json!({"content": w}), Value::Null)));
        frames.push(chunk(json!({}), json!("stop")));
        if seen.include_usage {
            frames.push(frame(json!([]), Some(&usage)));
        }
        frames.push("data: [DONE]\n\n".to_string());
        // Frame 0 is the role chunk; the words start at 1.
        return streamed(&shared, frames, 1, "text/event-stream");
    }
    Json(json!({
        "id": format!("chatcmpl-mock-{id}"),
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": seen.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": usage,
    }))
    .into_response()
}

/// The answer cut into chunks the way models stream: one word each, with its leading space.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let start = rest.len() - rest.trim_start().len();
        let end = rest[start..].find(' ').map_or(rest.len(), |i| start + i);
        let (word, after) = rest.split_at(end);
        rest = after;
        Some(word)
    })
}

/// A streamed response of `frames`, `chunk_ms` apart; a cut one stops halfway with an error,
/// which drops the connection mid-answer.
fn streamed(
    shared: &Arc<Shared>,
    frames: Vec<String>,
    first_words: usize,
    content_type: &'static str,
) -> Response {
    let (pause, cut) = {
        let mut b = shared.behaviour();
        let cut = b.cut_next > 0;
        b.cut_next = b.cut_next.saturating_sub(1);
        (Duration::from_millis(b.chunk_ms), cut)
    };
    let keep = if cut { frames.len() / 2 } else { frames.len() };
    let total = frames.len();
    let shared = shared.clone();
    let body = futures_util::stream::unfold(
        (frames.into_iter().take(keep).enumerate(), cut),
        move |(mut frames, cut)| {
            let shared = shared.clone();
            async move {
                match frames.next() {
                    Some((i, frame)) => {
                        if i > 0 && i + 1 < total && !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        if i == first_words {
                            *shared
                                .first_words_sent
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) =
                                Some((std::time::Instant::now(), std::time::SystemTime::now()));
                        }
                        Some((Ok(axum::body::Bytes::from(frame)), (frames, cut)))
                    }
                    None if cut => Some((
                        Err(std::io::Error::other("mock: answer cut off")),
                        (frames, false),
                    )),
                    None => None,
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn ollama_chat(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    version: Version,
    body: axum::body::Bytes,
) -> Response {
    shared.note_transport(version, peer);
    shared.remember(&body);
    let seen = match read_request(&body) {
        Ok(seen) => seen,
        Err(reason) => {
            shared.counters.bad_requests.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::BAD_REQUEST, Json(json!({"error": reason}))).into_response();
        }
    };
    let scripted = match behave(&shared).await {
        Ok(scripted) => scripted,
        Err(response) => return response,
    };
    shared.counters.answered.fetch_add(1, Ordering::SeqCst);
    let text = scripted.unwrap_or_else(|| answer_text(&seen));
    if seen.stream {
        let line = |content: &str, done: bool| {
            let mut line = json!({
                "model": seen.model,
                "created_at": rfc3339(unix_seconds()),
                "message": {"role": "assistant", "content": content},
                "done": done,
            });
            if done {
                line["done_reason"] = json!("stop");
                line["eval_count"] = json!(text.split_whitespace().count());
            }
            format!("{line}\n")
        };
        let mut frames: Vec<String> = words(&text).map(|w| line(w, false)).collect();
        frames.push(line("", true));
        return streamed(&shared, frames, 0, "application/x-ndjson");
    }
    Json(json!({
        "model": seen.model,
        "created_at": rfc3339(unix_seconds()),
        "message": {"role": "assistant", "content": text},
        "done": true,
        "done_reason": "stop",
        "prompt_eval_count": seen.prompt_chars / 4 + 1,
        "eval_count": text.split_whitespace().count(),
    }))
    .into_response()
}

async fn openai_models() -> Response {
    Json(json!({
        "object": "list",
        "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "clawgate-mock"}],
    }))
    .into_response()
}

async fn ollama_tags() -> Response {
    Json(json!({"models": [{"name": "mock", "model": "mock"}]})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    mode: Option<Mode>,
    latency_ms: Option<u64>,
    jitter_ms: Option<u64>,
    slow_ms: Option<u64>,
    fail_next: Option<u64>,
    reply: Option<String>,
    chunk_ms: Option<u64>,
    cut_next: Option<u64>,
}

fn behaviour_json(b: &Behaviour) -> Value {
    json!({
        "mode": b.mode.as_str(),
        "latency_ms": b.latency_ms,
        "jitter_ms": b.jitter_ms,
        "slow_ms": b.slow_ms,
        "fail_next": b.fail_next,
        "reply": b.reply,
        "chunk_ms": b.chunk_ms,
        "cut_next": b.cut_next,
    })
}

async fn control(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let control: Control = match crate::control_body(
        &body,
        r#"{"mode": "ok"|"error"|"rate_limited"|"hang"|"slow", "latency_ms", "jitter_ms", "slow_ms", "fail_next", "reply", "chunk_ms", "cut_next"}"#,
    ) {
        Ok(control) => control,
        Err(refused) => return *refused,
    };
    let mut b = shared.behaviour();
    if let Some(mode) = control.mode {
        b.mode = mode;
    }
    if let Some(ms) = control.latency_ms {
        b.latency_ms = ms;
    }
    if let Some(ms) = control.jitter_ms {
        b.jitter_ms = ms;
    }
    if let Some(ms) = control.slow_ms {
        b.slow_ms = ms;
    }
    if let Some(n) = control.fail_next {
        b.fail_next = n;
    }
    if let Some(ms) = control.chunk_ms {
        b.chunk_ms = ms;
    }
    if let Some(n) = control.cut_next {
        b.cut_next = n;
    }
    if let Some(reply) = control.reply {
        b.reply = Some(reply).filter(|r| !r.is_empty());
    }
    Json(behaviour_json(&b)).into_response()
}

async fn show_control(State(shared): State<Arc<Shared>>) -> Response {
    Json(behaviour_json(&shared.behaviour())).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let c = &shared.counters;
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
    Json(json!({
        "requests": load(&c.requests),
        "answered": load(&c.answered),
        "errors": load(&c.errors),
        "rate_limited": load(&c.rate_limited),
        "hung": load(&c.hung),
        "bad_requests": load(&c.bad_requests),
        "http2_requests": load(&c.http2_requests),
        "connections": shared.connections(),
    }))
    .into_response()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (Ollama's `created_at`).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_shows_what_the_model_was_sent() {
        let body = br#"{"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "where is \"it\"?"}]}
        ]}"#;
        let seen = read_request(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            answer_text(&seen),
            "[mock] user_turns=2 last=\"where is \"it\"?\""
        );
        assert!(read_request(b"{}").is_err());
    }

    #[test]
    fn formats_ollama_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_054_000), "2025-11-25T07:00:00Z");
    }
}
