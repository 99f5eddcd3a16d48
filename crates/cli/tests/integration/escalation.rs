//! Escalation to a person, end to end: the complaints skill hands a conversation to the
//! dispatcher (a fake webhook), the customer is told, the bot keeps out of it while the hand-over
//! is pending, and the dispatcher gives it back through the CLI or the HTTP API.

use crate::support::*;
use clawgate_fakes::mock_dispatcher::MockDispatcher;
use clawgate_fakes::mock_tracking::{MockTracking, load_packages};
use serde_json::{Value, json};
use std::time::Duration;

const WEBHOOK_SECRET: &str = "dispatch-secret";
const API_TOKEN: &str = "escalations-token";

/// Redis, the mock tracking API and one template-only replica of the example whose escalations go
/// to `dispatcher`.
async fn escalating_gateway(
    dispatcher: &MockDispatcher,
    max_attempts: u32,
) -> (TestRedis, MockTracking, Gateway) {
    let tracking = MockTracking::spawn(load_packages(&packages_file()).expect("packages"))
        .await
        .expect("mock tracking");
    let redis = TestRedis::start().await;
    let mut config = test_config(vec![]);
    config["agent"]["defaultLanguage"] = json!("nl");
    config["skills"]["lookupUrls"] = json!({
        "tracking": format!("{}/packages/{{tracking_number}}", tracking.base_url()),
    });
    config["escalation"] = json!({
        "webhookUrl": dispatcher.webhook_url(),
        "webhookSecret": WEBHOOK_SECRET,
        "apiToken": API_TOKEN,
        "maxAttempts": max_attempts,
        "timeoutMs": 2000,
    });
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    (redis, tracking, gateway)
}

async fn reply(gateway: &Gateway, session: &str, message_id: &str, text: &str) -> Value {
    let (status, body) = gateway.send(session, message_id, text, None).await;
    assert_eq!(status, 200, "{body}");
    body["reply"].clone()
}

fn target_args(gateway: &Gateway, redis: &TestRedis) -> Vec<String> {
    vec![
        "--config".into(),
        gateway.config_path().display().to_string(),
        "--redis-url".into(),
        redis.url(),
    ]
}

async fn cli(args: &[&str], target: &[String]) -> (i32, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(target.iter().map(String::as_str));
    run_cli(&all, &[]).await
}

