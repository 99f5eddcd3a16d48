//! Beyond one Redis: a replica on a Sentinel-managed group keeps answering through a failover,
//! and with `redis.ackReplicas` every message that got a 200 is answered exactly once, with its
//! conversation's context.

use crate::support::sentinel::{MASTER_NAME, TestSentinelGroup};
use crate::support::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sends until the gateway acknowledges, as a platform retries a webhook that got no 200;
/// returns how many attempts were refused first.
async fn until_acknowledged<F, Fut>(mut send: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    loop {
        let status = send().await;
        if status == 200 {
            return refused;
        }
        assert!(
            status == 503,
            "a failover may refuse for now (503), nothing else: {status}"
        );
        refused += 1;
        assert!(Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A web-chat message, resent after a 503 as a client would; the final status and body.
async fn send_until_answered(gateway: &Gateway, id: &str, text: &str) -> (u16, Value) {
    for _ in 0..150 {
        let (status, body) = gateway.send("failover", id, text, None).await;
        if status != 503 {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (503, Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_replicas_every_acknowledged_message_survives_a_sentinel_failover_once_with_context()
 {
    let mut group = TestSentinelGroup::start(2).await;
    let llm = mock_llm(0).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    config["redis"] = json!({
        "sentinel": {"masterName": MASTER_NAME, "nodes": group.nodes()},
        "ackReplicas": 1, "ackTimeoutMs": 1000,
        "degradeAfterMs": 20000, "commandTimeoutMs": 500});
    let gateway = Gateway::start(config, "", "r1").await;

    for (id, text) in [("m1", "mijn pakket"), ("m2", "VC482913577NL")] {
        let (status, body) = send_until_answered(&gateway, id, text).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut sent_to: HashMap<String, usize> = HashMap::new();
    let mut whatsapp = |customer: usize, n: usize| {
        *sent_to.entry(format!("3161000{customer:04}")).or_default() += 1;
        whatsapp_text(
            &format!("3161000{customer:04}"),
            &format!("wamid.FAILOVER.{customer}.{n}"),
            &format!("bericht {n}"),
        )
    };
    for customer in 0..5 {
        let body = whatsapp(customer, 0);
        until_acknowledged(|| {
            let body = body.clone();
            let gateway = &gateway;
            async move { gateway.whatsapp(body).await.0 }
        })
        .await;
    }

    let killed_at = Instant::now();
    let old = group.kill_primary().await;
    // During the failover: web chat and webhooks keep being acknowledged, after waiting or
    // after a 503 the client retries.
    let mut refused = 0;
    for round in 1..=3 {
        for customer in 0..5 {
            let body = whatsapp(customer, round);
            refused += until_acknowledged(|| {
                let body = body.clone();
                let gateway = &gateway;
                async move { gateway.whatsapp(body).await.0 }
            })
            .await;
        }
    }
    let first_ack = killed_at.elapsed();
    let (status, body) = send_until_answered(&gateway, "m3", "wanneer?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["reply"]["text"], "[mock] user_turns=3 last=\"wanneer?\"",
        "the conversation kept its context across the failover"
    );
    let new = group.wait_for_new_primary(old).await;
    assert_ne!(new, old);
    let (status, body) = send_until_answered(&gateway, "m4", "en nu?").await;
    assert_eq!(
        (
            status,
            user_turns(body["reply"]["text"].as_str().unwrap_or(""))
        ),
        (200, 4)
    );

    // Every acknowledged WhatsApp message is answered, none twice, each answer with every
    // earlier message of its customer in context. A turn that waited (for the failover) answers
    // the messages that arrived meanwhile together: one reply covers them, and names the last.
    let answered_through = |sent: &[clawgate_fakes::mock_platforms::Sent]| {
        let mut last_by_customer: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for reply in sent {
            let last: usize = reply
                .text
                .split("last=\"bericht ")
                .nth(1)
                .and_then(|n| n.trim_end_matches('"').parse().ok())
                .unwrap_or_else(|| panic!("not a model answer: {}", reply.text));
            last_by_customer
                .entry(reply.to.clone())
                .or_default()
                .push((last, user_turns(&reply.text)));
        }
        last_by_customer
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answered = answered_through(&platforms.sent());
        let complete = sent_to.iter().all(|(customer, count)| {
            answered
                .get(customer)
                .is_some_and(|replies| replies.iter().any(|(last, _)| last + 1 == *count))
        });
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every message answered after 60 s: {answered:?}\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (customer, replies) in answered_through(&platforms.sent()) {
        let mut seen = std::collections::HashSet::new();
        for (last, turns) in replies {
            assert!(
                seen.insert(last),
                "{customer}: bericht {last} answered twice"
            );
            assert_eq!(
                turns,
                last + 1,
                "{customer}: bericht {last} answered without its context"
            );
        }
    }
    let health = gateway.health().await;
    assert_eq!(health["redis"], "up", "{health}");
    assert!(
        gateway.logs().contains("the Redis primary moved"),
        "the replica followed the failover to the new primary"
    );
    eprintln!(
        "failover: first acknowledgement {:?} after the kill, {refused} webhooks refused meanwhile, primary {old} -> {new}",
        first_ack
    );
    let _: Value = health;
}

/// `status["redis"]["nodes"]` by role: (primary address, replica addresses).
fn roles(status: &Value) -> (Option<String>, Vec<String>) {
    let nodes = status["redis"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let addr = |n: &Value| n["addr"].as_str().unwrap_or_default().to_string();
    let primary = nodes.iter().find(|n| n["role"] == "primary").map(addr);
    let replicas = nodes
        .iter()
        .filter(|n| n["role"] == "replica")
        .map(addr)
        .collect();
    (primary, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_with_sentinel_reports_roles_and_lag_and_survives_losing_the_primary() {
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["redis"] = json!({"degradeAfterMs": 20000});
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = TestCluster::start_with(dir, config, 2, &["--redis", "sentinel"]).await;

    // A client retries a 503 (a Redis replica slow to confirm, on a busy machine).
    let converse = |id: &'static str, text: &'static str| {
        let cluster = &cluster;
        async move {
            for _ in 0..150 {
                let (status, body) = cluster.converse("s", id, text).await;
                if status != 503 {
                    return (status, body);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (503, Value::Null)
        }
    };
    let (status, body) = converse("m1", "hallo").await;
    assert_eq!(status, 200, "{body}");
    let report = cluster.status().await;
    assert_eq!(report["redis"]["up"], true, "{report}");
    assert_eq!(report["redis"]["mode"], "sentinel", "{report}");
    assert_eq!(report["redis"]["role"], "primary", "{report}");
    let nodes = report["redis"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{report}");
    for node in nodes {
        assert!(node["addr"].is_string(), "{report}");
        assert!(node["lag"].is_u64(), "every server replicates: {report}");
    }
    let (old_primary, replicas) = roles(&report);
    let old_primary = old_primary.expect("a primary");
    assert_eq!(replicas.len(), 2, "{report}");
    assert_eq!(report["redis"]["primary"], old_primary.as_str(), "{report}");
    let sentinels = report["redis"]["sentinels"].as_array().expect("sentinels");
    assert_eq!(sentinels.len(), 3, "{report}");
    assert!(sentinels.iter().all(|s| s["up"] == true), "{report}");
    // The replicas write to that primary and acknowledge only once a Redis replica holds the
    // message too.
    let replica_port = &report["replicas"][0]["port"];
    let health: Value = reqwest::get(format!("http://127.0.0.1:{replica_port}/healthz"))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(health["redis_ack_replicas"], 1, "{health}");
    assert_eq!(health["redis_primary"], old_primary.as_str(), "{health}");

    let primary_pid = nodes
        .iter()
        .find(|n| n["role"] == "primary")
        .and_then(|n| n["pid"].as_i64())
        .expect("the primary's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(primary_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the primary");
    let killed_at = Instant::now();
    // Through nginx, the conversation goes on: refused (503) at worst while the sentinels
    // promote a replica, never answered without its context.
    let (status, body) = converse("m2", "nog iets").await;
    assert_eq!(status, 200, "answered after the failover: {body}");
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or("")),
        2,
        "{body}"
    );
    let first_answer = killed_at.elapsed();

    let report = eventually(
        Duration::from_secs(40),
        "the old primary back as a replica",
        || async {
            let report = cluster.status().await;
            let (primary, replicas) = roles(&report);
            (primary.is_some_and(|p| p != old_primary) && replicas.contains(&old_primary))
                .then_some(report)
        },
    )
    .await;
    eprintln!(
        "cluster sentinel: answered again {first_answer:?} after SIGKILL of the primary; now {}",
        report["redis"]["primary"]
    );

    let pids: Vec<i64> = report["redis"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            report["redis"]["sentinels"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|n| n["pid"].as_i64())
        .collect();
    assert_eq!(pids.len(), 6, "{report}");
    assert_eq!(cluster.stop().await, Some(0), "{}", cluster.logs());
    for pid in pids {
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err();
        assert!(gone, "process {pid} outlived the cluster");
    }
}
