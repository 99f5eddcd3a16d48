//! The command-line contract: `config check` and `mock llm` as acceptance checks run them.

use crate::support::*;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

async fn config_check(file: &str, env: &[(&str, &str)]) -> (i32, String) {
    run_cli(&["config", "check", file], env).await
}

#[tokio::test]
async fn config_check_accepts_the_seed_llm_block_unchanged() {
    let (code, out) = config_check(
        &fixture_path("openclaw-llm.json").display().to_string(),
        &[("LLM_API_KEY", "sk-x")],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cloud-primary") && out.contains("local-fallback"),
        "{out}"
    );
    assert!(!out.contains("sk-x"), "the API key was printed");

    let (code, out) = config_check(
        &fixture_path("openclaw-llm.json").display().to_string(),
        &[],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("llm.providers[0].apiKey") && out.contains("LLM_API_KEY"),
        "{out}"
    );
}

#[tokio::test]
async fn config_check_names_file_key_and_expectation_for_every_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.json");
    let config = json!({
        "workers": {"claimIdleMs": "soon"},
        "redis": {"downMode": "maybe"},
        "llm": {"providers": [{"name": "p", "type": "openai-compatible", "model": "m", "timeout": -1}]}
    });
    std::fs::write(&file, config.to_string()).expect("write");
    let name = file.display().to_string();
    let (code, out) = config_check(&name, &[]).await;
    assert_eq!(code, 1, "{out}");
    for expected in [
        format!("{name}: workers.claimIdleMs: expected an integer"),
        format!("{name}: redis.downMode: expected one of \"degrade\", \"reject\""),
        format!("{name}: llm.providers[0].timeout: expected an integer"),
        format!("{name}: llm.providers[0].endpoint: missing"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    let (code, out) =
        config_check(&dir.path().join("absent.json").display().to_string(), &[]).await;
    assert_eq!(code, 1);
    assert!(out.contains("absent.json: cannot read the file"), "{out}");
}

#[tokio::test]
async fn config_check_accepts_sentinel_credentials_and_replicated_acknowledgements() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sentinel.json");
    let mut config = json!({
        "redis": {
            "sentinel": {"masterName": "velocity", "nodes": ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]},
            "username": "clawgate", "password": "${REDIS_PASSWORD}",
            "ackReplicas": 1, "ackTimeoutMs": 800
        }
    });
    std::fs::write(&file, config.to_string()).expect("write");
    let name = file.display().to_string();
    let (code, out) = config_check(&name, &[("REDIS_PASSWORD", "hunter2-redis")]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"velocity\"")
            && out.contains("10.0.0.3:26379")
            && out.contains("as user \"clawgate\"")
            && out.contains("1 replica(s)")
            && out.contains("800 ms"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2-redis"),
        "the password was printed: {out}"
    );

    // The same as a URL.
    config["redis"] = json!({"url": "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/velocity"});
    std::fs::write(&file, config.to_string()).expect("write");
    let (code, out) = config_check(&name, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 sentinel(s)"), "{out}");

    config["redis"] = json!({
        "sentinel": {"masterName": "", "nodes": ["10.0.0.1"]},
        "url": "redis://127.0.0.1:6379",
        "ackReplicas": -1
    });
    std::fs::write(&file, config.to_string()).expect("write");
    let (code, out) = config_check(&name, &[]).await;
    assert_eq!(code, 1, "{out}");
    for expected in [
        format!("{name}: redis.sentinel.nodes: expected sentinels as \"host:port\""),
        format!("{name}: redis.sentinel.masterName: expected"),
        format!("{name}: redis.url: give either redis.url or redis.sentinel"),
        format!("{name}: redis.ackReplicas: expected"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test]
async fn mock_llm_speaks_openai_and_ollama_and_obeys_control() {
    let port = free_port();
    let mut child = tokio::process::Command::new(binary())
        .args([
            "mock",
            "llm",
            "--port",
            &port.to_string(),
            "--latency-ms",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mock llm");
    let http = http_client();
    let base = format!("http://127.0.0.1:{port}");
    let chat = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second question"}
    ]});
    let openai: Value = eventually(Duration::from_secs(10), "the mock LLM to answer", || {
        let (http, url, chat) = (
            http.clone(),
            format!("{base}/v1/chat/completions"),
            chat.clone(),
        );
        async move {
            http.post(url)
                .json(&chat)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
    })
    .await;
    let text = openai["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("user_turns=2") && text.contains("last=\"second question\""),
        "{openai}"
    );
    assert_eq!(openai["object"], "chat.completion");

    let ollama: Value = http
        .post(format!("{base}/api/chat"))
        .json(&json!({"model": "llama3.1:8b", "messages": chat["messages"], "stream": false}))
        .send()
        .await
        .expect("ollama chat")
        .json()
        .await
        .expect("json");
    assert_eq!(ollama["done"], true);
    assert!(
        ollama["message"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("user_turns=2")
    );

    for (mode, status) in [("error", 500), ("rate_limited", 429), ("ok", 200)] {
        let control = http
            .post(format!("{base}/control"))
            .json(&json!({"mode": mode}))
            .send()
            .await
            .expect("control");
        assert_eq!(control.status(), 200);
        let answer = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .expect("chat");
        assert_eq!(answer.status().as_u16(), status, "mode {mode}");
    }
    let control = http
        .post(format!("{base}/control"))
        .json(&json!({"mode": "hang"}))
        .send()
        .await
        .expect("control");
    assert_eq!(control.status(), 200);
    let hung = http
        .post(format!("{base}/v1/chat/completions"))
        .timeout(Duration::from_millis(300))
        .json(&chat)
        .send()
        .await;
    assert!(
        hung.is_err_and(|e| e.is_timeout()),
        "a hanging mock answered"
    );
    let _ = child.kill().await;
}

#[tokio::test]
async fn mock_platforms_records_sends_in_order_and_fails_on_request() {
    let port = free_port();
    let mut child = tokio::process::Command::new(binary())
        .args(["mock", "platforms", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mock platforms");
    let http = http_client();
    let base = format!("http://127.0.0.1:{port}");
    let whatsapp = fixture("whatsapp-send-request.json");
    let sent: reqwest::Response = eventually(
        Duration::from_secs(10),
        "the mock platforms to answer",
        || {
            let (http, url, body) = (
                http.clone(),
                format!("{base}/v21.0/106540352242922/messages"),
                whatsapp.clone(),
            );
            async move {
                http.post(url)
                    .bearer_auth("token")
                    .body(body)
                    .send()
                    .await
                    .ok()
            }
        },
    )
    .await;
    assert_eq!(sent.status(), 200);
    let answer: Value = sent.json().await.expect("json");
    assert!(
        answer["messages"][0]["id"]
            .as_str()
            .unwrap_or("")
            .starts_with("wamid.")
    );
    let telegram = http
        .post(format!("{base}/bot7000000001:TEST/sendMessage"))
        .body(fixture("telegram-sendmessage-request.json"))
        .send()
        .await
        .expect("telegram");
    assert_eq!(telegram.json::<Value>().await.expect("json")["ok"], true);

    let all: Value = http
        .get(format!("{base}/sent"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(
        all,
        json!([
            {"channel": "whatsapp", "to": "31612345678", "text": "Your package VC482913577NL is out for delivery, expected between 14:00 and 16:00.", "address_field": "to", "sender": "127.0.0.1"},
            {"channel": "telegram", "to": "5123456789", "text": "Pickup for 14 parcels is booked for tomorrow between 09:00 and 12:00.", "address_field": "chat_id", "sender": "127.0.0.1"}
        ])
    );
    let only: Value = http
        .get(format!("{base}/sent?channel=telegram&to=5123456789"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(only.as_array().map(Vec::len), Some(1));

    let control = http
        .post(format!("{base}/control"))
        .json(&json!({"fail_next": 1, "status": 429, "retry_after": 3}))
        .send()
        .await
        .expect("control");
    assert_eq!(control.status(), 200);
    let limited = http
        .post(format!("{base}/bot7000000001:TEST/sendMessage"))
        .body(fixture("telegram-sendmessage-request.json"))
        .send()
        .await
        .expect("telegram");
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.json::<Value>().await.expect("json")["parameters"]["retry_after"],
        3
    );

    let cleared = http
        .delete(format!("{base}/sent"))
        .send()
        .await
        .expect("DELETE");
    assert!(cleared.status().is_success());
    let none: Value = http
        .get(format!("{base}/sent"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(none, json!([]));
    let _ = child.kill().await;
}

/// The mock platforms take what the official client libraries send: python-telegram-bot
/// posts form-encoded parameters (numbers and objects JSON-encoded into strings) and calls
/// getMe first; pywa addresses a customer without a number by `recipient`.
#[tokio::test]
async fn mock_platforms_take_what_the_official_client_libraries_send() {
    let platforms = mock_platforms().await;
    let base = platforms.base_url();
    let bot = format!("{base}/bot7000000001:TEST");
    let http = http_client();
    let me: Value = http
        .post(format!("{bot}/getMe"))
        .send()
        .await
        .expect("getMe")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (me["ok"].as_bool(), me["result"]["id"].as_i64()),
        (Some(true), Some(7000000001))
    );
    let form: Value = http
        .post(format!("{bot}/sendMessage"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("chat_id=-1009876543210&text=Hallo+H%C3%A4ndler&reply_markup=%7B%22inline_keyboard%22%3A%5B%5D%7D")
        .send()
        .await
        .expect("form sendMessage")
        .json()
        .await
        .expect("json");
    assert_eq!(form["ok"], true, "{form}");
    assert_eq!(
        form["result"]["chat"],
        json!({"id": -1009876543210_i64, "type": "supergroup"})
    );
    assert_eq!(form["result"]["text"], "Hallo Händler");
    let control = http
        .post(format!("{base}/control"))
        .json(&json!({"chat_types": {"-1001234567890": "channel"}}))
        .send()
        .await
        .expect("control");
    assert_eq!(control.status(), 200);
    let query: Value = http
        .get(format!(
            "{bot}/sendMessage?chat_id=-1001234567890&text=Status"
        ))
        .send()
        .await
        .expect("GET sendMessage")
        .json()
        .await
        .expect("json");
    assert_eq!(query["result"]["chat"]["type"], "channel", "{query}");
    let answered: Value = http
        .post(format!("{bot}/answerCallbackQuery"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("callback_query_id=4382bfdwdsb323b2d9")
        .send()
        .await
        .expect("answerCallbackQuery")
        .json()
        .await
        .expect("json");
    assert_eq!(answered["result"], true);
    assert_eq!(platforms.callback_answers(), vec!["4382bfdwdsb323b2d9"]);
    let whatsapp: Value = http
        .post(format!("{base}/v21.0/106540352242922/messages"))
        .bearer_auth("token")
        .json(
            &json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "recipient": "NL.1234567890", "type": "text", "text": {"body": "Hoi"}}),
        )
        .send()
        .await
        .expect("send to a BSUID")
        .json()
        .await
        .expect("json");
    assert_eq!(
        whatsapp["contacts"][0]["user_id"], "NL.1234567890",
        "{whatsapp}"
    );
    let sent = platforms.sent();
    assert_eq!(
        sent.iter()
            .map(|s| (s.to.as_str(), s.address_field.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("-1009876543210", "chat_id"),
            ("-1001234567890", "chat_id"),
            ("NL.1234567890", "recipient")
        ]
    );
}

#[tokio::test]
async fn cluster_up_refuses_acknowledgements_a_cluster_without_replicas_cannot_give() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = fixture_path("openclaw-llm.json").display().to_string();
    let state_dir = dir.path().display().to_string();
    let (code, out) = run_cli(
        &[
            "cluster",
            "up",
            "--config",
            &config,
            "--state-dir",
            &state_dir,
            "--redis",
            "cluster",
            "--redis-cluster-replicas",
            "0",
            "--redis-ack-replicas",
            "1",
        ],
        &[("LLM_API_KEY", "sk-x")],
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("--redis-ack-replicas 1") && out.contains("--redis-cluster-replicas"),
        "the refusal names both options: {out}"
    );
}
