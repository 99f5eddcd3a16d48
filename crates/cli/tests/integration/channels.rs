//! WhatsApp and Telegram end to end: signed webhooks in, replies out through the mock platforms.

use crate::support::*;
use clawgate_fakes::mock_llm::MockLlm;
use clawgate_fakes::mock_platforms::MockPlatforms;
use std::time::{Duration, Instant};

async fn platform_gateway(latency_ms: u64) -> (TestRedis, MockLlm, MockPlatforms, Gateway) {
    let redis = TestRedis::start().await;
    let llm = mock_llm(latency_ms).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    (redis, llm, platforms, gateway)
}

/// Nothing more is sent within a short while (the platforms saw exactly `count`).
async fn assert_no_more_sent(platforms: &MockPlatforms, count: usize) {
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(platforms.sent().len(), count, "{:#?}", platforms.sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_whatsapp_message_gets_exactly_one_reply_to_its_sender() {
    // The fixture's exact bytes with the signature from the fixture's own test vector. Its
    // message was sent in 2025, so this deployment turns the age check off.
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    config["channels"]["maxMessageAgeHours"] = 0.into();
    // No entry is claimed again and no lease expires within this test: the turn itself must
    // acknowledge its entry and release its lease.
    config["workers"]["claimIdleMs"] = 60_000.into();
    config["workers"]["leaseTtlMs"] = 60_000.into();
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    let vector = String::from_utf8(fixture("whatsapp-signature.txt")).expect("utf-8");
    let signature = vector
        .lines()
        .find_map(|l| l.strip_prefix("X-Hub-Signature-256:"))
        .expect("vector")
        .trim()
        .to_string();
    let (status, body) = gateway
        .post_raw(
            "/webhooks/whatsapp",
            fixture_verbatim("whatsapp-text.json"),
            &[("x-hub-signature-256", &signature)],
        )
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(sent[0].channel, "whatsapp");
    assert_eq!(sent[0].to, "31612345678");
    assert_eq!(
        sent[0].text,
        "[mock] user_turns=1 last=\"Waar is mijn pakket? Trackingnummer VC482913577NL\""
    );
    assert_no_more_sent(&platforms, 1).await;
    let history: u64 = redis
        .query(redis::cmd("LLEN").arg("oc:conv:{whatsapp:31612345678}"))
        .await;
    assert_eq!(history, 2);
    // The turn ended with the send: marked delivered, the conversation free for the next
    // message, the inbox entry acknowledged and gone, by the turn itself (not by a replica that
    // claimed the entry later and found it answered).
    let delivered =
        "oc:delivered:{whatsapp:wamid.HBgLMzE2MTIzNDU2NzgVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=}";
    let ended = eventually(
        Duration::from_secs(5),
        "the turn to end after the send",
        || async {
            let marker: Option<String> = redis.query(redis::cmd("GET").arg(delivered)).await;
            let lease: u64 = redis
                .query(redis::cmd("EXISTS").arg("oc:lease:{whatsapp:31612345678}"))
                .await;
            let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
            (marker.is_some() && lease == 0 && inbox == 0).then_some(marker)
        },
    )
    .await;
    assert_eq!(ended.as_deref(), Some("sent"));
    let pending: redis::Value = redis
        .query(redis::cmd("XPENDING").arg("oc:inbox").arg("workers"))
        .await;
    assert!(
        matches!(&pending, redis::Value::Array(summary) if summary.first() == Some(&redis::Value::Int(0))),
        "{pending:?}"
    );
    // Acknowledged, not given up on: nothing dead-lettered.
    let dead: u64 = redis.query(redis::cmd("XLEN").arg("oc:deadletter")).await;
    assert_eq!(dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_entry_written_without_the_message_id_beside_it_is_answered_once() {
    // As replicas before 2026-12-04 wrote entries (and a rolling upgrade leaves them pending):
    // the message id only inside the message, where the scripts that check an entry read it.
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let platforms = mock_platforms().await;
    let message = serde_json::json!({"channel": "whatsapp", "user": "31611111111",
        "message_id": "wamid.OLD1", "text": "Waar is mijn pakket?",
        "received_at_ms": now_secs() * 1000, "ingress_replica": "r0"});
    let _: String = redis
        .query(
            redis::cmd("XADD")
                .arg("oc:inbox")
                .arg("*")
                .arg(&["v", "1", "seq", "1", "m"])
                .arg(message.to_string()),
        )
        .await;
    let _: u64 = redis
        .query(
            redis::cmd("HSET")
                .arg("oc:session:{whatsapp:31611111111}")
                .arg(&["seq_issued", "1"]),
        )
        .await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    // Nothing is claimed again within the test: the turn itself acknowledges the entry.
    config["workers"]["claimIdleMs"] = 60_000.into();
    let _gateway = Gateway::start(config, &redis.url(), "r1").await;
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(sent[0].to, "31611111111");
    assert_eq!(
        sent[0].text,
        "[mock] user_turns=1 last=\"Waar is mijn pakket?\""
    );
    assert_no_more_sent(&platforms, 1).await;
    eventually(
        Duration::from_secs(5),
        "the entry acknowledged and deleted",
        || async {
            let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
            let pending: redis::Value = redis
                .query(redis::cmd("XPENDING").arg("oc:inbox").arg("workers"))
                .await;
            let none_pending = matches!(&pending, redis::Value::Array(summary)
                if summary.first() == Some(&redis::Value::Int(0)));
            (inbox == 0 && none_pending).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_three_messages_from_two_customers_gets_three_replies_in_two_conversations() {
    let (redis, _llm, platforms, gateway) = platform_gateway(0).await;
    let (status, body) = gateway.whatsapp(fixture("whatsapp-multi.json")).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    let sent = sent_messages(&platforms, 3).await;
    let to_sanne: Vec<&str> = sent
        .iter()
        .filter(|s| s.to == "31612345678")
        .map(|s| s.text.as_str())
        .collect();
    let to_jonas: Vec<&str> = sent
        .iter()
        .filter(|s| s.to == "32470123456")
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(to_sanne.len(), 2, "{sent:#?}");
    assert_eq!(to_jonas.len(), 1, "{sent:#?}");
    assert!(
        to_sanne[0].starts_with("[mock] user_turns=1 last=\"Is weekend delivery"),
        "{sent:#?}"
    );
    assert!(
        to_sanne[1].starts_with("[mock] user_turns=2 "),
        "the second message lacked context: {sent:#?}"
    );
    // "arrived damaged" is a complaint: handed to a person, with a reference.
    assert!(
        to_jonas[0].contains("dispatch (reference ESC-"),
        "{sent:#?}"
    );
    let sanne: u64 = redis
        .query(redis::cmd("LLEN").arg("oc:conv:{whatsapp:31612345678}"))
        .await;
    let jonas: u64 = redis
        .query(redis::cmd("LLEN").arg("oc:conv:{whatsapp:32470123456}"))
        .await;
    assert_eq!((sanne, jonas), (4, 2));
    assert_no_more_sent(&platforms, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_retry_of_the_same_wamid_gets_one_reply() {
    let (_redis, llm, platforms, gateway) = platform_gateway(200).await;
    let body = fixture("whatsapp-text.json");
    let (_, first) = gateway.whatsapp(body.clone()).await;
    let (status, second) = gateway.whatsapp(body.clone()).await;
    assert_eq!(
        (status, second["duplicates"].as_u64()),
        (200, Some(1)),
        "{second}"
    );
    assert_eq!(first["accepted"], 1);
    sent_messages(&platforms, 1).await;
    gateway.whatsapp(body).await;
    assert_no_more_sent(&platforms, 1).await;
    assert_eq!(llm.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_wrongly_signed_webhooks_are_refused_and_nothing_is_queued() {
    let (redis, _llm, platforms, gateway) = platform_gateway(0).await;
    let body = fixture("whatsapp-text.json");
    let other = whatsapp_text("31612345678", "wamid.OTHER", "hello");
    let cases = [
        ("missing", vec![]),
        (
            "wrong secret",
            vec![whatsapp_signature(&body, "not-the-secret")],
        ),
        (
            "another body",
            vec![whatsapp_signature(&other, WHATSAPP_APP_SECRET)],
        ),
        ("not hex", vec!["sha256=zz".to_string()]),
    ];
    for (case, signature) in cases {
        let headers: Vec<(&str, &str)> = signature
            .iter()
            .map(|s| ("x-hub-signature-256", s.as_str()))
            .collect();
        let (status, reply) = gateway
            .post_raw("/webhooks/whatsapp", body.clone(), &headers)
            .await;
        assert_eq!(status, 401, "{case}: {reply}");
        assert_eq!(reply["error"]["code"], "unauthorized", "{case}");
    }
    let (status, _) = gateway
        .post_raw(
            "/webhooks/telegram",
            fixture("telegram-text.json"),
            &[("x-telegram-bot-api-secret-token", "wrong")],
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = gateway
        .post_raw("/webhooks/telegram", fixture("telegram-text.json"), &[])
        .await;
    assert_eq!(status, 401);

    let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
    let seen: Vec<String> = redis.query(redis::cmd("KEYS").arg("oc:seen:*")).await;
    assert_eq!(
        (inbox, seen.len()),
        (0, 0),
        "something was queued: {seen:?}"
    );
    assert_eq!(
        gateway.metric("clawgate_messages_accepted_total", "").await,
        0.0
    );
    assert_no_more_sent(&platforms, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whatsapp_verification_handshake_echoes_the_challenge_only_for_the_right_token() {
    let (_redis, _llm, _platforms, gateway) = platform_gateway(0).await;
    let url = |mode: &str, token: &str| {
        gateway.url(&format!(
            "/webhooks/whatsapp?hub.mode={mode}&hub.verify_token={token}&hub.challenge=1158201444"
        ))
    };
    let http = http_client();
    let right = http
        .get(url("subscribe", WHATSAPP_VERIFY_TOKEN))
        .send()
        .await
        .expect("GET");
    assert_eq!(right.status(), 200);
    assert_eq!(right.text().await.expect("body"), "1158201444");
    for (mode, token) in [
        ("subscribe", "wrong"),
        ("unsubscribe", WHATSAPP_VERIFY_TOKEN),
    ] {
        let wrong = http.get(url(mode, token)).send().await.expect("GET");
        assert_eq!(wrong.status(), 403, "{mode} {token}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_messages_are_answered_in_their_chat_edits_are_not_and_photos_get_the_text_only_notice()
 {
    let (_redis, _llm, platforms, gateway) = platform_gateway(0).await;
    let (status, body) = gateway.telegram(fixture("telegram-text.json")).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(
        (sent[0].channel.as_str(), sent[0].to.as_str()),
        ("telegram", "5123456789")
    );
    assert!(
        sent[0]
            .text
            .starts_with("[mock] user_turns=1 last=\"Dispatch request: 14 parcels")
    );

    let (status, body) = gateway.telegram(fixture("telegram-edited.json")).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(0)),
        "{body}"
    );
    let (status, _) = gateway.telegram(fixture("telegram-photo.json")).await;
    assert_eq!(status, 200);
    let sent = sent_messages(&platforms, 2).await;
    // Lena's Telegram is set to German but she writes English: the conversation goes on in the
    // language she writes, and no model was asked to read a photo.
    assert_eq!(
        sent[1].text,
        "Sorry, I can only read text messages. Please type your question."
    );
    assert_no_more_sent(&platforms, 2).await;
    assert_eq!(
        gateway
            .metric("clawgate_webhook_events_total", "edited_message")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_image_gets_the_text_only_notice_and_statuses_are_counted_not_answered() {
    let (_redis, llm, platforms, gateway) = platform_gateway(0).await;
    assert_eq!(
        gateway.whatsapp(fixture("whatsapp-image.json")).await.0,
        200
    );
    assert_eq!(
        gateway.whatsapp(fixture("whatsapp-status.json")).await.0,
        200
    );
    assert_eq!(
        gateway
            .whatsapp(fixture("whatsapp-status-failed.json"))
            .await
            .0,
        200
    );
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(
        sent[0].text,
        "Sorry, I can only read text messages. Please type your question."
    );
    assert_no_more_sent(&platforms, 1).await;
    assert_eq!(llm.requests(), 0);
    assert_eq!(
        gateway
            .metric("clawgate_webhook_events_total", "channel=\"whatsapp\"")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_and_the_reply_delivered_once() {
    let (_redis, _llm, platforms, gateway) = platform_gateway(0).await;
    platforms.fail_next(1, 429, Some(1), None);
    let started = Instant::now();
    assert_eq!(gateway.telegram(fixture("telegram-text.json")).await.0, 200);
    sent_messages(&platforms, 1).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retry_after was not honoured"
    );
    assert_eq!(platforms.attempts(), 2);
    assert_no_more_sent(&platforms, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_throughput_error_is_retried_and_a_closed_window_is_not() {
    let (redis, _llm, platforms, gateway) = platform_gateway(0).await;
    platforms.fail_next(1, 400, None, Some(130429));
    assert_eq!(
        gateway
            .whatsapp(whatsapp_text("31600000001", "wamid.A1", "hi"))
            .await
            .0,
        200
    );
    sent_messages(&platforms, 1).await;
    assert_eq!(platforms.attempts(), 2);

    platforms.fail_next(1, 400, None, Some(131047));
    assert_eq!(
        gateway
            .whatsapp(whatsapp_text("31600000002", "wamid.A2", "hi"))
            .await
            .0,
        200
    );
    let entries: Vec<redis::Value> = eventually(
        Duration::from_secs(10),
        "the dead-lettered reply",
        || async {
            let entries: Vec<redis::Value> = redis
                .query(redis::cmd("XRANGE").arg("oc:deadletter").arg("-").arg("+"))
                .await;
            (!entries.is_empty()).then_some(entries)
        },
    )
    .await;
    let entry = format!("{entries:?}");
    assert!(
        entry.contains("131047") && entry.contains("31600000002"),
        "{entry}"
    );
    assert_eq!(
        platforms.attempts(),
        3,
        "a closed 24-hour window was retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_webhooks_get_400_with_a_reason_and_oversized_ones_413() {
    let (_redis, _llm, _platforms, gateway) = platform_gateway(0).await;
    let (status, body) = gateway
        .whatsapp(b"{\"entry\": [{\"changes\": 7}]}".to_vec())
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not a WhatsApp Cloud API notification")
    );
    let (status, body) = gateway.telegram(b"not json".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let huge = vec![b' '; 1024 * 1024 + 1];
    let (status, body) = gateway.whatsapp(huge.clone()).await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = gateway.telegram(huge).await;
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_platform_cannot_take_is_dead_lettered_then_redriven_by_the_cli() {
    let (redis, _llm, platforms, gateway) = platform_gateway(0).await;
    platforms.set_down(true);
    assert_eq!(
        gateway
            .whatsapp(whatsapp_text("31612345678", "wamid.DOWN1", "anyone there?"))
            .await
            .0,
        200
    );
    eventually(
        Duration::from_secs(15),
        "the reply in the dead-letter stream",
        || async {
            let length: u64 = redis.query(redis::cmd("XLEN").arg("oc:deadletter")).await;
            (length == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        gateway
            .metric("clawgate_egress_dead_letters_total", "whatsapp")
            .await,
        1.0
    );
    // The inbox entry is finished: the reply is kept in the dead-letter stream, not retried forever.
    eventually(Duration::from_secs(5), "the inbox to drain", || async {
        let length: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
        (length == 0).then_some(())
    })
    .await;

    let config = gateway.config_path().display().to_string();
    let url = redis.url();
    let target = ["--config", config.as_str(), "--redis-url", url.as_str()];
    let (code, listing) = run_cli(&[&["deadletter", "list"][..], &target[..]].concat(), &[]).await;
    assert_eq!(code, 0, "{listing}");
    for expected in ["outbound", "whatsapp", "31612345678", "HTTP 500"] {
        assert!(
            listing.contains(expected),
            "missing {expected} in:\n{listing}"
        );
    }
    let (code, output) = run_cli(
        &[&["deadletter", "retry", "--all"][..], &target[..]].concat(),
        &[],
    )
    .await;
    assert_eq!(
        code, 1,
        "the platform is still down, the retry must fail: {output}"
    );
    assert!(output.contains("still failing"), "{output}");

    platforms.set_down(false);
    let (code, output) = run_cli(
        &[&["deadletter", "retry", "--all"][..], &target[..]].concat(),
        &[],
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("reply sent to 31612345678"), "{output}");
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(sent[0].text, "[mock] user_turns=1 last=\"anyone there?\"");
    let length: u64 = redis.query(redis::cmd("XLEN").arg("oc:deadletter")).await;
    assert_eq!(length, 0);
    let (_, listing) = run_cli(&[&["deadletter", "list"][..], &target[..]].concat(), &[]).await;
    assert!(listing.contains("empty"), "{listing}");
}
