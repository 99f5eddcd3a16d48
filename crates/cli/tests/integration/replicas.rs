//! Several replicas on one Redis: any replica answers any message with the whole context, in
//! order, and a replica's death loses nothing and duplicates nothing.

use crate::support::*;
use std::time::Duration;

/// Each message of `session` has exactly one user and one assistant entry, in order, and the
/// assistant of the k-th message saw k user turns.
pub(crate) async fn assert_answered_once_in_order(
    gateway: &Gateway,
    session: &str,
    messages: &[&str],
) {
    let history = gateway.history(session).await;
    assert_eq!(history.len(), messages.len() * 2, "{session}: {history:#?}");
    for (k, pair) in history.chunks(2).enumerate() {
        assert_eq!(pair[0]["role"], "user");
        assert_eq!(pair[1]["role"], "assistant");
        assert_eq!(
            pair[0]["message_id"], messages[k],
            "{session}: out of order: {history:#?}"
        );
        assert_eq!(pair[1]["message_id"], messages[k]);
        let text = pair[1]["text"].as_str().unwrap_or_default();
        assert_eq!(
            user_turns(text),
            k + 1,
            "{session}: turn {} lacked context: {text}",
            k + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_conversation_alternately() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(20).await;
    let config = test_config(vec![openai_provider("primary", &llm, 5000, 0)]);
    let a = Gateway::start(config.clone(), &redis.url(), "replica-a").await;
    let b = Gateway::start(config, &redis.url(), "replica-b").await;
    let ids = ["m1", "m2", "m3", "m4", "m5", "m6"];
    for (k, id) in ids.iter().enumerate() {
        let via = if k % 2 == 0 { &a } else { &b };
        let (status, body) = via.send("alt", id, &format!("turn {}", k + 1), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
            k + 1
        );
    }
    assert_answered_once_in_order(&a, "alt", &ids).await;
    assert_answered_once_in_order(&b, "alt", &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_read_together_by_one_replica_are_answered_in_arrival_order() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(300).await;
    let mut busy_config = test_config(vec![openai_provider("primary", &llm, 5000, 0)]);
    busy_config["workers"]["concurrency"] = 1.into();
    let a = Gateway::start(busy_config, &redis.url(), "replica-a").await;
    // A's only worker slot is busy, so the messages below wait unread in the inbox ...
    llm.set_latency(Duration::from_millis(1500));
    assert_eq!(a.send("blocker", "m1", "slow", Some(0)).await.0, 202);
    eventually(
        Duration::from_secs(5),
        "A to start the slow turn",
        || async { (llm.requests() == 1).then_some(()) },
    )
    .await;
    llm.set_latency(Duration::from_millis(100));
    let sessions: Vec<String> = (0..8).map(|i| format!("burst-{i}")).collect();
    for session in &sessions {
        assert_eq!(
            a.send(session, "first", "first question", Some(0)).await.0,
            202
        );
        assert_eq!(
            a.send(session, "second", "second question", Some(0))
                .await
                .0,
            202
        );
    }
    // ... until B starts and reads them all in one batch: both turns of each customer start at
    // the same instant, and the second must still wait for the first.
    let b = Gateway::start(
        test_config(vec![openai_provider("primary", &llm, 5000, 0)]),
        &redis.url(),
        "replica-b",
    )
    .await;
    for session in &sessions {
        b.reply_of(session, "second").await;
        assert_answered_once_in_order(&b, session, &["first", "second"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_s_pending_messages_are_finished_by_another_once() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(1500).await;
    let config = test_config(vec![openai_provider("primary", &llm, 10000, 0)]);
    let mut a = Gateway::start(config.clone(), &redis.url(), "replica-a").await;
    let sessions: Vec<String> = (0..8).map(|i| format!("crash-{i}")).collect();
    for session in &sessions {
        let (status, _) = a
            .send(session, "m1", "hello before the crash", Some(0))
            .await;
        assert_eq!(status, 202);
    }
    // A is in the middle of all eight turns when it dies.
    eventually(
        Duration::from_secs(10),
        "replica A to ask the model 8 times",
        || async { (llm.requests() >= 8).then_some(()) },
    )
    .await;
    a.kill().await;
    let pending: redis::Value = redis
        .query(redis::cmd("XPENDING").arg("oc:inbox").arg("workers"))
        .await;
    assert!(
        format!("{pending:?}").contains("replica-a"),
        "nothing pending at A: {pending:?}"
    );

    let b = Gateway::start(config, &redis.url(), "replica-b").await;
    for session in &sessions {
        let reply = b.reply_of(session, "m1").await;
        assert_eq!(user_turns(reply["text"].as_str().unwrap_or_default()), 1);
        assert_answered_once_in_order(&b, session, &["m1"]).await;
    }
    assert_eq!(b.metric("clawgate_inbox_claimed_total", "").await, 8.0);
    eventually(Duration::from_secs(5), "the inbox to drain", || async {
        let length: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
        (length == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_claimed_twice_is_answered_once() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(2500).await;
    let config = test_config(vec![openai_provider("primary", &llm, 10000, 0)]);
    let a = Gateway::start(config.clone(), &redis.url(), "replica-a").await;
    let (status, _) = a.send("twice", "m1", "hello", Some(0)).await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(5), "A to ask the model", || async {
        (llm.requests() == 1).then_some(())
    })
    .await;
    // A freezes mid-turn (a long GC pause, a stalled VM): its entry goes idle and its lease
    // expires, so B takes the message over while A's model call is still under way.
    a.pause();
    let b = Gateway::start(config, &redis.url(), "replica-b").await;
    eventually(
        Duration::from_secs(10),
        "B to take the message over",
        || async { (llm.requests() == 2).then_some(()) },
    )
    .await;
    a.resume();
    let reply = b.reply_of("twice", "m1").await;
    eventually(
        Duration::from_secs(10),
        "the slower of the two turns to finish",
        || async {
            // Whichever replica lost the race has the series; the other may have none.
            let discarded = a
                .try_metric("clawgate_turns_discarded_total", "")
                .await
                .unwrap_or(0.0)
                + b.try_metric("clawgate_turns_discarded_total", "")
                    .await
                    .unwrap_or(0.0);
            (discarded == 1.0).then_some(())
        },
    )
    .await;
    let history = b.history("twice").await;
    assert_eq!(history.len(), 2, "answered twice: {history:#?}");
    assert_eq!(history[1]["text"], reply["text"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_keeps_failing_goes_to_the_dead_letter_stream_without_blocking_the_customer()
{
    let redis = TestRedis::start().await;
    let llm = mock_llm(3000).await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10000, 0)]);
    config["workers"]["maxDeliveries"] = 1.into();
    let mut a = Gateway::start(config.clone(), &redis.url(), "replica-a").await;
    assert_eq!(a.send("poison", "m1", "first", Some(0)).await.0, 202);
    eventually(Duration::from_secs(5), "A to start the turn", || async {
        (llm.requests() == 1).then_some(())
    })
    .await;
    // The replica dies during the turn: the entry's second delivery exceeds the limit of one.
    a.kill().await;
    llm.set_latency(Duration::from_millis(10));
    let b = Gateway::start(config, &redis.url(), "replica-b").await;
    let dead: Vec<redis::Value> =
        eventually(Duration::from_secs(10), "the dead-letter entry", || async {
            let entries: Vec<redis::Value> = redis
                .query(redis::cmd("XRANGE").arg("oc:deadletter").arg("-").arg("+"))
                .await;
            (!entries.is_empty()).then_some(entries)
        })
        .await;
    let entry = format!("{dead:?}");
    assert!(entry.contains("delivered 2 times"), "{entry}");
    assert!(
        entry.contains("poison"),
        "the message is not kept in the dead-letter entry: {entry}"
    );
    assert_eq!(
        b.metric("clawgate_messages_failed_total", "dead_letter")
            .await,
        1.0
    );
    let (status, _) = b.get("/v1/webchat/sessions/poison/messages/m1").await;
    assert_eq!(
        status, 202,
        "a dead-lettered message must not look answered"
    );

    // The customer's next message is not held up behind the dead one.
    let (status, body) = b.send("poison", "m2", "second", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        user_turns(body["reply"]["text"].as_str().unwrap_or_default()),
        1
    );
    let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
    assert_eq!(inbox, 0);

    // Once the cause is fixed, the operator re-drives it: it is answered as a new turn.
    let config = b.config_path().display().to_string();
    let url = redis.url();
    let (code, output) = run_cli(
        &[
            "deadletter",
            "retry",
            "--all",
            "--config",
            &config,
            "--redis-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("queued again"), "{output}");
    let reply = b.reply_of("poison", "m1").await;
    assert_eq!(user_turns(reply["text"].as_str().unwrap_or_default()), 2);
    let dead: u64 = redis.query(redis::cmd("XLEN").arg("oc:deadletter")).await;
    assert_eq!(dead, 0);
}
