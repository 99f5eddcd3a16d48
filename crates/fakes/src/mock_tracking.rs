//! A fake parcel-tracking API for the VeloCity example: `GET /packages/{tracking_number}` answers
//! the package's JSON object from a data file, or 404; `GET /areas/{postal_code}` answers what is
//! known of a delivery area (country, weekend delivery) from the same packages, or 404.
//! `POST /control` makes it hang or fail, so a skill's lookup can be tested against a slow or
//! broken backend.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use tokio::net::TcpListener;

/// The packages by tracking number, and the injected behaviour.
struct Shared {
    packages: HashMap<String, Value>,
    /// Delivery areas by normalised postal code (upper case, no spaces).
    areas: HashMap<String, Value>,
    /// Never answer while set.
    hang: AtomicBool,
    /// Answer with this status instead of the package while non-zero.
    fail_status: AtomicU16,
    /// Package requests received.
    requests: AtomicU64,
}

/// Reads a data file in the format of `fixtures/packages.json`: an array of objects, each with a
/// `tracking_number`.
pub fn load_packages(path: &std::path::Path) -> std::io::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    let packages: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: expected an array of package objects: {e}",
                path.display()
            ),
        )
    })?;
    if let Some(i) = packages
        .iter()
        .position(|p| p["tracking_number"].as_str().is_none())
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: package {i} has no \"tracking_number\" string",
                path.display()
            ),
        ));
    }
    Ok(packages)
}

/// A running mock tracking API, for tests.
pub struct MockTracking {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockTracking {
    /// Serves `packages` on a free loopback port.
    pub async fn spawn(packages: Vec<Value>) -> std::io::Result<MockTracking> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = shared(packages);
        tokio::spawn(run(listener, shared.clone()));
        Ok(MockTracking { addr, shared })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes every package request hang (true) or answer again (false).
    pub fn set_hang(&self, hang: bool) {
        self.shared.hang.store(hang, Ordering::SeqCst);
    }

    /// Package requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

fn shared(packages: Vec<Value>) -> Arc<Shared> {
    Arc::new(Shared {
        areas: areas(&packages),
        packages: packages
            .into_iter()
            .filter_map(|p| Some((p["tracking_number"].as_str()?.to_string(), p)))
            .collect(),
        hang: AtomicBool::new(false),
        fail_status: AtomicU16::new(0),
        requests: AtomicU64::new(0),
    })
}

/// Serves `packages` on `listener` until the process ends (`clawgate mock tracking`).
pub async fn serve(listener: TcpListener, packages: Vec<Value>) -> std::io::Result<()> {
    run(listener, shared(packages)).await
}

async fn run(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/packages/{tracking_number}", get(package))
        .route("/areas/{postal_code}", get(area))
        .route("/control", post(control))
        .with_state(shared);
    crate::serve_forever(listener, app).await
}

async fn package(State(shared): State<Arc<Shared>>, Path(number): Path<String>) -> Response {
    answer(
        &shared,
        shared.packages.get(&number),
        "unknown tracking number",
    )
    .await
}

async fn area(State(shared): State<Arc<Shared>>, Path(postal_code): Path<String>) -> Response {
    let area = shared.areas.get(&normalise_postal_code(&postal_code));
    answer(&shared, area, "unknown postal code").await
}

/// The found object, or 404 with `missing`; hangs or fails first when told to.
async fn answer(shared: &Shared, found: Option<&Value>, missing: &str) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if shared.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let fail = shared.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        let status = StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, Json(json!({"error": "injected failure"}))).into_response();
    }
    match found {
        Some(object) => Json(object.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": missing}))).into_response(),
    }
}

/// `1012 ab` and `1012AB` are the same postal code.
fn normalise_postal_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// The delivery areas the packages reveal: for each postal code, its country (NL: four digits
/// and two letters, BE: four digits, DE: five digits) and whether weekend delivery is offered
/// there (any package to it with `weekend_delivery`).
fn areas(packages: &[Value]) -> HashMap<String, Value> {
    let mut areas: HashMap<String, Value> = HashMap::new();
    for package in packages {
        let Some(code) = package["postal_code"].as_str() else {
            continue;
        };
        let weekend = package["weekend_delivery"].as_bool().unwrap_or(false);
        let key = normalise_postal_code(code);
        let country = match (key.len(), key.chars().all(|c| c.is_ascii_digit())) {
            (4, true) => "BE",
            (5, true) => "DE",
            _ => "NL",
        };
        let area = areas.entry(key).or_insert_with(
            || json!({"postal_code": code, "country": country, "weekend_delivery": false}),
        );
        if weekend {
            area["weekend_delivery"] = Value::Bool(true);
        }
    }
    areas
}

/// `POST /control` body.
#[derive(Deserialize)]
struct Control {
    #[serde(default)]
    hang: Option<bool>,
    /// Status to answer with (0 = the package again).
    #[serde(default)]
    status: Option<u16>,
}

async fn control(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let control: Control = match crate::control_body(&body, r#"{"hang", "status"}"#) {
        Ok(control) => control,
        Err(refused) => return *refused,
    };
    if let Some(hang) = control.hang {
        shared.hang.store(hang, Ordering::SeqCst);
    }
    if let Some(status) = control.status {
        shared.fail_status.store(status, Ordering::SeqCst);
    }
    Json(json!({"ok": true})).into_response()
}
