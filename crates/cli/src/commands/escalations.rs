//! `clawgate escalations list | show | resolve`: the dispatcher's side of conversations handed
//! over to a person.

use super::{StateArgs, age, deployment};
use crate::say;
use clawgate_gateway::state::{Resolution, StateStore};
use std::io::Write;
use std::process::ExitCode;

/// `clawgate escalations …`.
#[derive(clap::Subcommand)]
pub enum EscalationsCommand {
    /// List the conversations waiting for a person, oldest first.
    List {
        #[command(flatten)]
        target: StateArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a conversation's latest escalation with its summary and transcript.
    Show {
        #[command(flatten)]
        target: StateArgs,
        /// The conversation (`whatsapp:31612345678`) or the escalation's reference (`ESC-…`).
        conversation: String,
    },
    /// End a hand-over: the bot answers the conversation again.
    Resolve {
        #[command(flatten)]
        target: StateArgs,
        /// The conversation (`whatsapp:31612345678`) or the escalation's reference (`ESC-…`).
        conversation: String,
        /// Who resolved it (recorded on the escalation).
        #[arg(long, default_value = "dispatcher")]
        by: String,
        /// What was done (recorded on the escalation).
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// Runs an `escalations` command.
pub async fn run(command: EscalationsCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        EscalationsCommand::List { target, json } => {
            let (_, _, store) = deployment(target).await?;
            let pending = store.escalations().await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&pending)?)?;
            } else if pending.is_empty() {
                writeln!(out, "no conversation is waiting for a person")?;
            } else {
                writeln!(
                    out,
                    "{:<13} {:<28} {:<11} {:>6}  {:<9} reason",
                    "reference", "conversation", "skill", "age", "notified"
                )?;
                let now = clawgate_gateway::message::now_ms();
                for e in &pending {
                    writeln!(
                        out,
                        "{:<13} {:<28} {:<11} {:>6}  {:<9} {}",
                        e.reference,
                        e.conversation,
                        e.skill,
                        age(now.saturating_sub(e.created_at)),
                        if e.notified { "yes" } else { "no" },
                        e.reason
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EscalationsCommand::Show {
            target,
            conversation,
        } => {
            let (_, _, store) = deployment(target).await?;
            let found =
                match clawgate_gateway::state::conversation_named(&store, &conversation).await? {
                    Some(key) => store.escalation(&key).await?,
                    None => None,
                };
            match found {
                Some(e) => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&e)?)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    say!("clawgate: no escalation for {conversation}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        EscalationsCommand::Resolve {
            target,
            conversation,
            by,
            note,
        } => {
            let (_, _, store) = deployment(target).await?;
            let Some(key) =
                clawgate_gateway::state::conversation_named(&store, &conversation).await?
            else {
                say!(
                    "clawgate: no pending escalation for {conversation} (give channel:user or an ESC- reference)"
                );
                return Ok(ExitCode::FAILURE);
            };
            match store.resolve_escalation(&key, &by, &note).await? {
                Resolution::Resolved(e) => {
                    writeln!(
                        out,
                        "{} ({}): resolved; the bot answers this conversation again",
                        e.reference, e.conversation
                    )?;
                    Ok(ExitCode::SUCCESS)
                }
                Resolution::AlreadyResolved(e) => {
                    writeln!(
                        out,
                        "{} ({}): already resolved by {}",
                        e.reference,
                        e.conversation,
                        e.resolved_by.as_deref().unwrap_or("?")
                    )?;
                    Ok(ExitCode::SUCCESS)
                }
                Resolution::Unknown => {
                    say!("clawgate: {key} has no escalation");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
