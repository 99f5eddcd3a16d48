//! The cluster's state file (`cluster.json` in the state directory): what the supervisor runs,
//! rewritten on every change, read by `clawgate cluster status`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's name inside the state directory.
pub const FILE: &str = "cluster.json";

/// What runs, as far as the supervisor knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The supervisor's own pid.
    pub supervisor_pid: u32,
    /// Where nginx listens.
    pub listen: String,
    /// The replicas' config file (absolute), for tools that act on the cluster (the load test
    /// reads its channel credentials).
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Redis.
    pub redis: RedisState,
    /// nginx.
    pub nginx: ProcessState,
    /// Replicas, in port order.
    pub replicas: Vec<ReplicaState>,
    /// Replicas nginx's running configuration has marked `down` (updated once a reload took
    /// effect).
    #[serde(default)]
    pub upstream_down: Vec<String>,
}

/// Redis as the cluster uses it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisState {
    /// The URL replicas use (`redis+sentinel://…` for a Sentinel group).
    pub url: String,
    /// `single` or `sentinel`.
    #[serde(default)]
    pub mode: String,
    /// Whether the supervisor runs it (false with `--redis-url`).
    pub managed: bool,
    /// The process of a lone managed Redis.
    pub pid: Option<u32>,
    /// The managed Redis servers (one, or a Sentinel group's three).
    #[serde(default)]
    pub servers: Vec<NodeState>,
    /// The managed sentinels.
    #[serde(default)]
    pub sentinels: Vec<NodeState>,
}

/// One supervised Redis server or sentinel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Its process name (`redis`, `redis-2`, `sentinel-1`).
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// Current pid; `None` while (re)starting.
    pub pid: Option<u32>,
}

impl NodeState {
    /// A node on 127.0.0.1 whose process has not reported its pid yet.
    pub fn new(name: &str, port: u16) -> NodeState {
        NodeState {
            name: name.to_string(),
            addr: format!("127.0.0.1:{port}"),
            pid: None,
        }
    }
}

/// A supervised process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessState {
    /// Current pid; `None` while (re)starting.
    pub pid: Option<u32>,
    /// Milliseconds since the Unix epoch when the current process started.
    pub started_at_ms: u64,
    /// Times it was restarted after exiting on its own.
    pub restarts: u32,
}

/// One replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// Its replica id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its process.
    #[serde(flatten)]
    pub process: ProcessState,
    /// Passed the last active health check.
    pub healthy: bool,
}

impl ClusterState {
    /// Reads the state file of `state_dir`.
    pub fn read(state_dir: &Path) -> std::io::Result<ClusterState> {
        let text = std::fs::read_to_string(state_dir.join(FILE))?;
        serde_json::from_str(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes it atomically (temporary file, then rename), so a reader never sees half of it.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let tmp: PathBuf = state_dir.join(format!("{FILE}.tmp"));
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, state_dir.join(FILE))
    }
}
