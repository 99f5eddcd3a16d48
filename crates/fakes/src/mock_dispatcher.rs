//! A fake of a dispatch desk's webhook, the receiving end of clawgate's escalations:
//! `POST /events` records each event with the headers a real receiver checks (event kind,
//! idempotency key, signature) and answers 200; `GET /events` lists them in arrival order,
//! `DELETE /events` clears. `POST /control {"fail_next": N, "status": S}` fails the next N calls
//! with S (default 500); `{"down": true}` fails every call until `{"down": false}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One event the fake accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// `X-Clawgate-Event`.
    pub event: String,
    /// `Idempotency-Key`.
    pub idempotency_key: String,
    /// `X-Clawgate-Signature-256`, when sent.
    pub signature: Option<String>,
    /// The body, as sent.
    pub raw: String,
    /// The body, parsed.
    pub body: Value,
}

#[derive(Default)]
struct Faults {
    fail_next: u64,
    status: u16,
    down: bool,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    faults: Mutex<Faults>,
    attempts: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake, for in-process use.
#[derive(Clone)]
pub struct MockDispatcher {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockDispatcher {
    /// Binds `127.0.0.1:0` and serves in the background until the runtime ends.
    pub async fn spawn() -> std::io::Result<MockDispatcher> {
        let shared = Arc::new(Shared::default());
        let addr = crate::serve_locally(router(shared.clone())).await?;
        Ok(MockDispatcher { addr, shared })
    }

    /// The webhook URL to configure as `escalation.webhookUrl`.
    pub fn webhook_url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Events accepted so far, in order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Calls received so far, failed ones included.
    pub fn attempts(&self) -> u64 {
        *lock(&self.shared.attempts)
    }

    /// Makes every call fail with 500 (`true`) or succeed again (`false`).
    pub fn set_down(&self, down: bool) {
        lock(&self.shared.faults).down = down;
    }
}

/// Serves the fake on `listener` until the process ends (`clawgate mock dispatcher`).
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    crate::serve_forever(listener, router(Arc::new(Shared::default()))).await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/events", post(receive).get(list).delete(clear))
        .route("/control", post(control))
        .with_state(shared)
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    *lock(&shared.attempts) += 1;
    {
        let mut faults = lock(&shared.faults);
        let failing = faults.down || faults.fail_next > 0;
        if failing {
            faults.fail_next = faults.fail_next.saturating_sub(1);
            let status = StatusCode::from_u16(faults.status)
                .ok()
                .filter(|s| !faults.down && (s.is_client_error() || s.is_server_error()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, Json(json!({"error": "injected failure"}))).into_response();
        }
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected a JSON body"})),
        )
            .into_response();
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    lock(&shared.received).push(Received {
        event: header("x-clawgate-event").unwrap_or_default(),
        idempotency_key: header("idempotency-key").unwrap_or_default(),
        signature: header("x-clawgate-signature-256"),
        raw: String::from_utf8_lossy(&body).into_owned(),
        body: parsed,
    });
    Json(json!({"ok": true})).into_response()
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<Vec<Received>> {
    Json(lock(&shared.received).clone())
}

async fn clear(State(shared): State<Arc<Shared>>) -> StatusCode {
    lock(&shared.received).clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    #[serde(default)]
    fail_next: Option<u64>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    down: Option<bool>,
}

async fn control(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let control: Control = match crate::control_body(&body, "{fail_next, status, down}") {
        Ok(control) => control,
        Err(response) => return *response,
    };
    let mut faults = lock(&shared.faults);
    if let Some(n) = control.fail_next {
        faults.fail_next = n;
        faults.status = control.status.unwrap_or(500);
    }
    if let Some(down) = control.down {
        faults.down = down;
    }
    Json(json!({"fail_next": faults.fail_next, "down": faults.down})).into_response()
}
