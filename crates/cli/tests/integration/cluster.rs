//! `clawgate cluster`: real nginx, real redis-server and real replicas supervised on one host,
//! driven through nginx like a platform would.

use crate::support::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

fn cluster_config(llm: &MockLlm) -> Value {
    let mut config = test_config(vec![openai_provider("primary", llm, 10_000, 0)]);
    // These customers write every few milliseconds; flood control would (rightly) slow them.
    config["conversations"] = json!({"floodControl": {"messagesPerMinute": 0}});
    config
}

fn pid_alive(pid: i64) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_serves_through_nginx_reports_its_parts_and_stops_them_all() {
    let llm = mock_llm(0).await;
    let mut cluster = TestCluster::start(cluster_config(&llm), 2).await;

    let (status, body) = cluster.send("s", "m1", "hello").await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = cluster.send("s", "m2", "and again").await;
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
        2,
        "the conversation keeps its context across replicas: {body}"
    );

    let report = cluster.status().await;
    let replicas = report["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "{report}");
    for replica in replicas {
        assert!(replica["id"].is_string(), "{report}");
        assert!(replica["port"].is_u64(), "{report}");
        assert_eq!(replica["healthy"], true, "{report}");
        assert!(pid_alive(replica["pid"].as_i64().expect("pid")), "{report}");
    }
    assert_eq!(report["redis"]["up"], true, "{report}");
    let nginx_pid = report["nginx"]["pid"].as_i64().expect("nginx pid");
    assert!(pid_alive(nginx_pid));

    let pids: Vec<i64> = replicas
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .chain([
            nginx_pid,
            report["redis"]["pid"].as_i64().expect("redis pid"),
        ])
        .collect();
    assert_eq!(cluster.stop().await, Some(0), "{}", cluster.logs());
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} outlived the cluster");
    }
}

/// One customer's session and, per message, its number, the HTTP status and the reply.
type Conversation = (String, Vec<(usize, u16, Value)>);

/// Customers writing `turns` messages each through nginx, each after the previous reply and a
/// short pause: the steady load the failure scenarios run under.
fn load(
    cluster: &Arc<TestCluster>,
    prefix: &str,
    customers: usize,
    turns: usize,
) -> JoinSet<Conversation> {
    let mut set = JoinSet::new();
    for c in 0..customers {
        let cluster = cluster.clone();
        let session = format!("{prefix}{c}");
        set.spawn(async move {
            let mut results = Vec::new();
            for t in 1..=turns {
                let (status, body) = cluster
                    .converse(&session, &format!("m{t}"), &format!("message {t}"))
                    .await;
                results.push((t, status, body));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (session, results)
        });
    }
    set
}

/// What a scenario's load saw.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    answered: usize,
    /// Non-200 answers the clients saw.
    errors: Vec<String>,
    /// Replies that did not see the conversation's earlier messages.
    wrong_context: Vec<String>,
    /// Conversations whose history does not hold each message and answer exactly once, in order.
    not_exactly_once: Vec<String>,
}

impl Tally {
    /// Every message answered, with its context, exactly once in the history. On failure the
    /// cluster's logs are printed first and the tally last, so the end of a long CI log names
    /// what went wrong.
    fn assert_all_answered_once(&self, cluster: &TestCluster, messages: usize) {
        let clean = self.errors.is_empty()
            && self.wrong_context.is_empty()
            && self.not_exactly_once.is_empty()
            && self.answered == messages;
        if !clean {
            eprintln!("{}", cluster.logs());
            panic!("expected {messages} messages answered once each: {self:#?}");
        }
    }
}

