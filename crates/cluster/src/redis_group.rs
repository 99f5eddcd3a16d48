//! The Redis a cluster runs on: an external one (`--redis-url`), one supervised server
//! (`--redis single`, the default), a supervised Sentinel group (`--redis sentinel`): a
//! primary, two replicas and three sentinels, so losing the primary costs a failover of a few
//! seconds, not the state; or a supervised Redis Cluster (`--redis cluster`): `--redis-masters`
//! masters with a replica each, the conversations spread over the masters. With Sentinel or a
//! cluster the replicas acknowledge a message only once a Redis replica holds it too
//! (`--redis-ack-replicas 1`).

use crate::process::{self, Event, Spec};
use crate::render;
use crate::state::{NodeState, RedisState};
use crate::supervisor::{ClusterError, ClusterSpec, find_program, free_port, io};
use nix::sys::signal::Signal;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The name the cluster's sentinels monitor the primary under.
pub const SENTINEL_MASTER: &str = "clawgate";
/// Servers in a Sentinel group (one primary, the rest replicas) and sentinels watching them.
const SENTINEL_SERVERS: usize = 3;
const SENTINELS: usize = 3;
/// How long a primary may be silent before the sentinels fail it over.
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_secs(2);
/// A crashed server of a Sentinel group restarts only after this pause. Restarted at once, a
/// primary would come back (from an AOF up to a second behind) before the sentinels noticed it
/// was gone, and its replicas would resynchronise from it: losing writes they had acknowledged.
/// After the pause a replica has been promoted and the old primary rejoins as its replica.
const GROUP_RESTART_AFTER: Duration = Duration::from_secs(8);
/// How long start-up waits for a Sentinel group or a Redis Cluster to be complete.
const GROUP_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a cluster master may be silent before its replica takes over.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// The fewest masters `redis-cli --cluster create` accepts.
pub const MIN_CLUSTER_MASTERS: u16 = 3;

/// How `cluster up` runs Redis when no `--redis-url` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// One `redis-server`, restarted when it exits (AOF keeps what it acknowledged).
    #[default]
    Single,
    /// A primary, two replicas and three sentinels.
    Sentinel,
    /// A Redis Cluster: masters (`--redis-masters`) with one replica each.
    Cluster,
}

impl FromStr for RedisMode {
    type Err = String;

    fn from_str(s: &str) -> Result<RedisMode, String> {
        match s {
            "single" => Ok(RedisMode::Single),
            "sentinel" => Ok(RedisMode::Sentinel),
            "cluster" => Ok(RedisMode::Cluster),
            other => Err(format!(
                "expected \"single\", \"sentinel\" or \"cluster\", found \"{other}\""
            )),
        }
    }
}

