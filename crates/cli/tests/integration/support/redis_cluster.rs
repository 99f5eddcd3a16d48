//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` processes on loopback
//! ports, joined by `redis-cli --cluster create` (masters with one replica each), stopped by
//! handle on drop.

use super::{TestRedis, eventually};
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
        let base = cluster_ports(count as u16);
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count as u16 {
            let log = std::env::temp_dir().join(format!("clawgate-test-redis-{}.log", base + i));
            let mut options: Vec<&str> = NODE_OPTIONS.to_vec();
            let log = log.display().to_string();
            options.extend(["--logfile", &log]);
            nodes.push(TestRedis::start_on(base + i, &options).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        create_cluster(&addresses, 1, &[]).await;
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
    /// and every master streams its writes to its replica.
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
                    if !replication_streams(&replication) {
                        return None;
                    }
                }
                if self.slot_owners().await.len() != self.masters {
                    return None;
                }
                self.replicas_confirm_writes().await.then_some(())
            },
        )
        .await;
    }

    /// Every master's replica confirms a write (`WAIT`). A master streams its writes to a new
    /// replica only after the replica's first acknowledgement, which `WAIT` asks for at once
    /// (otherwise it comes within a second): before that, a master's loss loses every write.
    async fn replicas_confirm_writes(&self) -> bool {
        let Some(first) = self.nodes.iter().find(|n| n.is_running()) else {
            return false;
        };
        let Ok(nodes) = first.connect().await.map(|mut conn| async move {
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
        }) else {
            return false;
        };
        let Ok(nodes) = nodes.await else {
            return false;
        };
        clawgate_cluster::redis_group::replicas_confirm_writes(&nodes).await
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

    /// One node's `host:port`, for `redis-cli --cluster` commands.
    pub fn seed(&self) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        format!("127.0.0.1:{}", node.port)
    }

    /// The ids of the masters serving slots, in port order.
    pub async fn master_ids(&self) -> Vec<String> {
        let nodes: String = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
            .query(redis::cmd("CLUSTER").arg("NODES"))
            .await;
        let mut masters = clawgate_gateway::state::observe::cluster_masters(&nodes);
        masters.sort_by(|a, b| a.addr.cmp(&b.addr));
        masters.into_iter().map(|m| m.id).collect()
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let path = std::env::temp_dir().join(format!("clawgate-test-redis-{}.log", n.port));
                format!(
                    "== redis {}\n{}",
                    n.port,
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect()
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

/// Joins the servers at `addresses` into a cluster (`redis-cli --cluster create`), the first
/// ones masters with `replicas` replicas each; `connection` are redis-cli's own options for
/// reaching them (TLS, password).
pub async fn create_cluster(addresses: &[String], replicas: usize, connection: &[&str]) {
    let created = tokio::process::Command::new("redis-cli")
        .args(connection)
        .args(["--cluster", "create"])
        .args(addresses)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .await
        .expect("run redis-cli --cluster create (is redis-tools installed?)");
    assert!(
        created.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&created.stdout)
    );
}

/// The first of `count` consecutive free ports for cluster nodes. A cluster node also listens
/// on its port + 10000 (the cluster bus): both below the kernel's ephemeral ports (32768 and
/// up), which outgoing connections could take.
pub fn cluster_ports(count: u16) -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (0u32..1_000)
        .map(|n| 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 2_700) as u16)
        .find(|&base| (0..count).all(|i| free(base + i) && free(base + 10_000 + i)))
        .expect("free ports for a Redis Cluster in 20000-22699")
}

/// From `INFO replication`: a replica's link is up; a master has a replica and streams to it.
/// (After a diskless first sync a master streams only once the replica's first `REPLCONF ACK`
/// came, up to a second later: until then every write would be lost with the master.)
fn replication_streams(info: &str) -> bool {
    if info.contains("role:slave") {
        return info.contains("master_link_status:up");
    }
    let replicas: Vec<&str> = info.lines().filter(|l| l.starts_with("slave")).collect();
    !replicas.is_empty() && replicas.iter().all(|l| l.contains("state=online"))
}
