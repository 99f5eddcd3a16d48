//! `clawgate cluster up | scale | status` and `clawgate nginx-config`: the reference deployment
//! on one host (see the cluster library).

use super::shutdown_signal;
use crate::say;
use anyhow::Context;
use clawgate_cluster::redis_group::RedisMode;
use clawgate_cluster::scale::scale;
use clawgate_cluster::supervisor::{self, ClusterSpec};
use clawgate_cluster::{render, status};
use clawgate_gateway::config::Config;
use clawgate_gateway::config::redis::redact;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `clawgate cluster …`.
#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Start Redis (AOF), the replicas and nginx in front of them; restart what exits, take
    /// unhealthy replicas out of nginx; Ctrl-C or SIGTERM stops everything in reverse order.
    Up(UpArgs),
    /// Add or drain replicas of a running cluster without dropping a message: new ones join
    /// nginx's upstream once ready; leaving ones are taken out of it first, then drained.
    Scale {
        /// The replica count wanted (at least 1).
        replicas: u16,
        /// The cluster's state directory.
        #[arg(long, default_value = "clawgate-cluster")]
        state_dir: PathBuf,
    },
    /// Show what runs: replicas (pid, port, health, uptime, turns handled), Redis, nginx.
    Status {
        /// The cluster's state directory.
        #[arg(long, default_value = "clawgate-cluster")]
        state_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `clawgate cluster up`'s flags.
#[derive(clap::Args)]
pub struct UpArgs {
    /// The replicas' config file.
    #[arg(long)]
    config: PathBuf,
    /// Number of replicas.
    #[arg(long, default_value_t = 3)]
    replicas: u16,
    /// Where nginx listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Pids, logs, generated configs and Redis's data.
    #[arg(long, default_value = "clawgate-cluster")]
    state_dir: PathBuf,
    /// Use this Redis instead of starting one (`redis://…`, or `redis+sentinel://…/name`).
    #[arg(long)]
    redis_url: Option<String>,
    /// The Redis to start: `single` (one server), `sentinel` (a primary, 2 replicas and 3
    /// sentinels) or `cluster` (a Redis Cluster of `--redis-masters` masters with
    /// `--redis-cluster-replicas` replicas each); with `sentinel` and a cluster with replicas,
    /// the gateway's replicas acknowledge a message once a Redis replica holds it.
    #[arg(long, default_value = "single")]
    redis: RedisMode,
    /// Masters of the Redis Cluster `--redis cluster` starts (at least 3).
    #[arg(long, default_value_t = 3)]
    redis_masters: u16,
    /// Replicas of each master of that cluster; 0 leaves no failover and acknowledges a message
    /// once its master holds it (for measuring what sharding alone costs).
    #[arg(long, default_value_t = 1)]
    redis_cluster_replicas: u16,
    /// Redis replicas that must hold a message before it is acknowledged (default: 1 with
    /// `--redis sentinel` or `cluster`, else the config's `redis.ackReplicas`); 0 trades that
    /// guarantee for speed.
    #[arg(long)]
    redis_ack_replicas: Option<u32>,
    /// Port of the first replica; the others follow.
    #[arg(long, default_value_t = clawgate_gateway::config::DEFAULT_PORT)]
    first_port: u16,
    /// Port of the Redis it starts (0 = any free port); with `--redis sentinel` the servers take
    /// it and the next two, with `--redis cluster` it and the next masters × (1 + replicas) − 1.
    #[arg(long, default_value_t = 0)]
    redis_port: u16,
    /// Port of the first sentinel with `--redis sentinel` (0 = any free port); the others follow.
    #[arg(long, default_value_t = 0)]
    sentinel_port: u16,
    /// Redis `maxmemory` (it refuses writes beyond it rather than evicting).
    #[arg(long, default_value = "512mb")]
    redis_maxmemory: String,
}

/// `clawgate nginx-config`'s flags.
#[derive(clap::Args)]
pub struct NginxConfigArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 3)]
    replicas: u16,
    /// What nginx listens on (`listen` directive).
    #[arg(long, default_value = "80")]
    listen: String,
    /// Host the replicas run on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the first replica; the others follow.
    #[arg(long, default_value_t = clawgate_gateway::config::DEFAULT_PORT)]
    first_port: u16,
    /// Explicit replica addresses (`host:port`, repeatable), instead of `--replicas` ports
    /// on `--host`: e.g. one per container in a compose file.
    #[arg(long = "server")]
    servers: Vec<String>,
}

/// How long `cluster scale` waits for the replicas asked for.
const SCALE_WAIT: Duration = Duration::from_secs(60);

/// Runs a `cluster` command.
pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Up(args) => up(args).await,
        ClusterCommand::Scale {
            replicas,
            state_dir,
        } => match scale(&state_dir, replicas, SCALE_WAIT).await {
            Ok(_) => {
                let _ = writeln!(std::io::stdout(), "{replicas} replicas, all healthy");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                say!("clawgate: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        ClusterCommand::Status { state_dir, json } => show_status(&state_dir, json).await,
    }
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    // The replicas run from the state directory's point of view: make the config path absolute.
    let config = args
        .config
        .canonicalize()
        .with_context(|| format!("config file {}", args.config.display()))?;
    if let Err(errors) = Config::load(&config) {
        say!("{errors}");
        say!("clawgate: the configuration has errors; not starting the cluster");
        return Ok(ExitCode::FAILURE);
    }
    let spec = ClusterSpec {
        config,
        replicas: args.replicas,
        listen: args.listen,
        state_dir: args.state_dir,
        redis_url: args.redis_url,
        redis_mode: args.redis,
        first_port: args.first_port,
        redis_port: args.redis_port,
        sentinel_port: args.sentinel_port,
        redis_maxmemory: args.redis_maxmemory,
        redis_masters: args.redis_masters,
        redis_cluster_replicas: args.redis_cluster_replicas,
        redis_ack_replicas: args.redis_ack_replicas,
        clawgate: std::env::current_exe().context("locating the clawgate binary")?,
        replica_grace: Duration::from_secs(30),
    };
    let shutdown = shutdown_signal()?;
    supervisor::up(spec, shutdown, |state| {
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "clawgate cluster up: http://{} → {} replicas ({}), Redis {}",
            state.listen,
            state.replicas.len(),
            state
                .replicas
                .iter()
                .map(|r| format!("{} on :{}", r.id, r.port))
                .collect::<Vec<_>>()
                .join(", "),
            redact(&state.redis.url),
        );
        let _ = out.flush();
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn show_status(state_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = status::report(state_dir).await.with_context(|| {
        format!(
            "no cluster state in {} (is `clawgate cluster up --state-dir {}` running?)",
            state_dir.display(),
            state_dir.display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the nginx config for a static deployment.
pub fn nginx_config(args: NginxConfigArgs) -> anyhow::Result<ExitCode> {
    let servers = if args.servers.is_empty() {
        (0..args.replicas)
            .map(|i| format!("{}:{}", args.host, args.first_port.saturating_add(i)))
            .collect()
    } else {
        args.servers
    };
    let conf = render::static_nginx(&args.listen, &servers)?;
    let _ = std::io::stdout().write_all(conf.as_bytes());
    Ok(ExitCode::SUCCESS)
}
