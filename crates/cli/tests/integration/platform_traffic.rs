//! Channels as the platforms really send them: WhatsApp customers who share no phone number
//! (business-scoped user ids), identity changes, batches with a message that cannot be read,
//! reactions and media; Telegram button presses, channel posts and member updates.

use crate::support::*;
use clawgate_fakes::mock_llm::MockLlm;
use clawgate_fakes::mock_platforms::MockPlatforms;
use serde_json::Value;
use std::time::Duration;

const NOTICE: &str = "Sorry, I can only read text messages. Please type your question.";

async fn platform_gateway() -> (TestRedis, MockLlm, MockPlatforms, Gateway) {
    platform_gateway_with(|_| {}).await
}

async fn platform_gateway_with(
    tweak: impl FnOnce(&mut Value),
) -> (TestRedis, MockLlm, MockPlatforms, Gateway) {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    tweak(&mut config);
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    (redis, llm, platforms, gateway)
}

/// A fixture with its first message's id and text replaced (a later message of the same
/// customer, as Meta would send it).
fn next_message(name: &str, wamid: &str, text: &str) -> Vec<u8> {
    let mut notification: Value = serde_json::from_slice(&fixture(name)).expect("fixture");
    let message = &mut notification["entry"][0]["changes"][0]["value"]["messages"][0];
    message["id"] = wamid.into();
    message["text"]["body"] = text.into();
    notification.to_string().into_bytes()
}

