//! `clawgate cluster up`: the reference deployment on one host, supervised in the foreground.
//!
//! Start order: Redis (unless an external URL is given), the replicas (each waited for until
//! ready), nginx. Then, every second, each replica's `/readyz` is polled and a failing replica is
//! marked `down` in nginx's upstream (config rewrite + reload), and put back when it answers
//! again; a replica whose only complaint is `overloaded` stays in (see [`readiness_url`]); a
//! process that exits is restarted with backoff. Stop order is the reverse: nginx stops
//! taking requests, the replicas drain (SIGTERM), Redis flushes its AOF and exits.

use crate::process::{self, Event, Spec};
use crate::redis_group::{self, RedisMode};
use crate::render::{self, RenderError, Upstream};
use crate::state::{ClusterState, ProcessState, RedisState, ReplicaState};
use clawgate_gateway::config::{RedisConfig, RedisTarget};
use clawgate_gateway::message::now_ms;
use clawgate_gateway::state::connection::Connection;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often replicas are health-checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one health check.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(800);
/// The file in the state directory through which `clawgate cluster scale` asks for a replica
/// count.
pub const DESIRED_REPLICAS: &str = "desired-replicas";
/// How long start-up waits for each part to become ready.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The replicas' config file.
    pub config: PathBuf,
    /// Number of replicas.
    pub replicas: u16,
    /// Where nginx listens.
    pub listen: SocketAddr,
    /// Where pids, logs, generated configs and Redis's data live.
    pub state_dir: PathBuf,
    /// An external Redis; `None` starts one (or a Sentinel group, see `redis_mode`).
    pub redis_url: Option<String>,
    /// What Redis to start without `redis_url`.
    pub redis_mode: RedisMode,
    /// Port of the first replica; the others follow.
    pub first_port: u16,
    /// Port of the Redis this starts (0 = any free port); a Sentinel group's servers take it
    /// and the next two.
    pub redis_port: u16,
    /// Port of the first sentinel (0 = any free port); the others follow.
    pub sentinel_port: u16,
    /// Redis `maxmemory`.
    pub redis_maxmemory: String,
    /// Masters of a Redis Cluster (`--redis cluster`).
    pub redis_masters: u16,
    /// Replicas of each master of that cluster: 1 lets a replica take over a lost master; 0
    /// leaves no failover (and no acknowledgement by a replica), for measuring sharding alone.
    pub redis_cluster_replicas: u16,
    /// Redis replicas that must hold a message before a replica acknowledges it; `None` = 1
    /// on a Sentinel group or cluster this starts, else the config's `redis.ackReplicas`.
    pub redis_ack_replicas: Option<u32>,
    /// The `clawgate` binary the replicas run.
    pub clawgate: PathBuf,
    /// How long a replica may take to drain at stop.
    pub replica_grace: Duration,
}

