//! Integration tests: real redis-server processes, real clawgate replicas, the mock LLM.
//! One test binary, so the harness is compiled and linked once.

// Test code: a failed setup step should stop the test loudly (see clippy.toml for unit tests).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod api;
mod audit;
mod channels;
mod cli;
mod cluster;
mod degraded;
mod deploy;
mod dispatcher;
mod escalation;
mod failover;
mod hardening;
mod hosts;
mod loadtest;
mod platform_traffic;
mod providers;
mod redis_cluster;
mod redis_tls;
mod reload;
mod replicas;
mod resilience;
mod shutdown;
mod skills;
mod spine;
mod support;
mod webchat_live;
mod widget;
