//! The one place outbound HTTP clients are built, so every client has connect timeouts, pooling
//! and an identifying user agent. Per-request deadlines are set by the caller's chain.

use std::time::Duration;

/// A client for provider and platform APIs.
pub fn build() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("clawgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
}
