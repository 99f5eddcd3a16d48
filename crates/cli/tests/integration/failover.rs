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

/// A web-chat message of `session`, resent after a 503 as a client would; the final status and
/// body.
async fn send_until_answered(
    gateway: &Gateway,
    session: &str,
    id: &str,
    text: &str,
) -> (u16, Value) {
    for _ in 0..150 {
        let (status, body) = gateway.send(session, id, text, None).await;
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
        let (status, body) = send_until_answered(&gateway, "failover", id, text).await;
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
    let (status, body) = send_until_answered(&gateway, "failover", "m3", "wanneer?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["reply"]["text"], "[mock] user_turns=3 last=\"wanneer?\"",
        "the conversation kept its context across the failover"
    );
    let new = group.wait_for_new_primary(old).await;
    assert_ne!(new, old);
    let (status, body) = send_until_answered(&gateway, "failover", "m4", "en nu?").await;
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

/// Redis's `INFO replication` of `server`, as `field:value` lines.
async fn replication(server: &TestRedis) -> String {
    server.query(redis::cmd("INFO").arg("replication")).await
}

/// The settings a replica authenticates to its primary with.
const PRIMARY_CREDENTIALS: [&str; 2] = ["masteruser", "masterauth"];

/// A replica that stops replicating (it cannot authenticate to its primary any more) and so
/// misses every write from now on, as if a partition had cut it off; `thaw` undoes it.
async fn freeze(replica: &TestRedis) {
    set_primary_credentials(replica, "cut-off").await;
    let _: i64 = replica
        .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("master"))
        .await;
}

async fn thaw(replica: &TestRedis) {
    set_primary_credentials(replica, "").await;
}

async fn set_primary_credentials(replica: &TestRedis, value: &str) {
    for field in PRIMARY_CREDENTIALS {
        let _: () = replica
            .query(redis::cmd("CONFIG").arg("SET").arg(field).arg(value))
            .await;
    }
}

/// Split brain: Sentinel fails the primary over, but the old primary is never demoted (a
/// partition keeps the sentinels from telling it; here it refuses `REPLICAOF`) and stays
/// writable beside the new one. The messages only the old primary took were never acknowledged
/// (their `WAIT` found no replica), and a worker read them from it before the switch. On the new
/// primary they are not in the inbox: the worker must drop them instead of answering them ahead
/// of the conversation's order, and the replica must read the new primary's inbox, not keep
/// reading the old one. The client resends them (as it does after a 503) and every message is
/// answered once, in order, with its whole conversation in context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_only_a_failed_over_primary_took_are_answered_in_order_once_resent() {
    let group = TestSentinelGroup::start_with(
        2,
        &[
            "--rename-command",
            "REPLICAOF",
            "",
            "--rename-command",
            "SLAVEOF",
            "",
        ],
    )
    .await;
    let old_primary = &group.servers[0];
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["redis"] = json!({
        "sentinel": {"masterName": MASTER_NAME, "nodes": group.nodes()},
        "ackReplicas": 1, "ackTimeoutMs": 500,
        "degradeAfterMs": 30000, "commandTimeoutMs": 500});
    let gateway = Gateway::start(config, "", "split").await;
    let session = "split";
    let (status, body) = gateway.send(session, "m1", "een", None).await;
    assert_eq!(
        (
            status,
            user_turns(body["reply"]["text"].as_str().unwrap_or(""))
        ),
        (200, 1),
        "{body}"
    );

    // Someone else's turn holds the conversation, so the turns of what follows wait.
    let lease = format!("oc:lease:{{webchat:{session}}}");
    let exists: bool = old_primary
        .query(redis::cmd("EXISTS").arg(format!("oc:session:{{webchat:{session}}}")))
        .await;
    assert!(
        exists,
        "the conversation's keys are named as this test assumes"
    );
    let _: () = old_primary
        .query(
            redis::cmd("SET")
                .arg(&lease)
                .arg("another-replica/0")
                .arg("PX")
                .arg(120_000),
        )
        .await;
    // m2 is acknowledged (every server holds it); the worker reads it and waits for the lease.
    let (status, body) = gateway.send(session, "m2", "twee", Some(100)).await;
    assert_eq!(status, 202, "{body}");
    // Entries delivered to a worker and not yet acknowledged, on the old primary.
    let pending_on_old = || async {
        let summary: Vec<redis::Value> = old_primary
            .query(redis::cmd("XPENDING").arg("oc:inbox").arg("workers"))
            .await;
        match summary.first() {
            Some(redis::Value::Int(count)) => *count,
            _ => 0,
        }
    };
    eventually(Duration::from_secs(10), "the worker holding m2", || async {
        (pending_on_old().await == 1).then_some(())
    })
    .await;
    let _: () = old_primary
        .query(redis::cmd("SET").arg("oc:test:fence").arg(1))
        .await;
    let replicated: u64 = old_primary.query(redis::cmd("WAIT").arg(2).arg(5000)).await;
    assert_eq!(
        replicated, 2,
        "both replicas hold m2, its delivery and the lease"
    );

    // The replicas are cut off: m3 to m5 reach the old primary alone, are refused (503: no
    // replica confirmed them) and read by the worker, which waits for the lease again.
    for replica in &group.servers[1..] {
        freeze(replica).await;
    }
    eventually(Duration::from_secs(10), "the replicas cut off", || async {
        replication(old_primary)
            .await
            .contains("connected_slaves:0")
            .then_some(())
    })
    .await;
    for (id, text) in [("m3", "drie"), ("m4", "vier"), ("m5", "vijf")] {
        let (status, body) = gateway.send(session, id, text, Some(100)).await;
        assert_eq!(status, 503, "{id}: no replica confirmed it: {body}");
    }
    eventually(
        Duration::from_secs(10),
        "the worker holding m2 to m5",
        || async { (pending_on_old().await == 4).then_some(()) },
    )
    .await;

    // Sentinel promotes a replica; the other one follows it once it is reachable again. The
    // old primary stays a writable primary beside it.
    group.force_failover().await;
    let promoted = eventually(Duration::from_secs(30), "a replica promoted", || async {
        for replica in &group.servers[1..] {
            if replication(replica).await.contains("role:master") {
                return Some(replica.port);
            }
        }
        None
    })
    .await;
    for replica in group.servers[1..].iter().filter(|r| r.port != promoted) {
        thaw(replica).await;
    }
    let new_primary = group
        .servers
        .iter()
        .find(|s| s.port == promoted)
        .expect("the promoted replica");
    let address = format!("127.0.0.1:{promoted}");
    eventually(
        Duration::from_secs(30),
        "the gateway on the new primary",
        || async {
            let health = gateway.health().await;
            (health["redis"] == "up" && health["redis_primary"] == address.as_str()).then_some(())
        },
    )
    .await;
    assert!(
        replication(old_primary).await.contains("role:master"),
        "the old primary was never demoted: two primaries now"
    );
    let _: i64 = new_primary.query(redis::cmd("DEL").arg(&lease)).await;

    // m2 was acknowledged: it is answered without being sent again. The others are sent again,
    // one after the other, as a client does after a 503; then one more message.
    let reply = gateway.reply_of(session, "m2").await;
    assert_eq!(
        user_turns(reply["text"].as_str().unwrap_or("")),
        2,
        "{reply}"
    );
    for (n, (id, text)) in [
        ("m3", "drie"),
        ("m4", "vier"),
        ("m5", "vijf"),
        ("m6", "zes"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = send_until_answered(&gateway, session, id, text).await;
        assert_eq!(status, 200, "{id}: {body}\n{}", gateway.logs());
        assert_eq!(
            body["reply"]["text"],
            format!("[mock] user_turns={} last=\"{text}\"", n + 3),
            "{id} answered in order, with the whole conversation before it"
        );
    }
    let history: Vec<String> = new_primary
        .query(
            redis::cmd("LRANGE")
                .arg(format!("oc:conv:{{webchat:{session}}}"))
                .arg(0)
                .arg(-1),
        )
        .await;
    let said: Vec<String> = history
        .iter()
        .filter_map(|entry| serde_json::from_str::<Value>(entry).ok())
        .filter(|entry| entry["role"] == "user")
        .map(|entry| entry["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        said,
        ["een", "twee", "drie", "vier", "vijf", "zes"],
        "each message once, in order"
    );
    assert!(
        gateway
            .logs()
            .contains("not in the inbox of the Redis primary"),
        "the worker said why it dropped what the old primary alone held:\n{}",
        gateway.logs()
    );
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