/// Supervised Redis processes, stopped in order (sentinels first, so none fails over a primary
/// that is merely shutting down; then the servers).
pub struct RunningRedis {
    sentinels: Vec<(CancellationToken, JoinHandle<()>)>,
    servers: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl RunningRedis {
    /// Stops every process this started.
    pub async fn stop(self) {
        for group in [self.sentinels, self.servers] {
            for (stop, _) in &group {
                stop.cancel();
            }
            for (_, task) in group {
                let _ = task.await;
            }
        }
    }
}

/// Refuses a Redis layout that could never work before anything is started or looked up, so
/// the operator hears about the options, not about a missing program or a half-started group.
pub fn check(spec: &ClusterSpec) -> Result<(), ClusterError> {
    if spec.redis_url.is_some() || !matches!(spec.redis_mode, RedisMode::Cluster) {
        return Ok(());
    }
    let masters = spec.redis_masters;
    if masters < MIN_CLUSTER_MASTERS {
        return Err(ClusterError::Invalid(format!(
            "--redis-masters {masters}: a Redis Cluster needs at least {MIN_CLUSTER_MASTERS} masters"
        )));
    }
    let replicas = spec.redis_cluster_replicas;
    if let Some(ack) = spec
        .redis_ack_replicas
        .filter(|&ack| ack > u32::from(replicas))
    {
        return Err(ClusterError::Invalid(format!(
            "--redis-ack-replicas {ack}: the cluster has {replicas} replica(s) per master \
             (--redis-cluster-replicas), so no message could ever be acknowledged"
        )));
    }
    Ok(())
}

/// Starts what `spec` asks for and waits until the replicas can use it; fills `redis`.
pub async fn start(
    spec: &ClusterSpec,
    state_dir: &Path,
    events: &mpsc::UnboundedSender<Event>,
    redis: &mut RedisState,
) -> Result<RunningRedis, ClusterError> {
    let mut running = RunningRedis {
        sentinels: Vec::new(),
        servers: Vec::new(),
    };
    if let Some(url) = &spec.redis_url {
        redis.url = url.clone();
        redis.mode = if url.contains("+sentinel://") {
            "sentinel"
        } else if url.contains("+cluster://") {
            "cluster"
        } else {
            "single"
        }
        .into();
        wait_for_primary(&redis.url, crate::supervisor::START_TIMEOUT).await?;
        return Ok(running);
    }
    let program = find_program("redis-server").ok_or(ClusterError::MissingProgram {
        program: "redis-server",
        hint: "install it (Debian/Ubuntu: apt-get install redis-server) or pass --redis-url",
    })?;
    redis.managed = true;
    // A server's port: the configured first port (`--redis-port`, `--sentinel-port`) plus its
    // offset, or else one `pick` finds free that no other server of the group was given.
    let mut ports = PortsGivenOut::default();
    let mut port_at = |first: u16,
                       offset: u16,
                       pick: fn() -> std::io::Result<u16>|
     -> Result<u16, ClusterError> {
        if first == 0 {
            ports.another(pick).map_err(io(state_dir))
        } else {
            Ok(first.saturating_add(offset))
        }
    };
    let supervise = |name: &str, args: Vec<String>, restart_after: Duration| {
        let stop = CancellationToken::new();
        let task = tokio::spawn(process::supervise(
            Spec {
                name: name.to_string(),
                program: program.clone(),
                args,
                log: state_dir.join("logs").join(format!("{name}.log")),
                // SIGTERM: a server flushes its AOF, a sentinel saves its view.
                stop_signal: Signal::SIGTERM,
                stop_grace: Duration::from_secs(10),
                restart_after,
            },
            events.clone(),
            stop.clone(),
        ));
        (stop, task)
    };
    // One server of a Sentinel group or a cluster: its own folder and config, supervised and
    // restarted after GROUP_RESTART_AFTER (a crashed primary or master comes back as its
    // successor's replica).
    let start_group_server = |running: &mut RunningRedis,
                              redis: &mut RedisState,
                              name: &str,
                              port: u16,
                              replica_of: Option<u16>,
                              node_timeout: Option<Duration>|
     -> Result<(), ClusterError> {
        let data = state_dir.join("redis").join(name);
        std::fs::create_dir_all(&data).map_err(io(&data))?;
        let conf_path = state_dir.join(format!("{name}.conf"));
        let conf = render::redis_node_conf(
            Some((port, &data)),
            &spec.redis_maxmemory,
            replica_of.map(|p| ("127.0.0.1", p)),
            node_timeout,
        )?;
        std::fs::write(&conf_path, conf).map_err(io(&conf_path))?;
        running.servers.push(supervise(
            name,
            vec![conf_path.display().to_string()],
            GROUP_RESTART_AFTER,
        ));
        redis.servers.push(NodeState::new(name, port));
        Ok(())
    };
    match spec.redis_mode {
        RedisMode::Single => {
            let port = port_at(spec.redis_port, 0, free_port)?;
            let data = state_dir.join("redis");
            std::fs::create_dir_all(&data).map_err(io(&data))?;
            let conf_path = state_dir.join("redis.conf");
            let conf = render::redis_conf(Some((port, &data)), &spec.redis_maxmemory, None)?;
            std::fs::write(&conf_path, conf).map_err(io(&conf_path))?;
            running.servers.push(supervise(
                "redis",
                vec![conf_path.display().to_string()],
                Duration::ZERO,
            ));
            redis.mode = "single".into();
            redis.url = format!("redis://127.0.0.1:{port}");
            redis.servers = vec![NodeState::new("redis", port)];
            wait_for_primary(&redis.url, crate::supervisor::START_TIMEOUT).await?;
        }
        RedisMode::Sentinel => {
            let mut primary_port = 0;
            for index in 0..SENTINEL_SERVERS {
                let name = format!("redis-{}", index + 1);
                let port = port_at(spec.redis_port, index as u16, free_port)?;
                // A server restarted later keeps its place: the sentinels reconfigure it.
                if index == 0 {
                    primary_port = port;
                }
                let replica_of = (index > 0).then_some(primary_port);
                start_group_server(&mut running, redis, &name, port, replica_of, None)?;
            }
            for index in 0..SENTINELS {
                let name = format!("sentinel-{}", index + 1);
                let port = port_at(spec.sentinel_port, index as u16, free_port)?;
                let data = state_dir.join("redis").join(&name);
                std::fs::create_dir_all(&data).map_err(io(&data))?;
                // Sentinel rewrites its own config with what it learns (the current primary,
                // the other sentinels): written once here, never over a restart.
                let conf_path = data.join("sentinel.conf");
                let conf = render::sentinel_conf(
                    port,
                    &data,
                    SENTINEL_MASTER,
                    ("127.0.0.1", primary_port),
                    SENTINEL_DOWN_AFTER,
                )?;
                std::fs::write(&conf_path, conf).map_err(io(&conf_path))?;
                running.sentinels.push(supervise(
                    &name,
                    vec![conf_path.display().to_string(), "--sentinel".into()],
                    Duration::ZERO,
                ));
                redis.sentinels.push(NodeState::new(&name, port));
            }
            redis.mode = "sentinel".into();
            redis.url = format!(
                "redis+sentinel://{}/{SENTINEL_MASTER}",
                addresses(&redis.sentinels)
            );
            wait_for_group(redis).await?;
        }
        RedisMode::Cluster => {
            let masters = spec.redis_masters;
            let replicas = spec.redis_cluster_replicas;
            for index in 0..masters * (1 + replicas) {
                let name = format!("redis-{}", index + 1);
                // A node also listens on its port + 10000 (the cluster bus).
                let port = port_at(spec.redis_port, index, free_cluster_port)?;
                start_group_server(
                    &mut running,
                    redis,
                    &name,
                    port,
                    None,
                    Some(CLUSTER_NODE_TIMEOUT),
                )?;
            }
            redis.mode = "cluster".into();
            redis.url = format!("redis+cluster://{}", addresses(&redis.servers));
            create_cluster(redis, masters, replicas).await?;
        }
    }
    Ok(running)
}

/// `host:port,host:port…` of `nodes`, as URLs list them.
fn addresses(nodes: &[NodeState]) -> String {
    nodes
        .iter()
        .map(|n| n.addr.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The ports picked for one group's servers so far. A server starts in the background, so the
/// port picked for one is still unbound when the next is picked: without this list two servers
/// could be given the same port, and one of them would fail to start again and again.
#[derive(Default)]
struct PortsGivenOut(std::collections::HashSet<u16>);

impl PortsGivenOut {
    /// A port from `pick` that no server of the group was given yet.
    fn another(&mut self, pick: fn() -> std::io::Result<u16>) -> std::io::Result<u16> {
        for _ in 0..100 {
            let port = pick()?;
            if self.0.insert(port) {
                return Ok(port);
            }
        }
        Err(std::io::Error::other(
            "no free port that another Redis server of the group was not given already",
        ))
    }
}

/// A free port on 127.0.0.1 whose cluster-bus port (+10000) is free too, both below the
/// kernel's ephemeral range (32768 and up on Linux), where an outgoing connection could take
/// the bus port between this check and the server's start.
fn free_cluster_port() -> std::io::Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        .wrapping_add(std::process::id().wrapping_mul(7919));
    for _ in 0..500 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(104_729)) % 2_700) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free port in 20000-22699 with a free cluster-bus port (+10000)",
    ))
}