/// Why the cluster could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A program the cluster needs is not installed.
    #[error("{program} is not installed (looked in PATH, /usr/sbin, /usr/local/sbin): {hint}")]
    MissingProgram {
        /// The program.
        program: &'static str,
        /// How to install it.
        hint: &'static str,
    },
    /// The state directory or a file in it.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A generated config.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A request that cannot be met (`--redis-masters 2`), or a tool that refused.
    #[error("{0}")]
    Invalid(String),
    /// A part did not become ready in time.
    #[error(
        "{0} did not become ready within {START_TIMEOUT:?}; see its log in the state directory"
    )]
    NotReady(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Finds `program` in PATH or the usual sbin directories.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs the cluster until `shutdown`; `on_ready` is called once everything answers.
pub async fn up(
    spec: ClusterSpec,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&ClusterState),
) -> Result<(), ClusterError> {
    redis_group::check(&spec)?;
    let nginx = find_program("nginx").ok_or(ClusterError::MissingProgram {
        program: "nginx",
        hint: "install it (Debian/Ubuntu: apt-get install nginx; Fedora: dnf install nginx; macOS: brew install nginx) and run again",
    })?;
    std::fs::create_dir_all(&spec.state_dir).map_err(io(&spec.state_dir))?;
    let state_dir = spec.state_dir.canonicalize().map_err(io(&spec.state_dir))?;
    for sub in ["logs", "nginx-temp"] {
        let dir = state_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let logs = state_dir.join("logs");
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let http = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| ClusterError::NotReady(format!("HTTP client: {e}")))?;

    let mut state = ClusterState {
        supervisor_pid: std::process::id(),
        listen: spec.listen.to_string(),
        config: Some(spec.config.clone()),
        ..ClusterState::default()
    };

    // Redis.
    let redis = redis_group::start(&spec, &state_dir, &events, &mut state.redis).await?;

    // Replicas.
    let mut running = Vec::new();
    for index in 0..spec.replicas {
        let (replica, handle) = start_replica(&spec, index, &state.redis, &logs, &events);
        state.replicas.push(replica);
        running.push(handle);
    }
    for replica in &state.replicas {
        let url = readiness_url(replica.port);
        wait_for(&replica.id, || answers(&http, &url)).await?;
        // Ready also covers a replica in degraded mode (answering from memory while Redis is
        // away); one that starts so would give its customers no shared context, so the cluster
        // is announced only once every replica works against the Redis checked above.
        let health = format!("http://127.0.0.1:{}/healthz", replica.port);
        let what = format!("{}'s Redis connection", replica.id);
        wait_for(&what, || reaches_redis(&http, &health)).await?;
    }
    for replica in &mut state.replicas {
        replica.healthy = true;
    }

    // nginx.
    let nginx_conf = nginx_conf_path(&state_dir);
    write_nginx(&spec, &state, &state_dir)?;
    let nginx_stop = CancellationToken::new();
    let nginx_task = tokio::spawn(process::supervise(
        Spec {
            name: "nginx".into(),
            program: nginx,
            args: vec![
                "-p".into(),
                state_dir.display().to_string(),
                "-c".into(),
                nginx_conf.display().to_string(),
                "-e".into(),
                state_dir.join("nginx-error.log").display().to_string(),
            ],
            log: logs.join("nginx.log"),
            // Graceful: finish the requests in flight, then exit.
            stop_signal: Signal::SIGQUIT,
            stop_grace: Duration::from_secs(10),
            restart_after: Duration::ZERO,
        },
        events.clone(),
        nginx_stop.clone(),
    ));
    let balancer = format!("http://{}/healthz", spec.listen);
    wait_for("nginx", || answers(&http, &balancer)).await?;

    // Collect the pids reported so far, then announce.
    while let Ok(event) = event_rx.try_recv() {
        apply(&mut state, event);
    }
    write_state(&state, &state_dir);
    on_ready(&state);

    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut marked_down: BTreeSet<String> = BTreeSet::new();
    let desired_file = state_dir.join(DESIRED_REPLICAS);
    let _ = std::fs::remove_file(&desired_file);
    let mut draining: Vec<JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = event_rx.recv() => {
                if let Event::Exited { name, .. } = &event
                    && let Some(replica) = state.replicas.iter_mut().find(|r| &r.id == name)
                {
                    replica.healthy = false;
                }
                apply(&mut state, event);
            }
            _ = tick.tick() => {
                let checks = state.replicas.iter().map(|r| {
                    let url = readiness_url(r.port);
                    let http = http.clone();
                    async move { answers(&http, &url).await }
                });
                let healthy = futures_util::future::join_all(checks).await;
                for (replica, healthy) in state.replicas.iter_mut().zip(healthy) {
                    replica.healthy = healthy;
                }
                // `clawgate cluster scale N` leaves the wanted count here.
                let desired = std::fs::read_to_string(&desired_file)
                    .ok()
                    .and_then(|text| text.trim().parse::<u16>().ok());
                if let Some(desired) = desired {
                    while state.replicas.len() < usize::from(desired) {
                        let index = state.replicas.len() as u16;
                        let (replica, handle) =
                            start_replica(&spec, index, &state.redis, &logs, &events);
                        tracing::info!(replica = %replica.id, port = replica.port, "scaling up");
                        state.replicas.push(replica);
                        running.push(handle);
                    }
                    if state.replicas.len() > usize::from(desired.max(1)) {
                        // Out of nginx's upstream first, so no new request reaches it; then
                        // SIGTERM: it finishes what it holds and exits.
                        let mut leaving = Vec::new();
                        while state.replicas.len() > usize::from(desired.max(1)) {
                            if let (Some(replica), Some(handle)) = (state.replicas.pop(), running.pop()) {
                                leaving.push((replica.id, handle));
                            }
                        }
                        update_nginx(&spec, &state, &state_dir).await?;
                        for (id, handle) in leaving {
                            tracing::info!(replica = %id, "scaling down: out of the upstream, draining");
                            marked_down.remove(&id);
                            handle.stop.cancel();
                            draining.push(handle.task);
                        }
                    }
                }
            }
        }
        let down: BTreeSet<String> = state
            .replicas
            .iter()
            .filter(|r| !r.healthy)
            .map(|r| r.id.clone())
            .collect();
        if down != marked_down {
            for id in down.difference(&marked_down) {
                tracing::warn!(replica = %id, "failed its health check; taken out of nginx's upstream");
            }
            for id in marked_down.difference(&down) {
                tracing::info!(replica = %id, "healthy again; back in nginx's upstream");
            }
            update_nginx(&spec, &state, &state_dir).await?;
            state.upstream_down = down.iter().cloned().collect();
            marked_down = down;
        }
        write_state(&state, &state_dir);
    }

    tracing::info!("stopping: nginx, then the replicas (draining), then Redis (sentinels first)");
    nginx_stop.cancel();
    let _ = nginx_task.await;
    for handle in &running {
        handle.stop.cancel();
    }
    for task in running.into_iter().map(|h| h.task).chain(draining) {
        let _ = task.await;
    }
    redis.stop().await;
    state.nginx.pid = None;
    state.redis.pid = None;
    for node in state
        .redis
        .servers
        .iter_mut()
        .chain(&mut state.redis.sentinels)
    {
        node.pid = None;
    }
    for replica in &mut state.replicas {
        replica.process.pid = None;
        replica.healthy = false;
    }
    write_state(&state, &state_dir);
    Ok(())
}

