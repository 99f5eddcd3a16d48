//! `clawgate forget --customer channel:user`: erase a customer on request.

use super::{StateArgs, deployment};
use crate::say;
use clawgate_gateway::forget::forget_customer;
use clawgate_gateway::message::ConversationKey;
use std::io::Write;
use std::process::ExitCode;

/// `clawgate forget`'s flags.
#[derive(clap::Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    target: StateArgs,
    /// The customer's conversation: `whatsapp:31612345678`, `telegram:5550001`,
    /// `webchat:<session>`.
    #[arg(long)]
    customer: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Removes what Redis keeps of the customer and makes their audit texts unreadable.
pub async fn run(args: ForgetArgs) -> anyhow::Result<ExitCode> {
    let Some(conversation) = ConversationKey::parse(&args.customer) else {
        say!(
            "clawgate: --customer {}: expected channel:user, e.g. whatsapp:31612345678",
            args.customer
        );
        return Ok(ExitCode::FAILURE);
    };
    let (_, link, _) = deployment(args.target).await?;
    let started = std::time::Instant::now();
    let report = forget_customer(&link, &conversation).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "{}: forgotten in {} ms: {} history entries, {} replies, {} keys, {} inbox entries, {} dead letters, {} identity links{}{}",
            report.conversation,
            started.elapsed().as_millis(),
            report.history_entries,
            report.replies,
            report.keys.len(),
            report.inbox_entries,
            report.dead_letters,
            report.identity_links,
            if report.escalation_listed {
                ", its pending hand-over"
            } else {
                ""
            },
            if report.audit_key {
                "; its audit texts are unreadable from now on"
            } else {
                "; it had no audit key"
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
