//! The web chat's live events, measured (issue "web-chat widget", section Measure):
//! - added latency from the model's first words to the client: the mock LLM notes when it hands
//!   the first words of a streamed answer to its connection; an SSE client (and, when Chromium
//!   is installed, the widget in a real browser: the first character it renders) notes when
//!   they arrive. p50 / p99 of the difference;
//! - idle event streams per replica: 10,000 open streams on one replica, its RSS before and
//!   after, and the memory one stream costs; the replica still answers meanwhile;
//! - events lost or doubled across replica kills: 3 replicas behind nginx (`clawgate cluster
//!   up`), customers following their sessions' events while streamed answers are written and a
//!   replica is SIGKILLed every few seconds; each client's events compared with what Redis holds.
//!
//! Run: `cargo bench -p clawgate --bench event_streams` (knobs: `CLAWGATE_BENCH_SAMPLES`,
//! default 200; `CLAWGATE_BENCH_STREAMS`, default 10000; `CLAWGATE_BENCH_KILLS`, default 3;
//! `CLAWGATE_BENCH_ONLY=latency|browser|idle|kills`). Writes `target/bench/event_streams.json`
//! and `.md`.

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
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use support::sse::SseStream;
use support::*;

fn main() {
    runtime().block_on(run());
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

fn config(llm: &MockLlm) -> Value {
    let mut config = test_config(vec![openai_provider("primary", llm, 20_000, 0)]);
    config["gateway"]["maxConnections"] = json!(30_000);
    config
}

async fn post(http: &reqwest::Client, base: &str, session: &str, id: &str) {
    let status = http
        .post(format!("{base}/v1/webchat/messages?wait_ms=0"))
        .json(&json!({"session_id": session, "message_id": id, "text": "where is my parcel?"}))
        .send()
        .await
        .expect("post")
        .status();
    assert!(status == 202 || status == 200, "{status}");
}

async fn run() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let only = std::env::var("CLAWGATE_BENCH_ONLY").unwrap_or_default();
    let phase = |name: &str| only.is_empty() || only == name;
    let mut report = json!({
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "note": "redis-server, the replicas, nginx, the mock LLM, the browser and the clients share these cores",
    });
    let mut markdown = String::from("# Web-chat live events\n\n");
    if phase("latency") {
        latency(&mut report, &mut markdown).await;
    }
    if phase("browser") {
        browser_latency(&mut report, &mut markdown).await;
    }
    if phase("idle") {
        idle_streams(&mut report, &mut markdown).await;
    }
    if phase("kills") {
        kills(&mut report, &mut markdown).await;
    }
    write_results("event_streams", &report, &markdown);
}

/// The model's first words to an SSE client, through the turn's writer, Redis and the stream.
async fn latency(report: &mut Value, markdown: &mut String) {
    let samples = knob("CLAWGATE_BENCH_SAMPLES", 200);
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    llm.set_chunk_pause(Duration::from_millis(5));
    let gateway = Gateway::start(config(&llm), &redis.url(), "latency").await;
    let http = client();
    let mut added = histogram();
    for i in 0..samples {
        let session = format!("lat-{i}");
        let url = gateway.url(&format!("/v1/webchat/sessions/{session}/events"));
        let mut stream = SseStream::open(&http, &url, None).await;
        stream.next(Duration::from_secs(5)).await.expect("ready");
        post(&http, &gateway.url(""), &session, "m1").await;
        loop {
            let event = stream
                .next(Duration::from_secs(10))
                .await
                .expect("an event");
            if event.name == "delta" {
                let arrived = Instant::now();
                let (sent, _) = llm.first_words_sent().expect("the mock streamed");
                added
                    .record(arrived.saturating_duration_since(sent).as_micros() as u64)
                    .ok();
                break;
            }
        }
        stream.until("answer", Duration::from_secs(10)).await;
    }
    let (p50, p99) = (ms(&added, 0.5), ms(&added, 0.99));
    report["first_words_to_sse_client_ms"] = json!({"samples": samples, "p50": p50, "p99": p99});
    markdown.push_str(&format!(
        "Model's first words to an SSE client (added by clawgate: turn writer, Redis XADD + PUBLISH, XRANGE, SSE), {samples} answers: **p50 {p50:.2} ms, p99 {p99:.2} ms**\n\n"
    ));
}