/// Joins the servers into a cluster of `masters` with `replicas` each (once: a restarted `cluster
/// up` finds them joined) and waits until it serves every slot with every replica in sync.
async fn create_cluster(
    redis: &RedisState,
    masters: u16,
    replicas: u16,
) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + GROUP_START_TIMEOUT;
    for server in &redis.servers {
        while cluster_info(&server.addr).await.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::NotReady(server.name.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let formed = cluster_info(&redis.servers[0].addr)
        .await
        .is_some_and(|info| !info.contains("cluster_slots_assigned:0"));
    if !formed {
        let program = find_program("redis-cli").ok_or(ClusterError::MissingProgram {
            program: "redis-cli",
            hint: "install it (Debian/Ubuntu: apt-get install redis-tools)",
        })?;
        let created = tokio::process::Command::new(program)
            .arg("--cluster")
            .arg("create")
            .args(redis.servers.iter().map(|s| s.addr.as_str()))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .map_err(|e| {
                ClusterError::Invalid(format!("running redis-cli --cluster create: {e}"))
            })?;
        if !created.status.success() {
            return Err(ClusterError::Invalid(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout).trim()
            )));
        }
    }
    loop {
        if cluster_complete(redis, masters, replicas).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ClusterError::NotReady(
                "the Redis Cluster (every slot served, every replica in sync)".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every server says the cluster is `ok`, `masters` of them serve slots, every replica is in
/// sync with its master, and every server knows all of that.
async fn cluster_complete(redis: &RedisState, masters: u16, replicas: u16) -> bool {
    let mut serving = 0;
    for server in &redis.servers {
        let Some(info) = cluster_info(&server.addr).await else {
            return false;
        };
        if !info.contains("cluster_state:ok") {
            return false;
        }
        let Some(replication) = server_info(&server.addr, "replication").await else {
            return false;
        };
        if replication.contains("role:master") {
            serving += 1;
        } else if !replication.contains("master_link_status:up") {
            return false;
        }
    }
    if serving != masters {
        return false;
    }
    let Some(nodes) = ask_server(&redis.servers[0].addr, redis::cmd("CLUSTER").arg("NODES")).await
    else {
        return false;
    };
    if replicas > 0 && !replicas_confirm_writes(&nodes).await {
        return false;
    }
    // Every node learns the others' roles by gossip: wait until each sees every master with
    // its replicas (`cluster status` asks any one of them).
    for server in &redis.servers {
        let Some(nodes) = ask_server(&server.addr, redis::cmd("CLUSTER").arg("NODES")).await else {
            return false;
        };
        let seen = clawgate_gateway::state::observe::cluster_masters(&nodes);
        if seen.len() != usize::from(masters)
            || seen
                .iter()
                .any(|m| m.replicas.len() < usize::from(replicas))
        {
            return false;
        }
    }
    true
}

/// Whether the replica of every master in `nodes` (a `CLUSTER NODES` answer) confirms a write
/// (`WAIT`). A master streams its writes to a new replica only after the replica's first
/// acknowledgement, which `WAIT` asks for at once (otherwise it comes within a second): until
/// then the replica reports its link up, yet losing the master would lose every write.
pub async fn replicas_confirm_writes(nodes: &str) -> bool {
    for master in clawgate_gateway::state::observe::cluster_masters(nodes) {
        let Some(&(low, high)) = master.slots.first() else {
            return false;
        };
        let Some(key) = (0..100_000)
            .map(|n| format!("clawgate:probe:{n}"))
            .find(|key| (low..=high).contains(&clawgate_gateway::state::keys::slot(key)))
        else {
            return false;
        };
        let Some(mut conn) = connect_quickly(&master.addr).await else {
            return false;
        };
        let confirmed = async {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(10_000)
                .query_async::<()>(&mut conn)
                .await?;
            redis::cmd("WAIT")
                .arg(1)
                .arg(1_000)
                .query_async::<u64>(&mut conn)
                .await
        };
        match tokio::time::timeout(Duration::from_millis(1_500), confirmed).await {
            Ok(Ok(replicas)) if replicas >= 1 => {}
            _ => return false,
        }
    }
    true
}

/// `CLUSTER INFO` of the server at `addr`.
async fn cluster_info(addr: &str) -> Option<String> {
    ask_server(addr, redis::cmd("CLUSTER").arg("INFO")).await
}

/// `INFO <section>` of the server at `addr`.
async fn server_info(addr: &str, section: &str) -> Option<String> {
    ask_server(addr, redis::cmd("INFO").arg(section)).await
}

/// How long a question to one managed server may take (connecting, then answering): a server
/// that takes longer counts as not answering.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);

/// A connection to the server at `addr`, if it accepts one within [`ASK_TIMEOUT`].
async fn connect_quickly(addr: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}")).ok()?;
    tokio::time::timeout(ASK_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()
}

async fn ask_server(addr: &str, command: &redis::Cmd) -> Option<String> {
    let mut conn = connect_quickly(addr).await?;
    tokio::time::timeout(ASK_TIMEOUT, command.query_async(&mut conn))
        .await
        .ok()?
        .ok()
}

/// The managed process of the primary the replicas write to now: `(name, pid)`.
pub async fn primary_process(redis: &RedisState) -> Option<(String, u32)> {
    if let Some(pid) = redis.pid {
        return Some(("redis".into(), pid));
    }
    let (_, address) = crate::supervisor::redis_connection(&redis.url).await?;
    let node = redis.servers.iter().find(|n| n.addr == address)?;
    Some((node.name.clone(), node.pid?))
}

/// Waits until the primary at `url` (a sentinel URL included) answers.
async fn wait_for_primary(url: &str, timeout: Duration) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if crate::supervisor::redis_answers(url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ClusterError::NotReady("Redis".into()))
}

/// Waits until the group can fail over: every replica in sync with the primary and every
/// sentinel knowing both replicas and the other sentinels. Before that, losing the primary
/// could leave no one to promote.
async fn wait_for_group(redis: &RedisState) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + GROUP_START_TIMEOUT;
    let replicas = SENTINEL_SERVERS - 1;
    loop {
        let mut complete = crate::supervisor::redis_answers(&redis.url).await;
        for sentinel in &redis.sentinels {
            if !complete {
                break;
            }
            complete = sentinel_knows(&sentinel.addr, replicas, SENTINELS - 1).await;
        }
        if complete {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ClusterError::NotReady(
                "the Sentinel group (replicas in sync, sentinels knowing each other)".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sentinel at `addr` sees `replicas` replicas and `others` other sentinels.
async fn sentinel_knows(addr: &str, replicas: usize, others: usize) -> bool {
    let Some(fields) = sentinel_master(addr).await else {
        return false;
    };
    let field = |name: &str| {
        fields
            .iter()
            .position(|v| v == name)
            .and_then(|i| fields.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    field("num-slaves") == Some(replicas) && field("num-other-sentinels") == Some(others)
}

/// `SENTINEL MASTER clawgate` of the sentinel at `addr`, as field/value strings.
pub(crate) async fn sentinel_master(addr: &str) -> Option<Vec<String>> {
    let mut conn = connect_quickly(addr).await?;
    let question = clawgate_gateway::state::observe::sentinel_master(&mut conn, SENTINEL_MASTER);
    tokio::time::timeout(ASK_TIMEOUT, question).await.ok()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_named_as_on_the_command_line() {
        assert_eq!("single".parse(), Ok(RedisMode::Single));
        assert_eq!("sentinel".parse(), Ok(RedisMode::Sentinel));
        assert_eq!("cluster".parse(), Ok(RedisMode::Cluster));
        assert!(
            "shards"
                .parse::<RedisMode>()
                .unwrap_err()
                .contains("cluster")
        );
    }

    #[test]
    fn no_two_servers_of_a_group_are_given_the_same_port() {
        // Like a free-port check run before the first server bound its port: each port is
        // found free twice in a row.
        fn free_twice() -> std::io::Result<u16> {
            static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
            Ok(20_000 + CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) / 2)
        }
        let mut ports = PortsGivenOut::default();
        let given: Vec<u16> = (0..6)
            .filter_map(|_| ports.another(free_twice).ok())
            .collect();
        assert_eq!(given, [20_000, 20_001, 20_002, 20_003, 20_004, 20_005]);

        fn always_the_same() -> std::io::Result<u16> {
            Ok(20_000)
        }
        let mut ports = PortsGivenOut::default();
        assert_eq!(ports.another(always_the_same).ok(), Some(20_000));
        assert!(ports.another(always_the_same).is_err());
    }
}
