//! One module per `clawgate` command. Each turns parsed arguments into calls of the libraries
//! (gateway, cluster, load test, fakes) and prints their typed results; the logic lives in the
//! libraries, where it is tested without a process.

pub mod audit;
pub mod cluster;
pub mod config;
pub mod deadletter;
pub mod escalations;
pub mod forget;
pub mod loadtest;
pub mod mock;
pub mod redis;
pub mod serve;

use anyhow::Context;
use clawgate_gateway::config::{Config, ConfigErrors, Overrides};
use clawgate_gateway::state::StoreLimits;
use clawgate_gateway::state::link::RedisLink;
use clawgate_gateway::state::redis::RedisStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A message for the operator on stderr that cannot panic (`eprintln!` does when stderr is
/// full or closed).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        clawgate_gateway::logging::say(format_args!($($arg)*))
    };
}

/// Which deployment a maintenance command acts on: its config (platform credentials, Redis URL)
/// and an optional Redis URL override.
#[derive(clap::Args)]
pub struct StateArgs {
    /// The gateway's config file.
    #[arg(long, env = clawgate_gateway::env_vars::CONFIG)]
    pub config: Option<PathBuf>,
    /// Redis URL, overriding the config's.
    #[arg(long, env = clawgate_gateway::env_vars::REDIS_URL)]
    pub redis_url: Option<String>,
}

/// The config file (or the built-in defaults without one), with command-line overrides applied.
pub fn load_config(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigErrors> {
    path.map_or_else(|| Ok(Config::builtin()), Config::load)?
        .with_overrides(overrides)
}

/// The deployment a maintenance command names: its config and a connected store.
pub async fn deployment(target: StateArgs) -> anyhow::Result<(Config, Arc<RedisLink>, RedisStore)> {
    let overrides = Overrides {
        redis_url: target.redis_url,
        ..Overrides::default()
    };
    let config = load_config(target.config.as_deref(), overrides)
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let link = RedisLink::connect(&config.redis).await?;
    let store = RedisStore::new(link.clone(), StoreLimits::from_config(&config));
    Ok((config, link, store))
}

/// Cancelled on SIGTERM or SIGINT.
pub fn shutdown_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        // The drain starts before anything else happens, logging included.
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        cancel.cancel();
        tracing::info!("{signal} received");
    });
    Ok(token)
}

/// Every held-open web-chat request and every provider call is a file descriptor; the usual soft
/// limit of 1024 would cap a replica far below its memory and CPU capacity.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %e, soft, "could not raise the open-files limit"),
        }
    }
}

/// `42s`, `5m`, `3h`, `2d`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_shown_in_the_largest_whole_unit() {
        assert_eq!(age(42_000), "42s");
        assert_eq!(age(5 * 60_000 + 59_000), "5m");
        assert_eq!(age(3 * 3_600_000), "3h");
        assert_eq!(age(2 * 86_400_000 + 1), "2d");
    }
}
