//! SIGTERM: readiness fails at once, no new entries are taken, running turns finish, exit 0.

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
    let inbox: u64 = redis.query(redis::cmd("XLEN").arg("oc:inbox")).await;
    assert_eq!(inbox, 0);
}
