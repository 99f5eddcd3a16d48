//! The one place outbound HTTP clients are built, so every client has connect timeouts, pooling
//! and an identifying user agent. Per-request deadlines are set by the caller's chain.
//!
//! Deliberate choices: HTTP/1.1 only (hyper's pool keeps one HTTP/2 connection per host and
//! queues requests beyond the provider's stream limit, often 100, which would cap a replica's
//! turns per second); no redirects (an API POST has no business being redirected, and following
//! one could send the API key to another host); no retries here (the provider chain owns
//! retries, bounded by the turn).

use std::time::Duration;

/// A client for provider and platform APIs.
pub fn build() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("clawgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .build()
}
