//! `clawgate redis migrate`: move a deployment's state to another key layout or another Redis
//! (one Redis to a Redis Cluster), with the replicas stopped.

use crate::say;
use clawgate_gateway::config::redis::{DEFAULT_CLUSTER_SHARDS, redact};
use clawgate_gateway::config::{RedisConfig, RedisTarget};
use clawgate_gateway::migrate::Migration;
use clawgate_gateway::state::connection::Connection;
use clawgate_gateway::state::keys::KeyLayout;
use std::io::Write;
use std::process::ExitCode;

/// `clawgate redis` subcommands.
#[derive(clap::Subcommand)]
pub enum RedisCommand {
    /// Copy every conversation, the inbox and the markers from one Redis to another (or to
    /// another key layout on the same one); stop the replicas first.
    Migrate(MigrateArgs),
}

/// `clawgate redis migrate`'s flags.
#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Where the state is now (`redis://…`, `redis+sentinel://…/name`, `redis+cluster://…`).
    #[arg(long)]
    from: String,
    /// Where it goes; the same URL changes the layout in place.
    #[arg(long)]
    to: String,
    /// Inbox shards of the layout to write (a cluster: 16 unless given; one Redis: unsharded
    /// unless given). The replicas must then run with the same `redis.shards`.
    #[arg(long)]
    shards: Option<u16>,
    /// Migrate even though replicas' heartbeats are fresh (they crashed rather than stopped).
    #[arg(long)]
    force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a `redis` subcommand.
pub async fn run(command: RedisCommand) -> anyhow::Result<ExitCode> {
    let RedisCommand::Migrate(args) = command;
    let config =
        |url: &str| RedisConfig::for_url(url).map_err(|e| anyhow::anyhow!("{}: {e}", redact(url)));
    let (from, to) = (config(&args.from)?, config(&args.to)?);
    let shards = match (&to.target, args.shards) {
        (_, Some(shards)) => Some(shards),
        (RedisTarget::Cluster(_), None) => Some(DEFAULT_CLUSTER_SHARDS),
        _ => None,
    };
    let in_place = args.from == args.to;
    let from_connection = Connection::open(&from).await?;
    let to_connection = match in_place {
        true => from_connection.clone(),
        false => Connection::open(&to).await?,
    };
    let migration = Migration {
        from: from_connection,
        to: to_connection,
        in_place,
        layout: KeyLayout::new(shards),
        force: args.force,
    };
    let started = std::time::Instant::now();
    let report = match migration.run().await {
        Ok(report) => report,
        Err(e) => {
            say!("clawgate: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "migrated layout {} → {} in {} ms: {} conversations, {} keys, {} inbox entries{}; {} markers of messages no history names were left behind",
            report.from_layout,
            report.to_layout,
            started.elapsed().as_millis(),
            report.conversations,
            report.keys,
            report.inbox_entries,
            if report.in_place {
                ", old keys deleted"
            } else {
                ""
            },
            report.markers_left,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
