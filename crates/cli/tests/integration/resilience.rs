//! The provider chain under failure, across replicas: circuit breakers shared through Redis,
//! the cluster-wide budget with spillover, and the turn deadline. Providers are `clawgate mock
//! llm` servers switched at run time; latencies are read from the turns themselves (the
//! history's timestamps), never from sleeps in the test.

use crate::support::*;
use clawgate_fakes::mock_llm::{MockLlm, Mode};
use serde_json::{Value, json};
use std::time::Duration;

/// Milliseconds from a message's acceptance to its committed reply, from the history the turn
/// wrote (user entry `ts` = accepted, assistant entry `ts` = committed).
async fn turn_latency_ms(gateway: &Gateway, session: &str) -> u64 {
    let history = gateway.history(session).await;
    let ts = |i: usize| history[i]["ts"].as_u64().expect("ts");
    assert_eq!(history.len(), 2, "one turn expected in {session}");
    ts(1) - ts(0)
}

/// A config with a primary, a fallback and the template, and a breaker that opens after three
/// consecutive failures and probes every 300 ms.
fn breaker_config(primary: &MockLlm, fallback: &MockLlm) -> Value {
    let mut config = test_config(vec![
        openai_provider("primary", primary, 1000, 0),
        ollama_provider("fallback", fallback, 5000),
    ]);
    config["llm"]["circuitBreaker"] = json!({"consecutiveFailures": 3, "probeIntervalMs": 300});
    config
}

