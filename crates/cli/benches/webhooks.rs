//! The webhook ack-path benchmark: signed WhatsApp notifications acknowledged by one replica
//! (verify signature + parse + dedupe + enqueue, durable in Redis before the 200), while the
//! model answers slowly (1.5 s) and the workers keep turns running behind the acknowledgements,
//! as in a morning surge.
//!
//! Run: `cargo bench -p clawgate --bench webhooks` (knobs: `CLAWGATE_BENCH_SECONDS`, default 10;
//! `CLAWGATE_BENCH_WEBHOOK_RATE`, default 5000; `CLAWGATE_BENCH_CONCURRENCY`, the replica's worker
//! slots, default 1024). Writes `target/bench/webhooks.{json,md}`.

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

use common::*;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// One signed notification: a text message from one of 100,000 customers.
fn signed_webhook(i: u64) -> (Vec<u8>, String) {
    let from = format!("316{:08}", i % 100_000);
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "31201234567", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Bench"}, "wa_id": from}],
        "messages": [{"from": from, "id": format!("wamid.BENCH{i:012}"), "timestamp": "1764054000",
                      "type": "text", "text": {"body": "Waar is mijn pakket? VC482913577NL"}}]}}]}]})
    .to_string()
    .into_bytes();
    let signature = whatsapp_signature(&body, WHATSAPP_APP_SECRET);
    (body, signature)
}

struct Run {
    sent: u64,
    ok: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

/// Sends `bodies` at `rate` per second; latency from each one's intended send time.
async fn open_loop(url: &str, bodies: Vec<(Vec<u8>, String)>, rate: u64) -> Run {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client");
    let latency = Arc::new(Mutex::new(histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let sent = bodies.len() as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(bodies.len());
    for (i, (body, signature)) in bodies.into_iter().enumerate() {
        let intended = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(intended).await;
        let (http, url, latency, ok) = (http.clone(), url.to_string(), latency.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", signature)
                .body(body)
                .send()
                .await;
            let elapsed = intended.elapsed();
            if response.is_ok_and(|r| r.status() == 200) {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            latency
                .lock()
                .expect("lock")
                .record(elapsed.as_micros() as u64)
                .ok();
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    let seconds = start.elapsed().as_secs_f64();
    let latency = latency.lock().expect("lock").clone();
    Run {
        sent,
        ok: ok.load(Ordering::Relaxed),
        seconds,
        latency,
    }
}

fn main() {
    runtime().block_on(run());
}

async fn run() {
    let seconds = knob("CLAWGATE_BENCH_SECONDS", 10);
    let rate = knob("CLAWGATE_BENCH_WEBHOOK_RATE", 5_000);
    let redis = TestRedis::start().await;
    let llm = mock_llm(1_500).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 30_000, 0)]);
    config["channels"] = channels_config(&platforms);
    config["workers"] = json!({"concurrency": knob("CLAWGATE_BENCH_CONCURRENCY", 1024)});
    let gateway = Gateway::start(config, &redis.url(), "webhooks").await;
    let url = gateway.url("/webhooks/whatsapp");

    let warmup: Vec<_> = (0..500)
        .map(|i| signed_webhook(1_000_000_000 + i))
        .collect();
    open_loop(&url, warmup, 1_000).await;
    let bodies: Vec<_> = (0..rate * seconds).map(signed_webhook).collect();
    let run = open_loop(&url, bodies, rate).await;
    let achieved = run.sent as f64 / run.seconds;
    let (p50, p99, p999, max) = (
        ms(&run.latency, 0.5),
        ms(&run.latency, 0.99),
        ms(&run.latency, 0.999),
        run.latency.max() as f64 / 1000.0,
    );
    let turns = gateway.health().await["turns_running"]
        .as_u64()
        .unwrap_or(0);
    let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
    println!(
        "signed WhatsApp webhooks at {rate}/s for {seconds} s: {achieved:.0}/s acknowledged, {} of {} with 200; ack latency p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms; at the end {turns} turns running and {inbox} entries in the inbox (model at 1.5 s)",
        run.ok, run.sent
    );
    let report = json!({"rate": rate, "seconds": seconds, "achieved_per_s": achieved, "ok": run.ok, "sent": run.sent,
        "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": max, "turns_running_at_end": turns, "inbox_at_end": inbox});
    let md = format!(
        "| measure | value |\n| --- | --- |\n| signed WhatsApp webhooks, open loop at {rate}/s, model 1.5 s | {achieved:.0}/s acknowledged ({} of {} with 200), ack p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms |\n",
        run.ok, run.sent
    );
    write_results("webhooks", &report, &md);
}
