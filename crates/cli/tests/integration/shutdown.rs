//! SIGTERM: readiness fails at once, no new entries are taken (a message sent meanwhile waits
//! for another replica), running turns finish, exit 0.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_turns_and_exits_cleanly() {
    let (redis, llm, mut gateway) = one_replica(1500).await;
    for i in 0..3 {
        let (status, _) = gateway.send(&format!("d{i}"), "m1", "hello", Some(0)).await;
        assert_eq!(status, 202);
    }
    eventually(
        Duration::from_secs(5),
        "the turns to reach the model",
        || async { (llm.requests() == 3).then_some(()) },
    )
    .await;
    gateway.terminate();
    eventually(
        Duration::from_secs(2),
        "readiness to fail while draining",
        || async {
            let (status, body) = gateway.get("/readyz").await;
            (status == 503 && body["failing"].to_string().contains("draining")).then_some(())
        },
    )
    .await;
    // A message arriving meanwhile is still made durable, but this replica takes none of it:
    // its workers stopped reading the inbox.
    let (status, body) = gateway
        .send("late", "m1", "sent after the signal", Some(0))
        .await;
    assert_eq!(status, 202, "accepted while draining: {body}");
    assert_eq!(
        gateway.exit_code(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        gateway.logs()
    );
    // Every running turn committed its reply before the process left.
    for i in 0..3 {
        let replied: bool = redis
            .query(redis::cmd("EXISTS").arg(format!("oc:replied:{{webchat:d{i}:m1}}")))
            .await;
        assert!(replied, "turn d{i} was cut off");
    }
    let late_replied: bool = redis
        .query(redis::cmd("EXISTS").arg("oc:replied:{webchat:late:m1}"))
        .await;
    assert!(
        !late_replied,
        "the draining replica answered a message sent after SIGTERM"
    );
    let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
    assert_eq!(inbox, 1, "only the late message waits");

    // The next replica answers it (at once: an entry the draining replica's last read still
    // handed it was given back, not left until claimIdleMs).
    let next = Gateway::start(
        test_config(vec![openai_provider("primary", &llm, 10_000, 0)]),
        &redis.url(),
        "r2",
    )
    .await;
    let reply = next.reply_of("late", "m1").await;
    assert_eq!(
        reply["text"],
        "[mock] user_turns=1 last=\"sent after the signal\""
    );
}
