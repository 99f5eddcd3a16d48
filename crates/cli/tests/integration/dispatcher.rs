//! People answering through clawgate (issue 19): a dispatcher claims a handed-over
//! conversation, writes to the customer on their own channel (the mock WhatsApp), and hands it
//! back; the bot then answers with the person's words in its prompt.

use crate::support::browser::Browser;
use crate::support::sse::SseStream;
use crate::support::*;
use clawgate_fakes::mock_llm::MockLlm;
use clawgate_fakes::mock_platforms::MockPlatforms;
use fantoccini::Locator;
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "dispatch-api-token";
const COMPLAINT: &str = "Mijn pakket is beschadigd aangekomen, de doos is helemaal kapot!";

/// Redis, a model, the mock platforms and one replica whose escalations API takes [`TOKEN`].
async fn dispatching_gateway() -> (TestRedis, MockLlm, MockPlatforms, Gateway) {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    config["agent"]["defaultLanguage"] = json!("nl");
    config["escalation"] = json!({"apiToken": TOKEN});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    (redis, llm, platforms, gateway)
}

/// `POST` to the escalations API with the token and extra headers.
async fn dispatch(
    gateway: &Gateway,
    path: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    gateway
        .post_raw(path, body.to_string().into_bytes(), &all)
        .await
}

