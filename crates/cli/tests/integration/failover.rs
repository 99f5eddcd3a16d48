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
        let (status, body) = gateway.send("failover", id, text, None).await;
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
    let (status, body) = gateway.send("failover", "m3", "wanneer?", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["reply"]["text"], "[mock] user_turns=3 last=\"wanneer?\"",
        "the conversation kept its context across the failover"
    );
    let new = group.wait_for_new_primary(old).await;
    assert_ne!(new, old);
    let (status, body) = gateway.send("failover", "m4", "en nu?", None).await;
    assert_eq!(
        (
            status,
            user_turns(body["reply"]["text"].as_str().unwrap_or(""))
        ),
        (200, 4)
    );

    // Every acknowledged WhatsApp message is answered exactly once.
    let expected: usize = sent_to.values().sum();
    let sent = eventually(Duration::from_secs(30), "every reply", || async {
        let sent = platforms.sent();
        (sent.len() >= expected).then_some(sent)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = if platforms.sent().len() > sent.len() {
        platforms.sent()
    } else {
        sent
    };
    let mut got: HashMap<String, usize> = HashMap::new();
    for reply in &sent {
        *got.entry(reply.to.clone()).or_default() += 1;
    }
    assert_eq!(
        got, sent_to,
        "replies per customer (exactly one per message)"
    );
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
