//! A replicated Redis watched by Sentinel, all real processes on loopback: one primary, two
//! replicas and three sentinels, ready for a failover (DESIGN §8: every replica synced, every
//! sentinel knowing the others).

use super::{TestRedis, eventually, free_port};
use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "velocity";

/// Redis servers and their sentinels.
pub struct TestSentinelGroup {
    /// Index 0 starts as the primary.
    pub servers: Vec<TestRedis>,
    sentinels: Vec<(u16, Child)>,
    _dir: TempDir,
}

/// Options every server of the group runs with: a replica's first sync (and a resync after a
/// failover) starts at once instead of after Redis 7's 5 s `repl-diskless-sync-delay`.
const SERVER_OPTIONS: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

impl TestSentinelGroup {
    /// A primary, `replicas` replicas and three sentinels (quorum 2, a primary is down after
    /// 1 s of silence).
    pub async fn start(replicas: usize) -> TestSentinelGroup {
        TestSentinelGroup::start_with(replicas, &[]).await
    }

    /// Like [`Self::start`], the first primary also started with `primary_options`.
    pub async fn start_with(replicas: usize, primary_options: &[&str]) -> TestSentinelGroup {
        let primary = TestRedis::start_with(&[&SERVER_OPTIONS[..], primary_options].concat()).await;
        let primary_port = primary.port.to_string();
        let mut servers = vec![primary];
        for _ in 0..replicas {
            let mut options = SERVER_OPTIONS.to_vec();
            options.extend(["--replicaof", "127.0.0.1", primary_port.as_str()]);
            servers.push(TestRedis::start_with(&options).await);
        }
        for replica in &servers[1..] {
            eventually(Duration::from_secs(20), "a replica in sync", || async {
                let info: String = replica.query(redis::cmd("INFO").arg("replication")).await;
                info.contains("master_link_status:up").then_some(())
            })
            .await;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 2\n",
                    dir = dir.path().display()
                ),
            )
            .expect("sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server --sentinel");
            sentinels.push((port, child));
        }
        let group = TestSentinelGroup {
            servers,
            sentinels,
            _dir: dir,
        };
        for (port, _) in &group.sentinels {
            let port = *port;
            eventually(
                Duration::from_secs(30),
                "a sentinel that knows the replicas and the other sentinels",
                || async move {
                    let info = sentinel_master(port).await?;
                    let field = |name: &str| {
                        info.iter()
                            .position(|v| v == name)
                            .and_then(|i| info.get(i + 1))
                            .and_then(|v| v.parse::<usize>().ok())
                    };
                    (field("num-slaves") == Some(replicas)
                        && field("num-other-sentinels") == Some(2))
                    .then_some(())
                },
            )
            .await;
        }
        group
    }

    /// The sentinels as `host:port`.
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The port of the primary the sentinels name now.
    pub async fn primary_port(&self) -> Option<u16> {
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(MASTER_NAME);
        let (_, primary): (String, u16) = self.ask_sentinels(&ask).await?;
        Some(primary)
    }

    /// The answer to `cmd` of the first sentinel that gives one.
    async fn ask_sentinels<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        for (port, _) in &self.sentinels {
            if let Some(answer) = ask_sentinel(*port, cmd).await {
                return Some(answer);
            }
        }
        None
    }

    /// SIGKILLs the current primary (as a crashed host would lose it).
    pub async fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port().await.expect("a primary");
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("the primary is one of ours");
        server.stop().await;
        port
    }

    /// Asks a sentinel to fail the primary over now (`SENTINEL FAILOVER`), as an operator would
    /// before maintenance; the sentinels pick the replica.
    pub async fn force_failover(&self) {
        let mut failover = redis::cmd("SENTINEL");
        failover.arg("FAILOVER").arg(MASTER_NAME);
        let started: Option<String> = self.ask_sentinels(&failover).await;
        assert!(started.is_some(), "no sentinel started the failover");
    }

    /// Waits until the sentinels name a primary other than `old` that answers as master.
    pub async fn wait_for_new_primary(&self, old: u16) -> u16 {
        eventually(
            Duration::from_secs(30),
            "Sentinel to promote a replica",
            || async {
                let port = self.primary_port().await?;
                (port != old).then_some(port)
            },
        )
        .await
    }
}

/// `SENTINEL MASTER <name>` of the sentinel on `port`, as field/value strings.
async fn sentinel_master(port: u16) -> Option<Vec<String>> {
    ask_sentinel(port, redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME)).await
}

/// The answer to `cmd` of the sentinel on `port`; `None` when it cannot be reached or refuses.
async fn ask_sentinel<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    cmd.query_async(&mut conn).await.ok()
}
