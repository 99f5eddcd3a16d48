//! The Redis a cluster runs on: an external one (`--redis-url`), one supervised server
//! (`--redis single`, the default), or a supervised Sentinel group (`--redis sentinel`): a
//! primary, two replicas and three sentinels, so losing the primary costs a failover of a few
//! seconds, not the state. With Sentinel the replicas acknowledge a message only once a Redis
//! replica holds it too (`--redis-ack-replicas 1`).

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
/// How long start-up waits for a Sentinel group to be complete.
const GROUP_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How `cluster up` runs Redis when no `--redis-url` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// One `redis-server`, restarted when it exits (AOF keeps what it acknowledged).
    #[default]
    Single,
    /// A primary, two replicas and three sentinels.
    Sentinel,
}

impl FromStr for RedisMode {
    type Err = String;

    fn from_str(s: &str) -> Result<RedisMode, String> {
        match s {
            "single" => Ok(RedisMode::Single),
            "sentinel" => Ok(RedisMode::Sentinel),
            other => Err(format!(
                "expected \"single\" or \"sentinel\", found \"{other}\""
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
    let port_at = |offset: u16| -> Result<u16, ClusterError> {
        if spec.redis_port == 0 {
            free_port().map_err(io(state_dir))
        } else {
            Ok(spec.redis_port.saturating_add(offset))
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
    match spec.redis_mode {
        RedisMode::Single => {
            let port = port_at(0)?;
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
                let port = port_at(index as u16)?;
                let data = state_dir.join("redis").join(&name);
                std::fs::create_dir_all(&data).map_err(io(&data))?;
                let conf_path = state_dir.join(format!("{name}.conf"));
                // A server restarted later keeps its place: the sentinels reconfigure it.
                if index == 0 {
                    primary_port = port;
                }
                let replica_of = (index > 0).then_some(primary_port);
                let conf = render::redis_conf(
                    Some((port, &data)),
                    &spec.redis_maxmemory,
                    replica_of.map(|p| ("127.0.0.1", p)),
                )?;
                std::fs::write(&conf_path, conf).map_err(io(&conf_path))?;
                running.servers.push(supervise(
                    &name,
                    vec![conf_path.display().to_string()],
                    GROUP_RESTART_AFTER,
                ));
                redis.servers.push(NodeState::new(&name, port));
            }
            for index in 0..SENTINELS {
                let name = format!("sentinel-{}", index + 1);
                let port = if spec.sentinel_port == 0 {
                    free_port().map_err(io(state_dir))?
                } else {
                    spec.sentinel_port.saturating_add(index as u16)
                };
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
                redis
                    .sentinels
                    .iter()
                    .map(|s| s.addr.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            wait_for_group(redis).await?;
        }
    }
    Ok(running)
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
    let client = redis::Client::open(format!("redis://{addr}")).ok()?;
    let connect = client.get_multiplexed_async_connection();
    let mut conn = tokio::time::timeout(Duration::from_millis(800), connect)
        .await
        .ok()?
        .ok()?;
    let question = clawgate_gateway::state::observe::sentinel_master(&mut conn, SENTINEL_MASTER);
    tokio::time::timeout(Duration::from_millis(800), question)
        .await
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_named_as_on_the_command_line() {
        assert_eq!("single".parse(), Ok(RedisMode::Single));
        assert_eq!("sentinel".parse(), Ok(RedisMode::Sentinel));
        assert!(
            "cluster"
                .parse::<RedisMode>()
                .unwrap_err()
                .contains("sentinel")
        );
    }
}