async fn tally(cluster: &TestCluster, mut set: JoinSet<Conversation>) -> Tally {
    let mut tally = Tally::default();
    let mut sessions = Vec::new();
    while let Some(result) = set.join_next().await {
        let (session, results) = result.expect("customer");
        let turns = results.len();
        for (t, status, body) in results {
            tally.sent += 1;
            if status != 200 {
                tally
                    .errors
                    .push(format!("{session} m{t}: {status} {body}"));
                continue;
            }
            tally.answered += 1;
            let seen = user_turns(body["reply"]["text"].as_str().unwrap_or_default());
            if seen != t {
                tally
                    .wrong_context
                    .push(format!("{session} m{t}: saw {seen} turns"));
            }
        }
        sessions.push((session, turns));
    }
    for (session, turns) in sessions {
        let ids: Vec<String> = cluster
            .history(&session)
            .await
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["role"].as_str().unwrap_or(""),
                    e["message_id"].as_str().unwrap_or("")
                )
            })
            .collect();
        let expected: Vec<String> = (1..=turns)
            .flat_map(|t| [format!("user:m{t}"), format!("assistant:m{t}")])
            .collect();
        if ids != expected {
            tally.not_exactly_once.push(format!("{session}: {ids:?}"));
        }
    }
    tally
}

