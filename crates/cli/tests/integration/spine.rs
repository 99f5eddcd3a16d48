//! One replica, one Redis: the basic path and its guarantees.

use crate::support::*;
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_is_answered_and_stored_in_redis() {
    let (redis, _llm, gateway) = one_replica(0).await;

    let (status, body) = gateway
        .send("s-1", "m-1", "Waar is mijn pakket? VC482913577NL", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message_id"], "m-1");
    assert_eq!(body["reply"]["provider"], "primary");
    assert_eq!(body["reply"]["skill"], "tracking");
    assert_eq!(
        body["reply"]["text"],
        "[mock] user_turns=1 last=\"Waar is mijn pakket? VC482913577NL\""
    );

    // The conversation lives in Redis under the design's key, with the conversation TTL.
    let stored: Vec<String> = redis
        .query(
            redis::cmd("LRANGE")
                .arg("oc:conv:{webchat:s-1}")
                .arg(0)
                .arg(-1),
        )
        .await;
    assert_eq!(stored.len(), 2);
    let assistant: Value = serde_json::from_str(&stored[1]).expect("JSON entry");
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["provider"], "primary");
    let ttl: i64 = redis
        .query(redis::cmd("TTL").arg("oc:conv:{webchat:s-1}"))
        .await;
    assert!((1..=1800).contains(&ttl), "conversation TTL {ttl}");
    let skill: String = redis
        .query(
            redis::cmd("HGET")
                .arg("oc:session:{webchat:s-1}")
                .arg("active_skill"),
        )
        .await;
    assert_eq!(skill, "tracking");

    // The finished inbox entry is acknowledged and trimmed.
    let inbox_length: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
    assert_eq!(inbox_length, 0);
    assert_eq!(gateway.history("s-1").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_message_conversation_keeps_its_context() {
    let (_redis, _llm, gateway) = one_replica(0).await;
    for turn in 1..=6 {
        let text = format!("message number {turn}");
        let (status, body) = gateway.send("ctx", &format!("m{turn}"), &text, None).await;
        assert_eq!(status, 200, "{body}");
        let reply = body["reply"]["text"].as_str().unwrap_or_default();
        assert_eq!(
            user_turns(reply),
            turn,
            "turn {turn} saw the wrong history: {reply}"
        );
        assert!(reply.ends_with(&format!("last=\"{text}\"")), "{reply}");
    }
    let history = gateway.history("ctx").await;
    assert_eq!(history.len(), 12);
    let roles: Vec<&str> = history
        .iter()
        .map(|e| e["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(roles, ["user", "assistant"].repeat(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_sent_three_times_gets_one_reply() {
    let (_redis, llm, gateway) = one_replica(300).await;
    // Two resends while the first is still being answered, one after.
    let (a, b) = tokio::join!(gateway.send("dup", "m1", "hello", None), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        gateway.send("dup", "m1", "hello", None).await
    });
    let c = gateway.send("dup", "m1", "hello", None).await;
    for (status, body) in [&a, &b, &c] {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["reply"], a.1["reply"]);
    }
    assert_eq!(
        gateway.history("dup").await.len(),
        2,
        "a resend added a turn"
    );
    assert_eq!(llm.requests(), 1, "the model was asked more than once");
    assert_eq!(
        gateway
            .metric("clawgate_messages_duplicate_total", "webchat")
            .await,
        2.0
    );

    // Another session may reuse the same message id.
    let (status, body) = gateway.send("other", "m1", "hi", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_health_endpoints_answer() {
    let redis = TestRedis::start().await;
    let gateway = Gateway::start(test_config(vec![]), &redis.url(), "r-health").await;

    let (status, body) = gateway
        .post(
            &gateway.url("/v1/webchat/messages"),
            "{\"session_id\": 1}".into(),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("session_id"),
        "{body}"
    );

    let huge = format!(
        "{{\"session_id\": \"s\", \"message_id\": \"m\", \"text\": \"{}\"}}",
        "a".repeat(70 * 1024)
    );
    let (status, body) = gateway
        .post(&gateway.url("/v1/webchat/messages"), huge)
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, _) = gateway
        .get("/v1/webchat/sessions/s/messages/never-sent")
        .await;
    assert_eq!(status, 404);

    let health = gateway.health().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["replica_id"], "r-health");
    assert_eq!(health["redis"], "up");
    assert_eq!(health["degraded"], false);
    assert!(
        health["uptime_s"].is_u64() && health["version"].is_string(),
        "{health}"
    );
    assert_eq!(gateway.get("/readyz").await.0, 200);

    // Nothing was accepted, and the template answers when no model is configured.
    assert_eq!(
        gateway.metric("clawgate_messages_accepted_total", "").await,
        0.0
    );
    let (status, body) = gateway
        .send("s", "m", "Wanneer bezorgen jullie op zaterdag?", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["reply"]["provider"], "template");
    assert_eq!(body["reply"]["skill"], "estimates");
    let metrics = gateway.get_text("/metrics").await;
    for name in [
        "clawgate_messages_accepted_total",
        "clawgate_messages_replied_total",
        "clawgate_turn_duration_seconds_bucket",
        "clawgate_provider_calls_total",
        "clawgate_degraded",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_slower_than_the_wait_budget_is_answered_202_then_fetched() {
    let (_redis, _llm, gateway) = one_replica(800).await;
    let (status, body) = gateway.send("slow", "m1", "hello", Some(100)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reply_url"], "/v1/webchat/sessions/slow/messages/m1");
    let reply = gateway.reply_of("slow", "m1").await;
    assert_eq!(reply["provider"], "primary");
}

/// The origin a CORS answer lets read it, if any.
fn allowed_origin(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_origins_pages_may_call_the_web_chat_api_from_a_browser() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["webchat"]["allowedOrigins"] = serde_json::json!(["https://track.velocity.example"]);
    let gateway = Gateway::start(config, &redis.url(), "cors").await;
    let http = http_client();
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            gateway.url("/v1/webchat/messages"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
    };
    // The portal's page: the browser's preflight is answered and allows the call.
    let response = preflight("https://track.velocity.example")
        .await
        .expect("preflight");
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        allowed_origin(&response).as_deref(),
        Some("https://track.velocity.example")
    );
    let methods = headers
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");
    // Another site: no permission, so its browser refuses to send or read.
    let response = preflight("https://evil.example").await.expect("preflight");
    assert_eq!(allowed_origin(&response), None, "{:?}", response.headers());
    // The call itself carries the permission for the portal.
    let response = http
        .post(gateway.url("/v1/webchat/messages"))
        .header("origin", "https://track.velocity.example")
        .json(&serde_json::json!({"session_id": "cors", "message_id": "m1", "text": "hoi"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    assert_eq!(
        allowed_origin(&response).as_deref(),
        Some("https://track.velocity.example")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_no_other_page_may_call_the_web_chat_api() {
    let (_redis, _llm, gateway) = one_replica(0).await;
    let response = http_client()
        .request(
            reqwest::Method::OPTIONS,
            gateway.url("/v1/webchat/messages"),
        )
        .header("origin", "https://track.velocity.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(allowed_origin(&response), None, "{:?}", response.headers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_chat_session_is_private_to_whoever_holds_its_token() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    // The default: tokens required.
    config["webchat"] = serde_json::json!({"replyWaitMs": 15000});
    let a = Gateway::start(config.clone(), &redis.url(), "a").await;
    let b = Gateway::start(config, &redis.url(), "b").await;
    let http = http_client();
    let new_session = |gateway: &Gateway| http.post(gateway.url("/v1/webchat/sessions")).send();
    let created: serde_json::Value = new_session(&a)
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let (session, token) = (
        created["session_id"].as_str().expect("id").to_string(),
        created["token"].as_str().expect("token").to_string(),
    );
    let other: serde_json::Value = new_session(&b)
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    assert_ne!(other["session_id"], created["session_id"]);
    let post = |gateway: &Gateway, bearer: Option<&str>, id: &str| {
        let mut request = http.post(gateway.url("/v1/webchat/messages")).json(
            &serde_json::json!({"session_id": session, "message_id": id, "text": "mijn pakket"}),
        );
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    // Without the token, or with another session's, nothing is accepted.
    let response = post(&a, None, "m0").await.expect("post");
    assert_eq!(response.status(), 401);
    let reason: serde_json::Value = response.json().await.expect("json");
    assert!(reason.to_string().contains("token"), "{reason}");
    let response = post(&a, other["token"].as_str(), "m0").await.expect("post");
    assert_eq!(response.status(), 401);
    // With it, on any replica (they share the signing key).
    assert_eq!(
        post(&a, Some(&token), "m1").await.expect("post").status(),
        200
    );
    let response = post(&b, Some(&token), "m2").await.expect("post");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or("")),
        2,
        "{body}"
    );

    // The history: only with the token.
    let history_url = b.url(&format!("/v1/webchat/sessions/{session}/messages"));
    assert_eq!(
        http.get(&history_url).send().await.expect("get").status(),
        401
    );
    let tampered = format!("{token}0");
    assert_eq!(
        http.get(&history_url)
            .bearer_auth(&tampered)
            .send()
            .await
            .expect("get")
            .status(),
        401
    );
    let history: serde_json::Value = http
        .get(&history_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(4),
        "{history}"
    );
    let status_url = a.url(&format!("/v1/webchat/sessions/{session}/messages/m1"));
    assert_eq!(
        http.get(&status_url).send().await.expect("get").status(),
        401
    );
    assert_eq!(
        http.get(&status_url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    assert!(!a.logs().contains(&token), "a token reached the log");
}
