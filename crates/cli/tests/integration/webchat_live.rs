//! The web chat's live events: the answer streamed as the model writes it, resumption after a
//! dropped connection on another replica, a provider failing mid-answer.

use crate::support::sse::{SseEvent, SseStream};
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const ANSWER: &str = "Your parcel VC123456 arrives tomorrow between nine and twelve o'clock.";

/// A config with session tokens required (the default) and the given providers.
fn private_config(providers: Vec<Value>) -> Value {
    let mut config = test_config(providers);
    config["webchat"] = json!({"replyWaitMs": 15000});
    config
}

/// A new private session on `gateway`: `(session_id, token)`.
async fn new_session(http: &reqwest::Client, gateway: &Gateway) -> (String, String) {
    let response = http
        .post(gateway.url("/v1/webchat/sessions"))
        .send()
        .await
        .expect("create session");
    assert_eq!(response.status(), 200);
    let created: Value = response.json().await.expect("json");
    assert!(created["expires_at"].as_u64().is_some(), "{created}");
    (
        created["session_id"].as_str().expect("id").to_string(),
        created["token"].as_str().expect("token").to_string(),
    )
}

async fn post_message(
    http: &reqwest::Client,
    gateway: &Gateway,
    token: &str,
    session: &str,
    message_id: &str,
    text: &str,
) -> u16 {
    http.post(gateway.url("/v1/webchat/messages?wait_ms=0"))
        .bearer_auth(token)
        .json(&json!({"session_id": session, "message_id": message_id, "text": text}))
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

fn streamed_text(events: &[SseEvent]) -> String {
    let mut text = String::new();
    for event in events {
        match event.name.as_str() {
            "delta" => text.push_str(event.data["text"].as_str().unwrap_or("")),
            "reset" => text.clear(),
            _ => {}
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_streams_live_and_a_reconnection_elsewhere_resumes_after_its_last_event() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    llm.set_reply(Some(ANSWER));
    llm.set_chunk_pause(Duration::from_millis(60));
    let config = private_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    let a = Gateway::start(config.clone(), &redis.url(), "a").await;
    let b = Gateway::start(config, &redis.url(), "b").await;
    let http = http_client();
    let (session, token) = new_session(&http, &a).await;
    let events_path = format!("/v1/webchat/sessions/{session}/events");

    // Private: no token, another session's token or a tampered one get 401.
    let (_, other_token) = new_session(&http, &b).await;
    for bad in ["", other_token.as_str(), &format!("{token}0")] {
        let status = http
            .get(a.url(&format!("{events_path}?token={bad}")))
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(status, 401, "token {bad:?}");
    }

    // The stream on replica b, the message through replica a: events cross replicas.
    let url = b.url(&format!("{events_path}?token={token}"));
    let mut first = SseStream::open(&http, &url, None).await;
    let ready = first.next(Duration::from_secs(5)).await.expect("ready");
    assert_eq!(ready.name, "ready");
    assert_eq!(
        post_message(&http, &a, &token, &session, "m1", "where is my parcel?").await,
        202
    );
    let mut seen = first.until("delta", Duration::from_secs(10)).await;
    seen.extend(first.next(Duration::from_secs(5)).await);
    assert!(
        seen.last().is_some_and(|e| e.name == "delta"),
        "{:?}",
        names(&seen)
    );
    // The connection drops mid-answer; the client resumes on the other replica.
    let resume_from = first.last_id.clone();
    drop(first);
    let url = a.url(&format!("{events_path}?token={token}"));
    let mut second = SseStream::open(&http, &url, Some(&resume_from)).await;
    let ready = second.next(Duration::from_secs(5)).await.expect("ready");
    assert_eq!(
        (ready.name.as_str(), ready.id.as_str()),
        ("ready", resume_from.as_str())
    );
    let rest = second.until("answer", Duration::from_secs(20)).await;
    seen.extend(rest);

    let order = names(&seen);
    assert_eq!(order[..2], ["message", "typing"], "{order:?}");
    assert_eq!(order.last(), Some(&"answer"));
    assert!(
        order.iter().filter(|n| **n == "delta").count() >= 3,
        "streamed in pieces: {order:?}"
    );
    assert!(!order.contains(&"reset"), "{order:?}");
    let ids: Vec<&str> = seen.iter().map(|e| e.id.as_str()).collect();
    let mut unique = ids.clone();
    unique.sort_by_key(|id| {
        let (ms, n) = id.split_once('-').expect("stream id");
        (ms.parse::<u64>().expect("ms"), n.parse::<u64>().expect("n"))
    });
    unique.dedup();
    assert_eq!(ids, unique, "every event once, in order");
    assert_eq!(seen[0].data["text"], "where is my parcel?");
    assert_eq!(
        streamed_text(&seen),
        ANSWER,
        "the deltas add up to the answer"
    );
    let answer = seen.last().expect("answer");
    assert_eq!(answer.data["text"], ANSWER);
    assert_eq!(answer.data["message_id"], "m1");

    // The history holds the final answer only.
    let history: Value = http
        .get(a.url(&format!("/v1/webchat/sessions/{session}/messages")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["where is my parcel?", ANSWER]);

    // A new stream without an id starts after the newest event: nothing is replayed.
    let mut fresh = SseStream::open(&http, &url, None).await;
    let ready = fresh.next(Duration::from_secs(5)).await.expect("ready");
    assert_eq!(ready.id, answer.id);
    assert!(fresh.next(Duration::from_millis(700)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failing_mid_answer_resets_the_stream_and_the_fallback_answers() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    primary.set_chunk_pause(Duration::from_millis(30));
    primary.cut_next(1);
    let fallback = mock_llm(0).await;
    fallback.set_reply(Some(ANSWER));
    let config = private_config(vec![
        openai_provider("primary", &primary, 10_000, 0),
        ollama_provider("fallback", &fallback, 10_000),
    ]);
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    let http = http_client();
    let (session, token) = new_session(&http, &gateway).await;
    let url = gateway.url(&format!("/v1/webchat/sessions/{session}/events"));
    let mut stream = {
        let response = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("events");
        assert_eq!(response.status(), 200);
        drop(response);
        // The header form works as well as the query form; the helper uses the query.
        SseStream::open(&http, &format!("{url}?token={token}"), None).await
    };
    stream.next(Duration::from_secs(5)).await.expect("ready");
    assert_eq!(
        post_message(
            &http,
            &gateway,
            &token,
            &session,
            "m1",
            "waar is mijn pakket?"
        )
        .await,
        202
    );
    let seen = stream.until("answer", Duration::from_secs(20)).await;
    let order = names(&seen);
    let reset = order
        .iter()
        .position(|n| *n == "reset")
        .expect("a reset event");
    assert!(
        order[..reset].contains(&"delta"),
        "the primary streamed before it failed: {order:?}"
    );
    assert!(
        order[reset..].contains(&"delta"),
        "the fallback's answer streamed after the reset: {order:?}"
    );
    assert_eq!(streamed_text(&seen), ANSWER);
    let answer = seen.last().expect("answer");
    assert_eq!(
        (
            answer.data["text"].as_str(),
            answer.data["provider"].as_str()
        ),
        (Some(ANSWER), Some("fallback"))
    );
    let history = gateway.history_with_token(&session, &token).await;
    assert_eq!(
        history.last().and_then(|m| m["text"].as_str()),
        Some(ANSWER)
    );
}
