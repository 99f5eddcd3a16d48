//! The config file reloaded while a replica runs: a valid edit takes effect without a restart,
//! an invalid one is refused (the last good version keeps answering, `/healthz` says why), and
//! settings only a restart can apply are named.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_config_takes_effect_without_restart_and_a_broken_one_keeps_the_last_good_version()
 {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![]);
    config["gateway"]["configReloadIntervalMs"] = json!(200);
    let gateway = Gateway::start(config.clone(), &redis.url(), "r1").await;
    let (status, body) = gateway.send("s1", "m1", "hello", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "template");

    // The operator adds a model in front of the template.
    config["llm"]["providers"] = json!([openai_provider("primary", &llm, 5_000, 0)]);
    gateway.rewrite_config(&config);
    let mut n = 1;
    eventually(
        Duration::from_secs(10),
        "the new provider to answer",
        || {
            n += 1;
            let id = format!("m{n}");
            let gateway = &gateway;
            async move {
                let (_, body) = gateway.send("s1", &id, "hello again", None).await;
                (body["reply"]["provider"] == "primary").then_some(())
            }
        },
    )
    .await;
    let health = gateway.health().await;
    assert_eq!(health["config"]["reloads"], 1, "{health}");
    assert_eq!(health["providers"], json!(["primary", "template"]));

    // A broken edit is refused with the key named; the running version keeps answering.
    let mut broken = config.clone();
    broken["llm"]["providers"][0]["timeout"] = json!("soon");
    gateway.rewrite_config(&broken);
    let errors = eventually(
        Duration::from_secs(10),
        "the refused reload reported",
        || async {
            let health = gateway.health().await;
            let errors = health["config"]["errors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (!errors.is_empty()).then_some(errors)
        },
    )
    .await;
    let error = errors[0].as_str().unwrap_or_default();
    assert!(
        error.contains("clawgate.json") && error.contains("llm.providers[0].timeout"),
        "{error}"
    );
    let (_, body) = gateway
        .send("s1", "after-break", "still there?", None)
        .await;
    assert_eq!(body["reply"]["provider"], "primary", "{body}");
    assert!(
        body["reply"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("still there?")
    );
    assert!(
        gateway
            .metric("clawgate_config_reloads_total", "rejected")
            .await
            >= 1.0
    );

    // A setting only a restart applies is named, and the rest of the edit still applies.
    let mut restart = config.clone();
    restart["workers"]["concurrency"] = json!(8);
    restart["agent"]["systemPrompt"] = json!("You are VeloCity's assistant.");
    gateway.rewrite_config(&restart);
    let health = eventually(
        Duration::from_secs(10),
        "the restart-only change named",
        || async {
            let health = gateway.health().await;
            (health["config"]["restart_needed"] == json!(["workers"])).then_some(health)
        },
    )
    .await;
    assert_eq!(health["config"]["errors"], json!([]), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once_and_a_rotated_api_token_replaces_the_old_one() {
    let redis = TestRedis::start().await;
    let mut config = test_config(vec![]);
    config["gateway"]["configReloadIntervalMs"] = json!(0);
    config["channels"] = json!({"api": {"token": "old-token"}});
    let gateway = Gateway::start(config.clone(), &redis.url(), "r1").await;
    let ask = |token: &'static str| {
        let gateway = &gateway;
        async move {
            http_client()
                .post(gateway.url("/v1/chat/completions"))
                .bearer_auth(token)
                .json(&json!({"model": "x", "user": "u1",
                              "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .expect("POST")
                .status()
                .as_u16()
        }
    };
    assert_eq!(ask("old-token").await, 200);

    config["channels"]["api"]["token"] = json!("new-token");
    gateway.rewrite_config(&config);
    // Only SIGHUP reloads here (interval 0): nothing changes before it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ask("old-token").await, 200);
    gateway.hangup();
    eventually(
        Duration::from_secs(5),
        "the rotated token to apply",
        || async { (ask("new-token").await == 200).then_some(()) },
    )
    .await;
    assert_eq!(ask("old-token").await, 401);
    assert!(gateway.logs().contains("config reloaded"));
}
