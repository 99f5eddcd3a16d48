//! Fakes of what lies outside clawgate and cannot run here, as real HTTP servers speaking the
//! real wire formats. Used by `clawgate mock llm`, by the integration tests and by benchmarks.

pub mod host_page;
pub mod mock_dispatcher;
pub mod mock_llm;
pub mod mock_platforms;
pub mod mock_tracking;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Binds `127.0.0.1:0` and serves `app` there (HTTP/1.1, and HTTP/2 spoken at once) in the
/// background until the runtime ends, with each request's peer address at hand; the address it
/// got.
pub(crate) async fn serve_locally(app: axum::Router) -> std::io::Result<std::net::SocketAddr> {
    serve_on(tokio::net::TcpListener::bind("127.0.0.1:0").await?, app)
}

/// Serves `app` on `listener` in the background (a fake on an address other than loopback:
/// a test network's host).
pub(crate) fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> std::io::Result<std::net::SocketAddr> {
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = serve_forever(listener, app).await;
    });
    Ok(addr)
}

/// Serves `app` on `listener` until the process ends, with each request's peer address at hand.
/// Small writes (a streamed answer's words) go out at once, as real servers send them: without
/// `TCP_NODELAY`, Nagle's algorithm and the client's delayed ACK hold a word back ~40 ms.
pub(crate) async fn serve_forever(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).await
}

/// Parses a fake's `POST /control` body, or answers 400 saying which fields it takes
/// (`expected`), so a typo in a test's fault injection fails loudly.
pub(crate) fn control_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": format!("expected {expected}: {e}")})),
            )
                .into_response(),
        )
    })
}
