//! The one place outbound HTTP clients are built, so every client has connect timeouts, pooling
//! and an identifying user agent. Per-request deadlines are set by the caller's chain.
//!
//! Deliberate choices: HTTP/1.1 for this shared client (platform and lookup calls are short;
//! the provider calls that wait seconds may use HTTP/2 lanes, see `llm::connections`); no
//! redirects (an API POST has no business being redirected, and following one could send the API
//! key to another host); no retries here (the provider chain owns retries, bounded by the turn).

use std::time::Duration;

/// Idle connections kept per host: enough for a steady few hundred calls at once, not the
/// thousands a burst opened.
const MAX_IDLE_PER_HOST: usize = 256;

/// Settings every outbound client shares.
#[allow(clippy::disallowed_methods)] // the one place clients are built
fn common() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("clawgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        // A burst opens thousands of HTTP/1.1 connections to a slow provider; keeping them all
        // idle afterwards would hold their buffers (tens of KiB each) for the idle timeout.
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
}

/// A client for provider and platform APIs, over HTTP/1.1.
pub fn build() -> Result<reqwest::Client, reqwest::Error> {
    common().http1_only().build()
}

/// A client whose calls share one HTTP/2 connection per host: negotiated by TLS (ALPN, falling
/// back to HTTP/1.1 when the server does not offer HTTP/2), or with `prior_knowledge` spoken at
/// once, also on plain http:// (h2c).
pub fn build_http2(prior_knowledge: bool) -> Result<reqwest::Client, reqwest::Error> {
    let builder = common();
    if prior_knowledge {
        builder.http2_prior_knowledge().build()
    } else {
        builder.build()
    }
}