/// Nothing more is sent within a short while (the platforms saw exactly `count`).
async fn assert_no_more_sent(platforms: &MockPlatforms, count: usize) {
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(platforms.sent().len(), count, "{:#?}", platforms.sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_shares_no_number_is_answered_at_their_business_scoped_id_in_one_conversation()
 {
    let (redis, llm, platforms, gateway) = platform_gateway().await;
    let (status, body) = gateway.whatsapp(fixture("whatsapp-username.json")).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(
        (sent[0].to.as_str(), sent[0].address_field.as_str()),
        ("NL.1234567890", "recipient"),
        "a customer without a number is addressed by BSUID in `recipient`"
    );
    assert_eq!(user_turns(&sent[0].text), 1, "{sent:#?}");

    let later = next_message(
        "whatsapp-username.json",
        "wamid.USERNAME2",
        "En wanneer komt het?",
    );
    assert_eq!(gateway.whatsapp(later).await.0, 200);
    let sent = sent_messages(&platforms, 2).await;
    assert_eq!(sent[1].to, "NL.1234567890");
    assert_eq!(
        sent[1].text, "[mock] user_turns=2 last=\"En wanneer komt het?\"",
        "the model saw both turns"
    );
    assert_no_more_sent(&platforms, 2).await;
    assert_eq!(llm.requests(), 2);
    let history: u64 = redis
        .query(redis::cmd("LLEN").arg("oc:conv:{whatsapp:NL.1234567890}"))
        .await;
    assert_eq!(history, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_adopts_a_username_keeps_the_conversation_of_their_number() {
    let (redis, _llm, platforms, gateway) = platform_gateway().await;
    // While Meta still shares the number, the webhook carries both: the BSUID is linked.
    assert_eq!(
        gateway
            .whatsapp(fixture("whatsapp-phone-and-bsuid.json"))
            .await
            .0,
        200
    );
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(
        (sent[0].to.as_str(), sent[0].address_field.as_str()),
        ("31612345678", "to")
    );
    // Then the number is withheld: the same conversation goes on, answered at the BSUID.
    assert_eq!(
        gateway.whatsapp(fixture("whatsapp-username.json")).await.0,
        200
    );
    let sent = sent_messages(&platforms, 2).await;
    assert_eq!(
        (sent[1].to.as_str(), sent[1].address_field.as_str()),
        ("NL.1234567890", "recipient")
    );
    assert_eq!(user_turns(&sent[1].text), 2, "{sent:#?}");
    let history: u64 = redis
        .query(redis::cmd("LLEN").arg("oc:conv:{whatsapp:31612345678}"))
        .await;
    assert_eq!(history, 4, "both turns are in the number's conversation");
    assert_no_more_sent(&platforms, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_number_continues_the_conversation_and_is_answered_at_the_new_number() {
    let (_redis, _llm, platforms, gateway) = platform_gateway().await;
    gateway
        .whatsapp(whatsapp_text(
            "31612345678",
            "wamid.OLD1",
            "Mijn pakket VC482913577NL?",
        ))
        .await;
    sent_messages(&platforms, 1).await;
    let (status, body) = gateway
        .whatsapp(fixture("whatsapp-changed-number.json"))
        .await;
    assert_eq!((status, body["ignored"].as_u64()), (200, Some(1)), "{body}");
    gateway
        .whatsapp(whatsapp_text(
            "31687654321",
            "wamid.NEW1",
            "Dit is mijn nieuwe nummer",
        ))
        .await;
    let sent = sent_messages(&platforms, 2).await;
    assert_eq!(sent[1].to, "31687654321");
    assert_eq!(user_turns(&sent[1].text), 2, "{sent:#?}");
    assert_no_more_sent(&platforms, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_message_in_a_batch_costs_only_itself() {
    let (redis, _llm, platforms, gateway) = platform_gateway().await;
    let (status, body) = gateway.whatsapp(fixture("whatsapp-mixed-batch.json")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["unreadable"].as_u64()),
        (Some(3), Some(1)),
        "{body}"
    );
    let sent = sent_messages(&platforms, 3).await;
    let to = |number: &str| -> Vec<String> {
        sent.iter()
            .filter(|s| s.to == number)
            .map(|s| s.text.clone())
            .collect()
    };
    assert_eq!(
        to("31612345678"),
        vec!["[mock] user_turns=1 last=\"Kan ik mijn pakket ophalen bij het depot?\"".to_string()]
    );
    // A type this API version does not know and a location: the text-only notice, each.
    assert_eq!(to("32470123456").len(), 2, "{sent:#?}");
    assert_no_more_sent(&platforms, 3).await;

    let config = gateway.config_path().display().to_string();
    let url = redis.url();
    let (code, listing) = run_cli(
        &[
            "deadletter",
            "list",
            "--json",
            "--config",
            &config,
            "--redis-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{listing}");
    // stdout first: the JSON document, then whatever the command logged.
    let letters: Value = serde_json::Deserializer::from_str(&listing)
        .into_iter()
        .next()
        .and_then(Result::ok)
        .expect("a JSON listing");
    let letter = &letters[0];
    assert_eq!(letter["kind"], "unreadable", "{listing}");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no sender"),
        "{listing}"
    );
    assert!(
        letter["fields"]["payload"]
            .as_str()
            .unwrap_or("")
            .contains("wamid.HBgLMzI0NzAxMjM0NTYVAgASGBRBM0FCQ0RFRjAxMjM0NTY3ODkA"),
        "the message is kept as it came: {listing}"
    );
    assert_eq!(
        gateway
            .metric(
                "clawgate_inbound_messages_total",
                "channel=\"whatsapp\",type=\"unknown\",action=\"unsupported\""
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_gets_no_reply_and_is_not_part_of_the_conversation() {
    let (_redis, llm, platforms, gateway) = platform_gateway().await;
    let (status, body) = gateway.whatsapp(fixture("whatsapp-reaction.json")).await;
    assert_eq!((status, body["ignored"].as_u64()), (200, Some(1)), "{body}");
    gateway
        .whatsapp(whatsapp_text("31612345678", "wamid.AFTER", "Dank je!"))
        .await;
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(sent[0].text, "[mock] user_turns=1 last=\"Dank je!\"");
    assert_no_more_sent(&platforms, 1).await;
    assert_eq!(llm.requests(), 1);
    assert_eq!(
        gateway
            .metric(
                "clawgate_inbound_messages_total",
                "channel=\"whatsapp\",type=\"reaction\",action=\"ignored\""
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_media_gets_the_text_only_notice_and_list_and_template_replies_are_read() {
    // Ten messages of one customer in a row: flood control would rightly slow the last ones.
    let (_redis, llm, platforms, gateway) = platform_gateway_with(|config| {
        config["conversations"] = serde_json::json!({"floodControl": {"messagesPerMinute": 0}});
    })
    .await;
    let (status, body) = gateway.whatsapp(fixture("whatsapp-media-kinds.json")).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(8)),
        "{body}"
    );
    let sent = sent_messages(&platforms, 8).await;
    assert!(sent.iter().all(|s| s.text == NOTICE), "{sent:#?}");
    assert_eq!(llm.requests(), 0, "no model was asked to read media");
    gateway
        .whatsapp(fixture("whatsapp-list-and-template-replies.json"))
        .await;
    let sent = sent_messages(&platforms, 10).await;
    let asked: Vec<&str> = sent[8..].iter().map(|s| s.text.as_str()).collect();
    assert!(
        asked.iter().any(|t| t.contains("18:00-21:00"))
            && asked.iter().any(|t| t.contains("Andere dag")),
        "the list title and the button text are the customer's words: {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_button_press_is_answered_and_its_data_taken_as_the_customers_text() {
    let (_redis, _llm, platforms, gateway) = platform_gateway().await;
    let (status, body) = gateway
        .telegram(fixture("telegram-callback-query.json"))
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    eventually(Duration::from_secs(10), "answerCallbackQuery", || async {
        (platforms.callback_answers() == vec!["4382bfdwdsb323b2d9".to_string()]).then_some(())
    })
    .await;
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(sent[0].to, "5123456789");
    assert_eq!(
        sent[0].text,
        "[mock] user_turns=1 last=\"Morgen zwischen 09:00 und 12:00 bitte\""
    );
    assert_no_more_sent(&platforms, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_channel_posts_member_updates_and_service_messages_get_no_reply() {
    let (_redis, llm, platforms, gateway) = platform_gateway().await;
    for name in [
        "telegram-channel-post.json",
        "telegram-edited-channel-post.json",
        "telegram-my-chat-member.json",
        "telegram-new-members.json",
    ] {
        let (status, body) = gateway.telegram(fixture(name)).await;
        assert_eq!(
            (status, body["accepted"].as_u64(), body["ignored"].as_u64()),
            (200, Some(0), Some(1)),
            "{name}: {body}"
        );
    }
    gateway
        .telegram(fixture("telegram-supergroup-text.json"))
        .await;
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(sent[0].to, "-1009876543210", "answered in the group");
    assert_no_more_sent(&platforms, 1).await;
    assert_eq!(llm.requests(), 1);
    assert_eq!(
        gateway
            .metric(
                "clawgate_inbound_messages_total",
                "channel=\"telegram\",type=\"member_update\",action=\"ignored\""
            )
            .await,
        2.0
    );
}

/// UTF-16 code units, as Telegram counts a message's length.
fn utf16_units(text: &str) -> usize {
    text.encode_utf16().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_reply_over_4096_utf16_units_goes_out_in_parts_within_the_limit() {
    let (_redis, llm, platforms, gateway) = platform_gateway().await;
    // 3,000 lorries and spaces: 3,000 characters of 2 UTF-16 units each, plus the spaces.
    let long = "🚚 ".repeat(3000);
    llm.set_reply(Some(long.trim()));
    assert_eq!(gateway.telegram(fixture("telegram-text.json")).await.0, 200);
    let sent = sent_messages(&platforms, 3).await;
    assert!(
        sent.iter().all(|s| utf16_units(&s.text) <= 4096),
        "parts of {:?} UTF-16 units",
        sent.iter()
            .map(|s| utf16_units(&s.text))
            .collect::<Vec<_>>()
    );
    let rejoined: String = sent.iter().map(|s| s.text.replace(' ', "")).collect();
    assert_eq!(rejoined, "🚚".repeat(3000), "nothing lost or doubled");
    assert_no_more_sent(&platforms, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_cut_to_max_reply_parts_and_a_text_over_the_limit_gets_a_notice() {
    let (_redis, llm, platforms, gateway) = platform_gateway_with(|config| {
        config["channels"]["maxReplyParts"] = 2.into();
        config["channels"]["maxTextChars"] = serde_json::json!({"whatsapp": 100});
    })
    .await;
    llm.set_reply(Some(&"Lorem ipsum dolor sit amet. ".repeat(1000)));
    gateway
        .whatsapp(whatsapp_text(
            "31611111111",
            "wamid.LONGREPLY",
            "vertel me alles",
        ))
        .await;
    let sent = sent_messages(&platforms, 2).await;
    assert!(
        sent[1].text.ends_with("[…]"),
        "{}",
        &sent[1].text[sent[1].text.len() - 20..]
    );
    assert_no_more_sent(&platforms, 2).await;

    let requests = llm.requests();
    let essay = "Ik wil graag weten waar mijn pakket is. ".repeat(10);
    gateway
        .whatsapp(whatsapp_text("31622222222", "wamid.ESSAY", &essay))
        .await;
    let sent = sent_messages(&platforms, 3).await;
    // In the customer's language, detected from what they wrote.
    assert_eq!(
        sent[2].text,
        "Sorry, dat bericht is te lang voor mij. Kun je je vraag in een paar zinnen sturen?"
    );
    assert_eq!(llm.requests(), requests, "the model never read the essay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_older_than_max_message_age_is_not_answered() {
    // The default: 168 hours, WhatsApp's retry window.
    let (_redis, llm, platforms, gateway) = platform_gateway_with(|_| {}).await;
    // The reference payload was sent in November 2025: a replay, long past dedupe.
    let (status, body) = gateway
        .whatsapp(fixture_verbatim("whatsapp-text.json"))
        .await;
    assert_eq!((status, body["ignored"].as_u64()), (200, Some(1)), "{body}");
    // A fresh one is answered.
    gateway
        .whatsapp(whatsapp_text("31612345678", "wamid.FRESH", "hallo"))
        .await;
    let sent = sent_messages(&platforms, 1).await;
    assert_eq!(sent[0].text, "[mock] user_turns=1 last=\"hallo\"");
    assert_no_more_sent(&platforms, 1).await;
    assert_eq!(llm.requests(), 1);
    assert_eq!(
        gateway
            .metric("clawgate_inbound_messages_total", "action=\"stale\"")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_held_back_by_flood_control_is_answered_in_order_past_the_order_valve() {
    // Flood control lets a turn through every 0.5 s; the valve for a lost predecessor is 1 s.
    // Messages that merely wait for flood control must not trip it.
    let (_redis, _llm, platforms, gateway) = platform_gateway_with(|config| {
        config["conversations"] = serde_json::json!({
            "floodControl": {"messagesPerMinute": 120, "coalesce": false}});
        config["workers"]["orderWaitMs"] = 1000.into();
    })
    .await;
    let count = 14;
    for i in 0..count {
        let (status, _) = gateway
            .whatsapp(whatsapp_text(
                "31633333333",
                &format!("wamid.BURST{i:02}"),
                &format!("bericht {i:02}"),
            ))
            .await;
        assert_eq!(status, 200);
    }
    let sent = eventually(
        Duration::from_secs(30),
        "every reply of the burst",
        || async {
            let sent = platforms.sent();
            (sent.len() >= count).then_some(sent)
        },
    )
    .await;
    let order: Vec<String> = sent
        .iter()
        .map(|s| s.text.rsplit("last=").next().unwrap_or("").to_string())
        .collect();
    let expected: Vec<String> = (0..count).map(|i| format!("\"bericht {i:02}\"")).collect();
    assert_eq!(order, expected, "replies out of the customer's order");
    assert_eq!(
        sent.iter().map(|s| user_turns(&s.text)).collect::<Vec<_>>(),
        (1..=count).collect::<Vec<_>>(),
        "each turn saw all earlier ones"
    );
}
