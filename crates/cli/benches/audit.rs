//! The audit-trail benchmark (issue "audit trail", section Measure), on this machine:
//! - turn latency p50 / p99 with the audit trail on and off, open loop at a fixed rate, rounds
//!   alternating between a replica with `audit.dir` and one without (same Redis, same mock);
//! - disk used while 1,000,000 records are written through the replica's file writer, against
//!   `audit.maxTotalBytes`;
//! - `clawgate forget` for a customer with 1,000 messages (history, replies, audit key).
//!
//! Run: `cargo bench -p clawgate --bench audit` (knobs: `CLAWGATE_BENCH_SECONDS` per round,
//! default 5; `CLAWGATE_BENCH_RATE`, default 500; `CLAWGATE_BENCH_RECORDS`, default 1000000).
//! Writes `target/bench/audit.json` and `.md`.

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

use clawgate_gateway::audit::files::AuditFiles;
use clawgate_gateway::config::{AuditConfig, AuditText};
use common::*;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Open loop at `rate` messages/s for `duration` against `base`; latency from the intended send.
async fn open_loop(base: &str, tag: &str, rate: u64, duration: Duration) -> (Histogram<u64>, u64) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let total = rate * duration.as_secs();
    let sessions = (rate * 4).max(1);
    let latency = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(intended).await;
        let (http, base, latency, errors, tag) = (
            http.clone(),
            base.to_string(),
            latency.clone(),
            errors.clone(),
            tag.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let body = json!({
                "session_id": format!("{tag}-{}", i % sessions),
                "message_id": format!("m{}", i / sessions),
                "text": "Kunnen jullie mij helpen met een vraag?",
            });
            let ok = http
                .post(format!("{base}/v1/webchat/messages"))
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            latency
                .lock()
                .expect("lock")
                .record(intended.elapsed().as_micros() as u64)
                .ok();
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    let latency = latency.lock().expect("lock").clone();
    (latency, errors.load(std::sync::atomic::Ordering::Relaxed))
}

