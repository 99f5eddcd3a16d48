//! `clawgate audit search`: what was said to whom, from every replica's audit files.

use super::{StateArgs, load_config};
use crate::say;
use clawgate_gateway::audit::search::{Query, parse_time, search};
use clawgate_gateway::config::Overrides;
use clawgate_gateway::message::now_ms;
use clawgate_gateway::state::link::RedisLink;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `clawgate audit …`.
#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Find audit records (every replica's files, rotated and compressed ones too), oldest
    /// first; texts are opened with the customers' keys from Redis.
    Search(SearchArgs),
}

/// `clawgate audit search`'s flags.
#[derive(clap::Args)]
pub struct SearchArgs {
    #[command(flatten)]
    target: StateArgs,
    /// The audit folder, if not the config's `audit.dir`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only this conversation (`whatsapp:31612345678`).
    #[arg(long)]
    conversation: Option<String>,
    /// Only records of this message id.
    #[arg(long)]
    message_id: Option<String>,
    /// From this time on: `2026-12-01T09:00:00Z`, `2026-12-01`, or a span back such as `24h`.
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms).
    #[arg(long)]
    until: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs an `audit` command.
pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Search(args) = command;
    let overrides = Overrides {
        redis_url: args.target.redis_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(args.target.config.as_deref(), overrides)
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let Some(dir) = args.dir.clone().or(config.audit.dir.clone()) else {
        say!("clawgate: no audit folder: the config sets no audit.dir and --dir is not given");
        return Ok(ExitCode::FAILURE);
    };
    let now = now_ms();
    let time = |t: &Option<String>| t.as_deref().map(|t| parse_time(t, now)).transpose();
    let query = Query {
        conversation: args.conversation.clone(),
        message_id: args.message_id.clone(),
        since_ms: time(&args.since).map_err(anyhow::Error::msg)?,
        until_ms: time(&args.until).map_err(anyhow::Error::msg)?,
    };
    // Texts are sealed with keys in Redis; without it the records show no text.
    let link = match RedisLink::connect(&config.redis).await {
        Ok(link) => Some(link),
        Err(e) => {
            say!("clawgate: warning: Redis unreachable ({e}); texts stay sealed");
            None
        }
    };
    let found = search(&dir, &query, link.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for record in &found.records {
            writeln!(out, "{}", serde_json::to_string(record)?)?;
        }
    } else {
        writeln!(
            out,
            "{:<24} {:<4} {:<28} {:<24} {:<11} text",
            "time", "dir", "conversation", "message id", "outcome"
        )?;
        for r in &found.records {
            let text = match (&r.text, r.erased, &r.text_sha256) {
                (Some(text), _, _) => text.replace('\n', " "),
                (None, Some(true), _) => "(erased)".to_string(),
                (None, _, Some(hash)) => format!("sha256:{hash}"),
                _ => "-".to_string(),
            };
            writeln!(
                out,
                "{:<24} {:<4} {:<28} {:<24} {:<11} {text}",
                r.ts,
                match r.direction {
                    clawgate_gateway::audit::Direction::In => "in",
                    clawgate_gateway::audit::Direction::Out => "out",
                },
                r.conversation,
                r.message_id,
                r.outcome
            )?;
        }
    }
    if found.unreadable_lines > 0 {
        say!(
            "clawgate: {} unreadable line(s) skipped (a write cut short)",
            found.unreadable_lines
        );
    }
    Ok(ExitCode::SUCCESS)
}
