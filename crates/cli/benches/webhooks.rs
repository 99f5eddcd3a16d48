//! The webhook ack-path benchmark: signed WhatsApp notifications acknowledged by one replica
//! (verify signature + parse + dedupe + enqueue, durable in Redis before the 200), while the
//! model answers slowly (1.5 s) and the workers keep turns running behind the acknowledgements,
//! as in a morning surge.
//!
//! A second phase measures what replicated acknowledgement (`redis.ackReplicas: 1`: `WAIT` for a
//! Redis replica before the 200) adds: one primary with one replica, two replicas of clawgate on
//! it (ackReplicas 0 and 1), the same open-loop rate to each in alternating rounds.
//!
//! Run: `cargo bench -p clawgate --bench webhooks` (knobs: `CLAWGATE_BENCH_SECONDS`, default 10;
//! `CLAWGATE_BENCH_WEBHOOK_RATE`, default 5000; `CLAWGATE_BENCH_CONCURRENCY`, the replica's worker
//! slots, default 1024; `CLAWGATE_BENCH_ACK_RATE`, the second phase's rate, default 1000;
//! `CLAWGATE_BENCH_ONLY=surge` or `replicated` runs one phase). Writes
//! `target/bench/webhooks.{json,md}` and `target/bench/webhooks-replicated.{json,md}`.

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
        "messages": [{"from": from, "id": format!("wamid.BENCH{i:012}"), "timestamp": now_secs().to_string(),
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
    let only = std::env::var("CLAWGATE_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "surge" {
        surge().await;
    }
    if only.is_empty() || only == "replicated" {
        replicated().await;
    }
}

/// Ack latency with and without `WAIT` for one Redis replica, at one rate, in one run.
async fn replicated() {
    let seconds = knob("CLAWGATE_BENCH_SECONDS", 10);
    let rate = knob("CLAWGATE_BENCH_ACK_RATE", 1_000);
    let primary = TestRedis::start_with(&["--repl-diskless-sync-delay", "0"]).await;
    let port = primary.port.to_string();
    let replica = TestRedis::start_with(&[
        "--repl-diskless-sync-delay",
        "0",
        "--replicaof",
        "127.0.0.1",
        &port,
    ])
    .await;
    eventually(Duration::from_secs(20), "the replica in sync", || async {
        let info: String = replica.query(redis::cmd("INFO").arg("replication")).await;
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    let llm = mock_llm(50).await;
    let platforms = mock_platforms().await;
    let mut gateways = Vec::new();
    for ack_replicas in [0, 1] {
        let mut config = test_config(vec![openai_provider("primary", &llm, 30_000, 0)]);
        config["channels"] = channels_config(&platforms);
        config["redis"] =
            json!({"url": primary.url(), "ackReplicas": ack_replicas, "ackTimeoutMs": 1000});
        let gateway = Gateway::start(config, "", &format!("ack{ack_replicas}")).await;
        gateways.push(gateway);
    }
    let mut latency = [histogram(), histogram()];
    let mut ok = [0u64, 0];
    let mut sent = [0u64, 0];
    let rounds = 4;
    let per_round = rate * seconds / rounds;
    let mut next = 2_000_000_000u64;
    for (n, setting) in (0..rounds as usize * 2).map(|n| (n, n % 2)) {
        let url = gateways[setting].url("/webhooks/whatsapp");
        if n < 2 {
            let warmup: Vec<_> = (0..300).map(|i| signed_webhook(next + i)).collect();
            next += 300;
            open_loop(&url, warmup, 1_000).await;
        }
        let bodies: Vec<_> = (0..per_round).map(|i| signed_webhook(next + i)).collect();
        next += per_round;
        let run = open_loop(&url, bodies, rate).await;
        latency[setting].add(&run.latency).expect("histogram");
        ok[setting] += run.ok;
        sent[setting] += run.sent;
    }
    let figures: Vec<(f64, f64, f64)> = latency
        .iter()
        .map(|h| (ms(h, 0.5), ms(h, 0.99), ms(h, 0.999)))
        .collect();
    let added_p99 = figures[1].1 - figures[0].1;
    for (setting, (p50, p99, p999)) in figures.iter().enumerate() {
        println!(
            "ackReplicas {setting}: {} of {} webhooks with 200 at {rate}/s, ack p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms",
            ok[setting], sent[setting]
        );
    }
    println!("replicated acknowledgement adds {added_p99:.2} ms at p99");
    let report = json!({"rate": rate, "seconds_per_setting": seconds / 2, "rounds_per_setting": rounds / 2,
        "ack_replicas_0": {"ok": ok[0], "sent": sent[0], "p50_ms": figures[0].0, "p99_ms": figures[0].1, "p999_ms": figures[0].2},
        "ack_replicas_1": {"ok": ok[1], "sent": sent[1], "p50_ms": figures[1].0, "p99_ms": figures[1].1, "p999_ms": figures[1].2},
        "added_p99_ms": added_p99});
    let md = format!(
        "| redis.ackReplicas | webhooks with 200 | ack p50 | p99 | p99.9 |\n| --- | --- | --- | --- | --- |\n| 0 | {} of {} | {:.2} ms | {:.2} ms | {:.2} ms |\n| 1 | {} of {} | {:.2} ms | {:.2} ms | {:.2} ms |\n",
        ok[0],
        sent[0],
        figures[0].0,
        figures[0].1,
        figures[0].2,
        ok[1],
        sent[1],
        figures[1].0,
        figures[1].1,
        figures[1].2
    );
    write_results("webhooks-replicated", &report, &md);
}

/// The morning surge: webhooks at `CLAWGATE_BENCH_WEBHOOK_RATE` while turns pile up.
async fn surge() {
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