fn on_disk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let seconds = knob("CLAWGATE_BENCH_SECONDS", 5);
    let rate = knob("CLAWGATE_BENCH_RATE", 500);
    let records = knob("CLAWGATE_BENCH_RECORDS", 1_000_000);
    let runtime = runtime();
    let report = runtime.block_on(async {
        let redis = TestRedis::start().await;
        let llm = mock_llm(0).await;
        let audit_dir = tempfile::tempdir().expect("dir");
        let mut base = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
        base["conversations"] = json!({"historyLimit": 1000, "floodControl": {"messagesPerMinute": 0}});
        let mut with_audit = base.clone();
        with_audit["audit"] = json!({"dir": audit_dir.path()});
        with_audit["redis"]["url"] = json!(redis.url());
        let off = Gateway::start(base, &redis.url(), "audit-off").await;
        let on = Gateway::start(with_audit, &redis.url(), "audit-on").await;

        // 1. Latency, rounds alternating.
        let (mut p50, mut p99) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        let mut errors = 0;
        for round in 0..3 {
            for (gateway, on_side) in [(&off, false), (&on, true)] {
                let (latency, failed) = open_loop(
                    &gateway.url(""),
                    &format!("r{round}-{on_side}"),
                    rate,
                    Duration::from_secs(seconds),
                )
                .await;
                errors += failed;
                let (a, b) = if on_side { (&mut p50.1, &mut p99.1) } else { (&mut p50.0, &mut p99.0) };
                a.push(ms(&latency, 0.5));
                b.push(ms(&latency, 0.99));
            }
        }
        let audit = on.health().await["audit"].clone();
        let latency = json!({
            "rate_per_s": rate, "seconds_per_round": seconds, "rounds": 3, "errors": errors,
            "off": {"p50_ms": median(p50.0.clone()), "p99_ms": median(p99.0.clone())},
            "on": {"p50_ms": median(p50.1.clone()), "p99_ms": median(p99.1.clone())},
            "audit_status": audit,
        });

        // 2. One million records against the bound, through the replica's own file writer.
        let bound: u64 = 64 << 20;
        let config = AuditConfig {
            dir: None,
            max_file_bytes: 8 << 20,
            max_total_bytes: bound,
            retention: Duration::from_secs(30 * 86_400),
            text: AuditText::Full,
            queue: 10_000,
        };
        let disk_dir = tempfile::tempdir().expect("dir");
        let replica_dir = disk_dir.path().join("r1");
        let mut files = AuditFiles::open(replica_dir.clone(), &config);
        // A reply record as the writer makes it (sealed text: random, so compression is honest).
        let started = Instant::now();
        let (mut peak, mut written) = (0u64, 0u64);
        let batch = 512;
        let mut i = 0u64;
        while i < records {
            let lines: Vec<Vec<u8>> = (0..batch.min(records - i))
                .map(|n| {
                    let sealed: String = (0..96).map(|_| char::from(b'A' + rand::random::<u8>() % 26)).collect();
                    format!("{{\"ts\":\"2026-12-03T04:00:00.000Z\",\"ts_ms\":{},\"direction\":\"out\",\"channel\":\"whatsapp\",\"conversation\":\"whatsapp:316{:08}\",\"message_id\":\"wamid.{}\",\"replica\":\"r1\",\"outcome\":\"sent\",\"skill\":\"tracking\",\"provider\":\"primary\",\"latency_ms\":1480,\"sealed\":\"{sealed}\"}}\n", 1_764_734_400_000 + i + n, (i + n) % 100_000, i + n).into_bytes()
                })
                .collect();
            i += lines.len() as u64;
            written += files.write(&lines).written;
            peak = peak.max(on_disk(&replica_dir));
        }
        let disk = json!({
            "records": records, "written": written, "seconds": started.elapsed().as_secs_f64(),
            "max_total_bytes": bound, "peak_bytes": peak, "final_bytes": on_disk(&replica_dir),
            "files": std::fs::read_dir(&replica_dir).map(|d| d.count()).unwrap_or(0),
        });

        // 3. Forgetting a customer with 1,000 messages.
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        for m in 0..1_000 {
            let body = json!({"session_id": "long", "message_id": format!("m{m}"), "text": "nog een vraag"});
            let response = http.post(on.url("/v1/webchat/messages")).json(&body).send().await.expect("send");
            assert_eq!(response.status(), 200);
        }
        let config_path = on.config_path().display().to_string();
        let started = Instant::now();
        let (code, out) = run_cli(&["forget", "--config", &config_path, "--customer", "webchat:long", "--json"], &[]).await;
        let forget_ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(code, 0, "{out}");
        let forgot: Value = out
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("forget's JSON report");
        json!({
            "latency": latency,
            "disk": disk,
            "forget": {"messages": 1000, "ms_including_process_start": forget_ms, "report": forgot},
        })
    });
    let l = &report["latency"];
    let ratio = |a: &Value, b: &Value| a.as_f64().unwrap_or(0.0) / b.as_f64().unwrap_or(1.0);
    let d = &report["disk"];
    let f = &report["forget"];
    let markdown = format!(
        "## Audit trail\n\n\
         | turn latency (open loop, {} msg/s, median of 3 rounds) | p50 | p99 |\n| --- | ---: | ---: |\n\
         | audit off | {:.2} ms | {:.2} ms |\n| audit on | {:.2} ms | {:.2} ms |\n| on / off | {:.3} | {:.3} |\n\n\
         {} records written in {:.1} s: peak {:.1} MiB on disk, at the end {:.1} MiB in {} files; bound {:.0} MiB.\n\n\
         `clawgate forget` for a customer with 1,000 messages: {:.0} ms (process start included); removed {} history entries, {} replies.\n",
        l["rate_per_s"],
        l["off"]["p50_ms"].as_f64().unwrap_or(0.0),
        l["off"]["p99_ms"].as_f64().unwrap_or(0.0),
        l["on"]["p50_ms"].as_f64().unwrap_or(0.0),
        l["on"]["p99_ms"].as_f64().unwrap_or(0.0),
        ratio(&l["on"]["p50_ms"], &l["off"]["p50_ms"]),
        ratio(&l["on"]["p99_ms"], &l["off"]["p99_ms"]),
        d["written"],
        d["seconds"].as_f64().unwrap_or(0.0),
        d["peak_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
        d["final_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
        d["files"],
        d["max_total_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
        f["ms_including_process_start"].as_f64().unwrap_or(0.0),
        f["report"]["history_entries"],
        f["report"]["replies"],
    );
    write_results("audit", &report, &markdown);
}