/// `GET` from the escalations API with the token.
async fn read(gateway: &Gateway, path: &str) -> Value {
    let response = http_client()
        .get(gateway.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("JSON")
}

/// A WhatsApp customer complains and is handed over; returns once the hand-over notice is sent
/// (the platforms then hold `sent_before + 1` messages).
async fn complain(gateway: &Gateway, platforms: &MockPlatforms, number: &str, sent_before: usize) {
    let (status, body) = gateway
        .whatsapp(whatsapp_text(
            number,
            &format!("wamid.{number}.1"),
            COMPLAINT,
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = sent_messages(platforms, sent_before + 1).await;
    let notice = &sent[sent_before];
    assert_eq!(notice.to, number);
    assert!(notice.text.contains("ESC-"), "{}", notice.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_claims_answers_on_whatsapp_once_and_hands_back_with_context() {
    let (_redis, llm, platforms, gateway) = dispatching_gateway().await;
    let number = "31611112222";
    let conversation = format!("whatsapp:{number}");
    complain(&gateway, &platforms, number, 0).await;
    let listed = read(&gateway, "/v1/escalations").await;
    assert_eq!(
        listed["escalations"][0]["conversation"],
        conversation.as_str()
    );
    let base = format!("/v1/escalations/{conversation}");

    // One dispatcher holds it; a second claim is refused with who holds it.
    let (status, body) = dispatch(
        &gateway,
        &format!("{base}/claim"),
        json!({"by": "Ana"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["escalation"]["claimed_by"], "Ana");
    let (status, body) = dispatch(
        &gateway,
        &format!("{base}/claim"),
        json!({"by": "Bob"}),
        &[],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "claimed");
    assert_eq!(body["claimed_by"], "Ana");
    let (status, body) = dispatch(
        &gateway,
        &format!("{base}/messages"),
        json!({"text": "Bob here", "by": "Bob"}),
        &[],
    )
    .await;
    assert_eq!(
        (status, &body["claimed_by"]),
        (409, &json!("Ana")),
        "{body}"
    );

    // Ana's reply reaches the customer once, however often her request is retried.
    let words =
        "Hallo, met Ana. We sturen vandaag een nieuw pakket, u hoeft niets terug te sturen.";
    let request = json!({"text": words, "by": "Ana"});
    let key = [("idempotency-key", "console-7f3a")];
    let (status, first) =
        dispatch(&gateway, &format!("{base}/messages"), request.clone(), &key).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "sent");
    let (status, again) = dispatch(&gateway, &format!("{base}/messages"), request, &key).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["repeated"], true);
    let sent = sent_messages(&platforms, 2).await;
    assert_eq!(
        (sent[1].to.as_str(), sent[1].text.as_str()),
        (number, words)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(platforms.sent().len(), 2, "{:#?}", platforms.sent());

    // The history keeps it as a person's message.
    let shown = read(&gateway, &base).await;
    let agent: Vec<&Value> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["role"] == "agent")
        .collect();
    assert_eq!(agent.len(), 1, "{shown}");
    assert_eq!(
        (agent[0]["text"].as_str(), agent[0]["by"].as_str()),
        (Some(words), Some("Ana"))
    );
    assert_eq!(shown["escalation"]["agent_replies"], 1);
    assert!(shown["escalation"]["first_reply_at"].as_u64().is_some());
    assert_eq!(
        gateway
            .metric(
                "clawgate_person_replies_total",
                "channel=\"whatsapp\",outcome=\"sent\""
            )
            .await,
        1.0
    );
    assert_eq!(
        gateway.metric("clawgate_escalations_pending", "").await,
        1.0
    );

    // Handed back: the model answers the next message with Ana's words in its prompt.
    let (status, body) = dispatch(
        &gateway,
        &format!("{base}/resolve"),
        json!({"by": "Ana"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = gateway
        .whatsapp(whatsapp_text(
            number,
            "wamid.after",
            "Dank u! Wanneer komt het nieuwe pakket?",
        ))
        .await;
    assert_eq!(status, 200);
    let sent = sent_messages(&platforms, 3).await;
    assert!(sent[2].text.starts_with("[mock]"), "{}", sent[2].text);
    let last: Value = http_client()
        .get(format!(
            "{}/requests/last",
            llm.openai_endpoint().trim_end_matches("/v1")
        ))
        .send()
        .await
        .expect("GET /requests/last")
        .json()
        .await
        .expect("JSON");
    let prompt = last["messages"].to_string();
    assert!(
        prompt.contains(words),
        "the prompt lacks Ana's reply: {prompt}"
    );
    assert!(
        prompt.contains("Wanneer komt het nieuwe pakket"),
        "{prompt}"
    );
    assert!(llm.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_whatsapp_window_is_reported_to_the_dispatcher_and_nothing_is_kept_as_sent() {
    let (_redis, _llm, platforms, gateway) = dispatching_gateway().await;
    let number = "31633334444";
    complain(&gateway, &platforms, number, 0).await;
    let base = format!("/v1/escalations/whatsapp:{number}");
    platforms.fail_next(1, 400, None, Some(131047));
    let (status, body) = dispatch(
        &gateway,
        &format!("{base}/messages"),
        json!({"text": "Goedemorgen, nog steeds een probleem?", "by": "Ana"}),
        &[("idempotency-key", "late-1")],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "window_closed");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("template")),
        "{body}"
    );
    // One attempt: a closed window is never retried blindly.
    assert_eq!(platforms.attempts(), 2, "the notice and one attempt");
    let shown = read(&gateway, &base).await;
    assert!(
        !shown["history"].to_string().contains("nog steeds"),
        "{shown}"
    );
    assert_eq!(
        gateway
            .metric(
                "clawgate_person_replies_total",
                "channel=\"whatsapp\",outcome=\"window_closed\""
            )
            .await,
        1.0
    );
    // Bad requests say what is wrong.
    let (status, body) = dispatch(
        &gateway,
        &format!("{base}/messages"),
        json!({"text": "x"}),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = gateway
        .post_raw(
            &format!("{base}/claim"),
            json!({"by": "Ana"}).to_string().into_bytes(),
            &[("authorization", "Bearer wrong")],
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = dispatch(
        &gateway,
        "/v1/escalations/whatsapp:31600000000/claim",
        json!({"by": "Ana"}),
        &[],
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

/// Types `text` into the element `css`.
async fn type_into(browser: &Browser, css: &str, text: &str) {
    browser
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

/// Clicks the element `css`.
async fn click(browser: &Browser, css: &str) {
    browser
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// The console in headless Chromium, end to end: a complaint escalates, the console lists it,
/// the customer's next message shows live, the dispatcher claims and answers (the customer gets
/// it on WhatsApp), resolves, and the bot answers the customer's next message knowing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_works_a_complaint_in_the_console_and_the_bot_takes_it_back_knowing_the_answer()
 {
    let (_redis, llm, platforms, gateway) = dispatching_gateway().await;
    let browser = Browser::start(1280, 900).await;
    browser
        .client
        .goto(&gateway.url("/console"))
        .await
        .expect("open /console");
    type_into(&browser, "#token", TOKEN).await;
    type_into(&browser, "#name", "Ana").await;
    click(&browser, "#signin button[type=submit]").await;
    browser
        .until(
            "the console to sign in",
            Duration::from_secs(10),
            "return !document.getElementById('app').hidden;",
        )
        .await;
    let stored_token = browser
        .run(
            "return [sessionStorage.getItem('clawgate.console.token'), localStorage.length];",
            vec![],
        )
        .await;
    assert_eq!(
        stored_token,
        json!([TOKEN, 0]),
        "the token lives in the session only"
    );

    let number = "31655556666";
    let conversation = format!("whatsapp:{number}");
    complain(&gateway, &platforms, number, 0).await;
    let item = format!("#list .item[data-conversation='{conversation}']");
    browser
        .until(
            "the escalation in the list",
            Duration::from_secs(10),
            &format!("return document.querySelector(\"{item}\") !== null;"),
        )
        .await;
    // Keyboard: the list entry is a button; Enter opens the conversation.
    browser
        .client
        .find(Locator::Css(&item))
        .await
        .expect("list entry")
        .send_keys("\u{E007}")
        .await
        .expect("Enter");
    let meta = browser
        .until(
            "the conversation to open",
            Duration::from_secs(10),
            "const m = document.getElementById('view-meta').textContent; return document.querySelectorAll('#messages .msg').length > 0 ? m : null;",
        )
        .await;
    assert!(
        meta.as_str().is_some_and(|m| m.contains("Language: nl")),
        "{meta}"
    );

    // The customer writes again: it shows without a reload.
    let follow_up = "Hallo? Ik wacht nog steeds op antwoord.";
    let (status, _) = gateway
        .whatsapp(whatsapp_text(number, "wamid.live", follow_up))
        .await;
    assert_eq!(status, 200);
    browser
        .until(
            "the customer's new message in the console",
            Duration::from_secs(10),
            &format!("return Array.from(document.querySelectorAll('#messages .msg.user .text')).some(n => n.textContent === {});", json!(follow_up)),
        )
        .await;

    click(&browser, "#claim").await;
    browser
        .until(
            "the claim to show",
            Duration::from_secs(10),
            "return document.getElementById('view-meta').textContent.includes('claimed by Ana');",
        )
        .await;
    let words = "Goedemiddag, met Ana. Er gaat vandaag een nieuw pakket naar u toe.";
    type_into(&browser, "#reply", words).await;
    click(&browser, "#send").await;
    let sent = eventually(
        Duration::from_secs(10),
        "Ana's reply on WhatsApp",
        || async { platforms.sent().into_iter().find(|s| s.text == words) },
    )
    .await;
    assert_eq!(sent.to, number);
    browser
        .until(
            "Ana's reply in the conversation view",
            Duration::from_secs(10),
            &format!("return Array.from(document.querySelectorAll('#messages .msg.agent .text')).some(n => n.textContent === {});", json!(words)),
        )
        .await;

    click(&browser, "#resolve").await;
    browser
        .until(
            "the list to empty",
            Duration::from_secs(10),
            &format!("return document.querySelector(\"{item}\") === null;"),
        )
        .await;
    let before = platforms.sent().len();
    let (status, _) = gateway
        .whatsapp(whatsapp_text(number, "wamid.back", "Top, dank u wel!"))
        .await;
    assert_eq!(status, 200);
    let sent = sent_messages(&platforms, before + 1).await;
    assert!(
        sent[before].text.starts_with("[mock]"),
        "{}",
        sent[before].text
    );
    let prompt = llm.last_request().expect("a chat request")["messages"].to_string();
    assert!(
        prompt.contains(words),
        "the prompt lacks Ana's reply: {prompt}"
    );
    assert_eq!(
        platforms.sent().iter().filter(|s| s.text == words).count(),
        1,
        "sent once"
    );
}

/// A Telegram update with one text message from a private chat.
fn telegram_text(chat: i64, update_id: u64, text: &str) -> Vec<u8> {
    json!({"update_id": update_id, "message": {"message_id": update_id, "date": now_secs(),
        "text": text, "from": {"id": chat, "is_bot": false, "first_name": "Lena", "language_code": "de"},
        "chat": {"id": chat, "type": "private", "first_name": "Lena"}}})
    .to_string()
    .into_bytes()
}

/// On Telegram a person's message goes out through the Bot API to the customer's chat, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telegram_customer_gets_the_persons_message_in_their_chat() {
    let (_redis, _llm, platforms, gateway) = dispatching_gateway().await;
    let chat = 5_123_450_001_i64;
    let (status, body) = gateway
        .telegram(telegram_text(
            chat,
            7001,
            "Mein Paket ist beschädigt angekommen!",
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let notice = sent_messages(&platforms, 1).await;
    assert_eq!(
        (notice[0].channel.as_str(), notice[0].to.as_str()),
        ("telegram", chat.to_string().as_str())
    );
    let words = "Guten Tag, hier ist Ana. Ein neues Paket ist unterwegs.";
    let (status, body) = dispatch(
        &gateway,
        &format!("/v1/escalations/telegram:{chat}/messages"),
        json!({"text": words, "by": "Ana"}),
        &[("idempotency-key", "tg-1")],
    )
    .await;
    assert_eq!((status, &body["status"]), (200, &json!("sent")), "{body}");
    let sent = sent_messages(&platforms, 2).await;
    assert_eq!(
        (
            sent[1].channel.as_str(),
            sent[1].to.as_str(),
            sent[1].text.as_str()
        ),
        ("telegram", chat.to_string().as_str(), words)
    );
}

/// On web chat the widget's live event stream is the delivery: a person's message arrives as a
/// `person` event and stays in the session's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_chat_customer_sees_the_persons_message_live_and_in_the_history() {
    let (_redis, _llm, _platforms, gateway) = dispatching_gateway().await;
    let session = "wc-dispatch-1";
    let (status, body) = gateway.send(session, "m1", COMPLAINT, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "handover");
    let http = http_client();
    let mut events = SseStream::open(
        &http,
        &gateway.url(&format!("/v1/webchat/sessions/{session}/events")),
        None,
    )
    .await;
    assert_eq!(
        events.next(Duration::from_secs(5)).await.map(|e| e.name),
        Some("ready".to_string())
    );

    let words = "Hi, Ana here: a new parcel leaves today.";
    let (status, sent) = dispatch(
        &gateway,
        &format!("/v1/escalations/webchat:{session}/messages"),
        json!({"text": words, "by": "Ana"}),
        &[],
    )
    .await;
    assert_eq!((status, &sent["status"]), (200, &json!("sent")), "{sent}");
    let seen = events.until("person", Duration::from_secs(5)).await;
    let person = seen.last().expect("the person event");
    assert_eq!(
        (person.data["text"].as_str(), person.data["by"].as_str()),
        (Some(words), Some("Ana"))
    );
    assert_eq!(person.data["message_id"], sent["message_id"]);
    let history = gateway.history(session).await;
    assert!(
        history
            .iter()
            .any(|e| e["role"] == "agent" && e["text"] == words),
        "{history:?}"
    );

    // While the person has the conversation the agent does not write: the customer's next
    // message is told it reached them, with no typing event before.
    let (status, body) = gateway
        .send(session, "m2", "Thanks! Today when?", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "handover");
    let seen = events.until("answer", Duration::from_secs(5)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["message", "answer"], "{seen:?}");
    assert_eq!(seen[1].data["message_id"], "m2");

    // The console page itself is served by every replica.
    let page = http_client()
        .get(gateway.url("/console"))
        .send()
        .await
        .expect("GET /console");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html"))
    );
}