/// The shared breaker's state in the Redis at `url` (one Redis, or a cluster's seeds).
async fn breaker_state(url: &str, provider: &str) -> Option<String> {
    let mut command = redis::cmd("HGET");
    command
        .arg(format!("oc:breaker:{{{provider}}}"))
        .arg("state");
    match url.strip_prefix("redis+cluster://") {
        Some(seeds) => {
            let seeds = seeds.split(',').map(|seed| format!("redis://{seed}"));
            let client = redis::cluster::ClusterClient::new(seeds.collect::<Vec<_>>())
                .expect("cluster client");
            let mut conn = client.get_async_connection().await.expect("cluster");
            command.query_async(&mut conn).await.expect("HGET")
        }
        None => {
            let client = redis::Client::open(url).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            command.query_async(&mut conn).await.expect("HGET")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_primary_is_skipped_once_its_breaker_opens_and_gets_traffic_back_when_it_recovers()
 {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(50).await;
    let gateway = Gateway::start(breaker_config(&primary, &fallback), &redis.url(), "r1").await;
    primary.set_mode(Mode::Hang);

    // The first three turns wait out the primary's 1 s timeout, then the fallback answers.
    for i in 0..3 {
        let (status, body) = gateway
            .send(&format!("before-{i}"), "m1", "where is my parcel?", None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["reply"]["provider"], "fallback");
        assert!(turn_latency_ms(&gateway, &format!("before-{i}")).await >= 1000);
    }
    assert_eq!(
        breaker_state(&redis.url(), "primary").await.as_deref(),
        Some("open")
    );

    // Now turns skip the primary: the fallback's own 50 ms plus a small margin, no timeout.
    for i in 0..5 {
        let session = format!("after-{i}");
        let (_, body) = gateway
            .send(&session, "m1", "where is my parcel?", None)
            .await;
        assert_eq!(body["reply"]["provider"], "fallback");
        let latency = turn_latency_ms(&gateway, &session).await;
        assert!(
            latency < 50 + 250,
            "turn took {latency} ms with the breaker open"
        );
    }
    assert!(
        gateway
            .metric(
                "clawgate_provider_skipped_total",
                "provider=\"primary\",reason=\"breaker_open\""
            )
            .await
            >= 5.0
    );
    assert_eq!(
        gateway
            .metric("clawgate_provider_breaker_transitions_total", "to=\"open\"")
            .await,
        1.0,
        "the opening is reported once"
    );

    // The primary recovers: a background probe closes the breaker and traffic returns to it.
    primary.set_mode(Mode::Ok);
    eventually(Duration::from_secs(10), "the breaker to close", || async {
        (breaker_state(&redis.url(), "primary").await.as_deref() == Some("closed")).then_some(())
    })
    .await;
    let (_, body) = gateway.send("recovered", "m1", "and now?", None).await;
    assert_eq!(body["reply"]["provider"], "primary");
    assert!(
        gateway
            .metric(
                "clawgate_provider_probes_total",
                "provider=\"primary\",outcome=\"ok\""
            )
            .await
            >= 1.0
    );
    assert!(gateway.logs().contains("circuit closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opened_by_one_replica_spares_the_other_its_timeouts() {
    let redis = TestRedis::start().await;
    one_replica_opens_the_breaker_for_the_other(&redis.url()).await;
}

/// The same on a Redis Cluster, where the change is announced on the shard channel of the
/// breaker's own slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_breaker_opened_by_one_replica_spares_the_other_its_timeouts() {
    let cluster = crate::support::redis_cluster::TestRedisCluster::start(3).await;
    one_replica_opens_the_breaker_for_the_other(&cluster.url()).await;
}

/// Replica A meets a hanging primary until its breaker opens; replica B, which had been
/// admitting the primary without asking Redis, skips it from then on.
async fn one_replica_opens_the_breaker_for_the_other(redis_url: &str) {
    let primary = mock_llm(0).await;
    let fallback = mock_llm(20).await;
    let config = breaker_config(&primary, &fallback);
    let a = Gateway::start(config.clone(), redis_url, "a").await;
    let b = Gateway::start(config, redis_url, "b").await;
    // The primary answers at first (B, like A, re-reads the shared breaker every second).
    let (_, body) = b.send("b-warm", "m1", "hello", None).await;
    assert_eq!(body["reply"]["provider"], "primary", "{body}");
    primary.set_mode(Mode::Hang);

    // Replica A discovers the outage. Web-chat turns run on any replica, so A's worker pool
    // may hand some to B; the three timeouts are what opens the shared breaker either way.
    for i in 0..3 {
        let (_, body) = a.send(&format!("a-{i}"), "m1", "hello", None).await;
        assert_eq!(body["reply"]["provider"], "fallback");
    }
    assert_eq!(
        breaker_state(redis_url, "primary").await.as_deref(),
        Some("open")
    );
    let calls_before = primary.requests();

    // Replica B never waits for the primary again.
    for i in 0..5 {
        let session = format!("b-{i}");
        let (_, body) = b.send(&session, "m1", "hello", None).await;
        assert_eq!(body["reply"]["provider"], "fallback");
        let latency = turn_latency_ms(&b, &session).await;
        assert!(
            latency < 20 + 250,
            "turn took {latency} ms with the breaker open"
        );
    }
    // Only probes (at most one per 300 ms cluster-wide) reached the primary meanwhile.
    // A replica that never probed has no series: its share is none.
    let probes = a
        .try_metric("clawgate_provider_probes_total", "provider=\"primary\"")
        .await
        .unwrap_or(0.0)
        + b.try_metric("clawgate_provider_probes_total", "provider=\"primary\"")
            .await
            .unwrap_or(0.0);
    assert_eq!(primary.requests() - calls_before, probes as u64);
}

/// Successes reach the shared breaker in batches, yet in this replica's order: a success between
/// failures still breaks their run, and the successes are counted in the shared window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_between_failures_breaks_their_run_although_successes_are_sent_in_batches() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(20).await;
    let gateway = Gateway::start(breaker_config(&primary, &fallback), &redis.url(), "r1").await;
    let turn = |name: &'static str| {
        let gateway = &gateway;
        async move {
            let (status, body) = gateway.send(name, "m1", "hello", None).await;
            assert_eq!(status, 200, "{body}");
            body["reply"]["provider"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };

    primary.set_mode(Mode::Hang);
    assert_eq!(turn("f1").await, "fallback");
    assert_eq!(turn("f2").await, "fallback");
    primary.set_mode(Mode::Ok);
    assert_eq!(turn("s1").await, "primary");
    primary.set_mode(Mode::Hang);
    assert_eq!(turn("f3").await, "fallback");
    assert_eq!(turn("f4").await, "fallback");
    assert_ne!(
        breaker_state(&redis.url(), "primary").await.as_deref(),
        Some("open"),
        "two failures after a success are a run of two, not four"
    );
    assert_eq!(turn("f5").await, "fallback");
    assert_eq!(
        breaker_state(&redis.url(), "primary").await.as_deref(),
        Some("open")
    );
    let calls: Option<u64> = redis
        .query(redis::cmd("HGET").arg("oc:breaker:{primary}").arg("calls"))
        .await;
    assert_eq!(
        calls,
        Some(6),
        "the batched success is counted in the window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_shorter_than_the_primary_timeout_still_gets_the_template_answer_in_time() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(0).await;
    let mut config = test_config(vec![
        openai_provider("primary", &primary, 5000, 2),
        ollama_provider("fallback", &fallback, 5000),
    ]);
    config["llm"]["deadlineMs"] = json!(800);
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    primary.set_mode(Mode::Hang);
    fallback.set_mode(Mode::Hang);

    let (status, body) = gateway
        .send("late", "m1", "where is my parcel?", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "template");
    assert!(
        !body["reply"]["text"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    let latency = turn_latency_ms(&gateway, "late").await;
    assert!(
        (780..800 + 150).contains(&latency),
        "the 800 ms deadline: the turn took {latency} ms"
    );
    assert_eq!(
        primary.requests(),
        1,
        "a hang is not retried, and the deadline leaves no room for more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_budget_and_spill_the_rest_to_the_fallback() {
    const SECONDS: u64 = 59;
    const PER_SECOND: u64 = 5;
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(0).await;
    let mut config = test_config(vec![
        openai_provider("primary", &primary, 5000, 0),
        ollama_provider("fallback", &fallback, 5000),
    ]);
    config["llm"]["rateLimiting"] = json!({"requestsPerMinute": 60, "burstAllowed": 10});
    let replicas = [
        Gateway::start(config.clone(), &redis.url(), "a").await,
        Gateway::start(config.clone(), &redis.url(), "b").await,
        Gateway::start(config, &redis.url(), "c").await,
    ];

    // Saturating load for just under a minute: five new customers a second, spread unevenly
    // over the replicas (half to the first), so a per-replica split would show.
    let mut sends = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
    for i in 0..SECONDS * PER_SECOND {
        tick.tick().await;
        let replica = match i % 4 {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        let url = replicas[replica].url("/v1/webchat/messages");
        let http = http_client();
        sends.spawn(async move {
            let body = json!({"session_id": format!("c{i}"), "message_id": "m1", "text": "where is my parcel?"});
            let response = http.post(&url).json(&body).send().await.expect("send");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["reply"]["provider"].as_str().unwrap_or("").to_string())
        });
    }
    let mut by_provider = std::collections::BTreeMap::<String, u64>::new();
    while let Some(result) = sends.join_next().await {
        let (status, provider) = result.expect("send task");
        assert_eq!(status, 200, "every message is answered");
        *by_provider.entry(provider).or_default() += 1;
    }
    let primary_answers = by_provider.get("primary").copied().unwrap_or(0);
    let fallback_answers = by_provider.get("fallback").copied().unwrap_or(0);
    assert_eq!(
        primary_answers + fallback_answers,
        SECONDS * PER_SECOND,
        "no template answers, no failures: {by_provider:?}"
    );
    // One budget for the cluster: 60 a minute plus the burst of 10, in total.
    assert!(
        primary.requests() <= 60 + 10,
        "the primary got {} calls",
        primary.requests()
    );
    // And not split per replica: the cluster used (nearly) all of it despite uneven load.
    assert!(primary_answers >= 60, "{by_provider:?}");
    let spilled: f64 = futures_util::future::join_all(replicas.iter().map(|r| {
        r.metric(
            "clawgate_provider_skipped_total",
            "provider=\"primary\",reason=\"rate_limited\"",
        )
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(spilled as u64, fallback_answers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sending_ten_messages_in_a_second_gets_a_few_replies_that_cover_all_ten() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(200).await;
    let gateway = Gateway::start(
        test_config(vec![openai_provider("primary", &llm, 10_000, 0)]),
        &redis.url(),
        "r1",
    )
    .await;

    // Ten messages, 100 ms apart; each request returns at once (202) and the replies are
    // fetched afterwards.
    for i in 1..=10 {
        let (status, body) = gateway
            .send(
                "panic",
                &format!("m{i}"),
                &format!("where is my parcel? ({i})"),
                Some(0),
            )
            .await;
        assert!(status == 200 || status == 202, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut replies = Vec::new();
    for i in 1..=10 {
        replies.push(gateway.reply_of("panic", &format!("m{i}")).await);
    }
    let turns = llm.requests();
    // Flood control (20 turns a minute, three at once) and coalescing: a handful of turns.
    assert!(
        (2..=4).contains(&turns),
        "{turns} model calls for 10 messages"
    );
    let covered = replies
        .iter()
        .filter(|r| !r["covered_by"].is_null())
        .count();
    assert_eq!(covered as u64, 10 - turns, "{replies:#?}");
    // The last reply saw all ten messages, in order.
    let last = replies[9]["text"].as_str().unwrap_or_default();
    assert_eq!(user_turns(last), 10, "{last}");
    assert!(last.contains("(10)"), "{last}");
    // The history holds every message once and one answer per turn.
    let history = gateway.history("panic").await;
    let users: Vec<&str> = history
        .iter()
        .filter(|e| e["role"] == "user")
        .map(|e| e["message_id"].as_str().unwrap_or_default())
        .collect();
    let expected: Vec<String> = (1..=10).map(|i| format!("m{i}")).collect();
    assert_eq!(users, expected);
    assert_eq!(history.len() as u64, 10 + turns);
    assert_eq!(
        gateway
            .metric("clawgate_messages_coalesced_total", "")
            .await as u64,
        10 - turns
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_customer_flooding_gets_one_message_per_turn_not_one_per_message() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(300).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![openai_provider("primary", &llm, 10_000, 0)]);
    config["channels"] = channels_config(&platforms);
    let gateway = Gateway::start(config, &redis.url(), "r1").await;

    for i in 1..=10 {
        let (status, body) = gateway
            .whatsapp(whatsapp_text(
                "31611111111",
                &format!("wamid.F{i}"),
                &format!("hello? ({i})"),
            ))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Every message is answered: the last reply sent covers the tenth message.
    let sent = eventually(
        Duration::from_secs(20),
        "a reply covering message 10",
        || async {
            let sent = platforms.sent();
            sent.iter()
                .any(|s| user_turns(&s.text) == 10)
                .then_some(sent)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent_now = platforms.sent();
    assert_eq!(sent_now.len(), sent.len(), "nothing more is sent");
    assert_eq!(sent.len() as u64, llm.requests(), "one message per turn");
    assert!(sent.len() <= 4, "{sent:#?}");
    assert!(sent.iter().all(|s| s.to == "31611111111"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_cannot_take_the_whole_budget() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(0).await;
    let platforms = mock_platforms().await;
    let mut config = test_config(vec![
        openai_provider("primary", &primary, 5000, 0),
        ollama_provider("fallback", &fallback, 5000),
    ]);
    // A large budget of which one key (channel account) may use one a second, three at once;
    // a call waits at most 50 ms for room (the budget's own 10 ms spacing fits, a key's 1 s not).
    config["llm"]["rateLimiting"] = json!({"requestsPerMinute": 6000, "requestsPerKey": 60,
                                           "burstAllowed": 2, "maxWaitMs": 50});
    config["channels"] = channels_config(&platforms);
    let gateway = Gateway::start(config, &redis.url(), "r1").await;

    let mut providers = Vec::new();
    for i in 0..6 {
        let (status, body) = gateway.send(&format!("k{i}"), "m1", "hello", None).await;
        assert_eq!(status, 200, "{body}");
        providers.push(body["reply"]["provider"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(
        providers,
        [
            "primary", "primary", "primary", "fallback", "fallback", "fallback"
        ],
        "web chat's share: three at once, the rest spilled"
    );
    // Another account still has its share of the budget.
    let (status, _) = gateway
        .whatsapp(whatsapp_text("31622222222", "wamid.KEY1", "hello"))
        .await;
    assert_eq!(status, 200);
    sent_messages(&platforms, 1).await;
    assert_eq!(primary.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_replica_keeps_to_its_local_share_of_the_budget() {
    let mut redis = TestRedis::start().await;
    let primary = mock_llm(0).await;
    let fallback = mock_llm(0).await;
    let mut config = test_config(vec![
        openai_provider("primary", &primary, 5000, 0),
        ollama_provider("fallback", &fallback, 5000),
    ]);
    config["llm"]["rateLimiting"] =
        json!({"requestsPerMinute": 60, "burstAllowed": 2, "maxWaitMs": 0});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;
    redis.stop().await;
    eventually(Duration::from_secs(10), "degraded mode", || async {
        (gateway.health().await["degraded"] == true).then_some(())
    })
    .await;

    let mut by_provider = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..6 {
        let (status, body) = gateway.send(&format!("d{i}"), "m1", "hello", None).await;
        assert_eq!(status, 200, "{body}");
        *by_provider
            .entry(body["reply"]["provider"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    // The only live replica's share is the whole budget: three at once, the rest spilled.
    assert_eq!(by_provider.get("primary"), Some(&3), "{by_provider:?}");
    assert_eq!(by_provider.get("fallback"), Some(&3), "{by_provider:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hedging_a_slow_primary_is_raced_by_the_fallback_and_the_first_answer_wins() {
    let redis = TestRedis::start().await;
    let primary = mock_llm(2_000).await;
    let fallback = mock_llm(100).await;
    let mut config = test_config(vec![
        openai_provider("primary", &primary, 5000, 0),
        ollama_provider("fallback", &fallback, 5000),
    ]);
    config["llm"]["hedging"] = json!({"enabled": true, "afterMs": 200});
    let gateway = Gateway::start(config, &redis.url(), "r1").await;

    let (status, body) = gateway.send("hedged", "m1", "hello", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"]["provider"], "fallback");
    let latency = turn_latency_ms(&gateway, "hedged").await;
    assert!(
        (300..1_000).contains(&latency),
        "hedge after 200 ms + the fallback's 100 ms, not the primary's 2 s: {latency} ms"
    );
    assert_eq!(
        gateway
            .metric(
                "clawgate_provider_hedges_total",
                "provider=\"primary\",winner=\"hedge\""
            )
            .await,
        1.0
    );

    // A primary faster than the hedge delay is never raced.
    primary.set_latency(Duration::from_millis(0));
    let (_, body) = gateway.send("fast", "m1", "hello", None).await;
    assert_eq!(body["reply"]["provider"], "primary");
    assert_eq!(fallback.requests(), 1);
}