/// What `nginx -s reload` does (SIGHUP to the master), then waits until the reload took
/// effect: a new worker runs and every old one has stopped accepting (its title says "shutting
/// down") or is gone. Until then an old worker may still take a connection and route it with
/// the old upstream list.
async fn reload_nginx(master: u32) {
    let workers = || {
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .ok()
            .map(|text| {
                text.split_whitespace()
                    .map(str::to_string)
                    .collect::<BTreeSet<String>>()
            })
    };
    let still_accepting = |pid: &String| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|title| !String::from_utf8_lossy(&title).contains("shutting down"))
    };
    let before = workers();
    process::signal(master, Some(Signal::SIGHUP));
    let Some(before) = before else {
        // No way to see the workers here: give the reload a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let renewed = workers().is_some_and(|now| now.difference(&before).next().is_some());
        if renewed && !before.iter().any(still_accepting) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!("nginx did not finish a reload within 2 s; see nginx-error.log");
}

/// A running replica's supervisor task and the token that stops it.
struct ReplicaHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts supervising replica number `index` (0-based): id `replica-{index+1}`, port
/// `first_port + index`.
fn start_replica(
    spec: &ClusterSpec,
    index: u16,
    redis: &RedisState,
    logs: &Path,
    events: &mpsc::UnboundedSender<Event>,
) -> (ReplicaState, ReplicaHandle) {
    let id = format!("replica-{}", index + 1);
    let port = spec.first_port.saturating_add(index);
    let stop = CancellationToken::new();
    let mut args = vec![
        "serve".into(),
        "--config".into(),
        spec.config.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--replica-id".into(),
        id.clone(),
        "--redis-url".into(),
        redis.url.clone(),
    ];
    // On the Redis it starts with replicas, a message is acknowledged once a Redis replica holds
    // it too: a failover cannot lose it.
    let managed_replicas = redis.managed
        && (redis.mode == "sentinel"
            || (redis.mode == "cluster" && spec.redis_cluster_replicas > 0));
    if let Some(ack) = spec.redis_ack_replicas.or(managed_replicas.then_some(1)) {
        args.extend(["--redis-ack-replicas".into(), ack.to_string()]);
    }
    let task = tokio::spawn(process::supervise(
        Spec {
            name: id.clone(),
            program: spec.clawgate.clone(),
            args,
            log: logs.join(format!("{id}.log")),
            stop_signal: Signal::SIGTERM,
            stop_grace: spec.replica_grace,
            restart_after: Duration::ZERO,
        },
        events.clone(),
        stop.clone(),
    ));
    let replica = ReplicaState {
        id,
        port,
        ..ReplicaState::default()
    };
    (replica, ReplicaHandle { stop, task })
}

/// Records a start or an exit in the state.
fn apply(state: &mut ClusterState, event: Event) {
    let (name, pid) = match &event {
        Event::Started { name, pid } => (name.as_str(), Some(*pid)),
        Event::Exited { name, .. } => (name.as_str(), None),
    };
    let process: Option<&mut ProcessState> = match name {
        "nginx" => Some(&mut state.nginx),
        redis if redis.starts_with("redis") || redis.starts_with("sentinel-") => {
            if redis == "redis" {
                state.redis.pid = pid;
            }
            let nodes = state
                .redis
                .servers
                .iter_mut()
                .chain(&mut state.redis.sentinels);
            for node in nodes.filter(|n| n.name == redis) {
                node.pid = pid;
            }
            None
        }
        id => state
            .replicas
            .iter_mut()
            .find(|r| r.id == id)
            .map(|r| &mut r.process),
    };
    if let Some(process) = process {
        match event {
            Event::Started { pid, .. } => {
                process.pid = Some(pid);
                process.started_at_ms = now_ms();
            }
            Event::Exited { .. } => {
                process.pid = None;
                process.restarts += 1;
            }
        }
    }
}

