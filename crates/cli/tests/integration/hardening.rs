//! Faults that must never cost an acknowledged message: a full log disk, a Redis that refuses
//! writes because its own disk is full, a turn that panics.

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_stderr_is_a_full_disk_serves_answers_and_stops_on_sigterm() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut spec = GatewaySpec::new(
        test_config(vec![openai_provider("primary", &llm, 10_000, 0)]),
        &redis.url(),
        "r1",
    );
    spec.stderr = Some(PathBuf::from("/dev/full"));
    let mut gateway = Gateway::spawn(spec).await;
    let (status, body) = gateway.send("full", "m1", "hello", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["text"], "[mock] user_turns=1 last=\"hello\"");
    let health = gateway.health().await;
    assert!(
        health["log_lines_dropped"].as_u64().unwrap_or(0) > 0,
        "every log line failed to write, and each is counted: {health}"
    );
    gateway.terminate();
    assert_eq!(
        gateway.exit_code(Duration::from_secs(15)).await,
        Some(0),
        "SIGTERM must drain and stop a replica that cannot log"
    );
}

/// `INFO persistence`'s `rdb_last_bgsave_status` once no save runs.
async fn last_bgsave_status(redis: &TestRedis) -> Option<String> {
    let info: String = redis.query(redis::cmd("INFO").arg("persistence")).await;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    (field("rdb_bgsave_in_progress:").as_deref() == Some("0"))
        .then(|| field("rdb_last_bgsave_status:"))
        .flatten()
}