/// The JSON document a command printed on stdout (its log lines on stderr follow it).
fn first_json(output: &str) -> Value {
    serde_json::Deserializer::from_str(output)
        .into_iter::<Value>()
        .next()
        .expect("a JSON document")
        .expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_parcel_goes_to_the_dispatcher_and_the_bot_steps_aside_until_it_is_resolved() {
    let dispatcher = MockDispatcher::spawn().await.expect("mock dispatcher");
    let (redis, _tracking, gateway) = escalating_gateway(&dispatcher, 4).await;
    let session = "sanne";

    let first = reply(
        &gateway,
        session,
        "m1",
        "Waar is mijn pakket VC482913577NL?",
    )
    .await;
    assert_eq!(first["skill"], "tracking");

    // A complaint with a tracking number in it is a complaint: the conversation is handed over.
    let told = reply(
        &gateway,
        session,
        "m2",
        "Het pakket VC482913577NL is beschadigd aangekomen, de doos is kapot!",
    )
    .await;
    assert_eq!(told["skill"], "complaints");
    assert_eq!(told["provider"], "handover");
    let text = told["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("collega") && text.contains("referentie ESC-"),
        "{text}"
    );
    let reference = text
        .split_whitespace()
        .find(|w| w.starts_with("ESC-"))
        .map(|w| w.trim_end_matches([')', '.', ',']))
        .expect("reference in the answer")
        .to_string();

    // The dispatcher got the summary: signed, keyed by the reference, with the whole story.
    let received = dispatcher.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let event = &received[0];
    assert_eq!(event.event, "escalation.created");
    assert_eq!(event.idempotency_key, reference);
    assert_eq!(
        event.signature.as_deref(),
        Some(whatsapp_signature(event.raw.as_bytes(), WEBHOOK_SECRET).as_str()),
        "the signature is HMAC-SHA256 of the body under the webhook secret"
    );
    assert_eq!(event.body["reference"], reference.as_str());
    assert_eq!(event.body["conversation"], "webchat:sanne");
    assert_eq!(event.body["skill"], "complaints");
    assert_eq!(event.body["language"], "nl");
    let summary = event.body["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("beschadigd"), "{summary}");
    let transcript: Vec<&str> = event.body["transcript"]
        .as_array()
        .expect("transcript")
        .iter()
        .filter_map(|line| line["text"].as_str())
        .collect();
    assert_eq!(
        transcript.len(),
        3,
        "question, answer, complaint: {transcript:?}"
    );
    assert!(transcript[0].contains("Waar is mijn pakket"));

    // Recorded in Redis: the session says a person has it, the record is pending and notified.
    let pending: Option<String> = redis
        .query(
            redis::cmd("HGET")
                .arg("oc:session:{webchat:sanne}")
                .arg("escalation_pending"),
        )
        .await;
    assert_eq!(pending.as_deref(), Some(reference.as_str()));
    let target = target_args(&gateway, &redis);
    let (code, listing) = cli(&["escalations", "list"], &target).await;
    assert_eq!(code, 0, "{listing}");
    assert!(
        listing.contains(&reference) && listing.contains("webchat:sanne"),
        "{listing}"
    );
    let (code, json_listing) = cli(&["escalations", "list", "--json"], &target).await;
    assert_eq!(code, 0, "{json_listing}");
    let listed = first_json(&json_listing)
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["notified"], true);
    assert_eq!(listed[0]["status"], "pending");

    // While the dispatcher has it, even a tracking question gets the holding answer, and the
    // message reaches the dispatcher.
    let holding = reply(
        &gateway,
        session,
        "m3",
        "Hallo?? Waar blijft VC482913577NL?",
    )
    .await;
    assert_eq!(holding["provider"], "handover");
    assert_eq!(holding["skill"], "complaints");
    let text = holding["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("doorgestuurd") && text.contains(&reference),
        "{text}"
    );
    let received = dispatcher.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].event, "escalation.message");
    assert_eq!(
        received[1].body["text"],
        "Hallo?? Waar blijft VC482913577NL?"
    );
    assert_eq!(received[1].body["reference"], reference.as_str());

    // The dispatcher resolves it; the bot answers the customer again.
    let (code, output) = cli(
        &[
            "escalations",
            "resolve",
            &reference,
            "--by",
            "joost",
            "--note",
            "replacement sent",
        ],
        &target,
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("resolved"), "{output}");
    let answered = reply(&gateway, session, "m4", "En waar is VC100200300BE?").await;
    assert_eq!(answered["skill"], "tracking");
    assert_eq!(answered["provider"], "template");
    let (code, shown) = cli(&["escalations", "show", "webchat:sanne"], &target).await;
    assert_eq!(code, 0, "{shown}");
    let record = first_json(&shown);
    assert_eq!(record["status"], "resolved");
    assert_eq!(record["resolved_by"], "joost");
    assert_eq!(record["note"], "replacement sent");
    let (_, listing) = cli(&["escalations", "list"], &target).await;
    assert!(listing.contains("no conversation is waiting"), "{listing}");
    // The history holds every turn once, in order.
    let history = gateway.history(session).await;
    let ids: Vec<&str> = history
        .iter()
        .filter_map(|m| m["message_id"].as_str())
        .collect();
    assert_eq!(ids, ["m1", "m1", "m2", "m2", "m3", "m3", "m4", "m4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_that_is_down_gets_the_escalation_from_the_dead_letter_stream_later() {
    let dispatcher = MockDispatcher::spawn().await.expect("mock dispatcher");
    dispatcher.set_down(true);
    let (redis, _tracking, gateway) = escalating_gateway(&dispatcher, 2).await;

    // The customer is told all the same; nothing waits for the dispatcher.
    let told = reply(
        &gateway,
        "lena",
        "m1",
        "My parcel arrived damaged and I want a refund.",
    )
    .await;
    assert_eq!(told["provider"], "handover");
    let text = told["text"].as_str().unwrap_or_default();
    assert!(text.contains("colleague at dispatch"), "{text}");
    assert_eq!(
        dispatcher.attempts(),
        2,
        "maxAttempts calls, then the dead-letter stream"
    );

    // The escalation API (token-protected) shows it as not notified.
    let http = http_client();
    let unauthorized = http
        .get(gateway.url("/v1/escalations"))
        .send()
        .await
        .expect("GET");
    assert_eq!(unauthorized.status().as_u16(), 401);
    let listed: Value = http
        .get(gateway.url("/v1/escalations"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let escalations = listed["escalations"].as_array().expect("list");
    assert_eq!(escalations.len(), 1, "{listed}");
    assert_eq!(escalations[0]["notified"], false);
    let reference = escalations[0]["reference"]
        .as_str()
        .expect("reference")
        .to_string();

    let target = target_args(&gateway, &redis);
    let (code, listing) = cli(&["deadletter", "list"], &target).await;
    assert_eq!(code, 0, "{listing}");
    assert!(
        listing.contains("escalation") && listing.contains("HTTP 500"),
        "{listing}"
    );
    dispatcher.set_down(false);
    let (code, output) = cli(&["deadletter", "retry", "--all"], &target).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("delivered to the dispatcher"), "{output}");
    let received = dispatcher.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].event, "escalation.created");
    assert_eq!(received[0].idempotency_key, reference);
    assert_eq!(received[0].body["conversation"], "webchat:lena");

    // Resolved over HTTP, by reference.
    let resolved: Value = http
        .post(gateway.url(&format!("/v1/escalations/{reference}/resolve")))
        .bearer_auth(API_TOKEN)
        .json(&json!({"by": "desk", "note": "refund approved"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(resolved["resolved"], true, "{resolved}");
    assert_eq!(resolved["escalation"]["resolved_by"], "desk");
    let again = http
        .post(gateway.url("/v1/escalations/webchat:lena/resolve"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("POST");
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["resolved"], false, "already resolved: {again}");
    let unknown = http
        .post(gateway.url("/v1/escalations/webchat:nobody/resolve"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("POST");
    assert_eq!(unknown.status().as_u16(), 404);
    // Next message: the bot answers (general skill, no hand-over).
    let back = reply(&gateway, "lena", "m2", "Thank you, that was quick.").await;
    assert_ne!(back["provider"], "handover", "{back}");
    eventually(
        Duration::from_secs(5),
        "the dead-letter stream to empty",
        || async {
            let length: u64 = redis.query(redis::cmd("XLEN").arg("oc:deadletter")).await;
            (length == 0).then_some(())
        },
    )
    .await;
}
