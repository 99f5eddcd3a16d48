//! The audit trail, for real: a replica writes what it accepted and answered, `clawgate audit
//! search` reads it back, `clawgate forget` erases a customer (Redis and, by their key, their
//! audit texts), and a full disk loses audit records without costing an answer.
//!
//! The full-disk test mounts a tiny tmpfs, so it needs root (CI runs as root; `scripts/test`
//! then sets `CLAWGATE_REQUIRE_NETNS`, which makes it required). It unmounts it afterwards, also
//! when it fails.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN_TOKEN: &str = "operator-secret";

fn audit_config(llm: &clawgate_fakes::mock_llm::MockLlm, redis_url: &str, dir: &Path) -> Value {
    let mut config = test_config(vec![openai_provider("primary", llm, 10_000, 0)]);
    config["redis"]["url"] = json!(redis_url);
    config["audit"] = json!({"dir": dir, "maxFileBytes": 65_536, "maxTotalBytes": 67_108_864});
    config["gateway"]["adminToken"] = json!(ADMIN_TOKEN);
    config
}

/// `clawgate audit search --config FILE --conversation C --json`, one value per line.
async fn search(config: &Path, extra: &[&str]) -> Vec<Value> {
    let config = config.display().to_string();
    let mut args = vec!["audit", "search", "--config", &config, "--json"];
    args.extend_from_slice(extra);
    let (code, out) = run_cli(&args, &[]).await;
    assert_eq!(code, 0, "{out}");
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_tells_what_the_bot_said_and_forget_erases_the_customer() {
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let audit_dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(
        audit_config(&llm, &redis.url(), audit_dir.path()),
        &redis.url(),
        "r1",
    )
    .await;
    for (session, turns) in [("sanne", 3), ("piet", 1)] {
        for t in 1..=turns {
            let (status, body) = gateway
                .send(
                    session,
                    &format!("m{t}"),
                    &format!("Waar is pakket {t}?"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let config = gateway.config_path();
    let records = eventually(Duration::from_secs(10), "6 audit records", || {
        let config = config.clone();
        async move {
            let records = search(&config, &["--conversation", "webchat:sanne"]).await;
            (records.len() == 6).then_some(records)
        }
    })
    .await;
    // Oldest first: each message in, then its answer out, with what was said.
    for (i, record) in records.iter().enumerate() {
        let t = i / 2 + 1;
        assert_eq!(record["message_id"], format!("m{t}"), "{record}");
        assert_eq!(record["conversation"], "webchat:sanne");
        assert_eq!(record["replica"], "r1");
        assert!(record["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
        if i % 2 == 0 {
            assert_eq!(record["direction"], "in");
            assert_eq!(record["outcome"], "accepted");
            assert_eq!(record["text"], format!("Waar is pakket {t}?"));
        } else {
            assert_eq!(record["direction"], "out");
            assert_eq!(record["outcome"], "answered");
            assert_eq!(record["provider"], "primary");
            assert!(record["skill"].is_string() && record["latency_ms"].is_u64());
            assert!(
                record["text"]
                    .as_str()
                    .is_some_and(|text| text.contains(&format!("user_turns={t}"))),
                "{record}"
            );
        }
    }
    assert!(
        records
            .windows(2)
            .all(|w| w[0]["ts_ms"].as_u64() <= w[1]["ts_ms"].as_u64())
    );
    let one = search(
        &config,
        &["--conversation", "webchat:sanne", "--message-id", "m2"],
    )
    .await;
    assert_eq!(one.len(), 2);
    assert!(search(&config, &["--since", "2099-01-01"]).await.is_empty());
    // On disk the texts are sealed: the files never hold them in the clear.
    for file in files_under(audit_dir.path()) {
        let bytes = std::fs::read(&file).expect("audit file");
        assert!(
            !String::from_utf8_lossy(&bytes).contains("Waar is pakket"),
            "{} holds a text in the clear",
            file.display()
        );
    }

    let config_arg = config.display().to_string();
    let (code, out) = run_cli(
        &[
            "forget",
            "--config",
            &config_arg,
            "--customer",
            "webchat:sanne",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 history entries"), "{out}");
    let history: Vec<String> = redis
        .query(
            redis::cmd("LRANGE")
                .arg("oc:conv:{webchat:sanne}")
                .arg(0)
                .arg(-1),
        )
        .await;
    assert!(history.is_empty(), "{history:?}");
    let session: i64 = redis
        .query(redis::cmd("EXISTS").arg("oc:session:{webchat:sanne}"))
        .await;
    assert_eq!(session, 0);
    // The records stay (what happened, when), their texts are gone for good.
    let erased = search(&config, &["--conversation", "webchat:sanne"]).await;
    assert_eq!(erased.len(), 6);
    assert!(
        erased
            .iter()
            .all(|r| r.get("text").is_none() && r["erased"] == true),
        "{erased:?}"
    );
    // Another customer is untouched.
    let other = search(&config, &["--conversation", "webchat:piet"]).await;
    assert_eq!(other.len(), 2);
    assert_eq!(other[0]["text"], "Waar is pakket 1?");
    let (status, _) = gateway.send("piet", "m2", "Nog een vraag", None).await;
    assert_eq!(status, 200);

    // The operator erases the other customer over HTTP, with the admin token only.
    let http = http_client();
    let url = gateway.url("/v1/customers/webchat:piet");
    let refused = http.delete(&url).send().await.expect("DELETE");
    assert_eq!(refused.status(), 401);
    let bad = http
        .delete(gateway.url("/v1/customers/nobody"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(bad.status(), 400);
    let erased = http
        .delete(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(erased.status(), 200);
    let report: Value = erased.json().await.expect("report");
    assert_eq!(report["history_entries"], 4, "{report}");
    assert_eq!(report["audit_key"], true, "{report}");
    let other = search(&config, &["--conversation", "webchat:piet"]).await;
    assert!(other.iter().all(|r| r.get("text").is_none()), "{other:?}");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A tmpfs of `size` mounted at `at`, unmounted when dropped (also when the test fails).
struct TinyDisk {
    at: PathBuf,
}

impl TinyDisk {
    fn mount(at: &Path, size: &str) -> Result<TinyDisk, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root to mount a tmpfs".into());
        }
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(TinyDisk {
            at: at.to_path_buf(),
        })
    }

    /// Fills it with `filler` until the disk refuses more.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.at.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4_096];
        while file.write_all(&chunk).is_ok() {}
        filler
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_only_the_audit_records_of_its_time_and_answers_go_on() {
    let base = tempfile::tempdir().expect("temp dir");
    let disk = match TinyDisk::mount(&base.path().join("audit"), "1m") {
        Ok(disk) => disk,
        Err(why) if std::env::var_os("CLAWGATE_REQUIRE_NETNS").is_some() => {
            panic!("running as root is required here, but this test {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: the full-disk test {why}; run as root to run it");
            return;
        }
    };
    let redis = TestRedis::start().await;
    let llm = mock_llm(0).await;
    let gateway = Gateway::start(
        audit_config(&llm, &redis.url(), &disk.at),
        &redis.url(),
        "r1",
    )
    .await;
    let config = gateway.config_path();
    // One customer per message: flood control spaces one customer's turns 3 s apart.
    let send = |id: String| {
        let gateway = &gateway;
        async move {
            let (status, body) = gateway
                .send(&format!("disk-{id}"), &id, &format!("bericht {id}"), None)
                .await;
            assert_eq!(status, 200, "{id}: {body}");
        }
    };
    send("before".into()).await;
    eventually(
        Duration::from_secs(10),
        "the first records on disk",
        || async { (gateway.health().await["audit"]["written"].as_u64() >= Some(2)).then_some(()) },
    )
    .await;

    // The disk fills up; customers keep writing and every one is answered.
    let filler = disk.fill();
    let mut during = Vec::new();
    for i in 0..200 {
        let id = format!("full{i}");
        send(id.clone()).await;
        during.push(id);
        if gateway.health().await["audit"]["dropped"].as_u64() >= Some(6) {
            break;
        }
    }
    let health = gateway.health().await;
    assert!(health["audit"]["dropped"].as_u64() >= Some(6), "{health}");
    assert!(health["audit"]["last_error"].is_string(), "{health}");
    assert!(
        gateway
            .metric(
                "clawgate_audit_records_dropped_total",
                "reason=\"write_failed\""
            )
            .await
            >= 6.0
    );
    // Space comes back; writing resumes by itself.
    std::fs::remove_file(filler).expect("free space");
    let after: Vec<String> = (0..3).map(|i| format!("after{i}")).collect();
    for id in &after {
        send(id.clone()).await;
    }
    let records = eventually(Duration::from_secs(10), "the records after", || {
        let config = config.clone();
        let after = after.clone();
        async move {
            let records = search(&config, &[]).await;
            after
                .iter()
                .all(|id| {
                    records
                        .iter()
                        .filter(|r| r["message_id"] == id.as_str())
                        .count()
                        == 2
                })
                .then_some(records)
        }
    })
    .await;
    // What was lost is exactly what was dropped while the disk was full, and nothing else.
    let dropped = gateway.health().await["audit"]["dropped"]
        .as_u64()
        .unwrap_or(0);
    let found = |id: &str| records.iter().filter(|r| r["message_id"] == id).count() as u64;
    assert_eq!(found("before"), 2);
    let lost: u64 = during.iter().map(|id| 2 - found(id)).sum();
    println!(
        "full disk: {} messages answered while it was full, {dropped} audit records dropped, {lost} missing; all {} records after it freed written",
        during.len(),
        after.len() * 2
    );
    assert_eq!(
        lost,
        dropped,
        "{} messages during the full disk",
        during.len()
    );
    assert!(gateway.health().await["audit"]["last_error"].is_null());
}
