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

/// Sends `ids` (turns `first + 1`, ...) in every session, alternating replicas, and checks that
/// every turn saw all turns before it.
async fn turns(a: &Gateway, b: &Gateway, sessions: &[String], ids: &[String], first: usize) {
    for (offset, id) in ids.iter().enumerate() {
        let turn = first + offset + 1;
        for (i, session) in sessions.iter().enumerate() {
            let via = if (i + turn).is_multiple_of(2) { a } else { b };
            let text = answered(via, session, id, &format!("turn {turn}")).await;
            assert_eq!(
                user_turns(&text),
                turn,
                "{session} turn {turn}: {text}\n{}\n{}",
                a.logs(),
                b.logs()
            );
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
    turns(&a, &b, &sessions, &ids[..3], 0).await;
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
    turns(&a, &b, &sessions, &ids[3..], 3).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for session in &sessions {
        assert_answered_once_in_order(&a, session, &ids).await;
    }
    assert_no_crossslot(&[&a, &b]);
}