/// Makes Redis's next snapshot fail (its folder is gone) or succeed (it is back), and waits
/// for the outcome: with a save point configured, a failed snapshot makes Redis refuse every
/// write with `MISCONF`, as a full disk does. (Redis works in its folder: a folder made anew
/// must be made its folder again, which needs `enable-protected-configs`.)
async fn snapshot(redis: &TestRedis, data: &Path, disk_works: bool) {
    if disk_works {
        std::fs::create_dir_all(data).expect("recreate the data folder");
        let _: redis::Value = redis
            .query(
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("dir")
                    .arg(data.to_str()),
            )
            .await;
    } else {
        std::fs::remove_dir_all(data).expect("remove the data folder");
    }
    let _: redis::Value = redis.query(&redis::cmd("BGSAVE")).await;
    let wanted = if disk_works { "ok" } else { "err" };
    eventually(Duration::from_secs(10), "the snapshot to end", || async {
        (last_bgsave_status(redis).await.as_deref() == Some(wanted)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_gets_503_and_readiness_fails_then_the_message_is_answered_with_context()
 {
    let data_root = tempfile::tempdir().expect("temp dir");
    let data = data_root.path().join("rdb");
    std::fs::create_dir_all(&data).expect("data folder");
    let redis = TestRedis::start_with(&[
        "--save",
        "3600 1",
        "--dir",
        data.to_str().expect("utf-8 path"),
        "--enable-protected-configs",
        "yes",
    ])
    .await;
    let llm = mock_llm(0).await;
    let gateway = Gateway::start(
        test_config(vec![openai_provider("primary", &llm, 10_000, 0)]),
        &redis.url(),
        "r1",
    )
    .await;
    for (id, text) in [("m1", "my parcel"), ("m2", "VC482913577NL")] {
        let (status, body) = gateway.send("disk", id, text, None).await;
        assert_eq!(status, 200, "{body}");
    }

    snapshot(&redis, &data, false).await;
    let response = http_client()
        .post(gateway.url("/v1/webchat/messages"))
        .json(&serde_json::json!({"session_id": "disk", "message_id": "m3", "text": "when?"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("MISCONF"),
        "the answer names the cause: {body}"
    );
    let (status, ready) = gateway.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["failing"]
            .to_string()
            .contains("redis_refusing_writes"),
        "{ready}"
    );
    let health = gateway.health().await;
    assert_eq!(
        (health["redis"].as_str(), health["degraded"].as_bool()),
        (Some("refusing_writes"), Some(false)),
        "refusing writes is not an outage to answer from memory: {health}"
    );
    // A webhook gets the same: 503, so the platform retries.
    assert_eq!(
        gateway
            .post(
                &gateway.url("/v1/webchat/messages"),
                serde_json::json!({"session_id": "disk2", "message_id": "1", "text": "hi"})
                    .to_string()
            )
            .await
            .0,
        503
    );

    snapshot(&redis, &data, true).await;
    eventually(Duration::from_secs(10), "readiness to return", || async {
        (gateway.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = gateway.send("disk", "m3", "when?", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["reply"]["text"], "[mock] user_turns=3 last=\"when?\"",
        "the retried message is answered with the whole conversation"
    );
    assert_eq!(
        gateway
            .metric("clawgate_messages_accepted_total", "store=\"memory\"")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_panics_gives_its_message_back_and_it_is_dead_lettered_after_max_deliveries() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["workers"]["maxDeliveries"] = 3.into();
    // A long claim time: only an explicit release can hand the entry on quickly.
    config["workers"]["claimIdleMs"] = 3000.into();
    let mut spec = GatewaySpec::new(config, &redis.url(), "r1");
    spec.env = vec![(
        "CLAWGATE_FAILPOINT_TURN_PANIC".to_string(),
        "PANIC-HERE".to_string(),
    )];
    let gateway = Gateway::spawn(spec).await;
    let (status, _) = gateway
        .send("boom", "m1", "please PANIC-HERE", Some(0))
        .await;
    assert_eq!(status, 202);
    // Each attempt panics; the entry comes back each time and is dead-lettered, not stuck.
    let letters: Vec<redis::Value> = eventually(
        Duration::from_secs(30),
        "the panicking message in the dead-letter stream",
        || async {
            let letters: Vec<redis::Value> = redis
                .query(redis::cmd("XRANGE").arg("oc:deadletter").arg("-").arg("+"))
                .await;
            (!letters.is_empty()).then_some(letters)
        },
    )
    .await;
    assert!(format!("{letters:?}").contains("PANIC-HERE"), "{letters:?}");
    assert!(gateway.metric("clawgate_turns_failed_total", "panic").await >= 3.0);
    // The conversation is not locked by the dead turn: the next message is answered.
    let (status, body) = gateway.send("boom", "m2", "hello again", None).await;
    assert_eq!(status, 200, "{body}");
    let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
    assert_eq!(inbox, 0);
    assert_eq!(gateway.get("/readyz").await.0, 200);
}

/// Raises this test process's open-files limit, so it can hold thousands of connections.
fn allow_many_descriptors() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A replica with `gateway` settings merged into the test config, on a Redis of its own.
async fn replica_with_gateway(gateway: Value) -> (TestRedis, Gateway) {
    let redis = TestRedis::start().await;
    let mut config = test_config(vec![]);
    for (key, value) in gateway.as_object().expect("object") {
        config["gateway"][key] = value.clone();
    }
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    (redis, gateway)
}

/// Waits until the peer closes `stream` (EOF or reset) or `within` passes; true if it closed.
async fn closed_by_peer(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or 400 answer first is fine; keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_are_closed_within_the_idle_timeout_and_requests_still_served()
 {
    allow_many_descriptors();
    let (_redis, gateway) = replica_with_gateway(serde_json::json!({"idleTimeoutMs": 2000})).await;
    let addr = gateway.url("").trim_start_matches("http://").to_string();
    let opened = std::time::Instant::now();
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    let (status, body) = gateway.send("busy", "m1", "hello", None).await;
    assert_eq!(
        status, 200,
        "a normal request is answered meanwhile: {body}"
    );
    let mut still_open = 0;
    for stream in &mut idle {
        let left = Duration::from_millis(3500).saturating_sub(opened.elapsed());
        if !closed_by_peer(stream, left).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "idle connections left open 3.5 s after opening, with idleTimeoutMs 2000"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "closed too early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_within_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let (_redis, gateway) =
        replica_with_gateway(serde_json::json!({"headerTimeoutMs": 1000})).await;
    let addr = gateway.url("").trim_start_matches("http://").to_string();
    let opened = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        stream
            .write_all(b"POST /v1/webchat/messages HTTP/1.1\r\nHost: clawgate\r\n")
            .await
            .expect("write");
        slow.push(stream);
    }
    // One more header line each, never the end of the head.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for stream in &mut slow {
        let _ = stream.write_all(b"X-Slow: 1\r\n").await;
    }
    let mut still_open = 0;
    for stream in &mut slow {
        let left = Duration::from_millis(2500).saturating_sub(opened.elapsed());
        if !closed_by_peer(stream, left).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "slow heads still open 2.5 s in (headerTimeoutMs 1000)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_oldest_idle_connections_make_way_for_new_clients() {
    let (_redis, gateway) = replica_with_gateway(serde_json::json!({"maxConnections": 50})).await;
    let addr = gateway.url("").trim_start_matches("http://").to_string();
    // Fill the cap with idle connections (the test client's own pooled one among them).
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new client still gets its answer: the oldest idle connections were closed for it.
    let fresh = http_client();
    let answer = fresh
        .post(gateway.url("/v1/webchat/messages"))
        .json(&serde_json::json!({"session_id": "cap", "message_id": "m1", "text": "hello"}))
        .send()
        .await
        .expect("a new client at the cap is served");
    assert_eq!(answer.status(), 200);
    let mut closed = 0;
    for stream in &mut held {
        if closed_by_peer(stream, Duration::from_millis(20)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 10,
        "only {closed} of the flood's connections were closed"
    );
    let open: f64 = fresh
        .get(gateway.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
        .lines()
        .find_map(|l| l.strip_prefix("clawgate_connections_open "))
        .and_then(|v| v.parse().ok())
        .expect("clawgate_connections_open");
    assert!(open <= 50.0, "{open} connections open over a cap of 50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_says_at_warn_level_why_redis_cannot_be_used_and_what_happens_instead() {
    let redis = TestRedis::start_with(&["--requirepass", "the-right-one"]).await;
    let mut spec = GatewaySpec::new(test_config(vec![]), &redis.url(), "r1");
    spec.wait_ready = false;
    let gateway = Gateway::spawn(spec).await;
    let logs = eventually(
        Duration::from_secs(10),
        "the warning about Redis",
        || async {
            let logs = gateway.logs();
            logs.contains("Redis refused the credentials")
                .then_some(logs)
        },
    )
    .await;
    let line = logs
        .lines()
        .find(|l| l.contains("Redis refused the credentials"))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("answering from this replica's memory"),
        "the operator learns what the replica does meanwhile: {line}"
    );
    assert!(
        !logs.contains("the-right-one"),
        "a password never reaches the log"
    );
}
