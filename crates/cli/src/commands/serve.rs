//! `clawgate serve`: one gateway replica.

use super::{load_config, raise_open_files_limit, shutdown_signal};
use crate::say;
use anyhow::Context;
use clawgate_gateway::config::Overrides;
use clawgate_gateway::env_vars;
use clawgate_gateway::live::ConfigFile;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// `clawgate serve`'s flags: every one overrides a config key.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Config file (JSON). Without one, built-in defaults: template answers only.
    #[arg(long, env = env_vars::CONFIG)]
    config: Option<PathBuf>,
    /// Listen address, overriding `gateway.listen`.
    #[arg(long, env = env_vars::LISTEN)]
    listen: Option<SocketAddr>,
    /// Replica id, overriding `gateway.replicaId`.
    #[arg(long, env = env_vars::REPLICA_ID)]
    replica_id: Option<String>,
    /// Redis URL, overriding `redis.url` (also `redis+sentinel://host:port,…/masterName`).
    #[arg(long, env = env_vars::REDIS_URL)]
    redis_url: Option<String>,
    /// Replicas that must hold a message before it is acknowledged, overriding
    /// `redis.ackReplicas`.
    #[arg(long, env = env_vars::REDIS_ACK_REPLICAS)]
    redis_ack_replicas: Option<u32>,
}

/// Runs a replica until SIGTERM or SIGINT, then drains it.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        listen: args.listen,
        replica_id: args.replica_id,
        redis_url: args.redis_url,
        redis_ack_replicas: args.redis_ack_replicas,
    };
    let file = args.config.clone().map(|path| ConfigFile {
        path,
        overrides: overrides.clone(),
    });
    let config = match load_config(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(errors) => {
            say!("{errors}");
            say!("clawgate: the configuration has errors; not starting");
            return Ok(ExitCode::FAILURE);
        }
    };
    raise_open_files_limit();
    let listener = listen(config.gateway.listen)
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let shutdown = shutdown_signal()?;
    clawgate_gateway::run(listener, config, file, shutdown).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Pending connections the kernel queues for us: a morning surge opens connections in bursts, and
/// the default of 1024 would push the excess into SYN retries (seconds of added latency). The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
