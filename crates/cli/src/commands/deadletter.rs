//! `clawgate deadletter list | retry`: what could not be processed or sent, and re-driving it.

use super::{StateArgs, age, deployment};
use clawgate_gateway::deadletter::{DeadLetters, Redriven, RetryOutcome};
use clawgate_gateway::egress::Egress;
use clawgate_gateway::escalation::Dispatcher;
use clawgate_gateway::http_client;
use std::io::Write;
use std::process::ExitCode;

/// `clawgate deadletter …`.
#[derive(clap::Subcommand)]
pub enum DeadletterCommand {
    /// List the dead-letter stream, oldest first.
    List {
        #[command(flatten)]
        target: StateArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retry entries: re-send replies, re-queue messages. Removes each entry that succeeds.
    Retry {
        #[command(flatten)]
        target: StateArgs,
        /// Entry ids (as `list` shows them).
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Retry every entry.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Runs a `deadletter` command.
pub async fn run(command: DeadletterCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadletterCommand::List { target, json } => list(target, json).await,
        DeadletterCommand::Retry { target, ids, all } => retry(target, &ids, all).await,
    }
}

/// Connects to the deployment a maintenance command names.
async fn dead_letters(target: StateArgs) -> anyhow::Result<DeadLetters> {
    let (config, link, store) = deployment(target).await?;
    let http = http_client::build()?;
    let egress = Egress::from_config(&config.channels, &http);
    let dispatcher = Dispatcher::new(&config.escalation, &http);
    Ok(DeadLetters::new(link, store, egress, dispatcher))
}

async fn list(target: StateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let letters = dead_letters(target).await?.list().await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&letters)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        writeln!(out, "the dead-letter stream is empty")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<18} {:<10} {:<9} {:<26} {:>9}  reason",
        "id", "kind", "channel", "to / conversation", "age"
    )?;
    let now = clawgate_gateway::message::now_ms();
    for letter in &letters {
        let since_ms = letter
            .id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(now);
        writeln!(
            out,
            "{:<18} {:<10} {:<9} {:<26} {:>9}  {}",
            letter.id,
            letter.kind,
            letter.channel(),
            letter.subject(),
            age(now.saturating_sub(since_ms)),
            letter.reason
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(target: StateArgs, ids: &[String], all: bool) -> anyhow::Result<ExitCode> {
    let reports = dead_letters(target).await?.retry_chosen(ids, all).await?;
    let mut out = std::io::stdout().lock();
    for report in &reports {
        let id = &report.id;
        match &report.outcome {
            RetryOutcome::NoSuchEntry => writeln!(out, "{id}: no such entry")?,
            RetryOutcome::Done(Redriven::Sent) => {
                writeln!(out, "{id}: reply sent to {}", report.subject)?
            }
            RetryOutcome::Done(Redriven::Requeued) => writeln!(out, "{id}: message queued again")?,
            RetryOutcome::Done(Redriven::Dispatched) => {
                writeln!(out, "{id}: escalation event delivered to the dispatcher")?
            }
            RetryOutcome::StillFailing(reason) => writeln!(out, "{id}: still failing: {reason}")?,
        }
    }
    Ok(if reports.iter().any(|r| r.failed()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
