//! A customer's own web site (the VeloCity tracking portal) that embeds the chat widget with
//! one script tag: the page the widget's cross-origin tests open. Its origin is its own port.

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use std::sync::{Arc, Mutex};

/// A page on its own origin.
pub struct HostPage {
    /// Where it is served.
    pub addr: std::net::SocketAddr,
    html: Arc<Mutex<String>>,
}

impl HostPage {
    /// Serves an empty page at `/` on a free loopback port until the runtime ends (the origin
    /// is known before the page's content, which may name a gateway started later).
    pub async fn spawn() -> std::io::Result<HostPage> {
        let html = Arc::new(Mutex::new(String::new()));
        let app = Router::new()
            .route(
                "/",
                get(|State(html): State<Arc<Mutex<String>>>| async move {
                    Html(html.lock().map(|h| h.clone()).unwrap_or_default())
                }),
            )
            .with_state(html.clone());
        let addr = crate::serve_locally(app).await?;
        Ok(HostPage { addr, html })
    }

    /// Serves `html` from now on.
    pub fn set(&self, html: String) {
        if let Ok(mut current) = self.html.lock() {
            *current = html;
        }
    }

    /// The page's origin (`http://127.0.0.1:<port>`), as browsers send it in `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}
