//! The spine benchmark: one replica, a local Redis, the mock LLM; everything on this machine.
//!
//! Measures (issue "gateway spine", section Measure):
//! - time from process start to `/readyz` 200;
//! - web-chat round trips per second, closed loop, at several concurrencies (mock at 0 ms);
//! - p50/p99 latency open loop at a fixed 1,000 messages/s (latency from the intended send time,
//!   so a slow gateway cannot hide its latency by slowing the sender);
//! - with the mock at 1,500 ms and 2,000 conversations in flight: peak RSS of the replica and RSS
//!   per in-flight conversation.
//!
//! Run: `cargo bench -p clawgate --bench spine` (knobs: `CLAWGATE_BENCH_SECONDS`, default 10;
//! `CLAWGATE_BENCH_RATE`, default 1000; `CLAWGATE_BENCH_INFLIGHT`, default 2000). Writes
//! `target/bench/spine.json` and `target/bench/spine.md`.

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
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// RSS and peak RSS of a process, KiB.
fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    session: &str,
    id: &str,
    text: &str,
) -> Option<Value> {
    let body = json!({"session_id": session, "message_id": id, "text": text});
    let response = http
        .post(format!("{base}/v1/webchat/messages"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json().await.ok()
}

struct LoadResult {
    messages: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

/// `concurrency` customers, each holding 6-message conversations back to back, for `duration`.
async fn closed_loop(base: &str, tag: &str, concurrency: usize, duration: Duration) -> LoadResult {
    let http = client();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (http, base, tag) = (http.clone(), base.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut messages, mut errors) = (0u64, 0u64);
            let mut conversation = 0;
            while Instant::now() < deadline {
                conversation += 1;
                let session = format!("{tag}-{worker}-{conversation}");
                for turn in 1..=6 {
                    let sent = Instant::now();
                    let reply = send(
                        &http,
                        &base,
                        &session,
                        &format!("m{turn}"),
                        "where is my parcel",
                    )
                    .await;
                    latency.record(sent.elapsed().as_micros() as u64).ok();
                    messages += 1;
                    let text = reply
                        .as_ref()
                        .and_then(|r| r["reply"]["text"].as_str())
                        .unwrap_or("");
                    if !text.contains(&format!("user_turns={turn} ")) {
                        errors += 1;
                    }
                }
            }
            (messages, errors, latency)
        }));
    }
    let mut result = LoadResult {
        messages: 0,
        errors: 0,
        seconds: 0.0,
        latency: histogram(),
    };
    for task in tasks {
        let (messages, errors, latency) = task.await.expect("worker");
        result.messages += messages;
        result.errors += errors;
        result.latency.add(&latency).ok();
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// A fixed arrival rate; latency is measured from each message's intended send time.
async fn open_loop(base: &str, rate: u64, duration: Duration) -> LoadResult {
    let http = client();
    let total = rate * duration.as_secs();
    let sessions = 2_000;
    let latency = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(intended).await;
        let (http, base, latency, errors) = (
            http.clone(),
            base.to_string(),
            latency.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let session = format!("open-{}", i % sessions);
            let turn = i / sessions + 1;
            let reply = send(
                &http,
                &base,
                &session,
                &format!("m{turn}"),
                "when will it arrive",
            )
            .await;
            let elapsed = intended.elapsed();
            latency
                .lock()
                .expect("lock")
                .record(elapsed.as_micros() as u64)
                .ok();
            let text = reply
                .as_ref()
                .and_then(|r| r["reply"]["text"].as_str())
                .unwrap_or("");
            if !text.contains(&format!("user_turns={turn} ")) {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    let seconds = start.elapsed().as_secs_f64();
    let latency = latency.lock().expect("lock").clone();
    LoadResult {
        messages: total,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        seconds,
        latency,
    }
}

fn bench_config(llm: &clawgate_fakes::mock_llm::MockLlm, concurrency: u64) -> Value {
    bench_config_over(llm, concurrency, "auto")
}

/// The same, with the provider spoken to over `http_version` (its `httpVersion`).
fn bench_config_over(
    llm: &clawgate_fakes::mock_llm::MockLlm,
    concurrency: u64,
    http_version: &str,
) -> Value {
    let mut provider = openai_provider("primary", llm, 30_000, 0);
    provider["httpVersion"] = json!(http_version);
    let mut config = test_config(vec![provider]);
    config["workers"] = json!({"concurrency": concurrency});
    config["webchat"] = json!({"replyWaitMs": 30_000, "sessionTokens": "off"});
    // The closed loops send one customer's turns back to back, thousands a minute; flood control
    // would (rightly) hold such a customer back, so it is off here: this measures the spine.
    config["conversations"] = json!({"floodControl": {"messagesPerMinute": 0}});
    config
}

fn main() {
    runtime().block_on(run());
}

async fn run() {
    let seconds = knob("CLAWGATE_BENCH_SECONDS", 10);
    let rate = knob("CLAWGATE_BENCH_RATE", 1_000);
    let inflight = knob("CLAWGATE_BENCH_INFLIGHT", 2_000);
    let duration = Duration::from_secs(seconds);
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut report = json!({
        "machine": format!("{} cores, {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default()),
        "note": "redis-server, the replica, the mock LLM and the load generator share these cores",
    });

    // `CLAWGATE_BENCH_ONLY=speed|turns|held` runs one phase (for profiling experiments).
    let only = std::env::var("CLAWGATE_BENCH_ONLY").unwrap_or_default();
    let phase = |name: &str| only.is_empty() || only == name;
    if phase("speed") {
        speed(&redis, &llm, rate, duration, &mut report).await;
    }
    // The mock speaks plain http: HTTP/1.1 unless told "2" (h2c, prior knowledge).
    for (http_version, key) in [("1.1", ""), ("2", "_http2")] {
        if phase("turns") {
            let key = format!("memory_turns{key}");
            memory_turns(&redis, inflight, http_version, &mut report[&key]).await;
        }
        if phase("held") {
            memory(
                &redis,
                inflight,
                http_version,
                &mut report[&format!("memory{key}")],
            )
            .await;
        }
    }
    write_report(&report, rate, inflight);
}

async fn speed(
    redis: &TestRedis,
    llm: &clawgate_fakes::mock_llm::MockLlm,
    rate: u64,
    duration: Duration,
    report: &mut Value,
) {
    // 1. Time to ready.
    let mut ready = Vec::new();
    for i in 0..5 {
        let gateway =
            Gateway::start(bench_config(llm, 1024), &redis.url(), &format!("ready-{i}")).await;
        ready.push(gateway.ready_after.as_secs_f64() * 1000.0);
    }
    let ready_ms = median(ready.clone());
    report["ready_ms"] = json!(ready);
    println!(
        "ready: median {ready_ms:.1} ms over {} starts ({ready:.1?})",
        ready.len()
    );
    report["ready_ms_median"] = json!(ready_ms);

    // 2. Throughput and latency, mock at 0 ms.
    let gateway = Gateway::start(bench_config(llm, 1024), &redis.url(), "bench").await;
    let base = format!("http://{}", gateway.addr);
    let _ = closed_loop(&base, "warmup", 8, Duration::from_secs(2)).await;
    let mut closed = Vec::new();
    for concurrency in [1usize, 8, 32, 128] {
        let r = closed_loop(&base, &format!("c{concurrency}"), concurrency, duration).await;
        let rps = r.messages as f64 / r.seconds;
        println!(
            "closed loop, {concurrency:>3} customers: {rps:>7.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, {} errors of {}",
            ms(&r.latency, 0.5),
            ms(&r.latency, 0.99),
            r.errors,
            r.messages
        );
        closed.push(
            json!({"concurrency": concurrency, "messages_per_s": rps, "p50_ms": ms(&r.latency, 0.5),
            "p99_ms": ms(&r.latency, 0.99), "errors": r.errors, "messages": r.messages}),
        );
    }
    report["closed_loop"] = json!(closed);
    let r = open_loop(&base, rate, duration).await;
    println!(
        "open loop at {rate} msg/s: achieved {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} errors of {}",
        r.messages as f64 / r.seconds,
        ms(&r.latency, 0.5),
        ms(&r.latency, 0.99),
        ms(&r.latency, 0.999),
        r.latency.max() as f64 / 1000.0,
        r.errors,
        r.messages
    );
    report["open_loop"] = json!({"rate": rate, "achieved_per_s": r.messages as f64 / r.seconds,
        "p50_ms": ms(&r.latency, 0.5), "p99_ms": ms(&r.latency, 0.99), "p999_ms": ms(&r.latency, 0.999),
        "max_ms": r.latency.max() as f64 / 1000.0, "errors": r.errors, "messages": r.messages});
}

/// `inflight` turns running at once, accepted webhook-style: 64 connections, each message
/// acknowledged at once (`wait_ms=0`), as nginx or a messaging platform delivers them.
async fn memory_turns(redis: &TestRedis, inflight: u64, http_version: &str, report: &mut Value) {
    let slow = mock_llm(1_500).await;
    let config = bench_config_over(&slow, inflight * 2, http_version);
    let mut gateway = Gateway::start(config, &redis.url(), "turns").await;
    let base = format!("http://{}", gateway.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    for i in 0..20 {
        send(
            &http,
            &base,
            &format!("warm-turns-{http_version}-{i}"),
            "m1",
            "hello",
        )
        .await;
    }
    let pid = gateway.pid();
    let (idle_kib, _) = memory_kib(pid);
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..inflight {
        let (http, base, gate) = (http.clone(), base.clone(), gate.clone());
        let session = format!("turn-{http_version}-{i}");
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate");
            let body =
                json!({"session_id": session, "message_id": "m1", "text": "where is my parcel"});
            http.post(format!("{base}/v1/webchat/messages?wait_ms=0"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .is_ok_and(|r| r.status() == 202)
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += u64::from(task.await.expect("task"));
    }
    let mut peak_kib = 0;
    let mut most_running = 0;
    loop {
        peak_kib = peak_kib.max(memory_kib(pid).0);
        let running = gateway.health().await["turns_running"]
            .as_u64()
            .unwrap_or(0);
        most_running = most_running.max(running);
        if running == 0 && started.elapsed() > Duration::from_millis(1_600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replied = gateway.metric("clawgate_messages_replied_total", "").await as u64 - 20;
    let (_, hwm_kib) = memory_kib(pid);
    let peak_kib = peak_kib.max(hwm_kib);
    let per_turn = (peak_kib.saturating_sub(idle_kib)) as f64 / inflight as f64;
    println!(
        "memory, webhook-style, provider over HTTP/{http_version} ({} connections): idle {:.1} MiB, peak {:.1} MiB with {inflight} turns in flight (most at once: {most_running}), {per_turn:.1} KiB per turn; {accepted} accepted, {replied} replied in {:.1} s",
        slow.connections(),
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
    *report = json!({"inflight": inflight, "http_version": http_version, "provider_connections": slow.connections(),
        "idle_mib": idle_kib as f64 / 1024.0, "peak_mib": peak_kib as f64 / 1024.0,
        "kib_per_turn": per_turn, "most_turns_running": most_running, "accepted": accepted, "replied": replied,
        "seconds": started.elapsed().as_secs_f64()});
    gateway.terminate();
    let _ = gateway.exit_code(Duration::from_secs(60)).await;
}

/// `inflight` web-chat requests held open until their reply (each holds its own connection).
async fn memory(redis: &TestRedis, inflight: u64, http_version: &str, report: &mut Value) {
    // 3. Memory with `inflight` conversations waiting on a 1.5 s model.
    let slow = mock_llm(1_500).await;
    let config = bench_config_over(&slow, inflight * 2, http_version);
    let mut gateway = Gateway::start(config, &redis.url(), "memory").await;
    let base = format!("http://{}", gateway.addr);
    let http = client();
    for i in 0..20 {
        send(
            &http,
            &base,
            &format!("warm-held-{http_version}-{i}"),
            "m1",
            "hello",
        )
        .await;
    }
    let pid = gateway.pid();
    let (idle_kib, _) = memory_kib(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..inflight {
        let (http, base) = (http.clone(), base.clone());
        let session = format!("mem-{http_version}-{i}");
        tasks.push(tokio::spawn(async move {
            send(&http, &base, &session, "m1", "where is my parcel")
                .await
                .is_some()
        }));
    }
    let mut peak_kib = 0;
    let mut most_running = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        peak_kib = peak_kib.max(memory_kib(pid).0);
        if started.elapsed() > Duration::from_millis(700)
            && started.elapsed() < Duration::from_millis(1_400)
        {
            let health = gateway.health().await;
            most_running = most_running.max(health["turns_running"].as_u64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = 0;
    for task in tasks {
        answered += u64::from(task.await.expect("task"));
    }
    let (_, hwm_kib) = memory_kib(pid);
    // A graceful stop, so a profiler wrapped around the replica writes its output.
    gateway.terminate();
    let _ = gateway.exit_code(Duration::from_secs(60)).await;
    let peak_kib = peak_kib.max(hwm_kib);
    let per_conversation = (peak_kib.saturating_sub(idle_kib)) as f64 / inflight as f64;
    println!(
        "memory, web chat held open, provider over HTTP/{http_version} ({} connections): idle {:.1} MiB, peak {:.1} MiB with {inflight} conversations in flight (most turns running at once: {most_running}), {per_conversation:.1} KiB per conversation; {answered}/{inflight} answered in {:.1} s",
        slow.connections(),
        idle_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
    *report = json!({"inflight": inflight, "http_version": http_version, "provider_connections": slow.connections(),
        "idle_mib": idle_kib as f64 / 1024.0, "peak_mib": peak_kib as f64 / 1024.0,
        "kib_per_conversation": per_conversation, "most_turns_running": most_running, "answered": answered,
        "seconds": started.elapsed().as_secs_f64()});
}

fn write_report(report: &Value, rate: u64, inflight: u64) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut md = String::from("| measure | value |\n| --- | --- |\n");
    if let Some(ready) = report["ready_ms_median"].as_f64() {
        md += &format!("| ready (`/readyz` 200 after start), median of 5 | {ready:.1} ms |\n");
    }
    for c in report["closed_loop"].as_array().into_iter().flatten() {
        md += &format!(
            "| closed loop, {} customers, mock 0 ms | {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms |\n",
            c["concurrency"],
            f(&c["messages_per_s"]),
            f(&c["p50_ms"]),
            f(&c["p99_ms"])
        );
    }
    let o = &report["open_loop"];
    if o.is_object() {
        md += &format!(
            "| open loop at {rate} msg/s, mock 0 ms | p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms |\n",
            f(&o["p50_ms"]),
            f(&o["p99_ms"]),
            f(&o["p999_ms"])
        );
    }
    for key in ["", "_http2"] {
        let t = &report[&format!("memory_turns{key}")];
        if t.is_object() {
            md += &format!(
                "| {inflight} turns in flight, webhook-style intake (64 connections), mock 1.5 s, provider over HTTP/{} ({} connections) | idle {:.1} MiB, peak {:.1} MiB, {:.1} KiB per turn, all answered in {:.1} s |\n",
                t["http_version"].as_str().unwrap_or_default(),
                t["provider_connections"],
                f(&t["idle_mib"]),
                f(&t["peak_mib"]),
                f(&t["kib_per_turn"]),
                f(&t["seconds"])
            );
        }
        let m = &report[&format!("memory{key}")];
        if m.is_object() {
            md += &format!(
                "| {inflight} web-chat requests held open for their reply, mock 1.5 s, provider over HTTP/{} ({} connections) | idle {:.1} MiB, peak {:.1} MiB, {:.1} KiB per conversation, all answered in {:.1} s |\n",
                m["http_version"].as_str().unwrap_or_default(),
                m["provider_connections"],
                f(&m["idle_mib"]),
                f(&m["peak_mib"]),
                f(&m["kib_per_conversation"]),
                f(&m["seconds"])
            );
        }
    }
    write_results("spine", report, &md);
}
