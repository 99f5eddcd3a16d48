//! Test harness: real `redis-server` processes and real `clawgate` replicas on free loopback
//! ports, the in-process mock LLM, and small helpers that read like the scenarios they serve.
//! Everything started here is stopped by its handle (kill on drop), never by name.

#![allow(dead_code)]

pub use clawgate_fakes::mock_llm::MockLlm;
pub mod browser;
pub mod hosts;
pub mod redis_cluster;
pub mod sentinel;
pub mod sse;

use clawgate_fakes::mock_llm::Options;
use clawgate_fakes::mock_platforms::{MockPlatforms, Sent};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// An HTTP client for talking to the processes a test started: it never goes through a proxy
/// named in the environment (HTTP_PROXY would otherwise catch loopback traffic too).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// The last `n` lines of `text`, each ending in a newline.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_explained(timeout, what, String::new, check).await
}

/// [`eventually`], whose panic also carries what `explain` finds at that moment (logs, say).
pub async fn eventually_explained<T, F, Fut>(
    timeout: Duration,
    what: &str,
    explain: impl FnOnce() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                explain()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a reply was OK or the given error code.
trait OkOrCode {
    fn is_ok_or_else_code(&self, code: &str) -> bool;
}

impl<T> OkOrCode for redis::RedisResult<T> {
    fn is_ok_or_else_code(&self, code: &str) -> bool {
        match self {
            Ok(_) => true,
            Err(e) => e.code() == Some(code),
        }
    }
}

/// A `redis-server` on a free port with its own data directory.
pub struct TestRedis {
    pub port: u16,
    dir: TempDir,
    /// Options after the defaults (a later one wins), kept for restarts.
    extra: Vec<String>,
    child: Option<Child>,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        TestRedis::start_with(&[]).await
    }

    /// A server with `extra` options after the defaults (no persistence, loopback only).
    pub async fn start_with(extra: &[&str]) -> TestRedis {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let mut redis = TestRedis {
                port: free_port(),
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            if redis.launch().await {
                return redis;
            }
            dir = redis.dir;
        }
        panic!("redis-server did not start (is it installed? `apt-get install redis-server`)");
    }

    /// A server on `port` (a cluster node must be on a port it announces) with `extra` options.
    pub async fn start_on(port: u16, extra: &[&str]) -> TestRedis {
        let mut redis = TestRedis {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        assert!(
            redis.launch().await,
            "redis-server did not start on port {port}"
        );
        redis
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's own temporary folder (its `--dir` unless `extra` names another).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn launch(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // A server that wants a password answers NOAUTH: it is up.
            if let Ok(mut conn) = self.connect().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok_or_else_code("NOAUTH")
            {
                return true;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to be gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port (empty: it runs without persistence).
    pub async fn restart(&mut self) {
        self.stop().await;
        assert!(
            self.launch().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }

    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.connect().await.expect("connect to test redis");
        cmd.query_async(&mut conn).await.expect("redis query")
    }
}

/// The mock LLM, in process, with the given latency.
pub async fn mock_llm(latency_ms: u64) -> MockLlm {
    MockLlm::spawn(Options {
        latency_ms,
        ..Options::default()
    })
    .await
    .expect("mock LLM")
}

/// A provider entry of the `llm` block.
pub fn openai_provider(name: &str, mock: &MockLlm, timeout_ms: u64, max_retries: u32) -> Value {
    json!({"name": name, "type": "openai-compatible", "endpoint": mock.openai_endpoint(),
           "apiKey": "test-key", "model": "gpt-4o-mini", "timeout": timeout_ms, "maxRetries": max_retries})
}

/// An Ollama provider entry of the `llm` block.
pub fn ollama_provider(name: &str, mock: &MockLlm, timeout_ms: u64) -> Value {
    json!({"name": name, "type": "ollama", "endpoint": mock.ollama_endpoint(),
           "model": "llama3.1:8b", "timeout": timeout_ms, "maxRetries": 0})
}

/// The app secret of the shared WhatsApp fixtures' signature vector.
pub const WHATSAPP_APP_SECRET: &str = "velocity-test-app-secret";
pub const WHATSAPP_VERIFY_TOKEN: &str = "velocity-verify";
pub const TELEGRAM_SECRET: &str = "velocity-telegram-secret";
pub const API_TOKEN: &str = "velocity-api-token";

/// The mock platforms, in process.
pub async fn mock_platforms() -> MockPlatforms {
    MockPlatforms::spawn().await.expect("mock platforms")
}

/// A `channels` block with WhatsApp, Telegram and the API channel, sending to `platforms`.
pub fn channels_config(platforms: &MockPlatforms) -> Value {
    json!({
        "whatsapp": {"verifyToken": WHATSAPP_VERIFY_TOKEN, "appSecret": WHATSAPP_APP_SECRET,
                     "accessToken": "test-access-token", "phoneNumberId": "106540352242922",
                     "apiBase": platforms.base_url(), "apiVersion": "v21.0"},
        "telegram": {"botToken": "7000000001:TEST-token", "secretToken": TELEGRAM_SECRET,
                     "apiBase": platforms.base_url()},
        "api": {"token": API_TOKEN},
    })
}

/// A wire-format fixture's path (`fixtures/` at the repository's root).
pub fn fixture_path(name: &str) -> PathBuf {
    repository_path(&format!("fixtures/{name}"))
}

/// Replies the fake platforms received, counted per recipient: once at least `expected` arrived
/// (within `timeout`), and a second later, so a reply sent twice is counted twice.
pub async fn replies_per_recipient(
    platforms: &MockPlatforms,
    expected: usize,
    timeout: Duration,
) -> std::collections::HashMap<String, usize> {
    eventually(timeout, "every reply", || async {
        (platforms.sent().len() >= expected).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut counts = std::collections::HashMap::new();
    for reply in platforms.sent() {
        *counts.entry(reply.to).or_default() += 1;
    }
    counts
}

/// A wire-format fixture's exact bytes.
pub fn fixture_verbatim(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A fixture as a platform would send it now: an inbound WhatsApp notification or Telegram
/// update has its messages' send times (`timestamp`, `date`) set to the current time, since
/// clawgate does not answer messages older than the platforms' retry window (the reference
/// payloads are from 2025). Every other fixture is returned verbatim.
pub fn fixture(name: &str) -> Vec<u8> {
    let bytes = fixture_verbatim(name);
    let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else {
        return bytes;
    };
    let inbound = doc["object"] == "whatsapp_business_account" || doc.get("update_id").is_some();
    if !inbound {
        return bytes;
    }
    fn refresh(value: &mut Value, now: u64) {
        match value {
            Value::Object(fields) => {
                for (key, field) in fields.iter_mut() {
                    match (key.as_str(), &*field) {
                        ("timestamp", Value::String(_)) => *field = json!(now.to_string()),
                        ("date", Value::Number(_)) => *field = json!(now),
                        _ => refresh(field, now),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| refresh(item, now)),
            _ => {}
        }
    }
    refresh(&mut doc, now_secs());
    doc.to_string().into_bytes()
}

/// VeloCity's packages, the data the mock tracking API serves (the example's own file).
pub fn packages_file() -> PathBuf {
    repository_path("examples/velocity/data/packages.json")
}

/// Seconds since the Unix epoch, as platforms stamp messages.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A WhatsApp notification with one text message, sent now.
pub fn whatsapp_text(from: &str, wamid: &str, text: &str) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "31201234567", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Test"}, "wa_id": from}],
        "messages": [{"from": from, "id": wamid, "timestamp": now_secs().to_string(), "type": "text", "text": {"body": text}}]}}]}]})
    .to_string()
    .into_bytes()
}

