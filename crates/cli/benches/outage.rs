//! The primary-outage benchmark: the primary model hangs, the fallback answers after
//! `CLAWGATE_BENCH_FALLBACK_MS` (default 200). Turns arrive open-loop at a steady rate, each
//! from a new web-chat customer, and their latency is measured from the intended send time.
//!
//! Two runs on the same machine: clawgate's circuit breaker as configured by default (opens
//! after 5 consecutive failures), and the seed's behaviour (no breaker: every turn waits out the
//! primary's 10 s timeout before falling back). Reports p50/p99 for turns sent before and after
//! the breaker opened, and the added latency over the fallback's own once it is open.
//!
//! Run: `cargo bench -p clawgate --bench outage` (knobs: `CLAWGATE_BENCH_SECONDS`, default 20;
//! `CLAWGATE_BENCH_RATE`, turns per second, default 20). Writes `target/bench/outage.{json,md}`.

// A benchmark's printed report is its output; setup failures should stop it loudly.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;
#[path = "../tests/integration/support/mod.rs"]
mod support;

use clawgate_fakes::mock_llm::Mode;
use common::*;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

/// Latency of each turn with the second since the start at which it was due.
async fn drive(
    gateway: &Gateway,
    seconds: u64,
    rate: u64,
    tag: &str,
) -> Vec<(f64, Duration, String)> {
    let http = support::http_client();
    let url = gateway.url("/v1/webchat/messages");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..seconds * rate {
        let due = started + Duration::from_micros(i * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (http, url) = (http.clone(), url.clone());
        let body = json!({"session_id": format!("{tag}-{i}"), "message_id": "m1", "text": "Waar is mijn pakket?"});
        tasks.spawn(async move {
            let response = http.post(&url).json(&body).send().await.expect("send");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let provider = body["reply"]["provider"]
                .as_str()
                .unwrap_or("none")
                .to_string();
            (
                due.duration_since(started).as_secs_f64(),
                due.elapsed(),
                provider,
            )
        });
    }
    let mut results = Vec::new();
    while let Some(result) = tasks.join_next().await {
        results.push(result.expect("turn"));
    }
    results
}

fn summary(turns: &[&(f64, Duration, String)]) -> Value {
    let mut h: Histogram<u64> = histogram();
    for (_, latency, _) in turns {
        h.record(latency.as_micros().max(1) as u64).unwrap();
    }
    json!({"turns": turns.len(), "p50_ms": ms(&h, 0.5), "p99_ms": ms(&h, 0.99)})
}

async fn scenario(breaker: Value, seconds: u64, rate: u64, fallback_ms: u64, tag: &str) -> Value {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(fallback_ms).await;
    let mut config = test_config(vec![
        openai_provider("primary", &primary, 10_000, 2),
        ollama_provider("fallback", &fallback, 30_000),
    ]);
    config["llm"]["circuitBreaker"] = breaker;
    config["llm"]["deadlineMs"] = json!(30_000);
    config["webchat"] = json!({"replyWaitMs": 30_000, "sessionTokens": "off"});
    config["workers"] = json!({"concurrency": 4096});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    primary.set_mode(Mode::Hang);
    let turns = drive(&gateway, seconds, rate, tag).await;
    // A turn waited for the primary when it took at least its 10 s timeout.
    let waited: Vec<_> = turns
        .iter()
        .filter(|t| t.1 >= Duration::from_secs(10))
        .collect();
    let skipped: Vec<_> = turns
        .iter()
        .filter(|t| t.1 < Duration::from_secs(10))
        .collect();
    let opened_at = waited.iter().map(|t| t.0).fold(0.0, f64::max);
    json!({
        "all": summary(&turns.iter().collect::<Vec<_>>()),
        "waited_for_the_primary": summary(&waited),
        "skipped_the_primary": summary(&skipped),
        "last_turn_that_waited_was_due_at_s": opened_at,
        "answered_by_fallback": turns.iter().filter(|t| t.2 == "fallback").count(),
        "primary_calls": primary.requests(),
    })
}

fn main() {
    runtime().block_on(run());
}

async fn run() {
    let seconds = knob("CLAWGATE_BENCH_SECONDS", 20);
    let rate = knob("CLAWGATE_BENCH_RATE", 20);
    let fallback_ms = knob("CLAWGATE_BENCH_FALLBACK_MS", 200);
    let clawgate = scenario(json!({}), seconds, rate, fallback_ms, "breaker").await;
    // The seed: no breaker at all (thresholds no outage reaches).
    let seed = scenario(
        json!({"consecutiveFailures": 1000, "failureRatio": 1.0, "minCalls": 100000}),
        seconds,
        rate,
        fallback_ms,
        "seed",
    )
    .await;
    let after = &clawgate["skipped_the_primary"];
    let added_p50 = after["p50_ms"].as_f64().unwrap_or(0.0) - fallback_ms as f64;
    let added_p99 = after["p99_ms"].as_f64().unwrap_or(0.0) - fallback_ms as f64;
    let report = json!({
        "seconds": seconds, "rate_per_s": rate, "fallback_ms": fallback_ms,
        "primary_timeout_ms": 10_000, "primary_max_retries": 2,
        "clawgate": clawgate, "seed_no_breaker": seed,
        "added_latency_after_open_ms": {"p50": added_p50, "p99": added_p99},
    });
    let row = |name: &str, v: &Value| {
        format!(
            "| {name} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} |\n",
            v["waited_for_the_primary"]["turns"],
            v["waited_for_the_primary"]["p50_ms"]
                .as_f64()
                .unwrap_or(0.0),
            v["waited_for_the_primary"]["p99_ms"]
                .as_f64()
                .unwrap_or(0.0),
            v["skipped_the_primary"]["turns"],
            v["skipped_the_primary"]["p50_ms"].as_f64().unwrap_or(0.0),
            v["skipped_the_primary"]["p99_ms"].as_f64().unwrap_or(0.0),
        )
    };
    let md = format!(
        "## Primary outage: {rate} turns/s for {seconds} s, primary hanging (10 s timeout), fallback {fallback_ms} ms\n\n\
         | | turns that waited the timeout | p50 ms | p99 ms | turns that skipped the primary | p50 ms | p99 ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n{}{}\n\
         Added latency over the fallback's own once the breaker is open: p50 {added_p50:.1} ms, p99 {added_p99:.1} ms.\n",
        row("clawgate (breaker)", &report["clawgate"]),
        row("seed (no breaker)", &report["seed_no_breaker"]),
    );
    write_results("outage", &report, &md);
}
