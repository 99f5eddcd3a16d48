//! `clawgate cluster`: real nginx, real redis-server and real replicas supervised on one host,
//! driven through nginx like a platform would.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing_and_is_back_within_two_seconds() {
    const CUSTOMERS: usize = 30;
    const TURNS: usize = 6;
    let llm = mock_llm(100).await;
    let cluster = std::sync::Arc::new(TestCluster::start(cluster_config(&llm), 3).await);

    // Steady load: 30 customers writing 6 messages each, one after the other's reply.
    let mut driver = tokio::task::JoinSet::new();
    for c in 0..CUSTOMERS {
        let cluster = cluster.clone();
        driver.spawn(async move {
            let mut results = Vec::new();
            for t in 1..=TURNS {
                let (status, body) = cluster
                    .send(&format!("c{c}"), &format!("m{t}"), &format!("message {t}"))
                    .await;
                results.push((t, status, body));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (c, results)
        });
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = cluster.status().await;
    let victim = &report["replicas"][1];
    let (victim_pid, victim_port) = (
        victim["pid"].as_i64().expect("pid"),
        victim["port"].as_u64().expect("port"),
    );
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let ready = format!("http://127.0.0.1:{victim_port}/readyz");
    eventually(
        Duration::from_secs(10),
        "the killed replica to serve again",
        || async {
            let ok = http.get(&ready).send().await.ok()?.status().is_success();
            ok.then_some(())
        },
    )
    .await;
    let recovered = killed.elapsed();

    let mut errors = Vec::new();
    let mut answered = 0;
    while let Some(result) = driver.join_next().await {
        let (c, results) = result.expect("customer");
        for (t, status, body) in results {
            let turns = user_turns(body["reply"]["text"].as_str().unwrap_or_default());
            if status != 200 || turns != t {
                errors.push(format!("c{c} m{t}: {status} {body}"));
            } else {
                answered += 1;
            }
        }
    }
    // Exactly once: every conversation holds each message once and one answer to it, in order.
    let mut redis = cluster.redis().await;
    let mut duplicated = 0;
    for c in 0..CUSTOMERS {
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("oc:conv:{{webchat:c{c}}}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await
            .expect("history");
        let ids: Vec<String> = entries
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .map(|e| {
                format!(
                    "{}:{}",
                    e["role"].as_str().unwrap_or(""),
                    e["message_id"].as_str().unwrap_or("")
                )
            })
            .collect();
        let expected: Vec<String> = (1..=TURNS)
            .flat_map(|t| [format!("user:m{t}"), format!("assistant:m{t}")])
            .collect();
        if ids != expected {
            duplicated += 1;
            errors.push(format!("c{c} history: {ids:?}"));
        }
    }
    let report = cluster.status().await;
    let restarts: BTreeMap<String, u64> = report["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("").to_string(),
                r["restarts"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    println!(
        "replica crash: sent {}, answered {answered}, errors {}, duplicated {duplicated}, back and serving {recovered:?} after SIGKILL",
        CUSTOMERS * TURNS,
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:#?}\n{}", cluster.logs());
    assert_eq!(answered, CUSTOMERS * TURNS);
    assert!(
        recovered < Duration::from_secs(2),
        "back after {recovered:?}"
    );
    assert_eq!(restarts.values().sum::<u64>(), 1, "{report}");
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

fn deploy_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
        clawgate_cluster::render::redis_conf(None, "512mb").expect("render")
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