/// Rewrites nginx's config from the replicas' health and reloads the running nginx with it.
async fn update_nginx(
    spec: &ClusterSpec,
    state: &ClusterState,
    state_dir: &Path,
) -> Result<(), ClusterError> {
    let changed = write_nginx(spec, state, state_dir)?;
    // A reload is not free: the old workers close their idle keep-alive connections, and a
    // platform that was just sending a webhook on one sees it closed. So only for a change.
    if changed && let Some(pid) = state.nginx.pid {
        reload_nginx(pid).await;
    }
    Ok(())
}

/// `<state-dir>/nginx.conf`: one upstream server per replica, `down` when unhealthy. True when
/// the file's content changed.
fn write_nginx(
    spec: &ClusterSpec,
    state: &ClusterState,
    state_dir: &Path,
) -> Result<bool, ClusterError> {
    let path = nginx_conf_path(state_dir);
    let upstreams: Vec<Upstream> = state
        .replicas
        .iter()
        .map(|r| Upstream {
            address: format!("127.0.0.1:{}", r.port),
            down: !r.healthy,
        })
        .collect();
    let conf = render::cluster_nginx(spec.listen, &upstreams, state_dir)?;
    if std::fs::read_to_string(&path).is_ok_and(|old| old == conf) {
        return Ok(false);
    }
    std::fs::write(&path, conf).map_err(io(&path))?;
    Ok(true)
}

fn nginx_conf_path(state_dir: &Path) -> PathBuf {
    state_dir.join("nginx.conf")
}

fn write_state(state: &ClusterState, state_dir: &Path) {
    if let Err(e) = state.write(state_dir) {
        tracing::warn!(error = %e, "cannot write the cluster state file");
    }
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ClusterError::NotReady(what.to_string()))
}

/// `GET url` answered 200.
pub(crate) async fn answers(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The replica whose `/healthz` is at `url` works against Redis: not `"degraded"`. A Redis
/// that refuses writes for a moment (`"redis": "refusing_writes"`, say while a Sentinel group's
/// replicas finish their first sync) counts: the replica answers 503 then, never from memory.
async fn reaches_redis(http: &reqwest::Client, url: &str) -> bool {
    let Ok(response) = http.get(url).send().await else {
        return false;
    };
    response
        .json::<serde_json::Value>()
        .await
        .is_ok_and(|health| health["degraded"] == false)
}

/// The readiness check that decides whether the replica on `port` is in nginx's upstream:
/// `/readyz` with `overloaded` ignored. Overload is the shared inbox's lag, the same for every
/// replica; taking one out would only push its webhooks (cheap to accept, and the way a
/// customer's message becomes durable) onto the others, which share the same backlog.
pub(crate) fn readiness_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/readyz?ignore=overloaded")
}

/// Redis at `url` (a cluster: any node) answers PING.
pub(crate) async fn redis_answers(url: &str) -> bool {
    state_connection(url).await.is_some()
}

/// A connection to where the replicas keep their state (the primary, found through the
/// sentinels of a `redis+sentinel://` URL, or a `redis+cluster://` cluster) once it answered
/// PING.
pub async fn state_connection(url: &str) -> Option<Connection> {
    let mut config = RedisConfig::for_url(url).ok()?;
    if let RedisTarget::Cluster(_) = &config.target {
        config.command_timeout = HEALTH_TIMEOUT;
        let mut conn = Connection::open(&config).await.ok()?;
        return clawgate_gateway::state::observe::answers(&mut conn)
            .await
            .then_some(conn);
    }
    redis_connection(url)
        .await
        .map(|(conn, _)| Connection::Direct(conn))
}

/// A connection to the Redis primary at `url` (found through the sentinels of a
/// `redis+sentinel://` URL) once it answered PING, and the primary's `host:port`.
pub async fn redis_connection(url: &str) -> Option<(redis::aio::MultiplexedConnection, String)> {
    let config = RedisConfig::for_url(url).ok()?;
    let finder =
        clawgate_gateway::state::primary::PrimaryFinder::new(&config, HEALTH_TIMEOUT).ok()?;
    let primary = finder.find().await.ok()?;
    let connect = primary.client.get_multiplexed_async_connection();
    let conn = tokio::time::timeout(HEALTH_TIMEOUT, connect)
        .await
        .ok()?
        .ok()?;
    let mut answering = Connection::Direct(conn.clone());
    clawgate_gateway::state::observe::answers(&mut answering)
        .await
        .then_some((conn, primary.address))
}

pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
