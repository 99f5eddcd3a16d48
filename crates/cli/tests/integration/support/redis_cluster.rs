//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` processes on loopback
//! ports, joined by `redis-cli --cluster create` (masters with one replica each), stopped by
//! handle on drop.

use super::{TestRedis, eventually, free_port_range};
use std::collections::BTreeMap;
use std::time::Duration;

/// A running cluster.
pub struct TestRedisCluster {
    /// Every node, masters first as `redis-cli --cluster create` was given them.
    pub nodes: Vec<TestRedis>,
    masters: usize,
}

/// Cluster settings for a test: a failed master is replaced within about two seconds (by its
/// replica however long ago it last heard from the master: validity factor 0), and the masters
/// that still have their slots keep serving while one is being replaced.
const NODE_OPTIONS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-node-timeout",
    "1500",
    "--cluster-replica-validity-factor",
    "0",
    "--cluster-require-full-coverage",
    "no",
    "--cluster-allow-reads-when-down",
    "no",
    // Replicas sync at once (not after the default 5 s wait for more replicas to batch).
    "--repl-diskless-sync-delay",
    "0",
];

impl TestRedisCluster {
    /// `masters` masters with one replica each, all slots assigned, the cluster `ok`.
    pub async fn start(masters: usize) -> TestRedisCluster {
        let count = masters * 2;
        // A cluster node also listens on its port + 10000 (the cluster bus).
        let base = loop {
            let base = free_port_range(count as u16);
            if base < 55_000
                && (0..count as u16)
                    .all(|i| std::net::TcpListener::bind(("127.0.0.1", base + 10_000 + i)).is_ok())
            {
                break base;
            }
        };
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count as u16 {
            nodes.push(TestRedis::start_on(base + i, NODE_OPTIONS).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("run redis-cli --cluster create (is redis-tools installed?)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = TestRedisCluster { nodes, masters };
        cluster.wait_until_ok().await;
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Waits until every running node says `cluster_state:ok`, `masters` masters serve slots,
    /// and every running replica is in sync with its master.
    pub async fn wait_until_ok(&self) {
        eventually(
            Duration::from_secs(30),
            "the Redis Cluster to be ok",
            || async {
                for node in self.nodes.iter().filter(|n| n.is_running()) {
                    let Ok(mut conn) = node.connect().await else {
                        return None;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    if !info.contains("cluster_state:ok") {
                        return None;
                    }
                    let replication: String = redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    if replication.contains("role:slave")
                        && !replication.contains("master_link_status:up")
                    {
                        return None;
                    }
                }
                (self.slot_owners().await.len() == self.masters).then_some(())
            },
        )
        .await;
    }

    /// The masters serving slots, by port, with how many slots each serves.
    pub async fn slot_owners(&self) -> BTreeMap<u16, usize> {
        let mut owners = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let Ok(mut conn) = node.connect().await else {
                continue;
            };
            let Ok(nodes) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
            else {
                continue;
            };
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let is_master = fields
                    .get(2)
                    .is_some_and(|f| f.contains("master") && !f.contains("fail"));
                let port = fields
                    .get(1)
                    .and_then(|a| a.split('@').next())
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok());
                let slots: usize = fields
                    .iter()
                    .skip(8)
                    .map(|range| match range.split_once('-') {
                        Some((a, b)) => {
                            b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0)
                        }
                        None if range.parse::<usize>().is_ok() => 1,
                        None => 0,
                    })
                    .sum();
                if let (true, Some(port)) = (is_master && slots > 0, port) {
                    owners.insert(port, slots);
                }
            }
            return owners;
        }
        owners
    }

    /// The node listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut TestRedis {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// Keys each serving master holds (`DBSIZE`), by port.
    pub async fn keys_per_master(&self) -> BTreeMap<u16, u64> {
        let mut sizes = BTreeMap::new();
        for port in self.slot_owners().await.keys() {
            if let Some(node) = self.nodes.iter().find(|n| n.port == *port) {
                sizes.insert(*port, node.query(&redis::cmd("DBSIZE")).await);
            }
        }
        sizes
    }
}
