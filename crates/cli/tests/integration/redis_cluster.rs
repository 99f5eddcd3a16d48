//! clawgate on a real Redis Cluster (three masters with a replica each, started here): two
//! replicas keep every conversation's context and order, answer every message once, spread the
//! conversations over all masters, and go on after a master is SIGKILLed and its replica takes
//! over. No command may ever be refused with CROSSSLOT.

use crate::replicas::assert_answered_once_in_order;
use crate::support::redis_cluster::TestRedisCluster;
use crate::support::*;
use std::time::{Duration, Instant};

/// Sends until the message is answered (200), as a client resending after a 503 or a 202 would,
/// with the same message id; the reply's text.
async fn answered(gateway: &Gateway, session: &str, id: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = gateway.send(session, id, text, Some(3_000)).await;
        if status == 200 {
            return body["reply"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{session}/{id} was not answered within 30 s (last: {status} {body}):\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `ids` (turns `first + 1`, ...) in every session, through `replicas` in turn, and
/// checks that every turn saw all turns before it (on failure with the history, the replicas'
/// logs and, given one, the cluster's).
async fn turns_via(
    replicas: &[&Gateway],
    sessions: &[String],
    ids: &[String],
    first: usize,
    cluster: Option<&TestRedisCluster>,
) {
    for (offset, id) in ids.iter().enumerate() {
        let turn = first + offset + 1;
        for (i, session) in sessions.iter().enumerate() {
            let via = replicas[(i + turn) % replicas.len()];
            let text = answered(via, session, id, &format!("turn {turn}")).await;
            if user_turns(&text) != turn {
                let history = replicas[0].history(session).await;
                let logs: String = replicas.iter().map(|r| r.logs()).collect();
                panic!(
                    "{session} turn {turn} via {}: {text}\nhistory now: {history:#?}\n{logs}\n{}",
                    via.replica_id,
                    cluster.map(TestRedisCluster::logs).unwrap_or_default()
                );
            }
        }
    }
}

fn assert_no_crossslot(replicas: &[&Gateway]) {
    for replica in replicas {
        let logs = replica.logs();
        assert!(
            !logs.contains("CROSSSLOT") && !logs.contains("non local key"),
            "{} hit a cross-slot error:\n{logs}",
            replica.replica_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_cluster_keep_context_and_order_and_survive_a_master_kill() {
    let mut cluster = TestRedisCluster::start(3).await;
    let llm = mock_llm(10).await;
    let config = test_config(vec![openai_provider("primary", &llm, 5000, 0)]);
    let a = Gateway::start(config.clone(), &cluster.url(), "replica-a").await;
    let b = Gateway::start(config, &cluster.url(), "replica-b").await;
    let sessions: Vec<String> = (0..12).map(|i| format!("cluster-{i}")).collect();
    let ids: Vec<String> = (1..=6).map(|k| format!("m{k}")).collect();

    // Three turns per conversation, alternating replicas: every turn sees all before it.
    turns_via(&[&a, &b], &sessions, &ids[..3], 0, Some(&cluster)).await;
    // A resent message is answered from the record, not again.
    let requests = llm.requests();
    let again = answered(&b, &sessions[0], &ids[0], "turn 1").await;
    assert_eq!(user_turns(&again), 1);
    assert_eq!(llm.requests(), requests, "a duplicate reached the model");

    // The conversations are spread over every master.
    let per_master = cluster.keys_per_master().await;
    assert_eq!(per_master.len(), 3, "{per_master:?}");
    assert!(
        per_master.values().all(|&keys| keys > 0),
        "a master holds nothing: {per_master:?}"
    );

    // SIGKILL one master; its replica takes over and the conversations go on.
    let victim = *cluster.slot_owners().await.keys().next().expect("a master");
    cluster.node(victim).stop().await;
    eventually(
        Duration::from_secs(30),
        "a replica to take over the killed master's slots",
        || async {
            let owners = cluster.slot_owners().await;
            (owners.len() == 3 && !owners.contains_key(&victim)).then_some(())
        },
    )
    .await;
    turns_via(&[&a, &b], &sessions, &ids[3..], 3, Some(&cluster)).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for session in &sessions {
        assert_answered_once_in_order(&a, session, &ids).await;
    }
    assert_no_crossslot(&[&a, &b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_with_a_redis_cluster_serves_through_nginx_and_shows_each_masters_share() {
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["redis"] = serde_json::json!({"degradeAfterMs": 20000});
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = TestCluster::start_with(
        dir,
        config,
        2,
        &["--redis", "cluster", "--redis-masters", "3"],
    )
    .await;
    // A client retries a 503 (a Redis replica slow to confirm, a master failing over).
    let converse = |session: String, id: &'static str, text: &'static str| {
        let cluster = &cluster;
        async move {
            for _ in 0..150 {
                let (status, body) = cluster.converse(&session, id, text).await;
                if status != 503 {
                    return (status, body);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (503, serde_json::Value::Null)
        }
    };
    let sessions: Vec<String> = (0..8).map(|i| format!("up-{i}")).collect();
    for session in &sessions {
        let (status, body) = converse(session.clone(), "m1", "hallo").await;
        assert_eq!(status, 200, "{body}\n{}", cluster.logs());
    }
    let report = cluster.status().await;
    assert_eq!(report["redis"]["mode"], "cluster", "{report}");
    assert_eq!(report["redis"]["up"], true, "{report}");
    let masters = report["redis"]["masters"].as_array().expect("masters");
    assert_eq!(masters.len(), 3, "{report}");
    let shards: u64 = masters
        .iter()
        .map(|m| m["inbox_shards"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(shards, 16, "every inbox shard has a master: {report}");
    for master in masters {
        assert!(master["slots"].as_u64().unwrap_or(0) > 5000, "{report}");
        assert_eq!(
            master["replicas"].as_array().map(Vec::len),
            Some(1),
            "{report}"
        );
        assert!(master["used_memory_bytes"].is_u64(), "{report}");
    }
    assert_eq!(report["redis"]["nodes"].as_array().map(Vec::len), Some(6));

    // SIGKILL a master: its replica takes over, the conversations go on with their context.
    let victim = report["redis"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["role"] == "master"))
        .and_then(|n| n["pid"].as_i64())
        .expect("a master's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the master");
    for session in &sessions {
        let (status, body) = converse(session.clone(), "m2", "en nu?").await;
        assert_eq!(status, 200, "{body}\n{}", cluster.logs());
        let text = body["reply"]["text"].as_str().unwrap_or_default();
        assert_eq!(user_turns(text), 2, "{session} lost its context: {text}");
    }
}

/// WhatsApp customers under load while the cluster is disturbed.
const CUSTOMERS: usize = 12;
const MESSAGES_PER_CUSTOMER: usize = 15;

/// One customer's messages, alternating replicas: each resent until acknowledged (as WhatsApp
/// retries a webhook without a 200), the next after a short pause. The messages acknowledged.
async fn whatsapp_customer(replicas: [&Gateway; 2], number: usize) -> Vec<usize> {
    let mut acknowledged = Vec::new();
    for m in 0..MESSAGES_PER_CUSTOMER {
        let body = whatsapp_text(
            &format!("3163000{number:04}"),
            &format!("wamid.CLUSTER.{number}.{m}"),
            &format!("c{number} m{m}"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempt = 0;
        while Instant::now() < deadline {
            let (status, _) = replicas[(m + attempt) % 2].whatsapp(body.clone()).await;
            if status == 200 {
                acknowledged.push(m);
                break;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if acknowledged.last() != Some(&m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150 + (number as u64 * 7) % 50)).await;
    }
    acknowledged
}

/// What the fake WhatsApp received for each customer: per reply, the last message it answers
/// and the customer's messages in its context (the mock model says both).
fn replies_by_customer(
    sent: &[clawgate_fakes::mock_platforms::Sent],
) -> std::collections::HashMap<usize, Vec<(usize, usize)>> {
    let mut by_customer: std::collections::HashMap<usize, Vec<(usize, usize)>> =
        std::collections::HashMap::new();
    for reply in sent {
        if let Some((c, m)) = last_customer_message(&reply.text) {
            by_customer
                .entry(c)
                .or_default()
                .push((m, user_turns(&reply.text)));
        }
    }
    by_customer
}

/// What happens to the cluster while customers write.
#[derive(Clone, Copy)]
enum Disturbance {
    /// SIGKILL a master; once its replica took over, start it again (it rejoins as a replica).
    KillMaster,
    /// Move 2000 slots, with their keys, from one master to another (`redis-cli --cluster
    /// reshard`).
    Reshard,
    /// SIGKILL one of the two clawgate replicas: the other takes over what it held.
    KillReplica,
}

async fn disturb(cluster: &mut TestRedisCluster, disturbance: Disturbance, victim: &Gateway) {
    match disturbance {
        Disturbance::KillReplica => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim.pid()),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill the replica");
        }
        Disturbance::KillMaster => {
            let victim = *cluster.slot_owners().await.keys().next().expect("a master");
            cluster.node(victim).stop().await;
            eventually(
                Duration::from_secs(30),
                "its replica to take over",
                || async {
                    let owners = cluster.slot_owners().await;
                    (owners.len() == 3 && !owners.contains_key(&victim)).then_some(())
                },
            )
            .await;
            // Back, it rejoins as its successor's replica: writes there are confirmed again.
            cluster.node(victim).restart().await;
        }
        Disturbance::Reshard => {
            let ids = cluster.master_ids().await;
            let moved = tokio::process::Command::new("redis-cli")
                .args(["--cluster", "reshard", &cluster.seed()])
                .args(["--cluster-from", &ids[0], "--cluster-to", &ids[1]])
                .args(["--cluster-slots", "2000", "--cluster-yes"])
                .args(["--cluster-pipeline", "100"])
                .output()
                .await
                .expect("run redis-cli --cluster reshard");
            assert!(
                moved.status.success(),
                "reshard failed: {}",
                String::from_utf8_lossy(&moved.stdout)
            );
            let owners = cluster.slot_owners().await;
            assert!(
                owners.values().any(|&slots| slots > 7_000),
                "the slots did not move: {owners:?}"
            );
        }
    }
}

/// Runs the load through two replicas with `ackReplicas: 1`, disturbs the cluster two seconds
/// in, and checks that every acknowledged message was answered once, with the whole
/// conversation in its context, and that no command ever crossed slots.
async fn load_survives(cluster: &mut TestRedisCluster, disturbance: Disturbance) {
    let llm = mock_llm(10).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    config["redis"] = serde_json::json!({"ackReplicas": 1, "degradeAfterMs": 30000});
    // A turn holds its conversation's lease while its WhatsApp reply goes out: the lease must
    // outlast a master's failover (README, "Beyond one host").
    config["workers"]["leaseTtlMs"] = 10_000.into();
    let a = Gateway::start(config.clone(), &cluster.url(), "replica-a").await;
    let b = Gateway::start(config, &cluster.url(), "replica-b").await;
    let load = async {
        let customers = (0..CUSTOMERS).map(|number| whatsapp_customer([&a, &b], number));
        futures_util::future::join_all(customers).await
    };
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        disturb(cluster, disturbance, &b).await;
    };
    let (acknowledged, ()) = tokio::join!(load, fault);
    let expected: usize = acknowledged.iter().map(Vec::len).sum();
    assert_eq!(
        expected,
        CUSTOMERS * MESSAGES_PER_CUSTOMER,
        "some messages were never acknowledged"
    );
    // Every acknowledged message is answered (alone or with the ones that came meanwhile).
    let covered = |replies: &std::collections::HashMap<usize, Vec<(usize, usize)>>| {
        acknowledged.iter().enumerate().all(|(c, messages)| {
            messages.iter().all(|m| {
                replies
                    .get(&c)
                    .is_some_and(|r| r.iter().any(|(last, _)| last >= m))
            })
        })
    };
    eventually(
        Duration::from_secs(60),
        "every acknowledged message answered",
        || async { covered(&replies_by_customer(&platforms.sent())).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replies = replies_by_customer(&platforms.sent());
    for (c, answered) in &replies {
        let mut lasts: Vec<usize> = answered.iter().map(|(last, _)| *last).collect();
        lasts.sort_unstable();
        let before = lasts.len();
        lasts.dedup();
        assert_eq!(
            lasts.len(),
            before,
            "customer {c} got a reply twice: {answered:?}"
        );
        for (last, turns) in answered {
            assert_eq!(
                *turns,
                last + 1,
                "customer {c}'s reply to m{last} lacked context: {answered:?}"
            );
        }
    }
    assert_no_crossslot(&[&a, &b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clawgate_replica_sigkilled_under_load_on_a_cluster_loses_and_doubles_nothing() {
    let mut cluster = TestRedisCluster::start(3).await;
    load_survives(&mut cluster, Disturbance::KillReplica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_sigkilled_under_load_loses_and_doubles_nothing_with_replicated_acks() {
    let mut cluster = TestRedisCluster::start(3).await;
    load_survives(&mut cluster, Disturbance::KillMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_between_masters_under_load_lose_and_double_nothing() {
    let mut cluster = TestRedisCluster::start(3).await;
    load_survives(&mut cluster, Disturbance::Reshard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_on_one_redis_moves_to_a_cluster_without_losing_a_conversation() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(5).await;
    let config = test_config(vec![openai_provider("primary", &llm, 5000, 0)]);
    let mut old = Gateway::start(config.clone(), &redis.url(), "replica-old").await;
    let sessions: Vec<String> = (0..6).map(|i| format!("moving-{i}")).collect();
    let ids: Vec<String> = (1..=5).map(|k| format!("m{k}")).collect();
    turns_via(&[&old], &sessions, &ids[..3], 0, None).await;

    // A replica configured for the sharded layout refuses to write to the unsharded data.
    let mut sharded = config.clone();
    sharded["redis"] = serde_json::json!({"shards": 16});
    // It is not ready (it would take nothing), so it is not waited for.
    let mut spec = GatewaySpec::new(sharded, &redis.url(), "replica-wrong");
    spec.wait_ready = false;
    let wrong = Gateway::spawn(spec).await;
    eventually(Duration::from_secs(10), "the layout check", || async {
        wrong.logs().contains("key layout").then_some(())
    })
    .await;
    let (status, _) = wrong.send(&sessions[0], "x1", "hallo", Some(1_000)).await;
    assert_eq!(status, 503, "a replica of the wrong layout took a message");
    drop(wrong);

    let cluster = TestRedisCluster::start(3).await;
    let migrate = |force: bool| {
        let (from, to) = (redis.url(), cluster.url());
        async move {
            let mut args = vec!["redis", "migrate", "--from", &from, "--to", &to, "--json"];
            if force {
                args.push("--force");
            }
            run_cli(&args, &[]).await
        }
    };
    // Refused while a replica runs against the source.
    let (code, out) = migrate(false).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("replicas are running"), "{out}");
    old.kill().await;
    // It crashed rather than stopped: its heartbeat is fresh, so --force.
    let (code, out) = migrate(true).await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON report");
    assert_eq!(report["from_layout"], "1", "{report}");
    assert_eq!(report["to_layout"], "2/16", "{report}");
    assert_eq!(report["conversations"], 6, "{report}");

    // Two replicas on the cluster go on with every conversation's context ...
    let a = Gateway::start(config.clone(), &cluster.url(), "replica-a").await;
    let b = Gateway::start(config, &cluster.url(), "replica-b").await;
    turns_via(&[&a, &b], &sessions, &ids[3..], 3, None).await;
    // ... and a message from before the move is still known: answered from its record.
    let requests = llm.requests();
    let again = answered(&a, &sessions[0], &ids[0], "turn 1").await;
    assert_eq!(user_turns(&again), 1);
    assert_eq!(
        llm.requests(),
        requests,
        "a message from before the move was answered again"
    );
    assert_no_crossslot(&[&a, &b]);
}

/// `redis.username` and `redis.password` reach every node of a cluster, as they reach a lone
/// Redis: with an ACL user on each node, the replica's connections to every master
/// authenticate as that user, and a wrong password leaves it unable to use the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_every_node_of_a_cluster() {
    let cluster = TestRedisCluster::start(3).await;
    for node in &cluster.nodes {
        let _: String = node
            .query(
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg("clawgate")
                    .arg("on")
                    .arg(">cluster-secret")
                    .arg("~*")
                    .arg("&*")
                    .arg("+@all"),
            )
            .await;
    }
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["redis"]["username"] = "clawgate".into();
    config["redis"]["password"] = "cluster-secret".into();
    let gateway = Gateway::start(config.clone(), &cluster.url(), "acl-a").await;
    for (i, id) in ["m1", "m2"].iter().enumerate() {
        let text = answered(&gateway, "acl-session", id, &format!("turn {}", i + 1)).await;
        assert_eq!(user_turns(&text), i + 1, "{text}");
    }
    for port in cluster.slot_owners().await.keys() {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.port == *port)
            .expect("master");
        let clients: String = node.query(redis::cmd("CLIENT").arg("LIST")).await;
        assert!(
            clients.contains("user=clawgate"),
            "master :{port} has no connection of user clawgate:\n{clients}"
        );
    }

    config["redis"]["password"] = "not-the-secret".into();
    config["redis"]["downMode"] = "reject".into();
    let mut spec = GatewaySpec::new(config, &cluster.url(), "acl-wrong");
    spec.wait_ready = false;
    let wrong = Gateway::spawn(spec).await;
    eventually(
        Duration::from_secs(20),
        "the replica with a wrong password to report Redis down",
        || async { (wrong.health().await["redis"] == "down").then_some(()) },
    )
    .await;
    let (status, _) = wrong.send("acl-session", "m3", "turn 3", Some(1_000)).await;
    assert_ne!(
        status, 200,
        "a wrong password must not serve from the cluster"
    );
}
