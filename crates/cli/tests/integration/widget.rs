//! The web-chat widget in a real browser: headless Chromium over WebDriver opens `/chat` or a
//! customer's page embedding `/widget.js`, types, reloads, and keeps chatting while the replica
//! holding its event stream is killed.

use crate::support::browser::Browser;
use crate::support::*;
use clawgate_fakes::host_page::HostPage;
use fantoccini::Locator;
use serde_json::{Value, json};
use std::time::Duration;

const ANSWER: &str = "Your parcel VC123456 is with the courier and arrives tomorrow between nine and twelve o'clock; you can pick another day on the tracking page.";

const DUTCH_ANSWER: &str = "Je pakket VC123456 is onderweg en wordt morgen tussen 9:00 en 12:00 bezorgd. Wil je een andere dag kiezen? Dat kan op de trackingpagina.";

/// Reads from the widget's shadow root; `root` is bound, `null` before the widget is there.
fn in_widget(body: &str) -> String {
    format!(
        "const host = document.querySelector('clawgate-chat'); const root = host && host.shadowRoot; if (!root) return null; {body}"
    )
}

/// What `body` (run in the widget's shadow root, see [`in_widget`]) returns now.
async fn widget_value(browser: &Browser, body: &str) -> Value {
    browser.run(&in_widget(body), vec![]).await
}

