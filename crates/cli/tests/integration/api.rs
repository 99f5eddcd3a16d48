//! The OpenAI-compatible endpoint, as an OpenAI client uses it.

use crate::support::*;
use serde_json::{Value, json};

fn config_with_api(llm: &clawgate_fakes::mock_llm::MockLlm) -> Value {
    let mut config = test_config(vec![openai_provider("primary", llm, 10_000, 0)]);
    config["channels"] = json!({"api": {"token": API_TOKEN}});
    config
}

async fn chat(gateway: &Gateway, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let auth = format!("Bearer {API_TOKEN}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    gateway
        .post_raw("/v1/chat/completions", body.to_string().into_bytes(), &all)
        .await
}

fn content(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_user_keeps_the_conversation_across_calls_and_replicas() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let a = Gateway::start(config_with_api(&llm), &redis.url(), "replica-a").await;
    let b = Gateway::start(config_with_api(&llm), &redis.url(), "replica-b").await;
    for (turn, via) in [(1, &a), (2, &b), (3, &a)] {
        // A client sends its whole transcript; only the newest user message is new.
        let mut messages =
            vec![json!({"role": "system", "content": "ignored: the agent has its own"})];
        for earlier in 1..turn {
            messages.push(json!({"role": "user", "content": format!("question {earlier}")}));
            messages.push(json!({"role": "assistant", "content": "…"}));
        }
        messages.push(json!({"role": "user", "content": format!("question {turn}")}));
        let (status, answer) = chat(
            via,
            json!({"model": "gpt-4o-mini", "user": "ops-42", "messages": messages}),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["model"], "gpt-4o-mini");
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            content(&answer),
            format!("[mock] user_turns={turn} last=\"question {turn}\"")
        );
        assert_eq!(answer["clawgate"]["provider"], "primary");
    }
    let stored: u64 = redis
        .query(redis::cmd("LLEN").arg("oc:conv:{api:ops-42}"))
        .await;
    assert_eq!(stored, 6);

    // The session header names the conversation too; without either, each call stands alone.
    let (_, answer) = chat(
        &a,
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        &[("x-clawgate-session", "ops-42")],
    )
    .await;
    assert!(content(&answer).contains("user_turns=4"), "{answer}");
    let (_, answer) = chat(
        &a,
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        &[],
    )
    .await;
    assert!(content(&answer).contains("user_turns=1"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_true_answers_with_server_sent_chunks() {
    let (redis, llm) = (TestRedis::start().await, mock_llm(0).await);
    let gateway = Gateway::start(config_with_api(&llm), &redis.url(), "r1").await;
    let response = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"user": "streamer", "stream": true,
                      "messages": [{"role": "user", "content": "tell me a long story about parcels"}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let body = response.text().await.expect("body");
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(json!("stop"))
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        "[mock] user_turns=1 last=\"tell me a long story about parcels\""
    );
    assert!(chunks.len() > 3, "the text came in one piece: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_its_token_checks_its_input_and_retries_are_idempotent() {
    let (redis, llm) = (TestRedis::start().await, mock_llm(0).await);
    let gateway = Gateway::start(config_with_api(&llm), &redis.url(), "r1").await;
    let request = json!({"user": "u1", "messages": [{"role": "user", "content": "hello"}]});
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let (status, body) = gateway
            .post_raw(
                "/v1/chat/completions",
                request.to_string().into_bytes(),
                &headers,
            )
            .await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, body) = chat(&gateway, json!({"messages": "nope"}), &[]).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("chat-completions request"),
        "{body}"
    );
    let (status, _) = chat(
        &gateway,
        json!({"messages": [{"role": "assistant", "content": "hi"}]}),
        &[],
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = gateway
        .post_raw(
            "/v1/chat/completions",
            vec![b' '; 1024 * 1024 + 1],
            &[("authorization", &format!("Bearer {API_TOKEN}"))],
        )
        .await;
    assert_eq!(status, 413);

    let key = [("idempotency-key", "req-7")];
    let (_, first) = chat(&gateway, request.clone(), &key).await;
    let (_, again) = chat(&gateway, request, &key).await;
    assert_eq!(content(&first), content(&again));
    assert_eq!(llm.requests(), 1, "a retried request asked the model again");

    let models = reqwest::Client::new()
        .get(gateway.url("/v1/models"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("GET")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "clawgate");
}
