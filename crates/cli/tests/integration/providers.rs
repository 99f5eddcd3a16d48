//! The provider chain against real HTTP providers (the mock LLM) from a real replica.

use crate::support::*;
use clawgate_fakes::mock_llm::Mode;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_returning_500_falls_back_and_recovers() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(0).await;
    let gateway = Gateway::start(
        test_config(vec![
            openai_provider("primary", &primary, 5000, 1),
            ollama_provider("fallback", &fallback, 5000),
        ]),
        &redis.url(),
        "r1",
    )
    .await;
    primary.set_mode(Mode::Error);
    let (status, body) = gateway.send("s", "m1", "hello", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "fallback");
    assert_eq!(
        primary.requests(),
        2,
        "maxRetries 1 means two attempts at the primary"
    );
    assert_eq!(
        gateway
            .metric(
                "clawgate_provider_calls_total",
                "provider=\"primary\",outcome=\"http_5xx\""
            )
            .await,
        2.0
    );

    primary.set_mode(Mode::Ok);
    let (_, body) = gateway.send("s", "m2", "again", None).await;
    assert_eq!(body["reply"]["provider"], "primary");
    // The fallback's answer is part of the context the primary sees.
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
        2
    );
    let history = gateway.history("s").await;
    assert_eq!(history[1]["provider"], "fallback");
    assert_eq!(history[3]["provider"], "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_primary_falls_back_within_its_timeout() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(200).await;
    let gateway = Gateway::start(
        test_config(vec![
            openai_provider("primary", &primary, 1000, 2),
            ollama_provider("fallback", &fallback, 5000),
        ]),
        &redis.url(),
        "r1",
    )
    .await;
    primary.set_mode(Mode::Hang);
    let started = Instant::now();
    let (status, body) = gateway.send("s", "m1", "hello", None).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "fallback");
    // One timeout (a hang is not retried), then the fallback's latency; generous slack for CI.
    assert!(elapsed >= Duration::from_millis(1200), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1000 + 200 + 1500),
        "{elapsed:?}"
    );
    assert_eq!(primary.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_model_down_the_template_answers() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    primary.set_mode(Mode::RateLimited);
    let gateway = Gateway::start(
        test_config(vec![
            openai_provider("primary", &primary, 1000, 3),
            serde_json::json!({"name": "gone", "type": "ollama", "endpoint": format!("http://127.0.0.1:{}", free_port()), "model": "x", "timeout": 1000}),
        ]),
        &redis.url(),
        "r1",
    )
    .await;
    let (status, body) = gateway
        .send("s", "m1", "Wanneer wordt mijn pakket bezorgd?", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "template");
    assert_eq!(body["reply"]["skill"], "estimates");
    assert_eq!(primary.requests(), 1, "a 429 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_waiting_on_an_http2_provider_share_a_few_connections_and_each_gets_its_answer() {
    const TURNS: usize = 250;
    let redis = TestRedis::start().await;
    let llm = mock_llm(1_000).await;
    let mut provider = openai_provider("primary", &llm, 10_000, 0);
    provider["httpVersion"] = json!("2");
    provider["streamsPerConnection"] = json!(100);
    let mut config = test_config(vec![provider]);
    config["workers"]["concurrency"] = json!(512);
    let gateway = std::sync::Arc::new(Gateway::start(config, &redis.url(), "r1").await);
    let mut turns = tokio::task::JoinSet::new();
    for i in 0..TURNS {
        let gateway = gateway.clone();
        turns.spawn(async move {
            let text = format!("where is parcel {i}");
            let (status, body) = gateway.send(&format!("h2-{i}"), "m1", &text, None).await;
            (status, body, text)
        });
    }
    while let Some(turn) = turns.join_next().await {
        let (status, body, text) = turn.expect("turn");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["reply"]["provider"], "primary", "{body}");
        let reply = body["reply"]["text"].as_str().unwrap_or_default();
        assert!(reply.contains(&format!("last=\"{text}\"")), "{reply}");
    }
    assert_eq!(llm.http2_requests(), TURNS as u64, "every call over HTTP/2");
    // At most 100 calls per connection: 250 calls at once take three (more than one, since
    // one connection would queue calls past the server's stream limit), never one per call.
    let connections = llm.connections();
    assert!((2..=3).contains(&connections), "{connections} connections");
}