/// A replica's own `/healthz` (not nginx's), when it answers.
async fn replica_health(http: &reqwest::Client, port: u64) -> Option<Value> {
    http.get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn signal(pid: i64, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal");
}

/// Waits until replica `index` answers `/readyz` with a pid other than `old_pid`; how long it took.
async fn back_again(cluster: &TestCluster, index: usize, old_pid: i64) -> Duration {
    let started = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the replica to serve again",
        || async {
            let report = cluster.status().await;
            let replica = &report["replicas"][index];
            (replica["healthy"] == true && replica["pid"].as_i64() != Some(old_pid)).then_some(())
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing_and_is_back_within_two_seconds() {
    let llm = mock_llm(100).await;
    let cluster = Arc::new(TestCluster::start(cluster_config(&llm), 3).await);
    let set = load(&cluster, "crash", 30, 6);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let victim = cluster.status().await["replicas"][1]["pid"]
        .as_i64()
        .expect("pid");
    signal(victim, nix::sys::signal::Signal::SIGKILL);
    let recovered = back_again(&cluster, 1, victim).await;
    let tally = tally(&cluster, set).await;
    println!("replica crash: {tally:?}, back and serving {recovered:?} after SIGKILL");
    tally.assert_all_answered_once(&cluster, 30 * 6);
    assert!(
        recovered < Duration::from_secs(2),
        "back after {recovered:?}"
    );
    let report = cluster.status().await;
    assert_eq!(report["replicas"][1]["restarts"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let llm = mock_llm(100).await;
    let cluster = Arc::new(TestCluster::start(cluster_config(&llm), 3).await);
    let set = load(&cluster, "roll", 20, 12);
    for index in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = cluster.status().await["replicas"][index]["pid"]
            .as_i64()
            .expect("pid");
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        back_again(&cluster, index, pid).await;
    }
    let tally = tally(&cluster, set).await;
    println!("rolling restart: {tally:?}");
    tally.assert_all_answered_once(&cluster, 20 * 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_under_load_keeps_answers_coming_and_the_aof_restores_what_was_written() {
    let llm = mock_llm(50).await;
    let cluster = Arc::new(TestCluster::start(cluster_config(&llm), 3).await);
    // A conversation written well before the crash (AOF fsync is every second).
    for t in 1..=2 {
        let (status, _) = cluster.converse("before", &format!("m{t}"), "hello").await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let set = load(&cluster, "redis", 20, 8);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis_pid = cluster.status().await["redis"]["pid"]
        .as_i64()
        .expect("redis pid");
    let crashed = Instant::now();
    signal(redis_pid, nix::sys::signal::Signal::SIGKILL);
    eventually(Duration::from_secs(20), "Redis to be back", || async {
        let report = cluster.status().await;
        (report["redis"]["up"] == true && report["redis"]["pid"].as_i64() != Some(redis_pid))
            .then_some(())
    })
    .await;
    let redis_back = crashed.elapsed();
    // Every replica notices and goes back to Redis by itself.
    let http = http_client();
    let ports: Vec<u64> = cluster.status().await["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["port"].as_u64())
        .collect();
    eventually(
        Duration::from_secs(20),
        "every replica back on Redis",
        || async {
            for port in &ports {
                let health = replica_health(&http, *port).await?;
                if health["degraded"] != false {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let replicas_back = crashed.elapsed();
    let mut answered = 0;
    let mut errors = Vec::new();
    let mut set = set;
    while let Some(result) = set.join_next().await {
        let (session, results) = result.expect("customer");
        for (t, status, body) in results {
            if status == 200 {
                answered += 1;
            } else {
                errors.push(format!("{session} m{t}: {status} {body}"));
            }
        }
    }
    println!(
        "redis crash: sent {}, answered {answered}, errors {}, Redis back after {redis_back:?}, every replica back on it after {replicas_back:?}",
        20 * 8,
        errors.len()
    );
    // Answers continue through the outage (degraded mode), none refused.
    assert!(errors.is_empty(), "{errors:#?}\n{}", cluster.logs());
    // The AOF brought back the conversation written before the crash, and it goes on.
    let (status, body) = cluster.converse("before", "m3", "still there?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
        3,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_stop_and_start_a_conversation_continues_with_its_context() {
    let llm = mock_llm(0).await;
    let mut cluster = TestCluster::start(cluster_config(&llm), 2).await;
    for t in 1..=2 {
        let (status, _) = cluster.converse("long", &format!("m{t}"), "hello").await;
        assert_eq!(status, 200);
    }
    assert_eq!(cluster.stop().await, Some(0), "{}", cluster.logs());
    let cluster = TestCluster::start_in(cluster.into_dir(), cluster_config(&llm), 2).await;
    let (status, body) = cluster.converse("long", "m3", "I'm back").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
        3,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_and_down_under_load_loses_nothing() {
    let llm = mock_llm(50).await;
    let cluster = Arc::new(TestCluster::start(cluster_config(&llm), 1).await);
    let set = load(&cluster, "scale", 20, 10);
    let state_dir = cluster.state_dir.display().to_string();
    let (code, out) = run_cli(&["cluster", "scale", "3", "--state-dir", &state_dir], &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        cluster.status().await["replicas"].as_array().map(Vec::len),
        Some(3)
    );
    let (code, out) = run_cli(&["cluster", "scale", "1", "--state-dir", &state_dir], &[]).await;
    assert_eq!(code, 0, "{out}");
    let tally = tally(&cluster, set).await;
    println!("scale 1 → 3 → 1: {tally:?}");
    tally.assert_all_answered_once(&cluster, 20 * 10);
    let report = cluster.status().await;
    assert_eq!(
        report["replicas"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_nginx_config_passes_nginx_t() {
    let (code, conf) = run_cli(
        &[
            "nginx-config",
            "--replicas",
            "3",
            "--listen",
            "127.0.0.1:8080",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{conf}");
    assert!(conf.contains("server 127.0.0.1:18791 max_fails=3 fail_timeout=15s;"));
    let (ok, said) = nginx_t(&conf).await;
    assert!(ok, "{said}");
    assert!(said.contains("test is successful"), "{said}");
}

/// `nginx -t` on `conf`; its stderr.
async fn nginx_t(conf: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).expect("write");
    let nginx = clawgate_cluster::supervisor::find_program("nginx").expect("nginx installed");
    let output = tokio::process::Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .output()
        .await
        .expect("nginx -t");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_files_are_what_the_generators_write_and_pass_their_linters() {
    // nginx: the compose file's config is `clawgate nginx-config` for one replica per container.
    let (code, rendered) = run_cli(
        &[
            "nginx-config",
            "--listen",
            "8080",
            "--server",
            "replica-1:18789",
            "--server",
            "replica-2:18790",
            "--server",
            "replica-3:18791",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{rendered}");
    let nginx = deploy_file("nginx.conf");
    assert_eq!(nginx, rendered, "deploy/nginx.conf is stale: regenerate it");
    // nginx -t resolves upstream hosts; the containers' names exist only inside compose.
    let (ok, said) = nginx_t(
        &nginx
            .replace("replica-1:", "127.0.0.1:")
            .replace("replica-2:", "127.0.0.1:")
            .replace("replica-3:", "127.0.0.1:")
            .replace(
                "listen 8080;",
                &format!("listen 127.0.0.1:{};", free_port()),
            ),
    )
    .await;
    assert!(ok, "{said}");

    // HAProxy: active checks on /readyz; haproxy -c accepts it.
    let haproxy_cfg = deploy_file("haproxy.cfg");
    assert!(haproxy_cfg.contains("option httpchk GET /readyz"));
    let haproxy = clawgate_cluster::supervisor::find_program("haproxy").expect("haproxy installed");
    let output = tokio::process::Command::new(haproxy)
        .args(["-c", "-f"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy.cfg"))
        .output()
        .await
        .expect("haproxy -c");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Redis: the settings `cluster up` runs with.
    assert_eq!(
        deploy_file("redis.conf"),
        clawgate_cluster::render::redis_conf(None, "512mb", None).expect("render")
    );

    // Compose: the seed's services, restarted always, config mounted read-only.
    let compose = deploy_file("docker-compose.yml");
    for service in [
        "nginx:",
        "replica-1:",
        "replica-2:",
        "replica-3:",
        "redis:",
        "ollama:",
    ] {
        assert!(compose.contains(&format!("\n  {service}\n")), "{service}");
    }
    assert!(compose.contains("../examples/velocity:/etc/clawgate:ro"));
    assert!(compose.matches("restart: always").count() >= 4);
    assert!(deploy_file("Dockerfile").contains("FROM debian:bookworm-slim"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_outage_is_answered_by_the_fallback_within_the_deadline() {
    let primary = mock_llm(0).await;
    let fallback = mock_llm(50).await;
    let mut config = test_config(vec![
        openai_provider("primary", &primary, 2_000, 2),
        ollama_provider("fallback", &fallback, 5_000),
    ]);
    config["conversations"] = json!({"floodControl": {"messagesPerMinute": 0}});
    config["llm"]["deadlineMs"] = json!(4_000);
    let cluster = Arc::new(TestCluster::start(config, 3).await);
    primary.set_mode(clawgate_fakes::mock_llm::Mode::Hang);
    let started = Instant::now();
    let tally = tally(&cluster, load(&cluster, "llm", 20, 3)).await;
    println!("LLM outage: {tally:?} in {:?}", started.elapsed());
    assert!(tally.errors.is_empty(), "{tally:#?}");
    assert!(tally.wrong_context.is_empty(), "{tally:#?}");
    assert!(tally.not_exactly_once.is_empty(), "{tally:#?}");
    // Every turn answered by the fallback, none waited past the 4 s deadline.
    for c in 0..20 {
        let entries = cluster.history(&format!("llm{c}")).await;
        for pair in entries.chunks_exact(2) {
            assert_eq!(pair[1]["provider"], "fallback", "{pair:?}");
            let took = pair[1]["ts"].as_u64().unwrap_or(0) - pair[0]["ts"].as_u64().unwrap_or(0);
            assert!(took <= 4_000 + 200, "a turn took {took} ms: {pair:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_is_taken_out_of_nginx_and_put_back_when_it_answers() {
    let llm = mock_llm(0).await;
    let cluster = TestCluster::start(cluster_config(&llm), 3).await;
    let report = cluster.status().await;
    let (pid, port) = (
        report["replicas"][1]["pid"].as_i64().expect("pid"),
        report["replicas"][1]["port"].as_u64().expect("port"),
    );
    let nginx_conf = cluster.state_dir.join("nginx.conf");
    let marked_down = format!("server 127.0.0.1:{port} max_fails=3 fail_timeout=15s down;");
    let state_file = cluster.state_dir.join("cluster.json");
    let upstream_down = || {
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap_or_default())
                .unwrap_or(Value::Null);
        state["upstream_down"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    // Marked down in the config, and nginx reloaded with it.
    eventually(
        Duration::from_secs(10),
        "the frozen replica marked down",
        || async {
            let conf = std::fs::read_to_string(&nginx_conf).unwrap_or_default();
            (conf.contains(&marked_down) && upstream_down() == vec![json!("replica-2")])
                .then_some(())
        },
    )
    .await;
    let detected = frozen.elapsed();
    // Traffic goes to the others meanwhile.
    let mut slow = Vec::new();
    for i in 0..30 {
        let sent = Instant::now();
        let (status, body) = cluster.converse(&format!("f{i}"), "m1", "hello").await;
        if status != 200 || sent.elapsed() > Duration::from_secs(2) {
            slow.push(format!("f{i}: {status} after {:?}: {body}", sent.elapsed()));
        }
    }
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    let thawed = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the replica back in the upstream",
        || async {
            let conf = std::fs::read_to_string(&nginx_conf).unwrap_or_default();
            (!conf.contains(" down;") && upstream_down().is_empty()).then_some(())
        },
    )
    .await;
    println!(
        "frozen replica: out of nginx {detected:?} after SIGSTOP, back {:?} after SIGCONT",
        thawed.elapsed()
    );
    assert!(slow.is_empty(), "{slow:#?}\n{}", cluster.logs());
    assert!(detected < Duration::from_secs(3), "{detected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_llm_pile_up_keeps_webhooks_acknowledged_fast_sheds_readiness_and_answers_everyone_once()
 {
    const CUSTOMERS: usize = 1_000;
    let llm = mock_llm(30_000).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 60_000, 0)]);
    config["channels"] = channels_config(&platforms);
    config["workers"]["concurrency"] = json!(64);
    config["workers"]["readyMaxLag"] = json!(200);
    config["gateway"] = json!({"shutdownGraceMs": 500});
    let cluster = Arc::new(TestCluster::start(config, 3).await);

    // The 08:17 surge: a thousand customers write within two seconds; the model takes 30 s.
    let http = http_client();
    let mut acks = JoinSet::new();
    for i in 0..CUSTOMERS {
        let cluster = cluster.clone();
        acks.spawn(async move {
            let sent = Instant::now();
            let outcome = cluster
                .whatsapp_outcome(
                    &format!("3161{i:07}"),
                    &format!("wamid.SURGE{i}"),
                    "waar is mijn pakket?",
                )
                .await;
            (outcome, sent.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut latencies = Vec::new();
    while let Some(result) = acks.join_next().await {
        let (outcome, latency) = result.expect("ack");
        assert_eq!(
            outcome,
            Ok(200),
            "every webhook acknowledged\n{}",
            cluster.logs()
        );
        latencies.push(latency);
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];

    // Readiness says the cluster is behind once the sampled lag passes 200.
    let report = cluster.status().await;
    let port = report["replicas"][0]["port"].as_u64().expect("port");
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let shed: Value = eventually(Duration::from_secs(10), "/readyz to shed", || async {
        let response = http.get(&readyz).send().await.ok()?;
        (response.status().as_u16() == 503).then_some(())?;
        response.json().await.ok()
    })
    .await;
    assert!(shed["failing"].to_string().contains("overloaded"), "{shed}");
    // What a balancer asks: overload alone keeps the replica in rotation.
    let response = http
        .get(format!("{readyz}?ignore=overloaded"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(response.status(), 200);
    let balancer: Value = response.json().await.expect("json");
    assert_eq!(balancer["ignored"], json!(["overloaded"]), "{balancer}");

    let mut rss_mib = Vec::new();
    for replica in cluster.status().await["replicas"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert_eq!(replica["restarts"], 0, "nothing crashed: {replica}");
        let pid = replica["pid"].as_i64().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        rss_mib.push(kib / 1024);
    }
    let lag = cluster.status().await["redis"]["inbox_lag"].clone();
    println!(
        "slow LLM pile-up: {CUSTOMERS} webhooks, all 200, ack p99 {p99:?}, inbox lag {lag}, replica RSS {rss_mib:?} MiB, readiness {shed}"
    );
    // Overload is the shared inbox's: no replica is taken out of nginx for it (a reload would
    // also close the platforms' idle keep-alive connections in the middle of the surge).
    let logs = cluster.logs();
    assert!(!logs.contains("taken out of nginx"), "{logs}");
    assert!(p99 < Duration::from_millis(500), "ack p99 {p99:?}");
    assert!(rss_mib.iter().all(|&mib| mib < 200), "{rss_mib:?}");

    // The surge passes (the model is fast again): every acknowledged webhook is answered,
    // exactly once, to its sender. Turns already waiting on the 30 s model finish on their own.
    llm.set_latency(Duration::from_millis(10));
    let per_customer = replies_per_recipient(&platforms, CUSTOMERS, Duration::from_secs(90)).await;
    assert_eq!(per_customer.len(), CUSTOMERS, "every customer answered");
    assert!(
        per_customer.values().all(|&n| n == 1),
        "answered twice: {:?}",
        per_customer
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_entries_accepted_before_a_redis_crash_are_answered_after_it() {
    const CUSTOMERS: usize = 20;
    let llm = mock_llm(2_000).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    // Few slots, so most messages wait in the inbox when Redis dies.
    config["workers"]["concurrency"] = json!(2);
    let cluster = TestCluster::start(config, 3).await;
    for i in 0..CUSTOMERS {
        let status = cluster
            .whatsapp(&format!("3162{i:07}"), &format!("wamid.AOF{i}"), "hallo?")
            .await;
        assert_eq!(status, 200);
    }
    // Past the AOF's one-second fsync, then the crash.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let report = cluster.status().await;
    let waiting = report["redis"]["inbox_lag"].as_u64().unwrap_or(0);
    let redis_pid = report["redis"]["pid"].as_i64().expect("redis pid");
    signal(redis_pid, nix::sys::signal::Signal::SIGKILL);

    // Every customer gets exactly one reply, those still queued at the crash included.
    let sent = sent_messages(&platforms, CUSTOMERS).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let sent_now = platforms.sent();
    let mut recipients: Vec<&str> = sent_now.iter().map(|s| s.to.as_str()).collect();
    recipients.sort();
    recipients.dedup();
    println!(
        "redis crash with {waiting} messages queued: {} replies to {} customers",
        sent_now.len(),
        recipients.len()
    );
    assert!(
        waiting > 0,
        "the test needs messages still queued at the crash"
    );
    assert_eq!(sent.len(), CUSTOMERS, "{sent:#?}");
    assert_eq!(sent_now.len(), CUSTOMERS, "no reply twice: {sent_now:#?}");
    assert_eq!(recipients.len(), CUSTOMERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_redis_restarts_waits_for_it_and_keeps_its_context() {
    let llm = mock_llm(0).await;
    let cluster = TestCluster::start(cluster_config(&llm), 1).await;
    let (status, _) = cluster.converse("blip", "m1", "first").await;
    assert_eq!(status, 200);
    // The AOF is written every second: let the first turn reach the disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let redis_pid = cluster.status().await["redis"]["pid"]
        .as_i64()
        .expect("redis pid");
    let port = cluster.status().await["replicas"][0]["port"]
        .as_u64()
        .expect("replica port");
    signal(redis_pid, nix::sys::signal::Signal::SIGTERM);
    // The replica notices...
    let http = http_client();
    eventually(
        Duration::from_secs(5),
        "the replica to see Redis down",
        || async {
            let health = replica_health(&http, port).await?;
            (health["redis"] == "down").then_some(())
        },
    )
    .await;
    // ... but Redis is restarted by the supervisor within a second: shorter than
    // redis.degradeAfterMs (2 s), so the replica waits for it instead of answering from an
    // empty memory.
    let (status, body) = cluster.converse("blip", "m2", "second").await;
    assert_eq!(status, 200, "{body}");
    let text = body["reply"]["text"].as_str().unwrap_or_default();
    assert_eq!(
        user_turns(text),
        2,
        "the conversation lost its context: {text}"
    );
    let history = cluster.history("blip").await;
    assert_eq!(history.len(), 4, "{history:?}");
}
