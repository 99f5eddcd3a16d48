//! The OpenAI-compatible endpoint, as an OpenAI client uses it.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

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
    // Words 20 ms apart, as a model writes them: words that arrive while the previous delta is
    // being written are joined into the next write, so a mock sending all at once could be
    // streamed in one piece, and the test would depend on the machine's speed.
    llm.set_chunk_pause(Duration::from_millis(20));
    let gateway = Gateway::start(config_with_api(&llm), &redis.url(), "r1").await;
    let response = http_client()
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

    let models = http_client()
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

/// `data:` payloads of a streamed response, read as they arrive; `on_first_text` runs when the
/// first chunk with answer text is in.
async fn stream_chunks<F, Fut>(response: reqwest::Response, on_first_text: F) -> Vec<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut response = response;
    let (mut pending, mut data) = (String::new(), Vec::new());
    let mut on_first_text = Some(on_first_text);
    while let Some(bytes) = response.chunk().await.expect("chunk") {
        pending.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(payload) = line.strip_prefix("data: ") {
                    let has_text = serde_json::from_str::<Value>(payload).is_ok_and(|c| {
                        c["choices"][0]["delta"]["content"]
                            .as_str()
                            .is_some_and(|t| !t.is_empty())
                    });
                    if has_text && let Some(first) = on_first_text.take() {
                        first().await;
                    }
                    data.push(payload.to_string());
                }
            }
        }
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_true_passes_the_models_words_on_as_it_writes_them() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    llm.set_chunk_pause(std::time::Duration::from_millis(150));
    let a = Gateway::start(config_with_api(&llm), &redis.url(), "a").await;
    let _b = Gateway::start(config_with_api(&llm), &redis.url(), "b").await;
    let response = http_client()
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(API_TOKEN)
        .header("idempotency-key", "live-1")
        .json(
            &json!({"user": "live", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "where is my parcel now"}]}),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let committed_at_first_text = std::sync::Mutex::new(None);
    let data = stream_chunks(response, || async {
        // The first words are in while the model is still writing: nothing is committed yet.
        let reply: Option<String> = redis
            .query(redis::cmd("GET").arg("oc:replied:{api:live-1}"))
            .await;
        *committed_at_first_text.lock().unwrap() = Some(reply.is_some());
    })
    .await;
    assert_eq!(*committed_at_first_text.lock().unwrap(), Some(false));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let expected = "[mock] user_turns=1 last=\"where is my parcel now\"";
    assert_eq!(text, expected);
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(
        pieces >= 4,
        "streamed word by word, not at the end: {data:?}"
    );
    // include_usage: a last chunk with no choices and the usage.
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert!(
        usage["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{usage}"
    );
    assert_eq!(
        usage["usage"]["total_tokens"].as_u64(),
        Some(
            usage["usage"]["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["usage"]["completion_tokens"].as_u64().unwrap_or(0)
        )
    );

    // The same request again (a client retrying): the answer on record, no new turn.
    let again = http_client()
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(API_TOKEN)
        .header("idempotency-key", "live-1")
        .json(&json!({"user": "live", "stream": true,
                      "messages": [{"role": "user", "content": "where is my parcel now"}]}))
        .send()
        .await
        .expect("POST");
    let data = stream_chunks(again, || async {}).await;
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, expected);
    assert_eq!(llm.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_client_sends_the_context_and_a_pending_reply_is_not_retried_into_new_turns() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut config = config_with_api(&llm);
    config["webchat"]["replyWaitMs"] = json!(400);
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    // No `user`, no session header: the messages are the conversation (a chat app's way).
    let (status, answer) = chat(
        &gateway,
        json!({"messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "my parcel VC123"},
            {"role": "assistant", "content": "It is on its way."},
            {"role": "user", "content": "when will it come?"}]}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        content(&answer),
        "[mock] user_turns=2 last=\"when will it come?\"",
        "the earlier messages were the context"
    );

    // A slow model: the reply is pending after the wait. The official SDKs retry a 504 on
    // their own unless told not to; each retry would be a new turn.
    llm.set_latency(std::time::Duration::from_millis(1500));
    let response = http_client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"user": "slow", "messages": [{"role": "user", "content": "hello?"}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 504);
    assert_eq!(
        response
            .headers()
            .get("x-should-retry")
            .and_then(|v| v.to_str().ok()),
        Some("false")
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "reply_pending");

    // GET /v1/models/{id}.
    let http = http_client();
    let model = |id: &'static str| {
        http.get(gateway.url(&format!("/v1/models/{id}")))
            .bearer_auth(API_TOKEN)
            .send()
    };
    let found = model("clawgate").await.expect("GET");
    assert_eq!(found.status(), 200);
    let found: Value = found.json().await.expect("json");
    assert_eq!(
        (found["id"].as_str(), found["object"].as_str()),
        (Some("clawgate"), Some("model"))
    );
    assert_eq!(model("gpt-4o").await.expect("GET").status(), 404);
}