/// `sha256=<hex>` of `body` under `secret`, as Meta signs it.
pub fn whatsapp_signature(body: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Waits until the platforms have received `count` messages, and returns them.
pub async fn sent_messages(platforms: &MockPlatforms, count: usize) -> Vec<Sent> {
    eventually(
        Duration::from_secs(20),
        &format!("{count} messages sent to the platforms"),
        || async {
            let sent = platforms.sent();
            (sent.len() >= count).then_some(sent)
        },
    )
    .await
}

/// A path in the repository, from the repository's root. Tests read nothing outside it
/// (`scripts/test` checks): a user's clone has nothing beside it.
pub fn repository_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A file of the repository, by its path from the repository's root.
pub fn repository_file(path: &str) -> String {
    let path = repository_path(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file of the repository's `deploy/` folder.
pub fn deploy_file(name: &str) -> String {
    repository_file(&format!("deploy/{name}"))
}

/// The repository's example skills.
pub fn example_skills() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/velocity/skills")
}

/// A config with fast failure detection for tests and the given providers.
pub fn test_config(providers: Vec<Value>) -> Value {
    json!({
        "workers": {"claimIdleMs": 1000, "leaseTtlMs": 2000, "concurrency": 64},
        "webchat": {"replyWaitMs": 15000, "sessionTokens": "off"},
        "gateway": {"shutdownGraceMs": 10000},
        "redis": {"commandTimeoutMs": 500},
        "skills": {"dir": example_skills()},
        "agent": {"defaultLanguage": "en"},
        "llm": {"providers": providers},
    })
}

/// The most common scenario: a Redis, a mock LLM answering after `latency_ms` as the only
/// provider (`primary`, 10 s timeout), and one replica `r1` on them.
pub async fn one_replica(latency_ms: u64) -> (TestRedis, MockLlm, Gateway) {
    let redis = TestRedis::start().await;
    let llm = mock_llm(latency_ms).await;
    let gateway = Gateway::start(
        test_config(vec![openai_provider("primary", &llm, 10_000, 0)]),
        &redis.url(),
        "r1",
    )
    .await;
    (redis, llm, gateway)
}

/// A `clawgate serve` process.
pub struct Gateway {
    pub addr: SocketAddr,
    pub replica_id: String,
    /// From spawning the process to the first successful readiness (or health) answer.
    pub ready_after: Duration,
    child: Option<Child>,
    dir: TempDir,
    http: reqwest::Client,
}

/// How a gateway is started.
pub struct GatewaySpec {
    pub config: Value,
    pub redis_url: String,
    pub replica_id: String,
    /// Pass listen address, replica id and Redis URL as environment variables, not flags.
    pub via_env: bool,
    /// Where the replica's stderr goes instead of its log file (e.g. `/dev/full`).
    pub stderr: Option<PathBuf>,
    /// Extra environment variables (failpoints).
    pub env: Vec<(String, String)>,
    /// Wait for `/readyz` 200 (else for `/healthz` 200).
    pub wait_ready: bool,
}

impl GatewaySpec {
    pub fn new(config: Value, redis_url: &str, replica_id: &str) -> GatewaySpec {
        GatewaySpec {
            config,
            redis_url: redis_url.to_string(),
            replica_id: replica_id.to_string(),
            via_env: false,
            stderr: None,
            env: Vec::new(),
            wait_ready: true,
        }
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_clawgate")
}

/// Runs `clawgate <args>` to completion with `env` set (and no `LLM_API_KEY` from the test's own
/// environment): exit code and stdout + stderr.
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(binary())
        .args(args)
        .env_remove("LLM_API_KEY")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run clawgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

impl Gateway {
    pub async fn start(config: Value, redis_url: &str, replica_id: &str) -> Gateway {
        Gateway::spawn(GatewaySpec::new(config, redis_url, replica_id)).await
    }

    pub async fn spawn(spec: GatewaySpec) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("clawgate.json");
        std::fs::write(&config_path, spec.config.to_string()).expect("write config");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = match &spec.stderr {
            Some(path) => std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("stderr target"),
            None => std::fs::File::create(dir.path().join("gateway.log")).expect("log file"),
        };
        let spawned = Instant::now();
        // `CLAWGATE_TEST_WRAPPER="valgrind --tool=massif"` runs replicas under a profiler.
        let wrapper = std::env::var("CLAWGATE_TEST_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        command.arg("serve").arg("--config").arg(&config_path);
        if spec.via_env {
            command
                .env("CLAWGATE_LISTEN", addr.to_string())
                .env("CLAWGATE_REPLICA_ID", &spec.replica_id)
                .env("CLAWGATE_REDIS_URL", &spec.redis_url);
        } else {
            command
                .args(["--listen", &addr.to_string()])
                .args(["--replica-id", &spec.replica_id]);
            // An empty URL: the config's `redis` section says where Redis is (Sentinel).
            if !spec.redis_url.is_empty() {
                command.args(["--redis-url", &spec.redis_url]);
            }
        }
        let child = command
            .env("CLAWGATE_LOG", "info,clawgate_gateway=debug")
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn clawgate");
        let mut gateway = Gateway {
            addr,
            replica_id: spec.replica_id,
            ready_after: Duration::ZERO,
            child: Some(child),
            dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        };
        let path = if spec.wait_ready {
            "/readyz"
        } else {
            "/healthz"
        };
        let url = gateway.url(path);
        // Poll finely: the benchmark reports this as the time to ready.
        let deadline = spawned + Duration::from_secs(15);
        loop {
            if let Ok(response) = gateway.http.get(&url).send().await
                && response.status().is_success()
            {
                gateway.ready_after = spawned.elapsed();
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer {path} within 15 s:\n{}",
                    gateway.replica_id,
                    gateway.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The config file the replica runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("clawgate.json")
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("gateway is running") as i32
    }

    /// `POST /v1/webchat/messages`; `wait_ms` overrides the reply wait.
    pub async fn send(
        &self,
        session: &str,
        message_id: &str,
        text: &str,
        wait_ms: Option<u64>,
    ) -> (u16, Value) {
        let url = match wait_ms {
            Some(ms) => self.url(&format!("/v1/webchat/messages?wait_ms={ms}")),
            None => self.url("/v1/webchat/messages"),
        };
        let body = json!({"session_id": session, "message_id": message_id, "text": text});
        self.post(&url, body.to_string()).await
    }

    pub async fn post(&self, url: &str, body: String) -> (u16, Value) {
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST` raw bytes with extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        // A replica that is gone answers nothing: status 0, as a platform's retry would see it.
        let Ok(response) = request.body(body).send().await else {
            return (0, Value::Null);
        };
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A WhatsApp webhook POST signed with the fixtures' app secret.
    pub async fn whatsapp(&self, body: Vec<u8>) -> (u16, Value) {
        let signature = whatsapp_signature(&body, WHATSAPP_APP_SECRET);
        self.post_raw(
            "/webhooks/whatsapp",
            body,
            &[("x-hub-signature-256", &signature)],
        )
        .await
    }

    /// A Telegram webhook POST with the right secret token.
    pub async fn telegram(&self, body: Vec<u8>) -> (u16, Value) {
        self.post_raw(
            "/webhooks/telegram",
            body,
            &[("x-telegram-bot-api-secret-token", TELEGRAM_SECRET)],
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("body")
    }

    /// The reply text of a message once committed, polling the status endpoint.
    pub async fn reply_of(&self, session: &str, message_id: &str) -> Value {
        let path = format!("/v1/webchat/sessions/{session}/messages/{message_id}");
        eventually(
            Duration::from_secs(30),
            &format!("a reply to {session}/{message_id}"),
            || {
                let path = path.clone();
                async move {
                    let (status, body) = self.get(&path).await;
                    (status == 200).then_some(body["reply"].clone())
                }
            },
        )
        .await
    }

    pub async fn history(&self, session: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/v1/webchat/sessions/{session}/messages"))
            .await;
        assert_eq!(status, 200, "{body}");
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    /// The history of a private session.
    pub async fn history_with_token(&self, session: &str, token: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.url(&format!("/v1/webchat/sessions/{session}/messages")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET history");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    pub async fn health(&self) -> Value {
        self.get("/healthz").await.1
    }

    /// The value of a counter or gauge line in `/metrics`, summed over label sets matching
    /// `labels` (a substring such as `provider="primary"`).
    /// The sum of the series of metric `name` whose labels contain `labels`; fails the test when
    /// there is no such series (a missing series is not a zero: a typo in a name must not pass
    /// as "nothing happened").
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        self.try_metric(name, labels).await.unwrap_or_else(|| {
            panic!(
                "no series {name} with {labels:?} in /metrics of {}",
                self.replica_id
            )
        })
    }

    /// The same, `None` while no such series exists (for waiting until one counts something).
    pub async fn try_metric(&self, name: &str, labels: &str) -> Option<f64> {
        let text = self.get_text("/metrics").await;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split(['{', ' '])
                    .next()
                    .is_some_and(|series| series == name)
                    && l.contains(labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal");
    }

    /// SIGKILL: a crash, nothing is cleaned up.
    pub async fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
    }

    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGHUP: re-read the config file now.
    pub fn hangup(&self) {
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    /// Replaces the config file the replica runs with (as an operator edits it).
    pub fn rewrite_config(&self, config: &Value) {
        let path = self.config_path();
        let staged = path.with_extension("json.new");
        std::fs::write(&staged, config.to_string()).expect("write config");
        // Editors and config managers replace the file by rename.
        std::fs::rename(&staged, &path).expect("rename config");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .ok()?
            .ok()?;
        self.child = None;
        status.code()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- logs of replica {} ----\n{}",
                self.replica_id,
                self.logs()
            );
        }
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// The user turns the mock LLM saw, read from its answer (`[mock] user_turns=N last="…"`).
pub fn user_turns(reply_text: &str) -> usize {
    reply_text
        .split("user_turns=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a mock answer: {reply_text}"))
}

/// `(customer, message)` of the last message the mock LLM saw, when the load loops name their
/// messages `c{customer} m{message}` (`[mock] user_turns=N last="c3 m7"`).
pub fn last_customer_message(reply_text: &str) -> Option<(usize, usize)> {
    reply_text
        .split("last=\"")
        .nth(1)?
        .trim_end_matches('"')
        .strip_prefix('c')?
        .split_once(" m")
        .and_then(|(c, m)| Some((c.parse().ok()?, m.parse().ok()?)))
}

/// The first of `count` consecutive ports that were free a moment ago on 127.0.0.1, in
/// 22700-29999: above the Redis Cluster nodes' ports (20000-22699, see `cluster_ports`) and
/// below their cluster-bus ports (+10000) and the kernel's ephemeral ports (32768 and up), so a
/// replica of one test never takes the port of another test's master while it restarts, nor an
/// outgoing connection one of these ports before its server starts.
pub fn free_port_range(count: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..200 {
        // Spread over the range so concurrent tests (and test processes) pick different ranges.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mixed = seed
            .wrapping_add(std::process::id().wrapping_mul(7919))
            .wrapping_add(n.wrapping_mul(104_729));
        let base = 22_700 + (mixed % (7_300 - u32::from(count))) as u16;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {count} consecutive free ports on 127.0.0.1");
}

/// A `clawgate cluster up` process: Redis, replicas and nginx, stopped (SIGTERM, in order) when
/// dropped.
pub struct TestCluster {
    child: Option<Child>,
    /// Where nginx listens.
    pub listen: SocketAddr,
    /// The cluster's state directory.
    pub state_dir: PathBuf,
    _dir: TempDir,
    http: reqwest::Client,
    /// A client that keeps no idle connections: a resend never reuses one nginx is closing.
    fresh_http: reqwest::Client,
}

impl TestCluster {
    /// Starts `replicas` replicas with `config` and waits until nginx answers.
    pub async fn start(config: Value, replicas: u16) -> TestCluster {
        TestCluster::start_in(tempfile::tempdir().expect("temp dir"), config, replicas).await
    }

    /// The same in `dir`, whose `state` directory may hold an earlier run's Redis data.
    pub async fn start_in(dir: TempDir, config: Value, replicas: u16) -> TestCluster {
        TestCluster::start_with(dir, config, replicas, &[]).await
    }

    /// The same with more `cluster up` arguments (`--redis sentinel`).
    pub async fn start_with(
        dir: TempDir,
        config: Value,
        replicas: u16,
        extra: &[&str],
    ) -> TestCluster {
        let config_path = dir.path().join("clawgate.json");
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let state_dir = dir.path().join("state");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        // Room to scale up to 5 replicas.
        let first_port = free_port_range(replicas.max(5));
        let log = std::fs::File::create(dir.path().join("cluster.log")).expect("log file");
        let child = Command::new(binary())
            .args(["cluster", "up", "--config"])
            .arg(&config_path)
            .args([
                "--replicas",
                &replicas.to_string(),
                "--listen",
                &listen.to_string(),
            ])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--first-port", &first_port.to_string()])
            .args(extra)
            .env_remove("LLM_API_KEY")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn clawgate cluster up");
        let cluster = TestCluster {
            child: Some(child),
            listen,
            state_dir,
            _dir: dir,
            http: http_client(),
            fresh_http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        };
        // The supervisor announces itself once every part answers and its state file is written.
        let log_path = cluster._dir.path().join("cluster.log");
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        eventually_explained(
            Duration::from_secs(60),
            "`clawgate cluster up` to announce itself",
            || cluster.log_tails(&read_log()),
            || {
                let log = read_log();
                async move { log.contains("clawgate cluster up: http://").then_some(()) }
            },
        )
        .await;
        cluster
    }

    /// The supervisor's output and the last lines of every log it keeps, for a failure message:
    /// what a start that never finished was waiting for.
    fn log_tails(&self, supervisor_log: &str) -> String {
        let mut out = format!(
            "--- cluster up's output:\n{}",
            last_lines(supervisor_log, 20)
        );
        let logs = self.state_dir.join("logs");
        let mut files: Vec<_> = std::fs::read_dir(&logs)
            .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            out.push_str(&format!(
                "--- {}:\n{}",
                file.display(),
                last_lines(&text, 8)
            ));
        }
        out
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// `POST /v1/webchat/messages` through nginx. A request that fails before any answer is sent
    /// again with the same message id, as the widget does: when the supervisor reloads nginx (a
    /// replica taken out of or back into the upstream), the old workers close their idle
    /// keep-alive connections, and a request racing that close never reached nginx (HTTP
    /// keep-alive's known race). A reload closes every pooled connection at once, so resends go
    /// on new connections. Dedupe makes the resend safe: an accepted message is not queued
    /// twice, and a lost one would still show as a missing or doubled turn.
    pub async fn send(&self, session: &str, message_id: &str, text: &str) -> (u16, Value) {
        let body = json!({"session_id": session, "message_id": message_id, "text": text});
        let mut last_error = String::new();
        for (attempt, http) in [&self.http, &self.fresh_http, &self.fresh_http]
            .into_iter()
            .enumerate()
        {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match http
                .post(self.url("/v1/webchat/messages"))
                .json(&body)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    return (status, response.json().await.unwrap_or(Value::Null));
                }
                Err(e) => last_error = format!("{e:?}"),
            }
        }
        (0, json!({"error": last_error}))
    }

    /// A message through nginx and its reply: a `202` (the reply was not ready within the wait,
    /// or the replica holding the request drained) is followed by fetching the reply. The status
    /// is the first non-2xx seen, or 200.
    pub async fn converse(&self, session: &str, message_id: &str, text: &str) -> (u16, Value) {
        let (status, body) = self.send(session, message_id, text).await;
        if status != 202 {
            return (status, body);
        }
        let url = self.url(&format!(
            "/v1/webchat/sessions/{session}/messages/{message_id}"
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(response) = self.http.get(&url).send().await {
                let status = response.status().as_u16();
                if status == 200 {
                    return (200, response.json().await.unwrap_or(Value::Null));
                }
                if status != 202 && status != 404 {
                    let body = response.text().await.unwrap_or_default();
                    return (status, json!({"fetching_reply": body}));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (202, json!({"error": "no reply within 60 s"}))
    }

    /// A signed WhatsApp notification with one text message, through nginx; the HTTP status.
    pub async fn whatsapp(&self, from: &str, wamid: &str, text: &str) -> u16 {
        self.whatsapp_outcome(from, wamid, text)
            .await
            .unwrap_or_default()
    }

    /// The same, with the transport error (refused, reset, closed) when there was no answer.
    pub async fn whatsapp_outcome(
        &self,
        from: &str,
        wamid: &str,
        text: &str,
    ) -> Result<u16, String> {
        let body = whatsapp_text(from, wamid, text);
        let signature = whatsapp_signature(&body, WHATSAPP_APP_SECRET);
        self.http
            .post(self.url("/webhooks/whatsapp"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    }

    /// A web-chat conversation's history as stored in the cluster's Redis, oldest first.
    pub async fn history(&self, session: &str) -> Vec<Value> {
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("oc:conv:{{webchat:{session}}}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.redis().await)
            .await
            .expect("history");
        entries
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect()
    }

    /// Gives the temporary directory back (after [`TestCluster::stop`]), to start again in it.
    pub fn into_dir(mut self) -> TempDir {
        std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"))
    }

    /// `clawgate cluster status --json`.
    pub async fn status(&self) -> Value {
        let state_dir = self.state_dir.display().to_string();
        let (code, out) = run_cli(
            &["cluster", "status", "--state-dir", &state_dir, "--json"],
            &[],
        )
        .await;
        assert_eq!(code, 0, "{out}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The Redis the cluster's replicas write to (a Sentinel group's primary).
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(self.state_dir.join("cluster.json")).expect("state file"),
        )
        .expect("state json");
        let url = state["redis"]["url"].as_str().expect("redis url");
        clawgate_cluster::supervisor::redis_connection(url)
            .await
            .expect("redis connection")
            .0
    }

    /// The logs of the supervisor and of every part.
    pub fn logs(&self) -> String {
        let mut text =
            std::fs::read_to_string(self._dir.path().join("cluster.log")).unwrap_or_default();
        let nginx_errors = self.state_dir.join("nginx-error.log");
        text.push_str(&format!("\n--- {}\n", nginx_errors.display()));
        text.push_str(&std::fs::read_to_string(nginx_errors).unwrap_or_default());
        if let Ok(entries) = std::fs::read_dir(self.state_dir.join("logs")) {
            for entry in entries.flatten() {
                text.push_str(&format!("\n--- {}\n", entry.path().display()));
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }

    /// SIGTERM to the supervisor, then wait for it (it stops everything in order).
    pub async fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|s| s.code())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        // Bounded: the supervisor stops nginx, the replicas (30 s grace each) and Redis, then
        // exits.
        for _ in 0..1_400 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.start_kill();
    }
}