/// The same to the first character the widget renders in Chromium (wall clocks of one machine,
/// millisecond resolution).
async fn browser_latency(report: &mut Value, markdown: &mut String) {
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        markdown.push_str("Browser latency: skipped (no /usr/bin/chromium)\n\n");
        return;
    }
    let samples = knob("CLAWGATE_BENCH_SAMPLES", 200).min(50);
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    llm.set_chunk_pause(Duration::from_millis(5));
    let mut config = config(&llm);
    config["webchat"] = json!({});
    let gateway = Gateway::start(config, &redis.url(), "browser").await;
    let browser = support::browser::Browser::start(1000, 800).await;
    browser
        .client
        .goto(&gateway.url("/chat?lang=en"))
        .await
        .expect("open /chat");
    let mut added = histogram();
    for i in 0..samples {
        browser
            .until("the widget to be ready", Duration::from_secs(10), "return document.querySelector('clawgate-chat')?.getAttribute('data-state') === 'ready';")
            .await;
        // Notes when the newest answer shows its first character.
        browser
            .run(
                "const root = document.querySelector('clawgate-chat').shadowRoot; window.__first = null;
                 const seen = root.querySelectorAll('.msg.agent').length;
                 const observer = new MutationObserver(() => {
                   const answers = root.querySelectorAll('.msg.agent .text');
                   if (answers.length > seen && answers[answers.length - 1].textContent.length > 0 && window.__first === null) {
                     window.__first = Date.now(); observer.disconnect();
                   }
                 });
                 observer.observe(root, {subtree: true, childList: true, characterData: true});
                 const input = root.querySelector('textarea'); input.value = arguments[0];
                 root.querySelector('form').requestSubmit(); return true;",
                vec![json!(format!("question {i}"))],
            )
            .await;
        let rendered = browser
            .until(
                "the first character",
                Duration::from_secs(10),
                "return window.__first;",
            )
            .await
            .as_f64()
            .expect("ms");
        let (_, sent) = llm.first_words_sent().expect("the mock streamed");
        let sent_ms = sent
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
            * 1000.0;
        added
            .record(((rendered - sent_ms).max(0.0) * 1000.0) as u64)
            .ok();
        browser
            .until(
                "the answer",
                Duration::from_secs(10),
                &format!("return document.querySelector('clawgate-chat').shadowRoot.querySelectorAll('.msg.agent[data-final=true]').length >= {};", i + 1),
            )
            .await;
    }
    let (p50, p99) = (ms(&added, 0.5), ms(&added, 0.99));
    report["first_words_to_browser_ms"] = json!({"samples": samples, "p50": p50, "p99": p99});
    markdown.push_str(&format!(
        "Model's first words to the first character rendered by the widget in headless Chromium, {samples} answers: **p50 {p50:.1} ms, p99 {p99:.1} ms** (wall clocks, 1 ms resolution)\n\n"
    ));
}

