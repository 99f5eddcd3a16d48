//! Skills with data lookups, end to end: the VeloCity tracking skill against the mock tracking
//! API, with no model at all (the template provider answers from the lookup).

use crate::support::*;
use clawgate_fakes::mock_tracking::{MockTracking, load_packages};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A replica with the example skills, no model (template only) and the tracking lookup pointed
/// at `tracking`.
async fn tracking_gateway(tracking: &MockTracking) -> (TestRedis, Gateway) {
    let redis = TestRedis::start().await;
    let mut config = test_config(vec![]);
    config["agent"]["defaultLanguage"] = json!("nl");
    config["skills"]["lookupUrls"] = json!({
        "tracking": format!("{}/packages/{{tracking_number}}", tracking.base_url()),
        "estimates": format!("{}/areas/{{postal_code}}", tracking.base_url()),
    });
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    (redis, gateway)
}

/// The text of the reply to one web-chat message.
async fn reply_text(gateway: &Gateway, session: &str, message_id: &str, text: &str) -> String {
    let (status, body) = gateway.send(session, message_id, text, None).await;
    assert_eq!(status, 200, "{body}");
    body["reply"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn package(number: &str) -> Value {
    load_packages(&packages_file())
        .expect("fixture")
        .into_iter()
        .find(|p| p["tracking_number"] == number)
        .expect("package in the fixture")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_inquiry_gets_the_real_status_with_no_model_at_all() {
    let tracking = MockTracking::spawn(load_packages(&packages_file()).expect("fixture"))
        .await
        .expect("mock tracking");
    let (_redis, gateway) = tracking_gateway(&tracking).await;
    for number in ["VC482913577NL", "VC100200300BE"] {
        let expected = package(number);
        let (status, body) = gateway
            .send(number, "m1", &format!("Hoi, waar blijft {number}?"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let reply = &body["reply"];
        assert_eq!(reply["skill"], "tracking");
        assert_eq!(reply["provider"], "template");
        let text = reply["text"].as_str().unwrap_or_default();
        for field in ["status", "eta_window"] {
            let value = expected[field].as_str().expect("field");
            assert!(text.contains(value), "{field} {value:?} not in {text:?}");
        }
    }
    assert_eq!(tracking.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weekend_delivery_question_with_a_postal_code_gets_the_estimates_answer_for_that_area() {
    let tracking = MockTracking::spawn(load_packages(&packages_file()).expect("fixture"))
        .await
        .expect("mock tracking");
    let (_redis, gateway) = tracking_gateway(&tracking).await;
    // 1012 AB (Amsterdam) has Saturday delivery in the data set; 50667 (Köln) and 2000
    // (Antwerpen) do not.
    let (status, body) = gateway
        .send(
            "nl-weekend",
            "m1",
            "Bezorgen jullie zaterdag ook in 1012 AB?",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["skill"], "estimates");
    assert_eq!(body["reply"]["provider"], "template");
    let text = body["reply"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("1012 AB") && text.contains("ook op zaterdag"),
        "{text}"
    );
    let text = reply_text(
        &gateway,
        "de-weekend",
        "m1",
        "Do you deliver on Saturday in 50667? My parcel is coming this week.",
    )
    .await;
    assert!(
        text.contains("50667") && text.contains("do not deliver at weekends"),
        "{text}"
    );
    // Without a postal code there is nothing to look up: the skill asks for it.
    let text = reply_text(&gateway, "no-code", "m1", "Bezorgen jullie op zaterdag?").await;
    assert!(text.contains("postcode"), "{text}");
    assert_eq!(tracking.requests(), 2, "no postal code, no lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_number_is_said_to_be_unknown_and_no_number_is_asked_for() {
    let tracking = MockTracking::spawn(load_packages(&packages_file()).expect("fixture"))
        .await
        .expect("mock tracking");
    let (_redis, gateway) = tracking_gateway(&tracking).await;
    let text = reply_text(&gateway, "unknown", "m1", "waar is VC999999999NL?").await;
    assert!(
        text.contains("VC999999999NL") && text.contains("geen pakket"),
        "{text}"
    );
    let text = reply_text(&gateway, "nonumber", "m1", "waar is mijn pakket?").await;
    assert!(text.contains("trackingnummer"), "{text}");
    assert_eq!(tracking.requests(), 1, "no number, no lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_that_times_out_gets_an_honest_unavailable_answer_never_a_status() {
    let tracking = MockTracking::spawn(load_packages(&packages_file()).expect("fixture"))
        .await
        .expect("mock tracking");
    let (_redis, gateway) = tracking_gateway(&tracking).await;
    tracking.set_hang(true);
    let started = Instant::now();
    let (status, body) = gateway
        .send("hang", "m1", "waar is VC482913577NL?", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let text = body["reply"]["text"].as_str().unwrap_or_default();
    assert!(text.contains("niet op te vragen"), "{text}");
    assert!(!text.contains("out for delivery"), "{text}");
    // The skill's 2 s lookup timeout, not more.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clawgate_mock_tracking_serves_the_data_file() {
    let port = free_port();
    let fixture = packages_file();
    let mut child = tokio::process::Command::new(binary())
        .args(["mock", "tracking", "--port", &port.to_string(), "--data"])
        .arg(&fixture)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let http = http_client();
    let url = format!("http://127.0.0.1:{port}/packages/VC482913577NL");
    let body: Value = eventually(Duration::from_secs(10), "the mock to answer", || async {
        let response = http.get(&url).send().await.ok()?;
        response.json().await.ok()
    })
    .await;
    assert_eq!(body, package("VC482913577NL"));
    let missing = http
        .get(format!("http://127.0.0.1:{port}/packages/VC000000000XX"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status().as_u16(), 404);
    let area: Value = http
        .get(format!("http://127.0.0.1:{port}/areas/1012ab"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        area,
        json!({"postal_code": "1012 AB", "country": "NL", "weekend_delivery": true})
    );
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_is_answered_in_the_language_they_write_and_it_sticks() {
    let tracking = MockTracking::spawn(load_packages(&packages_file()).expect("fixture"))
        .await
        .expect("mock tracking");
    let (_redis, gateway) = tracking_gateway(&tracking).await;
    // The deployment's default is Dutch; this customer writes English.
    let text = reply_text(
        &gateway,
        "en-customer",
        "m1",
        "Hello, where is my parcel please?",
    )
    .await;
    assert!(text.starts_with("Thanks!"), "{text}");
    // A bare tracking number says nothing about the language: the conversation's stays.
    let text = reply_text(&gateway, "en-customer", "m2", "VC482913577NL").await;
    assert!(text.starts_with("Your parcel VC482913577NL"), "{text}");
    // German from another customer.
    let text = reply_text(
        &gateway,
        "de-customer",
        "m1",
        "Hallo, wo ist mein Paket VC100200300BE? Ich warte schon seit Tagen.",
    )
    .await;
    assert!(text.starts_with("Ihr Paket"), "{text}");
    // A Dutch message gets Dutch.
    let text = reply_text(
        &gateway,
        "nl-customer",
        "m1",
        "Waar is mijn pakket VC482913577NL?",
    )
    .await;
    assert!(text.starts_with("Je pakket"), "{text}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_skill_takes_effect_without_restart_and_a_broken_one_keeps_its_last_good_version()
{
    let skills = tempfile::tempdir().expect("dir");
    copy_dir(&example_skills(), skills.path());
    let redis = TestRedis::start().await;
    let mut config = test_config(vec![]);
    config["agent"]["defaultLanguage"] = json!("nl");
    config["skills"] = json!({"dir": skills.path(), "reloadIntervalMs": 200});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    let reply = |session: String| {
        let gateway = &gateway;
        async move {
            let (_, body) = gateway
                .send(&session, "m1", "waar is mijn pakket", None)
                .await;
            body["reply"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    assert!(reply("before".into()).await.contains("trackingnummer"));

    // Edit the running replica's tracking skill.
    let file = skills.path().join("tracking/SKILL.md");
    let original = std::fs::read_to_string(&file).expect("read");
    let edited = original.replace("Bedankt! We zoeken", "NIEUW: we zoeken");
    assert_ne!(edited, original);
    std::fs::write(&file, &edited).expect("write");
    let mut n = 0;
    eventually(
        Duration::from_secs(10),
        "the edited skill to answer",
        || {
            n += 1;
            let session = format!("edited-{n}");
            let reply = &reply;
            async move { reply(session).await.starts_with("NIEUW").then_some(()) }
        },
    )
    .await;

    // Break it: the last good version stays, and /healthz says what is wrong.
    std::fs::write(&file, "---\nname: tracking\ntriggers: [unclosed\n---\n").expect("write");
    eventually(
        Duration::from_secs(10),
        "the broken skill reported",
        || async {
            let health = gateway.health().await;
            health["skill_errors"]
                .to_string()
                .contains("tracking/SKILL.md")
                .then_some(())
        },
    )
    .await;
    let text = reply("after-break".into()).await;
    assert!(text.starts_with("NIEUW"), "{text}");
    assert!(
        gateway.health().await["skills"]
            .to_string()
            .contains("tracking")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_triggers_cannot_route_is_classified_by_the_model_when_enabled() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 5_000, 0)]);
    config["skills"]["classify"] = json!({"enabled": true, "timeoutMs": 2000});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    let classified = || async {
        gateway
            .metric(
                "clawgate_skill_classifications_total",
                "outcome=\"matched\"",
            )
            .await
    };

    // No trigger word: the model is asked, and its pick routes the message (it says
    // "estimates" to everything here, the answer included).
    llm.set_reply(Some("estimates"));
    let (status, body) = gateway
        .send(
            "c1",
            "m1",
            "Hello, I have a question about my address.",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["skill"], "estimates");
    assert_eq!(classified().await, 1.0);

    // A trigger decides without asking; so does the active skill for a follow-up.
    llm.set_reply(None);
    let requests = llm.requests();
    let (_, body) = gateway.send("c2", "m1", "Where is my parcel?", None).await;
    assert_eq!(body["reply"]["skill"], "tracking");
    let (_, body) = gateway.send("c1", "m2", "And the other one?", None).await;
    assert_eq!(body["reply"]["skill"], "estimates");
    assert_eq!(
        llm.requests(),
        requests + 2,
        "one model call per turn, none to classify"
    );
    assert_eq!(classified().await, 1.0);

    // A model that names no skill leaves the message with the general skill.
    let (_, body) = gateway.send("c3", "m1", "Good morning!", None).await;
    assert_eq!(body["reply"]["skill"], "general");
    assert_eq!(
        gateway
            .metric(
                "clawgate_skill_classifications_total",
                "outcome=\"unmatched\""
            )
            .await,
        1.0
    );
}
