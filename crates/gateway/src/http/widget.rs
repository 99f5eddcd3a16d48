//! The web-chat widget customers use, served by every replica from files built into the binary
//! (no build step, no CDN): `GET /widget.js`, one script tag that opens a chat bubble on any
//! page, and `GET /chat`, the same chat as a whole page. The script talks to the replica it was
//! loaded from; pages on other origins need `webchat.allowedOrigins`.

use crate::app::AppState;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

const WIDGET_JS: &str = include_str!("../../widget/widget.js");
const CHAT_HTML: &str = include_str!("../../widget/chat.html");

/// Browsers may keep the files this long; a new release is picked up within it.
const CACHE: &str = "public, max-age=300";

/// `GET /widget.js`.
pub async fn script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(CACHE)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        WIDGET_JS,
    )
        .into_response()
}

/// Query parameters of `GET /chat`.
#[derive(Deserialize)]
pub struct PageQuery {
    /// The labels' language (`nl`, `de`, `en`); the browser's otherwise.
    lang: Option<String>,
}

/// `GET /chat`: the chat as a whole page, titled `webchat.title`.
pub async fn page(State(app): State<Arc<AppState>>, Query(query): Query<PageQuery>) -> Response {
    let title = app.live.current().config.webchat.title.clone();
    let lang = query
        .lang
        .filter(|l| {
            l.len() <= 8 && !l.is_empty() && l.chars().all(|c| c.is_ascii_alphabetic() || c == '-')
        })
        .unwrap_or_default();
    let html = CHAT_HTML
        .replace("{{title}}", &escape_html(&title))
        .replace("{{lang}}", &lang);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        html,
    )
        .into_response()
}

/// Text safe inside HTML text and double-quoted attributes.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_title_cannot_inject_markup() {
        assert_eq!(
            escape_html(r#"VeloCity "chat" <script>&'"#),
            "VeloCity &quot;chat&quot; &lt;script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn the_page_loads_the_widget_in_page_mode() {
        assert!(CHAT_HTML.contains(r#"src="/widget.js" data-mode="page""#));
        assert!(WIDGET_JS.contains("aria-live"));
    }
}