/// Many idle streams on one replica: what each costs, and that the replica still answers.
async fn idle_streams(report: &mut Value, markdown: &mut String) {
    let streams = knob("CLAWGATE_BENCH_STREAMS", 10_000) as usize;
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let gateway = Gateway::start(config(&llm), &redis.url(), "idle").await;
    let http = client();
    // Warm up: allocator arenas and the first stream's one-time costs.
    let mut warm = Vec::new();
    for i in 0..50 {
        let url = gateway.url(&format!("/v1/webchat/sessions/warm-{i}/events"));
        warm.push(SseStream::open(&http, &url, None).await);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(gateway.pid());
    let opened = Instant::now();
    let mut open = Vec::with_capacity(streams);
    for batch in 0..streams.div_ceil(500) {
        let mut tasks = Vec::new();
        for i in batch * 500..((batch + 1) * 500).min(streams) {
            // One connection per stream, as browsers hold them.
            let http = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client");
            let url = gateway.url(&format!("/v1/webchat/sessions/idle-{i}/events"));
            tasks.push(tokio::spawn(async move {
                let mut stream = SseStream::open(&http, &url, None).await;
                stream.next(Duration::from_secs(30)).await.expect("ready");
                (http, stream)
            }));
        }
        for task in tasks {
            open.push(task.await.expect("stream"));
        }
    }
    let open_seconds = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(gateway.pid());
    let gauge = gateway.metric("clawgate_webchat_event_streams", "").await;
    // With every stream open, a customer still gets answered, and live.
    let started = Instant::now();
    let (status, body) = gateway.send("idle-0", "m1", "still there?", None).await;
    assert_eq!(status, 200, "{body}");
    let answered_ms = started.elapsed().as_secs_f64() * 1000.0;
    let event = open[0].1.until("answer", Duration::from_secs(10)).await;
    assert!(!event.is_empty());
    let per_stream = (after.saturating_sub(before)) as f64 / streams as f64;
    report["idle_streams"] = json!({
        "streams": streams, "gauge": gauge, "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_stream": per_stream, "open_seconds": open_seconds, "answer_meanwhile_ms": answered_ms,
    });
    markdown.push_str(&format!(
        "Idle event streams on one replica: **{streams} open** (gauge {gauge}); RSS {:.1} → {:.1} MiB, **{per_stream:.1} KiB per stream** ({:.0} MiB for 10,000); opened in {open_seconds:.1} s; a message answered meanwhile in {answered_ms:.0} ms\n\n",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_stream * 10_000.0 / 1024.0,
    ));
}

/// Customers following streamed answers through nginx while replicas are SIGKILLed.
async fn kills(report: &mut Value, markdown: &mut String) {
    let kills = knob("CLAWGATE_BENCH_KILLS", 3);
    let customers = 40;
    let llm = mock_llm(100).await;
    llm.set_chunk_pause(Duration::from_millis(40));
    let mut config = config(&llm);
    config["workers"]["claimIdleMs"] = json!(1000);
    let cluster = TestCluster::start(config, 3).await;
    let base = cluster.url("");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..customers {
        let (base, stop) = (base.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let session = format!("kill-{c}");
            let url = format!("{base}/v1/webchat/sessions/{session}/events");
            let mut received: Vec<(String, String)> = Vec::new();
            let mut stream = SseStream::open(&http, &url, None).await;
            let mut reconnects = 0;
            let mut sent = 0;
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || answered < sent {
                if answered == sent && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sent += 1;
                    let body = json!({"session_id": session, "message_id": format!("m{sent}"), "text": "where is my parcel?"});
                    // Retried until accepted: a killed replica's request is sent again.
                    loop {
                        match http.post(format!("{base}/v1/webchat/messages?wait_ms=0")).json(&body).send().await {
                            Ok(r) if r.status().is_success() => break,
                            _ => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                }
                match stream.next(Duration::from_secs(20)).await {
                    Some(event) => {
                        if event.name == "answer" {
                            answered += 1;
                        }
                        if event.name != "ready" {
                            received.push((event.id.clone(), event.name.clone()));
                        }
                    }
                    None => {
                        // The stream's replica died (or the stream ended): resume after the last id.
                        reconnects += 1;
                        let last = stream.last_id.clone();
                        stream = loop {
                            match SseStream::try_open(&http, &url, Some(&last)).await {
                                Ok(resumed) => break resumed,
                                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                            }
                        };
                    }
                }
            }
            (session, received, reconnects, answered)
        }));
    }
    let status = cluster.status().await;
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let replicas = cluster.status().await["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let victim = &replicas[k as usize % replicas.len()];
        if let Some(pid) = victim["pid"].as_u64() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(status);
    let mut redis = cluster.redis().await;
    let (mut lost, mut doubled, mut events, mut reconnects, mut answers) = (0, 0, 0, 0, 0);
    for task in tasks {
        let (session, received, reconnected, answered) = task.await.expect("customer");
        reconnects += reconnected;
        answers += answered;
        let kept: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(format!("oc:events:{{webchat:{session}}}"))
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .expect("xrange");
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, _) in &received {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        doubled += counts.values().filter(|n| **n > 1).count();
        let order = |id: &str| {
            let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
            (
                ms.parse::<u64>().unwrap_or(0),
                n.parse::<u64>().unwrap_or(0),
            )
        };
        let first = received
            .first()
            .map(|(id, _)| order(id))
            .unwrap_or_default();
        for (id, _) in &kept {
            // Events before the client's first are the ones before it connected.
            if order(id) >= first && !counts.contains_key(id.as_str()) {
                lost += 1;
            }
        }
        events += received.len();
    }
    report["kills"] = json!({"kills": kills, "customers": customers, "answers": answers, "events": events,
        "reconnects": reconnects, "lost": lost, "doubled": doubled});
    markdown.push_str(&format!(
        "Replica kills: {kills} SIGKILLs among 3 replicas behind nginx, {customers} customers following streamed answers: {answers} answers, {events} events received, {reconnects} reconnections, **{lost} events lost, {doubled} doubled**\n\n"
    ));
}