/// Opens `url` in the browser.
async fn open(browser: &Browser, url: &str) {
    browser
        .client
        .goto(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
}

/// `[role, text]` of every message shown, in order.
async fn shown(browser: &Browser) -> Vec<(String, String)> {
    let messages = widget_value(browser, "return Array.from(root.querySelectorAll('.msg')).map(n => [n.classList.contains('user') ? 'user' : 'agent', n.querySelector('.text').textContent]);").await;
    messages
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap_or("").to_string(),
                pair[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until the widget says it is `state` (`ready`, `unavailable`, …).
async fn until_state(browser: &Browser, state: &str, timeout: Duration) {
    browser
        .until(
            &format!("the widget to be {state}"),
            timeout,
            &format!("return document.querySelector('clawgate-chat')?.getAttribute('data-state') === '{state}';"),
        )
        .await;
}

/// Waits until `count` final answers are shown; returns their texts.
async fn final_answers(browser: &Browser, count: usize, timeout: Duration) -> Vec<String> {
    let script = in_widget(&format!(
        "const texts = Array.from(root.querySelectorAll('.msg.agent[data-final=true] .text')).map(n => n.textContent); return texts.length >= {count} ? texts : null;"
    ));
    let texts = browser
        .until(&format!("{count} final answers"), timeout, &script)
        .await;
    texts
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().unwrap_or("").to_string())
        .collect()
}

/// Records, from now on, every live event the widget announces and every text its answers
/// show, in `window.__seen`.
async fn record(browser: &Browser) {
    widget_value(browser, "window.__seen = {events: [], texts: [], states: []};
                 new MutationObserver(() => window.__seen.states.push(host.getAttribute('data-state')))
                   .observe(host, {attributes: true, attributeFilter: ['data-state']});
                 host.addEventListener('clawgate:event', e => window.__seen.events.push([e.detail.id, e.detail.type]));
                 new MutationObserver(() => {
                   for (const n of root.querySelectorAll('.msg.agent .text')) window.__seen.texts.push(n.textContent);
                 }).observe(root, {subtree: true, childList: true, characterData: true});
                 return true;").await;
}

async fn recorded(browser: &Browser) -> Value {
    browser.run("return window.__seen;", vec![]).await
}

/// Types `text` into the widget and sends it: with the send button, or with Enter.
async fn type_and_send(browser: &Browser, text: &str, with_enter: bool) {
    let host = browser
        .client
        .wait()
        .for_element(Locator::Css("clawgate-chat"))
        .await
        .expect("widget element");
    let root = host.shadow_root().await.expect("shadow root");
    let input = root.find(Locator::Css("textarea")).await.expect("input");
    if with_enter {
        input
            .send_keys(&format!("{text}\u{E007}"))
            .await
            .expect("type and Enter");
    } else {
        input.send_keys(text).await.expect("type");
        root.find(Locator::Css("button.send"))
            .await
            .expect("send button")
            .click()
            .await
            .expect("click send");
    }
}

/// Opens the chat bubble of an embedded widget with a click.
async fn open_bubble(browser: &Browser) {
    let host = browser
        .client
        .wait()
        .for_element(Locator::Css("clawgate-chat"))
        .await
        .expect("widget");
    let root = host.shadow_root().await.expect("shadow root");
    let bubble = root
        .find(Locator::Css("button.bubble"))
        .await
        .expect("bubble");
    let expanded = || async { bubble.attr("aria-expanded").await.expect("attr") };
    assert_eq!(expanded().await.as_deref(), Some("false"));
    bubble.click().await.expect("open");
    assert_eq!(expanded().await.as_deref(), Some("true"));
}

/// Ids like Redis stream ids, in order and each once.
fn assert_each_once_in_order(events: &Value) {
    let ids: Vec<(u64, u64)> = events
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let id = e[0].as_str().expect("id");
            let (ms, n) = id.split_once('-').expect("stream id");
            (ms.parse().expect("ms"), n.parse().expect("n"))
        })
        .collect();
    for pair in ids.windows(2) {
        // A reconnection's `ready` repeats the id it resumes from; every other event is new.
        assert!(pair[1] >= pair[0], "events out of order: {events}");
    }
    let names: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e[1] != "ready")
        .map(|e| e[0].as_str().expect("id"))
        .collect();
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(names, unique, "an event was shown twice: {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_chats_on_the_chat_page_and_finds_the_conversation_after_a_reload() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(300).await;
    llm.set_chunk_pause(Duration::from_millis(60));
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["webchat"] = json!({"title": "VeloCity"});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    let browser = Browser::start(1000, 800).await;
    open(&browser, &gateway.url("/chat?lang=en")).await;
    until_state(&browser, "ready", Duration::from_secs(10)).await;
    assert_eq!(browser.client.title().await.expect("title"), "VeloCity");
    // Accessible: the conversation is a live region, the input has a label.
    let a11y = widget_value(&browser, "const log = root.querySelector('[role=log]'); const input = root.querySelector('textarea');
                 return [log.getAttribute('aria-live'), root.querySelector('label[for=' + input.id + ']').textContent, root.activeElement === input];").await;
    assert_eq!(a11y, json!(["polite", "Type your message", true]));
    record(&browser).await;

    type_and_send(&browser, "Where is my parcel?", false).await;
    // The customer's message shows at once, and the agent is typing.
    browser
        .until(
            "the customer's message and the typing indicator",
            Duration::from_secs(2),
            &in_widget(
                "return root.querySelectorAll('.msg.user').length === 1 && !root.querySelector('.typing').hidden;",
            ),
        )
        .await;
    let answers = final_answers(&browser, 1, Duration::from_secs(20)).await;
    assert_eq!(user_turns(&answers[0]), 1, "{answers:?}");
    // The answer was shown while it streamed: partial texts that grow into it.
    let seen = recorded(&browser).await;
    assert_each_once_in_order(&seen["events"]);
    let texts: Vec<&str> = seen["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let partial = texts
        .iter()
        .filter(|t| !t.is_empty() && t.len() < answers[0].len())
        .count();
    assert!(partial >= 3, "the answer streamed in pieces: {texts:?}");
    assert!(
        texts.iter().all(|t| answers[0].starts_with(t)),
        "every partial text is the start of the answer: {texts:?}"
    );
    assert_each_once_in_order(&seen["events"]);
    let typing_hidden =
        widget_value(&browser, "return root.querySelector('.typing').hidden;").await;
    assert_eq!(typing_hidden, json!(true));

    // Keyboard only: Enter sends. The answer has the context of the first turn.
    type_and_send(&browser, "And can it come on Saturday?", true).await;
    let answers = final_answers(&browser, 2, Duration::from_secs(20)).await;
    assert_eq!(user_turns(&answers[1]), 2, "{answers:?}");
    let before = shown(&browser).await;
    assert_eq!(before.len(), 4, "{before:?}");

    // A reload shows the same conversation, once.
    browser.client.refresh().await.expect("reload");
    until_state(&browser, "ready", Duration::from_secs(10)).await;
    let after = eventually(
        Duration::from_secs(5),
        "the history after the reload",
        || {
            let browser = &browser;
            async move {
                let shown = shown(browser).await;
                (shown.len() >= 4).then_some(shown)
            }
        },
    )
    .await;
    assert_eq!(after, before);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shown(&browser).await, before, "nothing replayed twice");

    // A complaint hands the conversation to a person: the widget says so, with the reference.
    type_and_send(&browser, "My parcel arrived damaged", true).await;
    let answers = final_answers(&browser, 3, Duration::from_secs(20)).await;
    let reference = regex::Regex::new(r"ESC-[0-9A-F]+")
        .expect("regex")
        .find(&answers[2])
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| panic!("no reference in {:?}", answers[2]));
    let notice = browser
        .until(
            "the hand-over notice",
            Duration::from_secs(5),
            &in_widget("const n = root.querySelector('.notice'); return n && n.textContent;"),
        )
        .await;
    assert_eq!(
        notice,
        json!(format!(
            "A colleague will take over this conversation. Your reference: {reference}"
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_embeds_the_widget_and_another_origin_is_refused() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let embed = |gateway: &str| {
        format!(
            r#"<!doctype html><html lang="nl"><head><title>VeloCity tracking</title></head>
<body><h1>Track &amp; trace</h1>
<script src="{gateway}/widget.js" data-title="VeloCity" async></script></body></html>"#
        )
    };
    // The pages' origins go into the gateway's config; the gateway's address into the pages.
    let allowed = HostPage::spawn().await.expect("page");
    let refused = HostPage::spawn().await.expect("page");
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["webchat"] = json!({"allowedOrigins": [allowed.origin()]});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    let gateway_origin = gateway.url("");
    allowed.set(embed(&gateway_origin));
    refused.set(embed(&gateway_origin));

    let browser = Browser::start(1000, 800).await;

    open(&browser, &format!("{}/", allowed.origin())).await;
    open_bubble(&browser).await;
    until_state(&browser, "ready", Duration::from_secs(10)).await;
    // The page is Dutch: so are the widget's labels.
    let placeholder = widget_value(
        &browser,
        "return root.querySelector('textarea').placeholder;",
    )
    .await;
    assert_eq!(placeholder, json!("Typ je bericht"));
    llm.set_reply(Some(DUTCH_ANSWER));
    type_and_send(&browser, "Waar is mijn pakket VC123456?", true).await;
    let answers = final_answers(&browser, 1, Duration::from_secs(20)).await;
    assert_eq!(answers, [DUTCH_ANSWER]);
    // The picture in the README.
    let png = browser.client.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("widget-embedded.png");
    std::fs::write(&path, png).expect("write screenshot");
    // On a phone the chat takes the whole screen.
    browser
        .client
        .set_window_size(390, 844)
        .await
        .expect("phone size");
    let fills = browser
        .until(
            "the panel to fill a phone's screen",
            Duration::from_secs(5),
            &in_widget(
                "const r = root.querySelector('.panel').getBoundingClientRect(); return r.width === window.innerWidth && r.height === window.innerHeight;",
            ),
        )
        .await;
    assert_eq!(fills, json!(true));

    open(&browser, &format!("{}/", refused.origin())).await;
    open_bubble(&browser).await;
    until_state(&browser, "unavailable", Duration::from_secs(10)).await;
    let status = widget_value(
        &browser,
        "return root.querySelector('[role=status]').textContent;",
    )
    .await;
    assert!(
        status.as_str().unwrap_or("").contains("niet beschikbaar"),
        "{status}"
    );
    assert!(shown(&browser).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_sees_the_whole_answer_once_when_the_replica_holding_the_stream_is_killed() {
    let llm = mock_llm(200).await;
    llm.set_reply(Some(ANSWER));
    llm.set_chunk_pause(Duration::from_millis(120));
    let mut config = test_config(vec![openai_provider("primary", &llm, 20_000, 0)]);
    config["webchat"] = json!({});
    let cluster = TestCluster::start(config, 3).await;
    let browser = Browser::start(1000, 800).await;
    open(&browser, &cluster.url("/chat?lang=en")).await;
    until_state(&browser, "ready", Duration::from_secs(10)).await;
    record(&browser).await;
    type_and_send(&browser, "Where is my parcel?", true).await;
    // Once the answer is streaming, the replica serving the page's event stream dies.
    browser
        .until(
            "the first words of the answer",
            Duration::from_secs(10),
            &in_widget("const n = root.querySelector('.msg.agent .text'); return n && n.textContent.length > 0;"),
        )
        .await;
    let status = cluster.status().await;
    let mut holder = None;
    for replica in status["replicas"].as_array().expect("replicas") {
        let port = replica["port"].as_u64().expect("port");
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let streams: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("clawgate_webchat_event_streams "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if streams >= 1.0 {
            holder = Some((replica["id"].clone(), replica["pid"].as_u64().expect("pid")));
        }
    }
    let (victim, pid) = holder.expect("a replica holds the stream");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let answers = final_answers(&browser, 1, Duration::from_secs(30)).await;
    assert_eq!(answers, [ANSWER], "killed {victim}");
    let seen = recorded(&browser).await;
    let texts: Vec<&str> = seen["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        texts.iter().all(|t| ANSWER.starts_with(t)),
        "nothing shown twice or out of order: {texts:?}"
    );
    assert_each_once_in_order(&seen["events"]);
    let types: Vec<&str> = seen["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e[1].as_str())
        .collect();
    assert!(
        types.iter().filter(|t| **t == "ready").count() >= 1,
        "reconnected: {types:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = shown(&browser).await;
    assert_eq!(
        messages,
        [
            ("user".to_string(), "Where is my parcel?".to_string()),
            ("agent".to_string(), ANSWER.to_string())
        ]
    );
}
