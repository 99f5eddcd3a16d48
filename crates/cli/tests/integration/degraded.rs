//! Redis outages: the gateway keeps answering from in-process state and returns to Redis on its
//! own; in `reject` mode it refuses instead.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_continue_through_a_redis_outage_and_return_to_redis_without_restart() {
    let (mut redis, _llm, gateway) = one_replica(0).await;
    let (status, body) = gateway.send("before", "m1", "hello", None).await;
    assert_eq!(
        (status, body["reply"]["provider"].as_str()),
        (200, Some("primary"))
    );

    redis.stop().await;
    let (status, body) = gateway.send("during", "m1", "still there?", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "primary");
    let (status, body) = gateway.send("during", "m2", "and now?", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
        2
    );
    let health = gateway.health().await;
    assert_eq!(
        (health["degraded"].as_bool(), health["redis"].as_str()),
        (Some(true), Some("down"))
    );
    assert_eq!(
        gateway.get("/readyz").await.0,
        200,
        "degrade mode stays ready"
    );
    assert_eq!(gateway.metric("clawgate_degraded", "").await, 1.0);

    redis.restart().await;
    eventually(
        Duration::from_secs(10),
        "the gateway to see Redis again",
        || async { (gateway.health().await["redis"] == "up").then_some(()) },
    )
    .await;
    let (status, body) = gateway.send("after", "m1", "back to normal", None).await;
    assert_eq!(status, 200, "{body}");
    let stored: u64 = redis
        .query(redis::cmd("LLEN").arg("oc:conv:{webchat:after}"))
        .await;
    assert_eq!(stored, 2, "the turn after the outage is not in Redis");
    assert_eq!(gateway.health().await["degraded"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_answers_with_no_redis_and_no_model() {
    let port = free_port();
    let mut spec = GatewaySpec::new(
        test_config(vec![]),
        &format!("redis://127.0.0.1:{port}"),
        "lonely",
    );
    spec.via_env = true;
    let gateway = Gateway::spawn(spec).await;
    let health = gateway.health().await;
    assert_eq!(
        health["replica_id"], "lonely",
        "CLAWGATE_REPLICA_ID ignored"
    );
    assert_eq!(health["degraded"], true);
    let (status, body) = gateway.send("s", "m1", "Where is my parcel?", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "template");
    assert_eq!(body["reply"]["skill"], "tracking");
    assert!(
        body["reply"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("tracking number")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_refuses_with_503_while_redis_is_down() {
    let mut config = test_config(vec![]);
    config["redis"] = json!({"downMode": "reject", "commandTimeoutMs": 500});
    let mut spec = GatewaySpec::new(
        config,
        &format!("redis://127.0.0.1:{}", free_port()),
        "strict",
    );
    spec.wait_ready = false;
    let gateway = Gateway::spawn(spec).await;
    eventually(
        Duration::from_secs(5),
        "readiness to report Redis",
        || async {
            let (status, body) = gateway.get("/readyz").await;
            (status == 503 && body["failing"].to_string().contains("redis")).then_some(())
        },
    )
    .await;
    let (status, body) = gateway.send("s", "m1", "hello", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("reject")
    );
}
